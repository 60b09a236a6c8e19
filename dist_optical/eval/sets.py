"""Evaluation sets on disk -> queries, targets and what counts as relevant, for `pipeline.Evaluator`.

Three kinds (``EvalSet.kind``):
- parallel: two line-aligned plain-text files (Tatoeba, XNLI); line i of the queries translates
  line i of the targets.
- bible: two verse-aligned CES XML Bibles (foreign, English); the verses of ``books`` present in
  both, paired by verse id. These books must be held out of training: `check_disjoint`.
- clir: queries and documents as TSVs (``id<TAB>text``) and TREC qrels (``qid 0 docid rel``);
  every query with at least one relevant document (rel > 0) is evaluated.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from dist_optical.config import Config, EvalSet, data_path
from dist_optical.data.bitext import read_bible_verses, verse_book
from dist_optical.errors import UserError
from dist_optical.files import read_lines

log = logging.getLogger("dist_optical.evalsets")


class EvalSetError(UserError):
    """An eval set whose files do not fit its kind; the message names the set and the file."""


@dataclass
class EvalData:
    """One loaded set. ``relevant`` (Q, R) target indices and ``gains`` (Q, R) relevance (0 pads)
    for clir; None for the aligned kinds, where query i's one relevant target is target i.
    ``keys``: the ids of the pairs (verse ids for bible; ``stem:line`` for parallel; query ids)."""

    name: str
    kind: str
    queries: list[str]
    targets: list[str]
    keys: list[str]
    relevant: Tensor | None = None
    gains: Tensor | None = None


def load_eval_set(cfg: Config, eval_set: EvalSet) -> EvalData:
    """Read ``eval_set`` (paths relative to ``data.root``); errors name the set and the file."""
    queries, targets = data_path(cfg, eval_set.queries), data_path(cfg, eval_set.targets)
    if eval_set.kind == "bible":
        return _bible(eval_set, queries, targets)
    if eval_set.kind == "clir":
        return _clir(eval_set, queries, targets, data_path(cfg, eval_set.qrels))
    src, tgt = read_lines(queries, eval_set.max_pairs), read_lines(targets, eval_set.max_pairs)
    if len(src) != len(tgt):
        raise EvalSetError(
            f"eval set {eval_set.name!r}: {eval_set.queries} has {len(src)} lines but "
            f"{eval_set.targets} has {len(tgt)}; line i must translate line i"
        )
    keys = [f"{queries.stem}:{i}" for i in range(1, len(src) + 1)]
    return EvalData(eval_set.name, "parallel", src, tgt, keys)


def _bible(eval_set: EvalSet, src_path: Path, tgt_path: Path) -> EvalData:
    if not eval_set.books:
        raise EvalSetError(f"eval set {eval_set.name!r}: kind bible needs books, e.g. [REV]")
    src, tgt = read_bible_verses(src_path), read_bible_verses(tgt_path)
    books = set(eval_set.books)
    present = {verse_book(v) for v in src} & {verse_book(v) for v in tgt}
    missing = sorted(books - present)
    if missing:
        raise EvalSetError(
            f"eval set {eval_set.name!r}: books {missing} not in both {src_path} and {tgt_path}"
        )
    # Verses empty on either side (merged into a neighbour in some translations) have no answer.
    keys = [v for v in src if verse_book(v) in books and v in tgt and src[v] and tgt[v]]
    if eval_set.max_pairs:
        keys = keys[: eval_set.max_pairs]
    return EvalData(eval_set.name, "bible", [src[k] for k in keys], [tgt[k] for k in keys], keys)


def _clir(eval_set: EvalSet, queries_path: Path, docs_path: Path, qrels_path: Path) -> EvalData:
    if not eval_set.qrels:
        raise EvalSetError(f"eval set {eval_set.name!r}: kind clir needs qrels (TREC: qid 0 docid rel)")
    queries, docs, qrels = read_id_texts(queries_path), read_id_texts(docs_path), read_trec_qrels(qrels_path)
    doc_ids = list(docs)
    doc_index = {doc: i for i, doc in enumerate(doc_ids)}
    for qid, judged in qrels.items():
        if qid not in queries:
            raise EvalSetError(f"{qrels_path}: query {qid!r} is not in {queries_path}")
        unknown = sorted(set(judged) - set(doc_index))
        if unknown:
            raise EvalSetError(
                f"{qrels_path}: query {qid!r} judges documents not in {docs_path}: {unknown[:5]}"
            )
    keys = [q for q in queries if any(rel > 0 for rel in qrels.get(q, {}).values())]
    if len(keys) < len(queries):
        log.info(
            "eval set %s: %d of %d queries have no relevant document; not evaluated",
            eval_set.name,
            len(queries) - len(keys),
            len(queries),
        )
    if eval_set.max_pairs:
        keys = keys[: eval_set.max_pairs]
    if not keys:
        raise EvalSetError(f"eval set {eval_set.name!r}: no query has a relevant document in {qrels_path}")
    positives = [[(doc_index[d], rel) for d, rel in qrels[q].items() if rel > 0] for q in keys]
    width = max(len(p) for p in positives)
    relevant = torch.zeros(len(keys), width, dtype=torch.long)
    gains = torch.zeros(len(keys), width, dtype=torch.float64)
    for i, pairs in enumerate(positives):
        for j, (index, rel) in enumerate(pairs):
            relevant[i, j], gains[i, j] = index, float(rel)
    return EvalData(
        eval_set.name, "clir", [queries[q] for q in keys], [docs[d] for d in doc_ids], keys, relevant, gains
    )


def read_id_texts(path: Path) -> dict[str, str]:
    """``id<TAB>text`` lines -> id -> text, in file order; a bad or duplicate line is named."""
    texts: dict[str, str] = {}
    for number, line in enumerate(read_lines(path), start=1):
        key, sep, text = line.partition("\t")
        if not sep or not key.strip():
            raise EvalSetError(f"{path}:{number}: expected id<TAB>text")
        if key.strip() in texts:
            raise EvalSetError(f"{path}:{number}: duplicate id {key.strip()!r}")
        texts[key.strip()] = text.strip()
    return texts


def read_trec_qrels(path: Path) -> dict[str, dict[str, int]]:
    """TREC qrels (``qid iteration docid relevance``, whitespace-separated) -> qid -> docid -> rel."""
    qrels: dict[str, dict[str, int]] = {}
    for number, line in enumerate(read_lines(path), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 4 or not fields[3].lstrip("-").isdigit():
            raise EvalSetError(f"{path}:{number}: expected 'qid iteration docid relevance', got {line!r}")
        qrels.setdefault(fields[0], {})[fields[2]] = int(fields[3])
    return qrels


def check_disjoint(train_keys: Iterable[str], eval_keys: Iterable[str], what: str) -> None:
    """Raise ValueError if a training pair is also an evaluation pair (e.g. a held-out verse)."""
    overlap = sorted(set(train_keys) & set(eval_keys))
    if overlap:
        raise EvalSetError(
            f"{what}: {len(overlap)} evaluation keys are also training keys (e.g. {overlap[:5]}); "
            "hold their books out of training (data.exclude_books)"
        )
