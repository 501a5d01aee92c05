"""Device mesh and shardings: the batch is split over the `data` axis, parameters are replicated."""

from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D `data` mesh over the given devices (default: every device of every process)."""
    return Mesh(np.asarray(devices if devices is not None else jax.devices()), ("data",))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over `data`; other axes whole."""
    return NamedSharding(mesh, PartitionSpec("data"))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def check_batch_size(batch_size: int, mesh: Mesh, field: str = "data.batch_size") -> None:
    """Fail early, naming the config field, when a global batch cannot be split evenly."""
    if batch_size % mesh.size:
        raise ValueError(f"{field}={batch_size} is not divisible by the {mesh.size} devices of the mesh")


def to_global(batch: Any, mesh: Mesh) -> Any:
    """Turn this process's numpy batch (its share of the global batch) into sharded global jax arrays."""
    sharding = batch_sharding(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)


def with_sharding(abstract_tree: Any, sharding: NamedSharding) -> Any:
    """Attach a sharding to every leaf of an eval_shape result (plans restores and initialisation)."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), abstract_tree)
