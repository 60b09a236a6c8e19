"""Everything a training run needs before its first step, built once into a `Run`: the run folder's
checkpoint to resume from, the shards, what the training pairs give (train/prepare.py: the trimmed
vocabulary, student lengths, idf tables, the teacher cache's texts), the models, the DeepSpeed
engine, the stream, the objective, the dev curve and the metrics logger. The loop (train/loop.py)
only reads it and advances it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers import PreTrainedTokenizerBase

from dist_optical.config import Config, config_hash, config_to_dict, save_config
from dist_optical.data import PairCollator, ShardLoader, ShardStream
from dist_optical.data.collate import tokenize
from dist_optical.data.prepare import ensure_shards, input_sha256s, training_stream
from dist_optical.engine import checkpoint, dist
from dist_optical.engine.collectives import all_gather_with_grad
from dist_optical.engine.deepspeed import build_ds_config, partition_teacher, wrap_student
from dist_optical.models import (
    Encoded,
    check_tokenizer_fits,
    encode,
    freeze,
    load_encoder,
    load_student,
    load_tokenizer,
    special_ids,
    student_name,
)
from dist_optical.models.encoder import Encoder
from dist_optical.objectives import Objective
from dist_optical.train.devcurve import DevCurve
from dist_optical.train.metrics import MetricsLogger
from dist_optical.train.prepare import prepare_run
from dist_optical.train.teacher_cache import TeacherCache, open_cache

log = logging.getLogger("dist_optical.train")


@dataclass
class Run:
    """A run set up for training; ``step``, ``collapse_baseline`` and ``skipped`` advance with it."""

    cfg: Config
    out: Path
    env: dist.DistEnv
    engine: Any  # DeepSpeed's engine around the student
    scheduler: Any
    teacher: nn.Module
    teacher_tok: PreTrainedTokenizerBase
    student_tok: PreTrainedTokenizerBase
    stream: ShardStream
    loader: ShardLoader
    objective: Objective
    logger: MetricsLogger
    dev: DevCurve | None
    specials: dict[str, Tensor]  # "teacher", "student": the token ids the OT mask leaves out
    teacher_cache: TeacherCache | None  # train.teacher_cache: the teacher's English outputs, precomputed
    inputs: dict[str, str] = field(default_factory=dict)  # bitext file -> sha256 (checked on resume)
    step: int = 0  # optimizer steps done
    collapse_baseline: float | None = None  # collapse/student_cos at the first step
    skipped: int = 0  # unreadable pairs dropped so far, all ranks (data.on_error=skip)

    @property
    def pairs_per_step(self) -> int:
        return self.cfg.train.micro_batch_size * self.cfg.train.grad_accum * self.env.world_size

    def encode(self, side: str, input_ids: Tensor, attention_mask: Tensor) -> Encoded:
        """``side`` "teacher" or "student": token states, real-token mask and pooled vector, in fp32;
        packed without padding as train.pack says (models.packed_hidden)."""
        model, device = (self.teacher if side == "teacher" else self.engine), dist.device()
        pooling = self.cfg.model.pooling
        return encode(
            model,
            input_ids.to(device),
            attention_mask.to(device),
            self.specials[side],
            pooling,
            self.cfg.train.pack,
        ).float()

    def encode_pivot_by_teacher(self, batch: dict[str, Any]) -> Encoded:
        """The frozen teacher on the batch's pivot side: read from the cache, or computed."""
        if self.teacher_cache is not None:
            return self.teacher_cache.lookup(batch["tgt"]).map(lambda t: t.to(dist.device()))
        with torch.no_grad():
            return self.encode("teacher", batch["tgt_input_ids"], batch["tgt_attention_mask"])

    def encode_pivot_by_student(self, batch: dict[str, Any]) -> Encoded:
        """The student on the batch's pivot side, by its own tokenizer: what the `english` term
        anchors to the teacher's embedding of the same text."""
        ids = tokenize(self.student_tok, batch["tgt"], self.cfg.model.max_length, self.cfg.model.prefix)
        return self.encode("student", ids["input_ids"], ids["attention_mask"])

    def save(self) -> Path:
        """A complete checkpoint tag of the current step (every rank saves its ZeRO shard)."""
        state = {
            "step": self.step,
            "data": self.loader.state_dict(),
            "config": config_to_dict(self.cfg),
            "config_hash": config_hash(self.cfg),
            "versions": checkpoint.versions(),
            "world_size": self.env.world_size,
            "collapse_baseline": self.collapse_baseline,
            "inputs": self.inputs,
        }
        return checkpoint.save(
            self.engine,
            self.out / "checkpoints",
            self.step,
            state,
            self.env.is_main,
            self.cfg.train.keep_last,
        )


