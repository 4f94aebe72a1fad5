"""The linear reference denoisers (docs/math.md §11): what a denoiser that knows only the
training set's first two moments, or nothing, predicts.

    identity   ε̂(x, t) = 0                          (x̂₀ = x / a_t)
    mean       x̂₀(x, t) = μ,                         ε̂ = (x − a_t μ) / σ_t
    gaussian   x̂₀(x, t) = μ + a_t Σ (a_t² Σ + σ_t² I)⁻¹ (x − a_t μ)
                        = μ + U diag(a_t λ / (a_t² λ + σ_t²)) Uᵀ (x − a_t μ),
               ε̂ = (x − a_t x̂₀) / σ_t,

with μ = (1/N) Σ_i y_i and Σ = (1/N) Σ_i (y_i − μ)(y_i − μ)ᵀ = U diag(λ) Uᵀ the mean and
covariance of the training set's empirical distribution (1/N, not 1/(N − 1): with one image
the Gaussian denoiser is ε* of that image). The Gaussian one is the exact posterior mean
E[y | a_t y + σ_t ε = x] for y ~ N(μ, Σ) (Li, Dai & Qu 2024; Wang & Vastola 2023): the MMSE
linear denoiser of the training set. a_t = schedule.a[t], σ_t = schedule.sigma[t], t an int
in 1..T, a scalar or one per example (diffgen.diffusion.conversions).

μ and Σ are accumulated in float64 NumPy over chunks of rows (memory O(chunk·D + D²): D²
float64 is 1.2 GB at 64×64×3), Σ is decomposed once (numpy.linalg.eigh, eigenvalues clipped
at 0: round-off makes those of a rank-deficient Σ slightly negative), and μ, U, λ are then
stored as float32, replicated over the mesh when one is given. Each call is two (B, D)×(D, D)
GEMMs.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from diffgen import parallel
from diffgen.diffusion import conversions

MOMENT_CHUNK = 1024   # rows per float64 chunk when accumulating μ and Σ


def _zero_eps(x, t):
    """ε̂ = 0 (x̂₀ = x / a_t): the identity denoiser."""
    del t
    return jnp.zeros(x.shape, jnp.float32)


def identity_denoiser():
    """The denoiser (x, t) -> 0, as a jax.tree_util.Partial without leaves."""
    return jax.tree_util.Partial(_zero_eps)


def _flat_rows(train_set):
    """The training set (N, ...) as rows (N, D), without copying."""
    train_set = np.asarray(train_set)
    return train_set.reshape(len(train_set), -1)


def training_mean(train_set, chunk=MOMENT_CHUNK):
    """μ = (1/N) Σ_i y_i in float64, summed over chunks of rows."""
    rows = _flat_rows(train_set)
    total = np.zeros(rows.shape[1], np.float64)
    for start in range(0, len(rows), chunk):
        total += rows[start:start + chunk].astype(np.float64).sum(axis=0)
    return total / len(rows)


def training_moments(train_set, chunk=MOMENT_CHUNK):
    """(μ, Σ) in float64: μ as training_mean, Σ = (1/N) Σ_i (y_i − μ)(y_i − μ)ᵀ accumulated
    over chunks of centred rows (a second pass, so no cancellation against μμᵀ)."""
    rows = _flat_rows(train_set)
    mean = training_mean(rows, chunk)
    cov = np.zeros((rows.shape[1], rows.shape[1]), np.float64)
    for start in range(0, len(rows), chunk):
        centred = rows[start:start + chunk].astype(np.float64) - mean
        cov += centred.T @ centred
    return mean, cov / len(rows)


def _place(tree, mesh):
    """Device arrays of a pytree of NumPy arrays, replicated over the mesh if one is given."""
    tree = jax.tree_util.tree_map(jnp.asarray, tree)
    return tree if mesh is None else parallel.replicate(tree, mesh)


@jax.jit
def mean_eps(x, t, *, mean, schedule):
    """ε̂ = (x − a_t μ) / σ_t."""
    t = jnp.broadcast_to(jnp.asarray(t, jnp.int32), (x.shape[0],))
    x = x.astype(jnp.float32)
    x0 = jnp.broadcast_to(mean.reshape(x.shape[1:]), x.shape)
    return conversions.eps_from_x0(x, x0=x0, a=schedule.a[t], sigma=schedule.sigma[t])


def mean_denoiser(train_set, schedule, mesh=None):
    """The denoiser whose x̂₀ is the training mean μ: ε̂ = (x − a_t μ) / σ_t. A
    jax.tree_util.Partial whose leaves are μ (float32) and the schedule."""
    mean = _place(training_mean(train_set).astype(np.float32), mesh)
    return jax.tree_util.Partial(mean_eps, mean=mean, schedule=schedule)


@jax.jit
def gaussian_x0(x, t, *, mean, basis, variances, schedule):
    """x̂₀ = μ + U diag(a λ / (a² λ + σ²)) Uᵀ (x − a μ) (U = basis, λ = variances), shaped
    like x."""
    t = jnp.broadcast_to(jnp.asarray(t, jnp.int32), (x.shape[0],))
    a, sigma2 = schedule.a[t][:, None], schedule.sigma2[t][:, None]
    u = x.reshape(x.shape[0], -1).astype(jnp.float32) - a * mean
    gain = a * variances / (a * a * variances + sigma2)            # (B, D)
    x0 = mean + (gain * (u @ basis)) @ basis.T
    return x0.reshape(x.shape)


@jax.jit
def gaussian_eps(x, t, *, mean, basis, variances, schedule):
    """ε̂ = (x − a_t x̂₀) / σ_t with x̂₀ = gaussian_x0."""
    t = jnp.broadcast_to(jnp.asarray(t, jnp.int32), (x.shape[0],))
    x = x.astype(jnp.float32)
    x0 = gaussian_x0(x, t, mean=mean, basis=basis, variances=variances, schedule=schedule)
    return conversions.eps_from_x0(x, x0=x0, a=schedule.a[t], sigma=schedule.sigma[t])


def gaussian_moments(train_set):
    """(μ, U, λ) as float32 NumPy arrays: the training set's mean and the eigendecomposition
    Σ = U diag(λ) Uᵀ of its covariance, computed in float64 (λ clipped at 0)."""
    mean, cov = training_moments(train_set)
    variances, basis = np.linalg.eigh(cov)
    return (mean.astype(np.float32), basis.astype(np.float32),
            np.maximum(variances, 0.0).astype(np.float32))


def gaussian_denoiser(train_set, schedule, mesh=None):
    """The posterior-mean denoiser of y ~ N(μ, Σ) with the training set's empirical mean and
    covariance (module docstring). A jax.tree_util.Partial of gaussian_eps whose leaves are
    μ (D,), U (D, D), λ (D,) (float32, replicated over the mesh if given) and the schedule."""
    mean, basis, variances = _place(gaussian_moments(train_set), mesh)
    return jax.tree_util.Partial(gaussian_eps, mean=mean, basis=basis, variances=variances,
                                 schedule=schedule)
