"""Device mesh and the logical-axis -> mesh-axis rules, kept in one place.

Model parameters carry `logical_axes` metadata (e.g. q_proj.kernel: ("embed", "heads"));
activations and caches name theirs where they are built. `ShardingRules` maps each logical
name to mesh axes (or None = replicated). The mesh has axes (data, fsdp, tensor):

    data    pure data parallelism: batch split, parameters replicated
    fsdp    batch split and parameters sharded along "embed" (ZeRO-3 style; XLA all-gathers)
    tensor  Megatron-style: heads, MLP hidden and vocab split

    mesh = make_mesh(config.mesh)                 # {"data": -1, "fsdp": 1, "tensor": 1}
    shard_model(model, mesh, ShardingRules())     # in place
    x = jax.device_put(tokens, batch_sharding(mesh, ShardingRules()))

A dimension that the mapped mesh axes do not divide is replicated instead (e.g. 3 kv heads on
tensor=2), so any checkpoint runs on any mesh; the cost is memory, never correctness.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from se_jax.config.schema import MeshConfig
from se_jax.parallel import distributed

MESH_AXES = ("data", "fsdp", "tensor")
MeshAxes = str | tuple[str, ...] | None


def make_mesh(mesh_config: MeshConfig | Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A Mesh over `devices` (default: all, every process) with axes (data, fsdp, tensor).

    `mesh_config` gives each axis size; at most one may be -1 (= the remaining devices).
    Its optional `num_devices` (0 = all) keeps only the first N of those devices: one
    process on part of its host, e.g. a small job on one of the tests' 8 simulated CPUs.
    """
    if isinstance(mesh_config, MeshConfig):
        mesh_config = dataclasses.asdict(mesh_config)
    devices = list(jax.devices() if devices is None else devices)
    count = int(mesh_config.get("num_devices", 0))
    if count:
        if count > len(devices):
            raise ValueError(f"mesh.num_devices={count}: only {len(devices)} devices")
        if jax.process_count() > 1:   # the first N would all sit on process 0
            raise ValueError("mesh.num_devices is a single-process option; with several "
                             "processes set the axis sizes instead")
        devices = devices[:count]
    mesh_config = {k: v for k, v in mesh_config.items() if k != "num_devices"}
    unknown = set(mesh_config) - set(MESH_AXES)
    if unknown:
        raise ValueError(f"mesh config has unknown axes {sorted(unknown)}; axes are {MESH_AXES}")
    sizes = [int(mesh_config.get(a, 1)) for a in MESH_AXES]
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh config {dict(mesh_config)}: at most one axis may be -1")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(f"mesh config {dict(mesh_config)}: {len(devices)} devices are not "
                             f"divisible by the fixed axes' product {known}")
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise ValueError(f"mesh config {dict(mesh_config)} needs {math.prod(sizes)} devices, "
                         f"have {len(devices)}")
    try:  # topology-aware device order on TPU/GPU slices
        from jax.experimental import mesh_utils
        grid = mesh_utils.create_device_mesh(sizes, devices)
    except Exception:  # CPU / unusual topologies: plain order is fine
        grid = np.asarray(devices).reshape(sizes)
    return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


