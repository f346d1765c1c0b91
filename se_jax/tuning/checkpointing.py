"""Training checkpoints with Orbax: save every N steps and at the end, keep the last K.

A checkpoint holds only what training changes: the trainable parameters (the LoRA adapters
in LoRA mode), the optimizer state and, with self-distillation, the teacher snapshot; all as
pure pytrees. Orbax writes each step to a temporary directory and renames it when complete,
so a process killed at any moment leaves only whole checkpoints behind; saves run in the
background (async) while training continues. A run trained alone by one process of several
(on its own devices) checkpoints through `SoloManager` instead: the same layout of whole
step directories, numpy files written by that process.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

PyTree = Any


def make_manager(directory: str | os.PathLike, *, save_every: int, keep: int,
                 async_save: bool = True, solo: bool = False
                 ) -> ocp.CheckpointManager | SoloManager:
    """A manager that saves on multiples of `save_every` (and on `force`), keeping `keep`.

    `solo`: this process alone within a multi-process job, for arrays on its own devices (a
    per-process mesh): `SoloManager` (Orbax's default mode expects every process to hold a
    slice of global arrays and rejects host-local ones; its single-process mode writes
    numpy arrays only on process 0)."""
    if solo:
        return SoloManager(os.path.abspath(directory), max(int(save_every), 1),
                           max(int(keep), 1))
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=max(int(save_every), 1), max_to_keep=max(int(keep), 1),
        enable_async_checkpointing=async_save, cleanup_tmp_directories=True, create=True)
    return ocp.CheckpointManager(os.path.abspath(directory), options=options)


class SoloManager:
    """Checkpoints written by one process of several without Orbax: `<directory>/<step>/`
    holds `arrays.npz` (every leaf's bytes, by key path) and `index.json` (dtype and
    shape per key path), made in a temporary directory and renamed when complete (a kill
    leaves whole checkpoints only); the newest `keep` are kept. Synchronous. The calls
    training makes of Orbax's manager."""

    def __init__(self, directory: str, save_every: int, keep: int):
        self.directory, self.save_every, self.keep = directory, save_every, keep
        os.makedirs(directory, exist_ok=True)

    def all_steps(self) -> list[int]:
        return sorted(int(n) for n in os.listdir(self.directory)
                      if n.isdigit() and os.path.exists(os.path.join(self.directory, n,
                                                                     "index.json")))

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    def should_save(self, step: int) -> bool:
        return step % self.save_every == 0

    def save(self, step: int, state: PyTree, force: bool = False) -> bool:
        if not (force or self.should_save(step)):
            return False
        leaves = {_key(p): np.asarray(jax.device_get(x))
                  for p, x in jax.tree_util.tree_flatten_with_path(state)[0]}
        final = os.path.join(self.directory, str(step))
        tmp = f"{final}.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        np.savez(os.path.join(tmp, "arrays.npz"),
                 **{k: np.ascontiguousarray(v).reshape(-1).view(np.uint8)
                    for k, v in leaves.items()})
        with open(os.path.join(tmp, "index.json"), "w") as f:
            json.dump({k: [v.dtype.name, list(v.shape)] for k, v in leaves.items()}, f)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in self.all_steps()[:-self.keep]:
            shutil.rmtree(os.path.join(self.directory, str(old)), ignore_errors=True)
        return True

    def restore(self, step: int) -> dict[str, np.ndarray]:
        """Key path -> host array of checkpoint `step`."""
        where = os.path.join(self.directory, str(step))
        with open(os.path.join(where, "index.json")) as f:
            index = json.load(f)
        with np.load(os.path.join(where, "arrays.npz")) as data:
            return {k: data[k].view(jnp.dtype(dtype)).reshape(shape)
                    for k, (dtype, shape) in index.items()}

    def wait_until_finished(self) -> None:
        pass

    def close(self) -> None:
        pass


def _key(path) -> str:
    """A pytree key path as one string (dict keys, sequence indices, attribute names)."""
    return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))))
                    for k in path)


def _onto(arrays: Mapping[str, np.ndarray], like: PyTree, prefix: str = "") -> PyTree:
    """Host arrays by key path (SoloManager.restore) in `like`'s structure, dtypes and
    shardings; `prefix`: the key path of `like` within the saved state."""
    leaves, treedef = jax.tree_util.tree_flatten_with_path(like)
    return jax.tree.unflatten(treedef, [
        jax.device_put(np.asarray(arrays[prefix + _key(p)], x.dtype), x.sharding)
        for p, x in leaves])


def save(manager: ocp.CheckpointManager | SoloManager, step: int, state: PyTree, *,
         force: bool = False) -> bool:
    """Save `state` (a pytree of arrays) at `step` if the policy says so (or `force`)."""
    if isinstance(manager, SoloManager):
        saved = manager.save(step, state, force=force)
    else:
        saved = manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state)), force=force)
    if saved:
        logging.info("checkpoint: saving step %d to %s", step, manager.directory)
    return saved


def restore_latest(manager: ocp.CheckpointManager | SoloManager, like: PyTree
                   ) -> tuple[int, PyTree] | None:
    """(step, state) of the newest checkpoint, restored with the shapes, dtypes and
    shardings of `like`; None when there is none."""
    step = manager.latest_step()
    if step is None:
        return None
    if isinstance(manager, SoloManager):
        state = _onto(manager.restore(step), like)
    else:
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
        state = manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract))).state
    logging.info("checkpoint: restored step %d from %s", step, manager.directory)
    return step, state


def restore_latest_params(manager: ocp.CheckpointManager | SoloManager, like: PyTree
                          ) -> PyTree | None:
    """Only the "params" entry of the newest checkpoint (a finished run's weights, without
    its optimizer state), restored with the shapes, dtypes and shardings of `like`."""
    step = manager.latest_step()
    if step is None:
        return None
    if isinstance(manager, SoloManager):
        return _onto(manager.restore(step), like, prefix="params/")
    restore_args = jax.tree.map(
        lambda x: ocp.ArrayRestoreArgs(sharding=x.sharding, global_shape=x.shape,
                                       dtype=x.dtype), like)
    restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
        item={"params": like}, restore_args={"params": restore_args}, partial_restore=True)))
    logging.info("checkpoint: restored the parameters of step %d from %s", step,
                 manager.directory)
    return restored.state["params"]
