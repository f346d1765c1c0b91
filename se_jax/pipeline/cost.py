"""What an experiment will cost before it runs (`launch/experiment.py --dry_run`): fine-tuning
runs, model loads, XLA programs to compile, and the disk its outputs will take.

Sizes come from the model's config and the LoRA spec (no weight is read): an adapter is
r * (in + out) float32 values per targeted linear; a run's Orbax state holds the trainable
parameters and Adam's two moments (and the distillation teacher); generations take about
`_BYTES_PER_TOKEN` per generated token (text, id and log-probability as JSON).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Mapping

from se_jax.config.schema import RunConfig
from se_jax.config.validation import ConfigError
from se_jax.config import precision
from se_jax.pipeline.plan import Sweep, needs_full_train, sep_backend, separate_judge
from se_jax.tuning import training
from se_jax.models.hf_names import param_specs
from se_jax.models.llama import LlamaConfig
from se_jax.models.loading import load_config, open_checkpoint, same_model

_BYTES_PER_TOKEN = 40
_F32 = 4


@dataclasses.dataclass(frozen=True)
class Cost:
    training_runs: int
    model_loads: int
    programs: dict[str, int]      # program family -> upper bound of compilations
    disk_bytes: dict[str, int]    # output kind -> bytes


def read_shapes(path: str) -> LlamaConfig | None:
    """The model's shapes from its config alone (a directory's config.json is enough: no
    weight file is opened), or None when they cannot be read without the network."""
    config_json = os.path.join(str(path), "config.json")
    try:
        if os.path.isfile(config_json):
            with open(config_json) as f:
                return LlamaConfig.from_hf_dict(json.load(f))
        return load_config(open_checkpoint(str(path)))
    except (OSError, ValueError, KeyError, ImportError):
        return None


def _model_numbers(config: RunConfig) -> tuple[int, int] | None:
    """(adapter parameters of one run, all parameters) from the checkpoint's config, or
    None when the config cannot be read without the network."""
    model_config = read_shapes(str(config.model.path))
    if model_config is None:
        return None
    spec = training.lora_spec(config.training)
    specs = param_specs(model_config)
    adapter = sum(spec.rank * sum(s.hf_shape) for s in specs if s.path[-1] == "kernel"
                  and spec.matches(".".join(map(str, s.path[:-1])),
                                   model_config.num_hidden_layers))
    return adapter, sum(math.prod(s.hf_shape) for s in specs)


def matmul_params(config: RunConfig) -> int | None:
    """Parameters the forward multiplies (every 2-D weight; the input embedding only when
    it is also the tied output head), as the throughput table counts them; None when the
    model's config cannot be read without the network."""
    try:
        model_config = load_config(open_checkpoint(str(config.model.path)))
    except (OSError, ValueError, ImportError):
        return None
    specs = param_specs(model_config)
    tied = not any(s.hf_name == "lm_head.weight" for s in specs)
    return sum(math.prod(s.hf_shape) for s in specs if len(s.hf_shape) == 2
               and (tied or s.hf_name != "model.embed_tokens.weight"))


