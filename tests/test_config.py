import re

import pytest
from helpers import BARE

from dist_optical.config import REPO_ROOT, ConfigError, config_hash, data_path, load_config
from dist_optical.data.prepare import shard_folder

# Every config but the comparison specs (which are not run configs).
RUN_CONFIGS = sorted(p.name for p in (REPO_ROOT / "configs").glob("*.yaml") if "compare" not in p.name)


@pytest.mark.parametrize("name", RUN_CONFIGS)
def test_every_shipped_run_config_loads_and_its_files_exist(name):
    cfg = load_config(REPO_ROOT / "configs" / name)
    files = [f for b in cfg.data.bitexts for f in b.files]
    files += [f for s in cfg.eval.sets for f in (s.queries, s.targets) if f]
    assert files and all(data_path(cfg, f).is_file() for f in files)
    folders = {shard_folder(cfg, b) for b in cfg.data.bitexts}
    assert len(folders) == len(cfg.data.bitexts)  # one shard folder each


def test_configs_hash_apart():
    hashes = {config_hash(load_config(REPO_ROOT / "configs" / name)) for name in RUN_CONFIGS}
    assert len(hashes) == len(RUN_CONFIGS)


def test_the_hash_of_what_a_run_was_made_from_ignores_speed_only_settings():
    """A finished compare run still counts as made from the config when only its speed changed."""
    base = config_hash(load_config(BARE))
    assert config_hash(load_config(BARE, ["train.pack=false"])) == base
    assert config_hash(load_config(BARE, ["train.lr=1e-4"])) != base


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
        # choices and ranges: refused at load time, before any consumer (or a queued job) sees them
        ("loss.kl=1", "config key 'loss.kl': expected one of ot, ot_nce, contrastive, mse, english"),
        ("loss.mse=-1", "config key 'loss.mse': expected >= 0"),
        ("loss={ot: 0, mse: 0}", "config key 'loss': expected at least one term with a weight > 0"),
        ("ot.rho=-1", "config key 'ot.rho': expected >= 0"),
        ("ot.eps_scaling=1.5", "config key 'ot.eps_scaling': expected in (0, 1)"),
        ("ot.eps=0", "config key 'ot.eps': expected > 0"),
        ("ot.grad=implicit", "config key 'ot.grad': expected one of envelope, unrolled"),
        ("ot.cost=l1", "config key 'ot.cost': expected one of cosine, sqeuclidean"),
        ("ot.marginals=zipf", "config key 'ot.marginals': expected one of uniform, idf"),
        ("contrastive.temperature=0", "config key 'contrastive.temperature': expected > 0"),
        ("model.pooling=max", "config key 'model.pooling': expected one of mean, cls"),
        ("train.precision=fp16", "config key 'train.precision': expected one of fp32, bf16"),
        ("data.on_error=ignore", "config key 'data.on_error': expected one of raise, skip"),
        ("data.bitexts=[{lang: swh, files: [a, b, c]}]", "config key 'data.bitexts[0].files': expected"),
        ("eval.sets=[{name: a, kind: web}]", "config key 'eval.sets[0].kind': expected one of"),
        ("eval.sets=[{name: a, max_pairs: -1}]", "config key 'eval.sets[0].max_pairs': expected >= 0"),
        ("train.eval_every=5", "config key 'train.dev_sets': expected one of eval.sets (none)"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(BARE, [override])


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


def test_a_retired_key_in_an_older_run_folder_is_ignored_with_a_warning(tmp_path, caplog):
    """An older run's config.yaml still loads (to resume or export it); the key is named."""
    path = tmp_path / "config.yaml"
    path.write_text("train:\n  pivot_chunks: 2\n  max_steps: 7\n")
    cfg = load_config(path)
    assert cfg.train.max_steps == 7 and cfg.train.pack
    assert "train.pivot_chunks is retired (now train.pack)" in caplog.text
    path.write_text("train:\n  pivot_chunk: 2\n")  # a typo is still an error
    with pytest.raises(ConfigError, match="unknown config key 'train.pivot_chunk'"):
        load_config(path)


def test_resume_sensitive_fields_come_from_the_schema():
    # Derived from field metadata: a renamed or new section cannot silently drop out of the check.
    from dist_optical.config import Config, resume_sensitive

    keys = resume_sensitive()
    assert {"model", "loss", "ot", "contrastive", "data.bitexts"} == set(keys)
    cfg = Config()
    for key in keys:  # every key names a real field
        node = cfg
        for part in key.split("."):
            node = getattr(node, part)


def test_a_config_builds_on_its_base(tmp_path):
    """`base: FILE` is read first; sections merge key by key, lists, values and `loss` replace."""
    (tmp_path / "base.yaml").write_text(
        "data: {max_pairs: 7, exclude_books: [REV, JAS]}\nloss: {contrastive: 1.0, mse: 20.0}\n"
        "train: {lr: 1.0e-4, max_steps: 9}\n"
    )
    (tmp_path / "variant.yaml").write_text(
        "base: base.yaml\ndata: {exclude_books: [REV]}\nloss: {ot: 1.0}\ntrain: {max_steps: 3}\n"
    )
    cfg = load_config(tmp_path / "variant.yaml")
    assert (cfg.data.max_pairs, cfg.data.exclude_books) == (7, ["REV"])
    assert cfg.loss == {"ot": 1.0}
    assert (cfg.train.lr, cfg.train.max_steps) == (1e-4, 3)
    (tmp_path / "base.yaml").write_text("base: variant.yaml\n")
    with pytest.raises(ConfigError, match="includes itself"):
        load_config(tmp_path / "variant.yaml")
    (tmp_path / "variant.yaml").write_text("base: missing.yaml\n")
    with pytest.raises(ConfigError, match="missing.yaml"):
        load_config(tmp_path / "variant.yaml")


def test_the_shipped_default_is_the_dataclass_defaults():
    """One source of defaults: a key a YAML leaves out takes the value configs/default.yaml shows."""
    from dist_optical.config import Config

    assert load_config(REPO_ROOT / "configs/default.yaml") == Config()
    assert load_config(None) == Config()


def test_the_full_tier_is_the_default_recipe_on_all_the_data():
    default, full = (
        load_config(REPO_ROOT / "configs/default.yaml"),
        load_config(REPO_ROOT / "configs/full.yaml"),
    )
    assert (full.loss, full.model) == (default.loss, default.model)
    # the same bitexts, each pair once in the natural mixture (no weights) instead of the default's
    assert [(b.lang, b.pivot, b.files) for b in full.data.bitexts] == [
        (b.lang, b.pivot, b.files) for b in default.data.bitexts
    ]
    assert all(b.weight == 0 for b in full.data.bitexts) and full.data.temperature == 1.0
    assert full.data.max_pairs == 0 and default.data.max_pairs > 0
