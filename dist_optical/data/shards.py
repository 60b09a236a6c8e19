"""Write bitext pairs to WebDataset tar shards plus a ``manifest.json``; read one shard back.

Shard format: ``{prefix}-{000000}.tar``; one sample per pair with ``__key__`` (the pair key made
webdataset-safe), ``id.txt`` (the original key), ``src.txt`` and ``tgt.txt`` (UTF-8).

A shard folder is a built artifact (``artifacts.build_once``, keyed by ``shard_key``: the inputs'
sha256s and the arguments that change the shards): written into a temp folder beside ``out_dir``
under a lock (another build in progress: fail at once, or wait ``wait`` s and use its result),
marked complete last (`artifact.json`: each file's size and sha256), checked on every open, moved
aside and rebuilt when damaged, and swapped in for a build of other inputs or arguments, whose
files alone are then deleted: a crash at any point leaves the previous build intact, and a folder
holding files no build wrote is refused. A folder from before markers (a manifest and exactly the
shards it lists, all matching it) is marked in place, not rebuilt. Readers read the manifest.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import multiprocessing
import re
import tarfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm
from webdataset.gopen import gopen
from webdataset.tariterators import group_by_keys, tar_file_iterator
from webdataset.writer import TarWriter

from dist_optical import artifacts
from dist_optical.errors import UserError
from dist_optical.files import atomic_write, input_sha256, sha256_file, write_json

from .bitext import BitextError, Pair, check_bitext_files, read_bitext

MANIFEST = "manifest.json"
FORMAT = "dist_optical.shards"
VERSION = 2  # 2: each shard entry lists its pairs' lengths (the stream's length grouping)
FIELDS = ("id.txt", "src.txt", "tgt.txt")
_BLOCK = 512  # tar header and data block size
# build_shards arguments that change shard contents; a manifest built with others is stale.
_CONTENT_ARGS = (
    "src_lang",
    "tgt_lang",
    "pairs_per_shard",
    "max_shard_bytes",
    "max_chars",
    "exclude_books",
    "prefix",
)


class ShardReadError(UserError):
    """A shard that cannot be read to its end; the message names the shard and the last good key."""

    def __init__(self, url: str, detail: str) -> None:
        super().__init__(f"shard {url}: {detail}")
        self.detail = detail


def safe_key(key: str) -> str:
    """A webdataset-safe ``__key__``: webdataset splits file names on the first dot, so ``b.MAT.1.1``
    would lose its verse; keep only ``[A-Za-z0-9_-]`` (``b_MAT_1_1``). The original key is in id.txt."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", key)


