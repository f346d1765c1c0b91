"""Prompt formats: chat template (SmolLM2's ChatML) and plain, styles, few-shot, encoding."""
from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from se_jax.config.schema import PromptConfig
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
    cfg = PromptConfig(style="sentence", chat="plain", few_shot=(("q", "a"),))
    assert cfg.format_kwargs() == dict(style="sentence", chat=False, few_shot=(("q", "a"),))
    with pytest.raises(ValueError, match="config.prompt.chat='sometimes'"):
        PromptConfig(style="sentence", chat="sometimes", few_shot=())


# ----------------------------------------------------------------------------- judge prompts

def test_every_judge_template_loads_and_its_examples_cover_the_labels():
    import importlib.util
    spec = importlib.util.spec_from_file_location("jp", prompts.JUDGE_PROMPTS_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for name in module.TEMPLATES:
        p = prompts.load_judge_prompt(name)
        assert p.kind in ("entailment", "correctness")
        if p.shots:
            assert {s["label"] for s in p.shots} == set(p.label_names)   # every label shown
    few = prompts.load_judge_prompt("entailment_fewshot", 5)
    assert len(few.shots) == 5 and few.label_names == ("contradiction", "neutral", "entailment")
    assert len({s["question"] for s in few.shots}) == 5                # question-dependent
    everything = prompts.load_judge_prompt("entailment_fewshot", -1).shots    # -1 = all
    assert everything[:5] == few.shots and len(everything) > 5


def test_judge_prompt_errors_name_file_and_field(tmp_path):
    with pytest.raises(ValueError, match="no template 'nope'"):
        prompts.load_judge_prompt("nope")
    with pytest.raises(ValueError, match=r"has 0 shots; 2 asked \(judge_shots\)"):
        prompts.load_judge_prompt("entailment_reference", 2)
    bad = tmp_path / "p.py"
    bad.write_text("TEMPLATES = {'x': dict(kind='entailment', instruction='', example='{a}',"
                   " query='{a}', cue='L:', labels={'yes': ('yes',)},"
                   " shots=(dict(a='1', label='maybe'),))}\n")
    with pytest.raises(ValueError, match=r"p.py: TEMPLATES\['x'\].shots\[0\].label='maybe'"):
        prompts.load_judge_prompt("x", path=bad)


@pytest.mark.parametrize("chat", [True, False])
def test_judge_prompt_splits_into_shared_prefix_and_item(tokenizer, chat):
    """prefix + suffix is the whole prompt, the prefix is the same for every item, and its
    tokens (but the last) are the whole prompt's first tokens (what the scorer shares)."""
    p = prompts.load_judge_prompt("entailment_fewshot", 5)
    items = [dict(question="Who wrote Hamlet?", a="Shakespeare", b="William Shakespeare"),
             dict(question="2+2?", a="4", b="five")]
    head, tails = prompts.render_judge_prompt(tokenizer, p, items, chat=chat)
    assert head == prompts.render_judge_prompt(tokenizer, p, [], chat=chat)[0]
    assert "Label: neutral" in head and "Who wrote Hamlet?" not in head
    assert "Answer 1: Shakespeare\nAnswer 2: William Shakespeare" in tails[0]
    assert tails[0].endswith("<|im_start|>assistant\n" if chat else "\nLabel:")
    shared = prompts.encode_prompt(tokenizer, head)[:-1]
    for t in tails:
        assert prompts.encode_prompt(tokenizer, head + t)[:len(shared)] == shared
    ref = prompts.render_judge_prompt(tokenizer, prompts.load_judge_prompt(
        "entailment_reference"), items, chat=chat)
    assert 'We are evaluating answers to the question "Who wrote Hamlet?"' in ref[1][0]
