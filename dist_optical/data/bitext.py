"""Read parallel text (bitext) into ``Pair(key, src, tgt)``: src = foreign (student side), tgt = English.

Three input layouts, chosen by extension:
- two aligned plain-text files ``FOREIGN ENGLISH``, one sentence per line (key ``<stem>:<lineno>``);
- one ``.tsv`` with ``src<TAB>tgt`` rows, or ``key<TAB>src<TAB>tgt`` rows under a first row
  ``key<TAB>src<TAB>tgt`` that declares them (3 undeclared columns are refused as ambiguous);
- two CES XML Bibles ``FOREIGN.xml ENGLISH.xml`` paired by verse id (key = verse id, e.g. ``b.MAT.1.1``).

Every error names the file and, where there is one, the line: a bad row in a 7k-line corpus must be
findable without a debugger.
"""

from __future__ import annotations

import logging
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import NamedTuple

from dist_optical.errors import UserError
from dist_optical.files import text_lines

logger = logging.getLogger(__name__)


# The first row of a 3-column TSV, declaring its columns: without it, 3 columns are refused.
KEYED_TSV_HEADER = ["key", "src", "tgt"]


class Pair(NamedTuple):
    key: str
    src: str  # foreign sentence (student side)
    tgt: str  # English sentence (teacher side)


class BitextError(UserError):
    """Input bitext that cannot be read; the message names the file (and line)."""


def read_bitext(
    paths: list[Path] | list[str],
    exclude_books: Iterable[str] = (),
    counts: Counter | None = None,
) -> Iterator[Pair]:
    """Yield the pairs of one bitext source (see module docstring for the layouts).

    ``exclude_books`` (Bible XML only) drops whole books, e.g. ``["REV"]`` held out for evaluation.
    ``counts``, if given, is filled with what was skipped (``unpaired_src``, ``unpaired_tgt``,
    ``excluded``) once the iterator is exhausted.
    """
    paths = check_bitext_files(paths)
    exclude_books = list(exclude_books)
    counts = Counter() if counts is None else counts
    suffixes = [p.suffix.lower() for p in paths]
    if len(paths) == 2 and suffixes == [".xml", ".xml"]:
        return _read_bible_pairs(paths[0], paths[1], exclude_books, counts)
    if exclude_books:
        # Not an error, nor worth a warning: the default holds out REV of the Bible beside news bitexts.
        logger.info("exclude_books=%s only applies to Bible XML input; ignored for %s", exclude_books, paths)
    if len(paths) == 1 and suffixes == [".tsv"]:
        return _read_tsv(paths[0])
    if len(paths) == 2 and not {".xml", ".tsv"} & set(suffixes):
        return _read_aligned(paths[0], paths[1])
    raise BitextError(
        f"unsupported bitext input {[str(p) for p in paths]}: expected two plain-text files "
        "(FOREIGN ENGLISH), one .tsv, or two .xml Bibles (FOREIGN ENGLISH)"
    )


def check_bitext_files(paths: list[Path] | list[str]) -> list[Path]:
    """``paths`` as Paths, each an existing file: a folder or a typo is named before any work."""
    paths = [Path(p) for p in paths]
    for path in paths:
        if path.is_dir():
            raise BitextError(f"{path}: is a folder; expected a bitext file (text, .tsv or Bible .xml)")
        if not path.is_file():
            raise BitextError(f"{path}: no such file")
    return paths


def _count_lines(path: Path) -> int:
    with path.open("rb") as f:
        return sum(1 for _ in f)


def _read_aligned(src_path: Path, tgt_path: Path) -> Iterator[Pair]:
    # Count first: a length mismatch means the files are not aligned at all, so fail before any pair.
    n_src, n_tgt = _count_lines(src_path), _count_lines(tgt_path)
    if n_src != n_tgt:
        raise BitextError(f"line counts differ: {src_path} has {n_src} lines, {tgt_path} has {n_tgt}")
    lines = zip(text_lines(src_path, BitextError), text_lines(tgt_path, BitextError), strict=True)
    for (lineno, src), (_, tgt) in lines:
        yield Pair(f"{src_path.stem}:{lineno}", src.strip(), tgt.strip())


