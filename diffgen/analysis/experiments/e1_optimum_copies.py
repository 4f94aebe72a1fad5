"""E1, copying by the optimum: samples of the empirical-optimal denoiser ε* with DDIM (η = 0),
the Heun probability-flow ODE solver and DDPM, all from the same x_T (ctx.x_T).

docs/math.md §4 predicts that the deterministic samplers return training images: the last DDIM
step is x̂₀*(x_{t_1}, t_1) = Σ_i w_i y_i with one-hot weights as σ_{t_1} → 0. Per sampler:
the memorisation ratio (fraction with d_1/d_2 < 1/3), the exact-copy rate (d_1 < 1e-3),
the median d_1, and the sample quality (Fréchet distance, precision, recall in classifier
features against the held-out set; diffgen.quality). A reference row gives the quality of
as many real training images, the best a model can score at this sample size.
"""
from __future__ import annotations

import numpy as np

from diffgen.analysis import metrics
from diffgen import figures
from diffgen.analysis import quality
from diffgen.analysis.experiment import Experiment, register
from diffgen.analysis.report import Section

METHODS = ('ddim', 'heun', 'ddpm')
SHOWN = 16          # samples shown in the nearest-neighbour figure
SAMPLE_KEYS = {'ddim': 1, 'heun': 2, 'ddpm': 3}   # ctx.rng fold_in constants of E1


def measure(samples, ctx):
    """(numbers, d_1, index of the nearest training image) of samples: memorisation ratio,
    exact-copy rate, median d_1 (over √D) and fd / precision / recall."""
    d1, d2, nearest = metrics.nearest_two(samples, ctx.train_rows)
    numbers = {'memorisation_ratio': metrics.memorisation_ratio(d1, d2),
               'exact_copy_rate': metrics.exact_copy_rate(d1),
               'median_d1': float(np.median(d1))}
    numbers.update(quality.quality_metrics(samples, ctx))
    return numbers, d1, nearest


def reference_quality(ctx):
    """Quality of real training images (as many as the reference set) against the reference."""
    n = len(quality.real_reference(ctx))
    return quality.quality_metrics(ctx.dataset.train[:n], ctx)


COLUMNS = (('memorisation_ratio', 'memorisation ratio', '.3f'),
           ('exact_copy_rate', 'exact-copy rate', '.3f'),
           ('median_d1', 'median d₁', '.4f'),
           ('fd', 'FD ↓', '.2f'), ('precision', 'precision ↑', '.3f'),
           ('recall', 'recall ↑', '.3f'))


def table(rows, columns=COLUMNS):
    """A Markdown table: rows = [(label, numbers)], one column per (key, heading, format);
    a missing key is '–'."""
    lines = ['| | ' + ' | '.join(h for _, h, _ in columns) + ' |',
             '| --- |' + ' ---: |' * len(columns)]
    for label, numbers in rows:
        cells = [format(numbers[k], f) if k in numbers else '–' for k, _, f in columns]
        lines.append(f'| {label} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


def nearest_figures(ctx, prefix, title, samples, d1):
    """<prefix>_nearest.png (samples above their nearest training images, or a scatter for
    points) and <prefix>_d1.png (histogram of d_1 per sampler); returns their names."""
    train = ctx.dataset.train
    names = [f'{prefix}_nearest.png', f'{prefix}_d1.png']
    if ctx.dataset.is_image:
        rows = []
        for method, x in samples.items():
            _, _, nearest = metrics.nearest_two(x[:SHOWN], ctx.train_rows)
            rows += [(f'{method} sample', x[:SHOWN]), ('nearest training', train[nearest])]
        figures.image_rows(rows, ctx.figure_path(names[0]),
                         f'{title}: samples (from the same x_T) and their nearest training images')
    else:
        fig, axes = figures.subplots(len(samples), width=4.0, height=4.0)
        for ax, (method, x) in zip(axes, samples.items()):
            ax.scatter(train[:, 0], train[:, 1], s=4, c='tab:gray', label='training set')
            ax.scatter(x[:, 0], x[:, 1], s=4, c='tab:blue', label=f'{method} samples')
            ax.set_aspect('equal')
            ax.legend(fontsize=8)
        figures.save(fig, ctx.figure_path(names[0]), f'{title}: samples and the training set')
    fig, (ax,) = figures.subplots(1, width=6.0)
    figures.histogram(ax, {m: d1[m] for m in samples}, 'd₁: distance to the nearest training '
                    'image (RMS per pixel)\nexact copies (d₁ < 1e-4) in the first bin', log_x=True)
    figures.save(fig, ctx.figure_path(names[1]), f'{title}: distance to the training set')
    return names


def run(ctx):
    optimum = ctx.optimum()
    samples, numbers, d1 = {}, {}, {}
    for method in METHODS:
        samples[method] = ctx.sample(optimum, method, key=SAMPLE_KEYS[method])
        numbers[method], d1[method], _ = measure(samples[method], ctx)
    numbers['real_training_images'] = reference_quality(ctx)
    names = nearest_figures(ctx, 'e1', 'E1 (ε*)', samples, d1)
    steps = ctx.config.analysis.sampler_steps
    rows = [(f'ε*, {m}' + ('' if m == 'ddpm' else f' ({steps} steps)'), numbers[m])
            for m in METHODS]
    rows.append((f'real training images (n = {len(quality.real_reference(ctx))})',
                 numbers['real_training_images']))
    ratio = min(numbers[m]['memorisation_ratio'] for m in ('ddim', 'heun'))
    markdown = (
        f'{len(ctx.x_T)} samples of the empirical-optimal denoiser ε* per sampler, from the '
        f'same x_T. Memorised: d₁/d₂ < 1/3; exact copy: d₁ < {metrics.EXACT_COPY_TOL:g} (RMS '
        f'per pixel). FD / precision / recall: classifier features against the held-out set.'
        f'\n\n{table(rows)}\n\n'
        + (f'The optimum copies: with the deterministic samplers {ratio:.1%} or more of its '
           f'samples are memorised, as docs/math.md §4 predicts (the last step returns x̂₀*, a '
           f'one-hot average of training images). Its quality is that of real training '
           f'images, so low FD alone cannot tell copying from generalising.'
           if ratio >= 0.99 else
           f'Only {ratio:.1%} of the deterministic samplers\' samples are memorised, fewer than '
           f'docs/math.md §4 predicts (nearly all): too few sampler steps near t = 1?'))
    return Section('e1', 'E1: the optimum copies the training set', markdown, numbers, names)


register(Experiment('e1', 'E1: the optimum copies the training set', measure=lambda ctx, cfg: run(ctx),
                    render=lambda section, ctx: section))  # TRANSITIONAL
