"""The sentence-transformers side of `st_trainer.py`, run in its own process:

    python bench/st_side.py JOB.json

`SentenceTransformerTrainer` + `losses.MSELoss` on the job's pairs, the teacher's embeddings of the
English side precomputed into a `label` column as the MSELoss docs show, every step timed by a
Trainer callback. Writes its figures to the job's ``result`` file; st_trainer.py compares them with
dist-optical's.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import Stopwatch, load1

from dist_optical.files import write_json


def st_model(path: str, max_length: int, frozen: bool = False):
    """``Transformer(path) + Pooling("mean")``, as a user of sentence-transformers builds e5 (no
    pooler: e5 ships none and the output is mean pooling; dist-optical loads the same way)."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer

    word = Transformer(path, max_seq_length=max_length, model_kwargs={"add_pooling_layer": False})
    model = SentenceTransformer(modules=[word, Pooling(word.get_embedding_dimension(), "mean")], device="cpu")
    if frozen:
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
    return model


def teacher_labels(teacher, job: dict) -> dict:
    """The teacher's embeddings of the English side in a `label` column, as the MSELoss docs show
    (`Dataset.map` with `teacher.encode`); timed, since dist-optical's steps include its teacher."""
    from datasets import Dataset

    english = [p[1] for p in job["pairs"]]
    load_before, watch = load1(), Stopwatch()
    dataset = Dataset.from_dict({"english": english, "text": [p[0] for p in job["pairs"]]})

    def compute_labels(batch):
        size = job["settings"]["micro_batch_size"]
        return {"label": teacher.encode(batch["english"], batch_size=size, show_progress_bar=False)}

    dataset = dataset.map(compute_labels, batched=True).remove_columns("english")  # columns: text, label
    return {"dataset": dataset, "seconds": watch.lap("labels"), "load1_before": load_before}


def teacher_agreement(teacher, dataset, job: dict) -> float:
    """max |Δ| between ST's teacher embedding and dist-optical's `encode` of the same 16 texts (untimed)."""
    import numpy as np
    import torch

    from dist_optical.data.collate import tokenize
    from dist_optical.models import encode, load_tokenizer, special_ids

    tok = load_tokenizer(job["model_path"])
    english = [p[1] for p in job["pairs"][:16]]
    ids = tokenize(tok, english, job["max_length"], job["settings"]["prefix"])
    with torch.no_grad():
        ours = encode(teacher[0].auto_model, ids["input_ids"], ids["attention_mask"], special_ids(tok)).pooled
    theirs = torch.tensor(np.asarray(dataset[:16]["label"]), dtype=torch.float32)
    return float((ours - theirs).abs().max())


def step_timer():
    """A Trainer callback that records when each step begins and ends, and each logged loss."""
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.ends, self.begins, self.computes, self.losses = [], [], [], []

        def on_train_begin(self, args, state, control, **kw):
            self.ends.append(time.perf_counter())

        def on_step_begin(self, args, state, control, **kw):
            self.begins.append(time.perf_counter())

        def on_step_end(self, args, state, control, **kw):
            now = time.perf_counter()
            self.computes.append(now - self.begins[-1])
            self.ends.append(now)

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "loss" in logs:
                self.losses.append(logs["loss"])

    return StepTimer()


