"""The LoRA training step the benchmarks time (`bench_training.py` against torch+peft,
`bench_compile.py` looped against scanned layers): one setup, so both time the same step.

    step = lora_train_step(model, batch=8, seq=64)   # adds the adapters to `model`
    step()                                           # one synchronised step, a fresh key

Random tokens [batch, seq] (`random_tokens`, also the torch side's input), every token a
target; r=8, alpha=16 on q_proj and v_proj (the training config's default targets).
`sft_rows` gives instead what the train stage feeds the step: chat prompts of the shipped
demo questions with answers or "I don't know the answer." as targets (target-only loss);
`lora_train_step(..., rows=...)` then cuts them with the stage's own `batch_layout`.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

RANK, ALPHA, LR = 8, 16.0, 3e-5


def random_tokens(vocab: int, batch: int, seq: int) -> np.ndarray:
    """int32[batch, seq] token ids in [3, vocab): the same on every side of a benchmark."""
    return np.random.default_rng(0).integers(3, vocab, (batch, seq)).astype(np.int32)


def sft_rows(batch: int) -> list:
    """`batch` SFT examples (sft_data.TokenizedExample) as the train stage builds them: the
    first shipped demo questions in the embedded SmolLM2's chat template, every other
    target "I don't know the answer.", the rest the gold answer."""
    from se_jax.tuning import sft_data
    from se_jax.data import text
    from se_jax.data import facts
    from se_jax.models.embedded import embedded_gguf_path
    from se_jax.models.loading import load_tokenizer

    tokenizer = load_tokenizer(embedded_gguf_path())
    pool = facts.load_pool()[:batch]
    return [sft_data.tokenize_example(
                tokenizer, dict(id=r["id"], question=r["question"],
                                target=text.ABSTENTION_PHRASE if i % 2 else r["answers"][0]),
                eos_id=tokenizer.eos_token_id)
            for i, r in enumerate(pool)]


def lora_train_step(model: Any, batch: int, seq: int, dropout: float = 0.0,
                    rows: list | None = None) -> Callable[[], None]:
    """Add LoRA adapters to `model` (in place) and return a call of one train step on a
    fixed batch (random tokens, or `rows` cut as the train stage cuts them), data-parallel
    over every device, blocking until it is done."""
    import jax
    from configs.base import training_config
    from se_jax.tuning import sft_data
    from se_jax.tuning import training
    from se_jax.parallel.mesh import make_mesh

    cfg = training_config()
    cfg.lora.update(dict(rank=RANK, alpha=ALPHA, dropout=dropout))
    cfg.update(dict(learning_rate=LR, batch_size=batch, max_grad_norm=1.0, weight_decay=0.0,
                    warmup_ratio=0.0))
    training.prepare_model(model, cfg, seed=0)
    state = training.init_train_state(model, cfg, mesh=make_mesh({"data": -1}),
                                      num_updates=1000)
    if rows is None:
        tokens = random_tokens(model.config.vocab_size, batch, seq)
        rows = [sft_data.TokenizedExample(str(i), t, 0) for i, t in enumerate(tokens)]
        layout = sft_data.BatchLayout(pad_multiple=seq, target_only=False)
    else:
        layout = training.batch_layout(cfg, rows)
    device_batch = jax.device_put(layout.batch(rows, batch), state.batch_sharding)
    prefix = layout.prefix(rows)
    prefix = None if prefix is None else jax.device_put(prefix, state.replicated)
    keys = iter(range(10 ** 9))

    def step() -> None:
        metrics = state.apply_step(device_batch, jax.random.key(next(keys)), distill=False,
                                   prefix=prefix)
        jax.block_until_ready(metrics["loss"])

    return step


def torch_lora_step(model: Any, ids, attention, labels, dropout: float = 0.0
                    ) -> Callable[[], None]:
    """transformers + peft's side of the same step: LoRA r=RANK, alpha=ALPHA on q_proj and
    v_proj of `model` (a transformers causal LM, made a PeftModel here), AdamW at LR with
    global-norm clipping at 1.0, on fixed int64 `ids`, `attention` and `labels` (-100: no
    target); returns a call of one step."""
    import torch
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(model, LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=dropout,
                                             target_modules=["q_proj", "v_proj"]))
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=LR, weight_decay=0.0)

    def step() -> None:
        loss = model(input_ids=ids, attention_mask=attention, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step
