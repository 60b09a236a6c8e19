"""2 gloo ranks under torchrun: every ZeRO stage trains the same, and resume is elastic."""

import json

import pytest
from helpers import free_port, read_metrics, run_module, run_train, train_args

pytestmark = pytest.mark.multiproc


def torchrun(out, *overrides, resume=""):
    launcher = ["torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()), "-m"]
    run_module(*launcher, *train_args(out, *overrides, resume=resume))


@pytest.fixture(scope="module")
def stage_runs(tmp_path_factory):
    runs = {}
    for stage in (0, 1, 2, 3):
        out = tmp_path_factory.mktemp(f"zero{stage}")
        torchrun(
            out, "train.max_steps=12", "train.save_every=8", f"train.deepspeed=configs/ds/zero{stage}.json"
        )
        runs[stage] = out
    return runs


def test_every_zero_stage_trains_alike_on_two_ranks(stage_runs):
    losses = {stage: [m["loss"] for m in read_metrics(out)] for stage, out in stage_runs.items()}
    assert len(losses[0]) == 12
    assert sum(losses[0][-4:]) < sum(losses[0][:4])
    for stage in (1, 2, 3):  # fp32: partitioning changes the gradient reduction's order, nothing else
        assert losses[stage] == pytest.approx(losses[0], rel=0, abs=1e-5), stage  # seen: < 1e-6
    for out in stage_runs.values():
        assert (out / "model" / "model.safetensors").is_file()
    # What each rank holds (compat.zero_master_weights reads it): at ZeRO-0 two Adam moments of every
    # parameter; at ZeRO >= 1 fp32 masters + moments of half of them on each of the 2 ranks: 3/4.
    state = {stage: read_metrics(out)[-1]["mem/optimizer_mib"] for stage, out in stage_runs.items()}
    for stage in (1, 2, 3):
        assert state[stage] / state[0] == pytest.approx(0.75, abs=0.05), state


@pytest.mark.parametrize("stage", [2, 3])
def test_elastic_resume_two_ranks_to_one(stage_runs, stage, tmp_path):
    """Resume a 2-rank ZeRO checkpoint on 1 rank (via a universal checkpoint) and keep training."""
    out = stage_runs[stage]
    run_train(
        out,
        "train.max_steps=16",
        f"train.deepspeed=configs/ds/zero{stage}.json",
        resume=str(out / "checkpoints" / "step000008"),
    )
    metrics = read_metrics(out)
    assert [m["step"] for m in metrics] == list(range(1, 17))
    assert (out / "checkpoints" / "universal" / "step000008" / "zero").is_dir()
    assert (out / "checkpoints" / "latest").read_text() == "step000016"
    assert metrics[-1]["loss"] < metrics[0]["loss"]


def test_partitioned_teacher_gives_the_same_losses(stage_runs, tmp_path):
    """ZeRO-3-partitioned frozen teacher (for teachers too large for one device) == replicated one."""
    torchrun(
        tmp_path,
        "train.max_steps=12",
        "train.save_every=8",
        "model.teacher_partitioned=true",
        "train.teacher_cache=none",  # a partitioned teacher cannot be cached (each rank holds a shard)
        "train.deepspeed=configs/ds/zero0.json",
    )
    replicated = [m["loss"] for m in read_metrics(stage_runs[0])]
    assert [m["loss"] for m in read_metrics(tmp_path)] == pytest.approx(replicated, rel=1e-5, abs=1e-6)


def test_a_one_rank_run_trains_at_zero_0_and_resumes_on_two_ranks_at_it(tmp_path):
    """One rank in fp32 trains at ZeRO-0 whatever the JSON says (nothing to partition); its checkpoints hold
    the whole optimizer state, so 2 ranks resume them directly and keep the stage."""
    fp32 = "train.precision=fp32"  # in bf16 one rank keeps the JSON's stage (engine/deepspeed.py)
    run_train(tmp_path, "train.max_steps=8", "train.save_every=4", fp32)  # tiny.yaml: configs/ds/zero1.json

    def meta(step):
        return json.loads((tmp_path / "checkpoints" / f"step{step:06d}" / "dist_optical.json").read_text())

    assert (meta(8)["world_size"], meta(8)["zero_stage"]) == (1, 0)
    torchrun(tmp_path, "train.max_steps=12", "train.save_every=4", fp32, resume="auto")
    assert [m["step"] for m in read_metrics(tmp_path)] == list(range(1, 13))
    assert (meta(12)["world_size"], meta(12)["zero_stage"]) == (2, 0)
    assert not (tmp_path / "checkpoints" / "universal").exists()  # stage 0 needs no conversion
