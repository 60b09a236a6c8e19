"""Typed run configuration: the schema (dataclasses), loaded from YAML and overridden by
``key.sub=value`` through typed_yaml.py, which checks types, choices and ranges.

Every value is checked once, at load time, so that train, run, submit (before queueing) and
compare all refuse a bad value up front: unknown keys, wrong types, a choice outside its `Literal`,
a number outside the range in its field's `check`. The consumers trust the config. A field marked
`resume=True` cannot change between a checkpoint and its resume.

The defaults here are the shipped default run, value for value (configs/default.yaml shows them with
the reasons; tests/test_config.py checks they are equal), so a key a YAML leaves out is the default's.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from dist_optical.typed_yaml import (
    ATLEAST1,
    FRACTION,
    NONNEG,
    POSITIVE,
    ConfigError,
    Source,
    build,
    check_ranges,
    marked,
    origin_of,
    pop_path,
    read_yaml,
    set_path,
    setting,
)

REPO_ROOT = Path(__file__).resolve().parent.parent


# The enumerated choices: a value outside its Literal is refused at load time.
# The loss terms' names, for the load-time check; what each one is, needs and costs is
# objectives/registry.py's TERMS (this layer may not import it: it refuses to import unless equal).
LossTerm = Literal["ot", "ot_nce", "contrastive", "mse", "english"]
OTCost = Literal["cosine", "sqeuclidean"]
OTMarginals = Literal["uniform", "idf"]
OTGrad = Literal["envelope", "unrolled"]  # = ot.sinkhorn.GRAD_MODES (tested): ot/ stays free of config
Pooling = Literal["mean", "cls"]
Precision = Literal["fp32", "bf16", "auto"]
OnError = Literal["raise", "skip"]
EvalKind = Literal["parallel", "bible", "clir"]
TeacherCacheDtype = Literal["none", "fp32", "fp16"]
LOSS_TERMS: tuple[str, ...] = typing.get_args(LossTerm)


@dataclass
class BitextConfig:
    # The foreign language's code (e.g. swh): names its shard folder and its share in the logs.
    lang: str = setting("", check=(lambda v: bool(v), "a language code (it names the shard folder)"))
    # Inputs of `dist-optical shard`, relative to `data.root`: two aligned files (FOREIGN PIVOT), one
    # TSV, or two verse-aligned Bible XMLs (FOREIGN PIVOT).
    files: list[str] = setting(
        factory=list, check=(lambda v: len(v) in (1, 2), "FOREIGN PIVOT files, or one TSV")
    )
    # The language of the other side, which the frozen teacher encodes: any language it knows well
    # (English, French for the news bitext of Wolof and Ewe). Names the shard folder (wol-fra-...).
    pivot: str = setting("eng", check=(lambda v: bool(v), "a language code (the side the teacher encodes)"))
    # Sampling weight against the other bitexts (relative); 0 = from data.temperature and the sizes.
    # Several bitexts may share a language (Bible and news for Wolof), each with its own weight.
    weight: float = setting(0.0, check=NONNEG)

    @property
    def pair(self) -> str:
        """``wol-fra``: the language pair, as shard folders, logs and the model card name it."""
        return f"{self.lang}-{self.pivot}"


def default_bitexts() -> list[BitextConfig]:
    """Bible verses (paired with English) and news (MAFAND-MT: Wolof and Ewe paired with French, Zulu
    and Swahili with English) for each language: a student that only learns Bible verses is of
    little use on other text. Wolof and Ewe weigh more: their bitexts are the smallest."""
    bible = "bible/English-KJV-NT.xml"
    return [
        BitextConfig("swh", ["bible/Swahili-NT.xml", bible], weight=1.0),
        BitextConfig("swh", ["mafand/swa.train.swa", "mafand/swa.train.en"], weight=1.0),
        BitextConfig("zul", ["bible/Zulu-NT.xml", bible], weight=1.0),
        BitextConfig("zul", ["mafand/zul.train.zul", "mafand/zul.train.en"], weight=1.0),
        BitextConfig("wol", ["bible/Wolof-NT.xml", bible], weight=1.5),
        BitextConfig("wol", ["mafand/wol.train.wol", "mafand/wol.train.fr"], pivot="fra", weight=3.0),
        BitextConfig("ewe", ["bible/Ewe-NT.xml", bible], weight=1.5),
        BitextConfig("ewe", ["mafand/ewe.train.ewe", "mafand/ewe.train.fr"], pivot="fra", weight=3.0),
    ]


@dataclass
class DataConfig:
    # One root for every shipped data file; CI's copy is read-only, so nothing is written there.
    root: str = "../shared/data"
    # The training bitexts (one or more per foreign language); one stream over all of them, each pair
    # once per epoch, mixed by weight (data/stream.py).
    bitexts: list[BitextConfig] = setting(
        factory=default_bitexts,
        check=(lambda v: len(v) > 0, "at least one bitext"),
        resume=True,
    )
    # Temperature sampling over language sizes (w ~ n ** (1/T)): 1 = natural mixture, larger = flatter.
    temperature: float = setting(1.0, check=POSITIVE)
    # Bible books never trained on (held out for evaluation), e.g. ["REV"].
    exclude_books: list[str] = setting(factory=lambda: ["REV"])
    # Folder of shard folders, one per bitext (`{shards}/{lang}-{pivot}-{content hash}`;
    # relative to the repo root unless absolute); built on first use.
    shards: str = "shards"
    pairs_per_shard: int = setting(1000, check=NONNEG)
    max_chars: int = setting(1000, check=NONNEG)
    # Use only the first N pairs of each bitext's manifest order (0 = all): the low-resource knob.
    # 3000: the default sees ~5k pairs in its budget, and the teacher cache then holds ~14k texts,
    # not Swahili news' 30k (configs/full.yaml trains on all).
    max_pairs: int = setting(3000, check=NONNEG)
    num_workers: int = setting(1, check=NONNEG)
    shuffle_buffer: int = setting(1000, check=ATLEAST1)
    # Length grouping: sort each window of this many pairs of the epoch's order by length, so that a
    # batch pads little (data/stream.py); 0 = off. A few global batches' worth is enough: 256 pads
    # the student ~3% instead of ~32%.
    length_window: int = setting(256, check=NONNEG)
    on_error: OnError = "raise"  # skip: bad samples dropped and counted
    # With on_error=skip: a run that skipped more than this fraction of the pairs it drew fails at the end.
    max_skip_fraction: float = setting(0.01, check=FRACTION)


@dataclass
class ModelConfig:
    # A packaged model name (see models.PACKAGED_MODELS) or a local Hugging Face folder.
    teacher: str = "multilingual-e5-small"
    # Empty: initialise the student from the teacher's weights.
    student: str = ""
    pooling: Pooling = "mean"
    # Training truncation (tokens per side): 128 covers both sides of 99.4% of all the shipped
    # training pairs (64: 86.7%). Evaluation and the exported model use eval.max_length.
    max_length: int = setting(128, check=(lambda v: v >= 2, ">= 2 (room for the special tokens)"))
    # Prepended to every text either model encodes, in training, eval and the exported model (E5's
    # "query: "; "" = none). None by default: XNLI dev sw -> en acc@1 was 91.9 zero-shot / 91.8
    # trained without one, 85.5 / 91.1 with "query: " on both sides (docs/default-run.md).
    prefix: str = ""
    # Train only the student's embedding rows that the run's texts (training data and eval sets)
    # use (e5: ~30k of 250k); the export writes them back into the full table (models/vocab.py).
    trim_vocab: bool = True
    # Freeze the student's word embeddings (keeps the shared English vocabulary anchored).
    freeze_embeddings: bool = False
    # A teacher too large for one device: ZeRO-3-partition its frozen weights over the ranks
    # (each holds 1/world_size; layers are gathered one at a time during its forward).
    teacher_partitioned: bool = False
    # For tests: build a tiny BERT from this config instead of loading weights ({} = off).
    tiny: dict[str, int] = field(default_factory=dict)


@dataclass
class OTConfig:
    eps: float = setting(0.05, check=POSITIVE)
    max_iters: int = setting(50, check=ATLEAST1)
    tol: float = setting(0.0, check=NONNEG)  # 0 = run max_iters
    cost: OTCost = "cosine"
    marginals: OTMarginals = "uniform"
    grad: OTGrad = "envelope"
    # Subtract each side's mean token before the cost: removes the shared "average token"
    # direction that makes all cross-lingual costs nearly equal at the start.
    center: bool = False
    # Epsilon schedule: ratio in (0, 1) of a geometric decrease from the largest cost down to eps
    # (GeomLoss' epsilon-scaling), one log-domain iteration per value; 0 = off.
    eps_scaling: float = setting(0.0, check=(lambda v: 0 <= v < 1, "in (0, 1), or 0 for no schedule"))
    # Unbalanced OT: > 0 relaxes the marginals to KL penalties of this strength (POT's reg_m), so
    # tokens without a counterpart need not be matched; 0 = balanced (exact marginals).
    rho: float = setting(0.0, check=NONNEG)
    # loss.ot_nce: InfoNCE over -W / nce_temperature, W the token-level OT cost of a sentence pair
    # (W spreads less across sentences than pooled cosines do, hence below contrastive.temperature).
    nce_temperature: float = setting(0.02, check=POSITIVE)


@dataclass
class ContrastiveConfig:
    temperature: float = setting(0.05, check=POSITIVE)
    symmetric: bool = True


@dataclass
class TrainConfig:
    max_steps: int = setting(260, check=POSITIVE)
    micro_batch_size: int = setting(16, check=ATLEAST1)
    grad_accum: int = setting(1, check=ATLEAST1)
    lr: float = setting(2e-5, check=POSITIVE)
    weight_decay: float = setting(0.01, check=NONNEG)
    warmup_steps: int = setting(10, check=NONNEG)
    grad_clip: float = setting(1.0, check=NONNEG)
    seed: int = 0
    log_every: int = setting(10, check=ATLEAST1)
    save_every: int = setting(0, check=NONNEG)  # 0 = only at the end
    keep_last: int = setting(2, check=NONNEG)
    # DeepSpeed JSON (relative to the repo root unless absolute); batch/lr/clip fields come from here.
    deepspeed: str = "configs/ds/zero1.json"
    # bf16: bf16 weights and activations, fp32 master weights in ZeRO's optimizer, loss math in
    # fp32 (1.8x the fp32 step on a 2-core CPU with AVX-512 BF16; the export is the fp32 master
    # copy). auto: bf16 where the hardware runs bf16 matmuls natively (a bf16 GPU, a CPU with
    # AVX-512 or AMX), else fp32: on an AVX2-only CPU a bf16 step is ~40x slower than fp32.
    precision: Precision = "auto"
    # Read the frozen teacher's English outputs from a cache built once per shard set (beside the
    # shards; train/teacher_cache.py) instead of computing them every step: fp32 gives the live
    # teacher's numbers to float rounding, fp16 half the size; none = compute live (not "off":
    # YAML reads that as false).
    teacher_cache: TeacherCacheDtype = "none"
    # Every encoder pass of a step (the teacher's and the student's) runs the batch's sequences packed
    # end to end in rows, each attending only to itself at its own positions: the numbers of one
    # padded batch without computing the padding (models.packed_hidden). false = one padded batch.
    pack: bool = setting(True, speed_only=True)
    # Seconds a job waits for another job's build of an artifact they share (the teacher cache), so
    # that a sweep on a fresh machine builds it once; past this it fails naming the builder.
    build_wait: float = setting(3600.0, check=NONNEG)
    # Warn when the mean pairwise cosine of the student's sentence embeddings (collapse/student_cos)
    # has used up this fraction of the room between its first-step value and 1: sentence embeddings
    # start near 0.9 for e5 and 0.5 for MiniLM, so a fixed threshold cannot fit both.
    collapse_margin: float = setting(0.5, check=(lambda v: 0 < v <= 1, "in (0, 1]"))
    # Every N steps (0 = never), score the student on each eval set named in `dev_sets` (default:
    # the first; foreign queries by the student, pivot targets by the teacher) and log
    # dev/SET/acc@1: the learning curves.
    eval_every: int = setting(0, check=NONNEG)
    dev_sets: list[str] = field(default_factory=list)


@dataclass
class EvalSet:
    name: str = ""
    # parallel: line-aligned plain text (Tatoeba, XNLI); bible: verse-aligned CES XML Bibles, the
    # verses of `books` only; clir: `queries` and `targets` are TSVs (id<TAB>text), `qrels` TREC.
    kind: EvalKind = "parallel"
    queries: str = ""  # foreign side, relative to data.root
    targets: str = ""  # pivot side, English or French (clir: the documents)
    max_pairs: int = setting(0, check=NONNEG)
    books: list[str] = field(default_factory=list)  # bible: held-out books, e.g. [REV]
    qrels: str = ""  # clir: "qid 0 docid relevance" lines


def default_eval_sets() -> list[EvalSet]:
    """News (MAFAND-MT dev, the first 500 lines: text unlike the Bible, never trained on), held-out
    Revelation, XNLI dev sw and Urdu (not taught: forgetting). Subsets keep the default inside its
    budget; configs/full.yaml judges on the whole sets."""
    news = [
        ("news-swh-eng", "mafand/swa.dev.swa", "mafand/swa.dev.en"),
        ("news-zul-eng", "mafand/zul.dev.zul", "mafand/zul.dev.en"),
        ("news-wol-fra", "mafand/wol.dev.wol", "mafand/wol.dev.fr"),
        ("news-ewe-fra", "mafand/ewe.dev.ewe", "mafand/ewe.dev.fr"),
    ]
    revelation = [("swh", "Swahili"), ("zul", "Zulu"), ("wol", "Wolof"), ("ewe", "Ewe")]
    xnli = [("xnli-dev-sw", "xnli/xnli.dev.sw"), ("xnli-dev-ur", "xnli/xnli.dev.ur")]
    return [
        *(EvalSet(name, "parallel", queries, targets, max_pairs=500) for name, queries, targets in news),
        *(
            EvalSet(f"rev-{lang}", "bible", f"bible/{book}-NT.xml", "bible/English-KJV-NT.xml", books=["REV"])
            for lang, book in revelation
        ),
        *(EvalSet(name, "parallel", queries, "xnli/xnli.dev.en", max_pairs=500) for name, queries in xnli),
    ]


@dataclass
class EvalConfig:
    sets: list[EvalSet] = field(default_factory=default_eval_sets)
    batch_size: int = setting(64, check=ATLEAST1)
    # Tokens per text in evaluation, the dev curve and the exported model: 0 = the encoder's own
    # maximum (e5: 512), so a long sentence is judged, and served, whole.
    max_length: int = setting(0, check=(lambda v: v == 0 or v >= 2, "0 (the encoder's maximum) or >= 2"))


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = setting(factory=ModelConfig, resume=True)
    # Objective = weighted sum of named terms (objectives/registry.py); weight-0 terms are skipped.
    # The default: InfoNCE (learns the language) + 100 x pooled MSE to the teacher on the pivot side
    # (keeps the foreign sentences where the teacher's index expects them) + 100 x MSE of the
    # student's own pivot embeddings to the teacher's (keeps its English and French).
    loss: dict[LossTerm, float] = setting(
        factory=lambda: {"contrastive": 1.0, "mse": 100.0, "english": 100.0}, resume=True
    )
    ot: OTConfig = setting(factory=OTConfig, resume=True)
    contrastive: ContrastiveConfig = setting(factory=ContrastiveConfig, resume=True)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Build a Config from a YAML file (optional) and ``key.sub=value`` overrides, in that order."""
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        raw = read_yaml(path, Config)
    overridden: dict[str, str] = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"command line: override {item!r}: expected key.sub=value")
        try:
            value = yaml.safe_load(text) if text.strip() else ""
        except yaml.YAMLError as err:
            raise ConfigError(f"command line: override {item!r}: not valid YAML ({err})") from err
        set_path(raw, key.strip().split("."), value)
        overridden[key.strip()] = item
    source = Source(str(path) if path is not None else "defaults", overridden)
    _drop_retired(raw, source)
    cfg = build(Config, raw, source)
    validate(cfg, source)
    return cfg


