"""E5: reproducibility across disjoint training sets (Kadkhodaie et al. 2024).

The run's training set, in its draw order (class-balanced prefixes), is cut into two
disjoint halves A = y_1..y_h and B = y_{h+1}..y_{2h}, h = ⌊N/2⌋, written as npz files
W/e5/half_a.npz and W/e5/half_b.npz. Two models with the run's config are trained on them
by diffgen.training.loop.train_and_evaluate in W/e5/half_a and W/e5/half_b (resumable like any run;
analysis.e5.num_steps steps each, by default training.num_steps // 5 (a FieldReference in
configs/default.py), so that the two cost less than the main run). Both sample the same x_T
(ctx.x_T) with deterministic DDIM, and per sample i (with the parameters sampling.use_ema
selects; see half_config for the EMA decay):

    cross_i = cos(z_i^A, z_i^B)                          the two models' samples agree
    train_i^A = cos(z_i^A, y_{n(i)}),  y_{n(i)} ∈ A the nearest (Euclidean) to z_i^A
    (and train_i^B in B), with cos(u, v) = (u − μ)·(v − μ) / (‖u − μ‖ ‖v − μ‖).

μ is the mean image of the run's training set: without centring the shared background
(most pixels are −1) makes every pair of digits look alike. Memorising models reproduce
their own halves (train high, cross low); generalising ones reproduce each other (cross
above train). Both models share the run's seed, hence their initialisation and their noise
draws: they differ in their training images only, and at short training part of their
agreement is the shared initialisation.
"""
from __future__ import annotations

import os

import numpy as np

from diffgen import figures, files
from diffgen.analysis import metrics
from diffgen.analysis.experiment import Experiment, register
from diffgen.analysis.metrics import cosine_similarity
from diffgen.analysis.report import Section, markdown_table
from diffgen.data import to_float
from diffgen.errors import WorkdirError, require
from diffgen.training.loop import train_and_evaluate
from diffgen.training.state import sampling_params

KEY, TITLE = 'e5', 'E5: reproducibility across disjoint training sets'
HALVES = ('a', 'b')


def split_halves(images, labels):
    """[(images, labels) of A, of B]: the first and second ⌊N/2⌋ examples, disjoint."""
    h = len(images) // 2
    cut = lambda x, lo, hi: None if x is None else x[lo:hi]
    return [(images[:h], cut(labels, 0, h)), (images[h:2 * h], cut(labels, h, 2 * h))]


