"""The gap-bank empirical optimum: the exact minimiser of the gap objective (docs/math.md §6)
over a fixed, finite bank of noisy intermediate states. The formulation is ours, built from
the paper's summary, not from its full text.

Bank: M fixed draws ε_ij ~ N(0, I) per training image y_i (j = 1..M); at level s the bank
states are x_s^(ij) = a_s y_i + σ_s ε_ij. A query (x, t) uses the single gap

    s(t) = max(t − K, 0)   (K = training.gap_max_k: the largest gap the objective draws),

r = ᾱ_t/ᾱ_s, c = c_{t,s} = √((1 − r)/(1 − ᾱ_t)), and with the centres √r x_s^(ij):

    w_ij(x, t) = softmax_ij( −‖x − √r x_s^(ij)‖² / (2(1 − r)) ),
    ε̂(x, t) = Σ_ij w_ij (x − √r x_s^(ij)) / (√(1 − r) c) = E_w[ξ_{t,s}] / c,

the minimiser over all functions of E‖ε(x_t, t) − ξ_{t,s}/c‖² with x_s uniform over the bank
and s = s(t) (the gap objective with k ≡ K, p_zero = 0; any weighting). The centres are noisy
states, not training images. For t ≤ K, s = 0: the bank is the training set and ε̂ = ε*; as
M → ∞ the bank's law tends to p̂_s = (1/N) Σ_i N(a_s y_i, σ_s² I) and ε̂ → ε*.

Computation, on the chunked-GEMM core and the online softmax of diffgen.optimum.optimal: the centre
√r x_s^(ij) = a y_i + b ε_ij (a = √r a_s = a_t, b = √r σ_s) changes with t through b, so each
bank row stores u_ij = [y_i, ε_ij, ‖y_i‖², y_i·ε_ij, ‖ε_ij‖²] (2D + 3 columns) and the whole
logit is one GEMM with the query

    q = [a x, b x, −a²/2, −a b, −b²/2] / (1 − r):   q·u_ij = (x·centre − ‖centre‖²/2)/(1 − r)

(‖x‖² cancels); the softmax's weighted sum Σ w u holds E_w[y] and E_w[ε] in its first 2D
columns. Rows are float32: the norm columns would lose their precision in bfloat16.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from diffgen.diffusion import conversions
from diffgen.diffusion.objectives import gap_coefficients
from diffgen.optimum import chunked, optimal


def bank_rows(train_set, num_draws, rng, *, chunk_size=None, mesh=None):
    """The bank of a training set (N, ...) in [-1, 1] with M = num_draws noises per image, as
    chunked.ChunkedRows of u_k = [y_i, ε_k, ‖y_i‖², y_i·ε_k, ‖ε_k‖²] for k = i M + j, ε_k drawn from
    fold_in(rng, k) (the same bank however it is chunked or sharded). On a mesh each process
    builds only its own shard."""
    flat = np.asarray(train_set, np.float32).reshape(len(train_set), -1)
    num_images, dim = flat.shape
    noise = jax.jit(jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(rng, k), (dim,))))

    def load_rows(start, stop):
        k = np.arange(start, stop)
        y = flat[k // num_draws].astype(np.float64)
        eps = np.asarray(noise(jnp.asarray(k, jnp.int32)), np.float64)
        norms = np.stack([(y * y).sum(1), (y * eps).sum(1), (eps * eps).sum(1)], axis=1)
        return np.concatenate([y, eps, norms], axis=1).astype(np.float32)

    return chunked.rows_from_loader(load_rows, num_images * num_draws, 2 * dim + 3,
                                    chunk_size=chunk_size, storage_dtype=jnp.float32, mesh=mesh)


@jax.jit
def gap_bank_eps(x, t, *, bank, schedule, max_k):
    """ε̂(x, t) = (x − a E_w[y] − b E_w[ε]) / (√(1 − r) c) over the bank, s = max(t − K, 0)."""
    t = jnp.broadcast_to(jnp.asarray(t, jnp.int32), (x.shape[0],))
    s = jnp.maximum(t - max_k, 0)
    sqrt_r, sqrt_one_minus_r, c = gap_coefficients(schedule, t, s)
    a, b = sqrt_r * schedule.a[s], sqrt_r * schedule.sigma[s]
    dim = (bank.dim - 3) // 2
    q = x.reshape(x.shape[0], dim).astype(jnp.float32)
    queries = jnp.concatenate([a[:, None] * q, b[:, None] * q,
                               jnp.stack([-a * a / 2, -a * b, -b * b / 2], axis=1)], axis=1)
    state = optimal.softmax_sums(bank, queries / (sqrt_one_minus_r ** 2)[:, None],
                                 jnp.zeros_like(a))
    mean = state.weighted / state.total[:, None]
    centre = conversions.diffuse(mean[:, :dim], eps=mean[:, dim:2 * dim], a=a, sigma=b)
    # x_t = centre + √(1 − r) ξ with ξ = c ε: ε̂ is the conversion with a = 1, σ = √(1 − r) c
    eps = conversions.eps_from_x0(q, x0=centre, a=1.0, sigma=sqrt_one_minus_r * c)
    return eps.reshape(x.shape)


def gap_bank_denoiser(bank, schedule, max_k):
    """The denoiser (x, t) -> ε̂(x, t) of a bank (bank_rows), for any sampler: a
    jax.tree_util.Partial whose leaves are the bank, the schedule and K."""
    return jax.tree_util.Partial(gap_bank_eps, bank=bank, schedule=schedule,
                                 max_k=jnp.int32(max_k))
