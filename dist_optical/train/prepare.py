"""What a run's setup needs from its training pairs, from one read of them.

Before step 1 a run may need, from the pairs it trains on (the first data.max_pairs of each bitext,
in manifest order, unshuffled): the rows of its trimmed student vocabulary (model.trim_vocab; the
main rank of a fresh run writes them to RUN/vocab.json, which every rank then reads), each pair's
foreign side in student tokens (data.length_window), idf tables (OT terms with idf marginals) and
the distinct pivot texts (a teacher cache to build). `prepare_run` reads the pairs once when any of
these needs them on this rank, and not at all when none does (a resumed run reads vocab.json back).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor
from transformers import PreTrainedTokenizerBase

from dist_optical.config import Config
from dist_optical.data import ShardStream
from dist_optical.data.prepare import student_lengths
from dist_optical.engine import dist
from dist_optical.eval.sets import load_eval_set
from dist_optical.files import atomic_write
from dist_optical.models import student_name
from dist_optical.models.vocab import VOCAB_FILE, VocabError, run_kept_ids, save_kept_ids, used_ids
from dist_optical.objectives import idf_table, needs

log = logging.getLogger("dist_optical.train")

Pair = dict[str, str]  # a ShardStream sample: key, src, tgt, lang, pair


@dataclass
class Prepared:
    """What `prepare_run` returns; None where the run (or this rank) does not use it."""

    kept_ids: Tensor | None  # the trimmed student's rows (RUN/vocab.json); None: the whole vocabulary
    lengths: list[int] | None  # per training pair (sample-id order): its foreign side in student tokens
    teacher_idf: Tensor | None  # (teacher vocab,) idf of the pivot sides, for idf marginals
    student_idf: Tensor | None  # (student vocab,) idf of the foreign sides
    pivots: set[str] | None  # the distinct pivot texts, when the pairs were read and a cache may need them


def prepare_run(
    cfg: Config,
    out: Path,
    manifests: list[Path],
    source: Path | None,
    is_main: bool,
    teacher_tok: PreTrainedTokenizerBase,
    student_tok: PreTrainedTokenizerBase,
) -> Prepared:
    """Read the training pairs (once, and only if this rank needs them), then derive each piece.

    ``source`` is the run folder of the checkpoint to resume from (None: a fresh run)."""
    trims = cfg.model.trim_vocab and is_main and source is None  # else vocab.json is read back
    lengths = cfg.data.length_window > 0 and cfg.data.on_error != "skip"  # skip: no lengths to sort by
    idf = needs(cfg.loss, "ot_plan") and cfg.ot.marginals == "idf"
    pairs = read_pairs(cfg, manifests) if trims or lengths or idf else None
    kept_ids = student_vocab(cfg, out, pairs, source, is_main, student_tok)
    teacher_idf, student_idf = (
        idf_tables(pairs, teacher_tok, student_tok, cfg.model.max_length) if idf else (None, None)
    )
    return Prepared(
        kept_ids=kept_ids,
        lengths=student_lengths(cfg, pairs, student_tok) if lengths else None,
        teacher_idf=teacher_idf,
        student_idf=student_idf,
        pivots=pivot_texts(pairs) if pairs is not None and cfg.train.teacher_cache != "none" else None,
    )


def read_pairs(cfg: Config, manifests: list[Path]) -> list[Pair]:
    """The pairs the run trains on, in sample-id (manifest) order: the first data.max_pairs of each
    manifest, bad ones dropped under data.on_error=skip."""
    stream = ShardStream(manifests, shuffle=False, max_pairs=cfg.data.max_pairs, on_error=cfg.data.on_error)
    return list(stream)


def pivot_texts(pairs: Sequence[Pair]) -> set[str]:
    """The distinct pivot sides (English or French): what a teacher cache holds."""
    return {pair["tgt"] for pair in pairs}


def student_vocab(
    cfg: Config,
    out: Path,
    pairs: Sequence[Pair] | None,
    source: Path | None,
    is_main: bool,
    tokenizer: PreTrainedTokenizerBase,
) -> Tensor | None:
    """The kept rows of a trimmed student: computed on a fresh run (main rank, from ``pairs``) into
    RUN/vocab.json; a resumed run (any world size) and `export` read them back from there. A run
    resumed from another run's checkpoint (``source``) carries that run's vocab.json into ``out`` first."""
    if not cfg.model.trim_vocab:
        return None
    path = out / VOCAB_FILE
    with dist.main_rank_first(is_main):  # the main rank writes vocab.json, every rank reads it back
        if is_main and source is None:
            kept = used_ids(tokenizer, run_texts(cfg, pairs))
            save_kept_ids(path, kept, student_name(cfg.model))
            log.info("trimmed the student's vocabulary to the %d rows this run's texts use", len(kept))
        elif is_main and source.resolve() != out.resolve() and not path.exists():
            carry_vocab(source / VOCAB_FILE, path)
    return run_kept_ids(cfg.model.trim_vocab, out)


def run_texts(cfg: Config, pairs: Sequence[Pair]) -> Iterator[str]:
    """Every text the student may encode in this run: both sides of the training pairs and of every
    eval set, prefixed as the student sees them."""
    for pair in pairs:
        yield cfg.model.prefix + pair["src"]
        yield cfg.model.prefix + pair["tgt"]
    for eval_set in cfg.eval.sets:
        data = load_eval_set(cfg, eval_set)
        yield from (cfg.model.prefix + text for text in data.queries + data.targets)


def carry_vocab(source: Path, path: Path) -> None:
    """The checkpoint's rows are those of its own run's vocabulary: without it they cannot be rebuilt."""
    if not source.is_file():
        raise VocabError(
            f"--resume from {source.parent}: {source} is missing, and a model.trim_vocab checkpoint's rows "
            "mean nothing without it (resume with the whole run folder, or train from scratch)"
        )
    atomic_write(path, source.read_bytes(), "the run's vocabulary")
    log.info("carried %s into %s (the checkpoint's trimmed vocabulary)", source, path)


def idf_tables(pairs: Sequence[Pair], teacher_tok, student_tok, max_length: int) -> tuple[Tensor, Tensor]:
    """(teacher vocab,), (student vocab,) idf over the training ``pairs``: English by the teacher's
    tokenizer, foreign by the student's, truncated as in training."""
    teacher_ids = teacher_tok([p["tgt"] for p in pairs], truncation=True, max_length=max_length)["input_ids"]
    student_ids = student_tok([p["src"] for p in pairs], truncation=True, max_length=max_length)["input_ids"]
    return idf_table(teacher_ids, len(teacher_tok)), idf_table(student_ids, len(student_tok))
