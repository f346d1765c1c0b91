"""One base model per process, shared by every fine-tuning run of a sweep.

    base = Resident.load(config.model, mesh)            # the only load of the generator
    model = base.run_model(config.training, seed=0)      # fresh adapters, shared weights
    ... train `model`, evaluate it, drop it ...

`run_model` clones the base's graph (no weight is copied: the clone's Variables hold the
base's arrays) and, in LoRA mode, adds fresh adapters keyed by the seed. Every run's model
therefore has the same graph, so the jitted sampler and training step, which take the
graph as a static argument and the parameters as arguments, compile once per process and
shape, whatever the number of runs. Training never writes into the base: the trainable
parameters are copied before the (donating) step (se_jax/tuning/training.py) and the run's model
holds its own Variables.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
from flax import nnx
from jax.sharding import Mesh

from se_jax.config.schema import ModelConfig, TrainingConfig
from se_jax.io.telemetry import Telemetry
from se_jax.parallel import mesh as mesh_lib
from se_jax.models.loading import load_llama, load_tokenizer
from se_jax.tuning import checkpointing, export, lora, training


def free(model: nnx.Module) -> int:
    """Delete every array of `model` now (not when Python lets go of it), so its device
    memory is free at once; returns how many. The module is unusable afterwards, and so is
    every clone sharing its arrays (the runs' models)."""
    arrays = [x for x in jax.tree.leaves(nnx.state(model)) if isinstance(x, jax.Array)]
    for x in arrays:
        x.delete()
    return len(arrays)


@dataclasses.dataclass
class Resident:
    """The base model, its tokenizer and the mesh it lives on (never modified)."""
    path: str
    model: nnx.Module
    tokenizer: Any
    mesh: Mesh

    @classmethod
    def load(cls, model_config: ModelConfig, mesh: Mesh, *, adapter: str = "") -> "Resident":
        """Load `model_config.path` onto `mesh` (counted in the process's telemetry);
        `adapter`: a PEFT adapter directory folded into the weights (e.g. a taught base)."""
        model = load_llama(str(model_config.path), mesh=mesh, dtype=model_config.dtype,
                           param_dtype=model_config.param_dtype,
                           scan_layers=model_config.scan_layers)
        Telemetry.install().count_load()
        if adapter:
            export.load_peft_adapter(model, adapter, merge=True)
        return cls(str(model_config.path), model, load_tokenizer(str(model_config.path)), mesh)

    def run_model(self, training_config: TrainingConfig, seed: int) -> nnx.Module:
        """A model for one run: the base's weights, plus fresh adapters (LoRA mode) drawn
        from `seed`; in train mode."""
        model = nnx.clone(self.model)
        training.prepare_model(model, training_config, seed)
        return model

    def original_model(self, training_config: TrainingConfig) -> nnx.Module:
        """The original model for evaluation, in the graph of the sweep's runs (see
        `in_sweep_graph`)."""
        return self.in_sweep_graph(nnx.clone(self.model), training_config)

    def in_sweep_graph(self, model: nnx.Module, training_config: TrainingConfig) -> nnx.Module:
        """`model` in eval mode and in the graph the sweep's LoRA runs (`training_config`)
        are evaluated with, so it shares their compiled sampler: a model without adapters
        (the original, or an arm fine-tuned without LoRA) gets zero-initialised ones (B = 0,
        so every output is exactly its own: y = x W + 0). Adapters are added in place."""
        if training_config.mode == "lora" and not lora.lora_layers(model):
            training.prepare_model(model, training_config, seed=0)
        model.eval()
        return model

    def restored_run_model(self, training_config: TrainingConfig, seed: int, checkpoints: Path
                           ) -> nnx.Module:
        """The model of a finished run, rebuilt from its last checkpoint (no training)."""
        model = self.run_model(training_config, seed)
        params = training.trainable_state(model, training_config.mode)
        manager = checkpointing.make_manager(
            checkpoints, save_every=1, keep=1, async_save=False,
            solo=jax.process_count() > 1 and mesh_lib.process_local(self.mesh))
        try:
            restored = checkpointing.restore_latest_params(manager, nnx.to_pure_dict(params))
        finally:
            manager.close()
        if restored is None:
            raise FileNotFoundError(f"{checkpoints}: no checkpoint to restore the run from")
        nnx.replace_by_pure_dict(params, restored)
        nnx.update(model, params)
        model.eval()
        return model
