"""`dist-optical compare` on the tiny model: the report agrees with results.json, finished runs are
never retrained, an interrupted grid continues, and the by-book split is checked on the keys."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from helpers import cli_env

from dist_optical.compare.report import fmt
from dist_optical.compare.runner import check_split, checked_plan
from dist_optical.compare.spec import headline, load_spec, plan, row_name
from dist_optical.config import REPO_ROOT, ConfigError, load_config
from dist_optical.data.prepare import shard_folder
from dist_optical.data.shards import load_manifest
from dist_optical.errors import UserError

SPEC = """
base: configs/tiny.yaml
overrides:
  train: {max_steps: 4, log_every: 2, warmup_steps: 1, eval_every: 2, dev_sets: [rev-swh]}
languages:
  swh:
    data: {bitexts: [{lang: swh, files: [bible/Swahili-NT.xml, bible/English-KJV-NT.xml]}]}
    eval:
      sets:
        - {name: tatoeba-swh, queries: tatoeba/tatoeba.swh-eng.swh, targets: tatoeba/tatoeba.swh-eng.eng,
           max_pairs: 60}
        - {name: rev-swh, kind: bible, queries: bible/Swahili-NT.xml, targets: bible/English-KJV-NT.xml,
           books: [REV], max_pairs: 60}
objectives:
  zero-shot: null
  ot: {loss: {ot: 1.0}}
  infonce: {loss: {contrastive: 1.0}}
grids:
  main: {languages: [swh], objectives: [zero-shot, ot, infonce], seeds: [0, 1]}
