"""Usage mistakes: each a one-line error naming the file, key or option, before any long work, and
no output folder that is not the tool's own is written over."""

from __future__ import annotations

import json
import os
import shutil

import pytest
from helpers import (
    ENGLISH,
    SWAHILI,
    TINY,
    cli,
    one_line_error,
    run_train,
    snapshot,
)

from dist_optical.config import REPO_ROOT


# The smaller cases: each a one-line error naming the file or key, before any long work.
@pytest.mark.parametrize(
    ("args", "needles"),
    [
        (("train.micro_batch_size=0",), ("command line (train.micro_batch_size=0)", "expected >= 1")),
        (("train.max_steps=-5",), ("'train.max_steps'", "expected > 0")),
        (("train.lr=-1e-4",), ("'train.lr'", "expected > 0")),
        (("ot.grad=sideways",), ("'ot.grad'", "envelope, unrolled")),
        (("loss={otto: 1.0}",), ("'loss.otto'", "expected one of ot, ot_nce")),
        (("model.pooling=max",), ("'model.pooling'", "mean, cls")),
        (("train.lr=inf",), ("command line (train.lr=inf)", "expected a finite number")),
        (("data.bitexts[0].weight=-1",), ("command line (data.bitexts[0].weight=-1)", "'data.bitexts[0]'")),
    ],
)
def test_bad_values_are_refused_up_front_naming_the_key_and_the_command_line(tmp_path, args, needles):
    proc = run_train(tmp_path / "run", *args, check=False)
    one_line_error(proc, *needles)
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_usage_mistakes_are_one_line_errors(tmp_path, finished):
    folder_file = tmp_path / "out-file"
    folder_file.write_text("I am a file")
    one_line_error(run_train(folder_file, check=False), "exists and is not a folder")
    assert folder_file.read_text() == "I am a file"
    one_line_error(
        cli("train", "--config", str(REPO_ROOT / "configs"), "--out", str(tmp_path / "r")), "is a folder"
    )
    one_line_error(cli("shard", str(tmp_path), str(ENGLISH), "--out", str(tmp_path / "s")), "is a folder")
    one_line_error(cli("export", str(tmp_path / "nowhere"), str(tmp_path / "m")), "export", "no checkpoint")
    nul = tmp_path / "nul.swh"
    nul.write_bytes(b"habari\nja\x00mbo\n")
    (tmp_path / "two.eng").write_text("hello\nworld\n")
    one_line_error(
        cli("shard", str(nul), str(tmp_path / "two.eng"), "--out", str(tmp_path / "s2")), "nul.swh:2", "NUL"
    )
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    evaluate = ("eval", "--model", "all-MiniLM-L6-v2", "--queries", str(empty), "--targets", str(ENGLISH))
    one_line_error(cli(*evaluate), "empty.txt: is empty")


def test_eval_checks_the_models_before_encoding(tmp_path, finished):
    # A garbage dist_optical.json in a model folder names the file.
    model = tmp_path / "model"
    shutil.copytree(finished / "model", model)
    (model / "dist_optical.json").write_text("{not json")
    args = ("--queries", str(SWAHILI), "--targets", str(ENGLISH), "--max-pairs", "8")
    one_line_error(cli("eval", "--model", str(model), *args), "dist_optical.json: not valid JSON")
    # The tiny student (width 32) against the MiniLM teacher (width 384), in a hand-made folder (an
    # export's own dist_optical.json, edited, would be a damaged export).
    (model / "artifact.json").unlink()
    (model / "dist_optical.json").write_text(json.dumps({"teacher": "all-MiniLM-L6-v2", "max_length": 32}))
    one_line_error(cli("eval", "--model", str(model), *args), "32 dimensions", "384")
    # A tokenizer larger than the model's embedding table.
    from transformers import BertConfig, BertModel

    from dist_optical.models import load_tokenizer

    small = tmp_path / "small"
    BertModel(BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(small)  # fmt: skip
    load_tokenizer("all-MiniLM-L6-v2").save_pretrained(small)
    one_line_error(cli("eval", "--model", str(small), *args), "embedding table has 100")
    assert os.listdir(small)  # nothing deleted


# Outputs never clobber: export replaces only a previous export; train/run only write run folders.
def test_export_replaces_only_a_previous_export(finished, tmp_path):
    tag = str(finished / "checkpoints" / "step000008")
    run_before = snapshot(finished)
    one_line_error(cli("export", tag, str(finished)), "is not a previous export", "checkpoints")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("my notes")
    one_line_error(cli("export", tag, str(mine)), "is not a previous export", "notes.txt")
    plain = tmp_path / "plain"
    plain.write_text("a file")
    one_line_error(cli("export", tag, str(plain)), "exists and is a file")
    assert snapshot(finished) == run_before
    assert (mine / "notes.txt").read_text() == "my notes" and plain.read_text() == "a file"
    previous = tmp_path / "previous"
    shutil.copytree(finished / "model", previous)
    (previous / "README.md").write_text("an older card")  # and the marker no longer matches: still an export
    proc = cli("export", tag, str(previous))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (previous / "artifact.json").is_file() and "an older card" not in (
        previous / "README.md"
    ).read_text()


@pytest.mark.parametrize("command", ["train", "run"])
@pytest.mark.parametrize("resume", ["", "auto"])
def test_train_and_run_refuse_a_folder_that_is_not_a_run_folder(tmp_path, command, resume):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    (out / "config.yaml").write_text("mine: true\n")
    (out / "metrics.jsonl").write_text('{"epoch": 1, "acc": 0.5}\n')
    before = snapshot(out)
    args = [command, "--config", str(TINY), "--out", str(out), *(["--resume", resume] if resume else [])]
    one_line_error(cli(*args), "holds files no run wrote", "notes.txt", "new --out")
    assert snapshot(out) == before and sorted(os.listdir(out)) == [
        "config.yaml",
        "metrics.jsonl",
        "notes.txt",
    ]


def test_a_metrics_file_of_another_shape_is_named_not_a_traceback(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"epoch": 1, "acc": 0.5}\n')
    one_line_error(
        run_train(out, "train.max_steps=2", resume="auto", check=False),
        "metrics.jsonl:1",
        "not a metrics line",
    )
    assert (out / "metrics.jsonl").read_text() == '{"epoch": 1, "acc": 0.5}\n'


@pytest.mark.parametrize(
    ("option", "needle"),
    [
        (("--max-length", "0"), "command line (--max-length 0): expected >= 2"),
        (("--max-pairs", "-1"), "command line (--max-pairs -1): expected >= 0"),
        (("--json", "."), "command line (--json .): is a folder"),
    ],
)
def test_eval_options_are_range_checked(option, needle):
    args = ("eval", "--model", "all-MiniLM-L6-v2", "--queries", str(SWAHILI), "--targets", str(ENGLISH))
    one_line_error(cli(*args, *option), needle)
