"""Training objectives: config.training.objective -> loss(apply, params, x0, *, rng, schedule).

OBJECTIVES maps a name to its loss function; `get_objective(config.training)` returns the
configured loss with its options bound. The networks know nothing of these; the losses know
nothing of optimisers.
"""
import functools

import jax
import jax.numpy as jnp

from diffgen.diffusion.conversions import diffuse, per_example
from diffgen.registry import Registry

OBJECTIVES = Registry('objective')
GAP_WEIGHTINGS = ('eps', 'xi')   # gap_loss's weighting: 1, or c_{t,s}^2


def sample_timesteps(rng, batch_size, num_timesteps):
    """t ~ U{1..T}, shape (B,)."""
    return jax.random.randint(rng, (batch_size,), 1, num_timesteps + 1)


@OBJECTIVES.register('eps')
def eps_loss(apply_fn, params, x0, *, rng, schedule, with_terms=False):
    """L_eps(theta) = E_{t, eps} ||eps_theta(a_t x0 + sigma_t eps, t) - eps||^2,
    t ~ U{1..T}, eps ~ N(0, I); averaged over the batch and over the D dimensions.
    with_terms: (loss, (per-example losses (B,), t (B,))) instead (with_example_terms)."""
    t_rng, eps_rng, dropout_rng = jax.random.split(rng, 3)
    t = sample_timesteps(t_rng, x0.shape[0], schedule.num_timesteps)
    eps = jax.random.normal(eps_rng, x0.shape, x0.dtype)
    x_t = diffuse(x0, eps=eps, a=schedule.a[t], sigma=schedule.sigma[t])
    pred = apply_fn(params, x_t, t, train=True, rngs={'dropout': dropout_rng})
    squares = (pred - eps) ** 2
    return with_example_terms(jnp.mean(squares), squares, t, with_terms)


def with_example_terms(loss, squares, t, with_terms):
    """loss, or (loss, (mean of squares over all axes but the batch's, t)) with with_terms:
    the per-example losses the loss averages, for its breakdown by t (training.loss_bands)."""
    if not with_terms:
        return loss
    return loss, (jnp.mean(squares, axis=tuple(range(1, squares.ndim))), t)


def gap_coefficients(schedule, t, s):
    """(sqrt(r), sqrt(1 - r), c) of the transition s -> t (s < t, or s = t = 0), r = ab_t/ab_s:

        x_t = sqrt(r) x_s + sqrt(1 - r) xi,   c_{t,s} = sqrt((1 - r)/(1 - ab_t)).

    1 - r = -expm1(log ab_t - log ab_s) from schedule.log_alphas_bar: the quotient of the
    float32 alphas_bar would lose ~u/(1 - r) relative precision (1e-3 for adjacent small steps).
    With s = 0: r = ab_t and c = 1 exactly (numerator and denominator are the same number),
    the forward process itself."""
    log_ab = schedule.log_alphas_bar
    log_r = log_ab[t] - log_ab[s]
    one_minus_r = -jnp.expm1(log_r)
    c = jnp.sqrt(one_minus_r / -jnp.expm1(log_ab[t]))
    return jnp.exp(0.5 * log_r), jnp.sqrt(one_minus_r), c


def gap_timesteps(rng, t, *, max_k, p_zero):
    """s = max(t - k, 0), k ~ U{1..K}; with probability p_zero, s = 0 instead (L_eps)."""
    k_rng, zero_rng = jax.random.split(rng)
    k = jax.random.randint(k_rng, t.shape, 1, max_k + 1)
    zero = jax.random.bernoulli(zero_rng, p_zero, t.shape)
    return jnp.where(zero, 0, jnp.maximum(t - k, 0))


def gap_pair(x0, t, s, *, eps_s, xi, schedule, weighting='eps'):
    """(x_t, target, weight) of the gap objective for given noises eps_s, xi ~ N(0, I):

        x_s = a_s x0 + sigma_s eps_s,   x_t = sqrt(ab_t/ab_s) x_s + sqrt(1 - ab_t/ab_s) xi,
        target = xi / c_{t,s},   weight = 1 ('eps') or c_{t,s}^2 ('xi'),

    so that weight ||eps_theta - target||^2 is ||eps_theta - xi/c||^2 or ||c eps_theta - xi||^2.
    E[xi | x_t] = c E[eps | x_t] (Tweedie), and s is independent of x_t given t, so both
    weightings have the population minimiser E[eps | x_t] of L_eps."""
    x_s = diffuse(x0, eps=eps_s, a=schedule.a[s], sigma=schedule.sigma[s])
    sqrt_r, sqrt_one_minus_r, c = gap_coefficients(schedule, t, s)
    x_t = diffuse(x_s, eps=xi, a=sqrt_r, sigma=sqrt_one_minus_r)
    target = xi / per_example(c, xi)
    weight = jnp.ones_like(c) if weighting == 'eps' else c * c
    return x_t, target, weight


@OBJECTIVES.register('gap')
def gap_loss(apply_fn, params, x0, *, rng, schedule, max_k=1, p_zero=0.0, weighting='eps',
             with_terms=False):
    """The gap objective (docs/math.md §6; our formulation from the paper's summary, not its text):

        L_gap(theta) = E weight ||eps_theta(x_t, t) - xi_{t,s}/c_{t,s}||^2,
        t ~ U{1..T},  s = max(t - k, 0), k ~ U{1..K} (s = 0 with probability p_zero),
    with x_t, target and weight from gap_pair; averaged over the batch and the D dimensions.
    K = 1 pairs adjacent steps; s = 0 is L_eps. with_terms: as eps_loss."""
    t_rng, s_rng, eps_rng, xi_rng, dropout_rng = jax.random.split(rng, 5)
    t = sample_timesteps(t_rng, x0.shape[0], schedule.num_timesteps)
    s = gap_timesteps(s_rng, t, max_k=max_k, p_zero=p_zero)
    eps_s = jax.random.normal(eps_rng, x0.shape, x0.dtype)
    xi = jax.random.normal(xi_rng, x0.shape, x0.dtype)
    x_t, target, weight = gap_pair(x0, t, s, eps_s=eps_s, xi=xi, schedule=schedule,
                                   weighting=weighting)
    pred = apply_fn(params, x_t, t, train=True, rngs={'dropout': dropout_rng})
    squares = per_example(weight, pred) * (pred - target) ** 2
    return with_example_terms(jnp.mean(squares), squares, t, with_terms)


def get_objective(training_config):
    """The loss of config.training.objective; the gap objective's options bound
    (training.gap_max_k, gap_p_zero, gap_weighting)."""
    t = training_config
    loss = OBJECTIVES[t.objective]
    if loss is not gap_loss:
        return loss
    return functools.partial(loss, max_k=t.gap_max_k, p_zero=t.gap_p_zero,
                             weighting=t.gap_weighting)
