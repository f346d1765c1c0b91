"""Several in-distribution datasets ("Mult"): each drawn as it is alone, the splits the
unions; a single name keeps working; the typed config accepts both forms."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from configs import tiny
from se_jax.config.schema import ConfigError, RunConfig
from se_jax.data import splits
from test_experiment_e2e import write_tiny_data


def _config(root: Path, ind, sizes=(2, 1, 1)):
    c = tiny.get_config()
    c.data.source_dir = str(write_tiny_data(root / "data"))
    c.workdir = str(root / "w")
    c.data.in_distribution = ind
    c.data.out_of_distribution = ("entity_questions_ood",)
    c.data.train_size, c.data.val_size, c.data.test_size = sizes
    c.data.ood_size = 2
    return RunConfig.from_configdict(c)


def _read(paths, name):
    return [json.loads(line) for line in paths[name].read_text().splitlines()]


def test_mult_is_the_union_of_the_single_draws(tmp_path):
    single = {}
    for name in ("nq_open", "entity_questions:test"):
        cfg = _config(tmp_path / name.replace(":", "_"), name)
        assert cfg.data.in_distribution == name and cfg.data.in_distribution_label == name
        single[name] = splits.prepare_splits(cfg.data, cfg.workdir, tmp_path / name / "s")
    mult = _config(tmp_path / "mult", ("nq_open", "entity_questions:test"))
    assert mult.data.in_distribution_label == "Mult (nq_open + entity_questions:test)"
    plan = splits.plan(mult.data, mult.workdir)
    assert plan.sizes == dict(train=4, val=2, test=2, ood=2)
    paths = splits.prepare_splits(mult.data, mult.workdir, tmp_path / "mult" / "s")
    for split in ("train", "val", "test"):
        assert _read(paths, split) == (_read(single["nq_open"], split)
                                       + _read(single["entity_questions:test"], split))
    # OOD excludes every in-distribution question of every dataset.
    used = {r["id"] for s in ("train", "val", "test") for r in _read(paths, s)}
    assert not used & {r["id"] for r in _read(paths, "ood_entity_questions_ood")}
    # config.json keeps the form the config gave.
    recorded = json.loads((tmp_path / "mult" / "s" / "config.json").read_text())
    assert recorded["in_distribution"] == ["nq_open", "entity_questions:test"]


@pytest.mark.parametrize("value,message", [((), "must name a dataset"),
                                           (("nq_open", "nq_open"), "twice"),
                                           (("nq_open", ""), "must name a dataset")])
def test_bad_in_distribution_is_named(tmp_path, value, message):
    with pytest.raises(ConfigError, match=f"data.in_distribution.*{message}"):
        _config(tmp_path, value)
