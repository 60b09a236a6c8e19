"""The training loop: English through the frozen teacher, foreign through the student, OT between.

Run folder layout (`--out DIR`):
  config.yaml      the resolved config
  metrics.jsonl    one JSON object per optimizer step (step, loss, lr, samples_per_s, terms, diagnostics)
  tb/              TensorBoard event files
  checkpoints/     DeepSpeed checkpoints (one folder per tag) + `latest`
  model/           the exported student (Hugging Face folder)
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from dist_optical.config import Config, config_hash, config_to_dict, save_config
from dist_optical.data import PairCollator, ShardLoader, ShardStream
from dist_optical.data.prepare import ensure_shards
from dist_optical.engine import checkpoint, dist
from dist_optical.engine.collectives import all_gather_with_grad
from dist_optical.engine.deepspeed import build_ds_config, memory_footprint, partition_teacher, wrap_student
from dist_optical.engine.signals import PREEMPTED_EXIT_CODE, StopRequest
from dist_optical.export import export_checkpoint
from dist_optical.losses import Objective, idf_table
from dist_optical.models import (
    Encoded,
    check_tokenizer_fits,
    encode,
    freeze,
    load_encoder,
    load_tokenizer,
    special_ids,
    tokenize,
)

log = logging.getLogger("dist_optical.train")


def step_seed(seed: int, rank: int, micro_step: int) -> int:
    """Per-rank RNG is a pure function of (seed, rank, micro-step), so resume needs no RNG snapshot."""
    return (seed * 1_000_003 + rank * 10_007 + micro_step) % (2**63)


def build_models(cfg: Config):
    """Frozen teacher + trainable student (initialised from the teacher unless model.student is set)."""
    teacher_tok = load_tokenizer(cfg.model.teacher)
    student_name = cfg.model.student or cfg.model.teacher
    student_tok = load_tokenizer(student_name)
    teacher = freeze(load_encoder(cfg.model.teacher, cfg.model.tiny, vocab_size=len(teacher_tok)))
    # A tiny test model is seeded, so an unset model.student gives the teacher's weights here too.
    student = load_encoder(student_name, cfg.model.tiny, vocab_size=len(student_tok))
    check_tokenizer_fits(teacher_tok, teacher, f"model.teacher {cfg.model.teacher!r}")
    check_tokenizer_fits(student_tok, student, f"model.student {student_name!r}")
    if cfg.model.freeze_embeddings:
        student.get_input_embeddings().weight.requires_grad_(False)
    return teacher, teacher_tok, student, student_tok


def idf_tables(
    manifest: Path, max_pairs: int, teacher_tok, student_tok, max_length: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(teacher vocab,), (student vocab,) idf over the training pairs (the first ``max_pairs`` of the
    manifest, the ones the stream trains on): English by the teacher's tokenizer, foreign by the
    student's, truncated as in training."""
    pairs = list(ShardStream(manifest, shuffle=False, max_pairs=max_pairs))
    teacher_ids = teacher_tok([p["tgt"] for p in pairs], truncation=True, max_length=max_length)["input_ids"]
    student_ids = student_tok([p["src"] for p in pairs], truncation=True, max_length=max_length)["input_ids"]
    return idf_table(teacher_ids, len(teacher_tok)), idf_table(student_ids, len(student_tok))


