"""Write a trained student as a complete sentence-transformers folder, atomically.

``SentenceTransformer(DIR)`` then gives the embeddings `dist-optical eval` computes: the same
tokenizer and truncation (``max_seq_length``), pooling, L2 normalisation and prefix (a default
prompt). ``AutoModel.from_pretrained(DIR)`` still loads the bare encoder. ``dist_optical.json``
records the teacher whose embeddings index the English side, and ``README.md`` is the model card.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from torch import nn
from transformers import PreTrainedTokenizerBase

from dist_optical.files import atomic_write
from dist_optical.models import ModelError

EXPORT_META = "dist_optical.json"
PROMPT_NAME = "default"


def save_student(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, out: Path, meta: dict[str, Any], card: str
) -> None:
    """``meta`` holds at least max_length, pooling and prefix; ``card`` is the model card's Markdown.
    Built in a temp folder beside ``out`` and renamed over it only when complete."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as scratch:
        encoder_dir, final = Path(scratch) / "encoder", Path(scratch) / "model"
        model.save_pretrained(encoder_dir)
        tokenizer.save_pretrained(encoder_dir)
        prompts = {PROMPT_NAME: meta["prefix"]} if meta["prefix"] else None
        student = SentenceTransformer(
            modules=[
                Transformer(str(encoder_dir), max_seq_length=meta["max_length"]),
                Pooling(model.config.hidden_size, pooling_mode=meta["pooling"]),
                Normalize(),
            ],
            prompts=prompts,
            default_prompt_name=PROMPT_NAME if prompts else None,
            device="cpu",
            similarity_fn_name="cosine",
        )
        student.save(str(final), create_model_card=False)
        (final / EXPORT_META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        (final / "README.md").write_text(card, encoding="utf-8")
        old = Path(scratch) / "old"
        if out.exists():  # the previous export moves aside and goes with the scratch folder
            out.rename(old)
        final.rename(out)


def exported_meta(model_dir: str | Path) -> dict[str, Any]:
    """``dist_optical.json`` of an exported student ({} for any other folder or name)."""
    path = Path(model_dir) / EXPORT_META
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ModelError(f"{path}: not valid JSON ({err})") from err


def model_card(meta: dict[str, Any], results: dict[str, Any] | None = None) -> str:
    """The exported student's README.md: what it is, how it was trained, what it scores."""
    lines = [
        "---",
        "library_name: sentence-transformers",
        "pipeline_tag: sentence-similarity",
        f"language: [{', '.join([*meta['languages'], 'en'])}]",
        f"license: {meta.get('license', 'mit')}",
        "---",
        "",
        f"# {meta.get('name', 'dist-optical student')}",
        "",
        f"A cross-lingual sentence encoder for {', '.join(meta['languages'])} trained by dist-optical: "
        f"the student was initialised from `{meta['student_init']}` and distilled from the frozen "
        f"teacher `{meta['teacher']}` on parallel text only (the teacher encodes the English side).",
        "",
        "| | |",
        "|---|---|",
        f"| base model | {meta['base_model']} |",
        f"| training data | {meta['training_data']} |",
        f"| objective | {meta['objective']} |",
        f"| steps x pairs per step | {meta['steps']} x {meta['pairs_per_step']} |",
        f"| max tokens | {meta['max_length']} |",
        f"| pooling | {meta['pooling']}, L2-normalised |",
        f"| prefix | {meta['prefix']!r} (applied by default as the `{PROMPT_NAME}` prompt) |",
        f"| licence | weights: {meta['weights_licence']}; training data: {meta['data_licence']} |",
        "",
        "```python",
        "from sentence_transformers import SentenceTransformer",
        "model = SentenceTransformer(PATH_TO_THIS_FOLDER)",
        "embeddings = model.encode(sentences)  # cosine similarity across languages",
        "```",
        "",
    ]
    if results:
        lines += ["## Evaluation (acc@1 %, foreign -> English)", "", _results_table(results), ""]
    return "\n".join(lines)


def _results_table(results: dict[str, Any]) -> str:
    """results: row label -> eval set -> direction -> metrics."""
    sets = list(next(iter(results.values())))
    lines = ["| model | " + " | ".join(sets) + " |", "|" + "---|" * (1 + len(sets))]
    for label, row in results.items():
        lines.append(f"| {label} | " + " | ".join(f"{row[s]['src->tgt']['acc@1']:.1f}" for s in sets) + " |")
    return "\n".join(lines)


def write_card(model_dir: Path, meta: dict[str, Any], results: dict[str, Any]) -> None:
    """Rewrite the card with the measured table once the run has evaluated the student."""
    atomic_write(model_dir / "README.md", model_card(meta, results))
