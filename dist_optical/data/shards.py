"""Write bitext pairs to WebDataset tar shards plus a ``manifest.json``; read one shard back.

Shard format: ``{prefix}-{000000}.tar``; one sample per pair with ``__key__`` (the pair key made
webdataset-safe), ``id.txt`` (the original key), ``src.txt`` and ``tgt.txt`` (UTF-8).

Crash safety: a build writes into a fresh temporary folder beside ``out_dir`` (each shard fsynced,
the manifest last) and swaps it in only when complete: a crash at any point leaves the previous
build intact. A folder is "built" when its manifest exists, and then every shard it lists is
complete. The build holds a lock beside the folder (a second build fails at once), refuses a folder
holding files no build wrote, and deletes nothing but its own temp folder and the files the previous
build's manifest lists.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import multiprocessing
import os
import re
import shutil
import tarfile
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm
from webdataset.gopen import gopen
from webdataset.tariterators import group_by_keys, tar_file_iterator
from webdataset.writer import TarWriter

from dist_optical.errors import UserError
from dist_optical.files import atomic_write, hold_lock, input_sha256, write_json, writing

from .bitext import BitextError, Pair, read_bitext

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
    ``wait``: seconds to wait for another build of ``out_dir`` in progress (0: fail at once), whose
    result is then used when it is a build of the same inputs and arguments.
    """
    inputs = [Path(p) for p in inputs]
    out_dir = Path(out_dir)
    exclude_books = list(exclude_books)
    prefix = prefix or f"{src_lang}-{tgt_lang}"
    args = {
        "src_lang": src_lang,
        "tgt_lang": tgt_lang,
        "pairs_per_shard": pairs_per_shard,
        "max_shard_bytes": max_shard_bytes,
        "max_chars": max_chars,
        "exclude_books": exclude_books,
        "prefix": prefix,
        "workers": workers,
    }
    start = time.perf_counter()
    skipped: Counter = Counter()
    dropped = {"empty": 0, "too_long": 0}
    pairs: list[Pair] = []
    for pair in read_bitext(inputs, exclude_books, counts=skipped):
        if not pair.src.strip() or not pair.tgt.strip():
            dropped["empty"] += 1
        elif max_chars > 0 and max(len(pair.src), len(pair.tgt)) > max_chars:
            dropped["too_long"] += 1
        else:
            pairs.append(pair)
    if not pairs:  # an empty stream would only fail later, deep in training or in a NaN
        raise BitextError(
            f"{' '.join(str(p) for p in inputs)}: no pair to shard (dropped empty={dropped['empty']} "
            f"too_long={dropped['too_long']}; skipped {dict(skipped) or 'none'}): expected at least one"
        )
    _check_unique_keys(pairs, inputs)
    chunks = plan_shards(pairs, pairs_per_shard, max_shard_bytes)

    lock = out_dir.parent / f".{out_dir.name}.lock"
    with writing(out_dir, "the shards"), hold_lock(lock, f"shard {out_dir}", wait):
        if wait and shards_ready(out_dir, inputs, **args):  # built by the job this one waited for
            return load_manifest(out_dir)
        foreign = _foreign_files(out_dir)
        if foreign:
            raise ShardFolderError(
                f"{out_dir} holds files no shard build wrote ({', '.join(foreign[:5])}"
                f"{', ...' if len(foreign) > 5 else ''}): shard into a new folder, or one only "
                "`dist-optical shard` wrote"
            )
        build = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.build-", dir=out_dir.parent))
        build.chmod(0o755)  # mkdtemp's 0700 would hide the shards from other readers
        try:
            tasks = [(build / f"{prefix}-{i:06d}.tar", chunk) for i, chunk in enumerate(chunks)]
            entries = _write_all(tasks, workers, prefix)
            manifest = {
                "format": FORMAT,
                "version": VERSION,
                "src_lang": src_lang,
                "tgt_lang": tgt_lang,
                "total_pairs": len(pairs),
                "shards": entries,
                "sources": [{"path": str(p.resolve()), "sha256": input_sha256(p)} for p in inputs],
                "dropped": dropped,
                "skipped": dict(sorted(skipped.items())),
                "args": args,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }
            write_json(build / MANIFEST, manifest, "the shard manifest")
            _swap_in(build, out_dir)
        except BaseException:
            shutil.rmtree(build, ignore_errors=True)  # only this build's own temp folder
            raise
    seconds = time.perf_counter() - start
    print(
        f"wrote {len(pairs)} pairs in {len(entries)} shards to {out_dir} ({seconds:.1f} s); "
        f"dropped empty={dropped['empty']} too_long={dropped['too_long']}; skipped {dict(skipped) or 'none'}"
    )
    return manifest


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


def _foreign_files(out_dir: Path) -> list[str]:
    """Files in ``out_dir`` that its manifest does not list (all of them, without a manifest)."""
    if not out_dir.exists():
        return []
    if not out_dir.is_dir():
        return [f"{out_dir.name} (a file, not a folder)"]
    ours = {MANIFEST} | _listed_shards(out_dir / MANIFEST)
    return sorted(p.name for p in out_dir.iterdir() if p.name not in ours)


def _swap_in(build: Path, out_dir: Path) -> None:
    """Replace ``out_dir`` by the complete ``build`` (two renames), then delete what the previous
    build's manifest listed; a crash between the renames leaves the old build whole beside it."""
    if not out_dir.exists():
        build.rename(out_dir)
        return
    old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
    out_dir.rename(old)
    build.rename(out_dir)
    for name in _listed_shards(old / MANIFEST) | {MANIFEST}:
        (old / name).unlink(missing_ok=True)
    old.rmdir()


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


def _listed_shards(manifest_path: Path) -> set[str]:
    try:
        return {s["name"] for s in json.loads(manifest_path.read_text())["shards"]}
    except (OSError, ValueError, KeyError, TypeError):
        return set()


def load_manifest(path: Path | str) -> dict[str, Any]:
    """Read a manifest (or the one inside a shard folder) and check its format version."""
    path = Path(path)
    if path.is_dir():
        path = path / MANIFEST
    manifest = json.loads(path.read_text(encoding="utf-8"))
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise ShardFolderError(f"{path}: not a {FORMAT} manifest of version {VERSION}")
    return manifest


def shards_ready(out_dir: Path | str, inputs: Sequence[Path | str], **build_args: Any) -> bool:
    """True when ``out_dir`` holds a complete build of ``inputs``: the manifest exists, its sources'
    sha256 match, every shard exists with its recorded size, and the content-changing arguments
    given in ``build_args`` (same names as ``build_shards``) match the recorded ones."""
    out_dir = Path(out_dir)
    try:
        manifest = load_manifest(out_dir)
    except (OSError, ValueError, ShardFolderError):  # missing, unreadable, or another format version
        return False
    if [s["sha256"] for s in manifest["sources"]] != [input_sha256(Path(p)) for p in inputs]:
        return False
    recorded = manifest["args"]
    for name, value in build_args.items():
        if name in _CONTENT_ARGS and value is not None:
            value = list(value) if name == "exclude_books" else value
            if recorded.get(name) != value:
                return False
    return all(
        (out_dir / s["name"]).is_file() and (out_dir / s["name"]).stat().st_size == s["bytes"]
        for s in manifest["shards"]
    )


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