def train(cfg: Config, out: Path, resume: str = "") -> dict[str, Any]:
    env = dist.setup()
    out.mkdir(parents=True, exist_ok=True)
    manifest = ensure_shards(cfg, is_main=env.is_main)

    teacher, teacher_tok, student, student_tok = build_models(cfg)
    ds_config = build_ds_config(cfg.train, env.world_size)
    found = checkpoint.resolve_resume(resume, out)
    if found is not None:  # at another world size, ZeRO state is loaded through a universal checkpoint
        load_dir, tag, universal = checkpoint.prepare_elastic(*found, env.world_size, env.is_main)
        ds_config["checkpoint"] = {"load_universal": universal}
    engine, scheduler = wrap_student(student, ds_config)
    device = dist.device()
    if cfg.model.teacher_partitioned:
        teacher = partition_teacher(teacher, ds_config)
    else:
        teacher.to(device, torch.bfloat16 if cfg.train.precision == "bf16" else torch.float32)
    teacher_special, student_special = special_ids(teacher_tok), special_ids(student_tok)

    stream = ShardStream(
        manifest,
        rank=env.rank,
        world_size=env.world_size,
        seed=cfg.train.seed,
        shuffle_buffer=cfg.data.shuffle_buffer,
        on_error=cfg.data.on_error,
        max_pairs=cfg.data.max_pairs,
    )
    loader = ShardLoader(
        stream,
        batch_size=cfg.train.micro_batch_size,
        collate_fn=PairCollator(student_tok, teacher_tok, cfg.model.max_length),
        num_workers=cfg.data.num_workers,
    )
    teacher_idf = student_idf = None
    if cfg.loss.get("ot", 0.0) > 0 and cfg.ot.marginals == "idf":
        teacher_idf, student_idf = idf_tables(
            manifest, cfg.data.max_pairs, teacher_tok, student_tok, cfg.model.max_length
        )
    objective = Objective(
        cfg.loss,
        cfg.ot,
        cfg.contrastive,
        gather=all_gather_with_grad if env.world_size > 1 else None,
        rank=env.rank,
        teacher_idf=teacher_idf,
        student_idf=student_idf,
    )

    ckpt_dir = out / "checkpoints"
    start_step = 0
    if found is not None:
        _, client = engine.load_checkpoint(str(load_dir), tag=tag)
        checkpoint.check_compatible(client["config"], config_to_dict(cfg))
        start_step = client["step"]
        loader.load_state_dict(client["data"])
        if env.is_main:
            log.info("resumed from %s/%s at step %d", load_dir, tag, start_step)
    if env.is_main:
        save_config(cfg, out / "config.yaml")
    logger = MetricsLogger(out, enabled=env.is_main, resume_step=start_step)

    def client_state(step: int) -> dict[str, Any]:
        return {
            "step": step,
            "data": loader.state_dict(),
            "config": config_to_dict(cfg),
            "config_hash": config_hash(cfg),
            "versions": checkpoint.versions(),
            "world_size": env.world_size,
        }

    def encode_side(model, input_ids, attention_mask, special) -> Encoded:
        return encode(
            model, input_ids.to(device), attention_mask.to(device), special, cfg.model.pooling
        ).float()

    def save(step: int) -> Path:
        return checkpoint.save(engine, ckpt_dir, step, client_state(step), env.is_main, cfg.train.keep_last)

    stop = StopRequest().install()
    batches = iter(loader)
    samples_per_step = cfg.train.micro_batch_size * cfg.train.grad_accum * env.world_size
    progress = tqdm(range(start_step, cfg.train.max_steps), initial=start_step, total=cfg.train.max_steps,
                    desc="train", disable=not env.is_main, dynamic_ncols=True)  # fmt: skip
    engine.train()
    for step in progress:
        t0 = time.perf_counter()
        totals: dict[str, float] = {}
        for micro in range(cfg.train.grad_accum):
            batch = next(batches)
            check_not_empty(batch, step, loader)
            # Seed after fetching: a new epoch's DataLoader draws from the global RNG, and dropout
            # must not depend on when that happens (it differs between a resumed and a straight run).
            torch.manual_seed(step_seed(cfg.train.seed, env.rank, step * cfg.train.grad_accum + micro))
            with torch.no_grad():
                english = encode_side(
                    teacher, batch["tgt_input_ids"], batch["tgt_attention_mask"], teacher_special
                )
            foreign = encode_side(
                engine, batch["src_input_ids"], batch["src_attention_mask"], student_special
            )
            student_english = None
            if objective.needs_student_english:  # English through the student too, by its own tokenizer
                ids = tokenize(student_tok, batch["tgt"], cfg.model.max_length)
                student_english = encode_side(
                    engine, ids["input_ids"], ids["attention_mask"], student_special
                )
            try:
                loss, stats = objective(english, foreign, student_english)
            except FloatingPointError as err:
                raise FloatingPointError(
                    f"step {step + 1}: {err} (batch keys {batch['key'][:4]}...)"
                ) from err
            engine.backward(loss)
            engine.step()
            for name, value in {"loss": loss.item(), **stats}.items():  # .item(): a host sync, once per micro
                totals[name] = totals.get(name, 0.0) + value / cfg.train.grad_accum

        metrics = dist.mean_across_ranks({**totals, **memory_footprint(engine)})
        metrics.update(
            step=step + 1,
            lr=scheduler.get_last_lr()[0] if scheduler is not None else cfg.train.lr,
            samples_per_s=samples_per_step / (time.perf_counter() - t0),
            epoch=batch["epoch"],
        )
        logger.log(metrics)
        if env.is_main:
            progress.set_postfix(loss=f"{metrics['loss']:.4f}", cos=f"{metrics['collapse/student_cos']:.2f}")
            if (step + 1) % cfg.train.log_every == 0:
                warn_if_collapsing(metrics, cfg.train.collapse_threshold)
        if stop.agreed():
            save(step + 1)
            logger.close()
            log.warning(
                "checkpointed at step %d after a stop signal; exiting %d", step + 1, PREEMPTED_EXIT_CODE
            )
            raise SystemExit(PREEMPTED_EXIT_CODE)
        if cfg.train.save_every and (step + 1) % cfg.train.save_every == 0 and step + 1 < cfg.train.max_steps:
            save(step + 1)

    final_step = max(cfg.train.max_steps, start_step)
    saved = save(final_step)
    if env.is_main:  # one export path for every ZeRO stage: consolidate from the checkpoint just written
        export_checkpoint(saved, out / "model")
    dist.barrier()
    logger.close()
    # ZeRO's gradient hooks live in autograd's C++ graph, where Python's gc cannot see the cycle
    # through the engine: without this, every train() call in one process keeps its engine and
    # optimizer state (~350 MB for MiniLM), e.g. across the runs of `dist-optical compare`.
    engine.destroy()
    return {"steps": final_step, "run_dir": str(out), "model": str(out / "model")}


