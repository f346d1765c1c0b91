"""The sample stage's low-temperature-only mode (num_samples=0), used for the questions a
semantic entropy probe labels: one answer row per question, and the same low-temperature
answer as the full 1 + M run draws (the same per-question keys)."""
from __future__ import annotations

from se_jax.config.schema import RunConfig
from se_jax.io import stage_io
from se_jax.pipeline.stages import sample
from test_sample_stage import _config, _write_questions, tiny_dir  # noqa: F401 (fixture)


def test_low_temperature_only_matches_the_full_run(tiny_dir, tmp_path):  # noqa: F811
    questions = _write_questions(tmp_path / "q.jsonl", 4)
    config = RunConfig.from_configdict(_config(tiny_dir, questions, tmp_path / "full"))
    full = stage_io.read_jsonl(sample.run_sample(config, questions, tmp_path / "full"))
    low = stage_io.read_jsonl(sample.run_sample(config, questions, tmp_path / "low",
                                                num_samples=0))
    assert [r["id"] for r in low] == [r["id"] for r in full]
    assert all(r["samples"] == [] for r in low) and all(len(r["samples"]) == 3 for r in full)
    # The same keys draw the same answer; the other batch shape moves the logits by float
    # noise only, which can flip a near-tie draw (docs/contracts.md, "Reproducibility"):
    # all but one answer must agree (all do on the machines measured).
    same = [(a["most_likely"]["token_ids"] == b["most_likely"]["token_ids"])
            for a, b in zip(low, full)]
    assert sum(same) >= len(same) - 1
    for a, b, ok in zip(low, full, same):
        if ok:
            assert abs(a["most_likely"]["mean_logprob"] - b["most_likely"]["mean_logprob"]) < 1e-4


def test_low_temperature_only_batches_more_prompts(tiny_dir, tmp_path, monkeypatch):  # noqa: F811
    """One row per prompt instead of 1 + M: 1 + M times the prompts per batch (and per
    shard), so a batch keeps its number of decode rows."""
    questions = _write_questions(tmp_path / "q.jsonl", 4)
    config = RunConfig.from_configdict(_config(tiny_dir, questions, tmp_path / "out"))
    sc = config.sampling   # batch_size 2, M = 3
    assert sample.prompts_per_batch(config, None) == sc.batch_size
    assert sample.prompts_per_batch(config, 0) == sc.batch_size * (1 + sc.num_samples)
    batches = []
    real = sample.generation_records

    def counted(model, tokenizer, qs, *args, **kwargs):
        batches.append(len(qs))
        return real(model, tokenizer, qs, *args, **kwargs)

    monkeypatch.setattr(sample, "generation_records", counted)
    sample.run_sample(config, questions, tmp_path / "low", num_samples=0)
    assert batches == [4]                 # one batch of 4 (up to 8) prompts
    sample.run_sample(config, questions, tmp_path / "full")
    assert batches[1:] == [2, 2]          # 1 + M rows: batch_size prompts
