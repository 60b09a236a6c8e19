"""Aggregate comparison runs over seeds and write report.md (the plots: compare/plots.py; the
statistics and verdicts: compare/verdicts.py).

Every number in report.md is read from results.json (its summary, significance, verdicts and runs;
rounded to one decimal), so the two cannot disagree. The headline metric of a set is acc@1 (parallel and bible
sets: the XTREME/LASER metric) or nDCG@10 (clir), foreign queries -> pivot (English or French)
targets through the teacher's index.
"""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from dist_optical.compare.plots import plot_curves, plot_grid, plot_headline
from dist_optical.compare.spec import DIRECTION, PROTOCOL, Spec, added_later, headline, row_name
from dist_optical.compare.verdicts import answer, significance_lines, verdict_lines
from dist_optical.files import atomic_write


def summarise(records: list[dict[str, Any]]) -> dict[str, Any]:
    """records -> language -> "objective/pairs-N" -> {n, seeds, metrics: protocol -> set -> direction
    -> metric -> {mean, std}, steps, pairs_pool, pairs_seen, train_wall_s, step_s, diagnostics:
    name -> mean}.

    std is the sample standard deviation over seeds (0 for a single run)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for record in records:
        groups.setdefault((record["language"], row_name(record["objective"], record["pairs"])), []).append(
            record
        )
    summary: dict[str, Any] = {}
    for (language, row), runs in groups.items():
        first = runs[0]
        metrics = {
            protocol: {
                name: {
                    direction: {
                        metric: _stats([run["results"][protocol][name][direction][metric] for run in runs])
                        for metric in values
                    }
                    for direction, values in directions.items()
                }
                for name, directions in sets.items()
            }
            for protocol, sets in first["results"].items()
        }
        entry: dict[str, Any] = {"n": len(runs), "seeds": [run["seed"] for run in runs], "metrics": metrics}
        if "steps" in first:
            last = [run["diagnostics"]["last"] for run in runs]
            start = [run["diagnostics"]["first"] for run in runs]
            entry.update(
                steps=first["steps"],
                pairs_pool=first["pairs_pool"],
                pairs_seen=first["pairs_seen"],
                train_wall_s=statistics.fmean(run["train_wall_s"] for run in runs),
                step_s=statistics.fmean(run.get("step_s", 0.0) for run in runs),
                diagnostics={
                    "last": {name: statistics.fmean(d[name] for d in last) for name in last[0]},
                    "first": {name: statistics.fmean(d[name] for d in start) for name in start[0]},
                },
            )
        summary.setdefault(language, {})[row] = entry
    return summary


def _stats(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0}


def write_report(results: dict[str, Any], spec: Spec, out: Path) -> list[Path]:
    """report.md and one PNG per grid in ``out``; returns their paths (report first)."""
    summary = results["summary"]
    kinds = {
        language: {s.name: s.kind for s in spec.language_config(language).eval.sets} for language in summary
    }
    plots = [plot_grid(name, grid, spec, summary, kinds, out) for name, grid in spec.grids.items()]
    extra = [p for p in (plot_headline(results, spec, out), plot_curves(results["runs"], spec, out)) if p]
    lines = _header(results, spec)
    lines[2:2] = answer(results.get("verdicts", {}))
    lines += significance_lines(results, spec)
    lines += verdict_lines(results.get("verdicts", {}), spec)
    lines += [f"![{p.stem}]({p.name})" for p in extra] + [""]
    for (name, grid), plot in zip(spec.grids.items(), plots, strict=True):
        if plot is None:  # none of its runs finished yet
            continue
        lines += [f"## Grid `{name}`", ""]
        lines += [
            f"Seeds {grid.seeds}; training-pair budgets {[p or 'all' for p in grid.pairs]}. Cells: "
            f"{DIRECTION} (foreign query -> pivot target, through the teacher's index) headline metric, "
            "%, mean ± sample std over the n seeds; the best mean per column in bold.",
            "",
        ]
        for language in spec.grid_languages(grid, summary):
            lines += [
                f"### {language}",
                "",
                *_table(summary[language], spec.grid_rows(grid), kinds[language]),
                "",
            ]
        lines += [f"![{name}]({plot.name})", ""]
    lines += _reading(summary, spec, kinds)
    lines += _runs(results["runs"])
    report = out / "report.md"
    atomic_write(report, "\n".join(lines))
    return [report, *(p for p in plots if p is not None), *extra]


def fixed_line(spec: Spec, spec_name: str) -> str:
    """What was fixed before the first run, and any grid added after results were seen."""
    later = [
        f"grid `{name}` (objectives {', '.join(objectives)}: {note})"
        for name, (note, objectives) in added_later(spec).items()
    ]
    return (
        f"- Fixed before the first run: every setting of `{spec_name}` (budget, objectives, seeds, eval sets)"
        + (f", except what was added after results were seen: {'; '.join(later)}" if later else "")
        + ". A run is keyed by its config's hash: a setting changed later moves that run aside and runs it "
        "again; it is never mixed with runs of the old setting."
    )


def _header(results: dict[str, Any], spec: Spec) -> list[str]:
    loads = sorted(r["load_average"] for r in results["runs"] if "load_average" in r)
    load_text = (
        f"; 1-minute load average at the end of a run ({len(loads)} of them recorded it): median "
        f"{statistics.median(loads):.1f}, range {loads[0]:.1f}-{loads[-1]:.1f} on {results['cpus']} CPUs"
        if loads
        else ""
    )
    busy = bool(loads) and statistics.median(loads) > results["cpus"]
    settings = results["settings"]
    train, model = settings.get("train", {}), settings.get("model", {})
    lines = [
        "# Comparison: OT distillation against its alternatives",
        "",
        f"Generated by `{results['command']}` (spec {results['spec']}): {results['runs_total']} "
        f"runs, whose training and evaluation took {results['runs_wall_s'] / 60:.1f} min in total (summed "
        f"over runs, each measured when it ran){load_text}"
        + (": other jobs shared the machine, so the wall times are inflated." if busy else ".")
        + f" This invocation (started {results['started']}) took {results['wall_s'] / 60:.1f} min and reused "
        f"{results['runs_skipped']} finished runs.",
        "",
        *_partial(results),
        "## Setup",
        "",
        f"- Base config `{spec.base}`; teacher `{model.get('teacher')}` (frozen, encodes the pivot side: "
        "English or French); "
        f"student initialised from `{model.get('student') or model.get('teacher')}`; max_length "
        f"{model.get('max_length')}.",
        f"- Training: {train.get('max_steps')} steps of {train.get('micro_batch_size')} pairs, lr "
        f"{train.get('lr')}, warmup {train.get('warmup_steps')}, {train.get('deepspeed')}.",
        fixed_line(spec, results["spec"]),
        "- Objectives (overrides of the base config):",
        "",
        "| objective | overrides |",
        "|---|---|",
    ]
    for name, overrides in spec.objectives.items():
        lines.append(
            f"| {name} | {'none: the teacher, no training' if overrides is None else f'`{overrides}`'} |"
        )
    lines += [
        "",
        "- Split: training pairs come from the shards; each held-out Bible eval set is checked to share "
        "no verse id with them (the check raises otherwise).",
        "",
        "| language | training pairs | training books | held out | eval set | eval verses | overlap |",
        "|---|---|---|---|---|---|---|",
    ]
    for language, split in results["splits"].items():
        books = split.get("train_books", [])
        span = f"{books[0]}..{books[-1]} ({len(books)} books)" if books else "-"
        held_out = ", ".join(split["exclude_books"]) or "-"
        for name, info in split["eval"].items() or [("-", {"verses": "-", "overlap": "-"})]:
            lines.append(
                f"| {language} | {split['train_pairs']} | {span} | {held_out} | "
                f"{name} | {info['verses']} | {info['overlap']} |"
            )
    lines += [
        "",
        "Columns after the metrics: training pairs in the pool / drawn (steps x batch), steps, training wall "
        "time per run, the collapse signal (mean pairwise cosine of the student's sentence embeddings in a "
        "batch, mean of the first -> last 10 steps; near 1 = collapsed) and the OT plan entropy (last 10 "
        "steps; near its maximum = a near-uniform, uninformative plan). English cos: the student's "
        "English against the teacher's (only where the student encodes English).",
        "",
    ]
    return lines


def _runs(records: list[dict[str, Any]]) -> list[str]:
    """Each run's cost and the machine's load when it ended: what every wall time above rests on."""
    lines = [
        "## Runs",
        "",
        "Each run as it was measured when it ran (a reused run keeps its own figures).",
        "",
        "| run | training min | s/step | evaluation min | 1-min load at the end |",
        "|---|---|---|---|---|",
    ]
    for r in records:
        train = f"{r['train_wall_s'] / 60:.1f}" if "train_wall_s" in r else "-"
        if len(r.get("train_pieces_s", [])) > 1:  # resumed after a stop: the sum of its pieces
            train += f" ({len(r['train_pieces_s'])} pieces)"
        step = f"{r['step_s']:.2f}" if r.get("step_s") else "-"
        load = f"{r['load_average']:.1f}" if "load_average" in r else "-"
        lines.append(f"| {r['folder']} | {train} | {step} | {r['eval_wall_s'] / 60:.1f} | {load} |")
    return [*lines, ""]


def _partial(results: dict[str, Any]) -> list[str]:
    """A warning line when the grid stopped early (`compare --stop-after`): which runs are missing."""
    missing = results.get("runs_missing", [])
    if not missing:
        return []
    return [
        f"**Partial: {results['runs_total']} of {results['runs_planned']} planned runs are finished.** "
        f"Not yet run: {', '.join(missing)}. Every figure below is over the finished runs only.",
        "",
    ]


def _table(rows: dict[str, Any], names: list[str], kinds: dict[str, str]) -> list[str]:
    sets = list(kinds)
    header = [f"{s} {headline(kinds[s])}" for s in sets]
    extra = ["pairs pool / drawn", "steps", "s/step", "train s", "student cos", "plan entropy", "English cos"]
    lines = [
        "| objective | n | " + " | ".join(header + extra) + " |",
        "|---" * (2 + len(header) + len(extra)) + "|",
    ]
    present = [name for name in names if name in rows]
    best = {
        s: max(rows[name]["metrics"][PROTOCOL][s][DIRECTION][headline(kinds[s])]["mean"] for name in present)
        for s in sets
    }
    for name in present:
        row = rows[name]
        cells = []
        for s in sets:
            value = row["metrics"][PROTOCOL][s][DIRECTION][headline(kinds[s])]
            text = fmt(value, row["n"])
            cells.append(f"**{text}**" if value["mean"] == best[s] else text)
        if "steps" in row:
            first, last = row["diagnostics"]["first"], row["diagnostics"]["last"]
            cells += [
                f"{row['pairs_pool']} / {row['pairs_seen']}",
                str(row["steps"]),
                f"{row['step_s']:.2f}",
                f"{row['train_wall_s']:.0f}",
                f"{first['collapse/student_cos']:.2f} -> {last['collapse/student_cos']:.2f}",
                f"{last['ot/plan_entropy']:.2f}" if "ot/plan_entropy" in last else "-",
                f"{last['english/student_teacher_cos']:.2f}"
                if "english/student_teacher_cos" in last
                else "-",
            ]
        else:
            cells += ["-", "0", "-", "-", "-", "-", "-"]
        label = name.removesuffix("/pairs-all")
        lines.append(f"| {label} | {row['n']} | " + " | ".join(cells) + " |")
    return lines


def fmt(value: dict[str, float], n: int) -> str:
    """Mean ± std with one decimal; a single run has no spread to show."""
    return f"{value['mean']:.1f} ± {value['std']:.1f}" if n > 1 else f"{value['mean']:.1f}"


def _reading(summary: dict[str, Any], spec: Spec, kinds: dict[str, dict[str, str]]) -> list[str]:
    """Per grid with one training-pair budget, language and eval set: the best objective, and whether
    its lead over the runner-up exceeds the seed spread (difference > sqrt(std_1^2 + std_2^2))."""
    lines = [
        "## Reading (generated)",
        "",
        "Per grid: the best objective per eval set and its lead over the runner-up. A lead no larger than "
        "the combined seed spread sqrt(std1² + std2²) is called within seed noise; with two seeds the "
        "spread itself is a rough estimate, and a row with n = 1 has none.",
        "",
    ]
    for name, grid in spec.grids.items():
        if len(grid.pairs) != 1:
            continue
        for language in spec.grid_languages(grid, summary):
            rows = {
                o: summary[language][row]
                for o in grid.objectives
                if (row := spec.row(o, grid.pairs[0])) in summary[language]
            }
            if len(rows) < 2:
                continue
            for s, kind in kinds[language].items():
                lines.append(f"- `{name}` {language} / {s}: " + _lead(rows, s, headline(kind)))
    return [*lines, ""]


def _lead(rows: dict[str, Any], eval_set: str, metric: str) -> str:
    """'best X m ± s, then Y m ± s: lead d, within seed noise' for one eval set."""
    value = {o: row["metrics"][PROTOCOL][eval_set][DIRECTION][metric] for o, row in rows.items()}
    top, second = sorted(value, key=lambda o: value[o]["mean"], reverse=True)[:2]
    a, b = value[top], value[second]
    lead, noise = a["mean"] - b["mean"], math.hypot(a["std"], b["std"])
    if rows[top]["n"] == 1 and rows[second]["n"] == 1:
        verdict = "one run each: no seed spread to judge it by"
    elif lead <= noise:
        verdict = "within seed noise"
    else:
        verdict = f"larger than the seed spread ({noise:.1f})"
    return (
        f"best **{top}** {fmt(a, rows[top]['n'])} {metric}, then {second} {fmt(b, rows[second]['n'])}: "
        f"lead {lead:.1f}, {verdict}."
    )
