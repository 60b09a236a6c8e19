import pytest

from dist_optical.config import REPO_ROOT, ConfigError, config_hash, load_config


def test_default_and_tiny_configs_load():
    default = load_config(REPO_ROOT / "configs" / "default.yaml")
    tiny = load_config(REPO_ROOT / "configs" / "tiny.yaml")
    assert default.model.teacher == "all-MiniLM-L6-v2"
    assert default.eval.sets[0].name == "tatoeba-swh"
    assert tiny.model.tiny["hidden_size"] == 32
    assert config_hash(default) != config_hash(tiny)


def test_overrides_are_typed_and_nested():
    cfg = load_config(
        REPO_ROOT / "configs" / "tiny.yaml", ["train.max_steps=7", "train.lr=1e-4", "ot.center=true"]
    )
    assert cfg.train.max_steps == 7
    assert cfg.train.lr == pytest.approx(1e-4)
    assert cfg.ot.center is True
    # an override adds to the file's mapping
    cfg = load_config(REPO_ROOT / "configs" / "tiny.yaml", ["loss.mse=0.5"])
    assert cfg.loss == {"ot": 1.0, "contrastive": 1.0, "mse": 0.5}


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lrr=1", "unknown config key 'train.lrr'"),
        ("trian.lr=1", "unknown config key 'trian'"),
        ("train.max_steps=ten", "config key 'train.max_steps': expected int"),
        ("train.max_steps=true", "config key 'train.max_steps': expected int"),
        ("ot.eps=[1]", "config key 'ot.eps': expected float"),
        ("eval.sets=[{name: a, query: x}]", "unknown config key 'eval.sets[0].query'"),
        ("train", "expected key.sub=value"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config(None, [override])


def test_bad_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  warmup: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown config key 'train.warmup'"):
        load_config(path)
    path.write_text("- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(path)
