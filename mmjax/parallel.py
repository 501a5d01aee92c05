"""Device mesh and shardings.

The mesh has up to three axes, named in `config.parallel.mesh` ("data:-1", "data:2,fsdp:4",
"data:2,fsdp:2,tensor:2"): the batch is split over `data` and `fsdp` together; parameters (and their
optimizer state, moving averages and LoRA factors) are split by `config.parallel.rules`, regexes over the
parameter path with one mesh axis (or none) per dimension, then by the default: tensor parallelism for
attention and MLP kernels (`TENSOR_RULES`, Megatron's column / row split) and, for every leaf of at least
`config.parallel.min_shard_size` elements, its largest dimension that `fsdp` divides over `fsdp`. An axis
the mesh lacks is dropped from a spec, so one set of rules serves every mesh; with `data` alone every
parameter is replicated.
"""

import math
import re
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXES = ("data", "fsdp", "tensor")  # mesh axes, outermost first
BATCH_AXES = ("data", "fsdp")  # the batch is split over these together
DEFAULT_MESH = "data:-1"
DEFAULT_MIN_SHARD_SIZE = 2**14  # elements: smaller leaves stay replicated

# Megatron-style tensor parallelism, as specs of a leaf's trailing dimensions (leading scan / layer dims
# whole): attention query/key/value column-split (over heads), its output row-split; MLP fc1 column-split,
# fc2 row-split. The other dimension of each kernel goes over `fsdp`.
TENSOR_RULES = (
    (r"(query|key|value)/kernel$", ("fsdp", "tensor", None)),  # [in, heads, head_dim]
    (r"(query|key|value)/bias$", ("tensor", None)),  # [heads, head_dim]
    (r"attn/out/kernel$", ("tensor", None, "fsdp")),  # [heads, head_dim, out]
    (r"mlp/fc1/kernel$", ("fsdp", "tensor")),  # [in, hidden]
    (r"mlp/fc1/bias$", ("tensor",)),
    (r"mlp/fc2/kernel$", ("tensor", "fsdp")),  # [hidden, out]
)

Spec = tuple[str | None, ...]


def parse_mesh(spec: str, device_count: int) -> dict[str, int]:
    """`"data:2,fsdp:-1"` -> {"data": 2, "fsdp": device_count // 2}, axes in AXES order. One size may be -1
    (the remaining devices); the sizes must multiply to device_count."""
    where = f"parallel.mesh={spec!r}"
    sizes = {}
    for part in spec.replace(" ", "").split(","):
        name, sep, size = part.partition(":")
        if name not in AXES or not sep:
            raise ValueError(f"{where}: {part!r} is not AXIS:SIZE with AXIS one of {AXES}")
        if name in sizes:
            raise ValueError(f"{where}: axis {name!r} appears twice")
        try:
            sizes[name] = int(size)
        except ValueError:
            raise ValueError(f"{where}: the size of axis {name!r} is {size!r}, not an integer") from None
        if sizes[name] == 0 or sizes[name] < -1:
            raise ValueError(f"{where}: the size of axis {name!r} must be positive or -1 (the rest)")
    free = [name for name, size in sizes.items() if size == -1]
    if len(free) > 1:
        raise ValueError(f"{where}: only one axis may take the remaining devices (-1), not {free}")
    fixed = math.prod(size for size in sizes.values() if size > 0)
    if free:
        if device_count % fixed:
            raise ValueError(
                f"{where}: the fixed axes ({fixed} devices) do not divide the {device_count} devices, "
                f"so axis {free[0]!r} cannot take the rest"
            )
        sizes[free[0]] = device_count // fixed
    elif fixed != device_count:
        raise ValueError(f"{where}: the axes make {fixed} devices, but there are {device_count}")
    return {name: sizes[name] for name in AXES if name in sizes}


