"""Correctness judges: alias, SQuAD F1 >= 0.5, and the yes/no LLM judge's logic."""
from __future__ import annotations

import numpy as np
import pytest

from se_jax import judges


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

    def scorer(prompts, candidates):
        calls.append(len(prompts))
        assert candidates == ["yes", "Yes", "no", "No"]
        # "yes" wins exactly where the proposed answer line says Paris.
        out = np.full((len(prompts), 4), -5.0)
        for i, p in enumerate(prompts):
            out[i, 0 if "proposed answer is: Paris" in p else 2] = -0.1
        return out

    j = judges.LlmJudge(scorer, model_name="tiny", batch_size=2)
    got = j.batch(["Paris", "Lyon", "Paris", "Nice", "Paris"], [["Paris"]] * 5, ["capital?"] * 5)
    assert got == [True, False, True, False, True]
    assert calls == [2, 2, 1]
    assert j.name == "llm(tiny)"
    prompt = judges.llm_judge_prompt("Lyon", ["Paris", "City of Light"], "capital of France?")
    assert "capital of France?" in prompt and "Paris or City of Light" in prompt
    assert "Lyon" in prompt and "yes or no" in prompt


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    from tiny_models import make_tiny_llama_dir
    from se_jax.models.loading import load_llama, load_tokenizer
    path = make_tiny_llama_dir(tmp_path_factory.mktemp("tiny_judge"), variant="llama")
    return load_llama(path), load_tokenizer(path)


def test_decoder_scorer_matches_unpadded_forward(tiny_llama):
    """Batched, left-padded scoring == one unpadded forward per prompt at its last token."""
    import jax.numpy as jnp
    from se_jax.data import prompts as prompt_lib
    model, tokenizer = tiny_llama
    scorer = judges.decoder_next_token_scorer(model, tokenizer, batch_size=4)
    texts = [judges.llm_judge_prompt("Paris", ["Paris"], "capital of France?"),
             judges.llm_judge_prompt("a much longer proposed answer " * 3, ["x"], "q?"),
             judges.llm_judge_prompt("Lyon", ["Paris"], "capital?")]
    got = scorer(texts, ["yes", "no"])
    assert got.shape == (3, 2)
    yes_no = [tokenizer("yes", add_special_tokens=False)["input_ids"][0],
              tokenizer("no", add_special_tokens=False)["input_ids"][0]]
    for i, t in enumerate(texts):
        chat = tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False,
                                             add_generation_prompt=True)
        ids = jnp.asarray([prompt_lib.encode_prompt(tokenizer, chat)])
        logits, _ = model(ids, jnp.arange(ids.shape[1])[None])
        ref = np.asarray(logits[0, -1]) - np.logaddexp.reduce(np.asarray(logits[0, -1]))
        np.testing.assert_allclose(got[i], ref[yes_no], atol=1e-4)
    # The judge built from the config uses this scorer and names the model.
    import ml_collections
    cfg = ml_collections.ConfigDict(dict(judge="llm", f1_threshold=0.5, judge_batch_size=2))
    j = judges.make_judge(cfg, model, tokenizer, model_name="tiny")
    verdicts = j.batch(["Paris", "Lyon", "x"], [["Paris"]] * 3, ["q?"] * 3)
    assert len(verdicts) == 3 and j.name == "llm(tiny)"
