"""Denoisers `(x, t) -> eps_hat` built from trained networks, as pytree Partials so that the
samplers compile once for all parameter values."""
import jax


def network_denoiser(model, params):
    """eps_theta(x, t) = model.apply(params, x, t) (deterministic: no dropout)."""
    return jax.tree_util.Partial(model.apply, params)