def make_mesh(devices: Sequence[jax.Device] | None = None, spec: str = DEFAULT_MESH) -> Mesh:
    """The mesh of `spec` (see parse_mesh; default all `data`) over the given devices (default: every
    device of every process), laid out for the hardware's interconnect."""
    devices = list(devices if devices is not None else jax.devices())
    sizes = parse_mesh(spec, len(devices))
    shape = tuple(sizes.values())
    try:
        grid = mesh_utils.create_device_mesh(shape, devices, allow_split_physical_axes=True)
    except (AssertionError, NotImplementedError, ValueError):  # e.g. a subset of a TPU slice
        grid = np.asarray(devices).reshape(shape)
    return Mesh(grid, tuple(sizes))


def mesh_spec(config: ml_collections.ConfigDict) -> str:
    return config.get("parallel", {}).get("mesh", DEFAULT_MESH)


def batch_axes(mesh: Mesh) -> tuple[str, ...]:
    return tuple(axis for axis in BATCH_AXES if axis in mesh.axis_names)


def batch_shards(mesh: Mesh) -> int:
    """How many pieces the batch is split into: the product of the batch axes' sizes."""
    return math.prod(mesh.shape[axis] for axis in batch_axes(mesh))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over `data` and `fsdp`; other axes whole (and replicated over `tensor`)."""
    return NamedSharding(mesh, PartitionSpec(batch_axes(mesh)))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def check_batch_size(batch_size: int, mesh: Mesh, field: str = "data.batch_size") -> None:
    """Fail early, naming the config field, when a global batch cannot be split evenly."""
    shards = batch_shards(mesh)
    if batch_size % shards:
        axes = " x ".join(f"{axis}:{mesh.shape[axis]}" for axis in batch_axes(mesh))
        raise ValueError(
            f"{field}={batch_size} is not divisible by the {shards} batch shards of the mesh ({axes})"
        )


def to_global(batch: Any, mesh: Mesh) -> Any:
    """Turn this process's numpy batch (its share of the global batch) into sharded global jax arrays."""
    sharding = batch_sharding(mesh)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)


def with_sharding(abstract_tree: Any, sharding: NamedSharding | Any) -> Any:
    """Attach shardings to every leaf of an eval_shape result (plans restores and initialisation):
    one sharding for all leaves, or a tree of them with the same structure."""
    if isinstance(sharding, jax.sharding.Sharding):
        sharding = jax.tree.map(lambda _: sharding, abstract_tree)
    return jax.tree.map(
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract_tree, sharding
    )


def leaf_path(path: Sequence[Any]) -> str:
    """A pytree key path as "params/encoder/layer_0/mlp/fc1/kernel" (dict keys, attributes, indices)."""
    parts = []
    for key in path:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                parts.append(str(getattr(key, attr)))
                break
    return "/".join(parts)


def leaf_spec(
    path: str, shape: Sequence[int], mesh: Mesh, rules: Sequence[tuple[str, Spec]], min_size: int
) -> PartitionSpec:
    """The PartitionSpec of one leaf: the first rule whose regex matches `path` (re.search), else the fsdp
    default; axes the mesh lacks are dropped. A rule's spec names the leaf's trailing dimensions."""
    axes = {axis: size for axis, size in mesh.shape.items() if size > 1}
    for pattern, spec in rules:
        if re.search(pattern, path):
            if len(spec) > len(shape):
                raise ValueError(
                    f"parallel rule {pattern!r}: spec {spec} has more dimensions than {path} {shape}"
                )
            full = (None,) * (len(shape) - len(spec)) + tuple(spec)
            kept = tuple(axis if axis in axes else None for axis in full)
            for axis, size in zip(kept, shape, strict=True):
                if axis is not None and size % axes[axis]:
                    raise ValueError(
                        f"parallel rule {pattern!r}: dimension {size} of {path} {tuple(shape)} is not "
                        f"divisible by mesh axis {axis!r} ({axes[axis]})"
                    )
            return PartitionSpec(*kept)
    fsdp = axes.get("fsdp", 1)
    if fsdp == 1 or math.prod(shape) < min_size:
        return PartitionSpec()
    divisible = [i for i, size in enumerate(shape) if size % fsdp == 0]
    if not divisible:
        return PartitionSpec()
    largest = max(divisible, key=lambda i: shape[i])
    return PartitionSpec(*("fsdp" if i == largest else None for i in range(len(shape))))


