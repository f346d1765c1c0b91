"""One training step on a tiny random Llama: our loss and LoRA gradients equal a PyTorch
reference (transformers + peft LoRA on the same modules, same weights, same batch).

The batch has rows of different lengths and one all-padding row; the loss is chunked into
pieces smaller than the batch, so the rematerialised scan path is the one compared. With
self-distillation the teacher is the base model (peft's `disable_adapter`).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from se_jax.tuning import lora
from se_jax.tuning import losses
from se_jax.tuning import sft_data
from se_jax.tuning import training
from se_jax.config.schema import TrainingConfig
from se_jax.models.loading import load_llama
import typed_configs
from tiny_models import load_torch_model, make_tiny_llama_dir

RANK, ALPHA, TAU = 4, 8.0, 0.5
TOL = 1e-4


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> str:
    return make_tiny_llama_dir(tmp_path_factory.mktemp("tiny_parity"), with_tokenizer=False)


@pytest.fixture(scope="module")
def tied_dir(tmp_path_factory) -> str:
    """Tied input/output embeddings, as SmolLM2: the loss goes through `embed_tokens`."""
    return make_tiny_llama_dir(tmp_path_factory.mktemp("tiny_parity_tied"), variant="tied",
                               with_tokenizer=False)


def _train_cfg(top_layers: int = 0) -> TrainingConfig:
    return typed_configs.training(
        mode="lora", lora=dict(rank=RANK, alpha=ALPHA, dropout=0.0,
                               target_modules=("q_proj", "v_proj"), top_layers=top_layers))


def _seqs(vocab: int, shared: int = 0) -> list[sft_data.TokenizedExample]:
    """Three rows of different lengths; the first `shared` tokens the same in all."""
    rng = np.random.default_rng(0)
    head = rng.integers(3, vocab, shared)
    shape = [(11, 6), (7, 3), (14, 10)] if not shared else [(19, 13), (12, 9), (16, 12)]
    return [sft_data.TokenizedExample(
                str(i), np.concatenate([head, rng.integers(3, vocab, n - shared)]).astype(np.int32),
                start) for i, (n, start) in enumerate(shape)]


def _batch(vocab: int) -> dict[str, np.ndarray]:
    return sft_data.make_batch(_seqs(vocab), batch_size=4, pad_multiple=8)  # row 3: all padding


def _our_model(path: str, top_layers: int = 0) -> nnx.Module:
    model = load_llama(path)
    training.prepare_model(model, _train_cfg(top_layers), seed=0)
    # Non-zero B, so the gradient of A is non-trivial too.
    for i, (_, layer) in enumerate(lora.lora_layers(model)):
        b = layer.lora.lora_b
        b[...] = 0.2 * jax.random.normal(jax.random.key(100 + i), b.shape)
    return model


def _torch_reference(path: str, model: nnx.Module, batch: dict, kd_weight: float,
                     top_layers: int = 0):
    import torch
    from peft import LoraConfig, get_peft_model

    n = model.config.num_hidden_layers
    torch_model = get_peft_model(
        load_torch_model(path),
        LoraConfig(r=RANK, lora_alpha=ALPHA, lora_dropout=0.0,
                   target_modules=["q_proj", "v_proj"],
                   layers_to_transform=list(range(n - top_layers, n)) if top_layers else None))
    params = dict(torch_model.named_parameters())
    for path_, layer in lora.lora_layers(model):
        prefix = f"base_model.model.model.{path_}"
        with torch.no_grad():
            params[f"{prefix}.lora_A.default.weight"].copy_(
                torch.from_numpy(np.asarray(layer.lora.lora_a[...]).T.copy()))
            params[f"{prefix}.lora_B.default.weight"].copy_(
                torch.from_numpy(np.asarray(layer.lora.lora_b[...]).T.copy()))
    ids = torch.from_numpy(batch["tokens"]).long()
    attention = torch.from_numpy(batch["positions"] >= 0).long()
    targets = torch.from_numpy(batch["targets"]).long()
    mask = torch.from_numpy(batch["loss_mask"])
    valid = torch.from_numpy(batch["valid"])

    logits = torch_model(input_ids=ids, attention_mask=attention).logits.float()
    nll = -torch.log_softmax(logits, -1).gather(-1, targets[..., None])[..., 0]
    ce = torch.where(mask > 0, nll, 0.0).sum() / mask.sum()
    loss = ce
    if kd_weight:
        with torch.no_grad(), torch_model.disable_adapter():
            teacher = torch_model(input_ids=ids, attention_mask=attention).logits.float()
        t_logp = torch.log_softmax(teacher / TAU, -1)
        kl = (t_logp.exp() * (t_logp - torch.log_softmax(logits / TAU, -1))).sum(-1)
        loss = ce + kd_weight * TAU ** 2 * torch.where(valid > 0, kl, 0.0).sum() / valid.sum()
    loss.backward()
    grads = {n: p.grad.numpy() for n, p in torch_model.named_parameters() if p.grad is not None}
    return float(loss.detach()), grads


@pytest.mark.parametrize("variant,kd_weight,top_layers",
                         [("untied", 0.0, 0), ("untied", 1.0, 0), ("tied", 0.0, 0),
                          ("untied", 0.0, 1)],
                         ids=["ce", "ce+self_distill", "tied_ce", "ce_top_layer"])
def test_one_step_loss_and_lora_grads_match_peft(request, variant, kd_weight, top_layers):
    tiny_dir = request.getfixturevalue("tied_dir" if variant == "tied" else "tiny_dir")
    model = _our_model(tiny_dir, top_layers)
    if top_layers:   # PEFT's layers_to_transform: the top layer's adapters only
        assert {p.split(".")[1] for p, _ in lora.lora_layers(model)} == {"1"}
    batch = _batch(model.config.vocab_size)
    graphdef, teacher_graphdef, params, frozen = training.split_for_training(
        model, nnx.LoRAParam)
    # The teacher is the base model: the adapters with B = 0.
    teacher = jax.tree.map(
        lambda x: jnp.zeros_like(x) if x.shape[0] == RANK else x, params)
    cfg = losses.LossConfig(kd_weight=kd_weight, temperature=TAU, chunk=16)  # 4 x 16 tokens: 4 chunks
    loss_fn = functools.partial(training.batch_loss, graphdef=graphdef,
                                teacher_graphdef=teacher_graphdef, cfg=cfg)
    (loss, metrics), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
        params, frozen, teacher, jax.tree.map(jnp.asarray, batch), None, jax.random.key(0))

    ref_loss, ref_grads = _torch_reference(tiny_dir, model, batch, kd_weight, top_layers)
    assert float(metrics["tokens"]) == batch["loss_mask"].sum()
    np.testing.assert_allclose(float(loss), ref_loss, rtol=TOL, atol=TOL)
    if kd_weight:
        assert float(metrics["kl"]) > 1e-3  # the distillation term is really exercised
    _assert_grads_match(model, grads, ref_grads, top_layers)


def test_shared_prefix_and_loss_columns_match_peft_on_full_rows(tied_dir):
    """The train stage's layout (prompts' common head run once, head and loss on the
    supervised columns only) gives PEFT's loss and gradients on the whole, unshared rows."""
    model = _our_model(tied_dir)
    seqs = _seqs(model.config.vocab_size, shared=10)
    cfg = typed_configs.training(loss_on="target", distill=dict(enabled=False),
                                 shared_prefix=True, loss_columns=True, pad_multiple=8)
    layout = training.batch_layout(cfg, seqs)
    assert (layout.prefix_len, layout.loss_columns) == (8, 8)  # 10 shared -> 8; 6 targets -> 8
    batch = layout.batch(seqs, 4)
    assert batch["tokens"].shape == (4, 16) and batch["loss_index"].shape == (4, 8)
    graphdef, teacher_graphdef, params, frozen = training.split_for_training(
        model, nnx.LoRAParam)
    loss_fn = functools.partial(training.batch_loss, graphdef=graphdef,
                                teacher_graphdef=teacher_graphdef,
                                cfg=losses.LossConfig(chunk=16))   # 4 x 8 columns: 2 chunks
    (loss, metrics), grads = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))(
        params, frozen, None, jax.tree.map(jnp.asarray, batch),
        jnp.asarray(layout.prefix(seqs)), jax.random.key(0))

    full = sft_data.make_batch(seqs, batch_size=4, pad_multiple=8)
    ref_loss, ref_grads = _torch_reference(tied_dir, model, full, 0.0)
    assert float(metrics["tokens"]) == full["loss_mask"].sum()
    np.testing.assert_allclose(float(loss), ref_loss, rtol=TOL, atol=TOL)
    _assert_grads_match(model, grads, ref_grads)


