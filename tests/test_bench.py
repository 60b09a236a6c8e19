"""Bench scripts stay runnable: each has a seconds-long smoke mode (`--quick`: tiny sizes, the tiny
config's random BERT), run here into a temp folder, so that a renamed field breaks a test rather
than a benchmark nobody runs."""

import json
from pathlib import Path

import pytest
from helpers import run_python

from dist_optical.config import REPO_ROOT

RESULTS_MD = REPO_ROOT / "bench" / "RESULTS.md"


def run_quick(script: str, out: Path, *args: str) -> tuple[dict, str]:
    """``python bench/SCRIPT.py --quick --out OUT ARGS``: the JSON it wrote and its stdout."""
    proc = run_python(f"bench/{script}.py", "--quick", "--out", str(out), *args)
    result = json.loads(out.read_text(encoding="utf-8"))
    env = result["env"]  # bench/common's one layout
    assert f"bench/{script}.py --quick" in env["command"]
    assert env["cpu_count"] > 0 and env["threads"] > 0 and env["versions"]["torch"]
    assert len(env["load_before"]) == len(env["load_after"]) == 3 and env["git_commit"]
    return result, proc.stdout


def test_anatomy_times_one_step_of_the_tiny_config(tmp_path):
    result, stdout = run_quick("anatomy", tmp_path / "anatomy.json")
    assert json.loads(stdout.strip().splitlines()[-1]) == result  # bench/train.py reads the stdout
    assert result["steps_timed"] == 2 and result["step_s"] > 0 and result["samples_per_s"] > 0
    assert abs(sum(result["phase_share"].values()) - 1) < 0.05
    assert result["real_gflop_s"] > 0 and result["matmul_peak_gflop_s"] > 0
    assert result["real_fraction_of_peak"] > 0 and 0 <= result["padding_fraction"] < 1
    assert result["teacher_cache"]["texts"] > 0  # tiny.yaml reads the teacher from its cache


def test_data_measures_shards_loader_and_trainer(tmp_path):
    result, _ = run_quick("data", tmp_path / "data.json")
    assert result["pairs"] > 0 and result["quick"]
    builds = result["shard_build_pairs_per_s"]
    assert {"bible_xml_1_writer", "bible_xml_2_writers", "tsv_500_pairs_1_writer"} <= set(builds)
    loader = result["loader_pairs_per_s"]
    assert set(loader) == {"read_only_1_worker", "read_tokenize_1_worker", "read_tokenize_2_workers"}
    assert all(rate > 0 for rate in [*builds.values(), *loader.values()])
    assert result["train_step_measured"] and result["train_step_s"] > 0
    assert result["headroom_per_worker"] == pytest.approx(
        loader["read_tokenize_1_worker"] / result["trainer_pairs_per_s"]
    )


def test_sinkhorn_times_ours_and_pot_and_leaves_results_md_alone(tmp_path):
    before = RESULTS_MD.read_bytes()
    result, stdout = run_quick("sinkhorn", tmp_path / "sinkhorn.json")
    assert RESULTS_MD.read_bytes() == before
    assert {r["solver"] for r in result["solvers"]} == {"ours", "pot_batch", "pot_loop"}
    assert all(r["fwd_s"] > 0 and r["fwd_bwd_s"] > 0 for r in result["solvers"])
    assert result["summary"]["speedups"]["B4_n8_pot_batch"]["fwd"] > 0
    for objective in ("ot", "mse"):
        step = result["step"][objective]
        phases = [step[p] for p in ("teacher_fwd", "student_fwd", "loss", "backward")]
        assert all(seconds > 0 for seconds in phases) and step["step"] >= max(phases)
    assert 0 < result["summary"]["ot_step_share"] < 1
    assert "| B | n=m | ours fwd |" in stdout and "| ot |" in stdout  # the RESULTS.md section renders


