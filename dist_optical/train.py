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
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from dist_optical import lock
from dist_optical.config import Config, config_hash, config_to_dict, save_config
from dist_optical.data import PairCollator, ShardLoader, ShardStream
from dist_optical.data.prepare import ensure_shards, training_stream
from dist_optical.devcurve import DevCurve
from dist_optical.engine import checkpoint, dist
from dist_optical.engine.collectives import all_gather_with_grad
from dist_optical.engine.deepspeed import build_ds_config, memory_footprint, partition_teacher, wrap_student
from dist_optical.engine.signals import PREEMPTED_EXIT_CODE, StopRequest
from dist_optical.errors import UserError
from dist_optical.evaluate import Encoder
from dist_optical.export import export_checkpoint, run_kept_ids
from dist_optical.losses import Objective, idf_table
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
    tokenize,
)
from dist_optical.models.vocab import VOCAB_FILE, save_kept_ids, used_ids

log = logging.getLogger("dist_optical.train")


def step_seed(seed: int, rank: int, micro_step: int) -> int:
    """Per-rank RNG is a pure function of (seed, rank, micro-step), so resume needs no RNG snapshot."""
    return (seed * 1_000_003 + rank * 10_007 + micro_step) % (2**63)


def build_models(cfg: Config, kept_ids: torch.Tensor | None = None):
    """Frozen teacher + trainable student (initialised from the teacher unless model.student is set;
    its vocabulary trimmed to ``kept_ids`` when given)."""
    teacher_tok = load_tokenizer(cfg.model.teacher)
    teacher = freeze(load_encoder(cfg.model.teacher, cfg.model.tiny, vocab_size=len(teacher_tok)))
    check_tokenizer_fits(teacher_tok, teacher, f"model.teacher {cfg.model.teacher!r}")
    student, student_tok = load_student(cfg.model, kept_ids)
    if cfg.model.freeze_embeddings:
        student.get_input_embeddings().weight.requires_grad_(False)
    return teacher, teacher_tok, student, student_tok


def run_texts(cfg: Config, manifests: list[Path]) -> Iterator[str]:
    """Every text the student may encode in this run: both sides of the training pairs and of every
    eval set, prefixed as the student sees them."""
    from dist_optical.evalsets import load_eval_set

    stream = ShardStream(manifests, shuffle=False, max_pairs=cfg.data.max_pairs, on_error=cfg.data.on_error)
    for pair in stream:
        yield cfg.model.prefix + pair["src"]
        yield cfg.model.prefix + pair["tgt"]
    for eval_set in cfg.eval.sets:
        data = load_eval_set(cfg, eval_set)
        yield from (cfg.model.prefix + text for text in data.queries + data.targets)


def student_vocab(cfg: Config, out: Path, manifests: list[Path], resuming: bool, is_main: bool):
    """The kept rows of a trimmed student: computed on a fresh run (main rank) into RUN/vocab.json;
    a resumed run (any world size) and `export` read them back from there."""
    if not cfg.model.trim_vocab:
        return None
    path = out / VOCAB_FILE
    if not resuming:
        if is_main:
            kept = used_ids(load_tokenizer(student_name(cfg.model)), run_texts(cfg, manifests))
            save_kept_ids(path, kept, student_name(cfg.model))
            log.info("trimmed the student's vocabulary to the %d rows this run's texts use", len(kept))
        dist.barrier()
    return run_kept_ids(cfg, out)


def idf_tables(
    manifests: list[Path], max_pairs: int, teacher_tok, student_tok, max_length: int, on_error: str = "raise"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(teacher vocab,), (student vocab,) idf over the training pairs (the first ``max_pairs`` of each
    manifest, the ones the stream trains on): English by the teacher's tokenizer, foreign by the
    student's, truncated as in training."""
    pairs = list(ShardStream(manifests, shuffle=False, max_pairs=max_pairs, on_error=on_error))
    teacher_ids = teacher_tok([p["tgt"] for p in pairs], truncation=True, max_length=max_length)["input_ids"]
    student_ids = student_tok([p["src"] for p in pairs], truncation=True, max_length=max_length)["input_ids"]
    return idf_table(teacher_ids, len(teacher_tok)), idf_table(student_ids, len(student_tok))


def train(cfg: Config, out: Path, resume: str = "") -> dict[str, Any]:
    """Train into the run folder ``out``, which this process (each rank) holds locked throughout."""
    env = dist.setup()
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out}: exists and is not a folder (a run folder is a directory)")
    out.mkdir(parents=True, exist_ok=True)
    with lock.hold(out / "locks" / f"rank{env.rank}.lock", f"train rank {env.rank}"):
        return _train(cfg, out, resume, env)