def test_per_example_weighting_is_the_mean_of_each_rows_own_loss(tied_dir):
    """loss_weighting="example": the batch's loss and gradients are the means over its rows
    of each row trained alone with the token-mean loss (the one compared with PEFT above),
    not the token mean of the batch (the rows' targets are 6, 3 and 4 tokens long)."""
    model = _our_model(tied_dir)
    seqs = _seqs(model.config.vocab_size, shared=10)
    graphdef, teacher_graphdef, params, frozen = training.split_for_training(
        model, nnx.LoRAParam)
    loss_fn = jax.jit(jax.value_and_grad(functools.partial(
        training.batch_loss, graphdef=graphdef, teacher_graphdef=teacher_graphdef,
        cfg=losses.LossConfig(chunk=16)), has_aux=True))

    def loss_and_grads(rows, weighting):
        cfg = typed_configs.training(loss_on="target", distill=dict(enabled=False),
                                     shared_prefix=True, loss_columns=True, pad_multiple=8,
                                     loss_weighting=weighting)
        layout = training.batch_layout(cfg, seqs)   # one layout: rows cut alike
        (loss, _), grads = loss_fn(params, frozen, None,
                                   jax.tree.map(jnp.asarray, layout.batch(rows, 4)),
                                   jnp.asarray(layout.prefix(seqs)), jax.random.key(0))
        return float(loss), grads

    loss, grads = loss_and_grads(seqs, "example")
    alone = [loss_and_grads([row], "token") for row in seqs]
    np.testing.assert_allclose(loss, np.mean([l for l, _ in alone]), rtol=TOL, atol=TOL)
    mean_grads = jax.tree.map(lambda *g: sum(g) / len(g), *[g for _, g in alone])
    for ours, ref in zip(jax.tree.leaves(grads), jax.tree.leaves(mean_grads)):
        np.testing.assert_allclose(np.asarray(ours), np.asarray(ref), rtol=1e-3, atol=TOL)
    token_loss, _ = loss_and_grads(seqs, "token")
    assert abs(loss - token_loss) > 1e-3   # the two weightings really differ here


