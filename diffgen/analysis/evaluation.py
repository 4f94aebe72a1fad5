"""Evaluation during training (every training.eval_every steps): how much the current model
copies, measured on the same inputs at every evaluation so that the numbers form curves.

Fixed once per run (from the seed): x_T of config.evaluation.num_samples samples, the first
n = config.evaluation.num_images training and held-out images, and one (t, ε) per image pair
(the same for both sets). At each evaluation, for the sampling parameters (EMA or raw) and each
sampler in config.evaluation.methods (docs/math.md §7, §10, §2):

  memorisation_ratio  fraction of samples with d_1/d_2 < 1/3 over the whole training set
  exact_copy_rate     fraction with d_1 < 1e-3 (RMS per pixel)
  novelty_ratio       mean d_1 to the n training images / mean d_1 to the n held-out images
  fd                  Fréchet distance of the samples' classifier features to the held-out set
and, for the network itself,
  loss_train    = (1/n) Σ_i ‖ε_θ(a_{t_i} y_i + σ_{t_i} ε_i, t_i) − ε_i‖² / D   over training y_i
  loss_heldout  = the same over the held-out images with the same (t_i, ε_i)
  loss_gap      = loss_heldout − loss_train   (the generalisation gap of the loss).
Keys are '<method>/<name>' for the sample metrics. A non-finite sample makes its sampler's
metrics NaN (never "not memorised").
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from diffgen.analysis import metrics, quality
from diffgen.diffusion import samplers
from diffgen.diffusion.conversions import diffuse
from diffgen.diffusion.denoisers import network_denoiser
from diffgen.optimum import chunked
from diffgen.rng import stream

_X_T, _LOSS_T, _LOSS_EPS = 0, 1, 2          # fold_in constants of the evaluation stream


@jax.jit
def denoising_loss(denoiser, y, t, eps, schedule):
    """(1/n) Σ_i ‖ε̂(a_t y_i + σ_t ε_i, t_i) − ε_i‖² / D for one batch (n, ...)."""
    x = diffuse(y, eps=eps, a=schedule.a[t], sigma=schedule.sigma[t])
    return jnp.mean((denoiser(x, t) - eps) ** 2)


class Evaluator:
    """evaluate(params) -> {name: float} on the run's fixed evaluation inputs."""

    def __init__(self, config, run):
        e, o = config.evaluation, config.optimal
        self.config, self.run = config, run
        dataset = run.dataset
        rng = stream(config.seed, 'evaluation')
        self.x_T = samplers.initial_noise(jax.random.fold_in(rng, _X_T), e.num_samples,
                                          dataset.image_shape,
                                          batch_size=config.sampling.batch_size)
        prepare = lambda x: chunked.prepare_rows(x, o.chunk_size, o.storage_dtype, mesh=run.mesh)
        self.train_rows = prepare(dataset.train)
        n = min(e.num_images, len(dataset.train_images))
        if len(dataset.heldout_images):
            n = min(n, len(dataset.heldout_images))
            self.heldout = dataset.heldout[:n]
            self.novelty_rows = (prepare(dataset.train[:n]), prepare(self.heldout))
        else:
            self.heldout, self.novelty_rows = None, None
        self.train = dataset.train[:n]
        T = run.schedule.num_timesteps
        self.t = jax.random.randint(jax.random.fold_in(rng, _LOSS_T), (n,), 1, T + 1)
        self.eps = jax.random.normal(jax.random.fold_in(rng, _LOSS_EPS),
                                     (n,) + dataset.image_shape)
        self.sample_rng = jax.random.fold_in(rng, 3)
        self._real_features = None

    def real_features(self):
        """Classifier features of the held-out set (the training subset without one)."""
        if self._real_features is None:
            reference = self.heldout if self.heldout is not None else self.train
            self._real_features = quality.features(reference, self.config, self.run.dataset)
        return self._real_features

    def sample_metrics(self, samples):
        """Memorisation, novelty and quality of one set of samples (NaN if any is non-finite)."""
        names = ('memorisation_ratio', 'exact_copy_rate', 'novelty_ratio', 'fd')
        if not np.all(np.isfinite(samples)):
            return dict.fromkeys(names, float('nan'))
        d1, d2, _ = metrics.nearest_two(samples, self.train_rows)
        out = {'memorisation_ratio': metrics.memorisation_ratio(d1, d2),
               'exact_copy_rate': metrics.exact_copy_rate(d1), 'novelty_ratio': float('nan'),
               'fd': float('nan')}
        if self.novelty_rows is not None:
            d_train = metrics.nearest_distance(samples, self.novelty_rows[0])
            d_heldout = metrics.nearest_distance(samples, self.novelty_rows[1])
            out['novelty_ratio'] = metrics.novelty(d_train, d_heldout)['ratio']
        generated = quality.features(samples, self.config, self.run.dataset)
        if generated is not None:
            out['fd'] = quality.feature_frechet_distance(generated, self.real_features())
        return out

    def loss(self, denoiser, images):
        batch = self.config.evaluation.num_images
        total = 0.0
        for i in range(0, len(images), batch):
            part = denoising_loss(denoiser, jnp.asarray(images[i:i + batch]), self.t[i:i + batch],
                                  self.eps[i:i + batch], self.run.schedule)
            total += float(part) * len(images[i:i + batch])
        return total / len(images)

    def __call__(self, params):
        e, s = self.config.evaluation, self.config.sampling
        denoiser = network_denoiser(self.run.model, params)
        out = {}
        for method in e.methods:
            settings = s.copy_and_resolve_references()
            settings.method = method
            settings.num_steps = 0 if method == 'ddpm' else e.sampler_steps
            settings.eta = 0.0
            samples = samplers.generate(denoiser, self.x_T, self.run.schedule,
                                        sampling_config=settings, rng=self.sample_rng,
                                        mesh=self.run.mesh)
            out.update({f'{method}/{k}': v for k, v in self.sample_metrics(samples).items()})
        out['loss_train'] = self.loss(denoiser, self.train)
        if self.heldout is not None:
            out['loss_heldout'] = self.loss(denoiser, self.heldout)
            out['loss_gap'] = out['loss_heldout'] - out['loss_train']
        return out
