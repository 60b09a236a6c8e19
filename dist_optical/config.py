"""Typed run configuration: dataclasses loaded from YAML, overridden by ``key.sub=value``.

Unknown keys and values of the wrong type are errors that name the key (nanoGPT's
configurator check, with visible types).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dist_optical.errors import UserError

REPO_ROOT = Path(__file__).resolve().parent.parent


class ConfigError(UserError, ValueError):
    """A configuration file or override that does not fit the schema."""


# The enumerated choices, in one place: the consumers (losses, evalsets, the stream) import them.
LOSS_TERMS = ("ot", "ot_nce", "contrastive", "mse", "english")
OT_COSTS = ("cosine", "sqeuclidean")
OT_MARGINALS = ("uniform", "idf")
OT_GRADS = ("envelope", "unrolled")  # = ot.sinkhorn.GRAD_MODES (tested): ot/ stays free of config
POOLINGS = ("mean", "cls")
PRECISIONS = ("fp32", "bf16")
ON_ERROR = ("raise", "skip")
EVAL_KINDS = ("parallel", "bible", "clir")


@dataclass
class BitextConfig:
    # The foreign language's code (e.g. swh): names its shard folder and its share in the logs.
    lang: str = ""
    # Inputs of `dist-optical shard`, relative to `data.root`: two aligned files (FOREIGN ENGLISH), one
    # TSV, or two verse-aligned Bible XMLs (FOREIGN ENGLISH).
    files: list[str] = field(default_factory=list)
    # Sampling weight against the other languages (relative); 0 = from data.temperature and the sizes.
    weight: float = 0.0


@dataclass
class DataConfig:
    # One root for every shipped data file; CI's copy is read-only, so nothing is written there.
    root: str = "../shared/data"
    # The training bitexts, one per foreign language; one stream over all of them, each pair once
    # per epoch, mixed by weight (data/stream.py).
    bitexts: list[BitextConfig] = field(
        default_factory=lambda: [
            BitextConfig("swh", ["bible/Swahili-NT.xml", "bible/English-KJV-NT.xml"]),
        ]
    )
    tgt_lang: str = "eng"
    # Temperature sampling over language sizes (w ~ n ** (1/T)): 1 = natural mixture, larger = flatter.
    temperature: float = 1.0
    # Bible books never trained on (held out for evaluation), e.g. ["REV"].
    exclude_books: list[str] = field(default_factory=lambda: ["REV"])
    # Folder of shard folders, one per language (`{shards}/{lang}-{tgt_lang}-{content hash}`;
    # relative to the repo root unless absolute); built on first use.
    shards: str = "shards"
    pairs_per_shard: int = 1000
    max_chars: int = 1000
    # Use only the first N pairs of each language's manifest order (0 = all): the low-resource knob.
    max_pairs: int = 0
    num_workers: int = 1
    shuffle_buffer: int = 1000
    on_error: str = "raise"  # raise | skip (bad samples dropped and counted)
    # With on_error=skip: a run that skipped more than this fraction of the pairs it drew fails at the end.
    max_skip_fraction: float = 0.01


@dataclass
class ModelConfig:
    # A packaged model name (see models.PACKAGED_MODELS) or a local Hugging Face folder.
    teacher: str = "all-MiniLM-L6-v2"
    # Empty: initialise the student from the teacher's weights.
    student: str = ""
    pooling: str = "mean"
    max_length: int = 64
    # Prepended to every text either model encodes, in training, eval and the exported model (E5's
    # "query: "; "" = none).
    prefix: str = ""
    # Train only the student's embedding rows that the run's texts (training data and eval sets)
    # use; the export writes them back into the full table (models/vocab.py).
    trim_vocab: bool = False
    # Freeze the student's word embeddings (keeps the shared English vocabulary anchored).
    freeze_embeddings: bool = False
    # A teacher too large for one device: ZeRO-3-partition its frozen weights over the ranks
    # (each holds 1/world_size; layers are gathered one at a time during its forward).
    teacher_partitioned: bool = False
    # For tests: build a tiny BERT from this config instead of loading weights ({} = off).
    tiny: dict[str, int] = field(default_factory=dict)


@dataclass
class OTConfig:
    eps: float = 0.05
    max_iters: int = 50
    tol: float = 0.0  # 0 = run max_iters
    cost: str = "cosine"  # cosine | sqeuclidean
    marginals: str = "uniform"  # uniform | idf
    grad: str = "envelope"  # envelope | unrolled
    # Subtract each side's mean token before the cost: removes the shared "average token"
    # direction that makes all cross-lingual costs nearly equal at the start.
    center: bool = False
    # Epsilon schedule: ratio in (0, 1) of a geometric decrease from the largest cost down to eps
    # (GeomLoss' epsilon-scaling), one log-domain iteration per value; 0 = off.
    eps_scaling: float = 0.0
    # Unbalanced OT: > 0 relaxes the marginals to KL penalties of this strength (POT's reg_m), so
    # tokens without a counterpart need not be matched; 0 = balanced (exact marginals).
    rho: float = 0.0
    # loss.ot_nce: InfoNCE over -W / nce_temperature, W the token-level OT cost of a sentence pair
    # (W spreads less across sentences than pooled cosines do, hence below contrastive.temperature).
    nce_temperature: float = 0.02


@dataclass
class ContrastiveConfig:
    temperature: float = 0.05
    symmetric: bool = True


@dataclass
class TrainConfig:
    max_steps: int = 300
    micro_batch_size: int = 16
    grad_accum: int = 1
    lr: float = 5e-5
    weight_decay: float = 0.01
    warmup_steps: int = 20
    grad_clip: float = 1.0
    seed: int = 0
    log_every: int = 10
    save_every: int = 0  # 0 = only at the end
    keep_last: int = 2
    # DeepSpeed JSON (relative to the repo root unless absolute); batch/lr/clip fields come from here.
    deepspeed: str = "configs/ds/zero1.json"
    precision: str = "fp32"  # fp32 | bf16
    # Warn when the mean pairwise cosine of the student's sentence embeddings (collapse/student_cos)
    # has used up this fraction of the room between its first-step value and 1: sentence embeddings
    # start near 0.9 for e5 and 0.5 for MiniLM, so a fixed threshold cannot fit both.
    collapse_margin: float = 0.5
    # Every N steps (0 = never), score the student on the eval set named `dev_set` (foreign queries
    # by the student, English targets by the teacher) and log dev/acc@1: the learning curve.
    eval_every: int = 0
    dev_set: str = ""


@dataclass
class EvalSet:
    name: str = ""
    # parallel: line-aligned plain text (Tatoeba, XNLI); bible: verse-aligned CES XML Bibles, the
    # verses of `books` only; clir: `queries` and `targets` are TSVs (id<TAB>text), `qrels` TREC.
    kind: str = "parallel"
    queries: str = ""  # foreign side, relative to data.root
    targets: str = ""  # English side (clir: the documents)
    max_pairs: int = 0
    books: list[str] = field(default_factory=list)  # bible: held-out books, e.g. [REV]
    qrels: str = ""  # clir: "qid 0 docid relevance" lines


@dataclass
class EvalConfig:
    sets: list[EvalSet] = field(default_factory=list)
    batch_size: int = 64


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    # Objective = weighted sum of named terms; known names: ot, contrastive, mse, english.
    loss: dict[str, float] = field(default_factory=lambda: {"ot": 1.0, "contrastive": 1.0})
    ot: OTConfig = field(default_factory=OTConfig)
    contrastive: ContrastiveConfig = field(default_factory=ContrastiveConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Build a Config from a YAML file (optional) and ``key.sub=value`` overrides, in that order."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if path.is_dir():
            raise ConfigError(f"--config {path}: is a folder; expected a YAML file (configs/default.yaml)")
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML: {err}") from err
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level, got {type(loaded).__name__}")
        raw = loaded or {}
    overridden: dict[str, str] = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"command line: override {item!r}: expected key.sub=value")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError as err:
            raise ConfigError(f"command line: override {item!r}: not valid YAML ({err})") from err
        _set_path(raw, key.strip().split("."), value)
        overridden[key.strip()] = item
    source = Source(str(path) if path is not None else "defaults", overridden)
    cfg = _build(Config, raw, source)
    validate(cfg, source)
    return cfg


@dataclass
class Source:
    """Where a config value came from: the YAML file, or a command-line override (named in errors)."""

    file: str
    overridden: dict[str, str] = field(default_factory=dict)

    def of(self, key: str) -> str:
        for dotted, item in self.overridden.items():
            if key == dotted or key.startswith(dotted + ".") or key.startswith(dotted + "["):
                return f"command line ({item})"
        return self.file

    def __str__(self) -> str:
        return self.file


def config_to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def config_hash(cfg: Config) -> str:
    return hashlib.sha256(json.dumps(config_to_dict(cfg), sort_keys=True).encode()).hexdigest()[:16]


def save_config(cfg: Config, path: Path) -> None:
    from dist_optical.atomic import atomic_write

    atomic_write(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def _set_path(raw: dict[str, Any], keys: list[str], value: Any) -> None:
    node = raw
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {'.'.join(keys)}: {key} is not a section")
        node = child
    node[keys[-1]] = value


def _where(source: str | Source, key: str) -> str:
    return source.of(key) if isinstance(source, Source) else str(source)


def _build(cls: type, raw: Any, source: str | Source, prefix: str = "") -> Any:
    """Instantiate dataclass ``cls`` from a mapping; ``prefix`` is the dotted key path so far."""
    if not isinstance(raw, dict):
        where = _where(source, prefix.rstrip("."))
        raise ConfigError(f"{where}: config key {prefix or '<top>'!r}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        raise ConfigError(
            f"{_where(source, prefix + unknown[0])}: unknown config key {prefix + unknown[0]!r} "
            f"(known here: {', '.join(sorted(names))})"
        )
    return cls(**{name: _coerce(hints[name], value, source, prefix + name) for name, value in raw.items()})


def _coerce(hint: Any, value: Any, source: str | Source, key: str) -> Any:
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, source, key + ".")
    where = _where(source, key)
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: config key {key!r}: expected a list, got {value!r}")
        (item,) = typing.get_args(hint)
        return [_coerce(item, v, source, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: config key {key!r}: expected a mapping, got {value!r}")
        key_type, value_type = typing.get_args(hint)
        return {
            _coerce(key_type, k, source, key): _coerce(value_type, v, source, f"{key}.{k}")
            for k, v in value.items()
        }
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):
        try:  # YAML 1.1 reads "1e-4" as a string
            return float(value)
        except ValueError:
            pass
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ConfigError(
            f"{where}: config key {key!r}: expected {hint.__name__}, got {type(value).__name__} {value!r}"
        )
    return value


# Ranges and choices, checked at load time so that train, run, submit (before queueing) and compare
# all refuse a bad value up front: dotted key -> (test, what is expected).
_POSITIVE = (lambda v: v > 0, "> 0")
_NONNEG = (lambda v: v >= 0, ">= 0")
_ATLEAST1 = (lambda v: v >= 1, ">= 1")
RULES: dict[str, tuple[Any, str]] = {
    "data.pairs_per_shard": _NONNEG,
    "data.max_chars": _NONNEG,
    "data.max_pairs": _NONNEG,
    "data.num_workers": _NONNEG,
    "data.shuffle_buffer": _ATLEAST1,
    "data.temperature": _POSITIVE,
    "data.on_error": (lambda v: v in ON_ERROR, f"one of {', '.join(ON_ERROR)}"),
    "data.max_skip_fraction": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "model.pooling": (lambda v: v in POOLINGS, f"one of {', '.join(POOLINGS)}"),
    "model.max_length": (lambda v: v >= 2, ">= 2 (room for the special tokens)"),
    "ot.eps": _POSITIVE,
    "ot.max_iters": _ATLEAST1,
    "ot.tol": _NONNEG,
    "ot.cost": (lambda v: v in OT_COSTS, f"one of {', '.join(OT_COSTS)}"),
    "ot.marginals": (lambda v: v in OT_MARGINALS, f"one of {', '.join(OT_MARGINALS)}"),
    "ot.grad": (lambda v: v in OT_GRADS, f"one of {', '.join(OT_GRADS)}"),
    "ot.eps_scaling": (lambda v: 0 <= v < 1, "in (0, 1), or 0 for no schedule"),
    "ot.rho": _NONNEG,
    "ot.nce_temperature": _POSITIVE,
    "contrastive.temperature": _POSITIVE,
    "train.max_steps": _POSITIVE,
    "train.micro_batch_size": _ATLEAST1,
    "train.grad_accum": _ATLEAST1,
    "train.lr": _POSITIVE,
    "train.weight_decay": _NONNEG,
    "train.warmup_steps": _NONNEG,
    "train.grad_clip": _NONNEG,
    "train.log_every": _ATLEAST1,
    "train.save_every": _NONNEG,
    "train.keep_last": _NONNEG,
    "train.precision": (lambda v: v in PRECISIONS, f"one of {', '.join(PRECISIONS)}"),
    "train.collapse_margin": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "train.eval_every": _NONNEG,
    "eval.batch_size": _ATLEAST1,
}


def validate(cfg: Config, source: str | Source = "config") -> None:
    """Every range and choice of ``cfg`` (RULES, loss weights, bitexts, eval sets); a ConfigError names
    the key, where it came from, the value and what was expected."""

    def fail(key: str, value: Any, expected: str) -> None:
        raise ConfigError(f"{_where(source, key)}: config key {key!r}: expected {expected}, got {value!r}")

    for key, (test, expected) in RULES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if not test(value):
            fail(key, value, expected)
    for name, weight in cfg.loss.items():
        if name not in LOSS_TERMS:
            fail(f"loss.{name}", weight, f"a loss term ({', '.join(LOSS_TERMS)})")
        if not weight >= 0:
            fail(f"loss.{name}", weight, ">= 0")
    if not any(weight > 0 for weight in cfg.loss.values()):
        fail("loss", cfg.loss, "at least one term with a weight > 0")
    if not cfg.data.bitexts:
        fail("data.bitexts", cfg.data.bitexts, "at least one bitext")
    for i, bitext in enumerate(cfg.data.bitexts):
        if not bitext.lang:
            fail(f"data.bitexts[{i}].lang", bitext.lang, "a language code (it names the shard folder)")
        if len(bitext.files) not in (1, 2):
            fail(f"data.bitexts[{i}].files", bitext.files, "FOREIGN ENGLISH files, or one TSV")
        if not bitext.weight >= 0:
            fail(f"data.bitexts[{i}].weight", bitext.weight, ">= 0")
    weights = [b.weight for b in cfg.data.bitexts]
    if any(weights) and not all(weights):
        fail("data.bitexts[].weight", weights, "a weight on every bitext, or on none (temperature)")
    for i, eval_set in enumerate(cfg.eval.sets):
        if eval_set.kind not in EVAL_KINDS:
            fail(f"eval.sets[{i}].kind", eval_set.kind, f"one of {', '.join(EVAL_KINDS)}")
        if not eval_set.max_pairs >= 0:
            fail(f"eval.sets[{i}].max_pairs", eval_set.max_pairs, ">= 0")


def repo_path(path: str | Path) -> Path:
    """Resolve a path relative to the repository root (absolute paths pass through)."""
    path = Path(path)
    return path if path.is_absolute() else REPO_ROOT / path


def data_path(cfg: Config, rel: str | Path) -> Path:
    """Resolve a data file under the one configurable data root."""
    rel = Path(rel)
    return rel if rel.is_absolute() else repo_path(cfg.data.root) / rel
