"""Gaussian data N(mu, diag(s^2)): the closed-form denoiser and, in float64 NumPy, the exact
law of each sampler's output (every sampler is then a linear map of Gaussian noise).

With u = x_t - a_t mu:  E[eps | x_t] = k_t u,  k_t = sigma_t / (a_t^2 s^2 + sigma_t^2).
"""
import jax
import jax.numpy as jnp
import numpy as np


def _closed_form_eps(mu, s, a, sigma, x, t):
    at, st = a[t][:, None], sigma[t][:, None]
    return st * (x - at * mu) / (at ** 2 * s ** 2 + st ** 2)


def closed_form_denoiser(mu, s, schedule):
    """eps*(x, t) = sigma_t (x - a_t mu) / (a_t^2 s^2 + sigma_t^2), as a pytree Partial."""
    return jax.tree_util.Partial(_closed_form_eps, jnp.asarray(mu), jnp.asarray(s),
                                 schedule.a, schedule.sigma)


def _coefficients(schedule, s):
    ab = np.asarray(schedule.alphas_bar, np.float64)[:, None]
    a, sig = np.sqrt(ab), np.sqrt(1 - ab)
    with np.errstate(divide='ignore', invalid='ignore'):
        k = sig / (a ** 2 * s ** 2 + sig ** 2)
    return ab, a, sig, k


def exact_output_law(method, schedule, mu, s, grid=None):
    """(mean, std) of x_0 when x_T ~ N(0, I): propagates the mean m and variance V of u."""
    mu, s = np.asarray(mu, np.float64), np.asarray(s, np.float64)
    ab, a, sig, k = _coefficients(schedule, s)
    T = schedule.num_timesteps
    m, V = -a[T] * mu, np.ones_like(mu)
    if method == 'ddpm':
        betas = 1 - ab[1:, 0] / ab[:-1, 0]
        for t in range(T, 0, -1):
            beta = betas[t - 1]
            g = (1 - beta / sig[t] * k[t]) / np.sqrt(1 - beta)
            var = beta * (1 - ab[t - 1]) / (1 - ab[t]) if t > 1 else 0.0
            m, V = g * m, g ** 2 * V + var
        return mu + m, np.sqrt(V)
    pairs = list(zip(grid[1:][::-1], grid[:-1][::-1]))
    if method == 'ddim':  # eta = 0: x' - a' mu = (a' (1 - sigma k) / a + sigma' k) u
        for t, tn in pairs:
            g = a[tn] * (1 - sig[t] * k[t]) / a[t] + sig[tn] * k[t]
            m, V = g * m, g ** 2 * V
        return mu + m, np.sqrt(V)
    if method == 'heun':  # in w = (x - a mu)/a, eps = k a w; ds = sigma'/a' - sigma/a
        m, V = m / a[T], V / a[T] ** 2
        for t, tn in pairs:
            ds = sig[tn] / a[tn] - sig[t] / a[t]
            euler = 1 + ds * k[t] * a[t]
            g = euler if tn == 0 else 1 + ds / 2 * (k[t] * a[t] + k[tn] * a[tn] * euler)
            m, V = g * m, g ** 2 * V
        return mu + m, np.sqrt(V)
    raise ValueError(method)
