"""All of diffgen's parallelism: one mesh over every device, shardings, multi-host start-up.

Data-parallel training is jax.jit with NamedShardings on this mesh (the compiler inserts the
gradient all-reduce); sharded training-set reductions use jax.shard_map over the same axis.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

DATA_AXIS = 'data'


@functools.lru_cache(maxsize=None)
def get_mesh(num_devices: int | None = None):
    """A 1-D mesh over all devices (or the first num_devices), axis name 'data'."""
    devices = jax.devices()
    if num_devices is not None:
        devices = devices[:num_devices]
    return jax.make_mesh((len(devices),), (DATA_AXIS,), devices=devices,
                         axis_types=(jax.sharding.AxisType.Auto,))


def replicated(mesh):
    """Sharding of an array held whole on every device."""
    return NamedSharding(mesh, P())


def batch_sharded(mesh):
    """Sharding of an array split along its leading (batch) axis over the data axis."""
    return NamedSharding(mesh, P(DATA_AXIS))


def replicate(tree, mesh):
    """Places every leaf of a pytree whole on every device of the mesh."""
    return jax.device_put(tree, replicated(mesh))


def shard_batch(x, mesh):
    """Places x split along its leading axis over the mesh (leading size divisible by it)."""
    n = mesh.devices.size
    if x.shape[0] % n:
        raise ValueError(f'batch of {x.shape[0]} does not split over {n} devices')
    return jax.device_put(x, batch_sharded(mesh))


def pad_to_multiple(x: np.ndarray, multiple: int):
    """Pads the leading axis of x with zeros up to a multiple; returns (padded, n_valid)."""
    n = x.shape[0]
    pad = (-n) % multiple
    if pad:
        x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
    return x, n


def shard_rows(shape, mesh, load_rows):
    """A global array of `shape` split along its leading axis (rows) over the data axis.

    Each process loads only the rows of its own devices: load_rows(start, stop) returns rows
    [start, stop) of the global array (NumPy, any dtype it should keep). A whole host array
    x is placed by shard_rows(x.shape, mesh, lambda start, stop: x[start:stop]). The leading
    size must divide evenly over the mesh.
    """
    n = mesh.devices.size
    if shape[0] % n:
        raise ValueError(f'{shape[0]} rows do not split over {n} devices')

    def load_block(index):
        rows = index[0]
        return load_rows(rows.start or 0, shape[0] if rows.stop is None else rows.stop)

    return jax.make_array_from_callback(tuple(shape), batch_sharded(mesh), load_block)


def gather_replicated(x):
    """Inside jax.shard_map: every device's x stacked along a new leading axis (devices, ...),
    known replicated over the data axis (unlike lax.all_gather, whose result shard_map types
    as varying): a psum of each device's x placed in its own slot of zeros, which is exact."""
    slots = jnp.zeros((jax.lax.axis_size(DATA_AXIS),) + x.shape, x.dtype)
    return jax.lax.psum(slots.at[jax.lax.axis_index(DATA_AXIS)].set(x), DATA_AXIS)
