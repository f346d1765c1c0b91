"""Prompt formats: chat template (SmolLM2's ChatML) and plain, styles, few-shot, encoding."""
from __future__ import annotations

import ml_collections
import pytest
from transformers import AutoTokenizer

from se_jax.data import prompts
from tiny_models import smollm2_tokenizer_dir


@pytest.fixture(scope="module")
def tokenizer():
    return AutoTokenizer.from_pretrained(smollm2_tokenizer_dir())


def test_chat_prompt_uses_the_template_with_generation_prompt(tokenizer):
    text = prompts.format_prompt(tokenizer, "  What is the capital of France? ")
    assert text.endswith("<|im_start|>user\nAnswer the following question as briefly as "
                         "possible.\nQuestion: What is the capital of France?<|im_end|>\n"
                         "<|im_start|>assistant\n")
    assert text.startswith("<|im_start|>system\n")   # the template's default system turn


def test_sentence_style_and_plain_format(tokenizer):
    text = prompts.format_prompt(tokenizer, "Who wrote Hamlet?", style="sentence", chat=False)
    assert text == ("Answer the following question in a single brief but complete sentence.\n"
                    "Question: Who wrote Hamlet?\nAnswer:")


def test_few_shot_examples(tokenizer):
    shots = (("Who wrote Hamlet?", "Shakespeare"), ("2+2?", "4"))
    plain = prompts.format_prompt(tokenizer, "Capital of Peru?", chat=False, few_shot=shots)
    assert plain == ("Answer the following question as briefly as possible.\n"
                     "Question: Who wrote Hamlet?\nAnswer: Shakespeare\n\n"
                     "Question: 2+2?\nAnswer: 4\n\nQuestion: Capital of Peru?\nAnswer:")
    chat = prompts.format_prompt(tokenizer, "Capital of Peru?", few_shot=shots)
    turns = chat.split("<|im_start|>")[2:]  # after the system turn
    assert [t.split("\n", 1)[0] for t in turns] == ["user", "assistant", "user", "assistant",
                                                     "user", "assistant"]
    assert "as briefly as possible.\nQuestion: Who wrote Hamlet?" in turns[0]
    assert turns[1].startswith("assistant\nShakespeare<|im_end|>")
    assert turns[4].startswith("user\nQuestion: Capital of Peru?<|im_end|>")


def test_errors_name_the_problem(tokenizer):
    with pytest.raises(ValueError, match="unknown prompt style 'long'"):
        prompts.format_prompt(tokenizer, "q", style="long")

    class NoTemplate:
        chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        prompts.format_prompt(NoTemplate(), "q", chat=True)
    assert prompts.format_prompt(NoTemplate(), "q").endswith("Question: q\nAnswer:")


def test_encode_parses_special_tokens_without_adding_any(tokenizer):
    text = prompts.format_prompt(tokenizer, "What is the capital of France?")
    ids = prompts.encode_prompt(tokenizer, text)
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert ids.count(tokenizer.convert_tokens_to_ids("<|im_start|>")) == 3
    assert tokenizer.decode(ids) == text


class _BosTokenizer:
    """A Llama-like tokenizer: add_special_tokens=True prepends BOS (id 1)."""

    def __call__(self, text, add_special_tokens=True):
        ids = [1] if text.startswith("<s>") else []
        ids += [ord(c) for c in text.removeprefix("<s>")]
        return {"input_ids": ([1] if add_special_tokens else []) + ids}


def test_encode_adds_the_tokenizers_bos_once():
    tok = _BosTokenizer()
    assert prompts.encode_prompt(tok, "ab") == [1, 97, 98]
    assert prompts.encode_prompt(tok, "<s>ab") == [1, 97, 98]   # template wrote the BOS


def test_prompt_kwargs_from_config():
    cfg = ml_collections.ConfigDict(dict(style="sentence", chat="plain",
                                         few_shot=(("q", "a"),)))
    assert prompts.prompt_kwargs(cfg) == dict(style="sentence", chat=False,
                                              few_shot=(("q", "a"),))
    cfg.chat = "sometimes"
    with pytest.raises(ValueError, match="config.prompt.chat='sometimes'"):
        prompts.prompt_kwargs(cfg)
