"""E2, novelty of the trained model: samples of the trained network ε_θ (ctx.network(), EMA
parameters) with DDIM (η = 0), Heun and DDPM from the same x_T as E1, with E1's metrics
(memorisation ratio, exact-copy rate, median d_1, FD / precision / recall) and the novelty
comparison: d_1 to the first n training images against d_1 to the n held-out images
(diffgen.metrics.novelty; 1/2 of the samples closer to the training images if the samples do
not depend on the training set).
"""
from __future__ import annotations

from diffgen.optimum import chunked
from diffgen.analysis import metrics
from diffgen import figures
from diffgen.analysis import quality
from diffgen.analysis.experiments import e1_optimum_copies as e1
from diffgen.analysis.experiment import Experiment, register
from diffgen.analysis.report import Section

SAMPLE_KEYS = {'ddim': 11, 'heun': 12, 'ddpm': 13}   # ctx.rng fold_in constants of E2

NOVELTY_COLUMNS = (('d1_train', 'mean d₁ to n train', '.4f'),
                   ('d1_heldout', 'mean d₁ to n held-out', '.4f'),
                   ('ratio', 'ratio', '.3f'), ('closer_to_train', 'closer to train', '.3f'))


def _novelty_figure(ctx, samples, distances):
    """Samples above their nearest training and held-out images, and the d_1 histograms."""
    names = ['e2_novelty.png']
    fig, axes = figures.subplots(len(distances), width=4.5)
    for ax, (method, (d_train, d_heldout)) in zip(axes, distances.items()):
        figures.histogram(ax, {'to n training images': d_train, 'to n held-out images': d_heldout},
                        'd₁ (RMS per pixel)')
        ax.set_title(f'ε_θ, {method}')
    figures.save(fig, ctx.figure_path(names[0]),
               f'E2: nearest-image distance of the model\'s samples, n = '
               f'{ctx.heldout_rows.num_rows} images per reference set')
    if ctx.dataset.is_image:
        x = samples['ddpm'][:e1.SHOWN]
        _, _, near_train = metrics.nearest_two(x, ctx.train_rows)
        _, _, near_heldout = metrics.nearest_two(x, ctx.heldout_rows)
        names.append('e2_heldout_neighbours.png')
        figures.image_rows([('ε_θ ddpm sample', x),
                          ('nearest training', ctx.dataset.train[near_train]),
                          ('nearest held-out', ctx.dataset.heldout[near_heldout])],
                         ctx.figure_path(names[1]),
                         'E2: model samples, their nearest training and held-out images')
    return names


def run(ctx):
    network = ctx.network()
    samples, numbers, d1, distances = {}, {}, {}, {}
    for method in e1.METHODS:
        samples[method] = ctx.sample(network, method, key=SAMPLE_KEYS[method])
        numbers[method], d1[method], _ = e1.measure(samples[method], ctx)
        if ctx.heldout_rows is not None:
            distances[method] = ctx.novelty_distances(samples[method])
            numbers[method]['novelty'] = metrics.novelty(*distances[method])
    numbers['real_training_images'] = e1.reference_quality(ctx)
    names = e1.nearest_figures(ctx, 'e2', 'E2 (ε_θ)', samples, d1)
    steps = ctx.config.analysis.sampler_steps
    labels = {m: f'ε_θ, {m}' + ('' if m == 'ddpm' else f' ({steps} steps)') for m in e1.METHODS}
    rows = [(labels[m], numbers[m]) for m in e1.METHODS]
    rows.append((f'real training images (n = {len(quality.real_reference(ctx))})',
                 numbers['real_training_images']))
    markdown = (f'{len(ctx.x_T)} samples of the trained network (EMA parameters) per sampler, '
                f'from the same x_T as E1.\n\n{e1.table(rows)}\n')
    if distances:
        names += _novelty_figure(ctx, samples, distances)
        n = ctx.heldout_rows.num_rows
        novelty_rows = [(labels[m], numbers[m]['novelty']) for m in e1.METHODS]
        markdown += (
            f'\nNovelty: d₁ to the first n = {n} training images against d₁ to the n held-out '
            f'images (ratio = mean d₁ to train / mean d₁ to held-out; closer to train = '
            f'fraction of samples nearer the training images, 0.5 if the samples do not depend '
            f'on the training set, 0.5 + n/2N for a copier of all N).\n\n'
            f'{e1.table(novelty_rows, NOVELTY_COLUMNS)}\n')
    ratios = [numbers[m]['memorisation_ratio'] for m in e1.METHODS]
    span = (f'{min(ratios):.1%}' if min(ratios) == max(ratios)
            else f'{min(ratios):.1%} to {max(ratios):.1%}')
    markdown += (f'\nThe network memorises {span} of its samples '
                 f'(ε* in E1: nearly all); FD / precision / recall against the real-image row '
                 f'tell whether what it makes instead are plausible images or noise.')
    return Section('e2', 'E2: novelty of the trained model', markdown, numbers, names)


register(Experiment('e2', 'E2: novelty of the trained model', measure=lambda ctx, cfg: run(ctx),
                    render=lambda section, ctx: section))  # TRANSITIONAL