def setup_run(cfg: Config, out: Path, resume: str, env: dist.DistEnv) -> Run:
    """Resolve the resume point first (refusing to start over on a run's checkpoints), then build."""
    found = checkpoint.resolve_resume(resume, out)
    if found is None:
        checkpoint.refuse_fresh_start(out)
    inputs = input_sha256s(cfg)
    with dist.main_rank_first(env.is_main):  # the other ranks read the shards the main rank built
        manifests = ensure_shards(cfg, build=env.is_main)
    source = found[0].parent if found is not None else None  # the run folder of the checkpoint
    tokenizers = load_tokenizers(cfg)
    prepared = prepare_run(cfg, out, manifests, source, env.is_main, *tokenizers)
    teacher, teacher_tok, student, student_tok = build_models(cfg, prepared.kept_ids, tokenizers)
    stage = checkpoint.saved_meta(*found)["zero_stage"] if found is not None else None
    ds_config = build_ds_config(cfg.train, env.world_size, stage)
    if found is not None:  # at another world size, ZeRO state is loaded through a universal checkpoint
        load_dir, tag, universal = checkpoint.prepare_elastic(*found, env.world_size, env.is_main)
        ds_config["checkpoint"] = {"load_universal": universal}
    engine, scheduler = wrap_student(student, ds_config)
    if cfg.model.teacher_partitioned:
        teacher = partition_teacher(teacher, ds_config)
    else:
        teacher.to(dist.device(), torch.bfloat16 if cfg.train.precision == "bf16" else torch.float32)
    specials = {"teacher": special_ids(teacher_tok), "student": special_ids(student_tok)}
    teacher_cache = None
    if cfg.train.teacher_cache != "none":  # built (if missing) by the main rank, then opened by the others
        with dist.main_rank_first(env.is_main):
            teacher_cache = open_cache(
                cfg, manifests, teacher, teacher_tok, specials["teacher"], prepared.pivots
            )
    stream = training_stream(cfg, manifests, env.rank, env.world_size, prepared.lengths)
    loader = ShardLoader(
        stream,
        batch_size=cfg.train.micro_batch_size,
        collate_fn=PairCollator(student_tok, teacher_tok, cfg.model.max_length, cfg.model.prefix),
        num_workers=cfg.data.num_workers,
    )
    step, collapse_baseline = 0, None
    if found is not None:
        _, client = engine.load_checkpoint(str(load_dir), tag=tag)
        checkpoint.check_compatible(client["config"], config_to_dict(cfg))
        checkpoint.check_inputs(client.get("inputs", {}), inputs)
        step, collapse_baseline = client["step"], client.get("collapse_baseline")
        loader.load_state_dict(client["data"])
        if env.is_main:
            log.info("resumed from %s/%s at step %d", load_dir, tag, step)
    if env.is_main:
        save_config(cfg, out / "config.yaml")
    return Run(
        cfg=cfg,
        out=out,
        env=env,
        engine=engine,
        scheduler=scheduler,
        teacher=teacher,
        teacher_tok=teacher_tok,
        student_tok=student_tok,
        stream=stream,
        loader=loader,
        objective=build_objective(cfg, env, prepared.teacher_idf, prepared.student_idf),
        logger=MetricsLogger(out, enabled=env.is_main, resume_step=step),
        dev=DevCurve(cfg, Encoder(cfg.model.teacher, teacher, teacher_tok, **encoding(cfg)))
        if cfg.train.eval_every
        else None,
        specials=specials,
        teacher_cache=teacher_cache,
        inputs=inputs,
        step=step,
        collapse_baseline=collapse_baseline,
    )


def load_tokenizers(cfg: Config) -> tuple[PreTrainedTokenizerBase, PreTrainedTokenizerBase]:
    """The teacher's and the student's tokenizers."""
    return load_tokenizer(cfg.model.teacher), load_tokenizer(student_name(cfg.model))


def build_models(
    cfg: Config,
    kept_ids: Tensor | None = None,
    tokenizers: tuple[PreTrainedTokenizerBase, PreTrainedTokenizerBase] | None = None,
):
    """Frozen teacher + trainable student (initialised from the teacher unless model.student is set;
    its vocabulary trimmed to ``kept_ids`` when given), with their tokenizers (``tokenizers``, the
    teacher's and the student's, if already loaded)."""
    teacher_tok, student_tok = tokenizers if tokenizers is not None else load_tokenizers(cfg)
    teacher = freeze(load_encoder(cfg.model.teacher, cfg.model.tiny, vocab_size=len(teacher_tok)))
    check_tokenizer_fits(teacher_tok, teacher, f"model.teacher {cfg.model.teacher!r}")
    student, student_tok = load_student(cfg.model, kept_ids, student_tok)
    if cfg.model.freeze_embeddings:
        student.get_input_embeddings().weight.requires_grad_(False)
    return teacher, teacher_tok, student, student_tok


def build_objective(
    cfg: Config, env: dist.DistEnv, teacher_idf: Tensor | None = None, student_idf: Tensor | None = None
) -> Objective:
    """The loss terms, with a cross-rank all-gather for the in-batch negatives and, for the OT terms
    with idf marginals, the idf tables over the training pairs (train/prepare.py)."""
    return Objective(
        cfg.loss,
        cfg.ot,
        cfg.contrastive,
        gather=all_gather_with_grad if env.world_size > 1 else None,
        rank=env.rank,
        teacher_idf=teacher_idf,
        student_idf=student_idf,
        pad_to=cfg.model.max_length,
    )


def encoding(cfg: Config) -> dict[str, Any]:
    """How the run encodes text for retrieval (the dev curve, eval, the exported model): the eval
    truncation, pooling, prefix."""
    return {"max_length": cfg.eval.max_length, "pooling": cfg.model.pooling, "prefix": cfg.model.prefix}
