"""The training loop: English through the frozen teacher, foreign through the student, the objective
between them (OT, InfoNCE, MSE), one optimizer step at a time.

Run folder layout (`--out DIR`):
  config.yaml      the resolved config
  metrics.jsonl    one JSON object per optimizer step (step, loss, lr, samples_per_s, terms, diagnostics)
  tb/              TensorBoard event files
  checkpoints/     DeepSpeed checkpoints (one folder per tag) + `latest`
  vocab.json       the kept rows of a trimmed student vocabulary (model.trim_vocab)
  model/           the exported student (a sentence-transformers folder)
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from dist_optical.config import Config
from dist_optical.engine import checkpoint, dist
from dist_optical.engine.deepspeed import memory_footprint, with_native_precision
from dist_optical.engine.signals import Preempted, StopRequest, follow_launcher
from dist_optical.files import hold_lock, writing
from dist_optical.models.encoder import Encoder
from dist_optical.train.export import export_checkpoint
from dist_optical.train.metrics import check_not_empty, check_skipped, pair_shares, warn_if_collapsing
from dist_optical.train.run import Run, encoding, setup_run

log = logging.getLogger("dist_optical.train")


def train(cfg: Config, out: Path, resume: str = "", stop: StopRequest | None = None) -> dict[str, Any]:
    """Train into the run folder ``out`` (held locked by each rank throughout) and export the student.

    A stop signal checkpoints at the next step boundary and raises `Preempted`; ``stop`` is the flag
    the signals set (a submitit job passes the one its requeue bridge also reads)."""
    env = dist.setup()
    if env.source == "torchrun":  # torchrun or the deepspeed launcher started this rank
        follow_launcher()
    cfg = with_native_precision(cfg, dist.device())
    checkpoint.check_run_folder(out)
    with writing(out, "the run folder"):
        out.mkdir(parents=True, exist_ok=True)
    with hold_lock(out / "locks" / f"rank{env.rank}.lock", f"train rank {env.rank}"):
        run = setup_run(cfg, out, resume, env)
        trained = run.step < cfg.train.max_steps
        try:
            with (stop or StopRequest()).installed() as listening:
                train_steps(run, listening)
            return finish(run, trained)
        finally:
            run.logger.close()
            # ZeRO's gradient hooks live in autograd's C++ graph, where Python's gc cannot see the
            # cycle through the engine: without this, every train() call in one process keeps its
            # engine and optimizer state, e.g. across the runs of `dist-optical compare`.
            run.engine.destroy()


def train_steps(run: Run, stop: StopRequest) -> None:
    """Optimizer steps from ``run.step`` to train.max_steps; checkpoints every train.save_every."""
    cfg, accum = run.cfg, run.cfg.train.grad_accum
    batches = iter(run.loader)
    progress = tqdm(range(run.step, cfg.train.max_steps), initial=run.step, total=cfg.train.max_steps,
                    desc="train", disable=not run.env.is_main, dynamic_ncols=True)  # fmt: skip
    run.engine.train()
    for step in progress:
        started, totals = time.perf_counter(), {}
        for micro in range(accum):
            batch = next(batches)
            check_not_empty(batch, step, run.loader.error_counts())
            for name, value in micro_step(run, batch, step * accum + micro).items():
                totals[name] = totals.get(name, 0.0) + value / accum
        run.step = step + 1
        metrics = end_of_step(run, totals, epoch=batch["epoch"], seconds=time.perf_counter() - started)
        progress.set_postfix(loss=f"{metrics['loss']:.4f}", cos=f"{metrics['collapse/student_cos']:.2f}")
        if dist.any_rank(stop.signum is not None):  # every rank saves the same step, then stops
            run.save()
            log.warning("checkpointed at step %d after a stop signal", run.step)
            raise Preempted(run.step, stop.signum)
        if cfg.train.save_every and run.step % cfg.train.save_every == 0 and run.step < cfg.train.max_steps:
            run.save()


def micro_step(run: Run, batch: dict[str, Any], micro_index: int) -> dict[str, float]:
    """The method on one micro-batch: teacher(pivot), student(foreign), objective, backward."""
    cfg = run.cfg
    # Seed after fetching: a new epoch's DataLoader draws from the global RNG, and dropout must not
    # depend on when that happens (it differs between a resumed and a straight run).
    torch.manual_seed(step_seed(cfg.train.seed, run.env.rank, micro_index))
    pivot = run.encode_pivot_by_teacher(batch)
    foreign = run.encode("student", batch["src_input_ids"], batch["src_attention_mask"])
    student_pivot = run.encode_pivot_by_student(batch) if run.objective.needs_student_english else None
    try:
        loss, stats = run.objective(pivot, foreign, student_pivot)
    except FloatingPointError as err:
        step = micro_index // cfg.train.grad_accum + 1
        raise FloatingPointError(f"step {step}: {err} (batch keys {batch['key'][:4]}...)") from err
    run.engine.backward(loss)
    run.engine.step()
    shares = pair_shares(batch["pair"], run.stream.pairs)
    return {"loss": loss.item(), **stats, **shares}  # .item(): a host sync


def end_of_step(run: Run, totals: dict[str, float], epoch: int, seconds: float) -> dict[str, float]:
    """Metrics of the step just taken, averaged over ranks; the dev curve; the collapse warning; logged."""
    cfg, env = run.cfg, run.env
    skipped = sum(run.loader.error_counts().values())  # cumulative, this rank (data.on_error=skip)
    metrics = dist.mean_across_ranks({**totals, **memory_footprint(run.engine), "data/skipped": skipped})
    run.skipped = metrics["data/skipped"] = round(metrics["data/skipped"] * env.world_size)  # sum over ranks
    metrics.update(
        step=run.step,
        lr=run.scheduler.get_last_lr()[0] if run.scheduler is not None else cfg.train.lr,
        samples_per_s=run.pairs_per_step / seconds,
        epoch=epoch,
    )
    if run.dev is not None and run.step % cfg.train.eval_every == 0:  # every rank: ZeRO-3 gathers
        run.engine.eval()
        metrics.update(run.dev(Encoder("student", run.engine.module, run.student_tok, **encoding(cfg))))
        run.engine.train()
    if run.collapse_baseline is None and math.isfinite(metrics["collapse/student_cos"]):
        run.collapse_baseline = metrics["collapse/student_cos"]  # the student at step 1: zero-shot
    run.logger.log(metrics)
    if env.is_main and run.step % cfg.train.log_every == 0 and run.collapse_baseline is not None:
        warn_if_collapsing(metrics, run.collapse_baseline, cfg.train.collapse_margin)
    return metrics


def finish(run: Run, trained: bool) -> dict[str, Any]:
    """The final checkpoint (unless resumed after the end: that tag stays as it is), the skipped-pair
    check, and the student exported from that checkpoint (one path for every ZeRO stage)."""
    if trained:
        saved = run.save()
        check_skipped(run.skipped, run.step * run.pairs_per_step, run.cfg.data.max_skip_fraction, saved)
    else:
        saved = run.out / "checkpoints" / checkpoint.tag_for(run.step)
    if run.env.is_main:
        export_checkpoint(saved, run.out / "model", run.step)
    dist.barrier()
    return {"steps": run.step, "run_dir": str(run.out), "model": str(run.out / "model")}


def step_seed(seed: int, rank: int, micro_step: int) -> int:
    """Per-rank RNG is a pure function of (seed, rank, micro-step), so resume needs no RNG snapshot."""
    return (seed * 1_000_003 + rank * 10_007 + micro_step) % (2**63)
