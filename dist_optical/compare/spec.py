"""The comparison spec (`configs/compare.yaml`): a base run config, named per-language and
per-objective overrides, and grids of (languages x objectives x seeds x training-pair budgets).

Every override is a nested mapping merged into the base config's YAML the way a reader expects:
sections (``train``, ``ot``, ...) merge key by key, anything else (``loss``, ``eval.sets``, a
list) is replaced whole, so ``{loss: {contrastive: 1.0}}`` means InfoNCE alone. The merged
mapping goes through the same typed builder as every config, so an unknown key or a wrong type
is an error that names the spec entry and the key.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dist_optical.config import Config, ConfigError, repo_path, validate
from dist_optical.typed_yaml import build, merged, read_yaml, yaml_mapping

# The objective that trains nothing: the teacher itself encodes the foreign queries.
ZERO_SHOT = None
TOP_KEYS = ("base", "overrides", "languages", "objectives", "grids", "keep_models")
# Language, objective and grid names become folder and file names under --out.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")
# The report's own files beside each grid's plot (GRID.png).
RESERVED_GRID_NAMES = frozenset({"headline", "curves", "report", "results"})


@dataclass
class Grid:
    languages: list[str] = field(default_factory=list)
    objectives: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=lambda: [0])
    # data.max_pairs budgets for the low-resource curve (0 = every training pair).
    pairs: list[int] = field(default_factory=lambda: [0])
    # When and why the grid was added after results were seen ("" = fixed before the first run): the
    # report says so, and its runs come after every run fixed before.
    added_later: str = ""


@dataclass(frozen=True)
class RunKey:
    """One cell of the comparison. Zero-shot runs have seed -1 and pairs 0: nothing is trained."""

    language: str
    objective: str
    pairs: int
    seed: int

    @property
    def trains(self) -> bool:
        return self.seed >= 0

    def folder(self) -> str:
        if not self.trains:
            return f"{self.language}/{self.objective}"
        return f"{self.language}/{self.objective}/pairs-{self.pairs or 'all'}/seed{self.seed}"


@dataclass
class Spec:
    path: Path
    base: str
    overrides: dict[str, Any]
    languages: dict[str, dict[str, Any]]
    objectives: dict[str, dict[str, Any] | None]
    grids: dict[str, Grid]
    keep_models: bool = False

    def language_config(self, language: str) -> Config:
        """The base config with the shared and the language's overrides: what zero-shot uses."""
        return self._build([self.overrides, self.languages[language]], f"languages.{language}")

    def run_config(self, key: RunKey) -> Config:
        """The full config of one training run."""
        run = {"train": {"seed": key.seed}, "data": {"max_pairs": key.pairs}}
        layers = [self.overrides, self.languages[key.language], self.objectives[key.objective] or {}, run]
        return self._build(layers, f"objectives.{key.objective} for {key.language}")

    def row(self, objective: str, pairs: int) -> str:
        """The report row of ``objective`` at the budget ``pairs``; zero-shot has one row, at 0."""
        return row_name(objective, 0 if self.objectives[objective] is ZERO_SHOT else pairs)

    def grid_rows(self, grid: Grid) -> list[str]:
        """The grid's report rows, in its order."""
        return list(dict.fromkeys(self.row(o, pairs) for o in grid.objectives for pairs in grid.pairs))

    def grid_languages(self, grid: Grid, summary: dict[str, dict[str, Any]]) -> list[str]:
        """The grid's languages (in the spec's order) with a finished row of it in ``summary``
        (language -> row -> ...): a grid stopped early shows only what it has."""
        rows = self.grid_rows(grid)
        return [
            lang
            for lang in self.languages
            if lang in grid.languages and any(row in summary.get(lang, {}) for row in rows)
        ]

    def _build(self, layers: list[dict[str, Any]], where: str) -> Config:
        raw = read_yaml(repo_path(self.base), Config)  # the base's own `base:` chain included
        for layer in layers:
            raw = merged(raw, layer, Config)
        cfg = build(Config, raw, f"{self.path} ({where})")
        validate(cfg, f"{self.path} ({where})")
        return cfg


