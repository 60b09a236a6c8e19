import pytest

from dist_optical.cli import _parser, main


def test_deepspeed_launcher_local_rank_is_accepted():
    args = _parser().parse_args(
        ["--local_rank=1", "train", "--config", "c.yaml", "--out", "o", "train.seed=3"]
    )
    assert (args.command, args.overrides, args.resume) == ("train", ["train.seed=3"], "")


def test_config_errors_exit_with_the_key(tmp_path, capsys):
    with pytest.raises(SystemExit, match=r"dist-optical train: error: .*unknown config key 'train.stepz'"):
        main(["train", "--out", str(tmp_path), "train.stepz=3"])


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="dist-optical export: error: .*no checkpoint there"):
        main(["export", str(tmp_path / "nothing"), str(tmp_path / "out")])
