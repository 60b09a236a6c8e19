"""End to end with the real small model and real data: `run` (shard -> eval -> train -> eval)
and `eval`, cross-checked against each other."""

import json

import pytest
import torch
import yaml
from helpers import run_module

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
    small = ("train.max_steps=6", "train.warmup_steps=2", "data.max_pairs=48")
    proc = cli("run", "--out", str(out), *small, SETS)
    return out, proc.stdout


ROWS = ("zero-shot teacher", "trained student -> teacher index", "trained student alone")


def test_run_prints_before_after_table_and_writes_run_folder(default_run):
    out, stdout = default_run
    assert all(f"| {row} |" in stdout for row in ROWS)
    report = json.loads((out / "eval.json").read_text())
    rows = report["results"]
    assert tuple(rows) == ROWS
    for row in rows.values():
        metrics = row["tatoeba-swh"]["src->tgt"]
        assert 0.0 <= metrics["acc@1"] <= metrics["recall@10"] <= 100.0
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(1, 7))
    bitexts = yaml.safe_load((out / "config.yaml").read_text())["data"]["bitexts"]
    pairs = {f"{b['lang']}-{b['pivot']}" for b in bitexts}
    assert {"wol-fra", "wol-eng", "ewe-fra"} <= pairs  # the default's news bitexts are French-pivoted
    assert all(sum(m[f"pair/{pair}"] for pair in pairs) == pytest.approx(1.0) for m in metrics)
    assert (out / "model" / "model.safetensors").is_file() and (out / "vocab.json").is_file()
    card = (out / "model" / "README.md").read_text()
    assert "tatoeba-swh" in card and "sentence-transformers" in card


def test_sentence_transformers_user_gets_the_student_alone_row(default_run):
    """`SentenceTransformer(DIR)` on both sides reproduces the run's "student alone" numbers."""
    from sentence_transformers import SentenceTransformer

    from dist_optical.eval.metrics import evaluate_parallel
    from dist_optical.files import read_lines

    out, _ = default_run
    rows = json.loads((out / "eval.json").read_text())["results"]
    model = SentenceTransformer(str(out / "model"), device="cpu")
    queries = read_lines(TATOEBA / "tatoeba.swh-eng.swh", 120)
    targets = read_lines(TATOEBA / "tatoeba.swh-eng.eng", 120)
    encode = lambda texts: model.encode(texts, convert_to_tensor=True)  # noqa: E731
    results = evaluate_parallel(encode(queries), encode(targets))
    for direction in ("src->tgt", "tgt->src"):
        assert results[direction] == pytest.approx(rows["trained student alone"]["tatoeba-swh"][direction])


def test_exported_student_serves_whole_sentences_at_the_eval_length(default_run):
    """The exported model truncates where eval does (eval.max_length: 0 = e5's 512), and
    SentenceTransformer(DIR) embeds a 300-token text as the run's evaluation does."""
    from sentence_transformers import SentenceTransformer

    from dist_optical.config import load_config
    from dist_optical.models.encoder import Encoder

    out, _ = default_run
    cfg = load_config(out / "config.yaml")
    ours = Encoder.for_eval(str(out / "model"), cfg)
    model = SentenceTransformer(str(out / "model"), device="cpu")
    assert model.max_seq_length == ours.max_length == 512
    meta = json.loads((out / "model" / "dist_optical.json").read_text())
    assert meta["max_length"] == 512 and meta["train_max_length"] == cfg.model.max_length
    long_text = " ".join(f"Habari za asubuhi rafiki yangu namba {i}." for i in range(46))
    assert 300 <= len(ours.tokenizer(long_text)["input_ids"]) <= 512
    theirs = model.encode([long_text], convert_to_tensor=True)
    assert torch.allclose(theirs, ours.embed([long_text]), atol=1e-5)
    truncated = Encoder(ours.name, ours.model, ours.tokenizer, max_length=128).embed([long_text])
    assert not torch.allclose(theirs, truncated, atol=1e-3)  # the check above sees the tail


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
        "--json",
        str(out),
    )
    return json.loads(out.read_text())


def test_eval_command_reproduces_the_run_rows(default_run, tmp_path):
    out, _ = default_run
    rows = json.loads((out / "eval.json").read_text())["results"]
    zero_shot = eval_tatoeba("multilingual-e5-small", tmp_path / "zs.json")
    assert zero_shot["src->tgt"] == pytest.approx(rows["zero-shot teacher"]["tatoeba-swh"]["src->tgt"])
    # the exported student's folder names its teacher, which then encodes the English side
    student = eval_tatoeba(str(out / "model"), tmp_path / "student.json")
    assert student["src->tgt"] == pytest.approx(
        rows["trained student -> teacher index"]["tatoeba-swh"]["src->tgt"]
    )
