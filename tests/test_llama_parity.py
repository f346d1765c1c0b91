"""Our decoder equals transformers' PyTorch models on tiny random checkpoints (float32).

Also: prefill + decode through the KV cache equals the full forward; left-padded rows equal
their unpadded forward; export back to HF layout round-trips through transformers.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

from se_jax.models.llama import KVCache
from se_jax.models.loading import load_llama, save_hf_checkpoint
from tiny_models import TOKENIZER_VOCAB, load_torch_model, make_tiny_llama_dir

TOL = 1e-4


@nnx.jit
def run(model, tokens, positions, cache=None):
    """The forward, compiled once per shape (eager dispatch compiles every op separately)."""
    return model(tokens, positions, cache)


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("tiny_parity")
    return {v: make_tiny_llama_dir(root / v, v, with_tokenizer=False)
            for v in ("llama", "qwen2", "llama3", "tied")}


def torch_logits(model_dir: str, tokens: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return load_torch_model(model_dir)(torch.tensor(tokens)).logits.numpy()


def arange_positions(batch: int, length: int) -> jax.Array:
    return jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))


@pytest.mark.parametrize("variant", ["llama", "qwen2", "llama3", "tied"])
def test_logits_match_transformers(tiny_dirs, variant):
    tokens = np.random.RandomState(1).randint(0, TOKENIZER_VOCAB, (2, 40))  # 40 > llama3's 32
    ref = torch_logits(tiny_dirs[variant], tokens)
    model = load_llama(tiny_dirs[variant])
    ours, _ = run(model, jnp.asarray(tokens, jnp.int32), arange_positions(*tokens.shape))
    assert ours.dtype == jnp.float32 and ours.shape == ref.shape
    assert np.abs(ref).max() > 1.0  # the comparison is not between near-zero logits
    np.testing.assert_allclose(np.asarray(ours), ref, rtol=0, atol=TOL)


@pytest.fixture(scope="module")
def llama(tiny_dirs):
    return load_llama(tiny_dirs["llama"])


def test_prefill_then_decode_equals_full_forward(llama):
    tokens = jnp.asarray(np.random.RandomState(2).randint(0, TOKENIZER_VOCAB, (2, 10)), jnp.int32)
    positions = arange_positions(2, 10)
    full, _ = run(llama, tokens, positions)
    cache = KVCache.init(llama.config, batch=2, max_len=16)
    step_logits = []
    logits, cache = run(llama, tokens[:, :6], positions[:, :6], cache)  # prefill
    step_logits.append(logits)
    for t in range(6, 10):  # decode one token at a time
        logits, cache = run(llama, tokens[:, t:t + 1], positions[:, t:t + 1], cache)
        step_logits.append(logits)
    assert int(cache.length) == 10
    np.testing.assert_array_equal(np.asarray(cache.pos[:, 10:]), -1)
    np.testing.assert_allclose(np.concatenate(step_logits, axis=1), full, rtol=0, atol=TOL)


def test_left_padded_rows_equal_unpadded(llama):
    rng = np.random.RandomState(3)
    long_row, short_row = rng.randint(0, TOKENIZER_VOCAB, 8), rng.randint(0, TOKENIZER_VOCAB, 5)
    pad = 3
    tokens = jnp.asarray([long_row, np.r_[[0] * pad, short_row], [0] * 8], jnp.int32)
    positions = jnp.asarray([np.arange(8), np.r_[[-1] * pad, np.arange(5)], [-1] * 8], jnp.int32)
    cache = KVCache.init(llama.config, batch=3, max_len=12)
    logits, cache = run(llama, tokens, positions, cache)
    next_tokens = jnp.asarray([[long_row[0]], [short_row[0]], [0]], jnp.int32)
    step, cache = run(llama, next_tokens, jnp.asarray([[8], [5], [-1]], jnp.int32), cache)
    assert np.isfinite(np.asarray(logits)).all() and np.isfinite(np.asarray(step)).all()

    for row, real in ((0, long_row), (1, short_row)):
        n = len(real)
        alone, _ = run(llama, jnp.asarray(np.r_[real, next_tokens[row, 0]][None], jnp.int32),
                         arange_positions(1, n + 1))
        np.testing.assert_allclose(logits[row, -n:], alone[0, :n], rtol=0, atol=TOL)
        np.testing.assert_allclose(step[row, 0], alone[0, n], rtol=0, atol=TOL)


def test_split_merge_jit_with_donated_cache(llama):
    graphdef, state = nnx.split(llama)

    @jax.jit
    def prefill(state, tokens, positions, cache):
        return nnx.merge(graphdef, state)(tokens, positions, cache)

    tokens = jnp.asarray(np.random.RandomState(4).randint(0, TOKENIZER_VOCAB, (2, 6)), jnp.int32)
    positions = arange_positions(2, 6)
    reference, _ = run(llama, tokens, positions)
    jitted, cache = jax.jit(prefill, donate_argnums=3)(
        state, tokens, positions, KVCache.init(llama.config, 2, 8))
    np.testing.assert_allclose(jitted, reference, rtol=0, atol=TOL)
    assert int(cache.length) == 6


def test_bfloat16_close_to_float32(tiny_dirs):
    tokens = jnp.asarray(np.random.RandomState(5).randint(0, TOKENIZER_VOCAB, (1, 12)), jnp.int32)
    f32, _ = run(load_llama(tiny_dirs["llama"]), tokens, arange_positions(1, 12))
    model = load_llama(tiny_dirs["llama"], dtype="bfloat16", param_dtype="bfloat16")
    assert model.layers[0].mlp.up_proj.kernel[...].dtype == jnp.bfloat16
    bf16, _ = run(model, tokens, arange_positions(1, 12))
    assert bf16.dtype == jnp.float32
    err = np.abs(np.asarray(bf16) - np.asarray(f32)).max()
    assert 0 < err < 0.05 * np.abs(np.asarray(f32)).max()


@pytest.mark.parametrize("variant", ["qwen2", "tied"])
def test_export_round_trips_through_transformers(tiny_dirs, tmp_path, variant):
    model = load_llama(tiny_dirs[variant])
    out = save_hf_checkpoint(model, str(tmp_path / "export"))
    tokens = np.random.RandomState(6).randint(0, TOKENIZER_VOCAB, (1, 9))
    np.testing.assert_allclose(torch_logits(out, tokens), torch_logits(tiny_dirs[variant], tokens),
                               rtol=0, atol=TOL)


def test_sharded_safetensors_index_loads_the_same_weights(tiny_dirs, tmp_path):
    sharded = make_tiny_llama_dir(tmp_path / "sharded", "llama", shard_size="2MB",
                                  with_tokenizer=False)
    assert os.path.isfile(os.path.join(sharded, "model.safetensors.index.json"))
    a = jax.tree.leaves(nnx.state(load_llama(sharded)))
    b = jax.tree.leaves(nnx.state(load_llama(tiny_dirs["llama"])))
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
