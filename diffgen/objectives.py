"""Training objectives: config.training.objective -> loss(apply, params, x0, rng, schedule).

The networks know nothing of these; the losses know nothing of optimisers.
"""
import jax
import jax.numpy as jnp

from diffgen.conversions import diffuse


def sample_timesteps(rng, batch_size, num_timesteps):
    """t ~ U{1..T}, shape (B,)."""
    return jax.random.randint(rng, (batch_size,), 1, num_timesteps + 1)


def eps_loss(apply_fn, params, x0, rng, schedule):
    """L_eps(theta) = E_{t, eps} ||eps_theta(a_t x0 + sigma_t eps, t) - eps||^2,
    t ~ U{1..T}, eps ~ N(0, I); averaged over the batch and over the D dimensions."""
    t_rng, eps_rng, dropout_rng = jax.random.split(rng, 3)
    t = sample_timesteps(t_rng, x0.shape[0], schedule.num_timesteps)
    eps = jax.random.normal(eps_rng, x0.shape, x0.dtype)
    x_t = diffuse(x0, eps, schedule.a[t], schedule.sigma[t])
    pred = apply_fn(params, x_t, t, train=True, rngs={'dropout': dropout_rng})
    return jnp.mean((pred - eps) ** 2)


OBJECTIVES = {'eps': eps_loss}
