"""The comparison's plots: one per grid (plot_grid), the headline bars with bootstrap intervals
(plot_headline), the dev learning curves (plot_curves). Headless (Agg), PNG at 110 dpi."""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

from dist_optical.compare.spec import DIRECTION, PROTOCOL, Spec, headline, row_name
from dist_optical.files import atomic_write


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _panels(plt, count: int):
    """A figure with ``count`` panels, three a row; the unused ones hidden."""
    cols = min(3, count)
    rows = math.ceil(count / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    for ax in list(axes.flat)[count:]:
        ax.set_visible(False)
    return fig, list(axes.flat)[:count]


def _save(plt, fig, path: Path) -> Path:
    """The figure as a PNG, written atomically: a stopped report never leaves half a plot."""
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=110, bbox_inches="tight")  # a figure legend above included
    plt.close(fig)
    atomic_write(path, png.getvalue(), "a compare plot")
    return path


def plot_grid(
    name: str, grid: Any, spec: Spec, summary: dict[str, Any], kinds: dict[str, dict[str, str]], out: Path
) -> Path | None:
    """Bars per objective (one budget) or headline metric vs training pairs (several; zero-shot as a
    dashed line), error bars = std; one panel per (language with a finished run of the grid, eval
    set); None when the grid has none yet."""
    panels = [(lang, s) for lang in spec.grid_languages(grid, summary) for s in kinds[lang]]
    if not panels:
        return None
    plt = _pyplot()
    fig, axes = _panels(plt, len(panels))
    for ax, (language, s) in zip(axes, panels, strict=True):
        metric = headline(kinds[language][s])
        rows = summary[language]

        def row(objective: str, pairs: int, rows: dict[str, Any] = rows) -> dict[str, Any] | None:
            return rows.get(spec.row(objective, pairs))

        if len(grid.pairs) == 1:
            names = [o for o in grid.objectives if row(o, grid.pairs[0]) is not None]
            values = [row(o, grid.pairs[0])["metrics"][PROTOCOL][s][DIRECTION][metric] for o in names]
            ax.bar(range(len(names)), [v["mean"] for v in values], yerr=[v["std"] for v in values], capsize=3)
            ax.set_xticks(range(len(names)), names, rotation=40, ha="right", fontsize=8)
        else:
            for objective in grid.objectives:
                if spec.objectives[objective] is None and row(objective, 0) is not None:
                    value = row(objective, 0)["metrics"][PROTOCOL][s][DIRECTION][metric]["mean"]
                    ax.axhline(value, linestyle="--", color="grey", label=objective)
                    continue
                points = [p for p in (row(objective, pairs) for pairs in grid.pairs) if p is not None]
                ax.errorbar(
                    [p["pairs_pool"] for p in points],
                    [p["metrics"][PROTOCOL][s][DIRECTION][metric]["mean"] for p in points],
                    yerr=[p["metrics"][PROTOCOL][s][DIRECTION][metric]["std"] for p in points],
                    marker="o",
                    capsize=3,
                    label=objective,
                )
            ax.set_xscale("log")
            ax.set_xlabel("training pairs (pool)")
            ax.legend(fontsize=7)
        ax.set_title(f"{language} / {s}", fontsize=9)
        ax.set_ylabel(f"{metric} %")
    return _save(plt, fig, out / f"{name}.png")


