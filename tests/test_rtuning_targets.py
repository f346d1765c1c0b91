"""R-Tuning as the paper ran it (Section 6): the correct questions (L) train on the model's
own standard response (the T=0.1 answer), the incorrect ones (H) on the abstention phrase;
`labels.answer_source="gold"` gives Zhang et al.'s original (the gold answer). Checked on a
tiny random Llama's real generations through the sample and label stages."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from configs import base
from se_jax.data.text import normalize_answer
from tiny_models import make_tiny_llama_dir
import standalone

GOLD = "the gold alias"


@pytest.fixture(scope="module")
def generations(tmp_path_factory) -> Path:
    """The tiny model's generations of 8 questions, with golds rewritten so that the even
    questions are correct (the first alias differs from the model's answer, the second is
    the model's answer and every sample) and the odd ones incorrect."""
    root = tmp_path_factory.mktemp("rtuning_targets")
    model_dir = make_tiny_llama_dir(root / "model", "llama")
    questions = root / "q.jsonl"
    questions.write_text("".join(json.dumps({"id": f"q{i}", "question": f"What is {i}?",
                                             "answers": ["x"]}) + "\n" for i in range(8)))
    config = base.get_config()
    config.model.path, config.model.max_seq_len = model_dir, 160
    config.mesh.num_devices = 1
    s = config.sampling
    s.num_samples, s.max_new_tokens, s.batch_size, s.buckets = 3, 6, 4, (64, 96)
    s.input, s.out_dir = str(questions), str(root / "sample")
    path = standalone.sample(config)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    for i, r in enumerate(records):
        texts = [r["most_likely"]["text"]] + [a["text"] for a in r["samples"]]
        r["answers"] = ([GOLD] + texts if i % 2 == 0 else ["zq nothing the model says"])
    out = root / "crafted.jsonl"
    out.write_text("".join(json.dumps(r) + "\n" for r in records))
    return out


def _label(generations: Path, out: Path, method: str, **labels):
    config = base.get_config()
    config.labels.method = method
    config.labels.generations, config.labels.uncertainty = str(generations), ""
    config.labels.out_dir = str(out)
    for k, v in labels.items():
        config.labels[k] = v
    path = standalone.label(config)
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.parametrize("method", ["rtuning", "idk"])
def test_correct_questions_train_on_the_standard_response(generations, tmp_path, method):
    records = {r["id"]: r for r in map(json.loads, generations.read_text().splitlines())}
    assert base.get_config().labels.answer_source == "model"     # the paper's default
    sft = _label(generations, tmp_path / "model", method)
    # Questions with an empty standard response are skipped by the stage (empty target).
    usable = [k for k, r in records.items() if normalize_answer(r["most_likely"]["text"])]
    assert len(usable) >= 4, "the tiny model's answers are too often empty for this test"
    by_id = {e["id"]: e for e in sft}
    correct = [k for k in usable if int(k[1:]) % 2 == 0]
    incorrect = [k for k in records if int(k[1:]) % 2 == 1]
    assert correct and incorrect
    for k in correct:   # target for target: the standard response, not the gold alias
        assert by_id[k]["label"] == "answer"
        assert by_id[k]["target"] == records[k]["most_likely"]["text"] != GOLD
    for k in incorrect:
        assert by_id[k]["label"] == "abstain" and by_id[k]["target"] == "I don't know the answer."
    # Zhang et al.'s original R-Tuning: the gold answer on the same questions.
    gold = {e["id"]: e for e in _label(generations, tmp_path / "gold", method,
                                       answer_source="gold")}
    for k in correct:
        assert gold[k]["label"] == "answer" and gold[k]["target"] == GOLD
    assert {k for k, e in gold.items() if e["label"] == "abstain"} == set(incorrect)
