"""Noise schedules of the discrete VP (DDPM) forward process.

    x_t = a_t x_0 + sigma_t eps,   eps ~ N(0, I),   t = 1..T
    alpha_t = 1 - beta_t,  alphas_bar_t = prod_{s<=t} alpha_s,  alphas_bar_0 = 1,
    a_t = sqrt(alphas_bar_t),  sigma_t = sqrt(1 - alphas_bar_t).

Arrays are indexed by t = 0..T (length T+1); index 0 is the clean data (beta_0 = 0).
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
    """A discrete VP schedule; a pytree, so it can be passed into jitted code."""
    betas: jnp.ndarray        # (T+1,), betas[0] = 0
    alphas_bar: jnp.ndarray   # (T+1,), alphas_bar[0] = 1
    num_timesteps: int = flax.struct.field(pytree_node=False)

    @property
    def alphas(self):
        return 1.0 - self.betas

    @property
    def a(self):
        """a_t = sqrt(alphas_bar_t), shape (T+1,)."""
        return jnp.sqrt(self.alphas_bar)

    @property
    def sigma(self):
        """sigma_t = sqrt(1 - alphas_bar_t), shape (T+1,)."""
        return jnp.sqrt(1.0 - self.alphas_bar)


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


def make_schedule(name='linear', num_timesteps=1000, *, beta_start=1e-4, beta_end=0.02):
    """The Schedule of SCHEDULES[name]; alphas_bar is accumulated in float64, then stored as
    float32."""
    betas = SCHEDULES[name](num_timesteps, beta_start=beta_start, beta_end=beta_end)
    betas = np.concatenate([[0.0], betas])
    alphas_bar = np.cumprod(1.0 - betas)
    return Schedule(betas=jnp.asarray(betas, jnp.float32),
                    alphas_bar=jnp.asarray(alphas_bar, jnp.float32),
                    num_timesteps=int(num_timesteps))


def get_schedule(config):
    """The schedule of a config (the whole config, or its `diffusion` section)."""
    d = config.diffusion if 'diffusion' in config else config
    return make_schedule(d.schedule, d.num_timesteps, beta_start=d.beta_start,
                         beta_end=d.beta_end)
