"""Noise schedules of the discrete VP (DDPM) forward process.

    x_t = a_t x_0 + sigma_t eps,   eps ~ N(0, I),   t = 1..T
    alpha_t = 1 - beta_t,  alphas_bar_t = prod_{s<=t} alpha_s,  alphas_bar_0 = 1,
    a_t = sqrt(alphas_bar_t),  sigma_t = sqrt(1 - alphas_bar_t).

Arrays are indexed by t = 0..T (length T+1); index 0 is the clean data (beta_0 = 0).
Every array is computed from the betas in float64 NumPy and only then stored as float32:
sigma_t^2 = 1 - alphas_bar_t taken from a float32 alphas_bar would be off by ~u/sigma_t^2
relative (u = 2^-24; sigma_1^2 = 1.00017e-4 instead of 1e-4 for the linear schedule), so
samplers, objectives and the optimum read sigma2 / sigma / log_alphas_bar from here instead of
forming 1 - alphas_bar themselves.
SCHEDULES maps config.diffusion.schedule to the function giving beta_1..beta_T.
"""
from __future__ import annotations

import flax.struct
import jax.numpy as jnp
import numpy as np

from diffgen.registry import Registry

SCHEDULES = Registry('schedule')   # name -> betas(num_timesteps, *, beta_start, beta_end)
COSINE_OFFSET = 0.008              # s of Nichol & Dhariwal (2021)
COSINE_MAX_BETA = 0.999


@flax.struct.dataclass
class Schedule:
    """A discrete VP schedule; a pytree, so it can be passed into jitted code. Each array has
    shape (T+1,), float32 roundings of float64 values (make_schedule)."""
    betas: jnp.ndarray             # beta_t, betas[0] = 0
    alphas: jnp.ndarray            # alpha_t = 1 - beta_t
    alphas_bar: jnp.ndarray        # alphas_bar_t = prod_{s<=t} alpha_s, alphas_bar[0] = 1
    log_alphas_bar: jnp.ndarray    # log alphas_bar_t = sum_{s<=t} log1p(-beta_s)
    a: jnp.ndarray                 # a_t = sqrt(alphas_bar_t)
    sigma: jnp.ndarray             # sigma_t = sqrt(1 - alphas_bar_t)
    sigma2: jnp.ndarray            # sigma_t^2 = 1 - alphas_bar_t = -expm1(log alphas_bar_t)
    posterior_variance: jnp.ndarray  # beta~_t = beta_t sigma_{t-1}^2 / sigma_t^2, beta~_0 = 0
    num_timesteps: int = flax.struct.field(pytree_node=False)


@SCHEDULES.register('linear')
def linear_betas(num_timesteps, *, beta_start=1e-4, beta_end=0.02):
    """beta_t linear from beta_start (t=1) to beta_end (t=T) (Ho et al. 2020)."""
    return np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64)


@SCHEDULES.register('cosine')
def cosine_betas(num_timesteps, *, beta_start=None, beta_end=None):
    """Nichol & Dhariwal (2021): alphas_bar(t) = f(t)/f(0), f(t) = cos^2(pi/2 (t/T + s)/(1 + s)),
    beta_t = min(1 - alphas_bar(t)/alphas_bar(t-1), max_beta), with s = COSINE_OFFSET and
    max_beta = COSINE_MAX_BETA. The schedule fixes its own range: beta_start and beta_end
    (the linear schedule's) are ignored."""
    del beta_start, beta_end
    steps = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
    f = np.cos((steps + COSINE_OFFSET) / (1 + COSINE_OFFSET) * np.pi / 2) ** 2
    return np.minimum(1.0 - f[1:] / f[:-1], COSINE_MAX_BETA)


def schedule_arrays(name='linear', num_timesteps=1000, *, beta_start=1e-4, beta_end=0.02):
    """The float64 arrays of Schedule (by field name, each (T+1,)), from SCHEDULES[name]'s betas:

        log alphas_bar_t = sum_{s<=t} log1p(-beta_s),  1 - alphas_bar_t = -expm1(log alphas_bar_t),
        beta~_t = beta_t (1 - alphas_bar_{t-1}) / (1 - alphas_bar_t)   (beta~_0 = 0).
    expm1 keeps 1 - alphas_bar_t to float64 relative precision even where it is ~beta_1."""
    betas = SCHEDULES[name](num_timesteps, beta_start=beta_start, beta_end=beta_end)
    betas = np.concatenate([[0.0], np.asarray(betas, np.float64)])
    log_alphas_bar = np.cumsum(np.log1p(-betas))
    sigma2 = -np.expm1(log_alphas_bar)
    posterior_variance = np.zeros_like(betas)
    posterior_variance[1:] = betas[1:] * sigma2[:-1] / sigma2[1:]
    alphas_bar = np.exp(log_alphas_bar)
    return {'betas': betas, 'alphas': 1.0 - betas, 'alphas_bar': alphas_bar,
            'log_alphas_bar': log_alphas_bar, 'a': np.sqrt(alphas_bar),
            'sigma': np.sqrt(sigma2), 'sigma2': sigma2,
            'posterior_variance': posterior_variance}


def make_schedule(name='linear', num_timesteps=1000, *, beta_start=1e-4, beta_end=0.02):
    """The Schedule of SCHEDULES[name]: schedule_arrays (float64) stored as float32."""
    arrays = schedule_arrays(name, num_timesteps, beta_start=beta_start, beta_end=beta_end)
    return Schedule(**{k: jnp.asarray(v, jnp.float32) for k, v in arrays.items()},
                    num_timesteps=int(num_timesteps))


def get_schedule(config):
    """The schedule of a config (the whole config, or its `diffusion` section)."""
    d = config.diffusion if 'diffusion' in config else config
    return make_schedule(d.schedule, d.num_timesteps, beta_start=d.beta_start,
                         beta_end=d.beta_end)
