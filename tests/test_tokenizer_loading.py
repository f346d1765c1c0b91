"""`load_tokenizer` on directories: the generic fast tokenizer of the architectures se_jax
loads is read directly, and is what AutoTokenizer gives; anything else goes through
AutoTokenizer."""
from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from se_jax.models import loading
from tiny_models import smollm2_tokenizer_dir, _copy_tokenizer

TEXTS = ("What is the capital of France?", "  Who wrote Pride and Prejudice?\n")


def tokenizer_dir(root, model_type: str | None):
    root.mkdir()
    if model_type is not None:
        (root / "config.json").write_text(json.dumps({"model_type": model_type}))
    _copy_tokenizer(str(root))
    return str(root)


@pytest.fixture
def auto_calls(monkeypatch):
    """The paths AutoTokenizer.from_pretrained was asked to load (it still loads them)."""
    calls, original = [], AutoTokenizer.from_pretrained

    def recording(path, *args, **kwargs):
        calls.append(str(path))
        return original(path, *args, **kwargs)
    monkeypatch.setattr(AutoTokenizer, "from_pretrained", recording)
    return calls


@pytest.mark.parametrize("model_type", ["llama", None])
def test_generic_tokenizer_dir_loads_as_autotokenizer_does(tmp_path, model_type, auto_calls):
    path = tokenizer_dir(tmp_path / "tok", model_type)
    ours = loading.load_tokenizer(path)
    assert auto_calls == []          # read directly
    reference = AutoTokenizer.from_pretrained(path)
    assert type(ours) is type(reference)
    for text in TEXTS:
        assert ours(text)["input_ids"] == reference(text)["input_ids"]
    messages = [{"role": "user", "content": TEXTS[0]}]
    assert ours.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == \
        reference.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert (ours.eos_token, ours.pad_token) == (reference.eos_token, reference.pad_token)


def test_other_directories_go_through_autotokenizer(tmp_path, auto_calls):
    # Another architecture's config (AutoTokenizer gives qwen2 its own class), and a
    # tokenizer_config naming a specific class.
    other = tokenizer_dir(tmp_path / "qwen2", "qwen2")
    assert type(loading.load_tokenizer(other)).__name__ == "Qwen2Tokenizer"
    specific = tokenizer_dir(tmp_path / "gpt2", "llama")
    config_path = tmp_path / "gpt2" / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "tokenizer_class": "GPT2Tokenizer"}))
    loading.load_tokenizer(specific)
    assert auto_calls == [other, specific]


def test_converted_gguf_tokenizer_is_generic():
    assert loading._is_generic_tokenizer_dir(smollm2_tokenizer_dir())
