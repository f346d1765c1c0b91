"""The knowledge-controlled demo, reduced: a few dozen EntityQuestions facts, a tiny random
model, and the real driver (se_jax.pipeline.experiment.run) through every stage: teach -> sample ->
entropy -> SE labels -> LoRA fine-tuning -> evaluation. It asserts the direction of the
result from the files the stages wrote, so a regression in any stage shows up:

- upstream: the taught base model's semantic entropy on validation is lower on taught facts
  than on untaught ones, and the SE labels abstain on more untaught than taught train facts;
- the result: after SE tuning, taught test facts (never in the abstention fine-tuning) are
  answered correctly far more often than untaught ones, and untaught ones are abstained on
  more often than taught ones.

A last test runs the demo's own shape (teach, Short-QA and Long-QA, Table 1 over both) on
the same tiny model for the plumbing: files, report sections, one model load, resume.

The tiny model knows nothing until the teach step makes it learn the taught facts by heart,
so "what the model knows" is exactly the taught set. It runs on one of the tests' 8
simulated devices (sharding is tested elsewhere).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from configs import tiny
from se_jax.pipeline import experiment as ex
from se_jax.io import stage_io
from se_jax.pipeline.layout import Layout
from se_jax.pipeline.plan import Run
from se_jax.config.schema import RunConfig

METHOD = "se_lexical"
TAU = 0.5


def knowledge_config(model_dir: str, workdir: str | Path, *, facts_seed: int = 0,
                     seed: int = 0):
    """configs/tiny.py turned into a small knowledge-controlled experiment (Short-QA only)."""
    config = tiny.get_config()
    config.model.path = str(model_dir)
    config.workdir = str(workdir)
    config.seed = seed
    config.mesh.num_devices = 1   # faster than the 8 simulated CPUs; sharding is tested elsewhere
    config.data.source = "facts"
    f = config.facts
    f.n_known, f.n_unknown, f.n_ood_known, f.n_ood_unknown = 30, 30, 0, 0
    f.fractions = (0.4, 0.2, 0.4)   # train 12 + 12, val 6 + 6, test 12 + 12
    f.phrasings, f.seed = 1, facts_seed
    config.teach.enabled = True
    # A tiny random model learns a few dozen facts by heart in a few hundred steps.
    config.teach.training.update(dict(learning_rate=3e-3, epochs=30, batch_size=8))
    config.prompt.style = "short"
    config.sampling.num_samples = 8
    config.sampling.max_new_tokens = 8
    config.evaluation.judge = "alias"
    config.evaluation.max_new_tokens = 8    # room for the abstention phrase
    config.evaluation.batch_size = 16
    e = config.experiment
    e.methods, e.taus, e.seeds = (METHOD,), (TAU,), (0,)
    e.arms, e.slick_breakdown = (), False
    t = config.training
    t.lora.rank, t.lora.alpha = 8, 16.0
    t.lora.target_modules = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                             "down_proj")
    t.lora.dropout = 0.0
    t.learning_rate, t.epochs, t.batch_size = 1e-2, 10, 8
    return config


def summary(config) -> dict:
    """The direction figures, read from the stages' outputs."""
    layout = Layout.from_config(RunConfig.from_configdict(config))
    run = Run(METHOD, TAU, 0)
    val = {r["id"]: r["taught"] for r in stage_io.read_jsonl(layout.data / "val.jsonl")}
    train = {r["id"]: r["taught"] for r in stage_io.read_jsonl(layout.data / "train.jsonl")}
    unc = stage_io.read_jsonl(layout.entropy("lexical", "val") / "uncertainty.jsonl")
    se = {k: [u["discrete_semantic_entropy"] for u in unc if val[u["id"]] == k]
          for k in (True, False)}
    sft = stage_io.read_jsonl(layout.label(run) / "sft.jsonl")
    abstain = {k: [s["label"] == "abstain" for s in sft if train[s["id"]] == k]
               for k in (True, False)}
    out = {"se_val_taught": float(np.mean(se[True])), "se_val_untaught": float(np.mean(se[False])),
           "label_abstain_taught": float(np.mean(abstain[True])),
           "label_abstain_untaught": float(np.mean(abstain[False]))}
    for tag in ("original", run.tag):
        rows = stage_io.read_jsonl(layout.evaluate(tag, "test") / "outcomes.jsonl")
        for k, name in ((True, "taught"), (False, "untaught")):
            mine = [r for r in rows if r["taught"] == k]
            out[f"{tag.split('/')[0]}_correct_{name}"] = float(np.mean(
                [r["correct"] and not r["abstained"] for r in mine]))
            out[f"{tag.split('/')[0]}_abstain_{name}"] = float(np.mean(
                [r["abstained"] for r in mine]))
    return out


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory) -> str:
    from tiny_models import make_tiny_llama_dir
    return make_tiny_llama_dir(tmp_path_factory.mktemp("model"), variant="llama")