# Keys that earlier versions wrote into run folders' config.yaml and that no longer mean anything:
# such a folder still resumes and exports. Each maps to what replaced it.
RETIRED = {"train.pivot_chunks": "train.pack"}


def _drop_retired(raw: dict[str, Any], source: Source) -> None:
    for dotted, successor in RETIRED.items():
        if pop_path(raw, dotted):
            logging.getLogger("dist_optical.config").warning(
                "%s: %s is retired (now %s); ignored", source.of(dotted), dotted, successor
            )


def config_to_dict(cfg: Config) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def config_hash(cfg: Config) -> str:
    """What a run was made from: the resolved config without its speed-only fields."""
    outcome = config_to_dict(cfg)
    for dotted in speed_only_keys():
        pop_path(outcome, dotted)
    return hashlib.sha256(json.dumps(outcome, sort_keys=True).encode()).hexdigest()[:16]


def save_config(cfg: Config, path: Path) -> None:
    from dist_optical.files import atomic_write

    atomic_write(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def validate(cfg: Config, source: str | Source = "config") -> None:
    """Every field's range (its ``check``) and the rules across fields; a ConfigError names the key,
    where it came from, the value and what was expected."""

    def fail(key: str, value: Any, expected: str) -> None:
        raise ConfigError(f"{origin_of(source, key)}: config key {key!r}: expected {expected}, got {value!r}")

    check_ranges(cfg, source)
    for name, weight in cfg.loss.items():
        if not weight >= 0:
            fail(f"loss.{name}", weight, ">= 0")
    if not any(weight > 0 for weight in cfg.loss.values()):
        fail("loss", cfg.loss, "at least one term with a weight > 0")
    weights = [b.weight for b in cfg.data.bitexts]
    if any(weights) and not all(weights):
        fail("data.bitexts[].weight", weights, "a weight on every bitext, or on none (temperature)")
    if cfg.train.teacher_cache != "none" and cfg.model.teacher_partitioned:
        whole = "none with model.teacher_partitioned (a rank holds a shard of the teacher, not all of it)"
        fail("train.teacher_cache", cfg.train.teacher_cache, whole)
    if cfg.train.eval_every:
        names = [s.name for s in cfg.eval.sets]
        for dev_set in cfg.train.dev_sets or names[:1] or [""]:
            if dev_set not in names:
                fail("train.dev_sets", dev_set, f"one of eval.sets ({', '.join(names) or 'none'}): "
                     "train.eval_every > 0 scores the student on it")  # fmt: skip
            if cfg.eval.sets[names.index(dev_set)].kind == "clir":
                fail("train.dev_sets", dev_set, "an aligned set (parallel or bible), not a clir one")


def resume_sensitive(cls: type = Config) -> list[str]:
    """Dotted keys of the fields marked ``resume=True``: changing one between a checkpoint and its
    resume would silently train a different thing."""
    return marked("resume", cls)


def speed_only_keys(cls: type = Config) -> list[str]:
    """Dotted keys of the fields marked ``speed_only=True``."""
    return marked("speed_only", cls)


def repo_path(path: str | Path) -> Path:
    """Resolve a path relative to the repository root (absolute paths pass through)."""
    path = Path(path)
    return path if path.is_absolute() else REPO_ROOT / path


def data_path(cfg: Config, rel: str | Path) -> Path:
    """Resolve a data file under the one configurable data root."""
    rel = Path(rel)
    return rel if rel.is_absolute() else repo_path(cfg.data.root) / rel
