import json

import pytest

from dist_optical.config import TrainConfig
from dist_optical.engine import checkpoint, dist
from dist_optical.engine.deepspeed import build_ds_config
from dist_optical.errors import UserError

TORCHRUN = {
    "RANK": "1",
    "WORLD_SIZE": "2",
    "LOCAL_RANK": "1",
    "MASTER_ADDR": "127.0.0.1",
    "MASTER_PORT": "29511",
}


@pytest.fixture
def clean_env(monkeypatch):
    for name in [*TORCHRUN, "LOCAL_SIZE", "LOCAL_WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS"]:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_single_process_env(clean_env):
    env = dist.detect()
    assert (env.rank, env.world_size, env.source) == (0, 1, "single")


def test_torchrun_env(clean_env):
    for name, value in TORCHRUN.items():
        clean_env.setenv(name, value)
    env = dist.detect()
    assert (env.rank, env.world_size, env.local_rank, env.source) == (1, 2, 1, "torchrun")
    assert not env.is_main


def test_partial_env_is_an_error(clean_env):
    clean_env.setenv("RANK", "0")
    clean_env.setenv("WORLD_SIZE", "2")
    with pytest.raises(UserError, match="partial distributed environment.*LOCAL_RANK"):
        dist.detect()


def test_ds_config_fills_batch_and_schedule():
    train = TrainConfig(
        micro_batch_size=4, grad_accum=3, lr=2e-4, max_steps=50, warmup_steps=5, precision="bf16"
    )
    ds = build_ds_config(train, world_size=2)
    assert ds["train_batch_size"] == 4 * 3 * 2
    assert ds["gradient_accumulation_steps"] == 3
    assert ds["optimizer"]["params"]["lr"] == 2e-4
    assert ds["scheduler"]["params"]["warmup_num_steps"] == 5
    assert ds["scheduler"]["params"]["total_num_steps"] == 50
    assert ds["bf16"]["enabled"] is True
    assert ds["zero_optimization"]["stage"] == 1


def test_one_rank_trains_at_zero_0_in_fp32_and_a_resume_keeps_its_checkpoints_stage(tmp_path):
    train = TrainConfig(deepspeed="configs/ds/zero2.json", precision="fp32")
    assert build_ds_config(train, world_size=2)["zero_optimization"]["stage"] == 2
    assert build_ds_config(train, world_size=1)["zero_optimization"]["stage"] == 0  # nothing to partition
    assert build_ds_config(train, world_size=1, stage=2)["zero_optimization"]["stage"] == 2  # a 2-rank run's
    assert build_ds_config(train, world_size=2, stage=0)["zero_optimization"]["stage"] == 0  # a 1-rank run's
    bf16 = TrainConfig(deepspeed="configs/ds/zero2.json", precision="bf16")  # fp32 masters in ZeRO's files
    assert build_ds_config(bf16, world_size=1)["zero_optimization"]["stage"] == 2
    offload = TrainConfig(deepspeed="configs/ds/zero2_offload.json", precision="fp32")  # stage 0 cannot
    assert build_ds_config(offload, world_size=1)["zero_optimization"]["stage"] == 2


def test_ds_config_batch_mismatch_is_named(tmp_path):
    path = tmp_path / "ds.json"
    path.write_text(json.dumps({"train_batch_size": 64, "zero_optimization": {"stage": 2}}))
    with pytest.raises(UserError, match="train_batch_size=64 disagrees.*16"):
        build_ds_config(TrainConfig(micro_batch_size=8, deepspeed=str(path)), world_size=2)
    path.write_text("{ not json")
    with pytest.raises(UserError, match=r"ds.json:1: not valid JSON"):
        build_ds_config(TrainConfig(deepspeed=str(path)), world_size=1)
    with pytest.raises(UserError, match="train.deepspeed"):
        build_ds_config(TrainConfig(deepspeed=str(tmp_path / "none.json")), world_size=1)


def test_resume_resolution(tmp_path):
    run = tmp_path / "run"
    assert checkpoint.resolve_resume("auto", run) is None  # fresh start
    with pytest.raises(UserError, match="no checkpoint there"):
        checkpoint.resolve_resume(str(tmp_path / "nowhere"), run)
    ckpts = run / "checkpoints"
    (ckpts / "step000010").mkdir(parents=True)
    (ckpts / "step000010" / "mp_rank_00_model_states.pt").write_bytes(b"states")
    checkpoint.mark_complete(ckpts / "step000010", {"step": 10, "world_size": 1, "zero_stage": 1})
    (ckpts / "step000020").mkdir()  # never completed: no marker
    assert checkpoint.resolve_resume("auto", run) == (ckpts, "step000010")  # with or without `latest`
    (ckpts / "latest").write_text("step000020")
    assert checkpoint.resolve_resume("auto", run) == (ckpts, "step000010")
    assert checkpoint.resolve_resume(str(ckpts), run) == (ckpts, "step000010")
    assert checkpoint.resolve_resume(str(ckpts / "step000010"), run) == (ckpts, "step000010")
    with pytest.raises(checkpoint.CheckpointError, match="step000020/dist_optical.json is missing"):
        checkpoint.resolve_resume(str(ckpts / "step000020"), run)


def test_incompatible_resume_names_the_field():
    saved = {"model": {"teacher": "a"}, "loss": {"ot": 1.0}, "train": {"max_steps": 10}}
    checkpoint.check_compatible(saved, {**saved, "train": {"max_steps": 99}})  # safe change
    with pytest.raises(UserError, match="'loss' changed"):
        checkpoint.check_compatible(saved, {**saved, "loss": {"mse": 1.0}})