def check_not_empty(batch: dict[str, Any], step: int, loader: ShardLoader) -> None:
    if not batch["key"]:
        raise RuntimeError(
            f"step {step + 1}: every sample of this rank's micro-batch was skipped as unreadable "
            f"(data.on_error=skip; counts so far: {loader.error_counts()}); the shards are too "
            "damaged to train on: rebuild them with `dist-optical shard`"
        )


def warn_if_collapsing(metrics: dict[str, float], threshold: float) -> None:
    """The failure mode of OT alone from an English-vocabulary start: every sentence, one vector."""
    if metrics["collapse/student_cos"] > threshold:
        log.warning(
            "step %d: student sentence embeddings are collapsing (mean pairwise cosine %.3f > %.2f)",
            metrics["step"], metrics["collapse/student_cos"], threshold,
        )  # fmt: skip


def export_meta(cfg: Config) -> dict[str, Any]:
    """Written beside the exported student: `eval` reads the teacher that encodes the English side."""
    return {
        "teacher": cfg.model.teacher,
        "pooling": cfg.model.pooling,
        "max_length": cfg.model.max_length,
        "src_lang": cfg.data.src_lang,
        "tgt_lang": cfg.data.tgt_lang,
        "config_hash": config_hash(cfg),
    }


class MetricsLogger:
    """metrics.jsonl (one line per optimizer step) + TensorBoard scalars, on the main rank only."""

    def __init__(self, out: Path, enabled: bool, resume_step: int):
        self.enabled = enabled
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        self.path = out / "metrics.jsonl"
        if self.path.exists():  # drop lines past the checkpoint we resumed from: they will be redone
            kept = [
                line for line in self.path.read_text().splitlines() if json.loads(line)["step"] <= resume_step
            ]
            self.path.write_text("".join(line + "\n" for line in kept))
        self.file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (open for the whole run)
        self.tb = SummaryWriter(str(out / "tb"), purge_step=resume_step + 1 if resume_step else None)

    def log(self, metrics: dict[str, float]) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps(metrics) + "\n")
        self.file.flush()
        for name, value in metrics.items():
            if name != "step":
                self.tb.add_scalar(name, value, metrics["step"])

    def close(self) -> None:
        if self.enabled:
            self.file.close()
            self.tb.close()
