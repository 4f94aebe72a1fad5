"""Evaluation during training: named evaluators, each on its own schedule, measured on the
same inputs at every evaluation so that their numbers form curves.

    config.evaluation.evals.<name> = {'type': <a registered type>, 'every': <steps>,
                                      <that type's options>}

An evaluator runs every `every` training steps (a multiple of training.steps_per_call; 0 =
never, so that a config's evaluator can be turned off from the command line) and at the
last step. Its numbers are '<name>/<metric>': TensorBoard's eval/<name>/<metric> and the
columns of DIR/eval.csv (one row per evaluated step; an evaluator that did not run at a
step leaves its cells empty).

Fixed once per run (from the seed), shared by every evaluator (EvaluationInputs): x_T of
config.evaluation.num_samples samples, the first n = config.evaluation.num_images training
and held-out images, and the loss's grid of t and its noise (below; image i of both sets
shares its ε). The types (docs/math.md §7, §10, §2):

  memorisation  (method, sampler_steps) samples of the sampling parameters from x_T:
                memorisation_ratio  fraction with d_1/d_2 < 1/3 over the whole training set
                near_copy_rate      fraction with d_1 < δ, the distance criterion (the same
                                    δ at every N: diffgen/analysis/copies.py)
                exact_copy_rate     fraction with d_1 < 1e-3 (RMS per pixel)
                novelty_ratio       mean d_1 to the n training images / mean d_1 to the n
                                    held-out images
  fd            (method, sampler_steps) the same samples:
                fd                  Fréchet distance of their classifier features to the
                                    held-out set's
  loss          (t_strata K, eps_per_image M) the network itself on a fixed stratified grid:
                K strata S_k = {⌊(k−1)T/K⌋+1 .. ⌊kT/K⌋} of {1..T}, one t_k drawn uniformly
                in each (the same for every image and evaluation), weights w_k = |S_k|/T,
                and M draws ε_ikm per image i and t_k, so that per image
                  ℓ_i = Σ_k w_k (1/M) Σ_m ‖ε_θ(a_{t_k} y_i + σ_{t_k} ε_ikm, t_k) − ε_ikm‖² / D
                (a stratified estimate of E_{t ~ U{1..T}, ε} of the per-image loss);
                train   = (1/n) Σ_i ℓ_i over the training images
                heldout = the same over the held-out images (image i with the same ε_ikm)
                gap     = heldout − train   (the generalisation gap of the loss)
                gap_low, gap_high  its 95 % paired t-interval over the n image pairs:
                  d̄ ± t_{0.975, n−1} s_d/√n,  d_i = ℓ_i^heldout − ℓ_i^train
                (paired: pair i shares its t and ε, so d_i is free of the (t, ε) noise both
                losses share, and the pairs are independent; t, not normal, quantiles since n
                may be as small as 16; the interval is over images and ε given the grid)

Evaluators of one step that share a sampler and step count share its samples (drawn once).
A non-finite sample makes its evaluator's metrics NaN (never "not memorised").
A further type is a function (inputs, options, denoiser, draw) -> {metric: float}
registered with @evaluator_type(name, **option_defaults).
"""
from __future__ import annotations

import dataclasses
import functools
import types
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from diffgen.analysis import copies, metrics, quality
from diffgen.diffusion import samplers
from diffgen.diffusion.conversions import diffuse
from diffgen.diffusion.denoisers import network_denoiser
from diffgen.optimum import chunked
from diffgen.registry import Registry
from diffgen.rng import stream

_X_T, _LOSS_T, _LOSS_EPS, _SAMPLE = 0, 1, 2, 3   # fold_in constants of the evaluation stream

COMMON_OPTIONS = ('type', 'every')                # the keys every evaluator has


@dataclasses.dataclass(frozen=True)
class EvaluatorType:
    """measure(inputs, options, denoiser, draw) -> {metric: float}; options: the type's
    option names and defaults (each evaluator's config entry may set them)."""
    measure: Callable
    options: dict


EVALUATORS = Registry('evaluator type')


def evaluator_type(name, **options):
    """Decorator: registers measure under name, with its options' defaults."""
    def decorate(measure):
        EVALUATORS.register(name)(EvaluatorType(measure, options))
        return measure
    return decorate


