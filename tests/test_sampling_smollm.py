"""The sampler on the embedded SmolLM2-135M-Instruct: it knows the capital of France, and
its samples agree more on that than on a question it cannot know."""
from __future__ import annotations

import pytest

from se_jax.generation import sampling
from se_jax.data import text
from se_jax.data import prompts as prompt_lib
from se_jax.models.loading import load_llama, load_tokenizer

KNOWN = "What is the capital of France?"
# A made-up person: nothing to recall, so the samples scatter.
UNKNOWABLE = "In which year was the Estonian poet Kaarel Vunderhaus born?"


@pytest.fixture(scope="session")
def smollm_answers(embedded_gguf):
    model = load_llama(embedded_gguf)
    tokenizer = load_tokenizer(embedded_gguf)
    prompts = [prompt_lib.format_prompt(tokenizer, q) for q in (KNOWN, UNKNOWABLE)]
    return sampling.sample_answers(model, tokenizer, prompts, ["france", "vunderhaus"],
                                   num_samples=10, temperature=1.0, low_temperature=0.1,
                                   max_new_tokens=12, batch_size=2, seed=0)


def test_most_likely_answer_knows_paris(smollm_answers):
    most_likely, _ = smollm_answers
    assert "paris" in most_likely[0].text.lower(), most_likely[0].text


def test_samples_agree_more_on_the_known_question(smollm_answers):
    _, samples = smollm_answers
    distinct = [len({text.normalize_answer(a.text) for a in rows}) for rows in samples]
    assert all(len(rows) == 10 for rows in samples)
    assert distinct[0] < distinct[1], [[a.text for a in rows] for rows in samples]
    # Most samples for France name Paris.
    assert sum(text.alias_match(a.text, ["Paris"]) for a in samples[0]) >= 6
