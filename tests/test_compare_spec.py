"""Compare specs: overrides merge like config files, grids plan in a fixed order (seed by seed; grids
added later last), mistakes name the key, and every shipped spec builds every run."""

from __future__ import annotations

import pytest

from dist_optical.compare.report import fixed_line
from dist_optical.compare.runner import checked_plan
from dist_optical.compare.spec import added_later, load_spec, plan
from dist_optical.config import REPO_ROOT, ConfigError, load_config
from dist_optical.data.shards import load_manifest

# The tiny spec the compare tests run (configs/tiny.yaml's random BERT, Swahili, 4 steps a run).
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


def test_a_spec_may_build_on_a_config_that_has_a_base(tmp_path):
    # configs/full.yaml names only what differs from default.yaml (`base: default.yaml`): a spec on
    # it gets the same config as `dist-optical run --config configs/full.yaml`.
    spec = load_spec(write_spec(tmp_path, SPEC.replace("base: configs/tiny.yaml", "base: configs/full.yaml")))
    full = load_config(REPO_ROOT / "configs" / "full.yaml")
    zero_shot = spec.language_config("swh")
    what_full_sets = ("micro_batch_size", "save_every", "grad_accum", "lr")
    assert [getattr(zero_shot.train, name) for name in what_full_sets] == [
        getattr(full.train, name) for name in what_full_sets
    ]
    assert zero_shot.train.max_steps == 4  # and the spec's overrides on top


def test_a_grid_added_later_runs_last_and_the_report_says_so(tmp_path):
    mse = "  infonce: {loss: {contrastive: 1.0}}\n  mse: {loss: {mse: 1.0}}\n"
    late = SPEC.replace("  infonce: {loss: {contrastive: 1.0}}\n", mse)
    late += "  later: {languages: [swh], objectives: [infonce, mse], seeds: [0], added_later: after 2 runs}\n"
    spec = load_spec(write_spec(tmp_path, late))
    assert [k.folder() for k in plan(spec)][-1] == "swh/mse/pairs-all/seed0"  # after seed 1 of the fixed grid
    line = fixed_line(spec, "spec.yaml")
    assert (
        "except what was added after results were seen: grid `later` (objectives mse: after 2 runs)" in line
    )
    assert "except" not in fixed_line(load_spec(write_spec(tmp_path, SPEC)), "spec.yaml")


def test_a_grid_run_in_pieces_has_every_objective_of_seed_0_first():
    spec, keys, _ = checked_plan(REPO_ROOT / "configs" / "compare.yaml")
    late = {o for _, objectives in added_later(spec).values() for o in objectives}
    assert late  # the shipped spec has a grid added later: the check below is not vacuous
    fixed = [k for k in keys if k.objective not in late]
    assert keys[: len(fixed)] == fixed  # a grid added later runs after all of them
    zero_shot = [k for k in fixed if not k.trains]
    assert fixed[: len(zero_shot)] == zero_shot
    seeds = [k.seed for k in fixed[len(zero_shot) :]]
    assert seeds == sorted(seeds)
    first = {(k.language, k.objective) for k in fixed if k.seed == 0}
    assert first == {(k.language, k.objective) for k in fixed if k.trains}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("ot: {loss: {ot: 1.0}}", "ot: {ot: {rhoo: 1.0}}"), "unknown config key 'ot.rhoo'"),
        (("objectives: [zero-shot, ot, infonce]", "objectives: [zero-shot, otto]"), "objective 'otto'"),
        (("languages: [swh]", "languages: [zul]"), "language 'zul' is not defined"),
        (("grids:", "keep: 1\ngrids:"), "unknown key 'keep'"),
        (("  main: {", "  headline: {"), r"grids.headline: expected a name .* report's own files"),
        (("infonce: {loss:", "info/nce: {loss:"), r"objectives.info/nce: expected a name of letters"),
        (("seeds: [0, 1]", "seeds: []"), r"grids.main.seeds: expected at least one entry"),
        (("grids:", "grids: [\n"), "not valid YAML"),
        (("ot: {loss: {ot: 1.0}}", "ot: {loss: {ot: 1.0}, data: {exclude_books: []}}"), "changes data"),
        (("grids:", "grids:\n  low: {languages: [swh], objectives: [ot], pairs: [99]}"), r"\[0, 99\]"),
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