"""


def compare(spec, out, *options: str) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, "-m", "dist_optical", "compare", "--config", str(spec), "--out", str(out), *options],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=600,
        cwd=REPO_ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.fixture(scope="module")
def compared(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    spec = root / "compare.yaml"
    spec.write_text(SPEC, encoding="utf-8")
    compare(spec, root / "out")
    return spec, root / "out"


def swh_bitext(compared):
    cfg = load_spec(compared[0]).language_config("swh")
    return cfg, cfg.data.bitexts[0]


def test_report_numbers_match_results_json(compared):
    _, out = compared
    results = json.loads((out / "results.json").read_text())
    assert results["runs_total"] == 5 and results["runs_skipped"] == 0
    assert {(r["objective"], r["seed"]) for r in results["runs"]} == {
        ("zero-shot", None),
        ("ot", 0),
        ("ot", 1),
        ("infonce", 0),
        ("infonce", 1),
    }
    summary = results["summary"]["swh"]
    report = (out / "report.md").read_text()
    table = [line for line in report.splitlines() if re.match(r"\| (zero-shot|ot|infonce) \| \d \|", line)]
    assert len(table) == 3
    sets = {"tatoeba-swh": "parallel", "rev-swh": "bible"}
    for line in table:
        cells = [cell.strip().strip("*") for cell in line.strip("|").split("|")]
        row = summary[row_name(cells[0], 0)]
        assert int(cells[1]) == row["n"] == (1 if cells[0] == "zero-shot" else 2)
        for cell, (name, kind) in zip(cells[2:4], sets.items(), strict=True):
            assert cell == fmt(row["metrics"]["idx"][name]["src->tgt"][headline(kind)], row["n"])
    # each summary mean is the mean of its runs' result files
    ot_runs = [json.loads((out / f"runs/swh/ot/pairs-all/seed{s}/result.json").read_text()) for s in (0, 1)]
    values = [run["results"]["idx"]["rev-swh"]["src->tgt"]["acc@1"] for run in ot_runs]
    assert summary["ot/pairs-all"]["metrics"]["idx"]["rev-swh"]["src->tgt"]["acc@1"]["mean"] == pytest.approx(
        sum(values) / 2
    )
    assert results["splits"]["swh"]["eval"]["rev-swh"] == {"books": ["REV"], "verses": 60, "overlap": 0}
    assert "REV" not in results["splits"]["swh"]["train_books"]
    pairs = load_manifest(shard_folder(*swh_bitext(compared)))["total_pairs"]  # the training pool, as built
    assert f"| swh | {pairs} |" in report and "![main](main.png)" in report
    assert (out / "main.png").stat().st_size > 0
    diagnostics = summary["ot/pairs-all"]["diagnostics"]["last"]
    assert "ot/plan_entropy" in diagnostics and "collapse/student_cos" in diagnostics
    assert not (out / "runs/swh/ot/pairs-all/seed0/checkpoints").exists()  # deleted once evaluated


def test_intervals_come_from_the_runs_per_query_ranks(compared):
    from dist_optical.compare.report import _interval
    from dist_optical.compare.stats import correct_at_1, paired_bootstrap, verdict

    _, out = compared
    results = json.loads((out / "results.json").read_text())
    runs = {(r["objective"], r["seed"]): r for r in results["runs"]}
    tests = results["significance"]["swh"]
    assert set(tests) == {"tatoeba-swh", "rev-swh"}
    views = [(p, d) for p in ("idx", "alone") for d in ("src->tgt", "tgt->src")]
    for name, queries in (("tatoeba-swh", 60), ("rev-swh", 60)):
        for protocol, direction in views:

            def correct(objective, seeds, protocol=protocol, direction=direction, name=name):
                return [correct_at_1(runs[(objective, s)]["ranks"][protocol][name][direction]) for s in seeds]

            ot, infonce, zero = (
                correct("ot", (0, 1)),
                correct("infonce", (0, 1)),
                correct("zero-shot", [None]),
            )
            assert len(ot[0]) == queries
            # acc@1 from the ranks is the acc@1 the run reported, in every view
            reported = runs[("ot", 0)]["results"][protocol][name][direction]["acc@1"]
            assert 100 * ot[0].mean() == pytest.approx(reported)
            cell = tests[name][protocol][direction]
            assert cell["ot"]["vs infonce"] == paired_bootstrap(ot, infonce)
            assert cell["ot"]["vs zero-shot"] == paired_bootstrap(ot, zero)
            assert "vs infonce" not in cell["infonce"]
            if name != "rev-swh":  # the dev curve's set is watched, not judged
                judged = results["verdicts"]["swh"][name]["ot"][f"{protocol}/{direction}"]
                assert judged == verdict(cell["ot"]["vs infonce"])
    assert "rev-swh" not in results["verdicts"]["swh"]
    # the teacher alone is the teacher against its own index; a trained student alone is not
    zero_shot, student = runs[("zero-shot", None)], runs[("ot", 0)]
    assert zero_shot["results"]["alone"] == zero_shot["results"]["idx"]
    assert student["ranks"]["alone"] != student["ranks"]["idx"]
    report = (out / "report.md").read_text()
    assert "## Differences with 95% intervals" in report and "## Verdicts against InfoNCE" in report
    assert _interval(tests["rev-swh"]["idx"]["src->tgt"]["ot"]["vs infonce"]) in report
    assert report.splitlines()[2].startswith("Against InfoNCE, over up to 4 cells each")
    train = load_spec(compared[0]).language_config("swh").train  # the dev curve: every eval_every steps
    steps = range(train.eval_every, train.max_steps + 1, train.eval_every)
    for run in results["runs"]:
        if run["seed"] is not None:
            pairs_seen = [step * train.micro_batch_size * train.grad_accum for step in steps]
            assert run["curve"]["pairs"] == pairs_seen and len(run["curve"]["acc@1"]["rev-swh"]) == len(steps)
            assert run["curve"]["train_s"] == sorted(run["curve"]["train_s"]) and run["step_s"] > 0
    assert (out / "curves.png").stat().st_size > 0 and (out / "headline.png").stat().st_size > 0


def test_learning_curves_start_at_the_zero_shot_row(compared):
    from dist_optical.compare.plots import learning_curves

    _, out = compared
    results = json.loads((out / "results.json").read_text())
    zero_shot = next(run for run in results["runs"] if run["objective"] == "zero-shot")
    curves = learning_curves(results["runs"])["swh"]["rev-swh"]
    assert set(curves) == {"ot", "infonce"}
    for objective, entry in curves.items():
        assert entry["pairs"][0] == 0 and len(entry["acc"]) == 2  # two seeds
        for seed, (acc, seconds) in enumerate(zip(entry["acc"], entry["train_s"], strict=True)):
            assert acc[0] == zero_shot["results"]["idx"]["rev-swh"]["src->tgt"]["acc@1"]
            assert seconds[0] == 0.0
            run = next(r for r in results["runs"] if (r["objective"], r["seed"]) == (objective, seed))
            assert acc[1:] == run["curve"]["acc@1"]["rev-swh"]


def test_rerun_retrains_nothing_and_an_interrupted_grid_continues(compared):
    spec, out = compared
    runs = out / "runs" / "swh"
    finished = sorted(runs.rglob("result.json"))
    assert len(finished) == 5
    stamps = {path: path.stat().st_mtime_ns for path in [*finished, *runs.rglob("metrics.jsonl")]}
    proc = compare(spec, out)
    assert proc.stderr.count("skipped (finished)") == 5
    assert {path: path.stat().st_mtime_ns for path in stamps} == stamps
    assert json.loads((out / "results.json").read_text())["runs_skipped"] == 5

    # An interruption after training but before evaluation leaves no result.json: only that run is redone.
    redo = runs / "infonce" / "pairs-all" / "seed1" / "result.json"
    redo.unlink()
    proc = compare(spec, out)
    assert proc.stderr.count("skipped (finished)") == 4 and "done swh/infonce/pairs-all/seed1" in proc.stderr
    assert redo.is_file()
    assert all(
        path.stat().st_mtime_ns == stamp for path, stamp in stamps.items() if path.parent != redo.parent
    )

    # A finished run whose config changed is run again; its old folder is kept beside, not deleted.
    zero_shot = runs / "zero-shot" / "result.json"
    old = json.loads(zero_shot.read_text())
    zero_shot.write_text(json.dumps({**old, "config_hash": "another"}), encoding="utf-8")
    proc = compare(spec, out)
    assert "was made from another config; running it again" in proc.stderr
    (aside,) = runs.glob("zero-shot.replaced-*")
    assert json.loads((aside / "result.json").read_text())["config_hash"] == "another"
    assert json.loads(zero_shot.read_text())["config_hash"] == old["config_hash"]


@pytest.mark.parametrize("carried_by", ["--reuse", "--publish"])
def test_a_grid_carried_to_a_fresh_folder_reuses_published_runs_and_stops_on_time(
    compared, tmp_path, carried_by
):
    """--reuse FILE, or the results.json already in the --publish folder (a fresh clone continues
    the published grid): the runs of an unchanged config count as finished (nothing retrained);
    --stop-after: no run starts past the budget, and the report names the missing ones."""
    spec, inline = compared
    published = json.loads((inline / "results.json").read_text())
    kept = [run for run in published["runs"] if run["objective"] != "infonce"]
    reuse = tmp_path / "published" / "results.json"
    reuse.parent.mkdir()
    reuse.write_text(json.dumps({**published, "runs": kept}), encoding="utf-8")
    out = tmp_path / "carried"
    where = str(reuse if carried_by == "--reuse" else reuse.parent)
    proc = compare(spec, out, carried_by, where, "--stop-after", "0.0001")
    assert "reused 3 finished run(s)" in proc.stderr and proc.stderr.count("skipped (finished)") == 3
    assert proc.stderr.count("not started (past --stop-after)") == 2
    results = json.loads((out / "results.json").read_text())
    assert results["runs_missing"] == ["swh/infonce/pairs-all/seed0", "swh/infonce/pairs-all/seed1"]
    assert [run["results"] for run in results["runs"]] == [run["results"] for run in kept]
    assert not list(out.rglob("metrics.jsonl"))  # nothing was trained
    assert "**Partial: 3 of 5 planned runs are finished.**" in (out / "report.md").read_text()
    if carried_by == "--publish":  # the published runs are still there, now with the new report
        republished = json.loads(reuse.read_text())
        assert [run["results"] for run in republished["runs"]] == [run["results"] for run in kept]


def test_a_cluster_submits_no_published_run(compared, tmp_path):
    """--cluster with the --publish folder of a finished grid: its runs count as finished there too,
    so nothing is submitted (not trained again) and the report is written."""
    spec, inline = compared
    published = tmp_path / "published"
    published.mkdir()
    (published / "results.json").write_text((inline / "results.json").read_text(), encoding="utf-8")
    out = tmp_path / "carried"
    proc = compare(spec, out, "--cluster", "local", "--publish", str(published))
    assert "every run is finished" in proc.stdout, proc.stdout
    assert not (out / "submitit").exists() and not list(out.rglob("metrics.jsonl"))


def test_a_job_array_reproduces_the_in_process_runs(compared, tmp_path):
    """On a fresh machine: the array's jobs start together on shard, teacher-cache and eval-cache
    folders none has built; one builds each, the others wait for it."""
    inline = compared[1]
    spec = tmp_path / "fresh.yaml"
    fresh = f"overrides:\n  data: {{shards: {tmp_path / 'fresh-shards'}}}\n"
    spec.write_text(SPEC.replace("overrides:\n", fresh), encoding="utf-8")
    out = tmp_path / "array"
    proc = compare(spec, out, "--cluster", "local", "--wait")
    assert "submitted 5 unfinished run(s) as local job(s)" in proc.stdout, proc.stdout
    logs = [path for path in (out / "submitit").iterdir() if path.name.isdigit()]
    assert len(logs) == 5  # one job, with its own log folder, per run
    results = json.loads((out / "results.json").read_text())
    assert results["runs_skipped"] == 5  # the report reads what the tasks wrote; nothing is rerun

    def numbers(results):
        return {run["folder"]: run["results"] for run in results["runs"]}

    assert numbers(results) == numbers(json.loads((inline / "results.json").read_text()))
    assert "every run is finished" in compare(spec, out, "--cluster", "local").stdout
    assert (tmp_path / "fresh-shards" / "teacher-cache").is_dir()


def xml_bible(path, books):
    segs = "".join(
        f'<seg id="b.{book}.1.{v}" type="verse">{book} verse {v}</seg>' for book in books for v in (1, 2)
    )
    path.write_text(f"<cesDoc><text><body>{segs}</body></text></cesDoc>", encoding="utf-8")


@pytest.mark.parametrize("exclude", [["REV"], []])
def test_by_book_split_is_checked_on_the_shard_keys(tmp_path, exclude):
    xml_bible(tmp_path / "xx.xml", ["MAT", "JUD", "REV"])
    xml_bible(tmp_path / "en.xml", ["MAT", "JUD", "REV"])
    cfg = load_config(
        None,
        [
            f"data.root={tmp_path}",
            "data.bitexts=[{lang: xx, files: [xx.xml, en.xml]}]",
            f"data.shards={tmp_path / 'shards'}",
            f"data.exclude_books={exclude}",
            "eval.sets=[{name: rev, kind: bible, queries: xx.xml, targets: en.xml, books: [REV]}]",
        ],
    )
    if exclude:
        split = check_split("xx", cfg)
        assert split["train_pairs"] == 4 and split["train_books"] == ["JUD", "MAT"]
        assert split["eval"]["rev"] == {"books": ["REV"], "verses": 2, "overlap": 0}
    else:
        with pytest.raises(UserError, match=r"xx: eval set rev: 2 evaluation keys are also training keys"):
            check_split("xx", cfg)


def write_spec(tmp_path, text):
    path = tmp_path / "spec.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_overrides_merge_sections_and_replace_the_loss(tmp_path):
    spec = load_spec(
        write_spec(tmp_path, SPEC.replace("ot: {loss: {ot: 1.0}}", "ot: {loss: {ot: 1.0}, ot: {rho: 0.5}}"))
    )
    keys = plan(spec)
    assert [k.folder() for k in keys] == [
        "swh/zero-shot",
        "swh/ot/pairs-all/seed0",
        "swh/infonce/pairs-all/seed0",
        "swh/ot/pairs-all/seed1",
        "swh/infonce/pairs-all/seed1",
    ]  # seed by seed: a grid stopped half way has every objective once
    ot, base = spec.run_config(keys[3]), load_config(REPO_ROOT / "configs" / "tiny.yaml")
    assert ot.loss == {"ot": 1.0}  # replaced, not merged with the base's {ot, contrastive}
    assert ot.ot.rho == 0.5 and (ot.ot.eps, ot.ot.max_iters) == (base.ot.eps, base.ot.max_iters)  # merged
    assert (ot.train.seed, ot.train.max_steps, ot.train.lr) == (
        1,
        4,
        base.train.lr,
    )  # overrides, then the base
    assert spec.run_config(keys[2]).loss == {"contrastive": 1.0}


def test_a_grid_run_in_pieces_has_every_objective_of_seed_0_first():
    spec, keys, _ = checked_plan(REPO_ROOT / "configs" / "compare.yaml")
    zero_shot = [k for k in keys if not k.trains]
    assert keys[: len(zero_shot)] == zero_shot
    seeds = [k.seed for k in keys[len(zero_shot) :]]
    assert seeds == sorted(seeds)
    first = {(k.language, k.objective) for k in keys if k.seed == 0}
    assert first == {(k.language, k.objective) for k in keys if k.trains}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("ot: {loss: {ot: 1.0}}", "ot: {ot: {rhoo: 1.0}}"), "unknown config key 'ot.rhoo'"),
        (("objectives: [zero-shot, ot, infonce]", "objectives: [zero-shot, otto]"), "objective 'otto'"),
        (("languages: [swh]", "languages: [zul]"), "language 'zul' is not defined"),
        (("grids:", "keep: 1\ngrids:"), "unknown key 'keep'"),
    ],
)
def test_spec_errors_name_the_key(tmp_path, change, message):
    path = write_spec(tmp_path, SPEC.replace(*change))
    with pytest.raises(ConfigError, match=message):
        checked_plan(path)


SPECS = {  # spec -> languages it must cover, minimum seeds
    "compare.yaml": ({"wol", "ewe"}, 3),
    "compare-full.yaml": ({"wol", "ewe", "zul", "swh"}, 5),
    "compare-minilm.yaml": ({"swh", "zul", "wol", "ewe"}, 1),
}


@pytest.mark.parametrize("name", sorted(SPECS))
def test_shipped_specs_build_every_run(name):
    spec, keys, configs = checked_plan(REPO_ROOT / "configs" / name)
    languages, seeds = SPECS[name]
    assert {key.language for key in keys} == languages
    assert len(spec.grids["main"].seeds) >= seeds
    for key, cfg in configs.items():
        assert "REV" in cfg.data.exclude_books
        assert {b.lang for b in cfg.data.bitexts} == {key.language}  # a language trains on its own bitext
    if name != "compare-minilm.yaml":  # the multilingual grids: the objectives the question names
        assert {key.objective for key in keys} >= {
            "zero-shot",
            "ot",
            "infonce",
            "mse",
            "ot+infonce",
            "ot_nce",
        }
        for key, cfg in configs.items():
            if key.trains and key.pairs:  # a budgeted pool is seen at least once in full
                assert cfg.train.max_steps >= key.pairs // (cfg.train.micro_batch_size * cfg.train.grad_accum)


def test_the_cpu_grid_sees_every_training_pair_of_its_languages():
    """configs/compare.yaml trains one full epoch (the last partial batch aside) on Bible and news."""
    from dist_optical.data.prepare import ensure_shards

    spec, keys, configs = checked_plan(REPO_ROOT / "configs" / "compare.yaml")
    pools = {}
    for key in (k for k in keys if k.trains):
        cfg = configs[key]
        assert {b.pivot for b in cfg.data.bitexts} == {"eng", "fra"} and cfg.data.max_pairs == 0
        if key.language not in pools:  # the shards are built once (seconds), as compare builds them
            pools[key.language] = sum(load_manifest(m)["total_pairs"] for m in ensure_shards(cfg))
        pool = pools[key.language]
        batch = cfg.train.micro_batch_size * cfg.train.grad_accum
        assert pool - batch < cfg.train.max_steps * batch <= pool
