import json
import os
import signal
import subprocess
import time

import pytest
import torch
from helpers import TINY, cli_env, read_metrics, run_train, train_cmd
from transformers import AutoModel

from dist_optical.config import load_config
from dist_optical.engine.signals import PREEMPTED_EXIT_CODE


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("full")
    run_train(out, "train.max_steps=24", "train.save_every=8")
    return out


def test_tiny_training_lowers_the_loss_and_exports(uninterrupted):
    metrics = read_metrics(uninterrupted)
    assert [m["step"] for m in metrics] == list(range(1, 25))
    for name in ("loss", "lr", "samples_per_s", "loss/ot", "loss/contrastive", "collapse/student_cos"):
        assert all(name in m for m in metrics), name
    first = sum(m["loss"] for m in metrics[:8]) / 8  # first epoch
    last = sum(m["loss"] for m in metrics[-8:]) / 8  # third epoch over the same 64 pairs
    assert last < 0.9 * first, (first, last)
    model = AutoModel.from_pretrained(uninterrupted / "model")
    assert model.config.hidden_size == 32
    meta = json.loads((uninterrupted / "model" / "dist_optical.json").read_text())
    assert meta["teacher"] == "all-MiniLM-L6-v2"
    assert (uninterrupted / "config.yaml").is_file()
    assert any((uninterrupted / "tb").iterdir())


def test_trimmed_vocabulary_trains_its_rows_and_exports_the_full_table(uninterrupted):
    """The run trained only the rows its texts use (RUN/vocab.json); the export carries the whole
    tokenizer's table: trained rows written back, every other row as the initial model had it."""
    from dist_optical.config import load_config
    from dist_optical.models import load_encoder, load_tokenizer
    from dist_optical.models.vocab import load_kept_ids

    cfg = load_config(uninterrupted / "config.yaml")
    kept = load_kept_ids(uninterrupted / "vocab.json")
    tokenizer = load_tokenizer(cfg.model.teacher)
    initial = load_encoder(cfg.model.teacher, cfg.model.tiny, len(tokenizer)).get_input_embeddings().weight
    exported = AutoModel.from_pretrained(uninterrupted / "model").get_input_embeddings().weight
    assert exported.shape == initial.shape and 0 < len(kept) < len(tokenizer) / 2
    unseen = torch.ones(len(initial), dtype=torch.bool)
    unseen[kept] = False
    assert torch.equal(exported[unseen], initial[unseen])
    assert not torch.allclose(exported[kept], initial[kept])  # the kept rows were trained
    ckpt = uninterrupted / "checkpoints"
    states = torch.load(
        ckpt / (ckpt / "latest").read_text() / "mp_rank_00_model_states.pt",
        map_location="cpu",
        weights_only=False,
    )["module"]
    assert states["embeddings.word_embeddings.weight"].shape[0] == len(kept)


def test_teacher_is_frozen_and_not_in_the_optimizer(uninterrupted):
    """The exported student moved; the teacher (seeded tiny init) did not enter the checkpoint's optimizer."""
    ckpt = uninterrupted / "checkpoints"
    tag = (ckpt / "latest").read_text()
    states = torch.load(ckpt / tag / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=False)
    n_student = sum(v.numel() for v in states["module"].values())
    if json.loads((ckpt / tag / "dist_optical.json").read_text())["zero_stage"] == 0:
        # one rank in fp32 (engine/deepspeed.py): the torch optimizer's own state, in the model states
        held = [state["exp_avg"] for state in states["optimizer"]["state"].values()]
    else:
        optim = torch.load(
            next((ckpt / tag).glob("*optim_states.pt")), map_location="cpu", weights_only=False
        )
        held = optim["optimizer_state_dict"]["single_partition_of_fp32_groups"]
    assert sum(p.numel() for p in held) == n_student  # exactly the student's parameters, nothing more


