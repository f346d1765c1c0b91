"""The probe stage and the `sep` label method on synthetic hidden-state files (the sample
stage's contract, se_jax/io/hidden_states.py): the layer holding the signal is chosen,
every output is written, and the labels follow the rate-matched threshold."""
import csv
import json

import numpy as np
import pytest

from se_jax.io import hidden_states as hs
from se_jax.io import stage_io
from se_jax.pipeline.stages import label as label_stage
from se_jax.pipeline.stages import probe as probe_stage
from tests.typed_configs import BASE

LAYERS = (0, 3, 6)
SIGNAL_LAYER = 3


def _write_set(tmp, name, n, rng, direction, *, with_se):
    """generations (+ uncertainty) and hidden states of n questions: at layer 3 (both
    positions) the hidden state carries the question's latent 'uncertainty' u; elsewhere noise.
    High u: high SE and a wrong answer."""
    d = direction.size
    u = rng.normal(size=n)
    values = rng.normal(size=(n, 2, len(LAYERS), d)).astype(np.float32)
    values[:, :, LAYERS.index(SIGNAL_LAYER)] += 3.0 * u[:, None, None] * direction
    ids = [f"{name}{i}" for i in range(n)]
    wrong = u + 0.3 * rng.normal(size=n) > 0.3
    gens = [dict(id=q, question=f"question {q}", answers=["paris"], prompt="p",
                 most_likely=dict(text="london" if w else "paris"), samples=[])
            for q, w in zip(ids, wrong)]
    d_ = tmp / name
    d_.mkdir()
    stage_io.write_jsonl(d_ / "generations.jsonl", gens)
    hs.save(d_ / hs.FILE_NAME, hs.HiddenStates(tuple(ids), LAYERS, ("tbg", "slt"), values))
    if with_se:   # discrete SE of M=5 samples: few distinct values
        se = np.clip(np.round(np.log(5) * (1 / (1 + np.exp(-2 * u))) * 4) / 4, 0, None)
        stage_io.write_jsonl(d_ / "uncertainty.jsonl", [
            dict(id=q, backend="lexical", discrete_semantic_entropy=float(s))
            for q, s in zip(ids, se)])
    return d_


@pytest.fixture(scope="module")
def probe_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("probe")
    rng = np.random.default_rng(0)
    direction = rng.normal(size=16)
    direction /= np.linalg.norm(direction)
    subset = _write_set(tmp, "se", 160, rng, direction, with_se=True)
    rest = _write_set(tmp, "rest", 240, rng, direction, with_se=False)
    valset = _write_set(tmp, "valset", 100, rng, direction, with_se=True)
    config = BASE.replace(evaluation=dict(bootstrap_samples=50))
    out = tmp / "probe"
    path = probe_stage.run_probe(
        config, subset / hs.FILE_NAME, subset / "uncertainty.jsonl",
        subset / "generations.jsonl", out,
        score={"probe_only": (rest / hs.FILE_NAME, rest / "generations.jsonl"),
               "valset": (valset / hs.FILE_NAME, valset / "generations.jsonl",
                          valset / "uncertainty.jsonl")},
        train_sets=("probe_only",))
    return config, out, path


def test_probe_stage_chooses_the_signal_layer_and_writes_everything(probe_run):
    _, out, path = probe_run
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["chosen"]["layer"] == SIGNAL_LAYER
    assert metrics["acc_chosen"]["layer"] == SIGNAL_LAYER
    assert metrics["chosen_metrics"]["sep auroc_se (val)"]["value"] > 0.9
    assert metrics["chosen_metrics"]["sep auroc_errors (probe_only)"]["value"] > 0.8
    # SE is known on valset: the probe against high SE there, and SE's own AUROC for errors.
    assert metrics["chosen_metrics"]["sep auroc_se (valset)"]["value"] > 0.9
    assert set(metrics["se_auroc_errors"]) == {"val", "valset"}
    assert metrics["se_auroc_errors"]["valset"]["value"] > 0.8
    rows = list(csv.DictReader((out / "metrics.csv").open()))
    noise = [float(r["value"]) for r in rows if r["probe"] == "sep" and r["layer"] == "0"
             and r["metric"] == "auroc_se"]
    assert noise and all(abs(v - 0.5) < 0.25 for v in noise)
    train = stage_io.read_jsonl(path)
    assert len(train) == 400 and sum(r["entropy"] is not None for r in train) == 160
    assert len(stage_io.read_jsonl(out / probe_stage.SCORES_FILE)) == 500
    assert "| tbg | 3 |" in (out / "per_layer.md").read_text()
    with np.load(out / probe_stage.PROBES_FILE) as f:
        assert int(f["sep_layer"]) == SIGNAL_LAYER and f["sep_weights"].shape == (16,)


@pytest.mark.parametrize("tau", [0.0, 0.6, 2.0])
def test_sep_label_method_matches_the_se_abstention_rate(probe_run, tmp_path, tau):
    config, _, path = probe_run
    config = config.replace(labels=dict(method="sep", tau=tau))
    sft = label_stage.run_label(config, path, tmp_path / "unused.jsonl", tmp_path / "label")
    records = stage_io.read_jsonl(path)
    se = [r["entropy"] for r in records if r["entropy"] is not None]
    rate = sum(e > tau for e in se) / len(se)
    examples = stage_io.read_jsonl(sft)
    abstain = sum(e["label"] == "abstain" for e in examples)
    assert abs(abstain - rate * len(records)) <= 1 + sum(      # ties in scores aside
        1 for r in records if r["score"] == 1.0)
    summary = json.loads((tmp_path / "label" / "summary.json").read_text())
    assert summary["se_abstain_rate"] == pytest.approx(rate)
    threshold = summary["probe_threshold"]
    by_id = {r["id"]: r["score"] for r in records}
    assert all((e["label"] == "abstain") == (by_id[e["id"]] > threshold) for e in examples)


def test_probe_stage_names_a_missing_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="hidden_states"):
        probe_stage.run_probe(BASE, tmp_path / "none.npz", tmp_path / "u.jsonl",
                              tmp_path / "g.jsonl", tmp_path / "out")



def test_probe_stage_reruns_across_labeller_knobs_but_not_probe_fields(probe_run):
    config, out, _ = probe_run
    inputs = json.loads((out / "config.json").read_text())["inputs"]
    call = dict(hidden=inputs["hidden_states"]["path"],
                uncertainty=inputs["uncertainty"]["path"],
                generations=inputs["generations"]["path"], out_dir=out,
                score={"probe_only": (inputs["probe_only_hidden_states"]["path"],
                                      inputs["probe_only_records"]["path"]),
                       "valset": (inputs["valset_hidden_states"]["path"],
                                  inputs["valset_records"]["path"],
                                  inputs["valset_uncertainty"]["path"])},
                train_sets=("probe_only",))
    probe_stage.run_probe(config.replace(labels=dict(tau=0.3, method="sep")), **call)
    with pytest.raises(Exception, match="probes"):
        probe_stage.run_probe(config.replace(probes=dict(l2=5.0)), **call)
