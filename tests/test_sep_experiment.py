"""The probe methods through the whole experiment on the tiny model and data of
test_experiment_e2e.py: only the SE subset is sampled with M answers, the probe labels every
training question, both methods are tuned and evaluated, and the report states the probes
and each method's labelling cost.

The sampler's hidden states come from the sample stage (config.probes); where this build's
sample stage writes none, a stand-in file of random features is written beside the
generations (the probe then sits near chance: this test checks the wiring, tests/
test_probes.py and test_probe_stage.py the probe's quality)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from se_jax.config.schema import RunConfig
from se_jax.io import hidden_states as hs
from se_jax.io import stage_io
from se_jax.pipeline import experiment as ex
from se_jax.pipeline import labelling_cost, sep_flow
from se_jax.pipeline.layout import Layout
from se_jax.pipeline.stages import sample
from test_experiment_e2e import tiny_config, tiny_setup  # noqa: F401 (fixture)

SUBSET, TRAIN, M = 5, 8, 4


@pytest.fixture(scope="module")
def sep_run(tiny_setup):  # noqa: F811
    model_dir, data_dir, root = tiny_setup
    config = tiny_config(model_dir, data_dir, root / "sep_run")
    config.experiment.methods = ("sep_lexical", "sesub_lexical")
    config.experiment.arms = ()   # the arms retrain an se_ method
    config.probes.layers = (1, 2)
    config.labels.sep.train_size = SUBSET
    config.evaluation.bootstrap_samples = 20
    real = sample.run_sample

    def with_hidden_states(cfg, questions, out_dir, *args, **kwargs):
        path = real(cfg, questions, out_dir, *args, **kwargs)
        target = path.parent / hs.FILE_NAME
        if cfg.probes.enabled and not target.is_file():
            ids = tuple(str(r["id"]) for r in stage_io.read_jsonl(path))
            values = np.random.default_rng(len(ids)).normal(
                size=(len(ids), len(cfg.probes.positions), len(cfg.probes.layers), 16))
            hs.save(target, hs.HiddenStates(ids, cfg.probes.layers, cfg.probes.positions,
                                            values.astype(np.float16)))
        return path

    mp = pytest.MonkeyPatch()
    mp.setattr(sample, "run_sample", with_hidden_states)
    try:
        typed = RunConfig.from_configdict(config)
        result = ex.run(typed)
    finally:
        mp.undo()
    return typed, result


def test_only_the_subset_pays_for_samples(sep_run):
    config, _ = sep_run
    layout = Layout.from_config(config)
    assert not layout.sample("train").exists()
    subset = stage_io.read_jsonl(layout.sample(sep_flow.SUBSET) / "generations.jsonl")
    rest = stage_io.read_jsonl(layout.sample(sep_flow.PROBE_ONLY) / "generations.jsonl")
    assert len(subset) == SUBSET and all(len(r["samples"]) == M for r in subset)
    assert len(rest) == TRAIN - SUBSET and all(r["samples"] == [] for r in rest)
    assert not layout.entropy("lexical", "train").exists()


def test_both_methods_are_tuned_evaluated_and_costed(sep_run):
    config, result = sep_run
    layout = Layout.from_config(config)
    methods = {r["method"] for r in result.results}
    assert {"sep_lexical", "sesub_lexical", "original"} <= methods
    sep_sft = list((layout.root / "label" / "sep_lexical").glob("tau_*/sft.jsonl"))
    assert sep_sft and all(len(stage_io.read_jsonl(p)) == TRAIN for p in sep_sft)
    summary = json.loads((sep_sft[0].parent / "summary.json").read_text())
    assert summary["method"] == "sep" and summary["num_se_subset"] == SUBSET
    text = result.paths["report"].read_text()
    assert "## Semantic entropy probes (lexical)" in text
    rows = SUBSET * (M + 1) + TRAIN - SUBSET
    assert f"| sep_lexical | {TRAIN} | {SUBSET} | {rows} |" in text
    assert f"| sesub_lexical | {SUBSET} | {SUBSET} | {SUBSET * (M + 1)} |" in text


def test_a_later_invocation_still_reports_the_labelling_seconds(sep_run):
    """The units record their seconds in done.json: a rerun (or a run resumed after a
    crash), whose telemetry holds none of them, reports the same seconds, not n/a."""
    config, _ = sep_run
    layout = Layout.from_config(config)
    rows = labelling_cost.measure(("sep_lexical", "sesub_lexical"),
                                  labelling_cost.layout_files(layout), {"phases": []})
    assert all(r["seconds"] is not None and r["seconds"] >= 0 for r in rows)
    recorded = [labelling_cost.recorded_seconds(layout.sample(sep_flow.SUBSET)),
                labelling_cost.recorded_seconds(layout.entropy("lexical", sep_flow.SUBSET))]
    sesub = next(r for r in rows if r["method"] == "sesub_lexical")
    assert sesub["seconds"] == pytest.approx(sum(recorded), abs=0.11)
