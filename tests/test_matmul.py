"""se_jax.models.matmul: projections with a float32 accumulator, forward and backward."""
from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from se_jax.tuning.lora import LoRASpec, add_lora
from se_jax.models import matmul
from se_jax.models.llama import Llama, LlamaConfig


def _operands(x_shape=(2, 5, 16), w_shape=(16, 24), dtype=jnp.float32):
    kx, kw = jax.random.split(jax.random.key(0))
    return (jax.random.normal(kx, x_shape, jnp.float32).astype(dtype),
            jax.random.normal(kw, w_shape, jnp.float32).astype(dtype))


def _loss(fn):
    # A cotangent that differs per output element, so a transposed gradient would show.
    return lambda x, w: jnp.sum(fn(x, w).astype(jnp.float32) * jnp.arange(24.0) / 24.0)


def test_float32_matches_plain_dot_and_its_autodiff():
    x, w = _operands()
    np.testing.assert_allclose(matmul.project(x, w), x @ w, rtol=1e-5, atol=1e-5)
    ours = jax.grad(_loss(matmul.project), argnums=(0, 1))(x, w)
    plain = jax.grad(_loss(lambda x, w: x @ w), argnums=(0, 1))(x, w)
    for a, b in zip(ours, plain):
        assert a.shape == b.shape and a.dtype == b.dtype
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_bfloat16_keeps_dtypes_and_approximates_float32():
    x, w = _operands(dtype=jnp.bfloat16)
    y = matmul.project(x, w)
    assert y.dtype == jnp.bfloat16
    assert matmul.project(x, w, jnp.float32).dtype == jnp.float32
    exact = x.astype(jnp.float32) @ w.astype(jnp.float32)
    np.testing.assert_allclose(np.asarray(y, np.float32), exact, rtol=2e-2, atol=2e-2)
    dx, dw = jax.grad(_loss(matmul.project), argnums=(0, 1))(x, w)
    assert dx.dtype == dw.dtype == jnp.bfloat16
    rx, rw = jax.grad(_loss(lambda x, w: x @ w), argnums=(0, 1))(
        x.astype(jnp.float32), w.astype(jnp.float32))
    np.testing.assert_allclose(np.asarray(dx, np.float32), rx, rtol=3e-2, atol=3e-2)
    np.testing.assert_allclose(np.asarray(dw, np.float32), rw, rtol=3e-2, atol=3e-2)


def _dot_signatures(fn, *args) -> list[str]:
    """'(operand types) -> result type' of every dot_general in fn's lowered program."""
    text = jax.jit(fn).lower(*args).as_text()
    return re.findall(r"stablehlo\.dot_general.*?: \((.*?)\) -> (tensor<[^>]*>)", text)


@pytest.mark.parametrize("out_dtype", [None, jnp.float32])
def test_bfloat16_products_take_bfloat16_operands_both_ways(out_dtype):
    """The point of the custom VJP: every product, the two backward ones included, takes
    bfloat16 operands and asks for a float32 result, which XLA:CPU runs natively (a
    float32 cotangent would make XLA convert the weights to float32 on every step)."""
    x, w = _operands(dtype=jnp.bfloat16)
    grad = jax.value_and_grad(_loss(lambda x, w: matmul.project(x, w, out_dtype)),
                              argnums=(0, 1))
    sigs = _dot_signatures(grad, x, w)
    assert len(sigs) == 3, sigs          # forward, d/dx, d/dw
    for operands, result in sigs:
        assert operands.count("bf16") == 2 and "f32" not in operands, operands
        assert result.endswith("f32>"), result


def test_dot_accumulate_f32_refuses_other_contractions():
    x, w = _operands(x_shape=(4, 16))
    with pytest.raises(ValueError, match="nnx.Linear only"):
        matmul.dot_accumulate_f32(x, w.T, (((1,), (1,)), ((), ())))
    with pytest.raises(ValueError, match="precision"):
        matmul.dot_accumulate_f32(x, w, (((1,), (0,)), ((), ())),
                                  precision=jax.lax.Precision.HIGHEST)


def test_bfloat16_model_projections_and_float32_adapters():
    """A bfloat16 Llama's projections run through `project` (bfloat16 products both ways),
    and LoRA adapters stay float32 (trained in float32, as PEFT's autocast_adapter_dtype)."""
    config = LlamaConfig(vocab_size=96, hidden_size=32, intermediate_size=48,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         head_dim=8, dtype="bfloat16", param_dtype="bfloat16")
    model = Llama(config, rngs=nnx.Rngs(0))
    add_lora(model, LoRASpec(rank=2, alpha=4, dropout=0.0), rngs=nnx.Rngs(0))
    proj = model.layers[0].self_attn.q_proj
    assert proj.base_layer.kernel[...].dtype == jnp.bfloat16
    assert proj.lora.lora_a[...].dtype == proj.lora.lora_b[...].dtype == jnp.float32
    x = jnp.ones((3, proj.base_layer.in_features), jnp.bfloat16)
    n_in, n_out = proj.base_layer.kernel[...].shape
    sigs = [s for s in _dot_signatures(
        jax.value_and_grad(lambda x: jnp.sum(proj(x).astype(jnp.float32))), x)
        if f"{n_in}x{n_out}xbf16" in s[0]]
    assert len(sigs) == 2, sigs          # forward and d/dx through the frozen kernel
    for operands, result in sigs:
        assert "f32" not in operands and result.endswith("f32>"), (operands, result)