@pytest.fixture(scope="module")
def knowledge_run(tmp_path_factory, tiny_model_dir):
    """The reduced demo, run once: (config, direction figures)."""
    root = tmp_path_factory.mktemp("demo_knowledge")
    config = knowledge_config(tiny_model_dir, root / "run")
    ex.run(RunConfig.from_configdict(config))
    return config, summary(config)


def test_taught_model_is_surer_of_taught_facts(knowledge_run):
    """Upstream of the fine-tuning: the teach step took, SE separates taught from untaught
    on validation, and the SE labels abstain on untaught train facts, answer taught ones."""
    _, s = knowledge_run
    assert s["original_correct_taught"] >= 0.75, s      # the teach step took
    # Untaught answers are right only by chance (e.g. a country shared with a taught fact).
    assert s["original_correct_taught"] - s["original_correct_untaught"] >= 0.5, s
    assert s["se_val_untaught"] - s["se_val_taught"] >= 0.5, s   # nats
    assert s["label_abstain_untaught"] - s["label_abstain_taught"] >= 0.5, s


def test_se_tuning_answers_taught_and_abstains_on_untaught(knowledge_run):
    """The result: on test facts that were never in the abstention fine-tuning, the SE-tuned
    model answers taught facts correctly far more often than untaught ones (measured on
    facts.seed 0, 1, 2 with seed 0 and on facts.seed 0 with seed 1: a gap of 0.58-0.92),
    and abstains on untaught facts more often than on taught ones. That abstention
    generalises to held-out facts only in part on this tiny model (0.25-0.75 of untaught
    test facts, 0-0.08 of taught ones), so its asserted margin is small: more than one
    question in twelve (the smallest gap seen was two)."""
    _, s = knowledge_run
    assert s["se_lexical_correct_taught"] - s["se_lexical_correct_untaught"] >= 0.4, s
    assert s["se_lexical_abstain_untaught"] - s["se_lexical_abstain_taught"] > 0.1, s
    # Tuning changed the behaviour: the original model abstained on nothing.
    assert s["se_lexical_abstain_untaught"] > s["original_abstain_untaught"], s


def test_knowledge_controlled_settings_end_to_end(tmp_path_factory, tiny_model_dir):
    """data.source=facts with the teach step and both answer settings, on the tiny model:
    the plumbing only (one teach epoch teaches nothing, so no direction is asserted here;
    the tests above teach the tiny model its facts and assert the direction: taught
    facts answered, untaught ones abstained on, after SE tuning)."""
    workdir = tmp_path_factory.mktemp("facts")
    config = tiny.get_config()
    config.model.path = tiny_model_dir
    config.workdir = str(workdir)
    config.mesh.num_devices = 1
    config.data.source = "facts"
    f = config.facts
    f.n_known, f.n_unknown, f.n_ood_known, f.n_ood_unknown, f.phrasings = 8, 8, 4, 4, 1
    config.teach.enabled = True
    config.teach.training.update(dict(epochs=1, batch_size=8))   # full fine-tuning
    config.experiment.settings = ("short", "sentence")
    config.experiment.methods = ("se_lexical", "rtuning")
    config.experiment.arms = ()
    config.experiment.slick_breakdown = False
    results = ex.run(RunConfig.from_configdict(config))

    assert set(results) == {"Short-QA", "Long-QA"}
    teach = workdir / "teach"
    assert (teach / "done.json").exists() and (teach / "train" / "merged").is_dir()
    assert not (teach / "train" / "checkpoints").exists()   # merged/ is the saved result
    styles = {json.loads(line).get("prompt_style") for line in open(teach / "teach.jsonl")}
    assert styles == {"short", "sentence"}
    table = (workdir / "report" / "report.md").read_text()
    assert "| Short-QA | in-distribution |" in table and "| Long-QA | ood_demo_facts |" in table
    for setting in ("short", "sentence"):
        text = (workdir / setting / "report" / "report.md").read_text()
        for section in ("predict its errors", "Abstention on taught and untaught facts (test)",
                        "All abstain", "Oracle", "## Examples (validation",
                        "## Abstention by relation (test)", "| first-token entropy |"):
            assert section in text, (setting, section)
        # Ground truth of what the model was taught is a column of every outcome.
        outcomes = (workdir / setting / "evaluate" / "f1_0.5" / "original" / "test"
                    / "outcomes.jsonl")
        rows = [json.loads(line) for line in open(outcomes)]
        assert {r["taught"] for r in rows} == {True, False}
    # One load of the base model for the teach step and both settings.
    assert "Model loads: 1." in text
    # A rerun finds the teach step done and loads the taught model as the base.
    again = ex.run(RunConfig.from_configdict(config))
    assert again["Short-QA"].table == results["Short-QA"].table