def _train(cfg: Config, out: Path, resume: str, env: dist.DistEnv) -> dict[str, Any]:
    found = checkpoint.resolve_resume(resume, out)
    if found is None:
        checkpoint.refuse_fresh_start(out)  # never start over on top of a run's checkpoints
    manifests = ensure_shards(cfg, is_main=env.is_main)
    kept_ids = student_vocab(cfg, out, manifests, found is not None, env.is_main)
    teacher, teacher_tok, student, student_tok = build_models(cfg, kept_ids)
    ds_config = build_ds_config(cfg.train, env.world_size)
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

    stream = training_stream(cfg, manifests, env.rank, env.world_size)
    loader = ShardLoader(
        stream,
        batch_size=cfg.train.micro_batch_size,
        collate_fn=PairCollator(student_tok, teacher_tok, cfg.model.max_length, cfg.model.prefix),
        num_workers=cfg.data.num_workers,
    )
    teacher_idf = student_idf = None
    if max(cfg.loss.get("ot", 0.0), cfg.loss.get("ot_nce", 0.0)) > 0 and cfg.ot.marginals == "idf":
        teacher_idf, student_idf = idf_tables(
            manifests, cfg.data.max_pairs, teacher_tok, student_tok, cfg.model.max_length, cfg.data.on_error
        )
    objective = Objective(
        cfg.loss,
        cfg.ot,
        cfg.contrastive,
        gather=all_gather_with_grad if env.world_size > 1 else None,
        rank=env.rank,
        teacher_idf=teacher_idf,
        student_idf=student_idf,
        pad_to=cfg.model.max_length,
    )

    dev = None
    if cfg.train.eval_every:
        dev = DevCurve(cfg, Encoder(cfg.model.teacher, teacher, teacher_tok, **encoding(cfg)))
        student_encoder = Encoder("student", engine.module, student_tok, **encoding(cfg))

    ckpt_dir = out / "checkpoints"
    start_step, collapse_baseline = 0, None
    if found is not None:
        _, client = engine.load_checkpoint(str(load_dir), tag=tag)
        checkpoint.check_compatible(client["config"], config_to_dict(cfg))
        start_step = client["step"]
        collapse_baseline = client.get("collapse_baseline")
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
            "collapse_baseline": collapse_baseline,
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
                ids = tokenize(student_tok, batch["tgt"], cfg.model.max_length, cfg.model.prefix)
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
            shares = language_shares(batch["lang"], stream.languages)
            for name, value in {"loss": loss.item(), **stats, **shares}.items():  # .item(): a host sync
                totals[name] = totals.get(name, 0.0) + value / cfg.train.grad_accum

        skipped = sum(loader.error_counts().values())  # cumulative, this rank (data.on_error=skip)
        metrics = dist.mean_across_ranks({**totals, **memory_footprint(engine), "data/skipped": skipped})
        metrics["data/skipped"] = round(metrics["data/skipped"] * env.world_size)  # the sum over ranks
        metrics.update(
            step=step + 1,
            lr=scheduler.get_last_lr()[0] if scheduler is not None else cfg.train.lr,
            samples_per_s=samples_per_step / (time.perf_counter() - t0),
            epoch=batch["epoch"],
        )
        if dev is not None and (step + 1) % cfg.train.eval_every == 0:  # every rank: ZeRO-3 gathers
            engine.eval()
            metrics.update(dev(student_encoder))
            engine.train()
        if collapse_baseline is None and math.isfinite(metrics["collapse/student_cos"]):
            collapse_baseline = metrics["collapse/student_cos"]  # the student at step 1: zero-shot
        logger.log(metrics)
        if env.is_main:
            progress.set_postfix(loss=f"{metrics['loss']:.4f}", cos=f"{metrics['collapse/student_cos']:.2f}")
            if (step + 1) % cfg.train.log_every == 0 and collapse_baseline is not None:
                warn_if_collapsing(metrics, collapse_baseline, cfg.train.collapse_margin)
        if stop.agreed():  # (handlers stay: the submitit job reads the stop reason through them)
            save(step + 1)
            logger.close()
            log.warning(
                "checkpointed at step %d after a stop signal; exiting %d", step + 1, PREEMPTED_EXIT_CODE
            )
            raise SystemExit(PREEMPTED_EXIT_CODE)
        if cfg.train.save_every and (step + 1) % cfg.train.save_every == 0 and step + 1 < cfg.train.max_steps:
            save(step + 1)

    stop.restore()
    final_step = max(cfg.train.max_steps, start_step)
    if start_step >= cfg.train.max_steps:  # resumed after it had finished: keep the intact tag as it is
        saved = ckpt_dir / checkpoint.tag_for(start_step)
    else:
        saved = save(final_step)
        drawn = final_step * samples_per_step
        check_skipped(metrics["data/skipped"], drawn, cfg.data.max_skip_fraction, saved)
    if env.is_main:  # one export path for every ZeRO stage: consolidate from the checkpoint just written
        export_checkpoint(saved, out / "model", final_step)
    dist.barrier()
    logger.close()
    # ZeRO's gradient hooks live in autograd's C++ graph, where Python's gc cannot see the cycle
    # through the engine: without this, every train() call in one process keeps its engine and
    # optimizer state (~350 MB for MiniLM), e.g. across the runs of `dist-optical compare`.
    engine.destroy()
    return {"steps": final_step, "run_dir": str(out), "model": str(out / "model")}


