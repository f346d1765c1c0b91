"""The layer scan (LlamaConfig.scan_layers) computes what the Python layer loop computes, and
its compiled program does not grow with the number of layers."""
from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from se_jax.tuning import lora
from se_jax.models import layer_scan
from se_jax.models.llama import KVCache, Llama, LlamaConfig

CONFIG = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=8)
B, T = 2, 6


def _model(layers: int = 3, lora_dropout: float | None = None, scan: bool = True) -> Llama:
    model = Llama(dataclasses.replace(CONFIG, num_hidden_layers=layers), rngs=nnx.Rngs(0))
    if lora_dropout is not None:
        spec = lora.LoRASpec(rank=2, alpha=4.0, dropout=lora_dropout)
        lora.add_lora(model, spec, rngs=nnx.Rngs(1))
        for _, m in lora.lora_layers(model):  # non-zero B, so the adapters change the output
            m.lora.lora_b[...] = 0.1 * jax.random.normal(jax.random.key(2), m.lora.lora_b.shape)
    return _with_scan(model, scan)


def _with_scan(model: Llama, scan: bool) -> Llama:
    model.config = dataclasses.replace(model.config, scan_layers=scan)
    return model


def _inputs():
    tokens = jax.random.randint(jax.random.key(3), (B, T), 0, CONFIG.vocab_size)
    positions = jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32), (B, T))
    return tokens, positions.at[0, :2].set(-1)  # row 0 left-padded


def _loss_and_grads(model: Llama, wrt, key):
    """Loss (mean log-softmax of a fixed token) and its grads wrt `wrt`, in train mode."""
    model.train()
    graphdef, params, rest = nnx.split(model, wrt, ...)
    tokens, positions = _inputs()

    @jax.jit
    def loss_fn(params, rest):
        m = nnx.merge(graphdef, params, rest, copy=True)
        lora.reseed_dropout(m, key)
        logits, _ = m(tokens, positions)
        return jax.nn.log_softmax(logits)[..., 5].mean()

    return jax.value_and_grad(loss_fn)(params, rest)


def test_forward_matches_loop():
    tokens, positions = _inputs()
    scanned, _ = jax.jit(lambda: _model(scan=True)(tokens, positions))()
    looped, _ = jax.jit(lambda: _model(scan=False)(tokens, positions))()
    np.testing.assert_allclose(scanned, looped, rtol=1e-5, atol=1e-5)
    assert float(jnp.abs(looped).max()) > 0.1  # not vacuous


@pytest.mark.parametrize("mode,dropout", [("lora", 0.0), ("lora", 0.5), ("full", 0.0)])
def test_gradients_match_loop(mode, dropout):
    wrt = lora.trainable_filter(mode)
    key = jax.random.key(7)
    loss_s, grads_s = _loss_and_grads(_model(lora_dropout=dropout, scan=True), wrt, key)
    loss_l, grads_l = _loss_and_grads(_model(lora_dropout=dropout, scan=False), wrt, key)
    np.testing.assert_allclose(loss_s, loss_l, rtol=1e-5)
    flat_s, flat_l = nnx.to_flat_state(grads_s), nnx.to_flat_state(grads_l)
    assert [p for p, _ in flat_s] == [p for p, _ in flat_l]
    for (path, gs), (_, gl) in zip(flat_s, flat_l):
        np.testing.assert_allclose(gs[...], gl[...], rtol=1e-4, atol=1e-6, err_msg=str(path))
    assert any(float(jnp.abs(g[...]).max()) > 0 for _, g in flat_l
               if "lora_a" in str(_) or mode == "full")


def test_dropout_draws_match_loop_and_advance_rng_counts():
    """With dropout the scan draws each layer's own mask (its key and count) and writes the
    advanced counts back, exactly as the loop does; and the masks make a difference."""
    key = jax.random.key(11)
    outs, counts = [], []
    for scan in (True, False):
        model = _model(lora_dropout=0.5, scan=scan)
        model.train()
        lora.reseed_dropout(model, key)
        outs.append(model(*_inputs())[0])
        counts.append([int(m.dropout.rngs.count[...]) for _, m in lora.lora_layers(model)])
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-5, atol=1e-5)
    assert counts[0] == counts[1] and all(c == 1 for c in counts[0])
    eval_model = _model(lora_dropout=0.5, scan=True)
    eval_model.eval()
    assert float(jnp.abs(eval_model(*_inputs())[0] - outs[0]).max()) > 1e-3


def test_cached_prefill_and_decode_match_loop():
    tokens, positions = _inputs()
    results = []
    for scan in (True, False):
        model = _model(scan=scan)
        cache = KVCache.init(model.config, B, T + 2)
        logits, cache = model(tokens, positions, cache)
        step_logits, cache = model(tokens[:, :1], positions[:, -1:] + 1, cache)
        results.append((logits, step_logits, cache.k, cache.v, cache.length))
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_layers_that_differ_fall_back_to_the_loop():
    model = _model()
    lora.add_lora(model, lora.LoRASpec(rank=2, target_modules=r"layers\.0\.self_attn\.q_proj"),
                  rngs=nnx.Rngs(1))
    assert layer_scan.stack_graphdef(list(model.layers)) is None
    logits, _ = model(*_inputs())  # still runs (the loop)
    assert logits.shape == (B, T, CONFIG.vocab_size)


