"""All of diffgen's parallelism: one mesh over every device, shardings, multi-host start-up.

Data-parallel training is jax.jit with NamedShardings on this mesh (the compiler inserts the
gradient all-reduce); sharded training-set reductions use jax.shard_map over the same axis.
"""
from __future__ import annotations

import functools

import jax
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