def encoding(cfg: Config) -> dict[str, Any]:
    """How the run encodes text for retrieval: truncation, pooling, prefix."""
    return {"max_length": cfg.model.max_length, "pooling": cfg.model.pooling, "prefix": cfg.model.prefix}


def language_shares(langs: list[str], languages: list[str]) -> dict[str, float]:
    """``lang/XX``: the share of this micro-batch's pairs in each training language (every step logs
    every language, so the rank mean is the global share)."""
    if len(languages) < 2:
        return {}
    return {f"lang/{lang}": langs.count(lang) / max(1, len(langs)) for lang in languages}


class TooManySkipped(UserError):
    """data.on_error=skip dropped more of the run's pairs than data.max_skip_fraction allows."""


def check_skipped(skipped: int, drawn: int, max_fraction: float, saved: Path) -> None:
    if skipped > max_fraction * drawn:
        raise TooManySkipped(
            f"skipped {skipped} of the {drawn} pairs drawn as unreadable ({100 * skipped / drawn:.1f}% > "
            f"data.max_skip_fraction {100 * max_fraction:g}%): the shards are damaged, rebuild them with "
            f"`dist-optical shard`; no model was exported (the checkpoint {saved} is kept)"
        )


def check_not_empty(batch: dict[str, Any], step: int, loader: ShardLoader) -> None:
    if not batch["key"]:
        raise TooManySkipped(
            f"step {step + 1}: every sample of this rank's micro-batch was skipped as unreadable "
            f"(data.on_error=skip; counts so far: {loader.error_counts()}); the shards are too "
            "damaged to train on: rebuild them with `dist-optical shard`"
        )


def warn_if_collapsing(metrics: dict[str, float], baseline: float, margin: float) -> None:
    """The failure mode of OT alone: every sentence, one vector. Relative to where the student
    started (e5's sentences already share a cosine of ~0.9), not a fixed threshold."""
    threshold = baseline + margin * (1.0 - baseline)
    if metrics["collapse/student_cos"] > threshold:
        log.warning(
            "step %d: student sentence embeddings are collapsing (mean pairwise cosine %.3f, %.3f at the "
            "start; warning above %.3f)",
            metrics["step"], metrics["collapse/student_cos"], baseline, threshold,
        )  # fmt: skip


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
        """A value that cannot be computed (a diagnostic over < 2 sentences) is named, never NaN."""
        if not self.enabled:
            return
        unscored = sorted(k for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v))
        metrics = {k: v for k, v in metrics.items() if k not in unscored}
        if unscored:
            metrics["unscored"] = unscored
        self.file.write(json.dumps(metrics, allow_nan=False) + "\n")
        self.file.flush()
        for name, value in metrics.items():
            if name not in ("step", "unscored"):
                self.tb.add_scalar(name, value, metrics["step"])

    def close(self) -> None:
        if self.enabled:
            self.file.close()
            self.tb.close()
