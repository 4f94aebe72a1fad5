"""What the report's experiments share, prepared once: the Context.

The Context holds, prepared once: the data, the schedule, the trained network
(EMA parameters), the training and held-out sets as chunked rows for the empirical-optimum /
nearest-neighbour engine, and one fixed batch of initial noise x_T so that every sampler and
denoiser is compared sample by sample.
"""
from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np

from diffgen.optimum import chunked
from diffgen.analysis import metrics, report
from diffgen.diffusion import samplers
from diffgen.diffusion.denoisers import network_denoiser
from diffgen.optimum.optimal import optimal_denoiser
from diffgen.rng import stream

@dataclasses.dataclass
class Context:
    config: object            # the run's ConfigDict
    workdir: str
    report_dir: str
    dataset: object           # diffgen.data.Dataset
    schedule: object
    model: object             # the Flax module
    params: object            # EMA parameters (or raw, per config.sampling.use_ema)
    mesh: object
    train_rows: chunked.Rows      # the training set, prepared once (sharded on the mesh)
    heldout_rows: chunked.Rows | None
    x_T: np.ndarray           # (analysis.num_samples, ...) initial noise shared by all samplers
    rng: jax.Array            # the analysis stream (x_T used fold_in 0): fold_in a distinct
                              # constant >= 1 per use

    def network(self, params=None):
        """The trained network as a denoiser (x, t) -> eps_theta."""
        return network_denoiser(self.model, self.params if params is None else params)

    def optimum(self):
        """The empirical-optimal denoiser eps* of the training set."""
        return optimal_denoiser(self.train_rows, self.schedule)

    def sample(self, denoiser, method, x_T=None, num_steps=None, eta=0.0, key=0):
        """Samples (NumPy) from x_T (default: ctx.x_T) with any denoiser and sampler."""
        s = self.config.sampling.copy_and_resolve_references()
        s.method = method
        s.num_steps = 0 if method == 'ddpm' else (num_steps or self.config.analysis.sampler_steps)
        s.eta = eta
        return samplers.generate(denoiser, self.schedule, self.x_T if x_T is None else x_T, s,
                                 jax.random.fold_in(self.rng, key), self.mesh,
                                 self.config.analysis.batch_size)

    def novelty_distances(self, samples):
        """(d_1 to the first n training images, d_1 to the n held-out images), n = held-out
        size (diffgen.analysis.metrics.novelty compares the two)."""
        n = self.heldout_rows.num_rows
        o = self.config.optimal
        train_rows = chunked.prepare_rows(self.dataset.train[:n], o.chunk_size, o.storage_dtype,
                                          self.mesh)
        return (metrics.nearest_distance(samples, train_rows),
                metrics.nearest_distance(samples, self.heldout_rows))

    def figure_path(self, name):
        return os.path.join(self.report_dir, name)


def make_context(config, workdir, run):
    """The Context of a trained (or restored) training.loop.Run: its sampling parameters
    (config.sampling.use_ema), the training and held-out sets prepared for the engine, x_T."""
    a, o = config.analysis, config.optimal
    dataset, mesh = run.dataset, run.mesh
    prepare = lambda x: chunked.prepare_rows(x, o.chunk_size, o.storage_dtype, mesh)
    heldout = dataset.heldout
    rng = stream(config.seed, 'analysis')
    x_T = samplers.initial_noise(jax.random.fold_in(rng, 0), a.num_samples,
                                 dataset.image_shape, a.batch_size)
    return Context(config, workdir, report.report_dir(workdir), dataset, run.schedule, run.model,
                   run.params(config.sampling.use_ema), mesh, prepare(dataset.train),
                   prepare(heldout) if len(heldout) else None, x_T, rng)
