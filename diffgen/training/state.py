"""The training state: one pytree (step, params, EMA params, optimiser state)."""
from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import optax


@flax.struct.dataclass
class TrainState:
    step: jnp.ndarray
    params: dict
    ema_params: dict
    opt_state: optax.OptState


def make_optimizer(optim_config):
    """Adam with linear warm-up to the peak rate, after global-norm clipping."""
    o = optim_config
    lr = optax.linear_schedule(0.0, o.learning_rate, max(o.warmup_steps, 1))
    if o.warmup_steps == 0:
        lr = o.learning_rate
    parts = [optax.clip_by_global_norm(o.grad_clip)] if o.grad_clip > 0 else []
    parts.append(optax.adam(lr, b1=o.beta1, b2=o.beta2, eps=o.eps))
    return optax.chain(*parts)


def create_train_state(model, tx, rng, example_shape):
    """Initialises parameters for inputs of shape (1, *example_shape); EMA starts equal."""
    x = jnp.zeros((1,) + tuple(example_shape), jnp.float32)
    params = model.init(rng, x, jnp.ones((1,), jnp.int32))
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      ema_params=jax.tree.map(jnp.copy, params), opt_state=tx.init(params))


def apply_gradients(state, grads, tx, ema_decay):
    """One optimiser step: params <- params + tx updates, EMA updated, step + 1."""
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return TrainState(step=state.step + 1, params=params,
                      ema_params=ema_update(state.ema_params, params, ema_decay),
                      opt_state=opt_state)


def sampling_params(state, use_ema):
    """The parameters a run samples with: the EMA ones (use_ema, config.sampling.use_ema) or
    the raw ones. The one place this choice is made."""
    return state.ema_params if use_ema else state.params


def ema_update(ema, params, decay):
    """ema <- decay ema + (1 - decay) params."""
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)
