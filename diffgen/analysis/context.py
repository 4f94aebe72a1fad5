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

from diffgen.optimum import chunked, references
from diffgen.analysis import copies, metrics, quality, report
from diffgen.analysis.provenance import provenance
from diffgen.diffusion import samplers
from diffgen.diffusion.denoisers import network_denoiser
from diffgen.errors import NonFiniteError
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
    train_rows: chunked.ChunkedRows   # the training set, prepared once (sharded on the mesh)
    distance_rows: chunked.ChunkedRows  # the same in float32 for nearest-neighbour distances
                              # (train_rows itself when optimal.storage_dtype is float32)
    heldout_rows: chunked.ChunkedRows | None
    x_T: np.ndarray           # (analysis.num_samples, ...) initial noise shared by all samplers
    rng: jax.Array            # the analysis stream (x_T used fold_in 0): fold_in a distinct
                              # constant >= 1 per use
    provenance: dict = dataclasses.field(default_factory=dict)  # what the sections are made
                              # from: analysis.provenance.provenance(config, step, training set)
    _copy_threshold: float | None = dataclasses.field(default=None, repr=False)
    _gaussian: object = dataclasses.field(default=None, repr=False)

    def gaussian(self):
        """The Gaussian denoiser of the training set's mean and covariance
        (optimum.references; its eigendecomposition made once and shared by E3, E4, E8)."""
        if self._gaussian is None:
            self._gaussian = references.gaussian_denoiser(self.dataset.train, self.schedule,
                                                          mesh=self.mesh)
        return self._gaussian

    def copy_threshold(self):
        """δ of the distance criterion d_1 < δ (analysis.copies; computed on first use)."""
        if self._copy_threshold is None:
            self._copy_threshold = copies.source_threshold(self.config, mesh=self.mesh)
        return self._copy_threshold

    def calibration(self):
        """Both criteria's rates on held-out images and noisy copies of the training images
        at this N (copies.calibration), with δ."""
        heldout = self.dataset.heldout if len(self.dataset.heldout_images) else None
        return copies.calibration(self.dataset.train, heldout, self.copy_threshold(),
                                  self.config.analysis.copy_noise_levels, mesh=self.mesh,
                                  rows=self.distance_rows)

    def network(self, params=None):
        """The trained network as a denoiser (x, t) -> eps_theta."""
        return network_denoiser(self.model, self.params if params is None else params)

    def optimum(self):
        """The empirical-optimal denoiser eps* of the training set."""
        return optimal_denoiser(self.train_rows, self.schedule)

    def sample(self, denoiser, method, x_T=None, num_steps=None, eta=0.0, key=0):
        """Samples (NumPy) from x_T (default: ctx.x_T) with any denoiser and sampler; raises
        NonFiniteError if any sample is not finite."""
        s = self.config.sampling.copy_and_resolve_references()
        s.method = method
        s.num_steps = 0 if method == 'ddpm' else (num_steps or self.config.analysis.sampler_steps)
        s.eta = eta
        x = samplers.generate(denoiser, self.x_T if x_T is None else x_T, self.schedule,
                              sampling_config=s, rng=jax.random.fold_in(self.rng, key),
                              mesh=self.mesh, batch_size=self.config.analysis.batch_size)
        bad = int(np.sum(~np.isfinite(x.reshape(len(x), -1)).all(axis=1)))
        if bad:
            raise NonFiniteError(f'{method} sampler: {bad} of {len(x)} samples are non-finite '
                                 '(NaN or inf); the model has diverged: analyse an earlier '
                                 'checkpoint (--step) or retrain')
        return x

    def novelty_distances(self, samples):
        """(d_1 to the first n training images, d_1 to the n held-out images), n = held-out
        size (diffgen.analysis.metrics.novelty compares the two)."""
        n = self.heldout_rows.num_rows
        o = self.config.optimal
        train_rows = chunked.prepare_rows(self.dataset.train[:n], o.chunk_size, np.float32,
                                          mesh=self.mesh)
        return (metrics.nearest_distance(samples, train_rows),
                metrics.nearest_distance(samples, self.heldout_rows))

    def copy_metrics(self, samples):
        """(numbers, d_1) of samples against the training set: numbers = memorisation ratio
        (fraction with d_1/d_2 < 1/3), near-copy rate (fraction with d_1 < δ, the distance
        criterion: copy_threshold), exact-copy rate (d_1 < 1e-3), median d_1 (over √D)
        and FD / precision / recall against the held-out set (diffgen.analysis.quality)."""
        d1, d2, _ = metrics.nearest_two(samples, self.distance_rows)
        numbers = {'memorisation_ratio': metrics.memorisation_ratio(d1, d2),
                   'near_copy_rate': copies.rates(d1, d2, self.copy_threshold())['distance'],
                   'exact_copy_rate': metrics.exact_copy_rate(d1),
                   'median_d1': float(np.median(d1))}
        numbers.update(quality.quality_metrics(samples, self))
        return numbers, d1

    def real_quality(self):
        """FD / precision / recall of as many real training images as there are samples
        (len(x_T); all N if fewer), against the reference, and that number ('num_images'):
        the best a model can score at this sample size."""
        n = min(len(self.x_T), len(self.dataset.train))
        return {**quality.quality_metrics(self.dataset.train[:n], self), 'num_images': n}

    def figure_path(self, name):
        return os.path.join(self.report_dir, name)


def make_context(config, workdir, run):
    """The Context of a trained (or restored) training.loop.Run: its sampling parameters
    (config.sampling.use_ema), the training and held-out sets prepared for the engine, x_T."""
    a, o = config.analysis, config.optimal
    dataset, mesh = run.dataset, run.mesh
    prepare = lambda x, dtype=o.storage_dtype: chunked.prepare_rows(x, o.chunk_size, dtype,
                                                                     mesh=mesh)
    train_rows = prepare(dataset.train)
    distance_rows = (train_rows if train_rows.rows.dtype == np.float32
                     else prepare(dataset.train, np.float32))
    heldout = dataset.heldout
    rng = stream(config.seed, 'analysis')
    x_T = samplers.initial_noise(jax.random.fold_in(rng, 0), a.num_samples,
                                 dataset.image_shape, batch_size=a.batch_size)
    return Context(config, workdir, report.report_dir(workdir), dataset, run.schedule, run.model,
                   run.params(config.sampling.use_ema), mesh, train_rows, distance_rows,
                   prepare(heldout, np.float32) if len(heldout) else None, x_T, rng,
                   provenance(config, int(run.state.step), dataset.train_images))
