"""What an experiment will cost before it runs (`launch/experiment.py --dry_run`): fine-tuning
runs, model loads, XLA programs to compile, and the disk its outputs will take.

Sizes come from the model's config and the LoRA spec (no weight is read): an adapter is
r * (in + out) float32 values per targeted linear; a run's Orbax state holds the trainable
parameters and Adam's two moments (and the distillation teacher); generations take about
`_BYTES_PER_TOKEN` per generated token (text, id and log-probability as JSON).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Mapping

from se_jax.config.schema import RunConfig
from se_jax.pipeline.plan import Sweep
from se_jax.tuning import training
from se_jax.models.hf_names import param_specs
from se_jax.models.loading import load_config, open_checkpoint

_BYTES_PER_TOKEN = 40
_F32 = 4


@dataclasses.dataclass(frozen=True)
class Cost:
    training_runs: int
    model_loads: int
    programs: dict[str, int]      # program family -> upper bound of compilations
    disk_bytes: dict[str, int]    # output kind -> bytes


def _model_numbers(config: RunConfig) -> tuple[int, int] | None:
    """(adapter parameters of one run, all parameters) from the checkpoint's config, or
    None when the config cannot be read without the network."""
    try:
        model_config = load_config(open_checkpoint(str(config.model.path)))
    except (OSError, ValueError, ImportError):
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
    loads = 1 + bool(config.evaluation.judge == "llm" and config.evaluation.judge_model)
    sampled = (sizes["train"] + sizes["val"]) * settings
    # Training batches are padded to multiples of pad_multiple up to the longest sequence.
    shapes = max(1, math.ceil(int(config.model.max_seq_len) / max(int(tc.pad_multiple), 1)))
    programs = {"sampler (M+1 rows: prefill + decode)": 2,
                "greedy evaluation, base model (prefill + decode)": 2,
                "greedy evaluation, fine-tuned models (prefill + decode)": 2,
                "training step (one per padded batch length)": shapes}
    disk = {"generations": sampled * (int(sc.num_samples) + 1) * int(sc.max_new_tokens)
            * _BYTES_PER_TOKEN}
    numbers = _model_numbers(config)
    if numbers is not None:
        adapter, total = numbers
        trainable = adapter if tc.mode == "lora" else total
        copies = 3 + bool(tc.distill.enabled)   # params, Adam mu and nu, teacher
        disk["adapters"] = runs * adapter * _F32 if tc.mode == "lora" else 0
        disk["resume state (Orbax)"] = runs * trainable * copies * _F32 * max(int(tc.keep), 1)
        if tc.export_merged:
            disk["merged checkpoints"] = runs * total * _F32
    final = (len(sweep.methods) + len(sweep.arms)) * len(sweep.seeds) + 1   # + original
    evaluated = (sizes["val"] * (runs // settings + 1)
                 + (sizes["test"] + sizes["ood"] * num_ood) * final) * settings
    disk["evaluations"] = evaluated * 300   # one outcome line per question
    return Cost(runs, loads, programs, disk)


def describe(cost: Cost) -> str:
    lines = [f"cost: {cost.training_runs} fine-tuning runs on one resident base model; "
             f"{cost.model_loads} model load(s) per process",
             "programs to compile (each once per process and shape, whatever the runs):"]
    lines += [f"  {name}: <= {n}" for name, n in cost.programs.items()]
    total = sum(cost.disk_bytes.values())
    lines.append(f"disk: ~{total / 2**20:.0f} MiB (" + ", ".join(
        f"{k} {v / 2**20:.1f} MiB" for k, v in cost.disk_bytes.items()) + ")")
    return "\n".join(lines)
