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

Besides the loss and gradient norm, each step returns the sums and counts of its
per-example losses in `training.loss_bands` equal bands of t (loss_band), the usual
diffusion diagnostic in TensorBoard; with training.compute_dtype='bfloat16' the network
runs in bfloat16 on float32 parameters and optimiser state (compute_apply).
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from diffgen import parallel
from diffgen.data import to_float
from diffgen.diffusion.objectives import get_objective
from diffgen.rng import stream
from diffgen.training.state import TrainState, apply_gradients

COMPUTE_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}  # training.compute_dtype


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


def loss_band(t, bands, num_timesteps):
    """The band of each t in U{1..T} when 1..T is cut into `bands` equal bands:
    floor((t - 1) bands / T), in 0..bands-1 (band b holds t = bT/bands + 1 .. (b+1)T/bands)."""
    return (t - 1) * bands // num_timesteps


def band_sums(terms, t, bands, num_timesteps):
    """(sums (bands,), counts (bands,)) of the per-example losses `terms` over loss_band(t)."""
    band = loss_band(t, bands, num_timesteps)
    return (jax.ops.segment_sum(terms, band, bands),
            jax.ops.segment_sum(jnp.ones_like(terms), band, bands))


def cast_floats(tree, dtype):
    """Every floating-point leaf of tree as dtype (the others unchanged)."""
    return jax.tree.map(
        lambda x: x.astype(dtype) if jnp.issubdtype(jnp.asarray(x).dtype, jnp.floating) else x,
        tree)


def compute_apply(model, compute_dtype):
    """model.apply, or for 'bfloat16' a mixed-precision one: the float32 parameters and the
    input cast to bfloat16, every Dense and Conv input cast too (flax.linen.intercept_methods,
    so that float32 side inputs such as the time embedding do not promote the network back
    to float32), and the output cast back to float32, so that the loss, the gradients (through
    the casts) and the optimiser state stay float32."""
    if compute_dtype == 'float32':
        return model.apply
    dtype = COMPUTE_DTYPES[compute_dtype]

    def cast_layer_inputs(next_fun, args, kwargs, context):
        if isinstance(context.module, (nn.Dense, nn.Conv)) and context.method_name == '__call__':
            args = cast_floats(args, dtype)
        return next_fun(*args, **kwargs)

    def apply(params, x, t, **kwargs):
        with nn.intercept_methods(cast_layer_inputs):
            out = model.apply(cast_floats(params, dtype), x.astype(dtype), t, **kwargs)
        return out.astype(jnp.float32)
    return apply


def make_train_call(config, model, tx, schedule, mesh, donate=False):
    """Returns jitted `train_call(state, train_set) -> (state, metrics)` that runs
    config.training.steps_per_call steps; metrics['loss'] etc. have one entry per step
    (with training.loss_bands > 0 also 'band_sum' and 'band_count', (steps, bands): band_sums).
    state is replicated over the mesh; train_set is as draw_batch takes it (its sharding is
    kept: rows split over the mesh, or whole on every device). donate: the state's buffers
    are donated to the call (the caller must not use the state passed in again), so that
    the device holds one train state instead of two."""
    t = config.training
    loss_fn = get_objective(t)
    apply_fn = compute_apply(model, t.compute_dtype)
    batch_size = t.batch_size
    bands = t.loss_bands
    batch_sharding = parallel.batch_sharded(mesh)

    def train_call(state: TrainState, train_set):
        def one_step(state: TrainState, _):
            batch_key, loss_key, flip_key = step_keys(config.seed, state.step)
            x0 = draw_batch(train_set, batch_size, batch_key, flip_key,
                            config.data.random_flip, mesh)
            x0 = jax.lax.with_sharding_constraint(x0, batch_sharding)
            if bands:
                (loss, (terms, steps)), grads = jax.value_and_grad(
                    lambda p: loss_fn(apply_fn, p, x0, rng=loss_key, schedule=schedule,
                                      with_terms=True), has_aux=True)(state.params)
            else:
                loss, grads = jax.value_and_grad(
                    lambda p: loss_fn(apply_fn, p, x0, rng=loss_key, schedule=schedule))(state.params)
            new_state = apply_gradients(state, grads, tx, config.optim.ema_decay,
                                        config.optim.ema_warmup)
            metrics = {'loss': loss, 'grad_norm': optax.global_norm(grads)}
            if bands:
                metrics['band_sum'], metrics['band_count'] = band_sums(
                    terms, steps, bands, schedule.num_timesteps)
            return new_state, metrics

        return repeat(one_step, state, t.steps_per_call, t.unroll)

    replicated = parallel.replicated(mesh)
    return jax.jit(train_call, out_shardings=(replicated, replicated),
                   donate_argnums=(0,) if donate else ())
