"""Issue 37 item 3 on a tiny judge: a judge that is not the generator runs in a stage of its
own (se_jax/pipeline/judge_stage.py): the generator is not resident during it, the judge
lives on a mesh over every device in its compute dtype, and its arrays are freed after it."""
from __future__ import annotations

import gc

import jax
import numpy as np
import pytest
from flax import nnx

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