def _read_tsv(path: Path) -> Iterator[Pair]:
    n_cols = 0
    seen: dict[str, int] = {}
    for lineno, line in text_lines(path, BitextError):
        cols = line.split("\t")
        if n_cols == 0 and [c.strip() for c in cols] == KEYED_TSV_HEADER:
            n_cols = 3
            continue
        if n_cols == 0:
            if len(cols) != 2:  # 3 undeclared could as well be src, tgt and a score as key, src, tgt
                raise BitextError(
                    f"{path}:{lineno}: expected 2 tab-separated columns (src, tgt), or 3 (key, src, tgt) "
                    f"declared by a first row 'key<TAB>src<TAB>tgt'; got {len(cols)}"
                )
            n_cols = 2
        elif len(cols) != n_cols:
            raise BitextError(f"{path}:{lineno}: expected {n_cols} tab-separated columns, got {len(cols)}")
        if n_cols == 2:
            yield Pair(f"{path.stem}:{lineno}", cols[0].strip(), cols[1].strip())
            continue
        key = cols[0].strip()
        if key in seen:
            raise BitextError(f"{path}:{lineno}: duplicate key {key!r} (first on line {seen[key]})")
        seen[key] = lineno
        yield Pair(key, cols[1].strip(), cols[2].strip())


def read_bible_verses(path: Path | str) -> dict[str, str]:
    """Verse id -> text (whitespace collapsed) of a CES XML Bible, in file order.

    Only ``<seg>`` elements with an ``id`` (and ``type="verse"`` when a type is given) count.
    """
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        line, col = err.position
        raise BitextError(f"{path}:{line}:{col}: malformed XML: {err}") from err
    verses: dict[str, str] = {}
    for seg in root.iter("seg"):
        verse_id = seg.get("id")
        if verse_id is None or seg.get("type", "verse") != "verse":
            continue
        if verse_id in verses:
            raise BitextError(f"{path}: duplicate verse id {verse_id!r}")
        verses[verse_id] = " ".join("".join(seg.itertext()).split())
    if not verses:
        raise BitextError(f'{path}: no <seg id="..." type="verse"> verse found; not a CES XML Bible?')
    return verses


def verse_book(verse_id: str) -> str:
    """``b.MAT.1.1`` -> ``MAT``."""
    parts = verse_id.split(".")
    return parts[1] if len(parts) > 1 else verse_id


def is_verse_id(key: str) -> bool:
    """Whether a pair's key is a Bible verse id (``b.MAT.1.1``), not a line of plain text."""
    parts = key.split(".")
    return len(parts) == 4 and parts[0] == "b"


def _read_bible_pairs(
    src_path: Path, tgt_path: Path, exclude_books: list[str], counts: Counter
) -> Iterator[Pair]:
    src, tgt = read_bible_verses(src_path), read_bible_verses(tgt_path)
    books = {verse_book(v) for v in src} | {verse_book(v) for v in tgt}
    unknown = sorted(set(exclude_books) - books)
    if unknown:
        # A typo ("rev", "Rev") would silently train on the held-out book: refuse it.
        raise BitextError(
            f"exclude_books {unknown} not found in {src_path} or {tgt_path} "
            f"(books: {' '.join(sorted(books))})"
        )
    excluded = set(exclude_books)
    for verse_id, src_text in src.items():
        if verse_book(verse_id) in excluded:
            counts["excluded"] += 1
        elif verse_id not in tgt:
            counts["unpaired_src"] += 1
        else:
            yield Pair(verse_id, src_text, tgt[verse_id])
    counts["unpaired_tgt"] += sum(1 for v in tgt if v not in src and verse_book(v) not in excluded)