def _assert_grads_match(model, grads, ref_grads, top_layers: int = 0) -> None:
    flat = dict(nnx.to_flat_state(grads))
    layers = lora.lora_layers(model)
    assert len(layers) == 2 * (top_layers or model.config.num_hidden_layers)
    assert len(ref_grads) == 2 * len(layers)  # peft trains exactly the same tensors
    for path, _ in layers:
        key = tuple(int(p) if p.isdigit() else p for p in path.split("."))
        for ours_name, theirs_name in (("lora_a", "lora_A"), ("lora_b", "lora_B")):
            ours = np.asarray(flat[key + ("lora", ours_name)].get_value()).T
            theirs = ref_grads[f"base_model.model.model.{path}.{theirs_name}.default.weight"]
            scale = max(np.abs(theirs).max(), 1e-3)
            assert np.abs(theirs).max() > 1e-6, f"{path}.{theirs_name}: zero reference grad"
            np.testing.assert_allclose(ours / scale, theirs / scale, rtol=0, atol=TOL,
                                       err_msg=f"{path}.{ours_name}")


def test_only_lora_params_are_trainable_and_freezing_modes_select_by_path(tiny_dir):
    model = _our_model(tiny_dir)
    names = {"/".join(map(str, p)) for p, _ in
             nnx.to_flat_state(training.trainable_state(model, "lora"))}
    assert names and all("/lora/lora_" in n for n in names)

    full = load_llama(tiny_dir)
    attention = [p for p, _ in nnx.to_flat_state(training.trainable_state(full, "attention"))]
    mlp = [p for p, _ in nnx.to_flat_state(training.trainable_state(full, "mlp"))]
    assert attention and all("self_attn" in p for p in attention)
    assert mlp and all("mlp" in p for p in mlp)
    everything = nnx.to_flat_state(training.trainable_state(full, "full"))
    assert len(everything) > len(attention) + len(mlp)  # embeddings and norms too


@pytest.mark.parametrize("mode", ["attention", "mlp"])
def test_freezing_modes_update_only_their_parameters(tiny_dir, tmp_path, mode):
    model = load_llama(tiny_dir)
    before = {p: np.asarray(v.get_value()) for p, v in nnx.to_flat_state(nnx.state(model))}
    cfg = typed_configs.training(
        mode=mode, learning_rate=1e-2, batch_size=4, epochs=1, grad_accum_steps=1,
        warmup_ratio=0.0, end_lr_ratio=0.0, weight_decay=0.0, max_grad_norm=1.0,
        adam_b1=0.9, adam_b2=0.999, adam_eps=1e-8, loss_on="target",
        distill=dict(enabled=False, weight=1.0, temperature=0.5, teacher_epoch=0),
        loss_chunk_tokens=1024, pad_multiple=16, bucket_batches=1, save_every=10, keep=1,
        async_checkpoint=False, max_steps=-1, log_every_seconds=60.0, log_every_steps=1)
    training.prepare_model(model, cfg, seed=0)
    rng = np.random.default_rng(1)
    seqs = [sft_data.TokenizedExample(str(i), rng.integers(3, 1000, 12).astype(np.int32), 6)
            for i in range(4)]
    mesh = jax.make_mesh((1, 1, 1), ("data", "fsdp", "tensor"), devices=jax.devices()[:1])
    training.train(model, seqs, cfg, workdir=str(tmp_path / "ckpt"), mesh=mesh, seed=0)
    part = "self_attn" if mode == "attention" else "mlp"
    for path, var in nnx.to_flat_state(nnx.state(model)):
        changed = not np.array_equal(np.asarray(var.get_value()), before[path])
        assert changed == (part in path), f"{'/'.join(map(str, path))} changed={changed}"
