"""E1, copying by the optimum: samples of the empirical-optimal denoiser ε* with DDIM (η = 0),
the Heun probability-flow ODE solver and DDPM, all from the same x_T (ctx.x_T).

docs/math.md §4 predicts that the deterministic samplers return training images: the last DDIM
step is x̂₀*(x_{t_1}, t_1) = Σ_i w_i y_i with one-hot weights as σ_{t_1} → 0. Per sampler:
the memorisation ratio (fraction with d_1/d_2 < 1/3), the exact-copy rate (d_1 < 1e-3),
the median d_1, and the sample quality (Fréchet distance, precision, recall in classifier
features against the held-out set; diffgen.analysis.quality). A reference row gives the
quality of as many real training images as there are samples (ctx.real_quality), the best a
model can score at this sample size. The text compares each sampler with the prediction
(memorisation ratio 1 for DDIM and Heun) and its FD with the real images', from the numbers.

The table and figure helpers (metrics_table, nearest_figures) are E2's too.
"""
from __future__ import annotations

import numpy as np

from diffgen import figures
from diffgen.analysis import metrics
from diffgen.analysis.experiment import Experiment, register
from diffgen.analysis.report import Section, markdown_table, number

KEY, TITLE = 'e1', 'E1: does the optimum copy the training set?'
METHODS = ('ddim', 'heun', 'ddpm')
DETERMINISTIC = ('ddim', 'heun')   # the samplers docs/math.md §4 predicts to copy
SHOWN = 16          # samples shown in the nearest-neighbour figure
SAMPLE_KEYS = {'ddim': 1, 'heun': 2, 'ddpm': 3}   # ctx.rng fold_in constants of E1
REAL = 'real_training_images'

COLUMNS = (('memorisation_ratio', 'memorisation ratio', '.3f'),
           ('near_copy_rate', 'near-copy rate (d₁ < δ)', '.3f'),
           ('exact_copy_rate', 'exact-copy rate', '.3f'),
           ('median_d1', 'median d₁', '.4f'),
           ('fd', 'FD ↓', '.2f'), ('precision', 'precision ↑', '.3f'),
           ('recall', 'recall ↑', '.3f'))


def measure(ctx, cfg):
    """Per sampler (METHODS): ctx.copy_metrics of ε*'s samples; the real images' quality;
    the samples and their d_1 for the figures."""
    del cfg  # E1 has no settings
    optimum = ctx.optimum()
    numbers, samples, d1 = {}, {}, {}
    for method in METHODS:
        samples[method] = ctx.sample(optimum, method, key=SAMPLE_KEYS[method])
        numbers[method], d1[method] = ctx.copy_metrics(samples[method])
    numbers[REAL] = ctx.real_quality()
    numbers['calibration'] = ctx.calibration()
    numbers['_samples'], numbers['_d1'] = samples, d1
    return numbers


def metrics_table(rows, columns=COLUMNS):
    """The Markdown table of rows = [(label, numbers)], one column per (key, heading,
    format) of columns; a key the numbers lack is '–'."""
    return markdown_table([''] + [heading for _, heading, _ in columns],
                          [[label] + [number(values.get(k), spec) for k, _, spec in columns]
                           for label, values in rows])


def method_labels(denoiser, ctx):
    """'ε*, ddim (50 steps)', ...: the row labels of the samplers."""
    steps = ctx.config.analysis.sampler_steps
    return {m: f'{denoiser}, {m}' + ('' if m == 'ddpm' else f' ({steps} steps)')
            for m in METHODS}


def real_row(numbers):
    """The table row of the real training images (numbers[REAL], from ctx.real_quality)."""
    return f'real training images (n = {numbers[REAL]["num_images"]})', numbers[REAL]


def prediction_text(numbers, num_samples):
    """Whether docs/math.md §4's prediction (every sample of DDIM and Heun memorised) holds,
    per deterministic sampler, from the memorisation ratios in numbers."""
    ratio = {m: numbers[m]['memorisation_ratio'] for m in DETERMINISTIC}
    held = [m for m in DETERMINISTIC if ratio[m] == 1.0]
    missed = [f'{m} ({num_samples - round(ratio[m] * num_samples)} of {num_samples} samples '
              'not memorised)' for m in DETERMINISTIC if ratio[m] < 1.0]
    return (f'The prediction holds for {" and ".join(held)}' if held else
            'The prediction holds for neither') + (
        f'; not for {" and ".join(missed)}.' if missed else '.')


