"""The jitted training call: `steps_per_call` optimiser steps as one lax.scan.

On XLA:CPU a convolution's weight gradient inside a while loop runs ~40x slower than the
same op outside one (benchmarks/bench_train_step.py measures it), so CPU configs unroll the
scan (`training.unroll`) and keep `steps_per_call` small; accelerators keep the loop.

Every random draw of step s derives from fold_in(train stream, s), and each batch is drawn
statelessly from the in-memory training set by step (uniform indices, with replacement),
so a resumed run draws exactly what the uninterrupted run would have drawn, on any number
of devices. The training set is sharded over the mesh's data axis (each host holds its own
rows); the global batch is gathered from it by index, split over the same axis, and the
state replicated: jit inserts the gradient all-reduce.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from diffgen import parallel
from diffgen.data import to_float
from diffgen.diffusion.objectives import get_objective
from diffgen.rng import stream
from diffgen.training.state import TrainState, apply_gradients


def step_keys(seed, step):
    """(batch key, loss key, augmentation key) of a train step: from fold_in(train stream, step)."""
    key = jax.random.fold_in(stream(seed, 'train'), step)
    return jax.random.fold_in(key, 0), jax.random.fold_in(key, 1), jax.random.fold_in(key, 2)


def draw_batch(train_set, batch_size, batch_key, flip_key, random_flip, mesh):
    """A batch in [-1, 1], split along the batch axis over the mesh: uniform indices into
    the training set (a parallel.PaddedRows, or an array of images whose leading size
    divides over the mesh), optional horizontal flip. The indices depend on the key alone,
    so every device count draws the same batch."""
    if not isinstance(train_set, parallel.PaddedRows):
        train_set = parallel.PaddedRows(train_set, train_set.shape[0])
    idx = jax.random.randint(batch_key, (batch_size,), 0, train_set.num_rows)
    x0 = to_float(parallel.gather_rows(train_set.rows, idx, mesh))
    if random_flip:
        flip = jax.random.bernoulli(flip_key, 0.5, (batch_size,))
        x0 = jnp.where(flip[:, None, None, None], x0[:, :, ::-1, :], x0)
    return x0


def repeat(step_fn, state, length, unroll):
    """lax.scan of step_fn over `length` steps, or (unroll) the same steps traced one after
    another; returns (state, stacked per-step outputs) either way. (lax.scan's unroll=True
    keeps a loop when length is 1, hence the explicit form.)"""
    if not unroll:
        return jax.lax.scan(step_fn, state, None, length=length)
    outputs = []
    for _ in range(length):
        state, out = step_fn(state, None)
        outputs.append(out)
    return state, jax.tree.map(lambda *xs: jnp.stack(xs), *outputs)


def make_train_call(config, model, tx, schedule, mesh):
    """Returns jitted `train_call(state, train_set) -> (state, metrics)` that runs
    config.training.steps_per_call steps; metrics['loss'] etc. have one entry per step.
    state is replicated over the mesh; train_set is as draw_batch takes it (its sharding is
    kept: rows split over the mesh, or whole on every device)."""
    loss_fn = get_objective(config.training)
    batch_size = config.training.batch_size
    batch_sharding = parallel.batch_sharded(mesh)

    def train_call(state: TrainState, train_set):
        def one_step(state: TrainState, _):
            batch_key, loss_key, flip_key = step_keys(config.seed, state.step)
            x0 = draw_batch(train_set, batch_size, batch_key, flip_key,
                            config.data.random_flip, mesh)
            x0 = jax.lax.with_sharding_constraint(x0, batch_sharding)
            loss, grads = jax.value_and_grad(
                lambda p: loss_fn(model.apply, p, x0, rng=loss_key, schedule=schedule))(state.params)
            new_state = apply_gradients(state, grads, tx, config.optim.ema_decay)
            return new_state, {'loss': loss, 'grad_norm': optax.global_norm(grads)}

        return repeat(one_step, state, config.training.steps_per_call, config.training.unroll)

    replicated = parallel.replicated(mesh)
    return jax.jit(train_call, out_shardings=(replicated, replicated))
