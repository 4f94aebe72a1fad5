"""Pure conversions between the denoiser's parametrisations (docs/math.md §1).

    x0_hat = (x_t - sigma_t eps_hat) / a_t
    eps_hat = (x_t - a_t x0_hat) / sigma_t
    score = -eps_hat / sigma_t

`a` and `sigma` are per-example values of shape (B,) (or scalars); they are broadcast
over the trailing axes of x.
"""
import jax.numpy as jnp


def per_example(v, x):
    """Reshapes a (B,) vector (or a scalar) to broadcast against x of shape (B, ...)."""
    v = jnp.asarray(v, dtype=x.dtype)
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


def x0_from_eps(x, eps, a, sigma):
    """x0_hat = (x - sigma eps) / a."""
    return (x - per_example(sigma, x) * eps) / per_example(a, x)


def eps_from_x0(x, x0, a, sigma):
    """eps_hat = (x - a x0) / sigma."""
    return (x - per_example(a, x) * x0) / per_example(sigma, x)


def score_from_eps(eps, sigma):
    """score = grad log p_t(x) = -eps / sigma."""
    return -eps / per_example(sigma, eps)


def diffuse(x0, eps, a, sigma):
    """The forward process x_t = a x0 + sigma eps."""
    return per_example(a, x0) * x0 + per_example(sigma, x0) * eps
