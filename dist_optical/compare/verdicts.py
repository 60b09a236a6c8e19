"""The comparison's statistics and what they decide: per eval set, direction and protocol, each
objective's acc@1 against InfoNCE's and zero-shot's (a paired bootstrap over queries, seeds pooled);
a verdict per cell (better, worse, equivalent, undecided: `stats.verdict`); the report's opening
paragraph and its difference and verdict tables, read off those alone."""

from __future__ import annotations

from typing import Any

from dist_optical.compare.plots import headline_tests
from dist_optical.compare.spec import DIRECTION, DIRECTIONS, PROTOCOL, PROTOCOLS, ZERO_SHOT, Spec
from dist_optical.compare.stats import MARGIN, RESAMPLES, correct_at_1, paired_bootstrap, verdict

REFERENCES = ("infonce", "zero-shot")  # what every objective is measured against, when in the grid


def significance(records: list[dict[str, Any]], spec: Spec) -> dict[str, Any]:
    """language -> eval set -> protocol -> direction -> objective -> reference -> the paired
    bootstrap (`stats.paired_bootstrap`, seeds pooled) of acc@1 minus the reference's, and ``acc``:
    the objective's own acc@1 with its bootstrap interval. Over the runs of every grid with one
    training-pair budget, so grids that split the objectives (three seeds for some, one for others)
    are judged against one reference with all its seeds."""
    cells = {  # (language, objective, pairs) of every single-budget grid
        (language, objective, 0 if spec.objectives[objective] is ZERO_SHOT else grid.pairs[0])
        for grid in spec.grids.values()
        if len(grid.pairs) == 1
        for language in grid.languages
        for objective in grid.objectives
    }
    correct: dict[tuple[str, str, str, str], dict[str, list]] = {}  # view -> objective -> seeds' 0/1
    for record in records:
        if (record["language"], record["objective"], record["pairs"]) not in cells:
            continue
        for protocol, sets in record.get("ranks", {}).items():
            for name, directions in sets.items():
                for direction, ranks in directions.items():
                    view = correct.setdefault((record["language"], name, protocol, direction), {})
                    view.setdefault(record["objective"], []).append(correct_at_1(ranks))
    out: dict[str, Any] = {}
    for (language, name, protocol, direction), objectives in correct.items():
        cell = out.setdefault(language, {}).setdefault(name, {}).setdefault(protocol, {})
        for objective, seeds in objectives.items():
            entry = cell.setdefault(direction, {}).setdefault(objective, {})
            entry["acc"] = paired_bootstrap(seeds, [[0.0] * len(seeds[0])])
            for reference in REFERENCES:
                if reference != objective and reference in objectives:
                    entry[f"vs {reference}"] = paired_bootstrap(seeds, objectives[reference])
    return out