def _sample_bytes(pair: Pair) -> int:
    """Tar bytes of one sample: a header block per file plus its data rounded up to whole blocks."""
    sizes = (len(pair.key.encode()), len(pair.src.encode()), len(pair.tgt.encode()))
    return sum(_BLOCK + -(-size // _BLOCK) * _BLOCK for size in sizes)


def _tar_size(sample_bytes: int) -> int:
    """File size of a tar holding ``sample_bytes``: two zero end blocks, padded to tarfile's 10 KiB record."""
    return -(-(sample_bytes + 2 * _BLOCK) // tarfile.RECORDSIZE) * tarfile.RECORDSIZE


def plan_shards(pairs: Sequence[Pair], pairs_per_shard: int, max_shard_bytes: int) -> list[list[Pair]]:
    """Split pairs into consecutive shards, closing one at ``pairs_per_shard`` pairs or before its tar
    file would exceed ``max_shard_bytes`` (0 = no limit; a single larger pair still gets a shard).
    Like webdataset's ShardWriter(maxcount, maxsize), but planned up front so shards can be written
    in parallel."""
    if pairs_per_shard <= 0 and max_shard_bytes <= 0:
        raise ShardFolderError("set pairs_per_shard or max_shard_bytes (> 0) to bound the shard size")
    shards: list[list[Pair]] = []
    current: list[Pair] = []
    size = 0
    for pair in pairs:
        nbytes = _sample_bytes(pair)
        full = pairs_per_shard > 0 and len(current) >= pairs_per_shard
        too_big = max_shard_bytes > 0 and current and _tar_size(size + nbytes) > max_shard_bytes
        if full or too_big:
            shards.append(current)
            current, size = [], 0
        current.append(pair)
        size += nbytes
    if current:
        shards.append(current)
    return shards


def write_shard(path: Path, pairs: Sequence[Pair]) -> dict[str, Any]:
    """Write one shard atomically (temp file, fsync, rename) -> its manifest entry."""
    buffer = io.BytesIO()
    # mtime=0: identical input gives byte-identical shards (stable sha256 across rebuilds).
    with TarWriter(buffer, mtime=0) as writer:
        for pair in pairs:
            writer.write(
                {"__key__": safe_key(pair.key), "id.txt": pair.key, "src.txt": pair.src, "tgt.txt": pair.tgt}
            )
    data = buffer.getvalue()
    atomic_write(path, data)
    return {
        "name": path.name,
        "pairs": len(pairs),
        "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "lengths": [pair_length(pair.src, pair.tgt) for pair in pairs],
    }


def pair_length(src: str, tgt: str) -> int:
    """What length grouping sorts by: both sides' characters (a tokenizer-free proxy for tokens)."""
    return len(src) + len(tgt)


def _write_task(task: tuple[Path, list[Pair]]) -> dict[str, Any]:
    return write_shard(*task)


def build_shards(
    inputs: Sequence[Path | str],
    out_dir: Path | str,
    src_lang: str,
    tgt_lang: str,
    pairs_per_shard: int = 1000,
    max_shard_bytes: int = 0,
    max_chars: int = 1000,
    exclude_books: Iterable[str] = (),
    workers: int = 1,
    prefix: str | None = None,
    wait: float = 0,
) -> dict[str, Any]:
    """Read one bitext source (see ``read_bitext``), drop empty / over-long pairs, write tar shards and
    the manifest into ``out_dir``; returns the manifest. ``workers > 1`` writes shards in parallel
    processes (one task per shard). All pairs are held in memory: fine for bitext of a few million pairs.
    ``out_dir`` already holding a complete build of the same inputs and arguments (``shard_key``) is
    opened as it is; a build of others is replaced (module docstring).
    ``wait``: seconds to wait for another build of ``out_dir`` in progress (0: fail at once), whose
    result is then used when it is a build of the same inputs and arguments.
    """
    inputs = check_bitext_files(inputs)  # before hashing them for the key
    out_dir = Path(out_dir)
    key = shard_key(
        inputs, src_lang, tgt_lang, pairs_per_shard, max_shard_bytes, max_chars, exclude_books, prefix
    )
    args = {**{name: key[name] for name in _CONTENT_ARGS}, "workers": workers}
    built: list[dict[str, Any]] = []

    def build(tmp: Path) -> dict[str, Any]:
        built.append(_write_build(tmp, inputs, args))
        return {}

    start = time.perf_counter()
    artifacts.build_once(out_dir, build, "the shards", wait, key=key, adopt=_adopt)
    if not built:  # a complete build of the same inputs and arguments: opened as it is
        return load_manifest(out_dir)
    manifest = built[0]
    print(
        f"wrote {manifest['total_pairs']} pairs in {len(manifest['shards'])} shards to {out_dir} "
        f"({time.perf_counter() - start:.1f} s); dropped empty={manifest['dropped']['empty']} "
        f"too_long={manifest['dropped']['too_long']}; skipped {manifest['skipped'] or 'none'}"
    )
    return manifest


def _write_build(tmp: Path, inputs: list[Path], args: dict[str, Any]) -> dict[str, Any]:
    """The shards and the manifest of ``inputs``, written into the empty folder ``tmp``."""
    skipped: Counter = Counter()
    dropped = {"empty": 0, "too_long": 0}
    pairs: list[Pair] = []
    for pair in read_bitext(inputs, args["exclude_books"], counts=skipped):
        if not pair.src.strip() or not pair.tgt.strip():
            dropped["empty"] += 1
        elif args["max_chars"] > 0 and max(len(pair.src), len(pair.tgt)) > args["max_chars"]:
            dropped["too_long"] += 1
        else:
            pairs.append(pair)
    if not pairs:  # an empty stream would only fail later, deep in training or in a NaN
        raise BitextError(
            f"{' '.join(str(p) for p in inputs)}: no pair to shard (dropped empty={dropped['empty']} "
            f"too_long={dropped['too_long']}; skipped {dict(skipped) or 'none'}): expected at least one"
        )
    _check_unique_keys(pairs, inputs)
    chunks = plan_shards(pairs, args["pairs_per_shard"], args["max_shard_bytes"])
    prefix = args["prefix"]
    tasks = [(tmp / f"{prefix}-{i:06d}.tar", chunk) for i, chunk in enumerate(chunks)]
    entries = _write_all(tasks, args["workers"], prefix)
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "src_lang": args["src_lang"],
        "tgt_lang": args["tgt_lang"],
        "total_pairs": len(pairs),
        "shards": entries,
        "sources": [{"path": str(p.resolve()), "sha256": input_sha256(p)} for p in inputs],
        "dropped": dropped,
        "skipped": dict(sorted(skipped.items())),
        "args": args,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json(tmp / MANIFEST, manifest, "the shard manifest")
    return manifest


def shard_key(
    inputs: Sequence[Path | str],
    src_lang: str,
    tgt_lang: str,
    pairs_per_shard: int = 1000,
    max_shard_bytes: int = 0,
    max_chars: int = 1000,
    exclude_books: Iterable[str] = (),
    prefix: str | None = None,
) -> dict[str, Any]:
    """What a shard folder's content is a function of (its marker's ``key``): the format version, the
    inputs' sha256s and the arguments of ``build_shards`` that change the shards."""
    args = {
        "src_lang": src_lang,
        "tgt_lang": tgt_lang,
        "pairs_per_shard": pairs_per_shard,
        "max_shard_bytes": max_shard_bytes,
        "max_chars": max_chars,
        "exclude_books": list(exclude_books),
        "prefix": prefix or f"{src_lang}-{tgt_lang}",
    }
    return _key(FORMAT, VERSION, [input_sha256(Path(p)) for p in inputs], args)


def _key(format_: str, version: int, sources: list[str], args: dict[str, Any]) -> dict[str, Any]:
    """A shard folder's marker key: its format and version, the inputs' sha256s, the content args."""
    return {
        "format": format_,
        "version": version,
        "sources": sources,
        **{name: args[name] for name in _CONTENT_ARGS},
    }


def shards_ready(out_dir: Path | str, inputs: Sequence[Path | str], *args: Any, **kwargs: Any) -> bool:
    """True when ``out_dir`` holds a complete build of ``inputs`` with these arguments (those of
    ``shard_key``; left out: their defaults), which ``build_shards`` would open as it is."""
    return artifacts.ready(Path(out_dir), shard_key(inputs, *args, **kwargs))


class ShardFolderError(UserError):
    """A shard output folder that a build may not write into."""


def _write_all(tasks: list[tuple[Path, list[Pair]]], workers: int, prefix: str) -> list[dict[str, Any]]:
    progress = tqdm(total=len(tasks), unit="shard", desc=f"shards {prefix}", disable=None)
    entries = []
    if workers > 1:
        # The platform default (fork on Linux): spawn would re-import torch in every worker (seconds).
        with multiprocessing.get_context().Pool(workers) as pool:
            for entry in pool.imap(_write_task, tasks):
                entries.append(entry)
                progress.update()
    else:
        for task in tasks:
            entries.append(_write_task(task))
            progress.update()
    progress.close()
    return entries


def _adopt(out_dir: Path) -> dict[str, Any] | None:
    """A folder without a marker (artifacts.build_once's ``adopt``): a build by a version from before
    shard folders had one (its manifest and exactly the shards it lists, each of its recorded size and
    sha256) -> its marker's meta, keyed as its manifest says it was built; a manifest or shard that
    does not match -> None (damaged: moved aside); any other file -> refused, untouched."""
    if not out_dir.is_dir():
        raise ShardFolderError(f"{out_dir} is a file, not a folder: shard into a new folder")
    try:
        manifest = json.loads((out_dir / MANIFEST).read_text(encoding="utf-8"))
        listed = {s["name"]: s for s in manifest["shards"]}
    except (OSError, ValueError, KeyError, TypeError):
        manifest, listed = None, {}
    foreign = sorted(p.name for p in out_dir.iterdir() if p.name != MANIFEST and p.name not in listed)
    if foreign:
        raise ShardFolderError(
            f"{out_dir} holds files no shard build wrote ({', '.join(foreign[:5])}"
            f"{', ...' if len(foreign) > 5 else ''}): shard into a new folder, or one only "
            "`dist-optical shard` wrote"
        )
    try:
        sources = [s["sha256"] for s in manifest["sources"]]
        key = _key(manifest["format"], manifest["version"], sources, manifest["args"])
        intact = all(
            (out_dir / name).is_file()
            and (out_dir / name).stat().st_size == s["bytes"]
            and sha256_file(out_dir / name) == s["sha256"]
            for name, s in listed.items()
        )
    except (KeyError, TypeError):  # no manifest, or not one of ours
        return None
    return {"key": key} if intact and manifest["format"] == FORMAT else None


def _check_unique_keys(pairs: Sequence[Pair], inputs: Sequence[Path]) -> None:
    seen: dict[str, str] = {}
    for pair in pairs:
        key = safe_key(pair.key)
        if key in seen:
            raise ShardFolderError(
                f"{[str(p) for p in inputs]}: keys {seen[key]!r} and {pair.key!r} "
                f"collide as shard key {key!r}"
            )
        seen[key] = pair.key


def load_manifest(path: Path | str) -> dict[str, Any]:
    """Read a manifest (or the one inside a shard folder) and check its format version."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise ShardFolderError(f"{path}: not a {FORMAT} manifest of version {VERSION}")
    return manifest


def read_shard(url: str, data: bytes | None = None) -> Iterator[dict[str, Any]]:
    """Raw samples (``__key__`` plus field bytes) of one shard in tar order, via webdataset's tar
    iterator, so local paths, ``file:`` and ``pipe:`` URLs all work (``data``: the shard's bytes,
    already read). A tar that breaks mid-way raises ShardReadError naming the shard and the last
    complete key. Note that Python's streaming tar reader stops silently at a corrupt header, so
    callers must also compare the count with the manifest."""
    last = None
    try:
        with contextlib.closing(io.BytesIO(data) if data is not None else gopen(url, "rb")) as stream:
            files = ({**f, "__url__": url} for f in tar_file_iterator(stream))
            for sample in group_by_keys(files):
                last = sample["__key__"]
                yield sample
    except (tarfile.TarError, OSError, EOFError, ValueError) as err:
        where = f"after key {last!r}" if last else "before the first sample"
        raise ShardReadError(url, f"unreadable {where}: {err}") from err
