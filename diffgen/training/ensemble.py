"""K models, one per training set S_k, trained at once: the train step vmapped over k.

State k is the TrainState of a model initialised from fold_in(init stream, k) and trained on
S_k alone with the configured objective, optimiser and batch size; step s of model k draws
its batch (uniform indices into S_k, with replacement; no flips: these are points, not
images) and noise from fold_in(fold_in(train stream, s), k). The stacked states (leading
axis K) advance `steps_per_call` steps per jitted call (one lax.scan), so the K small
networks share one program instead of K sequential runs. For the mutual-information
estimates of low-dimensional data (docs/math.md §9), where one model is too small to use the
machine.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from diffgen.data import to_float
from diffgen.diffusion.objectives import get_objective
from diffgen.rng import stream
from diffgen.training.state import TrainState, apply_gradients, create_train_state


def init_states(model, tx, seed, num_models, example_shape):
    """K TrainStates stacked along a leading axis; model k from fold_in(init stream, k)."""
    def init(seed):
        keys = jax.vmap(lambda k: jax.random.fold_in(stream(seed, 'init'), k))(
            jnp.arange(num_models))
        return jax.vmap(lambda key: create_train_state(model, tx, key, example_shape))(keys)
    return jax.jit(init)(seed)


def make_ensemble_train_call(config, model, tx, schedule, num_steps):
    """Jitted `call(states, train_sets) -> (states, losses (num_steps, K))` that advances
    every model k by num_steps steps on its own training set train_sets[k] (K, N, ...)."""
    loss_fn = get_objective(config.training)
    batch_size = config.training.batch_size

    def one_model_step(state: TrainState, train_set, index):
        key = jax.random.fold_in(jax.random.fold_in(stream(config.seed, 'train'), state.step),
                                 index)
        batch_key, loss_key = jax.random.fold_in(key, 0), jax.random.fold_in(key, 1)
        x0 = to_float(train_set[jax.random.randint(batch_key, (batch_size,), 0,
                                                   train_set.shape[0])])
        loss, grads = jax.value_and_grad(
            lambda p: loss_fn(model.apply, p, x0, rng=loss_key, schedule=schedule))(state.params)
        return apply_gradients(state, grads, tx, config.optim.ema_decay,
                               config.optim.ema_warmup), loss

    def call(states, train_sets):
        indices = jnp.arange(train_sets.shape[0])
        step = jax.vmap(one_model_step)
        return jax.lax.scan(lambda s, _: step(s, train_sets, indices), states, None,
                            length=num_steps)

    return jax.jit(call)


def ensemble_apply(model):
    """apply(params_stacked, x, t) for x (K·M, ...) laid out set by set: model k's
    parameters denoise rows k·M .. (k+1)·M − 1. Wrap with jax.tree_util.Partial to pass
    it to a sampler as a denoiser (x, t) -> eps."""
    def apply(params, x, t):
        num_models = jax.tree.leaves(params)[0].shape[0]
        xs = x.reshape((num_models, -1) + x.shape[1:])
        ts = t.reshape(num_models, -1)
        return jax.vmap(model.apply)(params, xs, ts).reshape(x.shape)
    return apply