def estimate(config: RunConfig, sweep: Sweep, sizes: Mapping[str, int], num_ood: int,
             settings: int = 1) -> Cost:
    """Upper bounds for one invocation on an empty workdir (`settings` answer settings,
    each a whole experiment on the same base model)."""
    tc, sc = config.training, config.sampling
    runs = sweep.num_trainings * settings
    # A separate judge: 3 judge stages per setting, each followed by a generator reload.
    stages = 3 * settings if separate_judge(config) else 0
    loads = 1 + max(2 * stages - 1, 0)
    sampled = (sizes["train"] + sizes["val"]) * settings
    # Training batches are padded to multiples of pad_multiple up to the longest sequence.
    shapes = max(1, math.ceil(config.model.max_seq_len / tc.pad_multiple))
    programs = {"sampler (M+1 rows: prefill + decode)": 2,
                "greedy evaluation, base model (prefill + decode)": 2,
                "greedy evaluation, fine-tuned models (prefill + decode)": 2,
                "training step (one per padded batch length)": shapes}
    rows = answer_rows(config, sweep, sizes) * settings
    disk = {"generations": rows * sc.max_new_tokens * _BYTES_PER_TOKEN}
    shapes_ = read_shapes(str(config.model.path)) if config.probes.enabled else None
    if shapes_ is not None:   # every sampled question: P positions x L layers x D
        disk["hidden states"] = (sampled * len(config.probes.positions)
                                 * len(config.probes.layers) * shapes_.hidden_size
                                 * {"float16": 2, "float32": 4}[config.probes.dtype])
    numbers = _model_numbers(config)
    if numbers is not None:
        adapter, total = numbers
        trainable = adapter if tc.mode == "lora" else total
        copies = 3 + tc.distill.enabled   # params, Adam mu and nu, teacher
        disk["adapters"] = runs * adapter * _F32 if tc.mode == "lora" else 0
        disk["resume state (Orbax)"] = runs * trainable * copies * _F32 * tc.keep
        if tc.export_merged:
            disk["merged checkpoints"] = runs * total * _F32
    final = (len(sweep.methods) + len(sweep.arms)) * len(sweep.seeds) + 1   # + original
    evaluated = (sizes["val"] * (runs // settings + 1)
                 + (sizes["test"] + sizes["ood"] * num_ood) * final) * settings
    disk["evaluations"] = evaluated * 300   # one outcome line per question
    return Cost(runs, loads, programs, disk)


def answer_rows(config: RunConfig, sweep: Sweep, sizes: Mapping[str, int]) -> int:
    """Answers the sample stage generates for one setting: 1 + M per validation question
    and per training question a method samples fully; with probe methods, 1 + M per SE
    subset question and 1 per other training question (se_jax/pipeline/sep_flow.py)."""
    full = config.sampling.num_samples + 1
    rows = sizes["val"] * full
    if needs_full_train(sweep.methods):
        rows += sizes["train"] * full
    if any(sep_backend(m) for m in sweep.methods):
        subset = min(config.labels.sep.train_size, sizes["train"])
        rows += subset * full + (sizes["train"] - subset)
    return rows


def describe(cost: Cost) -> str:
    lines = [f"cost: {cost.training_runs} fine-tuning runs on one resident base model; "
             f"{cost.model_loads} model load(s) per process",
             "programs to compile (each once per process and shape, whatever the runs):"]
    lines += [f"  {name}: <= {n}" for name, n in cost.programs.items()]
    total = sum(cost.disk_bytes.values())
    lines.append(f"disk: ~{total / 2**20:.0f} MiB (" + ", ".join(
        f"{k} {v / 2**20:.1f} MiB" for k, v in cost.disk_bytes.items()) + ")")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- memory

_GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Target:
    """The hardware a dry run plans for: hosts x devices per host, memory per device."""
    name: str
    hosts: int
    devices_per_host: int
    memory_gib: float | None      # None: unknown (a CPU)

    @property
    def devices(self) -> int:
        return self.hosts * self.devices_per_host


# What `--target` names (HBM per chip: TPU v4 32 GiB, v5e 16 GiB; H100 80 GB; A100 80 GB).
TARGETS = {t.name: t for t in (
    Target("v4-8", 1, 4, 32.0), Target("v4-32", 4, 4, 32.0),
    Target("v5e-8", 1, 8, 16.0), Target("v5e-32", 8, 4, 16.0),
    Target("h100x1", 1, 1, 79.6), Target("h100x8", 1, 8, 79.6),
    Target("a100x8", 1, 8, 79.6))}


def local_target() -> Target:
    """This machine: its processes' devices and, where the backend says, their memory."""
    import jax
    devices = jax.local_devices()
    stats = getattr(devices[0], "memory_stats", lambda: None)() or {}
    limit = stats.get("bytes_limit")
    return Target(f"this machine ({len(devices)} {devices[0].platform} device(s) per "
                  f"process, {jax.process_count()} process(es))", jax.process_count(),
                  len(devices), limit / _GIB if limit else None)


def mesh_axes(config: RunConfig, devices: int) -> dict[str, int]:
    """config.mesh resolved over `devices` (the -1 axis takes the rest); ConfigError when
    the sizes do not fit."""
    axes = config.mesh.axes()
    n = config.mesh.num_devices or devices
    if n > devices:
        raise ConfigError(f"config.mesh.num_devices={n}: the target has {devices} devices")
    known = math.prod(v for v in axes.values() if v != -1)
    if -1 in axes.values():
        if n % known:
            raise ConfigError(f"config.mesh={axes}: {n} devices are not divisible by the "
                              f"fixed axes' product {known}")
        axes = {k: (n // known if v == -1 else v) for k, v in axes.items()}
    if math.prod(axes.values()) != n:
        raise ConfigError(f"config.mesh={axes} needs {math.prod(axes.values())} devices; the "
                          f"target has {n} per mesh")
    return axes


@dataclasses.dataclass(frozen=True)
class Memory:
    """Per-device bytes of each resident part, the device's memory, and the mesh; a
    separate evaluation judge's own stage (`judge_parts`: the generator released) apart."""
    target: Target
    mesh: dict[str, int]
    parts: dict[str, int]
    notes: tuple[str, ...]
    judge_parts: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    @property
    def judge_total(self) -> int:
        return sum(self.judge_parts.values())

    def over(self) -> str | None:
        """What exceeds a device's memory and what to do, in one line; None when it fits."""
        cap = self.target.memory_gib
        if not cap:
            return None
        for name, parts, total, advice in (
                ("the plan", self.parts, self.total,
                 f"mesh {self.mesh}: shard more (config.mesh.tensor / fsdp) or use smaller "
                 f"sampling / evaluation batches"),
                ("the judge stage", self.judge_parts, self.judge_total,
                 "it uses every device of every host: more devices, or a smaller "
                 "evaluation.judge_batch_size")):
            if total > cap * _GIB:
                listed = ", ".join(f"{k} {v / _GIB:.1f}" for k, v in parts.items())
                return (f"{name} needs {total / _GIB:.1f} GiB per device ({listed}) on "
                        f"{self.target.name}, whose devices hold {cap:.1f} GiB ({advice})")
        return None


def _bytes(dtype: str) -> int:
    return 2 if precision.resolve_dtype(dtype) == "bfloat16" else 4


def _kv_bytes_per_token(shapes: LlamaConfig, dtype: str) -> int:
    """Keys and values of one token over every layer, in `dtype`."""
    return (2 * shapes.num_hidden_layers * shapes.num_key_value_heads * shapes.head_dim
            * _bytes(dtype))


def memory(config: RunConfig, sweep: Sweep, target: Target) -> Memory | None:
    """Per-device memory of the generator's weights, its KV caches (sampler and greedy
    evaluation), the largest run's optimizer state (float32 master copy and Adam moments
    of whatever a run trains: precision.py) and a separate entropy judge's weights; a
    separate evaluation judge alone in its stage (its weights and KV cache over every
    device of the slice: se_jax/pipeline/judge_stage.py); None when the model's shapes cannot be
    read. ConfigError when the mesh does not fit the target or a
    batch size does not divide the batch shards.

    The experiment builds its mesh over each host's own devices (every host runs the whole
    job on its share of the slice), so the mesh is resolved over `devices_per_host`.
    Approximate: weights divide by fsdp x tensor, the KV cache by the batch shards and the
    KV heads' tensor shards; activations and XLA's scratch are not counted."""
    shapes = read_shapes(str(config.model.path))
    if shapes is None:
        return None
    axes = mesh_axes(config, target.devices_per_host)
    batch_shards = axes["data"] * axes["fsdp"]
    model_shards = axes["fsdp"] * axes["tensor"]
    tc, sc, ev = config.training, config.sampling, config.evaluation
    if tc.batch_size % batch_shards:
        raise ConfigError(f"config.training.batch_size={tc.batch_size} is not divisible by "
                          f"the {batch_shards} batch shards (mesh {axes} on {target.name}); "
                          f"choose a multiple of {batch_shards} or change config.mesh")
    specs = param_specs(shapes)
    total = sum(math.prod(s.hf_shape) for s in specs)
    weights = total * _bytes(config.model.param_dtype) // model_shards
    kv_token = _kv_bytes_per_token(shapes, config.model.dtype)
    kv_split = batch_shards * min(axes["tensor"], shapes.num_key_value_heads)

    def rows(prompts: int, per_prompt: int) -> int:
        return -(-prompts // batch_shards) * batch_shards * per_prompt
    sample_rows = rows(sc.batch_size, sc.num_samples + 1)
    eval_rows = rows(ev.batch_size, 1)
    kv = max(sample_rows, eval_rows) * config.model.max_seq_len * kv_token // kv_split
    adapter = (_model_numbers(config) or (0, 0))[0]
    # (trainable parameters, float32 copies): the float32 master (or the parameter) and
    # Adam's two moments; a self-distilled LoRA run also keeps its teacher's adapters.
    runs = [({"lora": adapter, "full": total}.get(tc.mode, 0),
             3 + bool(tc.distill.enabled or "self_distill" in sweep.arms))]
    if "attention_only" in sweep.arms or tc.mode == "attention":
        runs.append((sum(math.prod(s.hf_shape) for s in specs if "self_attn" in s.hf_name), 3))
    trainable, copies = max(runs, key=lambda r: r[0] * r[1])
    optimizer = trainable * copies * _F32 // model_shards
    parts = {"weights": weights, "KV cache": kv, "optimizer state": optimizer}
    notes = [f"mesh {axes} over each host's {target.devices_per_host} device(s); batch "
             f"shards {batch_shards}; sampler {sample_rows} rows ({sc.batch_size} prompts x "
             f"{sc.num_samples + 1}), evaluation {eval_rows} rows, {config.model.max_seq_len} "
             f"tokens each; optimizer: {trainable / 1e6:.1f}M trainable x {copies} float32 "
             f"copies (largest run)"]
    if target.hosts > 1:
        notes.append(f"each of the {target.hosts} hosts works on its own "
                     f"{target.devices_per_host} devices: sample, entropy and evaluate shards "
                     f"and the sweep's runs are spread over the hosts")
    stage: dict[str, int] = {}
    for who, path in (("evaluation judge", ev.judge_model if ev.judge == "llm" else ""),
                      ("entropy judge", config.entropy.judge_model if any(
                          m == "se_llm_judge" for m in sweep.methods) else "")):
        if not path or same_model(path, config.model.path):
            continue
        js = read_shapes(path)
        if js is None:
            notes.append(f"{who} {path}: shapes unreadable, not counted")
            continue
        jt = sum(math.prod(s.hf_shape) for s in param_specs(js))
        if who == "entropy judge":   # loaded beside the resident generator
            parts[f"{who} weights ({jt / 1e9:.0f}B)"] = (
                jt * _bytes(config.model.dtype) // model_shards)
            continue
        # Its own stage: weights over all devices (fsdp over hosts x tensor over each
        # host's devices), items over the hosts, KV heads over the tensor axis.
        judge_rows = -(-ev.judge_batch_size // target.hosts)
        stage[f"judge weights ({jt / 1e9:.0f}B)"] = (jt * _bytes(config.model.dtype)
                                                     // target.devices)
        stage["judge KV cache"] = (judge_rows * config.model.max_seq_len
                                   * _kv_bytes_per_token(js, config.model.dtype)
                                   // min(target.devices_per_host, js.num_key_value_heads))
    return Memory(target, axes, parts, tuple(notes), stage)


def describe_memory(mem: Memory) -> str:
    cap = mem.target.memory_gib
    lines = [f"memory per device on {mem.target.name} ({mem.target.hosts} host(s) x "
             f"{mem.target.devices_per_host} device(s), "
             + (f"{cap:.1f} GiB each):" if cap else "memory unknown):")]
    lines += [f"  {k}: {v / _GIB:.2f} GiB" for k, v in mem.parts.items()]
    total = mem.total / _GIB
    verdict = ("" if cap is None else
               f" of {cap:.1f} GiB: fits" if total <= cap else f" of {cap:.1f} GiB: DOES NOT FIT")
    lines.append(f"  total: {total:.2f} GiB{verdict} (activations and XLA scratch not "
                 f"counted)")
    if mem.judge_parts:
        stage = mem.judge_total / _GIB
        lines.append(f"  judge stage (alone over all {mem.target.devices} devices, the "
                     f"generator released): " + ", ".join(
            f"{k} {v / _GIB:.2f} GiB" for k, v in mem.judge_parts.items())
            + f"; total {stage:.2f} GiB" + ("" if cap is None else
                                             " (fits)" if stage <= cap else " DOES NOT FIT"))
    lines += [f"  {n}" for n in mem.notes]
    return "\n".join(lines)
