"""The empirical-optimal denoiser (docs/math.md §3), the exact minimiser of L_ε given S:

    w_i(x, t) = softmax_i(s_i),   s_i = −‖x − a_t y_i‖²/(2σ_t²) + const
                                      = (a_t x·y_i − a_t² ‖y_i‖²/2) / σ_t²   (‖x‖² cancels),
    x̂₀*(x, t) = Σ_i w_i y_i,    ε*(x, t) = (x − a_t x̂₀*) / σ_t.

It is softmax attention of the query x over keys a_t y_i with values y_i, run on the
chunked-GEMM core (diffgen.optimum.chunked): per chunk G = Y_c qᵀ with q = (a_t/σ_t²) x, then
s = G − (a_t²/(2σ_t²)) n with n_i = ‖y_i‖² precomputed, and a second GEMM pᵀ Y_c. An online
softmax keeps, relative to the running maximum m of the logits,

    l = Σ_i e^{s_i − m},   acc = Σ_i e^{s_i − m} y_i,   v = Σ_i e^{s_i − m} (s_i − m),

and a larger maximum m' rescales them: (l, acc, v) ← e^{m − m'} (l, acc, v + (m − m') l).
Across shards m' = pmax(m) and the rescaled sums are psum-ed. At the end

    x̂₀* = acc / l,   max_i w_i = 1 / l,   H(w) = −Σ_i w_i log w_i = log l − v / l.

Precision: at t = 1, σ_t² ≈ 1e-4, so the logits reach ~1e7; subtracting the running maximum
keeps every exponent ≤ 0 (no overflow; an all-padding chunk contributes nothing). Their
float32 round-off, about u·D·a_t|x||y|/σ_t² (u = 2⁻²⁴), can exceed 1 there in image
dimensions, which perturbs only weights between training points whose logits are that close.

bfloat16 storage (GEMM inputs bfloat16, sums float32) halves the stored set on GPU/TPU;
XLA:CPU has no bfloat16 GEMM and converts the whole set to float32 ahead of the loop, so on
CPU keep float32.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from diffgen import parallel
from diffgen.optimum import chunked
from diffgen.diffusion import conversions


class SoftmaxState(NamedTuple):
    """Online-softmax sums of one query batch, relative to the running maximum."""
    max: jax.Array        # (B,) m, -inf before any valid row
    total: jax.Array      # (B,) l = Σ e^{s_i − m}
    weighted: jax.Array   # (B, D) acc = Σ e^{s_i − m} y_i
    spread: jax.Array     # (B,) v = Σ e^{s_i − m} (s_i − m)


def _reference(new_max):
    """The maximum to subtract: 0 where nothing has been seen yet (new_max = -inf)."""
    return jnp.where(new_max > -jnp.inf, new_max, 0.0)


def _rescale(state, new_max):
    """(l, acc, v) ← e^{m − m'} (l, acc, v + (m − m') l), with m' = new_max ≥ m."""
    seen = state.max > -jnp.inf
    scale = jnp.exp(state.max - _reference(new_max))
    shift = jnp.where(seen, state.max - new_max, 0.0)
    return SoftmaxState(new_max, scale * state.total, scale[:, None] * state.weighted,
                        scale * (state.spread + shift * state.total))