def stratified_times(key, num_timesteps, num_strata):
    """(t_k, w_k), k = 1..K (K = min(num_strata, T)): one t drawn uniformly from each stratum
    S_k = {⌊(k−1)T/K⌋+1 .. ⌊kT/K⌋} of {1..T}, and its weight w_k = |S_k|/T (Σ w_k = 1)."""
    T = num_timesteps
    K = min(num_strata, T)
    edges = (np.arange(K + 1) * T) // K
    u = np.asarray(jax.random.uniform(key, (K,)), np.float64)
    t = edges[:-1] + 1 + np.minimum((u * np.diff(edges)).astype(np.int64), np.diff(edges) - 1)
    return t.astype(np.int32), np.diff(edges).astype(np.float64) / T


def loss_noise(key, index, num_times, eps_per_image, shape):
    """ε_ikm (len(index), K, M, *shape): the noise of image index i, drawn from
    fold_in(key, i), so that image i of the training and held-out sets share it."""
    draw = lambda i: jax.random.normal(jax.random.fold_in(key, i),
                                       (num_times, eps_per_image) + tuple(shape))
    return jax.vmap(draw)(index)


@functools.partial(jax.jit, static_argnames='eps_per_image')
def per_image_losses(denoiser, y, index, t, w, key, schedule, eps_per_image):
    """ℓ_i = Σ_k w_k (1/M) Σ_m ‖ε̂(a_{t_k} y_i + σ_{t_k} ε_ikm, t_k) − ε_ikm‖² / D for one
    batch of images y (b, ...) with their indices (b,) (ε_ikm: loss_noise), one t_k at a
    time (b·M rows per network call)."""
    b, M = len(y), eps_per_image
    eps = loss_noise(key, index, len(t), M, y.shape[1:])            # (b, K, M, ...)

    def at_time(args):
        t_k, eps_k = args                                           # (), (b, M, ...)
        eps_k = eps_k.reshape((b * M,) + y.shape[1:])
        y_k = jnp.repeat(y, M, axis=0)
        t_rows = jnp.full((b * M,), t_k, jnp.int32)
        x = diffuse(y_k, eps=eps_k, a=schedule.a[t_rows], sigma=schedule.sigma[t_rows])
        sq = ((denoiser(x, t_rows) - eps_k) ** 2).reshape(b, M, -1)
        return jnp.mean(sq, axis=(1, 2))                            # (b,)

    losses = jax.lax.map(at_time, (t, jnp.moveaxis(eps, 1, 0)))    # (K, b)
    return jnp.tensordot(w, losses, axes=1)


def paired_t_interval(differences, level=0.95):
    """(d̄, low, high): d̄ ± t_{(1+level)/2, n−1} s/√n of paired differences (s with ddof 1;
    NaN bounds for n < 2)."""
    d = np.asarray(differences, np.float64)
    mean = float(d.mean())
    if len(d) < 2:
        return mean, float('nan'), float('nan')
    half = float(stats.t.ppf((1 + level) / 2, len(d) - 1)) * float(d.std(ddof=1)) / np.sqrt(len(d))
    return mean, mean - half, mean + half


