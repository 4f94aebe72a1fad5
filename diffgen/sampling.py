"""Drawing many samples with any denoiser, batch by batch, with reproducible initial noise."""
from __future__ import annotations

import jax
import numpy as np

from diffgen import parallel, samplers


def initial_noise(rng, num, example_shape, batch_size):
    """x_T for sample i is drawn from fold_in(rng, batch index): the same x_T for the same
    (rng, num, batch_size), whatever the denoiser, so runs can be compared sample by sample."""
    out = []
    for b, start in enumerate(range(0, num, batch_size)):
        n = min(batch_size, num - start)
        out.append(jax.random.normal(jax.random.fold_in(rng, b), (n,) + tuple(example_shape)))
    return np.concatenate([np.asarray(x) for x in out])


def generate(denoiser, schedule, x_T, sampling_config, rng, mesh=None, batch_size=None):
    """Runs the configured sampler on x_T in batches (sharded over the mesh's data axis)
    and returns the samples as a float32 NumPy array."""
    s = sampling_config
    mesh = mesh or parallel.get_mesh()
    devices = mesh.devices.size
    batch_size = min(batch_size or s.batch_size, x_T.shape[0])
    batch_size = -(-batch_size // devices) * devices  # every batch the same shape: one compile
    out = []
    for b, start in enumerate(range(0, x_T.shape[0], batch_size)):
        xb, n = parallel.pad_to_multiple(np.asarray(x_T[start:start + batch_size]), batch_size)
        xb = parallel.shard_batch(xb, mesh)
        x0 = samplers.sample(denoiser, xb, schedule, s.method, s.num_steps or None, s.eta,
                             rng=jax.random.fold_in(rng, b))
        out.append(parallel.to_host(x0)[:n])
    return np.concatenate(out)
