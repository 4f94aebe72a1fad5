"""Denoisers `(x, t) -> eps_hat` built from trained networks and from other denoisers, as
pytree Partials so that the samplers compile once for all parameter values."""
import jax
import jax.numpy as jnp


def network_denoiser(model, params):
    """eps_theta(x, t) = model.apply(params, x, t) (deterministic: no dropout)."""
    return jax.tree_util.Partial(model.apply, params)


def _hybrid_eps(x, t, *, high, low, t_switch):
    """high(x, t) for the examples with t > t_switch, low(x, t) for the others.

    Inside a sampler every example has the same t, so one of the first two branches runs and
    only one denoiser is evaluated; a batch with mixed t evaluates both and selects."""
    above = t > t_switch
    mask = above.reshape(above.shape + (1,) * (x.ndim - 1))
    branch = jnp.where(jnp.all(above), 0, jnp.where(jnp.any(above), 2, 1))
    return jax.lax.switch(branch, [
        lambda x, t: high(x, t).astype(jnp.float32),
        lambda x, t: low(x, t).astype(jnp.float32),
        lambda x, t: jnp.where(mask, high(x, t), low(x, t)).astype(jnp.float32),
    ], x, t)


def hybrid_denoiser(high, low, t_switch):
    """eps(x, t) = high(x, t) if t > t_switch else low(x, t) (docs/math.md §8, hybrid sampling).

    With high = eps*, low = eps_theta: the optimum decides the coarse steps, the network the
    fine ones (and the reverse order with the two swapped). t_switch = 0 is high alone,
    t_switch = T is low alone. A Partial whose leaves are both denoisers' arrays and
    t_switch, so a sampler compiles once for every t_switch."""
    wrap = lambda d: d if isinstance(d, jax.tree_util.Partial) else jax.tree_util.Partial(d)
    return jax.tree_util.Partial(_hybrid_eps, high=wrap(high), low=wrap(low),
                                 t_switch=jnp.asarray(t_switch, jnp.int32))