def significance_lines(results: dict[str, Any], spec: Spec) -> list[str]:
    """One table per language: acc@1 minus InfoNCE's and minus zero-shot's, 95% intervals."""
    tests = headline_tests(results)
    if not tests:
        return []
    lines = [
        "## Differences with 95% intervals (paired bootstrap over queries)",
        "",
        f"{PROTOCOLS[PROTOCOL]}, {DIRECTIONS[DIRECTION]}: acc@1 of each objective minus InfoNCE's and "
        f"minus zero-shot's, in points, seeds pooled (each query's correctness averaged over the "
        f"objective's seeds), {RESAMPLES} resamples of the queries; **bold** where the interval excludes "
        "0 (a real difference), plain where it does not (no difference shown at this many queries).",
        "",
    ]
    for language in (lang for lang in spec.languages if lang in tests):
        sets = list(tests[language])
        objectives = list(dict.fromkeys(o for s in sets for o in tests[language][s]))
        lines += [f"### {language}", ""]
        header = [f"{s} {label}" for s in sets for label in ("acc@1", "- infonce", "- zero-shot")]
        lines += ["| objective | " + " | ".join(header) + " |", "|---" * (1 + len(header)) + "|"]
        for objective in objectives:
            cells = []
            for s in sets:
                entry = tests[language][s].get(objective, {})
                cells.append(_interval(entry["acc"], mark=False) if "acc" in entry else "-")
                for reference in REFERENCES:
                    cells.append(_interval(entry[f"vs {reference}"]) if f"vs {reference}" in entry else "-")
            lines.append(f"| {objective} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def _interval(test: dict[str, Any], mark: bool = True) -> str:
    text = (
        f"{test['diff']:+.1f} [{test['low']:+.1f}, {test['high']:+.1f}]"
        if mark
        else (f"{test['diff']:.1f} [{test['low']:.1f}, {test['high']:.1f}]")
    )
    return f"**{text}**" if mark and test["significant"] else text


VIEWS = [(protocol, direction) for protocol in PROTOCOLS for direction in DIRECTIONS]
VERDICT_KINDS = ("better", "worse", "equivalent", "undecided")  # what `stats.verdict` answers


def verdicts(results: dict[str, Any], spec: Spec) -> dict[str, Any]:
    """language -> eval set -> objective -> "protocol/direction" -> `stats.verdict` of its acc@1
    minus InfoNCE's, on every aligned set but the learning curves' dev sets (watched while
    training, so not a judge)."""
    out: dict[str, Any] = {}
    for language, sets in results.get("significance", {}).items():
        dev = set(spec.language_config(language).train.dev_sets)
        for name, cell in sets.items():
            if name in dev:
                continue
            for protocol, direction in VIEWS:
                for objective, tests in cell.get(protocol, {}).get(direction, {}).items():
                    if "vs infonce" in tests and spec.objectives[objective] is not None:
                        entry = out.setdefault(language, {}).setdefault(name, {}).setdefault(objective, {})
                        entry[f"{protocol}/{direction}"] = verdict(tests["vs infonce"])
    return out


def _view_label(view: str) -> str:
    protocol, direction = view.split("/")
    return f"{DIRECTIONS[direction]}, {PROTOCOLS[protocol]}"


def verdict_lines(judged: dict[str, Any], spec: Spec) -> list[str]:
    """A table per language and eval set: a verdict per objective and view (direction x protocol)."""
    if not judged:
        return []
    lines = [
        "## Verdicts against InfoNCE",
        "",
        "Each cell: the objective's acc@1 minus InfoNCE's, in points, with its paired-bootstrap 95% "
        "interval (seeds pooled). **better/worse by X** where the interval excludes 0; **equivalent** "
        f"where it lies inside ±{MARGIN:g}; otherwise undecided, with the number of queries at which the "
        "interval would decide at the observed per-query variance (normal approximation; more seeds "
        "narrow it too). The learning curves' dev sets are not judged here.",
        "",
    ]
    views = [f"{p}/{d}" for p, d in VIEWS]
    for language in (lang for lang in spec.languages if lang in judged):
        for name, objectives in judged[language].items():
            lines += [f"### {language} / {name}", ""]
            lines += ["| objective | " + " | ".join(_view_label(v) for v in views) + " |"]
            lines += ["|---" * (1 + len(views)) + "|"]
            for objective, cells in objectives.items():
                texts = [_bold_kind(cells[v]) if v in cells else "-" for v in views]
                lines.append(f"| {objective} | " + " | ".join(texts) + " |")
            lines.append("")
    return lines


def _bold_kind(decided: dict[str, Any]) -> str:
    kind, text = decided["kind"], decided["text"]
    return f"**{kind}**{text[len(kind) :]}" if kind != "undecided" else text


def answer(judged: dict[str, Any]) -> list[str]:
    """The report's opening paragraph, three sentences read off the verdicts only: per objective,
    how many cells fall each way; then by how much and in which languages it is better, then worse.
    The verdict tables below it hold each cell with its interval."""
    counts: dict[str, dict[str, int]] = {}
    # kind -> objective -> language -> the differences of its cells of that kind
    found: dict[str, dict[str, dict[str, list[float]]]] = {"better": {}, "worse": {}}
    for language, sets in judged.items():
        for objectives in sets.values():
            for objective, views in objectives.items():
                tally = counts.setdefault(objective, dict.fromkeys(VERDICT_KINDS, 0))
                for decided in views.values():
                    kind = decided["kind"]
                    tally[kind] += 1
                    if kind in found:
                        found[kind].setdefault(objective, {}).setdefault(language, []).append(decided["diff"])
    if not counts:
        return []
    cells = max(sum(tally.values()) for tally in counts.values())
    first = (
        f"Against InfoNCE, over up to {cells} cells each (language x eval set x direction x protocol; "
        f"paired-bootstrap 95% intervals), better / worse / equivalent within ±{MARGIN:g} / undecided: "
        + ", ".join(f"`{o}` " + " / ".join(str(t[kind]) for kind in VERDICT_KINDS) for o, t in counts.items())
        + "."
    )
    rest = []
    for kind, by_objective in found.items():
        clauses = [_by_how_much(o, by_objective[o]) for o in counts if o in by_objective]
        rest.append(
            f"{kind.capitalize()} than InfoNCE: " + "; ".join(clauses) + "."
            if clauses
            else f"No objective is {kind} than InfoNCE in any cell."
        )
    return [" ".join([first, *rest]), ""]


def _by_how_much(objective: str, by_language: dict[str, list[float]]) -> str:
    """`ot` by -3.6 to -28.3 points (cells: wol 8, ewe 9): the smaller difference first."""
    diffs = [d for language_diffs in by_language.values() for d in language_diffs]
    low, high = sorted((min(diffs), max(diffs)), key=abs)
    spread = f"{low:+.1f}" if len(diffs) == 1 else f"{low:+.1f} to {high:+.1f}"
    where = ", ".join(f"{language} {len(d)}" for language, d in by_language.items())
    return f"`{objective}` by {spread} points (cells: {where})"