@dataclasses.dataclass(frozen=True)
class ShardingRules:
    """Logical axis name -> mesh axes. The one table every sharding in se_jax comes from."""
    batch: MeshAxes = ("data", "fsdp")
    seq: MeshAxes = None
    vocab: MeshAxes = "tensor"
    embed: MeshAxes = "fsdp"
    heads: MeshAxes = "tensor"
    kv_heads: MeshAxes = "tensor"
    head_dim: MeshAxes = None
    mlp: MeshAxes = "tensor"
    norm: MeshAxes = None
    cache_seq: MeshAxes = None
    lora_rank: MeshAxes = None

    def mesh_axes(self, logical: str | None) -> MeshAxes:
        if logical is None:
            return None
        if not hasattr(self, logical):
            raise KeyError(f"no sharding rule for logical axis {logical!r}")
        return getattr(self, logical)

    def spec(self, logical_axes: Sequence[str | None], shape: Sequence[int] | None = None,
             mesh: Mesh | None = None) -> PartitionSpec:
        """PartitionSpec for an array with these logical axes. With `shape` and `mesh`, a
        dimension the mesh axes do not divide is replicated; axes of size 1 are dropped."""
        out, used = [], set()
        for i, name in enumerate(logical_axes):
            axes = self.mesh_axes(name)
            axes = (axes,) if isinstance(axes, str) else tuple(axes or ())
            axes = tuple(a for a in axes if a not in used)  # a mesh axis shards one dim only
            if mesh is not None:
                axes = tuple(a for a in axes if mesh.shape[a] > 1)
                if shape is not None and shape[i] % math.prod(mesh.shape[a] for a in axes):
                    axes = ()
            used.update(axes)
            out.append(axes[0] if len(axes) == 1 else (axes or None))
        return PartitionSpec(*out)


def logical_sharding(mesh: Mesh, rules: ShardingRules, logical_axes: Sequence[str | None],
                     shape: Sequence[int] | None = None) -> NamedSharding:
    """NamedSharding of an array with the given logical axes (and optionally its shape)."""
    return NamedSharding(mesh, rules.spec(logical_axes, shape, mesh))


def variable_sharding(var: nnx.Variable, mesh: Mesh, rules: ShardingRules) -> NamedSharding:
    """Sharding of one nnx Variable from its `logical_axes` metadata (replicated if none)."""
    axes = var.get_metadata("logical_axes", None) or (None,) * len(var.shape)
    return logical_sharding(mesh, rules, axes, var.shape)


def state_shardings(state: nnx.State, mesh: Mesh, rules: ShardingRules) -> nnx.State:
    """A State of NamedShardings with the structure of `state` (concrete or abstract)."""
    return jax.tree.map(lambda v: variable_sharding(v, mesh, rules), state,
                        is_leaf=lambda x: isinstance(x, nnx.Variable))


def shard_model(model: nnx.Module, mesh: Mesh, rules: ShardingRules) -> nnx.Module:
    """Place every variable of `model` on `mesh` by the rules (in place); returns `model`."""
    state = nnx.state(model)
    nnx.update(model, jax.device_put(state, state_shardings(state, mesh, rules)))
    if hasattr(model, "mesh_rules"):  # the decoder pins its activations to the same mesh
        model.mesh_rules = (mesh, rules)
    return model


def batch_sharding(mesh: Mesh, rules: ShardingRules, ndim: int = 2) -> NamedSharding:
    """Sharding of a data-parallel input [B, ...]: batch split, other dims replicated.
    B must be a multiple of `batch_shards` (pad with all-padding rows, positions -1)."""
    return logical_sharding(mesh, rules, ("batch",) + (None,) * (ndim - 1))


def batch_shards(mesh: Mesh | None, rules: ShardingRules) -> int:
    """How many ways the batch axis is split: batch sizes must be a multiple of this (1
    without a mesh; rule axes the mesh lacks do not split it)."""
    if mesh is None:
        return 1
    axes = rules.batch if isinstance(rules.batch, tuple) else (rules.batch,)
    return math.prod(mesh.shape[a] for a in axes if a and a in mesh.shape)


def process_local(mesh: Mesh | None) -> bool:
    """Whether every device of `mesh` belongs to this process (no cross-host collective):
    then several processes each compute their own share of a stage's shards."""
    return mesh is None or all(d.process_index == jax.process_index()
                               for d in mesh.devices.flat)


def my_shards(pending: Sequence[int]) -> list[int]:
    """The shards of `pending` this process computes when work is spread over processes:
    shard i is process i % P's (the same split whatever each process's `pending` saw);
    all of them inside `distributed.alone()`."""
    return [i for i in pending
            if i % distributed.group_size() == distributed.group_index()]


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


__all__ = ["MESH_AXES", "make_mesh", "ShardingRules", "logical_sharding", "variable_sharding",
           "state_shardings", "shard_model", "batch_sharding", "batch_shards", "replicated"]
