"""Real weights: the embedded SmolLM2 GGUF loaded by our loader and by transformers
(gguf_file=) from the same file gives the same logits and the same greedy continuations."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from se_jax.models.llama import KVCache
from se_jax.models.loading import load_llama, load_tokenizer

QUESTIONS = ("What is the capital of France?", "Who wrote the novel Pride and Prejudice?",
             "How many legs does a spider have?")
STEPS = 20


@nnx.jit
def run(model, tokens, positions, cache):
    return model(tokens, positions, cache)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Torch's spin-waiting OpenMP threads crawl on a loaded 2-core machine; 1 thread is
    as fast when idle and many times faster when not. Restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer(embedded_gguf):
    return load_tokenizer(embedded_gguf)


@pytest.fixture(scope="module")
def prompts(tokenizer) -> list[list[int]]:
    tok = tokenizer
    return [list(tok.apply_chat_template([{"role": "user", "content": q}],
                                         add_generation_prompt=True, tokenize=True,
                                         return_dict=True)["input_ids"]) for q in QUESTIONS]


@pytest.fixture(scope="module")
def torch_model(embedded_gguf):
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(
        os.path.dirname(embedded_gguf), gguf_file=os.path.basename(embedded_gguf),
        dtype=torch.float32, attn_implementation="eager").eval()


@pytest.fixture(scope="module")
def ours(embedded_gguf, prompts):
    """Our model's prefill logits (left-padded batch) and 20 greedy tokens per prompt."""
    model = load_llama(embedded_gguf)
    n = max(map(len, prompts))
    tokens = np.zeros((len(prompts), n), np.int32)
    positions = np.full((len(prompts), n), -1, np.int32)
    for i, p in enumerate(prompts):
        tokens[i, n - len(p):], positions[i, n - len(p):] = p, np.arange(len(p))
    cache = KVCache.init(model.config, len(prompts), n + STEPS)
    logits, cache = run(model, jnp.asarray(tokens), jnp.asarray(positions), cache)
    prefill = [np.asarray(logits[i, n - len(p):]) for i, p in enumerate(prompts)]
    last = jnp.asarray(positions[:, -1:])
    generated = [jnp.argmax(logits[:, -1:], axis=-1).astype(jnp.int32)]
    for _ in range(STEPS - 1):
        last = last + 1
        logits, cache = run(model, generated[-1], last, cache)
        generated.append(jnp.argmax(logits, axis=-1).astype(jnp.int32))
    return prefill, np.asarray(jnp.concatenate(generated, axis=1))


def test_prompt_logits_match_transformers(prompts, torch_model, ours):
    prefill, _ = ours
    for p, mine in zip(prompts, prefill):
        with torch.no_grad():
            ref = torch_model(torch.tensor([p])).logits[0].numpy()
        assert np.abs(ref).max() > 10  # real logits, not an empty comparison
        np.testing.assert_allclose(mine, ref, rtol=0, atol=1e-3)


def torch_greedy(model, prompt: list[int], steps: int) -> np.ndarray:
    """`steps` argmax tokens through transformers' own KV cache, continuing past EOS."""
    out = model(torch.tensor([prompt]), use_cache=True)
    tokens = [out.logits[:, -1].argmax(-1, keepdim=True)]
    for _ in range(steps - 1):
        out = model(tokens[-1], past_key_values=out.past_key_values, use_cache=True)
        tokens.append(out.logits[:, -1].argmax(-1, keepdim=True))
    return torch.cat(tokens, dim=1)[0].numpy()


def test_greedy_tokens_match_transformers(prompts, torch_model, ours):
    _, generated = ours
    for p, mine in zip(prompts, generated):
        with torch.no_grad():
            np.testing.assert_array_equal(mine, torch_greedy(torch_model, p, STEPS))


def test_answers_paris(tokenizer, ours):
    _, generated = ours
    assert "Paris" in tokenizer.decode(generated[0])


def test_tokenizer_converted_once_per_machine(tmp_path, monkeypatch, embedded_gguf):
    """The GGUF tokenizer is converted once, kept under $SE_JAX_CACHE, and later loads read
    the converted copy, which encodes and templates exactly as transformers' own conversion
    (`gguf_file=`) and saves the same files."""
    from transformers import AutoTokenizer
    from se_jax.models import loading
    direct = AutoTokenizer.from_pretrained(os.path.dirname(embedded_gguf),
                                           gguf_file=os.path.basename(embedded_gguf))
    monkeypatch.setenv("SE_JAX_CACHE", str(tmp_path))
    first = loading.gguf_tokenizer_dir(embedded_gguf)
    assert first.startswith(str(tmp_path / "tokenizers")) and os.path.isdir(first)
    assert [p.name for p in (tmp_path / "tokenizers").iterdir()] == [os.path.basename(first)]
    direct.save_pretrained(tmp_path / "direct")
    for name in ("tokenizer.json", "chat_template.jinja"):
        assert (tmp_path / "direct" / name).read_bytes() == open(os.path.join(first, name), "rb").read()
    ours, theirs = (json.loads(open(os.path.join(d, "tokenizer_config.json")).read())
                    for d in (first, tmp_path / "direct"))
    loading_only = ("is_local", "local_files_only")   # from_pretrained's own bookkeeping
    assert {k: v for k, v in ours.items() if k not in loading_only} == \
        {k: v for k, v in theirs.items() if k not in loading_only}

    def refuse(*args, **kwargs):
        raise AssertionError("converted the GGUF again")
    monkeypatch.setattr(loading, "gguf_tokenizer", refuse)
    assert loading.gguf_tokenizer_dir(embedded_gguf) == first
    cached = load_tokenizer(embedded_gguf)
    messages = [{"role": "user", "content": QUESTIONS[1]}]
    for text in QUESTIONS:
        assert cached(text)["input_ids"] == direct(text)["input_ids"]
    assert cached.apply_chat_template(messages, tokenize=False) == \
        direct.apply_chat_template(messages, tokenize=False)
    assert cached.eos_token == direct.eos_token == "<|im_end|>"


def test_embedded_tokenizer_without_torch(tmp_path, embedded_gguf):
    """torch is a test-only dependency: converting and loading the embedded model's
    tokenizer must not import it (transformers' own GGUF reader does)."""
    code = ("import sys; sys.modules['torch'] = None\n"   # `import torch` now raises
            "from se_jax.models.loading import load_tokenizer\n"
            f"tok = load_tokenizer({embedded_gguf!r})\n"
            "print(tok.eos_token, tok('Paris')['input_ids'])")
    env = dict(os.environ, SE_JAX_CACHE=str(tmp_path))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[0] == "<|im_end|>"
