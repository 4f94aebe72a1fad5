"""The training state: one pytree (step, params, EMA params, optimiser state)."""
from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp
import optax

from diffgen.networks import unet


@flax.struct.dataclass
class TrainState:
    step: jnp.ndarray
    params: dict
    ema_params: dict
    opt_state: optax.OptState


def learning_rate(optim_config):
    """Adam's rate as optax takes it: the schedule lr(n) = peak min(n / W, 1) of the update
    count n (W = optim.warmup_steps), or the peak rate itself with W = 0."""
    o = optim_config
    if o.warmup_steps == 0:
        return o.learning_rate
    return optax.linear_schedule(0.0, o.learning_rate, o.warmup_steps)


def learning_rate_at(optim_config, count):
    """The rate of the update made after `count` updates (learning_rate at count), a float."""
    lr = learning_rate(optim_config)
    return float(lr(count)) if callable(lr) else float(lr)


def make_optimizer(optim_config):
    """Adam with linear warm-up to the peak rate (learning_rate), after global-norm clipping."""
    o = optim_config
    parts = [optax.clip_by_global_norm(o.grad_clip)] if o.grad_clip > 0 else []
    parts.append(optax.adam(learning_rate(o), b1=o.beta1, b2=o.beta2, eps=o.eps))
    return optax.chain(*parts)


def create_train_state(model, tx, rng, example_shape):
    """Initialises parameters for inputs of shape (1, *example_shape); EMA starts equal.
    A UNet's attention heads are checked against the shape first (unet.check_attention_heads:
    a ConfigError of one line, not an error from inside the traced init)."""
    if isinstance(model, unet.UNet):
        unet.check_attention_heads(model, example_shape)
    x = jnp.zeros((1,) + tuple(example_shape), jnp.float32)
    params = model.init(rng, x, jnp.ones((1,), jnp.int32))
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      ema_params=jax.tree.map(jnp.copy, params), opt_state=tx.init(params))


def apply_gradients(state, grads, tx, ema_decay, ema_warmup=False):
    """One optimiser step: params <- params + tx updates, EMA updated (with the decay of
    ema_decay_at(state.step, ...)), step + 1."""
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    decay = ema_decay_at(state.step, ema_decay, ema_warmup)
    return TrainState(step=state.step + 1, params=params,
                      ema_params=ema_update(state.ema_params, params, decay),
                      opt_state=opt_state)


def ema_decay_at(step, decay, warmup):
    """The EMA decay of the update made at `step` (0 for the first): the configured decay,
    or with warm-up (optim.ema_warmup) the classic schedule (as in TensorFlow's
    ExponentialMovingAverage with num_updates)

        decay_t = min(decay, (1 + t) / (10 + t)),

    0.1 at t = 0, 0.5 at t = 8, 0.9 at t = 80, 0.99 at t = 890 (decay itself from
    t = (10 decay - 1) / (1 - decay) on), so that a short run's EMA does not keep a share
    decay^t of the initialisation."""
    if not warmup:
        return decay
    t = jnp.asarray(step, jnp.float32)
    return jnp.minimum(decay, (1.0 + t) / (10.0 + t))


def sampling_params(state, use_ema):
    """The parameters a run samples with: the EMA ones (use_ema, config.sampling.use_ema) or
    the raw ones. The one place this choice is made."""
    return state.ema_params if use_ema else state.params


def ema_update(ema, params, decay):
    """ema <- decay ema + (1 - decay) params."""
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)
