"""LoRA dropout's hashed mask (se_jax.tuning.lora.hashed_keep_mask): the rate, independence between
keys and elements, determinism, and the train/eval switch of LoRALinear."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from se_jax.tuning import lora


@pytest.mark.parametrize("rate", [0.05, 0.1, 0.5])
def test_keep_rate(rate):
    keep = np.asarray(lora.hashed_keep_mask(jax.random.key(0), (256, 512), rate))
    n = keep.size
    # binomial standard deviation of the kept fraction: sqrt(p (1-p) / n)
    assert abs(keep.mean() - (1 - rate)) < 5 * np.sqrt(rate * (1 - rate) / n)
    # no structure along either axis: per-row and per-column rates are binomial too
    rows, cols = keep.mean(1), keep.mean(0)
    assert abs(rows.std() - np.sqrt(rate * (1 - rate) / keep.shape[1])) < 0.3 * rows.std()
    assert abs(cols.std() - np.sqrt(rate * (1 - rate) / keep.shape[0])) < 0.3 * cols.std()


def test_deterministic_per_key_and_independent_across_keys():
    a = np.asarray(lora.hashed_keep_mask(jax.random.key(1), (128, 64), 0.5))
    again = np.asarray(lora.hashed_keep_mask(jax.random.key(1), (128, 64), 0.5))
    b = np.asarray(lora.hashed_keep_mask(jax.random.fold_in(jax.random.key(1), 7), (128, 64),
                                         0.5))
    np.testing.assert_array_equal(a, again)
    agree = (a == b).mean()      # independent masks at rate 0.5 agree on ~half the elements
    assert abs(agree - 0.5) < 5 * np.sqrt(0.25 / a.size)


def test_lora_linear_drops_in_train_mode_only():
    base = nnx.Linear(64, 32, rngs=nnx.Rngs(0))
    layer = lora.LoRALinear(base, lora.LoRASpec(rank=4, alpha=8.0, dropout=0.5),
                            rngs=nnx.Rngs(params=0, dropout=1))
    layer.lora.lora_b[...] = jnp.ones_like(layer.lora.lora_b[...])
    x = jnp.ones((16, 64))
    layer.eval()
    clean = layer(x)
    layer.train()
    noisy, noisy2 = layer(x), layer(x)
    assert not np.allclose(clean, noisy)
    assert not np.allclose(noisy, noisy2)          # the stream advances between calls
    # inverted dropout: the rate's share of inputs zeroed, the rest scaled by 1 / (1 - rate)
    dropped = np.asarray(layer._dropped(jnp.ones((512, 64))))
    assert set(np.unique(dropped)) <= {0.0, 2.0}
    assert abs((dropped == 0).mean() - 0.5) < 5 * np.sqrt(0.25 / dropped.size)