class EvaluationInputs:
    """The run's fixed evaluation inputs: x_T, the training rows (and the novelty subsets),
    the n training and held-out images with their (t, ε), and the held-out set's classifier
    features (computed on first use)."""

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
        self.loss_t_key = jax.random.fold_in(rng, _LOSS_T)
        self.loss_eps_key = jax.random.fold_in(rng, _LOSS_EPS)
        self.sample_rng = jax.random.fold_in(rng, _SAMPLE)
        self._real_features = None
        self._copy_threshold = None

    def copy_threshold(self):
        """δ of the distance criterion (computed on first use from the whole source)."""
        if self._copy_threshold is None:
            self._copy_threshold = copies.source_threshold(self.config, mesh=self.run.mesh)
        return self._copy_threshold

    def real_features(self):
        """Classifier features of the held-out set (the training subset without one)."""
        if self._real_features is None:
            reference = self.heldout if self.heldout is not None else self.train
            self._real_features = quality.features(reference, self.config, self.run.dataset)
        return self._real_features

    def sample(self, denoiser, method, sampler_steps):
        """Samples of denoiser from x_T (DDPM: all T steps; η = 0)."""
        settings = self.config.sampling.copy_and_resolve_references()
        settings.method = method
        settings.num_steps = 0 if method == 'ddpm' else sampler_steps
        settings.eta = 0.0
        return samplers.generate(denoiser, self.x_T, self.run.schedule,
                                 sampling_config=settings, rng=self.sample_rng,
                                 mesh=self.run.mesh)

    def loss_times(self, num_strata):
        """(t_k, w_k) of the loss's stratified grid of num_strata strata (stratified_times)."""
        return stratified_times(self.loss_t_key, self.run.schedule.num_timesteps, num_strata)

    def losses(self, denoiser, images, num_strata, eps_per_image):
        """ℓ_i (NumPy float64) of the images (the training or held-out subset): per_image_losses
        on the grid of num_strata strata with eps_per_image draws, in batches of at most
        sampling.batch_size network rows."""
        t, w = self.loss_times(num_strata)
        batch = max(1, self.config.sampling.batch_size // eps_per_image)
        out = [per_image_losses(denoiser, jnp.asarray(images[i:i + batch]),
                                jnp.arange(i, min(i + batch, len(images))), jnp.asarray(t),
                                jnp.asarray(w, jnp.float32), self.loss_eps_key,
                                self.run.schedule, eps_per_image)
               for i in range(0, len(images), batch)]
        return np.concatenate([np.asarray(o, np.float64) for o in out])


def _finite(samples, names):
    """None if every sample is finite, else {name: NaN}."""
    return None if np.all(np.isfinite(samples)) else dict.fromkeys(names, float('nan'))


@evaluator_type('memorisation', method='ddim', sampler_steps=50)
def memorisation(inputs, options, denoiser, draw):
    samples = draw(options.method, options.sampler_steps)
    names = ('memorisation_ratio', 'near_copy_rate', 'exact_copy_rate', 'novelty_ratio')
    bad = _finite(samples, names)
    if bad:
        return bad
    d1, d2, _ = metrics.nearest_two(samples, inputs.train_rows)
    out = {'memorisation_ratio': metrics.memorisation_ratio(d1, d2),
           'near_copy_rate': copies.rates(d1, d2, inputs.copy_threshold())['distance'],
           'exact_copy_rate': metrics.exact_copy_rate(d1), 'novelty_ratio': float('nan')}
    if inputs.novelty_rows is not None:
        d_train = metrics.nearest_distance(samples, inputs.novelty_rows[0])
        d_heldout = metrics.nearest_distance(samples, inputs.novelty_rows[1])
        out['novelty_ratio'] = metrics.novelty(d_train, d_heldout)['ratio']
    return out


@evaluator_type('fd', method='ddim', sampler_steps=50)
def frechet_distance(inputs, options, denoiser, draw):
    samples = draw(options.method, options.sampler_steps)
    bad = _finite(samples, ('fd',))
    if bad:
        return bad
    generated = quality.features(samples, inputs.config, inputs.run.dataset)
    if generated is None:
        return {'fd': float('nan')}
    return {'fd': quality.feature_frechet_distance(generated, inputs.real_features())}


@evaluator_type('loss', t_strata=8, eps_per_image=4)
def denoising_loss_gap(inputs, options, denoiser, draw):
    grid = (options.t_strata, options.eps_per_image)
    train = inputs.losses(denoiser, inputs.train, *grid)
    out = {'train': float(train.mean())}
    if inputs.heldout is not None:
        heldout = inputs.losses(denoiser, inputs.heldout, *grid)
        out['heldout'] = float(heldout.mean())
        out['gap'], out['gap_low'], out['gap_high'] = paired_t_interval(heldout - train)
    return out


class Evaluations:
    """The run's named evaluators: due(step, last) -> the names to run at step;
    evaluations(params, names) -> {'<name>/<metric>': float}."""

    def __init__(self, config, run):
        self.config, self.run = config, run
        self.evals = {name: entry for name, entry in config.evaluation.evals.items()
                      if entry.every}
        self._inputs = None

    @property
    def inputs(self):
        """EvaluationInputs, made at the first evaluation (they hold the training rows)."""
        if self._inputs is None:
            self._inputs = EvaluationInputs(self.config, self.run)
        return self._inputs

    def due(self, step, last):
        """The evaluators whose period divides step, or all of them at the last step."""
        return [name for name, entry in self.evals.items() if last or step % entry.every == 0]

    def __call__(self, params, names):
        denoiser = network_denoiser(self.run.model, params)
        drawn = {}

        def draw(method, sampler_steps):
            key = (method, 0 if method == 'ddpm' else sampler_steps)
            if key not in drawn:
                drawn[key] = self.inputs.sample(denoiser, method, sampler_steps)
            return drawn[key]

        out = {}
        for name in names:
            entry = self.evals[name]
            kind = EVALUATORS[entry.type]
            options = _with_defaults(entry, kind.options)
            numbers = kind.measure(self.inputs, options, denoiser, draw)
            out.update({f'{name}/{metric}': float(v) for metric, v in numbers.items()})
        return out


def _with_defaults(entry, defaults):
    """An evaluator's options: its type's defaults, overridden by its config entry."""
    return types.SimpleNamespace(**{**defaults, **{k: v for k, v in entry.items()
                                                   if k not in COMMON_OPTIONS}})
