"""Issue 37 item 3 on a tiny judge: a judge that is not the generator runs in a stage of its
own (se_jax/pipeline/judge_stage.py): the generator is not resident during it, the judge
lives on a mesh over every device in its compute dtype, and its arrays are freed after it."""
from __future__ import annotations

import gc
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from se_jax.io import stage_io
from tests.typed_configs import BASE


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    from tiny_models import make_tiny_llama_dir
    root = tmp_path_factory.mktemp("judge_stage")
    return (make_tiny_llama_dir(root / "generator", seed=0),
            make_tiny_llama_dir(root / "judge", seed=1))


def _arrays(model) -> list[jax.Array]:
    return [x for x in jax.tree.leaves(nnx.state(model)) if isinstance(x, jax.Array)]


def test_judge_phase_frees_the_generator_and_then_itself(dirs, tmp_path):
    from se_jax.io.telemetry import Telemetry
    from se_jax.pipeline import experiment, judge_stage
    from se_jax.pipeline.layout import Layout
    generator, judge_dir = dirs
    config = BASE.replace(workdir=str(tmp_path), model=dict(path=generator, dtype="bfloat16"),
                          mesh=dict(num_devices=1),
                          evaluation=dict(judge="llm", judge_model=judge_dir))
    base = experiment.SharedBase(config, Layout.from_config(config), Telemetry.install())
    job = experiment.Job(config, base.layout, {}, base.clock, base, {})
    resident = job.resident()
    job._trained["run"] = resident.run_model(config.training, seed=0)   # shares its arrays
    gen_arrays = _arrays(resident.model)
    before = {id(x) for x in jax.live_arrays()}
    with judge_stage.judge_phase(config, release=job.release_generator) as judge:
        assert all(x.is_deleted() for x in gen_arrays)   # the generator is not resident
        assert base._resident is None and not job._trained
        inside = [x for x in jax.live_arrays() if id(x) not in before]
        assert inside, "the judge's weights"
        assert {d for x in inside for d in x.sharding.device_set} == set(jax.devices())
        weights = [x for x in inside if jax.numpy.issubdtype(x.dtype, jax.numpy.floating)]
        assert {x.dtype for x in weights} == {np.dtype(jax.numpy.bfloat16)}   # compute dtype
        verdicts = judge.batch(["Paris", "Lyon"], [["Paris"], ["Paris"]],
                               ["What is the capital of France?"] * 2)
        assert len(verdicts) == 2 and all(isinstance(v, bool) for v in verdicts)
    judge_weights = [x for x in jax.tree.leaves(judge.scores.scorer.state)
                     if isinstance(x, jax.Array)]
    assert judge_weights and all(x.is_deleted() for x in judge_weights)   # freed on exit
    del judge, inside, weights, judge_weights   # the phase's caller drops the judge (its prompt's cache)
    gc.collect()
    assert not [x for x in jax.live_arrays() if id(x) not in before]   # nothing left
    again = job.resident()                               # the generator loads on next use
    assert again is not resident and not any(x.is_deleted() for x in _arrays(again.model))
    assert np.isfinite(np.asarray(again.model.embed_tokens.embedding.get_value(),
                                  np.float32)).all()


def test_judge_phase_needs_a_separate_llm_judge(tmp_path):
    from se_jax.pipeline import judge_stage
    released = []
    with pytest.raises(ValueError, match="evaluation.judge_model"):
        with judge_stage.judge_phase(BASE.replace(evaluation=dict(judge="f1")),
                                     release=lambda: released.append(1)):
            pass
    assert not released


@pytest.fixture(scope="module")
def judged(tmp_path_factory):
    """The tiny experiment with a separate LLM judge (a tiny judge whose verdicts vary):
    (config, result, root)."""
    from configs import tiny
    from se_jax.config.schema import RunConfig
    from se_jax.pipeline import experiment
    from test_experiment_e2e import write_tiny_data
    from tiny_models import write_tiny_judge_dir, write_tiny_llama_dir
    root = tmp_path_factory.mktemp("judged")
    config = tiny.get_config()
    config.model.path = write_tiny_llama_dir(root / "generator")
    config.data.source_dir = str(write_tiny_data(root / "data"))
    config.workdir = str(root / "work")
    config.mesh.num_devices = 1
    config.evaluation.judge = "llm"
    config.evaluation.judge_model = write_tiny_judge_dir(root / "judge", seed=3)
    config.experiment.methods = ("se_lexical", "rtuning")
    config = RunConfig.from_configdict(config)
    return config, experiment.run(config), root


def _phase_seconds(report: Path) -> dict[str, str]:
    rows = [line.split("|") for line in report.read_text().splitlines()
            if line.startswith("| ") and line.count("|") == 3]
    return {r[1].strip(): r[2].strip() for r in rows}


def test_a_separate_judge_judges_every_answer_in_its_stage(judged):
    """Every outcome's verdict is the judge model's own (the model asked directly here),
    the verdicts vary, the report reads the recorded verdicts, and the answers were
    written before any judging (answers.jsonl beside each outcomes.jsonl)."""
    from se_jax.abstention import judges as judges_lib
    from se_jax.models.loading import load_llama, load_tokenizer
    from se_jax.pipeline.layout import Layout
    config, result, root = judged
    ev = config.evaluation
    direct = judges_lib.make_judge(ev, load_llama(ev.judge_model), load_tokenizer(ev.judge_model),
                                   model_name=ev.judge_model)
    layout = Layout.from_config(config)
    outcome_files = sorted(layout.verdicts.parent.glob("**/outcomes.jsonl"))
    assert len(outcome_files) >= 10
    verdicts = []
    for path in outcome_files:
        assert (path.parent / "answers.jsonl").is_file()
        outs = [o for o in stage_io.read_jsonl(path) if not o["abstained"]]
        expected = direct.batch([o["prediction"] for o in outs], [o["answers"] for o in outs],
                                [o["question"] for o in outs])
        assert [o["correct"] for o in outs] == expected, path
        assert {o["judge"] for o in outs} <= {f"llm({ev.judge_model})"}
        verdicts += expected
    assert True in verdicts and False in verdicts
    assert result.judge == f"llm({ev.judge_model})"
    report = Path(result.paths["report"])
    assert "judge stage" in _phase_seconds(report)
    assert f"llm({ev.judge_model})" in report.read_text()


def test_a_rerun_of_a_judged_experiment_loads_nothing_and_lost_verdicts_are_judged_again(judged):
    """Everything judged: a rerun loads no model. With the verdict file lost (a crash
    between the last outcomes and the verdicts), the rerun holds one judge stage, for the
    report's judgements only, and gives the same results."""
    from se_jax.pipeline import experiment
    from se_jax.pipeline.layout import Layout
    config, result, root = judged
    results = Path(result.paths["results"]).read_text()
    again = experiment.run(config)
    assert "Model loads: 0." in Path(again.paths["report"]).read_text()
    verdicts = Layout.from_config(config).verdicts
    kept = verdicts.read_text()
    verdicts.unlink()
    third = experiment.run(config)
    text = Path(third.paths["report"]).read_text()
    assert "judge stage" in _phase_seconds(Path(third.paths["report"]))
    assert "Model loads: 1." in text          # the judge alone: no generator work was left
    assert Path(third.paths["results"]).read_text() == results
    assert set(verdicts.read_text().splitlines()) <= set(kept.splitlines())