def headline_tests(results: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """language -> eval set -> objective -> its bootstrap tests, in the headline view (PROTOCOL,
    DIRECTION) of results.json's significance."""
    return {
        language: {name: cell[PROTOCOL][DIRECTION] for name, cell in sets.items()}
        for language, sets in results.get("significance", {}).items()
    }


# The two bars of each objective in headline.png: both ends of a search through the teacher's index.
HEADLINE_VIEWS = {
    "src->tgt": "foreign queries -> teacher's pivot index",
    "tgt->src": "pivot queries (teacher) -> student's documents",
}


def headline_panels(results: dict[str, Any], spec: Spec) -> list[tuple[str, str]]:
    """(language, eval set) of every judged set: the dev curves' sets are not judged."""
    return [
        (language, name)
        for language in spec.languages
        for name in results.get("significance", {}).get(language, {})
        if name not in spec.language_config(language).train.dev_sets
    ]


def plot_headline(results: dict[str, Any], spec: Spec, out: Path) -> Path | None:
    """headline.png: acc@1 per objective through the teacher's index, in both directions (foreign
    queries against the teacher's pivot index; pivot queries by the teacher against the student's
    documents), a panel per (language, judged eval set: the dev curves' sets left out), whiskers =
    the 95% bootstrap interval over queries (seeds pooled)."""
    significance, panels = results.get("significance", {}), headline_panels(results, spec)
    if not panels:
        return None
    plt = _pyplot()
    fig, axes = _panels(plt, len(panels))
    width = 0.4
    for ax, (language, name) in zip(axes, panels, strict=True):
        views = significance[language][name][PROTOCOL]
        names = list(dict.fromkeys(o for direction in HEADLINE_VIEWS for o in views.get(direction, {})))
        for shift, (direction, label) in zip((-width / 2, width / 2), HEADLINE_VIEWS.items(), strict=True):
            acc = [views.get(direction, {}).get(o, {}).get("acc") for o in names]
            at = [i + shift for i, a in enumerate(acc) if a]
            acc = [a for a in acc if a]
            whiskers = [[a["diff"] - a["low"] for a in acc], [a["high"] - a["diff"] for a in acc]]
            ax.bar(at, [a["diff"] for a in acc], width, yerr=whiskers, capsize=2, label=label)
        ax.set_xticks(range(len(names)), names, rotation=40, ha="right", fontsize=8)
        ax.set_title(f"{language} / {name}", fontsize=9)
        ax.set_ylabel("acc@1 % (95% interval)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, fontsize=9)
    return _save(plt, fig, out / "headline.png")


def learning_curves(records: list[dict[str, Any]]) -> dict[str, Any]:
    """language -> dev set -> objective -> {pairs, train_s, acc: one list per seed}, each curve
    starting from the zero-shot point (0 pairs, 0 s: the zero-shot row's acc@1 on that set, foreign
    queries against the teacher's index, as the dev curve scores); objectives without a curve and
    languages without a zero-shot run are left out."""
    zero = {r["language"]: r for r in records if r["seed"] is None and "results" in r}
    out: dict[str, Any] = {}
    for record in records:
        curve, start = record.get("curve"), zero.get(record["language"])
        if not curve or not curve.get("pairs") or start is None:
            continue
        for name, values in curve["acc@1"].items():
            origin = start["results"][PROTOCOL][name][DIRECTION]["acc@1"]
            series = out.setdefault(record["language"], {}).setdefault(name, {})
            # An objective trained at several budgets (a pairs grid) has a curve per budget.
            label = row_name(record["objective"], record["pairs"]) if record["pairs"] else record["objective"]
            entry = series.setdefault(label, {"pairs": [0, *curve["pairs"]], "train_s": [], "acc": []})
            entry["train_s"].append([0.0, *curve["train_s"]])
            entry["acc"].append([origin, *values])
    return out


def plot_curves(records: list[dict[str, Any]], spec: Spec, out: Path) -> Path | None:
    """curves.png: dev acc@1 from the zero-shot point on, a column per (language, dev set); top row
    against training pairs seen, bottom row against training seconds (accuracy at equal wall time:
    OT objectives cost more per step). A line per objective: the mean over seeds, band = min..max."""
    curves = learning_curves(records)
    panels = [(lang, name) for lang in spec.languages if lang in curves for name in curves[lang]]
    if not panels:
        return None
    import numpy as np

    plt = _pyplot()
    fig, axes = plt.subplots(2, len(panels), figsize=(4.4 * len(panels), 6.8), squeeze=False)
    for column, (language, name) in enumerate(panels):
        for objective, entry in curves[language][name].items():
            length = min(len(run) for run in entry["acc"])
            values = np.array([run[:length] for run in entry["acc"]])
            seconds = np.array([run[:length] for run in entry["train_s"]]).mean(0)
            label = f"{objective} (n={len(values)})"
            for ax, x in ((axes[0, column], np.array(entry["pairs"][:length])), (axes[1, column], seconds)):
                ax.plot(x, values.mean(0), marker=".", label=label)
                ax.fill_between(x, values.min(0), values.max(0), alpha=0.2)
        axes[0, column].set_title(f"{language} / {name}: acc@1", fontsize=9)
        axes[0, column].set_xlabel("training pairs seen")
        axes[1, column].set_xlabel("training seconds (mean over seeds)")
        for ax in axes[:, column]:
            ax.set_ylabel("acc@1 %")
            ax.legend(fontsize=7)
    return _save(plt, fig, out / "curves.png")
