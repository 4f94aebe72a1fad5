"""E2, novelty of the trained model: samples of the trained network ε_θ (ctx.network(), the
parameters config.sampling.use_ema selects) with DDIM (η = 0), Heun and DDPM from the same x_T
as E1, with E1's metrics (memorisation ratio, exact-copy rate, median d_1, FD / precision /
recall) and the novelty comparison: d_1 to the first n training images against d_1 to the n
held-out images (diffgen.analysis.metrics.novelty; 1/2 of the samples closer to the training
images if the samples do not depend on the training set). Where the report already holds E1
from the same checkpoint, config and training set (report.finished_sections), the text sets
each sampler's memorisation ratio beside ε*'s from E1 (numbers['e1_memorisation_ratio']).
"""
from __future__ import annotations

from diffgen import figures
from diffgen.analysis import metrics, report
from diffgen.analysis.experiment import Experiment, register
from diffgen.analysis.experiments import e1_optimum_copies as e1
from diffgen.analysis.report import Section

KEY, TITLE = 'e2', 'E2: novelty of the trained model'
SAMPLE_KEYS = {'ddim': 11, 'heun': 12, 'ddpm': 13}   # ctx.rng fold_in constants of E2

NOVELTY_COLUMNS = (('d1_train', 'mean d₁ to n train', '.4f'),
                   ('d1_heldout', 'mean d₁ to n held-out', '.4f'),
                   ('ratio', 'ratio', '.3f'), ('closer_to_train', 'closer to train', '.3f'))


def measure(ctx, cfg):
    """Per sampler (e1.METHODS): ctx.copy_metrics of ε_θ's samples and, with a held-out set,
    their novelty; the real images' quality; samples, d_1 and the novelty distances for the
    figures."""
    del cfg  # E2 has no settings
    network = ctx.network()
    numbers, samples, d1, distances = {}, {}, {}, {}
    for method in e1.METHODS:
        samples[method] = ctx.sample(network, method, key=SAMPLE_KEYS[method])
        numbers[method], d1[method] = ctx.copy_metrics(samples[method])
        if ctx.heldout_rows is not None:
            distances[method] = ctx.novelty_distances(samples[method])
            numbers[method]['novelty'] = metrics.novelty(*distances[method])
    numbers[e1.REAL] = ctx.real_quality()
    made = report.finished_sections(ctx.report_dir, [e1.KEY], ctx.provenance).get(e1.KEY)
    if made is not None:
        numbers['e1_memorisation_ratio'] = {m: made.numbers[m]['memorisation_ratio']
                                            for m in e1.METHODS}
    numbers['_samples'], numbers['_d1'], numbers['_distances'] = samples, d1, distances
    return numbers


def _novelty_figures(ctx, samples, distances):
    """The d_1 histograms to n training and n held-out images, and (images) samples above
    their nearest training and held-out images."""
    names = ['e2_novelty.png']
    fig, axes = figures.subplots(len(distances), width=4.5)
    for ax, (method, (d_train, d_heldout)) in zip(axes, distances.items()):
        figures.histogram(ax, {'to n training images': d_train,
                               'to n held-out images': d_heldout}, 'd₁ (RMS per pixel)')
        ax.set_title(f'ε_θ, {method}')
    figures.save(fig, ctx.figure_path(names[0]),
                 f'E2: nearest-image distance of the model\'s samples, n = '
                 f'{ctx.heldout_rows.num_rows} images per reference set')
    if ctx.dataset.is_image:
        x = samples['ddpm'][:e1.SHOWN]
        _, _, near_train = metrics.nearest_two(x, ctx.distance_rows)
        _, _, near_heldout = metrics.nearest_two(x, ctx.heldout_rows)
        names.append('e2_heldout_neighbours.png')
        figures.image_rows([('ε_θ ddpm sample', x),
                            ('nearest training', ctx.dataset.train[near_train]),
                            ('nearest held-out', ctx.dataset.heldout[near_heldout])],
                           ctx.figure_path(names[1]),
                           'E2: model samples, their nearest training and held-out images')
    return names


def render(numbers, ctx):
    names = e1.nearest_figures(ctx, 'e2', 'E2 (ε_θ)', numbers['_samples'], numbers['_d1'])
    labels = e1.method_labels('ε_θ', ctx)
    rows = [(labels[m], numbers[m]) for m in e1.METHODS] + [e1.real_row(numbers)]
    parameters = 'EMA' if ctx.config.sampling.use_ema else 'raw (no EMA)'
    markdown = (f'{len(ctx.x_T)} samples of the trained network ({parameters} parameters) per '
                f'sampler, from the same x_T as E1.\n\n{e1.metrics_table(rows)}\n')
    if numbers['_distances']:
        names += _novelty_figures(ctx, numbers['_samples'], numbers['_distances'])
        novelty_rows = [(labels[m], numbers[m]['novelty']) for m in e1.METHODS]
        markdown += (
            f'\nNovelty: d₁ to the first n = {ctx.heldout_rows.num_rows} training images '
            f'against d₁ to the n held-out images (ratio = mean d₁ to train / mean d₁ to '
            f'held-out; closer to train = fraction of samples nearer the training images, 0.5 '
            f'if the samples do not depend on the training set, 0.5 + n/2N for a copier of '
            f'all N).\n\n{e1.metrics_table(novelty_rows, NOVELTY_COLUMNS)}\n')
    optimum = numbers.get('e1_memorisation_ratio')
    memorised = ', '.join(f'{m} {numbers[m]["memorisation_ratio"]:.1%}' + (
        f' (ε* in E1: {optimum[m]:.1%})' if optimum else '') for m in e1.METHODS)
    markdown += (f'\nMemorised samples of the network: {memorised}. '
                 f'{e1.quality_text(numbers, len(ctx.x_T), "the network")}')
    return Section(KEY, TITLE, markdown, numbers, names)


register(Experiment(KEY, TITLE, measure, render))
