"""Consolidate a DeepSpeed checkpoint (any ZeRO stage, any world size) into a Hugging Face folder."""

from __future__ import annotations

from pathlib import Path

import torch

from dist_optical.config import load_config
from dist_optical.engine.checkpoint import resolve_resume
from dist_optical.models import export_model, load_encoder, load_tokenizer


def consolidated_state_dict(ckpt_dir: Path, tag: str) -> dict[str, torch.Tensor]:
    """ZeRO shards -> one fp32 state dict; stage 0 keeps the whole module in the model-states file."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    if any((ckpt_dir / tag).glob("*optim_states.pt")) and any((ckpt_dir / tag).glob("zero_pp_rank_*")):
        return get_fp32_state_dict_from_zero_checkpoint(str(ckpt_dir), tag=tag)
    states = ckpt_dir / tag / "mp_rank_00_model_states.pt"
    if not states.is_file():
        raise FileNotFoundError(f"{ckpt_dir / tag}: no DeepSpeed model states (mp_rank_00_model_states.pt)")
    return torch.load(states, map_location="cpu", weights_only=False)["module"]


def export_checkpoint(checkpoint: Path, out: Path) -> Path:
    """checkpoint: RUN/checkpoints (its `latest`) or RUN/checkpoints/stepNNNNNN.

    RUN/config.yaml (written by every run) says how to rebuild the student."""
    from dist_optical.train import export_meta

    found = resolve_resume(str(checkpoint), checkpoint)
    if found is None:
        raise FileNotFoundError(f"{checkpoint}: no checkpoint")
    ckpt_dir, tag = found
    config_file = ckpt_dir.parent / "config.yaml"
    if not config_file.is_file():
        raise FileNotFoundError(f"{config_file}: the run's resolved config is needed to rebuild the student")
    cfg = load_config(config_file)
    student_name = cfg.model.student or cfg.model.teacher
    tokenizer = load_tokenizer(student_name)
    student = load_encoder(student_name, cfg.model.tiny, vocab_size=len(tokenizer))
    student.load_state_dict(consolidated_state_dict(ckpt_dir, tag))
    export_model(student, tokenizer, out, export_meta(cfg))
    return out
