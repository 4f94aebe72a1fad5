"""All of diffgen's parallelism: one mesh over every device, shardings, multi-host start-up.

Data-parallel training is jax.jit with NamedShardings on this mesh (the compiler inserts the
gradient all-reduce); sharded training-set reductions use jax.shard_map over the same axis.

Several processes (a TPU pod's hosts, or processes started by hand) share one global mesh
after `initialize()`. The training set is a global array of rows sharded over that mesh:
each process holds only the rows of its own devices (`process_rows`), and a batch is
gathered from it inside jit by global row index (`gather_rows`), so the batch drawn at a
step is the same whatever the number of devices or processes.
"""
from __future__ import annotations

import functools
import os

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec as P

DATA_AXIS = 'data'

# Explicit multi-process settings (all three, or none): the coordinator's host:port, the
# number of processes and this process's index in 0..num_processes-1.
COORDINATOR_ENV = 'DIFFGEN_COORDINATOR'
NUM_PROCESSES_ENV = 'DIFFGEN_NUM_PROCESSES'
PROCESS_ID_ENV = 'DIFFGEN_PROCESS_ID'
# 'auto': let jax.distributed detect the cluster (TPU pod, Slurm, Open MPI); 'off': one
# process even on a pod host. Unset: auto on a multi-host TPU VM (TPU_WORKER_HOSTNAMES lists
# several hosts), else one process.
DISTRIBUTED_ENV = 'DIFFGEN_DISTRIBUTED'


# The index a launcher gives each process before jax.distributed runs (read for output only)
LAUNCHER_INDEX_ENVS = (PROCESS_ID_ENV, 'SLURM_PROCID', 'CLOUD_TPU_TASK_ID')


def process_index(environ=None):
    """This process's index: jax.process_index() once jax.distributed runs; before that
    (or without it), the index its launcher declared (LAUNCHER_INDEX_ENVS), else 0. Touches
    no device, so it may run before initialize()."""
    if jax.distributed.is_initialized():
        return jax.process_index()
    env = os.environ if environ is None else environ
    declared = next((env[k] for k in LAUNCHER_INDEX_ENVS if env.get(k, '').isdigit()), '0')
    return int(declared)


def initialize(environ=None):
    """Starts jax.distributed when this is one of several processes; returns whether it did.

    Must run before anything touches a JAX device. Explicit settings come from
    $DIFFGEN_COORDINATOR, $DIFFGEN_NUM_PROCESSES and $DIFFGEN_PROCESS_ID; otherwise a TPU
    pod is detected (see DISTRIBUTED_ENV) and JAX reads the rest from the TPU metadata.
    A second call does nothing.
    """
    env = os.environ if environ is None else environ
    if jax.distributed.is_initialized():
        return True
    explicit = [env.get(k) for k in (COORDINATOR_ENV, NUM_PROCESSES_ENV, PROCESS_ID_ENV)]
    if any(explicit):
        if not all(explicit):
            raise ValueError(f'set all of ${COORDINATOR_ENV}, ${NUM_PROCESSES_ENV} and '
                             f'${PROCESS_ID_ENV}, or none')
        coordinator, num_processes, process_id = explicit
        jax.distributed.initialize(coordinator_address=coordinator,
                                   num_processes=int(num_processes),
                                   process_id=int(process_id))
        return True
    mode = env.get(DISTRIBUTED_ENV, '')
    if mode not in ('', 'auto', 'off'):
        raise ValueError(f'${DISTRIBUTED_ENV}={mode!r} is not auto or off')
    pod_hosts = [h for h in env.get('TPU_WORKER_HOSTNAMES', '').split(',') if h]
    if mode == 'auto' or (mode == '' and len(pod_hosts) > 1):
        jax.distributed.initialize()
        return True
    return False


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


@flax.struct.dataclass
class PaddedRows:
    """A global array split along its leading axis (rows) over the data axis, with zero rows
    added to make a multiple of the device count: only rows[:num_rows] are data."""
    rows: jax.Array
    num_rows: int = flax.struct.field(pytree_node=False)


def padded_rows(num_rows, mesh):
    """num_rows rounded up to a multiple of the mesh's device count."""
    return -(-num_rows // mesh.devices.size) * mesh.devices.size


def process_rows(num_rows, mesh):
    """(start, stop): the rows of a PaddedRows of num_rows rows that this process's
    devices hold, in global row numbers (stop may pass num_rows: those rows are padding)."""
    padded = padded_rows(num_rows, mesh)
    blocks = sorted((s[0].start or 0, padded if s[0].stop is None else s[0].stop) for s in
                    batch_sharded(mesh).addressable_devices_indices_map((padded,)).values())
    if any(a[1] != b[0] for a, b in zip(blocks, blocks[1:])):
        raise ValueError("this process's devices do not hold one contiguous block of rows")
    return blocks[0][0], blocks[-1][1]


def shard_process_rows(local_rows, num_rows, mesh):
    """The PaddedRows of num_rows rows assembled from every process's own rows:
    local_rows = rows[start:min(stop, num_rows)] for (start, stop) = process_rows(num_rows,
    mesh). Every process calls it; padding rows are added here."""
    start, stop = process_rows(num_rows, mesh)
    local_rows = np.asarray(local_rows)
    expected = max(min(stop, num_rows) - start, 0)
    if local_rows.shape[0] != expected:
        raise ValueError(f'process {jax.process_index()} holds rows [{start}, {stop}) of '
                         f'{num_rows}: expected {expected} local rows, got {local_rows.shape[0]}')
    block = np.zeros((stop - start,) + local_rows.shape[1:], local_rows.dtype)
    block[:expected] = local_rows
    rows = jax.make_array_from_process_local_data(
        batch_sharded(mesh), block, (padded_rows(num_rows, mesh),) + block.shape[1:])
    return PaddedRows(rows, num_rows)


def gather_rows(rows, indices, mesh):
    """rows[indices] split along the batch axis over the mesh, inside jit: rows (N_pad, ...)
    sharded over the data axis, indices (B,) replicated, B divisible by the device count.

    Each device takes the requested rows it holds (zeros for the others) and a psum_scatter
    sums the devices' contributions and hands each device its own part of the batch. Every
    sum has one non-zero term (integer rows are summed as int32), so the batch is exact.
    """
    def local(block, indices):
        start = jax.lax.axis_index(DATA_AXIS) * block.shape[0]
        offset = indices - start
        mine = (offset >= 0) & (offset < block.shape[0])
        picked = block[jnp.clip(offset, 0, block.shape[0] - 1)]
        wide = jnp.int32 if jnp.issubdtype(block.dtype, jnp.integer) else block.dtype
        picked = jnp.where(mine.reshape((-1,) + (1,) * (block.ndim - 1)), picked, 0)
        summed = jax.lax.psum_scatter(picked.astype(wide), DATA_AXIS, tiled=True)
        return summed.astype(block.dtype)

    return jax.shard_map(local, mesh=mesh, in_specs=(P(DATA_AXIS), P()),
                         out_specs=P(DATA_AXIS))(rows, indices)


def to_host(x):
    """A global array as one NumPy array on every process (all-gathered across processes
    when its shards live on several)."""
    if x.is_fully_addressable or x.is_fully_replicated:
        return np.asarray(x)
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def multi_process() -> bool:
    """Whether this program runs as several processes (a pod's hosts)."""
    return jax.process_count() > 1


def any_process(flag: bool) -> bool:
    """Whether flag is true on any process (every process must call it, at the same point)."""
    if not multi_process():
        return flag
    return bool(np.any(multihost_utils.process_allgather(np.array(flag))))
