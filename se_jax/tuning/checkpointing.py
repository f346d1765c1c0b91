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
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

PyTree = Any


def make_manager(directory: str | os.PathLike, *, save_every: int, keep: int,
                 async_save: bool = True, solo: bool = False) -> ocp.CheckpointManager:
    """A manager that saves on multiples of `save_every` (and on `force`), keeping `keep`.

    `solo`: this process alone (Orbax's single-process mode within a multi-process job),
    for arrays on this process's own devices (a per-process mesh): the default mode
    expects every process to hold a slice of global arrays and rejects host-local ones."""
    multiprocessing = ocp.options.MultiprocessingOptions()
    if solo:   # Orbax does not create the root in this mode
        os.makedirs(os.path.abspath(directory), exist_ok=True)
        pid = jax.process_index()
        multiprocessing = ocp.options.MultiprocessingOptions(
            primary_host=pid, active_processes={pid}, barrier_sync_key_prefix=f"solo{pid}")
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=max(int(save_every), 1), max_to_keep=max(int(keep), 1),
        enable_async_checkpointing=async_save, cleanup_tmp_directories=True, create=not solo,
        multiprocessing_options=multiprocessing)
    manager = ocp.CheckpointManager(os.path.abspath(directory), options=options)
    manager.se_jax_solo = solo   # save/restore go through host numpy arrays (see save)
    return manager


def _solo(manager: ocp.CheckpointManager) -> bool:
    return bool(getattr(manager, "se_jax_solo", False))


def save(manager: ocp.CheckpointManager, step: int, state: PyTree, *,
         force: bool = False) -> bool:
    """Save `state` (a pytree of arrays) at `step` if the policy says so (or `force`)."""
    if _solo(manager):   # Orbax refuses host-local jax.Arrays in a multi-process job
        state = jax.device_get(state)
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
    if _solo(manager):   # numpy on the host, then onto `like`'s devices
        host = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), like)
        restored = manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(host)))
        state = jax.tree.map(lambda r, x: jax.device_put(np.asarray(r, x.dtype), x.sharding),
                             restored.state, like)
        logging.info("checkpoint: restored step %d from %s", step, manager.directory)
        return step, state
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
    if _solo(manager):
        host = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), like)
        restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(item={"params": host}, partial_restore=True)))
        return jax.tree.map(lambda r, x: jax.device_put(np.asarray(r, x.dtype), x.sharding),
                            restored.state["params"], like)
    restore_args = jax.tree.map(
        lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding, global_shape=x.shape,
                                       dtype=x.dtype), like)
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item={"params": like}, restore_args={"params": restore_args}, partial_restore=True)))
    logging.info("checkpoint: restored the parameters of step %d from %s", step,
                 manager.directory)
    return restored.state["params"]
