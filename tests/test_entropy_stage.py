"""The entropy stage end to end: contract fields, bad records, resume, fallback, and the
PyTorch cross-check (reference loop) on a tiny random DeBERTa."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from deberta_fixtures import tiny_nli_dirs  # noqa: F401  (fixture)
from configs.base import get_config
from se_jax.pipeline.stages import entropy as stage
import standalone

CONTRACT = {"id", "backend", "checkpoint", "semantic_ids", "equivalence", "num_clusters",
            "discrete_semantic_entropy", "semantic_entropy", "naive_entropy", "exact_entropy"}


def _answer(text: str, lp: float) -> dict:
    return {"text": text, "token_ids": [1, 2], "token_logprobs": [lp, lp],
            "sum_logprob": 2 * lp, "mean_logprob": lp}


def _record(i: int, texts: list[str]) -> dict:
    return {"id": f"q{i}", "question": f"What is the capital of country {i}?",
            "answers": ["Paris"], "prompt": "p", "most_likely": _answer(texts[0], -0.1),
            "samples": [_answer(t, -0.5 - 0.25 * k) for k, t in enumerate(texts)]}


GOOD = [_record(0, ["Paris", "paris", "Lyon", "Paris."]),
        _record(1, ["Rome", "Rome", "Rome"]),
        _record(2, ["Berlin", "Bonn", "Munich", "Hamburg", "Berlin"]),
        _record(3, ["Madrid"] * 4),
        _record(4, ["Oslo", "Bergen", "Oslo", "oslo"])]


def _write(path: Path, records: list, bad_lines: tuple[str, ...] = ()) -> Path:
    lines = [json.dumps(r) for r in records] + list(bad_lines)
    path.write_text("\n".join(lines) + "\n")
    return path


def _config(tmp_path: Path, gen: Path, **entropy):
    config = get_config()
    config.workdir = str(tmp_path)
    config.mesh.data = -1
    config.entropy.generations = str(gen)
    config.entropy.out_dir = str(tmp_path / "out")
    config.entropy.questions_per_shard = 2
    config.entropy.backend = "lexical"
    for k, v in entropy.items():
        setattr(config.entropy, k, v)
    return config


def _missing_lp() -> str:
    bad = _record(9, ["a", "b"])
    del bad["samples"][1]["mean_logprob"]
    return json.dumps(bad)


def test_lexical_stage_writes_the_contract(tmp_path):
    gen = _write(tmp_path / "generations.jsonl", GOOD, (_missing_lp(), "{not json"))
    path = standalone.entropy(_config(tmp_path, gen))
    out = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["id"] for r in out] == [f"q{i}" for i in range(5)]
    for r, g in zip(out, GOOD):
        assert CONTRACT | {"first_token_entropy"} <= set(r)   # the samples carry token_logprobs
        assert r["backend"] == "lexical" and r["checkpoint"] is None
        m = len(g["samples"])
        assert len(r["semantic_ids"]) == m and len(r["equivalence"]) == m
    # Q0: Paris/paris/Paris. one cluster, Lyon another -> p = (3/4, 1/4).
    q0 = out[0]
    assert q0["semantic_ids"] == [0, 0, 1, 0] and q0["num_clusters"] == 2
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert math.isclose(q0["discrete_semantic_entropy"], h, rel_tol=1e-5)
    assert math.isclose(q0["exact_entropy"], h, rel_tol=1e-5)   # normalised strings agree
    assert math.isclose(q0["naive_entropy"], 0.5 + 0.25 * 1.5, rel_tol=1e-5)
    assert out[3]["discrete_semantic_entropy"] == 0.0 and out[3]["num_clusters"] == 1
    skipped = [json.loads(line) for line in (tmp_path / "out" / "skipped.jsonl").read_text()
               .splitlines()]
    assert [s["line"] for s in skipped] == [6, 7]
    assert "id='q9'" in skipped[0]["reason"] and "samples[1].mean_logprob" in skipped[0]["reason"]
    assert ":6:" in skipped[0]["reason"] and "not valid JSON" in skipped[1]["reason"]
    assert json.loads((tmp_path / "out" / "config.json").read_text())["entropy"]["backend"] \
        == "lexical"


def test_first_token_entropy_reads_each_samples_first_token(tmp_path):
    firsts = [-0.1, -1.0, -2.0]
    rec = _record(0, ["Paris", "Lyon", "Nice"])
    for s, f in zip(rec["samples"], firsts):
        s["token_logprobs"] = [f, -3.0]          # the mean log-prob (naive entropy) differs
    without = _record(1, ["Rome", "Milan"])
    for s in without["samples"]:
        del s["token_logprobs"]
    empty = _record(2, ["Oslo", "Bergen"])
    empty["samples"][1]["token_logprobs"] = []
    gen = _write(tmp_path / "g.jsonl", [rec, without, empty])
    standalone.entropy(_config(tmp_path, gen))
    out = [json.loads(line) for line in (tmp_path / "out" / "uncertainty.jsonl").read_text()
           .splitlines()]
    assert [r["id"] for r in out] == ["q0", "q1"]
    assert math.isclose(out[0]["first_token_entropy"], -sum(firsts) / 3, rel_tol=1e-5)
    assert not math.isclose(out[0]["first_token_entropy"], out[0]["naive_entropy"])
    assert "first_token_entropy" not in out[1] and CONTRACT <= set(out[1])
    skipped = json.loads((tmp_path / "out" / "skipped.jsonl").read_text().splitlines()[0])
    assert "id='q2'" in skipped["reason"] and "samples[1].token_logprobs" in skipped["reason"]


def test_bad_record_is_an_error_when_asked(tmp_path):
    gen = _write(tmp_path / "g.jsonl", GOOD[:1], (_missing_lp(),))
    config = _config(tmp_path, gen)
    config.on_bad_input = "error"
    with pytest.raises(stage.GenerationsError, match=r"g.jsonl:2: id='q9'.*mean_logprob"):
        standalone.entropy(config)


def test_resume_after_a_crash_gives_the_same_file(tmp_path, monkeypatch):
    gen = _write(tmp_path / "g.jsonl", GOOD)
    reference = standalone.entropy(_config(tmp_path / "a", gen)).read_text()
    real, calls = stage.uncertainty_records, []

    def crash_on_second_shard(backend, items, **kw):
        calls.append([it.id for it in items])
        if len(calls) == 2:
            raise RuntimeError("killed")
        return real(backend, items, **kw)

    monkeypatch.setattr(stage, "uncertainty_records", crash_on_second_shard)
    config = _config(tmp_path / "b", gen)
    with pytest.raises(RuntimeError, match="killed"):
        standalone.entropy(config)
    monkeypatch.setattr(stage, "uncertainty_records", real)
    assert standalone.entropy(config).read_text() == reference
    assert calls == [["q0", "q1"], ["q2", "q3"]]       # the first shard was not redone


def test_deberta_without_checkpoint_stops_before_any_work(tmp_path):
    """No stand-in backend (issue 37): one line naming the missing field, nothing written."""
    from se_jax.config.validation import ConfigError
    gen = _write(tmp_path / "g.jsonl", GOOD[:2])
    cfg = _config(tmp_path, gen, backend="deberta", nli_path="")
    with pytest.raises(ConfigError, match="entropy.backend=deberta needs entropy.nli_path"):
        standalone.entropy(cfg)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_deberta_stage_on_a_tiny_checkpoint(tmp_path, tiny_nli_dirs):  # noqa: F811
    gen = _write(tmp_path / "g.jsonl", GOOD)
    nli = str(tiny_nli_dirs["v1"])
    path = standalone.entropy(_config(tmp_path, gen, backend="deberta", nli_path=nli,
                                     batch_size=8, buckets=(32, 64)))
    out = [json.loads(line) for line in path.read_text().splitlines()]
    assert all(r["backend"] == "deberta" and r["checkpoint"] == nli for r in out)
    for r in out:   # the matrix is symmetric and duplicates share rows
        eq = r["equivalence"]
        assert all(eq[i][j] == eq[j][i] for i in range(len(eq)) for j in range(len(eq)))


@pytest.fixture(scope="module")
def cc():
    """tools/crosscheck_entropy.py, the PyTorch reference loop beside our entropy stage."""
    from tools import crosscheck_entropy
    return crosscheck_entropy


@pytest.mark.parametrize("strict", [False, True])
def test_crosscheck_against_pytorch_reference_loop(cc, tmp_path_factory, strict):
    items = cc.builtin_generations(num_questions=4, num_samples=6, seed=1)
    nli_dir = cc.random_nli_dir(tmp_path_factory.mktemp("cc") / "nli", items)
    report = cc.crosscheck(items, str(nli_dir), strict=strict)
    assert report.ok, report.mismatches
    assert report.questions == 4 and report.reference_calls > report.our_pairs
    assert len(set(report.clusters)) > 1 or max(report.clusters) > 1, report.clusters
