"""The chunked-GEMM core of the empirical-optimal denoiser and the nearest-neighbour search.

A training set S = {y_1 … y_N} is stored once as a row matrix Y (N_pad, D) with the squared
norms n_i = ‖y_i‖² precomputed (of the stored, possibly bfloat16-rounded, rows). A reduction
over S for a batch of queries q (B, D) streams Y in chunks of C rows, in one lax.scan:

    for each chunk c:   G_c = Y_c qᵀ  (C, B; one GEMM, float32 accumulation)
                        state ← step(state, Chunk(G_c, Y_c, n_c, index_c, valid_c), aux)

so the working memory is O(B·C + C·D + B·D) (on CPU XLA copies each chunk out of Y once,
unless there is only one), never O(B·N). N is padded with zero rows to a multiple of
C × devices; padded rows carry valid = False and step must ignore them (a chunk, or a whole
shard, may be all padding).

G_c is kept with the chunk's rows along its first axis, (C, B) rather than (B, C): a step's
second GEMM over the chunk (e.g. pᵀ Y_c with p of G_c's shape) then contracts both operands
along their leading axis. On XLA:CPU this orientation made the empirical optimum at the
CIFAR-10 shape about 1.2-1.4x faster than (B, C) (benchmarks/bench_optimal.py).

Sharded: Y is split along N over the mesh's data axis. Each device scans its own shard (the
indices are global), then `combine(state)` merges the per-shard states with collectives over
DATA_AXIS inside jax.shard_map; the queries are replicated.
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec as P

from diffgen import parallel


class Chunk(NamedTuple):
    """One chunk of the stored rows, as a step sees it."""
    gram: jax.Array       # (C, B) float32, G = Y_c qᵀ: G[j, b] = y_j · q_b
    rows: jax.Array       # (C, D) storage dtype
    sq_norms: jax.Array   # (C,) float32, ‖y_i‖²
    index: jax.Array      # (C,) int32, global row index i
    valid: jax.Array      # (C,) bool, False on padding rows


@flax.struct.dataclass
class ChunkedRows:
    """A training set stored for chunked reductions: its examples as rows (flattened vectors
    in the storage dtype) with their squared norms, padded to whole chunks on every device;
    a pytree whose leaves are the rows and norms."""
    rows: jax.Array                 # (N_pad, D), zero past num_rows; sharded along N on a mesh
    sq_norms: jax.Array             # (N_pad,) float32, ‖y_i‖² of the stored rows
    num_rows: int = flax.struct.field(pytree_node=False)     # N
    chunk_size: int = flax.struct.field(pytree_node=False)   # C
    mesh: Mesh | None = flax.struct.field(pytree_node=False, default=None)

    @property
    def dim(self):
        return self.rows.shape[1]


# The chunk size C where none is given (config.optimal.chunk_size = 0, the library functions'
# chunk_size=None), per JAX platform: the fastest of benchmarks/bench_optimal.py's chunks at
# the CIFAR-10 shape on that device kind. cpu: measured on this project's 2-core x86 machines
# with diffgen's XLA options (docs/performance.md, "The empirical-optimal engine"): one chunk of all
# 50 000 rows ran at 0.77x the two-matmul roofline, 2048 rows at 0.88x and 512 at 1.01x,
# because XLA:CPU copies each chunk out of the stored rows inside the scan and a single chunk
# needs no copy. So on CPU a set of up to 65 536 rows (per device) is one chunk; the logits
# then take B x N x 4 bytes (12.8 MiB for 64 queries on CIFAR-10), and a larger set is
# streamed in chunks of 65 536 rows, each copied once (C x D x 4 bytes). gpu and tpu were not measured here (no such device was lent)
# and keep 2048 until someone runs the benchmark on one.
DEFAULT_CHUNK_SIZES = {'cpu': 65536, 'gpu': 2048, 'tpu': 2048}


def default_chunk_size(platform=None):
    """DEFAULT_CHUNK_SIZES of the platform (default: JAX's default backend)."""
    return DEFAULT_CHUNK_SIZES.get(platform or jax.default_backend(), 2048)


def rows_from_loader(load_rows, num_rows, dim, *, chunk_size=None, storage_dtype=jnp.float32,
                     mesh=None):
    """ChunkedRows of N = num_rows vectors of length dim, read by load_rows(start, stop) ->
    (stop - start, dim) array for start < stop <= N. On a mesh each process reads only its
    own shard.

    Each device gets K = ⌈N / (devices × chunk_size)⌉ chunks of C = ⌈N / (devices × K)⌉ rows,
    rounded up to a multiple of 8 but at most chunk_size: N is padded to devices × K × C,
    fewer than devices × K × 8 extra rows. chunk_size None or 0: default_chunk_size().
    """
    chunk_size = chunk_size or default_chunk_size()
    if num_rows < 1 or chunk_size < 1:
        raise ValueError(f'need num_rows >= 1 and chunk_size >= 1, got {num_rows}, '
                         f'{chunk_size}')
    storage_dtype = jnp.dtype(storage_dtype)
    devices = 1 if mesh is None else mesh.devices.size
    chunks_per_device = -(-num_rows // (devices * chunk_size))
    chunk = min(-(-num_rows // (devices * chunks_per_device * 8)) * 8, chunk_size)
    padded = devices * chunks_per_device * chunk

    def load_padded(start, stop):
        block = np.zeros((stop - start, dim), storage_dtype)
        if start < num_rows:
            block[:min(stop, num_rows) - start] = load_rows(start, min(stop, num_rows))
        return block

    if mesh is None:
        rows = jnp.asarray(load_padded(0, padded))
    else:
        rows = parallel.shard_rows((padded, dim), mesh, load_padded)
    return ChunkedRows(rows, _sq_norms(rows), num_rows, chunk, mesh)


def prepare_rows(train_set, chunk_size=None, storage_dtype=jnp.float32, *, mesh=None):
    """ChunkedRows of a whole training set (N, ...), each example flattened to a vector of
    length D. ChunkedRows are returned as they are (with their own chunk, dtype and mesh)."""
    if isinstance(train_set, ChunkedRows):
        return train_set
    flat = np.asarray(train_set).reshape(len(train_set), -1)
    return rows_from_loader(lambda start, stop: flat[start:stop], flat.shape[0], flat.shape[1],
                            chunk_size=chunk_size, storage_dtype=storage_dtype, mesh=mesh)


@jax.jit
def _sq_norms(rows):
    """n_i = ‖y_i‖², float32 sums of the stored rows."""
    y = rows.astype(jnp.float32)
    return jnp.sum(y * y, axis=1)


def flatten_queries(x, rows):
    """x (B, ...) as float32 vectors (B, D); a clear error when D differs from the rows'."""
    if math.prod(x.shape[1:]) != rows.dim:
        raise ValueError(f'queries of shape {x.shape} do not match training vectors of '
                         f'length {rows.dim}')
    return x.reshape(x.shape[0], rows.dim).astype(jnp.float32)


def scan_chunks(step, state, queries, *, aux, rows, sq_norms, first_index, chunk_size,
                num_rows):
    """Folds step over the chunks of the (local) rows, starting at global index first_index:
    state ← step(state, Chunk, aux), the Chunk's GEMM inputs in the storage dtype."""
    num_chunks = rows.shape[0] // chunk_size
    starts = first_index + chunk_size * jnp.arange(num_chunks, dtype=jnp.int32)
    q = queries.astype(rows.dtype)

    def body(state, xs):
        y, n, start = xs
        index = start + jnp.arange(chunk_size, dtype=jnp.int32)
        g = jax.lax.dot_general(y, q, (((1,), (1,)), ((), ())),
                                preferred_element_type=jnp.float32)
        return step(state, Chunk(g, y, n, index, index < num_rows), aux), None

    xs = (rows.reshape(num_chunks, chunk_size, rows.shape[1]),
          sq_norms.reshape(num_chunks, chunk_size), starts)
    return jax.lax.scan(body, state, xs)[0]


def reduce_rows(rows, step, combine, *, state, queries, aux=()):
    """The reduction of `step` over every stored row of rows (ChunkedRows) for replicated
    queries (B, D), from the initial state.

    One device: the chunk scan. On a mesh: the chunk scan of each device's shard inside
    jax.shard_map, then combine(state), which must make the state equal on every device with
    collectives over parallel.DATA_AXIS. `state` and `aux` are pytrees of replicated arrays.
    """
    scan = functools.partial(scan_chunks, step, chunk_size=rows.chunk_size,
                             num_rows=rows.num_rows)
    if rows.mesh is None:
        return scan(state, queries, aux=aux, rows=rows.rows, sq_norms=rows.sq_norms,
                    first_index=0)

    def shard(row_block, norm_block, state, queries, aux):  # positional: shard_map's in_specs
        first_index = jax.lax.axis_index(parallel.DATA_AXIS) * row_block.shape[0]
        state = jax.tree_util.tree_map(
            lambda v: jax.lax.pcast(v, parallel.DATA_AXIS, to='varying'), state)
        return combine(scan(state, queries, aux=aux, rows=row_block, sq_norms=norm_block,
                            first_index=first_index))

    sharded, whole = P(parallel.DATA_AXIS), P()
    return jax.shard_map(shard, mesh=rows.mesh, in_specs=(sharded, sharded, whole, whole, whole),
                         out_specs=whole)(rows.rows, rows.sq_norms, state, queries, aux)
