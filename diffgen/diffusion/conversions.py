"""Pure conversions between the denoiser's parametrisations, and the forward process
(docs/math.md §1). Every x̂₀ / ε̂ / score conversion and every forward-process draw in diffgen
goes through these functions.

`a` and `sigma` are per-example values of shape (B,) (or scalars); they are broadcast over
the trailing axes of x. Arguments after the first are keyword-only, so that a call names
which of x₀, ε, a and σ it passes.
"""
import jax.numpy as jnp


def per_example(v, x):
    """v of shape (B,) (or a scalar) reshaped to broadcast against x of shape (B, ...)."""
    v = jnp.asarray(v, dtype=x.dtype)
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


def x0_from_eps(x, *, eps, a, sigma):
    """x̂₀ = (x − σ ε̂) / a."""
    return (x - per_example(sigma, x) * eps) / per_example(a, x)


def eps_from_x0(x, *, x0, a, sigma):
    """ε̂ = (x − a x̂₀) / σ."""
    return (x - per_example(a, x) * x0) / per_example(sigma, x)


def score_from_eps(eps, *, sigma):
    """score = ∇ log p_t(x) = −ε̂ / σ."""
    return -eps / per_example(sigma, eps)


def diffuse(x0, *, eps, a, sigma):
    """x_t = a x₀ + σ ε (the forward process, or a DDIM step's a_{t'} x̂₀ + σ ε̂)."""
    return per_example(a, x0) * x0 + per_example(sigma, x0) * eps