def train_st(student, dataset, job: dict, optim: str) -> dict:
    """`SentenceTransformerTrainer` + `losses.MSELoss` with dist-optical's settings, every step timed."""
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments, losses

    s, timer = job["settings"], step_timer()
    with tempfile.TemporaryDirectory() as out:
        # lr schedule "linear": DeepSpeed's WarmupDecayLR (linear warm-up, linear decay to 0)
        training_args = SentenceTransformerTrainingArguments(
            output_dir=out, max_steps=job["total_steps"], per_device_train_batch_size=s["micro_batch_size"],
            learning_rate=s["lr"], warmup_steps=s["warmup_steps"], lr_scheduler_type="linear",
            weight_decay=s["weight_decay"], max_grad_norm=s["grad_clip"], optim=optim, seed=s["seed"],
            use_cpu=True, bf16=False, fp16=False, dataloader_drop_last=True, dataloader_num_workers=0,
            eval_strategy="no", save_strategy="no", logging_steps=1, report_to="none", disable_tqdm=True,
        )  # fmt: skip
        trainer = SentenceTransformerTrainer(model=student, args=training_args, train_dataset=dataset,
                                             loss=losses.MSELoss(student), callbacks=[timer])  # fmt: skip
        load_before, watch = load1(), Stopwatch()
        trainer.train()
        wall = watch.lap("train")
    steps = [b - a for a, b in zip(timer.ends[:-1], timer.ends[1:], strict=True)]
    if len(steps) != job["total_steps"]:
        raise RuntimeError(f"sentence-transformers ran {len(steps)} steps, expected {job['total_steps']}")
    return {"steps": steps, "timer": timer, "wall": wall, "load1_before": load_before, "load1_after": load1()}


def st_figures(job: dict, optim: str, labels: dict, agreement: float, trained: dict, student) -> dict:
    import resource

    import torch

    timer, batch, n = trained["timer"], job["settings"]["micro_batch_size"], len(job["pairs"])
    timed, computes = trained["steps"][job["warmup"] :], timer.computes[job["warmup"] :]
    teacher_per_sample = labels["seconds"] / n
    with_teacher = [t + batch * teacher_per_sample for t in timed]  # its embedding time, on every step
    return {
        "side": "sentence-transformers trainer",
        "optim": optim,
        "steps_total": job["total_steps"],
        "steps_measured": len(timed),
        "samples_per_s_median": statistics.median(batch / t for t in timed),
        "samples_per_s_mean": batch * len(timed) / sum(timed),
        "step_s_median": statistics.median(timed),
        "compute_only_samples_per_s_median": statistics.median(batch / t for t in computes),
        "with_teacher_samples_per_s_median": statistics.median(batch / t for t in with_teacher),
        "with_teacher_samples_per_s_mean": batch * len(timed) / sum(with_teacher),
        "teacher_embedding_s": labels["seconds"],
        "teacher_embedding_sentences": n,
        "teacher_samples_per_s": n / labels["seconds"],
        "teacher_embedding_load1_before": labels["load1_before"],
        "teacher_max_abs_diff_vs_dist_optical_encode": agreement,
        "loss_first": timer.losses[0] if timer.losses else None,
        "loss_last5": statistics.mean(timer.losses[-5:]) if timer.losses else None,
        "trainable_params": sum(p.numel() for p in student.parameters() if p.requires_grad),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "train_wall_s": trained["wall"],
        "load1_before": trained["load1_before"],
        "load1_after": trained["load1_after"],
        "threads": torch.get_num_threads(),
        "includes": "steps: on_step_end to on_step_end = batch fetch (collator tokenizes in the main "
        "process) + student forward/backward + clip + AdamW + scheduler + zero_grad + per-step logging; "
        "teacher precomputed (teacher_embedding_s: Dataset.map + teacher.encode, batch 16, "
        "which sorts by length)",
    }


def main(job_path: Path) -> None:
    """The sentence-transformers side, in its own process; writes its figures to the job's ``result``."""
    import torch

    job = json.loads(Path(job_path).read_text())
    torch.set_num_threads(job["threads"])
    path, length = job["model_path"], job["max_length"]
    teacher, student = st_model(path, length, frozen=True), st_model(path, length)
    labels = teacher_labels(teacher, job)
    agreement = teacher_agreement(teacher, labels["dataset"], job)
    trained = train_st(student, labels["dataset"], job, job["optim"])
    write_json(Path(job["result"]), st_figures(job, job["optim"], labels, agreement, trained, student))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