def sharding_rules(config: ml_collections.ConfigDict) -> tuple[tuple[str, Spec], ...]:
    """config.parallel.rules (first) then TENSOR_RULES; each rule is (regex, spec), checked."""
    rules = tuple(tuple(rule) for rule in config.get("parallel", {}).get("rules", ()))
    for rule in rules:
        if len(rule) != 2 or not isinstance(rule[0], str):
            raise ValueError(f"parallel.rules: {rule!r} is not (regex over parameter paths, spec)")
        try:
            re.compile(rule[0])
        except re.error as e:
            raise ValueError(f"parallel.rules: {rule[0]!r} is not a regular expression: {e}") from None
        unknown = [axis for axis in rule[1] if axis is not None and axis not in AXES]
        if unknown:
            raise ValueError(f"parallel.rules: {rule[0]!r} names unknown mesh axes {unknown}; known: {AXES}")
    return rules + TENSOR_RULES


def tree_shardings(abstract_tree: Any, mesh: Mesh, config: ml_collections.ConfigDict) -> Any:
    """A NamedSharding per leaf of `abstract_tree` (a train state, variables, ...), by sharding_rules and
    the fsdp default. Leaves that share a parameter's path suffix and shape (its Adam moments, its moving
    average) get the parameter's sharding."""
    rules = sharding_rules(config)
    min_size = config.get("parallel", {}).get("min_shard_size", DEFAULT_MIN_SHARD_SIZE)

    def sharding(path, leaf):
        spec = leaf_spec(leaf_path(path), np.shape(leaf), mesh, rules, min_size)
        return NamedSharding(mesh, spec)

    return jax.tree_util.tree_map_with_path(sharding, abstract_tree)


def nbytes(shape: Sequence[int], dtype: Any) -> int:
    return math.prod(shape) * np.dtype(dtype).itemsize


def bytes_per_device(abstract_tree: Any, shardings: Any) -> tuple[int, int]:
    """(bytes each device holds, bytes it would hold replicated) of a tree of abstract arrays."""
    held = total = 0
    for leaf, sharding in zip(jax.tree.leaves(abstract_tree), jax.tree.leaves(shardings), strict=True):
        total += nbytes(leaf.shape, leaf.dtype)
        held += nbytes(sharding.shard_shape(leaf.shape), leaf.dtype)
    return held, total


def sharding_table(abstract_tree: Any, shardings: Any, mesh: Mesh) -> str:
    """Each leaf's shape, spec and bytes per device, then the totals against the replicated layout."""
    rows = [("path", "shape", "spec", "bytes/device")]
    flat = jax.tree_util.tree_flatten_with_path(abstract_tree)[0]
    for (path, leaf), sharding in zip(flat, jax.tree.leaves(shardings), strict=True):
        per_device = nbytes(sharding.shard_shape(leaf.shape), leaf.dtype)
        split = any(sharding.spec)
        spec = ",".join(str(axis) if axis else "-" for axis in sharding.spec) if split else "replicated"
        rows.append((leaf_path(path), str(tuple(leaf.shape)), spec, f"{per_device:,}"))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)) for row in rows]
    held, total = bytes_per_device(abstract_tree, shardings)
    lines.append(
        f"total per device on mesh {describe(mesh)}: {held:,} bytes; replicated: {total:,} bytes "
        f"({total / max(held, 1):.2f}x)"
    )
    return "\n".join(lines)


def replicated_fraction(abstract_tree: Any, shardings: Any) -> float:
    """The fraction of the tree's bytes that every device holds whole (specs with no mesh axis)."""
    whole = total = 0
    for leaf, sharding in zip(jax.tree.leaves(abstract_tree), jax.tree.leaves(shardings), strict=True):
        size = nbytes(leaf.shape, leaf.dtype)
        total += size
        whole += size if all(axis is None for axis in sharding.spec) else 0
    return whole / max(total, 1)


def describe(mesh: Mesh) -> str:
    """The mesh as its spec, e.g. "data:2,fsdp:4"."""
    return ",".join(f"{axis}:{size}" for axis, size in mesh.shape.items())
