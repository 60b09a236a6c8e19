"""The comparison's plots: one per grid (plot_grid), the headline bars with bootstrap intervals
(plot_headline), the dev learning curves (plot_curves). Headless (Agg), PNG at 110 dpi."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from dist_optical.compare.spec import DIRECTION, Spec, headline, row_name


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
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_grid(
    name: str, grid: Any, spec: Spec, summary: dict[str, Any], kinds: dict[str, dict[str, str]], out: Path
) -> Path:
    """Bars per objective (one budget) or headline metric vs training pairs (several; zero-shot as a
    dashed line), error bars = std; one panel per (language, eval set)."""
    plt = _pyplot()
    panels = [(lang, s) for lang in grid.languages if lang in summary for s in kinds[lang]]
    fig, axes = _panels(plt, len(panels))
    for ax, (language, s) in zip(axes, panels, strict=True):
        metric = headline(kinds[language][s])
        rows = summary[language]

        def row(objective: str, pairs: int, rows: dict[str, Any] = rows) -> dict[str, Any] | None:
            trained = spec.objectives[objective] is not None
            return rows.get(row_name(objective, pairs if trained else 0))

        if len(grid.pairs) == 1:
            names = [o for o in grid.objectives if row(o, grid.pairs[0]) is not None]
            values = [row(o, grid.pairs[0])["metrics"][s][DIRECTION][metric] for o in names]
            ax.bar(range(len(names)), [v["mean"] for v in values], yerr=[v["std"] for v in values], capsize=3)
            ax.set_xticks(range(len(names)), names, rotation=40, ha="right", fontsize=8)
        else:
            for objective in grid.objectives:
                if spec.objectives[objective] is None and row(objective, 0) is not None:
                    value = row(objective, 0)["metrics"][s][DIRECTION][metric]["mean"]
                    ax.axhline(value, linestyle="--", color="grey", label=objective)
                    continue
                points = [p for p in (row(objective, pairs) for pairs in grid.pairs) if p is not None]
                ax.errorbar(
                    [p["pairs_pool"] for p in points],
                    [p["metrics"][s][DIRECTION][metric]["mean"] for p in points],
                    yerr=[p["metrics"][s][DIRECTION][metric]["std"] for p in points],
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


def plot_headline(results: dict[str, Any], spec: Spec, out: Path) -> Path | None:
    """headline.png: acc@1 per objective, a panel per (language, eval set), whiskers = the 95%
    bootstrap interval over queries (seeds pooled)."""
    tests = results.get("significance", {})
    panels = [(lang, s) for lang in spec.languages if lang in tests for s in tests[lang]]
    if not panels:
        return None
    plt = _pyplot()
    fig, axes = _panels(plt, len(panels))
    for ax, (language, s) in zip(axes, panels, strict=True):
        entries = tests[language][s]
        names = list(entries)
        acc = [entries[o]["acc"] for o in names]
        whiskers = [[a["diff"] - a["low"] for a in acc], [a["high"] - a["diff"] for a in acc]]
        ax.bar(range(len(names)), [a["diff"] for a in acc], yerr=whiskers, capsize=3)
        ax.set_xticks(range(len(names)), names, rotation=40, ha="right", fontsize=8)
        ax.set_title(f"{language} / {s}", fontsize=9)
        ax.set_ylabel("acc@1 % (95% interval)")
    return _save(plt, fig, out / "headline.png")


def plot_curves(records: list[dict[str, Any]], spec: Spec, out: Path) -> Path | None:
    """curves.png: dev acc@1 against pairs seen, a panel per language, a line per objective (mean
    over seeds, band = min..max over seeds); None when no run logged a curve."""
    curves: dict[str, dict[str, list[list[list[float]]]]] = {}
    for record in records:
        if record.get("curve"):
            curves.setdefault(record["language"], {}).setdefault(record["objective"], []).append(
                record["curve"]
            )
    if not curves:
        return None
    import numpy as np

    plt = _pyplot()
    languages = [lang for lang in spec.languages if lang in curves]
    fig, axes = plt.subplots(1, len(languages), figsize=(4.4 * len(languages), 3.4), squeeze=False)
    for ax, language in zip(axes.flat, languages, strict=True):
        for objective, runs in curves[language].items():
            length = min(len(run) for run in runs)
            pairs = np.array([point[0] for point in runs[0][:length]])
            values = np.array([[point[1] for point in run[:length]] for run in runs])
            ax.plot(pairs, values.mean(0), marker=".", label=f"{objective} (n={len(runs)})")
            ax.fill_between(pairs, values.min(0), values.max(0), alpha=0.2)
        ax.set_title(f"{language}: dev acc@1", fontsize=9)
        ax.set_xlabel("training pairs seen")
        ax.set_ylabel("acc@1 %")
        ax.legend(fontsize=7)
    return _save(plt, fig, out / "curves.png")