def load_spec(path: str | Path) -> Spec:
    """Read and check a spec: names used by the grids must be defined, every run config must build."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"compare spec not found: {path}")
    raw = yaml_mapping(path)
    unknown = sorted(set(raw) - set(TOP_KEYS))
    if unknown:
        raise ConfigError(f"{path}: unknown key {unknown[0]!r} (known: {', '.join(TOP_KEYS)})")
    for key in ("base", "languages", "objectives", "grids"):
        if not raw.get(key):
            raise ConfigError(f"{path}: {key!r} is required")
    spec = Spec(
        path=path,
        base=_typed(raw["base"], str, path, "base"),
        overrides=_mapping(raw.get("overrides") or {}, path, "overrides"),
        languages={
            name: _mapping(value or {}, path, f"languages.{name}")
            for name, value in _mapping(raw["languages"], path, "languages").items()
        },
        objectives={
            name: ZERO_SHOT if value is None else _mapping(value, path, f"objectives.{name}")
            for name, value in _mapping(raw["objectives"], path, "objectives").items()
        },
        grids={
            name: build(Grid, value, str(path), f"grids.{name}.")
            for name, value in _mapping(raw["grids"], path, "grids").items()
        },
        keep_models=_typed(raw.get("keep_models", False), bool, path, "keep_models"),
    )
    if not repo_path(spec.base).is_file():
        raise ConfigError(f"{path}: base config {spec.base!r} not found")
    named = {"languages": spec.languages, "objectives": spec.objectives, "grids": spec.grids}
    for kind, names in named.items():
        for name in names:  # each becomes a folder or file name under --out
            if not NAME.fullmatch(name) or (kind == "grids" and name in RESERVED_GRID_NAMES):
                raise ConfigError(
                    f"{path}: {kind}.{name}: expected a name of letters, digits and _.+- (no '/'), "
                    f"not one of the report's own files ({', '.join(sorted(RESERVED_GRID_NAMES))})"
                )
    for name, grid in spec.grids.items():
        empty = [f for f in ("languages", "objectives", "seeds", "pairs") if not getattr(grid, f)]
        if empty:
            raise ConfigError(f"{path}: grids.{name}.{empty[0]}: expected at least one entry, got []")
        for kind, names, known in (
            ("language", grid.languages, spec.languages),
            ("objective", grid.objectives, spec.objectives),
        ):
            missing = [n for n in names if n not in known]
            if missing:
                raise ConfigError(f"{path}: grids.{name}: {kind} {missing[0]!r} is not defined")
        if any(seed < 0 for seed in grid.seeds) or any(pairs < 0 for pairs in grid.pairs):
            raise ConfigError(f"{path}: grids.{name}: seeds and pairs must be >= 0")
    budgets: dict[str, set[int]] = {}  # the verdicts pool an objective's runs of single-budget grids
    for grid in spec.grids.values():
        for objective in grid.objectives if len(grid.pairs) == 1 else []:
            if spec.objectives[objective] is not ZERO_SHOT:
                budgets.setdefault(objective, set()).add(grid.pairs[0])
    for objective, pairs in budgets.items():
        if len(pairs) > 1:
            raise ConfigError(
                f"{path}: objective {objective!r} is in single-budget grids at budgets {sorted(pairs)}: its "
                "runs would be judged as one; give it one budget (a curve over budgets is one grid with "
                "several pairs)"
            )
    return spec


def plan(spec: Spec) -> list[RunKey]:
    """Every distinct run of every grid, zero-shot first, then seed by seed (each seed: language by
    language, objectives in the order the grids first name them): a grid run in pieces has every
    objective of seed 0 before any second seed. A run named by two grids is planned (and trained)
    once. Runs only a grid ``added_later`` names come last: an afterthought never delays what was
    fixed before."""
    keys: dict[RunKey, bool] = {}  # run -> named only by grids added later
    for language in spec.languages:
        for grid in spec.grids.values():
            if language not in grid.languages:
                continue
            for objective in grid.objectives:
                if spec.objectives[objective] is ZERO_SHOT:
                    runs = [RunKey(language, objective, 0, -1)]
                else:
                    runs = [RunKey(language, objective, n, seed) for n in grid.pairs for seed in grid.seeds]
                for key in runs:
                    keys[key] = keys.get(key, True) and bool(grid.added_later)
    languages = list(spec.languages)
    return sorted(keys, key=lambda k: (keys[k], k.trains, k.seed, languages.index(k.language)))


def added_later(spec: Spec) -> dict[str, tuple[str, list[str]]]:
    """The grids added after results were seen: name -> (its note, the objectives no grid fixed
    before the first run names)."""
    fixed = {o for grid in spec.grids.values() if not grid.added_later for o in grid.objectives}
    return {
        name: (grid.added_later, [o for o in grid.objectives if o not in fixed])
        for name, grid in spec.grids.items()
        if grid.added_later
    }


def _mapping(value: Any, path: Path, key: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: {key}: expected a mapping, got {value!r}")
    return value


def _typed(value: Any, kind: type, path: Path, key: str) -> Any:
    if not isinstance(value, kind):
        raise ConfigError(f"{path}: {key}: expected {kind.__name__}, got {value!r}")
    return value


# How a trained student is judged: its foreign sentences against the frozen teacher's pivot index
# (an existing English/French index), and alone on both sides (what `SentenceTransformer(DIR)` gives).
PROTOCOLS = {"idx": "student -> teacher index", "alone": "student alone"}
DIRECTIONS = {"src->tgt": "foreign queries", "tgt->src": "pivot queries"}
# What the report's tables and plots show: foreign queries against the teacher's index.
PROTOCOL, DIRECTION = "idx", "src->tgt"


def row_name(objective: str, pairs: int) -> str:
    """A report row: one objective at one training-pair budget (0 = all), its seeds pooled."""
    return f"{objective}/pairs-{pairs or 'all'}"


def headline(kind: str) -> str:
    """The headline metric of an eval set kind: nDCG@10 for clir, acc@1 for aligned sets."""
    return "ndcg@10" if kind == "clir" else "acc@1"
