"""Exact k-nearest-neighbour search over a training set, on the chunked-GEMM core.

    d(q, y_i)² = ‖q‖² − 2 q·y_i + ‖y_i‖²   (clamped at 0; ‖y_i‖² precomputed)

Per chunk G = Y_c qᵀ (diffgen.optimum.chunked); a running top-k keeps the k smallest d² with their
global indices: lax.top_k over concat(running, chunk). Ties go to the smaller index:
lax.top_k puts the lower position first among equal values, and positions follow indices
(the running entries, ordered by (d², index), all precede the chunk in index). Shards each
keep their own top-k; the merge gathers them and sorts on (d², index).

The k rows found are then re-measured directly, d = ‖q − y_i‖, and re-ordered by (d, index):
the GEMM form cancels catastrophically near 0, and exact copies must measure 0.

The memorisation metrics report distances over √D (root-mean-square difference per
coordinate): knn(..., normalize=True).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from diffgen import parallel
from diffgen.optimum import chunked

_NO_INDEX = jnp.iinfo(jnp.int32).max   # index of the initial +inf entries: loses every tie


def _topk_step(state, chunk, sq_queries):
    """Merges one chunk's d² = ‖q‖² − 2G + n (+inf on padding) into the running top-k."""
    best_sq, best_index = state
    sq = sq_queries[:, None] - 2.0 * chunk.gram.T + chunk.sq_norms[None, :]
    sq = jnp.where(chunk.valid, jnp.where(sq > 0, sq, 0.0), jnp.inf)
    candidates = jnp.concatenate([best_sq, sq], axis=1)
    indices = jnp.concatenate(
        [best_index, jnp.broadcast_to(chunk.index, sq.shape)], axis=1)
    neg_sq, position = jax.lax.top_k(-candidates, best_sq.shape[1])
    return -neg_sq, jnp.take_along_axis(indices, position, axis=1)


def _merge_shards(state):
    """The k smallest of all shards' top-k lists, ordered by (d², index)."""
    batch, k = state[0].shape
    gathered = [jnp.moveaxis(parallel.gather_replicated(v), 0, 1).reshape(batch, -1)
                for v in state]
    best_sq, best_index = jax.lax.sort(gathered, dimension=1, num_keys=2)
    return best_sq[:, :k], best_index[:, :k]


@functools.partial(jax.jit, static_argnames=('k', 'normalize'))
def nearest(rows, queries, *, k, normalize=False):
    """(distances, indices), each (B, k), of the k nearest stored rows to each query, by
    increasing distance (ties: smaller index first); distances over √D if normalize."""
    q = chunked.flatten_queries(queries, rows)
    batch = q.shape[0]
    init = (jnp.full((batch, k), jnp.inf), jnp.full((batch, k), _NO_INDEX, jnp.int32))
    _, best_index = chunked.reduce_rows(rows, _topk_step, _merge_shards, state=init, queries=q,
                                        aux=jnp.sum(q * q, axis=1))
    # The k found rows' distances recomputed as ‖q − y‖: exact near 0, where the GEMM form
    # loses ~sqrt(u ‖y‖²) to cancellation (exact copies must measure 0).
    diff = q[:, None, :] - rows.rows[best_index].astype(jnp.float32)
    exact = jnp.sqrt(jnp.sum(diff * diff, axis=-1))
    distances, best_index = jax.lax.sort((exact, best_index), dimension=1, num_keys=2)
    if normalize:
        distances = distances / jnp.sqrt(jnp.float32(rows.dim))
    return distances, best_index


def knn(queries, train_set, k, *, chunk_size=None, mesh=None, normalize=False):
    """Exact k nearest neighbours (1 <= k <= N) in the training set (N, ...) of queries
    (B, ...): (distances (B, k) float32, indices (B, k) int32), nearest first, ties to the
    smaller index. With a mesh the training set is sharded along N. train_set may be
    chunked.ChunkedRows prepared once and reused across query batches."""
    rows = chunked.prepare_rows(train_set, chunk_size, jnp.float32, mesh=mesh)
    if not 1 <= k <= rows.num_rows:
        raise ValueError(f'k must be in 1..{rows.num_rows} (the training set size), got {k}')
    return nearest(rows, queries, k=k, normalize=normalize)