def _softmax_step(state, chunk, norm_scale):
    """Adds one chunk: s = G − λ n (λ = norm_scale = a²/(2σ²) for ε*), -inf on padding rows.
    Logits and weights are (C, B), like the chunk's gram."""
    logits = jnp.where(chunk.valid[:, None],
                       chunk.gram - chunk.sq_norms[:, None] * norm_scale[None, :], -jnp.inf)
    new_max = jnp.maximum(state.max, jnp.max(logits, axis=0))
    state = _rescale(state, new_max)
    centred = logits - _reference(new_max)[None, :]
    p = jnp.exp(centred)
    weighted = jax.lax.dot_general(p.astype(chunk.rows.dtype), chunk.rows,
                                   (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)
    return SoftmaxState(new_max, state.total + jnp.sum(p, axis=0),
                        state.weighted + weighted,
                        state.spread + jnp.sum(jnp.where(p > 0, p * centred, 0.0), axis=0))


def _combine_shards(state):
    """Merges the per-shard sums: m = pmax(m_k), (l, acc, v) = psum of the rescaled sums."""
    state = _rescale(state, jax.lax.pmax(state.max, parallel.DATA_AXIS))
    total, weighted, spread = jax.lax.psum((state.total, state.weighted, state.spread),
                                           parallel.DATA_AXIS)
    return SoftmaxState(state.max, total, weighted, spread)


def softmax_sums(rows, queries, norm_scale):
    """The online-softmax sums over all of rows of the logits s_i = q·y_i − λ n_i, for
    queries q (B, D) and scales λ = norm_scale (B,): SoftmaxState with acc = Σ e^{s_i − m} y_i."""
    batch = queries.shape[0]
    init = SoftmaxState(jnp.full((batch,), -jnp.inf), jnp.zeros((batch,)),
                        jnp.zeros((batch, rows.dim)), jnp.zeros((batch,)))
    return chunked.reduce_rows(rows, _softmax_step, _combine_shards, state=init, queries=queries,
                               aux=norm_scale)


@jax.jit
def _posterior(x, t, *, rows, schedule):
    """The online-softmax sums at (x, t) over all of rows."""
    q = chunked.flatten_queries(x, rows)
    t = jnp.broadcast_to(jnp.asarray(t, jnp.int32), (x.shape[0],))
    a, sigma2 = schedule.a[t], schedule.sigma2[t]
    return softmax_sums(rows, (a / sigma2)[:, None] * q, a * a / (2.0 * sigma2))


@jax.jit
def optimal_x0(x, t, *, rows, schedule):
    """x̂₀*(x, t) = Σ_i w_i y_i over rows (chunked.ChunkedRows), shaped like x."""
    state = _posterior(x, t, rows=rows, schedule=schedule)
    return (state.weighted / state.total[:, None]).reshape(x.shape)


@jax.jit
def optimal_eps(x, t, *, rows, schedule):
    """ε*(x, t) = (x − a_t x̂₀*)/σ_t over rows (chunked.ChunkedRows): the denoiser's pure
    function."""
    t = jnp.broadcast_to(jnp.asarray(t, jnp.int32), (x.shape[0],))
    x = x.astype(jnp.float32)
    x0 = optimal_x0(x, t, rows=rows, schedule=schedule)
    return conversions.eps_from_x0(x, x0=x0, a=schedule.a[t], sigma=schedule.sigma[t])


@jax.jit
def optimal_stats(x, t, *, rows, schedule):
    """(H(w), max_i w_i) at (x, t) over rows (chunked.ChunkedRows): H = log l − v/l,
    max w = 1/l."""
    state = _posterior(x, t, rows=rows, schedule=schedule)
    return jnp.log(state.total) - state.spread / state.total, 1.0 / state.total


def optimal_denoiser(train_set, schedule, *, chunk_size=None, storage_dtype=jnp.float32,
                     mesh=None):
    """The denoiser (x, t) -> ε*(x, t) of a training set (N, ...) in [-1, 1].

    A jax.tree_util.Partial of optimal_eps whose leaves are the stored rows (sharded along N
    over the mesh's data axis when a mesh is given) and the schedule, so jitted samplers take
    it as an argument instead of baking the training set into the program. train_set may
    also be chunked.ChunkedRows prepared once (they keep their own chunk size, dtype and mesh).
    """
    rows = chunked.prepare_rows(train_set, chunk_size, storage_dtype, mesh=mesh)
    return jax.tree_util.Partial(optimal_eps, rows=rows, schedule=schedule)


def posterior_mean(x, t, train_set, *, schedule, chunk_size=None, storage_dtype=jnp.float32,
                   mesh=None):
    """x̂₀*(x, t) = Σ_i w_i y_i = E[x₀ | x_t = x] under the empirical distribution."""
    rows = chunked.prepare_rows(train_set, chunk_size, storage_dtype, mesh=mesh)
    return optimal_x0(x, t, rows=rows, schedule=schedule)


def posterior_stats(x, t, train_set, *, schedule, chunk_size=None, storage_dtype=jnp.float32,
                    mesh=None):
    """(entropy H(w) = −Σ_i w_i log w_i, largest weight max_i w_i), each of shape (B,):
    how far the posterior over training points is from one-hot (H = 0, max w = 1)."""
    rows = chunked.prepare_rows(train_set, chunk_size, storage_dtype, mesh=mesh)
    return optimal_stats(x, t, rows=rows, schedule=schedule)
