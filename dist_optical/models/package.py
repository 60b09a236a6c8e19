"""Write a trained student as a complete sentence-transformers folder, atomically.

``SentenceTransformer(DIR)`` then gives the embeddings `dist-optical eval` computes: the same
tokenizer and truncation (``max_seq_length``), pooling, L2 normalisation and prefix (a default
prompt). ``AutoModel.from_pretrained(DIR)`` still loads the bare encoder. ``dist_optical.json``
records the teacher whose embeddings index the English side, and ``README.md`` is the model card.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from torch import nn
from transformers import PreTrainedTokenizerBase

from dist_optical import artifacts
from dist_optical.files import atomic_write, write_json
from dist_optical.models import ModelError, tokenizer_digest, weights_digest

EXPORT_META = "dist_optical.json"
PROMPT_NAME = "default"


def save_student(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, out: Path, meta: dict[str, Any], card: str
) -> None:
    """``meta`` holds at least max_length, pooling and prefix; ``card`` is the model card's Markdown.
    ``out`` must be new, empty or a previous export, which this one replaces once complete: built as
    an artifact (artifacts.build_once: a temp folder beside ``out``, each file's size and sha256 in
    the marker, renamed into place), keyed by the weights, tokenizer, meta and card."""
    check_replaceable(out)
    key = {
        "weights_sha256": weights_digest(model),
        "tokenizer_sha256": tokenizer_digest(tokenizer),
        "meta": meta,
        "card_sha256": hashlib.sha256(card.encode()).hexdigest(),
    }
    artifacts.build_once(
        out,
        lambda tmp: _save(model, tokenizer, tmp, meta, card),
        "the exported model",
        wait=0,  # one export of a folder at a time (and not while its run trains: cli.py)
        key=key,
        adopt=lambda folder: {},  # an export from before markers (check_replaceable said so)
    )


def _save(
    model: nn.Module, tokenizer: PreTrainedTokenizerBase, out: Path, meta: dict[str, Any], card: str
) -> dict[str, Any]:
    """The sentence-transformers folder, written into the empty folder ``out``."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    encoder_dir = out / ".encoder"  # the bare encoder, which the Transformer module loads from
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
    student.save(str(out), create_model_card=False)
    shutil.rmtree(encoder_dir)
    write_json(out / EXPORT_META, meta, "the export's metadata")
    (out / "README.md").write_text(card, encoding="utf-8")
    return {}


def check_replaceable(out: Path) -> None:
    """An export replaces only a previous export (a sentence-transformers folder, ``modules.json``,
    with our ``dist_optical.json``): never a user's folder, a run folder or a checkpoint tag."""
    if not out.exists():
        return
    if not out.is_dir():
        raise ModelError(f"export to {out}: it exists and is a file; export into a new folder")
    names = sorted(p.name for p in out.iterdir())
    if names and not {EXPORT_META, "modules.json"} <= set(names):
        shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        raise ModelError(
            f"export to {out}: it holds {shown} and is not a previous export (no {EXPORT_META} and "
            "modules.json): export into a new folder"
        )


def exported_meta(model_dir: str | Path) -> dict[str, Any]:
    """``dist_optical.json`` of an exported student ({} for any other folder or name); an export
    whose files no longer match its marker is refused, naming the file."""
    folder = Path(model_dir)
    meta = _read_meta(folder / EXPORT_META)
    if (folder / artifacts.MARKER).is_file() and (why := artifacts.verify(folder)):
        raise ModelError(f"{folder} is a damaged export: {why}; export it again from its checkpoint")
    return meta


def _read_meta(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ModelError(f"{path}: not valid JSON ({err})") from err
    return meta if isinstance(meta, dict) else {}


def model_card(meta: dict[str, Any], results: dict[str, Any] | None = None) -> str:
    """The exported student's README.md: what it is, how it was trained, what it scores."""
    lines = [
        "---",
        "library_name: sentence-transformers",
        "pipeline_tag: sentence-similarity",
        f"language: [{', '.join([*meta['languages'], *meta.get('pivots', ['eng'])])}]",
        f"license: {meta.get('license', 'mit')}",
        "---",
        "",
        f"# {meta.get('name', 'dist-optical student')}",
        "",
        f"A cross-lingual sentence encoder for {', '.join(meta['languages'])} trained by dist-optical: "
        f"the student was initialised from `{meta['student_init']}` and distilled from the frozen "
        f"teacher `{meta['teacher']}` on parallel text only (the teacher encodes the pivot side: "
        f"{', '.join(meta.get('pairs', meta['languages']))}).",
        "",
        "| | |",
        "|---|---|",
        f"| base model | {meta['base_model']} |",
        f"| training data | {meta['training_data']} |",
        f"| objective | {meta['objective']} |",
        f"| steps x pairs per step | {meta['steps']} x {meta['pairs_per_step']} |",
        f"| max tokens | {meta['max_length']} per text (longer input is truncated); trained on up to "
        f"{meta.get('train_max_length', meta['max_length'])} per side |",
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
        lines += [f"## Evaluation (acc@1 %, at {meta['max_length']} tokens)", ""]
        for direction, title in (
            ("src->tgt", "Foreign queries, pivot targets"),
            ("tgt->src", "Pivot queries, foreign targets"),
        ):
            lines += [f"{title}:", "", _results_table(results, direction), ""]
    return "\n".join(lines)


def _results_table(results: dict[str, Any], direction: str) -> str:
    """results: row label -> eval set -> direction -> metrics."""
    sets = list(next(iter(results.values())))
    lines = ["| model | " + " | ".join(sets) + " |", "|" + "---|" * (1 + len(sets))]
    for label, row in results.items():
        cells = (f"{row[s][direction]['acc@1']:.1f}" if direction in row[s] else "-" for s in sets)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_card(model_dir: Path, meta: dict[str, Any], results: dict[str, Any]) -> None:
    """Rewrite the card with the measured table once the run has evaluated the student (and the
    marker with it)."""
    atomic_write(model_dir / "README.md", model_card(meta, results), "the model card")
    artifacts.mark_complete(model_dir, {})
