"""The LoRA training step the benchmarks time (`bench_training.py` against torch+peft,
`bench_compile.py` looped against scanned layers): one setup, so both time the same step.

    step = lora_train_step(model, batch=8, seq=64)   # adds the adapters to `model`
    step()                                           # one synchronised step, a fresh key

Random tokens [batch, seq] (`random_tokens`, also the torch side's input), every token a
target; r=8, alpha=16 on q_proj and v_proj (the training config's default targets).
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

RANK, ALPHA, LR = 8, 16.0, 3e-5


def random_tokens(vocab: int, batch: int, seq: int) -> np.ndarray:
    """int32[batch, seq] token ids in [3, vocab): the same on every side of a benchmark."""
    return np.random.default_rng(0).integers(3, vocab, (batch, seq)).astype(np.int32)


def lora_train_step(model: Any, batch: int, seq: int, dropout: float = 0.0
                    ) -> Callable[[], None]:
    """Add LoRA adapters to `model` (in place) and return a call of one train step on a
    fixed random batch, data-parallel over every device, blocking until it is done."""
    import jax
    from configs.base import training_config
    from se_jax import sft_data, training
    from se_jax.mesh import make_mesh

    cfg = training_config()
    cfg.lora.update(dict(rank=RANK, alpha=ALPHA, dropout=dropout))
    cfg.update(dict(learning_rate=LR, batch_size=batch, max_grad_norm=1.0, weight_decay=0.0,
                    warmup_ratio=0.0))
    training.prepare_model(model, cfg, seed=0)
    state = training.init_train_state(model, cfg, mesh=make_mesh({"data": -1}),
                                      num_updates=1000)
    tokens = random_tokens(model.config.vocab_size, batch, seq)
    seqs = [sft_data.TokenizedExample(str(i), t, 0) for i, t in enumerate(tokens)]
    arrays = sft_data.make_batch(seqs, batch, pad_multiple=seq, target_only=False)
    device_batch = jax.device_put(arrays, state.batch_sharding)
    keys = iter(range(10 ** 9))

    def step() -> None:
        metrics = state.apply_step(device_batch, jax.random.key(next(keys)), distill=False)
        jax.block_until_ready(metrics["loss"])

    return step
