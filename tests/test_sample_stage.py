"""The sample stage on a tiny random Llama: output format, bad input (skip / error), and
resuming after kill -9 of a real `launch/sample.py` process into a byte-identical file."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from configs import base
from se_jax.pipeline.stages import sample
from tiny_models import make_tiny_llama_dir
import standalone

REPO = Path(__file__).resolve().parents[1]
M = 3


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> str:
    return make_tiny_llama_dir(tmp_path_factory.mktemp("tiny_stage"), "llama")


def _config(model_dir: str, questions: Path, out: Path, **sampling):
    config = base.get_config()
    config.model.path = model_dir
    config.model.max_seq_len = 160
    config.mesh.data = -1
    s = config.sampling
    s.num_samples, s.max_new_tokens, s.batch_size, s.buckets = M, 6, 2, (64, 96)
    s.input, s.out_dir = str(questions), str(out)
    for k, v in sampling.items():
        s[k] = v
    return config


def _write_questions(path: Path, n: int, extra_lines: tuple[str, ...] = ()) -> Path:
    lines = [json.dumps({"id": f"q{i}", "question": f"What is {i} plus {i}?",
                         "answers": [str(2 * i)]}) for i in range(n)]
    path.write_text("\n".join(lines + list(extra_lines)) + "\n")
    return path


def test_generations_follow_the_contract(tiny_dir, tmp_path):
    questions = _write_questions(tmp_path / "q.jsonl", 3, extra_lines=(
        json.dumps({"id": 7, "question": "Single answer?", "answer": "yes"}),))
    path = standalone.sample(_config(tiny_dir, questions, tmp_path / "out"))
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["id"] for r in records] == ["q0", "q1", "q2", "7"]
    assert records[3]["answers"] == ["yes"] and records[0]["answers"] == ["0"]
    for r in records:
        assert set(r) == {"id", "question", "answers", "prompt", "most_likely", "samples"}
        assert "<|im_start|>assistant" in r["prompt"] and r["question"] in r["prompt"]
        assert len(r["samples"]) == M
        for a in [r["most_likely"]] + r["samples"]:
            assert set(a) == {"text", "token_ids", "token_logprobs", "sum_logprob",
                              "mean_logprob"}
            assert 1 <= len(a["token_ids"]) == len(a["token_logprobs"]) <= 6
            assert all(lp <= 0 for lp in a["token_logprobs"])
            assert a["sum_logprob"] == pytest.approx(sum(a["token_logprobs"]))
    assert (tmp_path / "out" / "config.json").exists()
    assert json.loads((tmp_path / "out" / "skipped.jsonl").read_text() or "null") is None
    assert not (tmp_path / "out" / "generations.parts").exists()
    # Rerun with a changed result-relevant setting into the same directory is refused...
    with pytest.raises(ValueError, match="sampling.num_samples"):
        standalone.sample(_config(tiny_dir, questions, tmp_path / "out", num_samples=M + 1))
    # ... a change of an unrelated section is not (and the finished output is reused).
    config = _config(tiny_dir, questions, tmp_path / "out")
    config.training.learning_rate = 1.0
    assert standalone.sample(config).read_bytes() == path.read_bytes()


BAD_LINES = (
    '{"id": "bad-json", "question": ',                        # malformed
    json.dumps({"id": "empty", "question": "   ", "answers": []}),
    json.dumps({"id": "long", "question": "why " * 200, "answers": []}),
    json.dumps({"id": "q0", "question": "duplicate id?", "answers": []}),
    json.dumps({"question": "no id", "answers": []}),
)


def test_bad_input_is_skipped_and_listed(tiny_dir, tmp_path):
    questions = _write_questions(tmp_path / "q.jsonl", 2, extra_lines=BAD_LINES)
    path = standalone.sample(_config(tiny_dir, questions, tmp_path / "out"))
    assert [json.loads(line)["id"] for line in path.read_text().splitlines()] == ["q0", "q1"]
    skipped = [json.loads(line) for line in (tmp_path / "out" / "skipped.jsonl").open()]
    assert [s["line"] for s in skipped] == [3, 4, 5, 6, 7]
    reasons = [s["reason"] for s in skipped]
    assert all(r.startswith(f"{questions}:{n}:") for r, n in zip(reasons, range(3, 8)))
    assert "not valid JSON" in reasons[0]
    assert "'question' missing or empty" in reasons[1]
    assert "prompt has" in reasons[2] and "context" in reasons[2]
    assert "more than once" in reasons[3]
    assert "'id' missing" in reasons[4]


def test_bad_input_error_stops_before_any_work(tiny_dir, tmp_path):
    questions = _write_questions(tmp_path / "q.jsonl", 2, extra_lines=BAD_LINES[:2])
    config = _config(tiny_dir, questions, tmp_path / "out")
    config.on_bad_input = "error"
    with pytest.raises(sample.QuestionsError) as e:
        standalone.sample(config)
    assert f"{questions}:3: not valid JSON" in str(e.value)
    assert f"{questions}:4: id='empty'" in str(e.value)
    assert not (tmp_path / "out" / "generations.parts").exists()
    assert not (tmp_path / "out" / "generations.jsonl").exists()


def test_kill_9_then_rerun_is_byte_identical(tiny_dir, tmp_path):
    n = 24
    questions = _write_questions(tmp_path / "q.jsonl", n)
    overrides = dict(batch_size=1, max_new_tokens=12)
    ref = standalone.sample(_config(tiny_dir, questions, tmp_path / "ref", **overrides))

    out = tmp_path / "killed"
    cmd = [sys.executable, str(REPO / "launch" / "sample.py"),
           f"--questions={questions}", f"--out={out}", f"--config.model.path={tiny_dir}",
           "--config.model.max_seq_len=160", "--config.mesh.data=-1",
           f"--config.sampling.num_samples={M}", "--config.sampling.max_new_tokens=12",
           "--config.sampling.batch_size=1", "--config.sampling.buckets=(64, 96)"]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    parts = out / "generations.parts"
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if parts.is_dir() and len(list(parts.glob("*.jsonl"))) >= 2:
            break
        time.sleep(0.02)
    assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(list(parts.glob("*.jsonl")))
    assert 2 <= done < n and not (out / "generations.jsonl").exists()

    rerun = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=240)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert (out / "generations.jsonl").read_bytes() == ref.read_bytes()
    assert f"resuming: {done} of {n} shards already done" in rerun.stderr
