"""Correctness judges: alias, SQuAD F1 >= 0.5, and the yes/no LLM judge's logic."""
from __future__ import annotations

import numpy as np
import pytest

from se_jax.abstention import judges
import typed_configs


def test_alias_judge():
    j = judges.AliasJudge()
    assert j("The Eiffel Tower, Paris", ["paris"], "where?")
    assert not j("Parisian", ["Paris"], "where?")          # whole words only
    assert j.name == "alias"
    assert j.batch(["Paris", "Rome"], [["Paris"], ["Paris"]], ["q", "q"]) == [True, False]


def test_f1_judge_threshold():
    j = judges.F1Judge(0.5)
    # "barack obama" vs "president barack obama": P=1, R=2/3 -> F1=0.8
    assert j("Barack Obama", ["President Barack Obama"], "")
    # one of four tokens: P=1/4... F1 = 2*(1/4*1)/(1/4+1) = 0.4 < 0.5
    assert not j("the Obama family summer house", ["Obama"], "")
    assert judges.F1Judge(0.3)("the Obama family summer house", ["Obama"], "")
    assert j.name == "f1>=0.5"
    with pytest.raises(ValueError, match="lengths differ"):
        j.batch(["a"], [["a"], ["b"]], ["q"])


def test_string_judge_names():
    assert judges.string_judge("alias").name == "alias"
    assert judges.string_judge("f1", 0.7).name == "f1>=0.7"
    with pytest.raises(ValueError, match="unknown judge 'exact'"):
        judges.string_judge("exact")


def test_llm_judge_compares_yes_and_no_logprobs_in_batches():
    calls = []

    def scores(items):
        calls.append(len(items))
        # "yes" wins exactly where the proposed answer is Paris.
        return np.array([[-0.1, -5.0] if it["prediction"] == "Paris" else [-5.0, -0.1]
                         for it in items])

    j = judges.LlmJudge(scores, model_name="tiny", batch_size=2)
    got = j.batch(["Paris", "Lyon", "Paris", "Nice", "Paris"], [["Paris"]] * 5, ["capital?"] * 5)
    assert got == [True, False, True, False, True]
    assert calls == [2, 2, 1]
    assert j.name == "llm(tiny)"
    fields = judges.llm_judge_fields("Lyon", ["Paris", "City of Light"], "capital of France?")
    assert fields == dict(question="capital of France?", gold="Paris or City of Light",
                          prediction="Lyon")


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    from tiny_models import make_tiny_llama_dir
    from se_jax.models.loading import load_llama, load_tokenizer
    path = make_tiny_llama_dir(tmp_path_factory.mktemp("tiny_judge"), variant="llama")
    return load_llama(path), load_tokenizer(path)


@pytest.mark.parametrize("prompt,shots", [("correctness_reference", -1),
                                          ("correctness_fewshot", 2)])
def test_llm_judge_from_config_matches_a_plain_forward(tiny_llama, prompt, shots):
    """make_judge's verdicts == log p(yes) > log p(no) from one unpadded forward of each
    whole chat prompt (the reference's wording for correctness_reference)."""
    import jax.numpy as jnp
    from se_jax.generation import scoring
    from se_jax.data import prompts as prompt_lib
    model, tokenizer = tiny_llama
    cfg = typed_configs.evaluation(judge="llm", f1_threshold=0.5, judge_batch_size=2,
                                   judge_prompt=prompt, judge_shots=shots)
    j = judges.make_judge(cfg, model, tokenizer, model_name="tiny")
    preds, golds = ["Paris", "Lyon", "a much longer proposed answer " * 3], [["Paris"]] * 3
    qs = ["capital of France?", "capital?", "q?"]
    verdicts = j.batch(preds, golds, qs)
    assert j.name == "llm(tiny)" and len(verdicts) == 3
    jp = prompt_lib.load_judge_prompt(prompt, shots)
    ids, owner = scoring.label_token_ids(tokenizer, jp, chat=True)
    for p, g, q, v in zip(preds, golds, qs, verdicts):
        head, tails = prompt_lib.render_judge_prompt(
            tokenizer, jp, [judges.llm_judge_fields(p, g, q)])
        text = head + tails[0]
        if prompt == "correctness_reference":
            assert f"The proposed answer is: {p}" in text and "yes or no" in text
        full = prompt_lib.encode_prompt(tokenizer, text)
        logits, _ = model(jnp.asarray([full]), jnp.arange(len(full))[None])
        lp = np.asarray(logits[0, -1], np.float64)[ids]
        yes = np.logaddexp.reduce(lp[np.asarray(owner) == 0])
        no = np.logaddexp.reduce(lp[np.asarray(owner) == 1])
        assert v == bool(yes > no)
    with pytest.raises(ValueError, match="'entailment' prompt"):
        judges.make_judge(typed_configs.evaluation(
            judge="llm", f1_threshold=0.5, judge_batch_size=2,
            judge_prompt="entailment_fewshot", judge_shots=1), model, tokenizer)


class _CountingJudge:
    """A string judge that records every batch it is asked (to count model calls)."""
    name = "counting"

    def __init__(self):
        self.batches = []

    def batch(self, predictions, goldss, questions):
        self.batches.append(list(predictions))
        return judges.AliasJudge().batch(predictions, goldss, questions)


def test_recorded_judge_asks_its_model_once_per_item_and_saves_the_verdicts(tmp_path):
    inner = _CountingJudge()
    rec = judges.RecordedJudge("llm(judge)", inner=inner)
    preds, golds, qs = ["Paris", "Lyon", "Paris"], [["Paris"]] * 3, ["capital?"] * 3
    assert rec.batch(preds, golds, qs) == [True, False, True]
    assert inner.batches == [["Paris", "Lyon"]]            # the repeated item judged once
    assert rec.batch(["Lyon", "Rome"], [["Paris"], ["Rome"]], ["capital?"] * 2) == [False, True]
    assert inner.batches[1:] == [["Rome"]]                 # only the new item
    # The same answer to another question (or against other golds) is another item.
    assert rec("Paris", ["Paris"], "another?") and inner.batches[2:] == [["Paris"]]
    rec.save(tmp_path / "verdicts.jsonl")
    back = judges.RecordedJudge.load(tmp_path / "verdicts.jsonl", "llm(judge)")
    assert back.verdicts == rec.verdicts and len(back.verdicts) == 4
    assert back.batch(preds, golds, qs) == [True, False, True]   # no model needed
    with pytest.raises(LookupError, match=r"llm\(judge\): 1 answers were not judged.*'Berlin'"):
        back.batch(["Paris", "Berlin"], [["Paris"]] * 2, ["capital?"] * 2)
    assert judges.RecordedJudge.load(tmp_path / "none.jsonl", "x").verdicts == {}


def test_recorded_judge_names_a_bad_verdict_line(tmp_path):
    path = tmp_path / "verdicts.jsonl"
    path.write_text('{"key": "a", "correct": true}\n{"key": "b"}\n')
    with pytest.raises(ValueError, match=r"verdicts.jsonl:2: not a verdict line"):
        judges.RecordedJudge.load(path, "llm(judge)")