def kill_after(out, steps: int, *overrides: str) -> None:
    """Start training and `kill -9` it once `steps` steps are logged."""
    proc = subprocess.Popen(
        train_cmd(out, *overrides), env=cli_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 240
    while time.time() < deadline and not (
        (out / "metrics.jsonl").exists() and len(read_metrics(out)) >= steps
    ):
        time.sleep(0.02)
    proc.kill()
    proc.wait()


def test_kill_minus_9_then_resume_matches_uninterrupted(uninterrupted, tmp_path):
    out = tmp_path / "killed"
    kill_after(out, 12, "train.max_steps=24", "train.save_every=8")  # after the step-8 checkpoint
    assert (out / "checkpoints" / "latest").read_text() in ("step000008", "step000016")  # not finished
    run_train(out, "train.max_steps=24", "train.save_every=8", resume="auto")
    resumed, full = read_metrics(out), read_metrics(uninterrupted)
    assert [m["step"] for m in resumed] == list(range(1, 25))
    # bit-exact on CPU fp32: same data position, same per-step RNG, same optimizer state
    assert [m["loss"] for m in resumed] == [m["loss"] for m in full]


def test_sigterm_to_the_whole_job_checkpoints_and_exits_75(tmp_path):
    """As SLURM/scancel do: the signal reaches every process of the job, DataLoader workers too."""
    out = tmp_path / "term"
    proc = subprocess.Popen(
        train_cmd(out, "train.max_steps=400", "data.num_workers=1"),
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    deadline = time.time() + 240
    while time.time() < deadline and not ((out / "metrics.jsonl").exists() and len(read_metrics(out)) >= 3):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == PREEMPTED_EXIT_CODE, stderr[-2000:]
    tag = (out / "checkpoints" / "latest").read_text()
    assert int(tag.removeprefix("step")) == len(read_metrics(out)) >= 3


def test_bf16_trains_and_exports(tmp_path):
    run_train(tmp_path / "bf16", "train.max_steps=16", "train.precision=bf16")
    run_train(tmp_path / "fp32", "train.max_steps=16")
    bf16, fp32 = ([m["loss"] for m in read_metrics(tmp_path / name)] for name in ("bf16", "fp32"))
    assert bf16 != fp32  # bf16 took effect: rounding moves the losses...
    assert sum(bf16) == pytest.approx(sum(fp32), rel=0.05)  # ...but not the training
    assert sum(bf16[-4:]) < sum(bf16[:4])
    model = AutoModel.from_pretrained(tmp_path / "bf16" / "model")
    assert model.config.hidden_size == load_config(TINY).model.tiny["hidden_size"]
    assert all(param.dtype == torch.float32 for param in model.parameters())  # exported from fp32 masters


def test_crash_mid_save_leaves_the_previous_checkpoint_to_resume(uninterrupted, tmp_path):
    """What a crash during a save leaves: a half-written newer tag folder, `latest` unmoved."""
    out = tmp_path / "crashed"
    kill_after(out, 10, "train.max_steps=24", "train.save_every=8")
    latest = (out / "checkpoints" / "latest").read_text()
    assert latest in ("step000008", "step000016")
    half = out / "checkpoints" / f"step{int(latest.removeprefix('step')) + 4:06d}"
    half.mkdir()
    (half / "mp_rank_00_model_states.pt").write_bytes(b"\x80\x02truncated")
    run_train(out, "train.max_steps=24", "train.save_every=8", resume="auto")
    assert [m["loss"] for m in read_metrics(out)] == [m["loss"] for m in read_metrics(uninterrupted)]


def test_a_french_pivoted_bitext_trains_end_to_end(tmp_path):
    """Wolof news paired with French beside Swahili verses paired with English: the shard folder, the
    logged shares and the exported card name the real pairs."""
    bitexts = (
        "data.bitexts=[{lang: swh, files: [bible/Swahili-NT.xml, bible/English-KJV-NT.xml]}, "
        "{lang: wol, pivot: fra, files: [mafand/wol.train.wol, mafand/wol.train.fr]}]"
    )
    out, shards = tmp_path / "run", tmp_path / "shards"
    run_train(out, bitexts, f"data.shards={shards}", "train.max_steps=8")
    assert sorted(p.name.rsplit("-", 1)[0] for p in shards.iterdir() if p.name[:3] in ("swh", "wol")) == [
        "swh-eng",
        "wol-fra",
    ]
    metrics = read_metrics(out)
    assert [m["step"] for m in metrics] == list(range(1, 9))
    assert all(m["pair/wol-fra"] + m["pair/swh-eng"] == pytest.approx(1.0) for m in metrics)
    assert 0 < sum(m["pair/wol-fra"] for m in metrics) < len(metrics)
    meta = json.loads((out / "model" / "dist_optical.json").read_text())
    assert meta["pairs"] == ["swh-eng", "wol-fra"] and meta["pivots"] == ["eng", "fra"]
    assert "wol-fra" in (out / "model" / "README.md").read_text()