def test_sinkhorn_device_runs_on_cpu(tmp_path):
    result, _ = run_quick("sinkhorn_device", tmp_path / "sinkhorn-cpu.json", "--device", "cpu")
    assert result["copy_bandwidth"]["gb_per_s"] > 0
    assert set(result["solvers"]) == {"fp32", "bf16"} and set(result["step"]) == {"fp32", "bf16"}
    for rows in result["solvers"].values():  # bench/gpu.sh's report reads these
        ours = [r for r in rows if r["solver"] == "ours"]
        assert ours and all(r["fraction_of_copy_bw"] > 0 and r["model_bytes"] > 0 for r in ours)
    assert result["markdown"].startswith("## Sinkhorn on ")


def test_st_trainer_runs_both_sides_on_the_tiny_model(tmp_path):
    result, _ = run_quick("st_trainer", tmp_path / "st_trainer.json")
    sides = result["sides"]
    assert set(sides) == {"dist_optical_trimmed", "dist_optical_full", "st_adamw_torch"}
    assert all(side["samples_per_s_median"] > 0 and side["steps_measured"] == 3 for side in sides.values())
    assert all(side["rounds"] == 2 and len(side["samples_per_s_rounds"]) == 2 for side in sides.values())
    assert sides["dist_optical_trimmed"]["kept_vocab_rows"] > 0
    st = sides["st_adamw_torch"]
    assert st["teacher_max_abs_diff_vs_dist_optical_encode"] < 1e-4  # one tiny model on both sides
    assert st["with_teacher_samples_per_s_median"] < st["samples_per_s_median"]
    trimmed_vs_full = result["ratios"]["trimmed_vs_full"]
    low, high = trimmed_vs_full["spread"]
    assert 0 < low <= trimmed_vs_full["median"] <= high and len(trimmed_vs_full["rounds"]) == 2
    assert all(ratio["median"] > 0 for ratio in result["ratios"]["st_adamw_torch"].values())
    assert "over 2 rounds, median [min, max]" in result["table"]
    assert "| sentence-transformers |" in result["table"]


@pytest.mark.multiproc
def test_train_runs_one_anatomy_row_and_one_zero_run(tmp_path):
    result, _ = run_quick("train", tmp_path / "train.json")
    [anatomy] = result["anatomy"]
    assert anatomy["name"] == "unfused AdamW" and anatomy["step_s"] > 0
    [row] = result["rows"]
    assert row["zero_stage"] == 1 and row["samples_per_s"] > 0 and row["state_vs_zero0"] == 1
    assert row["params_mib_per_rank"] > 0 and row["optimizer_mib_per_rank"] > 0
    assert "| unfused AdamW |" in result["anatomy_table"] and "| 1 | trimmed |" in result["table"]


@pytest.mark.multiproc
def test_optimizer_times_every_path_against_the_bandwidth_bound(tmp_path):
    result, stdout = run_quick("optimizer", tmp_path / "optimizer.json", "--vocabs", "trimmed")
    assert result["bandwidth_gb_s"] > 0 and result["bytes_per_param"] == 28
    paths = {(r["path"], r["ranks"]) for r in result["rows"]}
    for path in ("torch AdamW, for-loop", "torch AdamW, foreach", "torch AdamW, fused", "DeepSpeedCPUAdam"):
        assert (path, 1) in paths
    for stage in (0, 1, 2, 3):
        rows = [r for r in result["rows"] if r.get("stage") == stage]
        assert sorted(r["ranks"] for r in rows) == [1, 2], stage  # as asked: no one-rank override
    params = {r["params"] for r in result["rows"]}
    assert len(params) == 1  # every path updates the same student
    for row in result["rows"]:
        assert 0 < row["step_s"] <= row["backward_step_s"]
        assert row["fraction_of_bound"] == pytest.approx(row["bound_s"] / row["step_s"])
    assert "| trimmed | DeepSpeed ZeRO-2, torch fused AdamW | 2 |" in stdout
