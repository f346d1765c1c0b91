"""The SFT loop: LoRA or (partly frozen) full fine-tuning with optax, Orbax and optional
self-distillation, data-parallel over a device mesh.

    model = load_llama(...); seqs = [tokenize_example(...) for ...]
    result = train(model, seqs, config.training, workdir=..., mesh=mesh, seed=config.seed)

The model is split once into (graphdef, trainable, frozen) states (`lora.trainable_filter`);
the jitted step takes the trainable parameters and the `nnx.Optimizer` state (both donated),
the frozen parameters, a batch sharded along the mesh's batch axes and the run's shared
prompt prefix (replicated; `batch_layout`), and returns the new trainable and optimizer
states. Everything a step depends on is a function of
(seed, step): the batch (`sft_data.epoch_batches`), the dropout masks
(`lora.reseed_dropout`), the learning rate (the optimizer's own step count), so a run
restarted from any checkpoint reaches bit-identical final weights.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from se_jax.tuning import checkpointing
from se_jax.tuning import lora
from se_jax.tuning import losses
from se_jax.parallel import mesh as mesh_lib
from se_jax.parallel import preemption
from se_jax.parallel import distributed
from se_jax.parallel.distributed import barrier
from se_jax.tuning import sft_data
from se_jax.config.schema import TrainingConfig
from se_jax.io.stage_io import Progress


class NonFiniteLossError(FloatingPointError):
    """The loss or the gradient norm became NaN/inf; the run stopped before saving it."""


def lora_spec(cfg: TrainingConfig) -> lora.LoRASpec:
    """`config.training.lora` -> LoRASpec."""
    c = cfg.lora
    return lora.LoRASpec(rank=c.rank, alpha=c.alpha, dropout=c.dropout,
                         target_modules=c.target_modules, top_layers=c.top_layers)


def loss_config(cfg: TrainingConfig) -> losses.LossConfig:
    kd = cfg.distill
    return losses.LossConfig(kd_weight=kd.weight if kd.enabled else 0.0,
                             temperature=kd.temperature, chunk=cfg.loss_chunk_tokens)


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
    """The optimizer's hyper-parameters and schedule length (hashable: runs with equal
    specs share one optax transformation, hence one compiled training step)."""
    learning_rate: float
    num_updates: int
    warmup_ratio: float = 0.0
    end_lr_ratio: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    adam_b1: float = 0.9
    adam_b2: float = 0.999
    adam_eps: float = 1e-8
    grad_accum_steps: int = 1

    @classmethod
    def from_config(cls, cfg: TrainingConfig, num_updates: int) -> "OptimizerSpec":
        """`config.training` -> spec."""
        return cls(cfg.learning_rate, num_updates, cfg.warmup_ratio, cfg.end_lr_ratio,
                   cfg.weight_decay, cfg.max_grad_norm, cfg.adam_b1, cfg.adam_b2,
                   cfg.adam_eps, cfg.grad_accum_steps)


@functools.lru_cache(maxsize=64)
def make_optimizer(spec: OptimizerSpec) -> optax.GradientTransformation:
    """AdamW with linear warmup + cosine decay to `end_lr_ratio * lr`, global-norm clipping,
    weight decay on matrices only, and `grad_accum_steps` micro-batches per update.

    Cached: the transformation is part of the optimizer's (static) graph, so equal specs
    must give the same object for the jitted step to be reused across runs."""
    warmup = int(round(spec.warmup_ratio * spec.num_updates))
    schedule = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=spec.learning_rate, warmup_steps=warmup,
        decay_steps=max(spec.num_updates, warmup + 1),
        end_value=spec.learning_rate * spec.end_lr_ratio)
    tx = optax.chain(
        optax.clip_by_global_norm(spec.max_grad_norm),
        optax.adamw(schedule, b1=spec.adam_b1, b2=spec.adam_b2, eps=spec.adam_eps,
                    weight_decay=spec.weight_decay,
                    mask=lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)))
    if spec.grad_accum_steps > 1:
        tx = optax.MultiSteps(tx, every_k_schedule=spec.grad_accum_steps)
    return tx


def batch_layout(cfg: TrainingConfig, seqs: Sequence[sft_data.TokenizedExample]) -> sft_data.BatchLayout:
    """`config.training` and the run's examples -> how its batches are cut.

    With the target-only loss and no distillation (whose KL reads every position), the
    prompts' common head runs once per batch shard (`shared_prefix`) and the output head on the
    supervised columns only (`loss_columns`): the same loss and gradients
    (tests/test_training_parity.py) for less work. The prefix's LoRA dropout mask is then
    drawn once per batch shard rather than once per row.
    """
    target_only = cfg.loss_on == "target"
    narrow = target_only and not cfg.distill.enabled
    prefix = (sft_data.shared_prefix_length(seqs, pad_multiple=cfg.pad_multiple)
              if narrow and cfg.shared_prefix else 0)
    return sft_data.BatchLayout(
        pad_multiple=cfg.pad_multiple, target_only=target_only, prefix_len=prefix,
        loss_columns=sft_data.loss_width(seqs) if narrow and cfg.loss_columns else None,
        per_example=cfg.loss_weighting == "example")


def batch_loss(params: nnx.State, frozen: nnx.State, teacher: nnx.State | None,
               batch: dict[str, jax.Array], prefix: jax.Array | None, key: jax.Array, *,
               graphdef, teacher_graphdef, cfg: losses.LossConfig) -> tuple[jax.Array, dict]:
    """The SFT loss of one batch as a function of the trainable state (differentiate this).

    `graphdef` is the model in train mode, `teacher_graphdef` in eval mode (no dropout);
    the teacher is `teacher` (a snapshot of the trainable state) over the same `frozen` state.
    batch: `sft_data.make_batch`'s arrays: tokens/positions int32[B, T], valid float32[B, T],
    targets/loss_mask [B, T], or [B, K] at the columns `loss_index` int32[B, K];
    prefix: int32[1, P] tokens before every row (None: none); key: this step's dropout key.
    """
    # copy=True: fresh Variables at this trace level, so dropout may advance its RNG count.
    model = nnx.merge(graphdef, params, frozen, copy=True)
    lora.reseed_dropout(model, key)
    h, _ = model.hidden(batch["tokens"], batch["positions"], prefix=prefix)
    valid = batch["valid"]
    if "loss_index" in batch:      # the head and the loss on the supervised columns only
        h = jnp.take_along_axis(h, batch["loss_index"][..., None], axis=1)
        valid = batch["loss_mask"]
    t_fn = t_h = None
    if cfg.kd_weight > 0:
        if prefix is not None or "loss_index" in batch:
            raise ValueError("distillation reads every position: no shared prefix or loss columns")
        t = nnx.merge(teacher_graphdef, teacher, frozen, copy=True)
        t_h, _ = t.hidden(batch["tokens"], batch["positions"])
        t_fn = t.logits
    return losses.sft_loss(model.logits, h, batch["targets"], batch["loss_mask"],
                           valid, cfg, teacher_fn=t_fn, teacher_hidden=t_h)


@dataclasses.dataclass(frozen=True)
class StepFns:
    """The compiled training steps, (params, opt, frozen, teacher, batch, prefix, key) ->
    (params, opt, metrics); `step_kd` adds the distillation term (None when it is off)."""
    step: Callable
    step_kd: Callable | None


def split_for_training(model: nnx.Module, wrt) -> tuple[Any, Any, nnx.State, nnx.State]:
    """(train-mode graphdef, eval-mode graphdef, trainable state, frozen state)."""
    model.eval()
    teacher_graphdef, _, _ = nnx.split(model, wrt, ...)
    model.train()
    graphdef, params, frozen = nnx.split(model, wrt, ...)
    return graphdef, teacher_graphdef, params, frozen


# Compiled steps of this process, keyed by everything baked into the program (graphs,
# loss settings, shardings): every run of a sweep with the same model structure and
# optimizer reuses one compiled step per batch shape; parameters are always arguments.
_STEP_FNS: dict[tuple, "StepFns"] = {}


def make_step_fns(model: nnx.Module, optimizer: nnx.Optimizer, wrt, loss_cfg: losses.LossConfig,
                  shardings: dict) -> StepFns:
    """The jitted training steps (with and without the distillation term), built once per
    process for each (model graph, optimizer graph, loss config, shardings).

    `shardings` holds NamedShardings for "params", "opt", "frozen", "teacher" (their
    structure, or None) and "batch".
    """
    graphdef, teacher_graphdef, _, _ = split_for_training(model, wrt)
    opt_graphdef, _ = nnx.split(optimizer)
    leaves, treedef = jax.tree.flatten(shardings, is_leaf=lambda x: x is None)
    key = (graphdef, teacher_graphdef, opt_graphdef, repr(wrt), loss_cfg, tuple(leaves),
           treedef)
    if key not in _STEP_FNS:
        _STEP_FNS[key] = _build_step_fns(graphdef, teacher_graphdef, opt_graphdef, wrt,
                                         loss_cfg, shardings)
    return _STEP_FNS[key]


def _build_step_fns(graphdef, teacher_graphdef, opt_graphdef, wrt,
                    loss_cfg: losses.LossConfig, shardings: dict) -> StepFns:

    def step(params, opt_state, frozen, teacher, batch, prefix, key, *,
             cfg: losses.LossConfig):
        loss_fn = functools.partial(batch_loss, graphdef=graphdef,
                                    teacher_graphdef=teacher_graphdef, cfg=cfg)
        (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            params, frozen, teacher, batch, prefix, key)
        model = nnx.merge(graphdef, params, frozen)
        opt = nnx.merge(opt_graphdef, opt_state)
        opt.update(model, grads)
        metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads))
        return nnx.state(model, wrt), nnx.state(opt), metrics

    def jit(cfg: losses.LossConfig):
        return jax.jit(
            functools.partial(step, cfg=cfg), donate_argnums=(0, 1),
            in_shardings=(shardings["params"], shardings["opt"], shardings["frozen"],
                          shardings["teacher"], shardings["batch"], shardings["prefix"],
                          None),
            out_shardings=(shardings["params"], shardings["opt"], None))

    no_kd = dataclasses.replace(loss_cfg, kd_weight=0.0)
    return StepFns(jit(no_kd), jit(loss_cfg) if loss_cfg.kd_weight > 0 else None)


@dataclasses.dataclass
class TrainResult:
    steps: int                 # micro-steps done in total (over all restarts)
    resumed_from: int | None   # the checkpoint step this process started from
    history: list[dict]        # per-step metrics of this process


def steps_per_epoch(num_examples: int, batch_size: int) -> int:
    return max(1, math.ceil(num_examples / batch_size))


def prepare_model(model: nnx.Module, cfg: TrainingConfig, seed: int) -> list[str]:
    """Add adapters in LoRA mode (seeded by `seed`); returns the wrapped paths ([] in full
    fine-tuning). The model is left in train mode."""
    paths = []
    if cfg.mode == "lora":
        paths = lora.add_lora(model, lora_spec(cfg),
                              rngs=nnx.Rngs(params=seed, dropout=seed))
    elif cfg.mode not in lora.TRAIN_MODES:
        raise ValueError(f"config.training.mode={cfg.mode!r} is not one of {lora.TRAIN_MODES}")
    model.train()
    return paths


def global_batch(arrays: dict[str, np.ndarray], sharding) -> dict[str, jax.Array]:
    """Host arrays -> global device arrays. Every process builds the same full batch (a pure
    function of (seed, step)) and hands its devices their slices, so this also serves a
    multi-host pod slice."""
    return {k: jax.make_array_from_callback(v.shape, sharding, lambda idx, v=v: v[idx])
            for k, v in arrays.items()}


def _copy(tree):
    return jax.tree.map(jnp.copy, tree)


@dataclasses.dataclass
class TrainState:
    """What a step reads and writes: trainable params and optimizer state (donated, and
    checkpointed with the teacher), the frozen rest of the model, the compiled steps."""
    params: nnx.State
    opt_state: nnx.State
    frozen: nnx.State
    teacher: nnx.State | None
    fns: StepFns
    batch_sharding: Any
    replicated: Any       # the shared prefix's sharding

    def checkpoint(self) -> dict:
        """The pure pytree a checkpoint holds."""
        out = {"params": nnx.to_pure_dict(self.params), "opt": nnx.to_pure_dict(self.opt_state)}
        if self.teacher is not None:
            out["teacher"] = nnx.to_pure_dict(self.teacher)
        return out

    def apply_step(self, batch: dict[str, jax.Array], key: jax.Array, distill: bool,
                   prefix: jax.Array | None = None) -> dict[str, jax.Array]:
        """Run one compiled step on a device batch (after the shared `prefix`, replicated,
        if any); updates params/opt_state; returns the metrics."""
        fn = self.fns.step_kd if distill else self.fns.step
        self.params, self.opt_state, metrics = fn(self.params, self.opt_state, self.frozen,
                                                  self.teacher, batch, prefix, key)
        return metrics

    def restore(self, tree: dict) -> None:
        nnx.replace_by_pure_dict(self.params, tree["params"])
        nnx.replace_by_pure_dict(self.opt_state, tree["opt"])
        if self.teacher is not None:
            nnx.replace_by_pure_dict(self.teacher, tree["teacher"])


def float32_trainable(model: nnx.Module, wrt) -> int:
    """Trainable parameters stored below float32 (bfloat16 base weights of an
    attention-only or full run) become float32 in `model`, so the parameters and Adam's
    moments update in float32 (config/precision.py: weights an optimizer updates stay
    float32; in bfloat16 an update of ~lr 3e-5 rounds to zero). The model's Variables get
    new arrays: a resident base sharing the old ones keeps them. Returns how many."""
    changed = 0
    for _, var in nnx.to_flat_state(nnx.state(model, wrt)):
        value = var.get_value()
        if jnp.issubdtype(value.dtype, jnp.floating) and value.dtype != jnp.float32:
            var.set_value(value.astype(jnp.float32))
            changed += 1
    return changed


def init_train_state(model: nnx.Module, cfg: TrainingConfig, *, mesh: Mesh, num_updates: int,
                     rules: mesh_lib.ShardingRules | None = None) -> TrainState:
    """Place the model and a fresh `nnx.Optimizer` (over the trainable filter of
    `cfg.mode`) on `mesh`, split them into states, and compile-ready step functions."""
    rules = rules or mesh_lib.ShardingRules()
    wrt = lora.trainable_filter(cfg.mode)
    float32_trainable(model, wrt)
    optimizer = nnx.Optimizer(
        model, make_optimizer(OptimizerSpec.from_config(cfg, max(num_updates, 1))), wrt=wrt)
    mesh_lib.shard_model(model, mesh, rules)
    mesh_lib.shard_model(optimizer, mesh, rules)
    _, params, frozen = nnx.split(model, wrt, ...)
    # The step donates the trainable arrays; copy them so a model that shares its weights
    # with a resident base (se_jax/pipeline/resident.py) never loses the base's buffers.
    params = _copy(params)
    _, opt_state = nnx.split(optimizer)
    loss_cfg = loss_config(cfg)
    use_kd = loss_cfg.kd_weight > 0
    shardings = dict(params=mesh_lib.state_shardings(params, mesh, rules),
                     opt=mesh_lib.state_shardings(opt_state, mesh, rules),
                     frozen=mesh_lib.state_shardings(frozen, mesh, rules),
                     batch=mesh_lib.batch_sharding(mesh, rules),
                     prefix=NamedSharding(mesh, PartitionSpec()))
    shardings["teacher"] = shardings["params"] if use_kd else None
    fns = make_step_fns(model, optimizer, wrt, loss_cfg, shardings)
    return TrainState(params, opt_state, frozen, _copy(params) if use_kd else None, fns,
                      shardings["batch"], shardings["prefix"])


def train(model: nnx.Module, seqs: Sequence[sft_data.TokenizedExample], cfg: TrainingConfig, *, workdir: str,
          mesh: Mesh, seed: int = 0, rules: mesh_lib.ShardingRules | None = None,
          pad_id: int = 0) -> TrainResult:
    """Fine-tune `model` (already `prepare_model`d) on `seqs`, checkpointing to `workdir`.

    Resumes from the newest checkpoint in `workdir` if there is one. Stops early after
    `cfg.max_steps` micro-steps of this run's schedule when > 0 (the schedule itself still
    spans all epochs, so a later run with max_steps=-1 continues the same run). Raises
    NonFiniteLossError on a NaN/inf loss or gradient, after the last good checkpoint is on
    disk. On return the model holds the trained weights, in eval mode.
    """
    if not seqs:
        raise ValueError("no training examples")
    batch_size = cfg.batch_size
    shards = mesh_lib.batch_shards(mesh, rules or mesh_lib.ShardingRules())
    if batch_size % shards:
        raise ValueError(f"config.training.batch_size={batch_size} is not divisible by the "
                         f"mesh's {shards} batch shards")
    spe = steps_per_epoch(len(seqs), batch_size)
    total = spe * cfg.epochs
    state = init_train_state(model, cfg, mesh=mesh, rules=rules,
                             num_updates=total // cfg.grad_accum_steps)
    use_kd = state.teacher is not None

    # Several processes, each on its own devices (the experiment's per-process mesh): the
    # run's owner alone (inside distributed.alone()) or every process trains it; one process
    # saves (checkpointing.SoloManager).
    solo = jax.process_count() > 1 and mesh_lib.process_local(mesh)
    writes = not solo or distributed.is_main_process()
    manager = checkpointing.make_manager(workdir, save_every=cfg.save_every, keep=cfg.keep,
                                         async_save=cfg.async_checkpoint, solo=solo)
    start, resumed_from = 0, None
    restored = checkpointing.restore_latest(manager, state.checkpoint())
    if restored is not None:
        start, tree = restored
        resumed_from = start
        state.restore(tree)
    if solo:   # every process has read the checkpoints before process 0 writes new ones
        barrier(f"train-restored-{workdir}")
    stop = total if cfg.max_steps <= 0 else min(total, start + cfg.max_steps)
    teacher_step = cfg.distill.teacher_epoch * spe
    base_key = jax.random.key(seed)
    layout = batch_layout(cfg, seqs)
    prefix = layout.prefix(seqs)
    if prefix is not None:
        prefix = global_batch({"prefix": prefix}, state.replicated)["prefix"]
    lengths = [len(s.ids) for s in seqs]
    progress = Progress("train", total=total, unit="steps", initial=start,
                        every_seconds=cfg.log_every_seconds)
    logging.info("train: %d examples, %d steps/epoch x %d epochs = %d steps (from %d), "
                 "mode=%s, trainable=%d params; shared prefix %d tokens, loss columns %s",
                 len(seqs), spe, cfg.epochs, total, start, cfg.mode,
                 sum(x.size for x in jax.tree.leaves(state.params)), layout.prefix_len,
                 layout.loss_columns or "all")
    history, batches, epoch_of_batches = [], None, -1
    # Metrics stay on the devices until a step that saves or logs (or the last): then one
    # fetch checks every held step in order, so a non-finite step is still named exactly
    # and never saved, without a host sync per step.
    held: list[tuple[int, int, int, Any]] = []

    def flush() -> dict:
        fetched = jax.device_get([m for *_, m in held])
        for (at, ep, ix, _), m in zip(held, fetched):
            m = {k: float(v) for k, v in m.items()}
            if not (math.isfinite(m["loss"]) and math.isfinite(m["grad_norm"])):
                manager.wait_until_finished()
                raise NonFiniteLossError(
                    f"non-finite loss={m['loss']} / grad_norm={m['grad_norm']} at "
                    f"step {at + 1} (epoch {ep}, batch {ix}); stopped without saving it. "
                    f"Last good checkpoint: step {manager.latest_step()} in "
                    f"{manager.directory}")
            history.append(dict(m, step=at + 1))
        held.clear()
        return history[-1]

    for step in range(start, stop):
        epoch, index = divmod(step, spe)
        if epoch != epoch_of_batches:
            batches = sft_data.epoch_batches(lengths, batch_size, seed, epoch,
                                             cfg.bucket_batches)
            epoch_of_batches = epoch
        if use_kd and step == teacher_step:
            state.teacher = _copy(state.params)  # the snapshot after `teacher_epoch` epochs
        rows = [seqs[i] for i in batches[index]]
        arrays = layout.batch(rows, batch_size, pad_id=pad_id)
        metrics = state.apply_step(global_batch(arrays, state.batch_sharding),
                                   jax.random.fold_in(base_key, step),
                                   distill=use_kd and step >= teacher_step, prefix=prefix)
        held.append((step, epoch, index, metrics))
        stopping = preemption.should_stop(  # SIGTERM; a run trained alone has no lockstep
            f"train step {step + 1} of {total}", lockstep=not distributed.working_alone())
        logs = (step + 1) % cfg.log_every_steps == 0
        if logs or stopping or step + 1 == stop or manager.should_save(step + 1):
            metrics = flush()   # checks every held step before anything is saved
        if writes:
            checkpointing.save(manager, step + 1, state.checkpoint(),
                               force=(step + 1 == stop) or stopping)
        progress.update(1, tokens=float(arrays["valid"].sum()) + layout.prefix_len * len(rows))
        if logs:
            logging.info("train: step %d loss %.4f ce %.4f kl %.4f grad_norm %.3f", step + 1,
                         metrics["loss"], metrics["ce"], metrics["kl"], metrics["grad_norm"])
        if stopping:   # saved above: a rerun resumes from this step
            manager.wait_until_finished()
            raise preemption.Preempted(f"train step {step + 1} of {total} (checkpoint in "
                                       f"{manager.directory})")
    manager.wait_until_finished()
    manager.close()
    if solo:
        barrier(f"train-saved-{workdir}")   # process 0's last checkpoint is complete
    nnx.update(model, state.params)
    model.eval()
    return TrainResult(steps=stop, resumed_from=resumed_from, history=history)


def trainable_state(model: nnx.Module, mode: str) -> nnx.State:
    """The parameters a run of `mode` trains (what the checkpoints hold)."""
    return nnx.state(model, lora.trainable_filter(mode))