def num_steps(cfg, training):
    """cfg.num_steps (E5's settings) rounded up to a whole number (at least one) of jitted
    calls of training.steps_per_call steps."""
    per_call = training.steps_per_call
    return max(-(-cfg.num_steps // per_call), 1) * per_call


def half_config(config, npz_path, steps):
    """The run's config, trained on an npz file alone (no held-out set) for `steps` steps,
    with the EMA decay lowered to at most max(1 − 10/steps, 0): after `steps` steps the initial
    parameters keep a weight d^steps <= e^−10 in the EMA (the run's 0.999 over 1000 steps
    would leave e^−1 of the initialisation, shared by both halves, in both models)."""
    c = config.copy_and_resolve_references()
    c.optim.ema_decay = min(config.optim.ema_decay, max(1.0 - 10.0 / steps, 0.0))
    c.data.source = f'npz:{npz_path}'
    c.data.num_train = -1
    c.data.num_heldout = 0
    c.data.heldout_split = ''
    c.data.center_crop = 0   # the stored images are already cropped and resized
    c.data.image_size = 0
    c.training.num_steps = steps
    c.training.sample_every = 0
    return c


def _write_npz(path, images, labels):
    """Writes the half atomically (every process writes the same bytes)."""
    arrays = {'images': images} if labels is None else {'images': images, 'labels': labels}
    files.save_npz(path, **arrays)


def train_halves(ctx, steps):
    """Trains (or resumes) the two half models; returns [(their sampling parameters, half
    images in [-1, 1])] for A and B, trained `steps` steps."""
    out = []
    ds = ctx.dataset
    for name, (images, labels) in zip(HALVES, split_halves(ds.train_images, ds.train_labels)):
        workdir = os.path.join(ctx.workdir, 'e5', f'half_{name}')
        npz = os.path.join(ctx.workdir, 'e5', f'half_{name}.npz')
        _write_npz(npz, images, labels)
        print(f'e5: half {name}: {len(images)} images, {steps} steps in {workdir}', flush=True)
        state = train_and_evaluate(half_config(ctx.config, npz, steps), workdir)
        if int(state.step) != steps:
            raise WorkdirError(f'e5: training of half {name} stopped at step '
                               f'{int(state.step)}; rerun the same command to resume')
        out.append((sampling_params(state, ctx.config.sampling.use_ema), to_float(images)))
    return out


def _scatter(train_a, train_b, cross, path):
    fig, (ax,) = figures.subplots(width=5, height=5)
    ax.scatter(train_a, cross, s=6, alpha=0.6, label='model A vs its half')
    ax.scatter(train_b, cross, s=6, alpha=0.6, label='model B vs its half')
    lo = min(np.min(train_a), np.min(train_b), np.min(cross), 0.0)
    ax.plot([lo, 1], [lo, 1], c='gray', lw=0.8, ls=':')
    ax.set_xlabel('cos(sample, nearest training image of its half)')
    ax.set_ylabel('cos(sample of A, sample of B), same x_T')
    ax.legend(loc='lower right')
    figures.save(fig, path)


def measure(ctx, cfg):
    """Trains the halves' models; the similarities of the module doc (means; per sample for
    the figure) and each model's memorisation ratio against its own half."""
    train_steps = num_steps(cfg, ctx.config.training)
    (params_a, half_a), (params_b, half_b) = train_halves(ctx, train_steps)
    centre = ctx.dataset.train.mean(axis=0)
    steps = ctx.config.analysis.sampler_steps
    samples, train_sim, memorised = [], [], []
    for params, half in ((params_a, half_a), (params_b, half_b)):
        z = ctx.sample(ctx.network(params), 'ddim', num_steps=steps)
        d1, d2, nearest = metrics.nearest_two(z, half, mesh=ctx.mesh)
        samples.append(z)
        train_sim.append(cosine_similarity(z, half[nearest], centre))
        memorised.append(metrics.memorisation_ratio(d1, d2))
    cross = cosine_similarity(samples[0], samples[1], centre)
    raw_cross = cosine_similarity(samples[0], samples[1])
    return {
        'half_size': len(half_a), 'num_steps': train_steps,
        'num_samples': len(cross), 'sampler': f'ddim, {steps} steps',
        'cross_similarity_mean': float(np.mean(cross)),
        'train_similarity_mean_a': float(np.mean(train_sim[0])),
        'train_similarity_mean_b': float(np.mean(train_sim[1])),
        'cross_above_train_fraction': float(np.mean(cross > 0.5 * (train_sim[0] + train_sim[1]))),
        'raw_cross_similarity_mean': float(np.mean(raw_cross)),
        'memorisation_ratio_a': memorised[0], 'memorisation_ratio_b': memorised[1],
        '_cross': cross, '_train_similarity': train_sim,
    }


def render(numbers, ctx):
    n = numbers
    name = 'e5_reproducibility.png'
    _scatter(*n['_train_similarity'], n['_cross'], ctx.figure_path(name))
    table = markdown_table(['', 'mean cosine similarity'], [
        ['sample of A vs sample of B (same x_T)', f'{n["cross_similarity_mean"]:.3f}'],
        ['sample of A vs nearest image of half A', f'{n["train_similarity_mean_a"]:.3f}'],
        ['sample of B vs nearest image of half B', f'{n["train_similarity_mean_b"]:.3f}']])
    markdown = '\n'.join([
        f'Two models trained {n["num_steps"]} steps on disjoint halves of {n["half_size"]} '
        f'images each, sampled from the same {n["num_samples"]} x_T ({n["sampler"]}). Cosine '
        'similarities of images centred on the training-set mean:', '', table, '',
        f'In a fraction {n["cross_above_train_fraction"]:.2f} of the pairs the two samples are '
        'more similar to each other than to their nearest training images (the mean of the '
        f'two similarities). Uncentred cross similarity {n["raw_cross_similarity_mean"]:.3f}; '
        f'memorisation ratios (d_1/d_2 < 1/3) A {n["memorisation_ratio_a"]:.3f}, '
        f'B {n["memorisation_ratio_b"]:.3f}.'])
    return Section(KEY, TITLE, markdown, numbers, [name])


def check(config):
    require(config.analysis.e5.num_steps >= 0,
            'analysis.e5.num_steps must be >= 0 (default training.num_steps // 5)')


register(Experiment(KEY, TITLE, measure, render, check, trains=True))