def _dot_count(layers: int, scan: bool, grad: bool) -> int:
    """dot_general ops in the lowered program of a forward (or forward + LoRA grads)."""
    model = _model(layers=layers, lora_dropout=0.0, scan=scan)
    graphdef, params, rest = nnx.split(model, nnx.LoRAParam, ...)
    tokens, positions = _inputs()

    def loss(params):
        return nnx.merge(graphdef, params, rest)(tokens, positions)[0].mean()

    fn = jax.grad(loss) if grad else loss
    return len(re.findall(r"dot_general", jax.jit(fn).lower(params).as_text()))


@pytest.mark.parametrize("grad", [False, True])
def test_scanned_program_does_not_grow_with_layers(grad):
    assert _dot_count(2, scan=True, grad=grad) == _dot_count(8, scan=True, grad=grad)
    # The loop's program does grow (so the count measures the layers).
    assert _dot_count(8, scan=False, grad=grad) > _dot_count(2, scan=False, grad=grad)


@pytest.mark.parametrize("scan,p", [(False, 4), (True, 4), (False, 11)],
                         ids=["loop", "scan", "head-longer-than-rows"])
def test_a_shared_head_as_prefix_or_context_gives_the_full_rows(scan, p):
    """Rows after a head they share: folding the head into the batch (`prefix=`; a head
    longer than the rows takes several head rows) or reading its prefilled cache
    (`context=`) gives the hidden states of the whole rows."""
    model = _model(scan=scan)
    head = jax.random.randint(jax.random.key(4), (1, p), 0, CONFIG.vocab_size)
    rows, _ = _inputs()
    positions = jnp.broadcast_to(jnp.arange(p, p + T, dtype=jnp.int32), (B, T))
    positions = positions.at[1, -2:].set(-1)                       # row 1 right-padded
    whole = jnp.concatenate([jnp.broadcast_to(head, (B, p)), rows], axis=1)
    whole_pos = jnp.concatenate([jnp.broadcast_to(jnp.arange(p), (B, p)), positions], axis=1)

    @jax.jit
    def three_ways():
        full, _ = model.hidden(whole, whole_pos)
        beside, _ = model.hidden(rows, positions, prefix=head)
        _, cache = model.hidden(head, jnp.arange(p)[None], KVCache.init(model.config, 1, p))
        read, _ = model.hidden(rows, positions, context=cache)
        return full[:, p:], beside, read

    full, beside, read = three_ways()
    real = np.asarray(positions >= 0)
    np.testing.assert_allclose(np.asarray(beside)[real], np.asarray(full)[real], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(read)[real], np.asarray(full)[real], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="prefix alone"):
        model.hidden(rows, positions, KVCache.init(model.config, B, T), prefix=head)


@pytest.mark.parametrize("scan", [False, True], ids=["loop", "scan"])
def test_rows_decoding_after_their_groups_context_give_the_whole_rows(scan):
    """Sampling's layout: G prompts prefilled once (a cache of G rows, left-padded), each read
    as `context` by its M answer rows, which prefill and then decode their own tokens into
    their own cache: every row's states equal a forward over its prompt + its own tokens."""
    model = _model(scan=scan)
    g, m, p, n = 2, 3, 5, 4
    key = jax.random.split(jax.random.key(7), 2)
    prompts = jax.random.randint(key[0], (g, p), 0, CONFIG.vocab_size)
    p_pos = jnp.broadcast_to(jnp.arange(p, dtype=jnp.int32), (g, p)).at[1].add(-2)
    p_pos = jnp.where(p_pos < 0, -1, p_pos)                  # prompt 1: 3 tokens, left-padded
    own = jax.random.randint(key[1], (g * m, n), 0, CONFIG.vocab_size)
    start = jnp.repeat(p_pos[:, -1] + 1, m)                  # each row's first own position
    own_pos = start[:, None] + jnp.arange(n, dtype=jnp.int32)

    @jax.jit
    def both_ways():
        _, ctx = model.hidden(prompts, p_pos, KVCache.init(model.config, g, p))
        cache = KVCache.init(model.config, g * m, n)
        h1, cache = model.hidden(own[:, :2], own_pos[:, :2], cache, context=ctx)  # two at once
        steps = [h1]
        for i in range(2, n):                                                    # then one by one
            h, cache = model.hidden(own[:, i:i + 1], own_pos[:, i:i + 1], cache, context=ctx)
            steps.append(h)
        whole = jnp.concatenate([jnp.repeat(prompts, m, axis=0), own], axis=1)
        whole_pos = jnp.concatenate([jnp.repeat(p_pos, m, axis=0), own_pos], axis=1)
        full, _ = model.hidden(whole, whole_pos)
        return jnp.concatenate(steps, axis=1), full[:, p:]

    read, full = both_ways()
    np.testing.assert_allclose(np.asarray(read), np.asarray(full), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="context groups"):
        model.hidden(own[:5, :1], own_pos[:5, :1], context=KVCache.init(model.config, g, p))
