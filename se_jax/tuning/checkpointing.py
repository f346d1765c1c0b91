"""Training checkpoints with Orbax: save every N steps and at the end, keep the last K.

A checkpoint holds only what training changes: the trainable parameters (the LoRA adapters
in LoRA mode), the optimizer state and, with self-distillation, the teacher snapshot; all as
pure pytrees. Orbax writes each step to a temporary directory and renames it when complete,
so a process killed at any moment leaves only whole checkpoints behind; saves run in the
background (async) while training continues.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging

PyTree = Any


def make_manager(directory: str | os.PathLike, *, save_every: int, keep: int,
                 async_save: bool = True) -> ocp.CheckpointManager:
    """A manager that saves on multiples of `save_every` (and on `force`), keeping `keep`."""
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=max(int(save_every), 1), max_to_keep=max(int(keep), 1),
        enable_async_checkpointing=async_save, cleanup_tmp_directories=True, create=True)
    return ocp.CheckpointManager(os.path.abspath(directory), options=options)


def save(manager: ocp.CheckpointManager, step: int, state: PyTree, *,
         force: bool = False) -> bool:
    """Save `state` (a pytree of arrays) at `step` if the policy says so (or `force`)."""
    saved = manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state)),
                         force=force)
    if saved:
        logging.info("checkpoint: saving step %d to %s", step, manager.directory)
    return saved


def restore_latest(manager: ocp.CheckpointManager, like: PyTree) -> tuple[int, PyTree] | None:
    """(step, state) of the newest checkpoint, restored with the shapes, dtypes and
    shardings of `like`; None when there is none."""
    step = manager.latest_step()
    if step is None:
        return None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    restored = manager.restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
    logging.info("checkpoint: restored step %d from %s", step, manager.directory)
    return step, restored.state


def restore_latest_params(manager: ocp.CheckpointManager, like: PyTree) -> PyTree | None:
    """Only the "params" entry of the newest checkpoint (a finished run's weights, without
    its optimizer state), restored with the shapes, dtypes and shardings of `like`."""
    step = manager.latest_step()
    if step is None:
        return None
    restore_args = jax.tree.map(
        lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding, global_shape=x.shape,
                                       dtype=x.dtype), like)
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item={"params": like}, restore_args={"params": restore_args}, partial_restore=True)))
    logging.info("checkpoint: restored the parameters of step %d from %s", step,
                 manager.directory)
    return restored.state["params"]
