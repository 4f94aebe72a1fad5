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
and held-out images, and one (t, ε) per image pair (the same for both sets). The types
(docs/math.md §7, §10, §2):

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
  loss          the network itself on the fixed (y_i, t_i, ε_i):
                train   = (1/n) Σ_i ‖ε_θ(a_{t_i} y_i + σ_{t_i} ε_i, t_i) − ε_i‖² / D
                heldout = the same over the held-out images with the same (t_i, ε_i)
                gap     = heldout − train   (the generalisation gap of the loss)

Evaluators of one step that share a sampler and step count share its samples (drawn once).
A non-finite sample makes its evaluator's metrics NaN (never "not memorised").
A further type is a function (inputs, options, denoiser, draw) -> {metric: float}
registered with @evaluator_type(name, **option_defaults).
"""
from __future__ import annotations

import dataclasses
import types
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

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


@jax.jit
def denoising_loss(denoiser, y, t, eps, schedule):
    """(1/n) Σ_i ‖ε̂(a_t y_i + σ_t ε_i, t_i) − ε_i‖² / D for one batch (n, ...)."""
    x = diffuse(y, eps=eps, a=schedule.a[t], sigma=schedule.sigma[t])
    return jnp.mean((denoiser(x, t) - eps) ** 2)


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
        T = run.schedule.num_timesteps
        self.t = jax.random.randint(jax.random.fold_in(rng, _LOSS_T), (n,), 1, T + 1)
        self.eps = jax.random.normal(jax.random.fold_in(rng, _LOSS_EPS),
                                     (n,) + dataset.image_shape)
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

    def loss(self, denoiser, images):
        """denoising_loss over images (the training or held-out subset), in batches."""
        batch = self.config.evaluation.num_images
        total = 0.0
        for i in range(0, len(images), batch):
            part = denoising_loss(denoiser, jnp.asarray(images[i:i + batch]), self.t[i:i + batch],
                                  self.eps[i:i + batch], self.run.schedule)
            total += float(part) * len(images[i:i + batch])
        return total / len(images)


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
           'near_copy_rate': float(np.mean(d1 < inputs.copy_threshold())),
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


@evaluator_type('loss')
def denoising_loss_gap(inputs, options, denoiser, draw):
    out = {'train': inputs.loss(denoiser, inputs.train)}
    if inputs.heldout is not None:
        out['heldout'] = inputs.loss(denoiser, inputs.heldout)
        out['gap'] = out['heldout'] - out['train']
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
