"""End to end with the real small model and real data: `run` (shard -> eval -> train -> eval)
and `eval`, cross-checked against each other."""

import json

import pytest
from train.helpers import run_module  # tests/ is on sys.path (rootdir-relative test modules)

from dist_optical.config import REPO_ROOT

TATOEBA = REPO_ROOT.parent / "shared" / "data" / "tatoeba"
SETS = (
    "eval.sets=[{name: tatoeba-swh, queries: tatoeba/tatoeba.swh-eng.swh, "
    "targets: tatoeba/tatoeba.swh-eng.eng, max_pairs: 120}]"
)

pytestmark = pytest.mark.e2e


def cli(*args: str):
    return run_module("dist_optical", *args, timeout=900)


@pytest.fixture(scope="module")
def default_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("default")
    proc = cli("run", "--out", str(out), "train.max_steps=6", "train.warmup_steps=2", SETS)
    return out, proc.stdout


def test_run_prints_before_after_table_and_writes_run_folder(default_run):
    out, stdout = default_run
    assert "| zero-shot teacher |" in stdout and "| trained student |" in stdout
    report = json.loads((out / "eval.json").read_text())
    rows = report["results"]
    assert set(rows) == {"zero-shot teacher", "trained student"}
    for row in rows.values():
        metrics = row["tatoeba-swh"]["src->tgt"]
        assert 0.0 <= metrics["acc@1"] <= metrics["recall@10"] <= 100.0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 6
    assert (out / "model" / "model.safetensors").is_file()


def eval_tatoeba(model: str, out) -> dict:
    cli(
        "eval",
        "--model",
        model,
        "--queries",
        str(TATOEBA / "tatoeba.swh-eng.swh"),
        "--targets",
        str(TATOEBA / "tatoeba.swh-eng.eng"),
        "--max-pairs",
        "120",
        "--max-length",
        "64",
        "--json",
        str(out),
    )
    return json.loads(out.read_text())


def test_eval_command_reproduces_the_run_rows(default_run, tmp_path):
    out, _ = default_run
    rows = json.loads((out / "eval.json").read_text())["results"]
    zero_shot = eval_tatoeba("all-MiniLM-L6-v2", tmp_path / "zs.json")
    assert zero_shot["src->tgt"] == pytest.approx(rows["zero-shot teacher"]["tatoeba-swh"]["src->tgt"])
    # the exported student's folder names its teacher, which then encodes the English side
    student = eval_tatoeba(str(out / "model"), tmp_path / "student.json")
    assert student["src->tgt"] == pytest.approx(rows["trained student"]["tatoeba-swh"]["src->tgt"])