def quality_text(numbers, num_samples, denoiser):
    """The sentence comparing the samplers' FD with that of the real training images (or
    saying that FD was not measured): every value from numbers."""
    real = numbers[REAL]
    fd = {m: numbers[m]['fd'] for m in METHODS}
    if real['fd'] is None or np.isnan(real['fd']) or any(np.isnan(v) for v in fd.values()):
        return 'FD was not measured (no classifier for this data).'
    samples = (f'{real["num_images"]} real training images' if real['num_images'] ==
               num_samples else f'all {real["num_images"]} real training images (fewer than '
               f'the {num_samples} samples)')
    closest = min(METHODS, key=lambda m: fd[m])
    return (f'FD of {denoiser}\'s samples: ' + ', '.join(
        f'{m} {number(fd[m], ".2f")} ({number(fd[m] / real["fd"], ".2f")}× the real images\')'
        for m in METHODS) + f'; of {samples}: {number(real["fd"], ".2f")}. The lowest is '
        f'{closest}\'s, {number(fd[closest] - real["fd"], "+.2f")} from the real images\'.')


def calibration_table(calibration):
    """The Markdown table of both memorisation criteria's rates on held-out images and on
    noisy copies of training images at this N (copies.calibration's numbers)."""
    kinds = [k for k in calibration if k == 'heldout' or k.startswith('noisy_')]
    label = lambda k: ('held-out images (new draws of the source)' if k == 'heldout' else
                       f'training images + noise of RMS {k.split("_", 1)[1]}')
    return markdown_table(['flagged as memorised', 'd₁/d₂ < 1/3', 'd₁ < δ'],
                          [[label(k), number(calibration[k]['ratio']),
                            number(calibration[k]['distance'])] for k in kinds])


def criteria_text(calibration, quantile):
    """The sentences defining both criteria and introducing calibration_table."""
    return (f'Two criteria: d₁/d₂ < 1/3 (Gu et al. 2023), whose meaning changes with N (d₂ '
            f'shrinks as N grows), and d₁ < δ = {number(calibration["threshold"], ".4f")} (RMS '
            f'per pixel; the {quantile:g} quantile of the whole source\'s own nearest-neighbour '
            f'distances, the same at every N). How often each flags images that are not copies '
            f'(held-out) and near-copies (noisy training images) at this N:\n\n'
            f'{calibration_table(calibration)}')


def nearest_figures(ctx, prefix, title, samples, d1):
    """<prefix>_nearest.png (samples above their nearest training images, or a scatter for
    points) and <prefix>_d1.png (histogram of d_1 per sampler); returns their names."""
    train = ctx.dataset.train
    names = [f'{prefix}_nearest.png', f'{prefix}_d1.png']
    if ctx.dataset.is_image:
        rows = []
        for method, x in samples.items():
            _, _, nearest = metrics.nearest_two(x[:SHOWN], ctx.distance_rows)
            rows += [(f'{method} sample', x[:SHOWN]), ('nearest training', train[nearest])]
        figures.image_rows(rows, ctx.figure_path(names[0]),
                           f'{title}: samples (from the same x_T) and their nearest training '
                           'images')
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
                      'image (RMS per pixel)\nvalues below 1e-4 (exact copies: 0) in the first '
                      'bin', log_x=True)
    figures.save(fig, ctx.figure_path(names[1]), f'{title}: distance to the training set')
    return names


def render(numbers, ctx):
    names = nearest_figures(ctx, 'e1', 'E1 (ε*)', numbers['_samples'], numbers['_d1'])
    labels = method_labels('ε*', ctx)
    rows = [(labels[m], numbers[m]) for m in METHODS] + [real_row(numbers)]
    memorised = ', '.join(f'{m} {numbers[m]["memorisation_ratio"]:.1%}' for m in METHODS)
    markdown = (
        f'{len(ctx.x_T)} samples of the empirical-optimal denoiser ε* per sampler, from the '
        f'same x_T. Memorised: d₁/d₂ < 1/3; exact copy: d₁ < {metrics.EXACT_COPY_TOL:g} (RMS '
        f'per pixel). FD / precision / recall: classifier features against the held-out set.'
        f'\n\n{metrics_table(rows)}\n\n'
        f'Memorised samples of ε*: {memorised}. docs/math.md §4 predicts that all samples of '
        f'the deterministic samplers (DDIM, Heun) are memorised: their last step returns x̂₀*, '
        f'an average of training images whose weights become one-hot as σ → 0. '
        f'{prediction_text(numbers, len(ctx.x_T))} {quality_text(numbers, len(ctx.x_T), "ε*")}'
        f'\n\n{criteria_text(numbers["calibration"], ctx.config.analysis.copy_quantile)}')
    summary = (f'The exact optimum ε* copies: of {len(ctx.x_T)} samples from the same x_T, '
               + ', '.join(f'{m} {numbers[m]["memorisation_ratio"]:.1%} '
                           f'(near copies {numbers[m]["near_copy_rate"]:.1%})' for m in METHODS)
               + ' are memorised (d₁/d₂ < 1/3; near copies: d₁ < δ).')
    return Section(KEY, TITLE, markdown, numbers, names, summary=summary)


register(Experiment(KEY, TITLE, measure, render))
