"""The entropy stage with entropy.backend=llm_judge (SE (Llama)) on a tiny random decoder,
sharded over 8 simulated devices: rounds vs the full matrix, the recorded prompt."""
from __future__ import annotations

import json

import pytest

import standalone
from test_entropy_stage import GOOD, _config, _write


@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory):
    from tiny_models import make_tiny_llama_dir
    return make_tiny_llama_dir(tmp_path_factory.mktemp("tiny_se_llama"), variant="llama")


def _run(tmp_path, judge_dir, pairs, **kw):
    tmp_path.mkdir(parents=True)
    gen = _write(tmp_path / "g.jsonl", GOOD)
    config = _config(tmp_path, gen, backend="llm_judge", judge_model=judge_dir,
                     judge_prompt="entailment_fewshot", judge_shots=1, pairs=pairs, **kw)
    config.mesh.data, config.mesh.tensor = 4, 2
    path = standalone.entropy(config)
    out = [json.loads(line) for line in path.read_text().splitlines()]
    return out, json.loads((path.parent / "config.json").read_text())


@pytest.mark.parametrize("rule", ["reference", "unassigned"])
def test_llm_judge_stage_rounds_equal_full_matrix(tmp_path, judge_dir, rule):
    rounds, config = _run(tmp_path / "rounds", judge_dir, "rounds", cluster_rule=rule)
    full, _ = _run(tmp_path / "full", judge_dir, "full", cluster_rule=rule)
    assert [r["semantic_ids"] for r in rounds] == [r["semantic_ids"] for r in full]
    for r, f in zip(rounds, full):
        assert r["backend"] == "llm_judge" and r["checkpoint"] == judge_dir
        assert r["judge_prompt"] == "entailment_fewshot" and r["judge_shots"] == 1
        assert r["discrete_semantic_entropy"] == pytest.approx(f["discrete_semantic_entropy"])
        # read pairs agree with the full matrix; unread ones are explicitly null
        for row_r, row_f in zip(r["equivalence"], f["equivalence"]):
            assert all(a is None or a == b for a, b in zip(row_r, row_f))
        assert all(v is not None for row in f["equivalence"] for v in row)
    assert any(v is None for r in rounds for row in r["equivalence"] for v in row)
    section = config.get("config", config).get("entropy", config.get("entropy"))
    assert section["judge_prompt"] == "entailment_fewshot" and section["judge_shots"] == 1
