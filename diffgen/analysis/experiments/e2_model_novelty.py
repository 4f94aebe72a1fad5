"""E2, novelty of the trained model: samples of the trained network ε_θ (ctx.network(), the
parameters config.sampling.use_ema selects) with DDIM (η = 0), Heun and DDPM from the same x_T
as E1, with E1's metrics: both memorisation criteria (d_1/d_2 < 1/3 and the distance criterion
d_1 < δ, diffgen.analysis.copies) and their calibration at this N (ctx.calibration()),
exact-copy rate, median d_1, FD / precision / recall.

Novelty against the whole training set: per sample, d_1 to all N training images against d_1
to the H held-out images (diffgen.analysis.metrics.novelty: closer_to_train, ratio of the mean
distances). With N ≠ H a sample that does not depend on the training set is not nearer the
training images half of the time: its N + H reference images are then exchangeable (all
i.i.d. draws of the source), so its nearest is a training image with probability

    p_0 = N / (N + H)      (ties aside; whatever the sample's law),

closer_to_train's value for independence (0 % of a copier's excess). Two references are
measured the same way as the model:
  held-out  the held-out images as samples (a fresh draw of the source), each against the N
            training images and the other H − 1 held-out images (its self-match excluded):
            a check of p_0 (≈ N/(N + H − 1)) and the ratio's value for independence (0 %) for
            samples of the source's law (the ratio has no law-free value: samples far from
            every image have a ratio near 1 whatever their dependence);
  copier    the N training images as samples (d_1 to the training set 0): a perfect copier
            of all N (100 %: closer_to_train 1, ratio 0).
The model's place between them, excess = (model − null) / (copier − null)
(metrics.excess_fraction; null: p_0 for closer_to_train, the held-out images' ratio for the
ratio). Intervals: 95 % percentile intervals of BOOTSTRAP_REPLICATES bootstrap resamples of
the samples (metrics.novelty_replicates), drawn from the config seed; the excess's from
independent resamples of the model's samples, the held-out images and the training images.
Where the report already holds E1 from the same checkpoint, config and training set
(report.finished_sections), the text sets each sampler's memorisation ratio beside ε*'s from E1
(numbers['e1_memorisation_ratio']).
"""
from __future__ import annotations

import numpy as np

from diffgen import figures
from diffgen.analysis import metrics, report
from diffgen.analysis.experiment import Experiment, register
from diffgen.analysis.experiments import e1_optimum_copies as e1
from diffgen.analysis.report import Section, markdown_table, number

KEY, TITLE = 'e2', 'E2: novelty of the trained model'
SAMPLE_KEYS = {'ddim': 11, 'heun': 12, 'ddpm': 13}   # ctx.rng fold_in constants of E2
BOOTSTRAP_REPLICATES = 2000
HELDOUT, COPIER = 'heldout_images', 'copier'          # the references' keys in 'novelty_references'


def nearest_other_distance(images, rows):
    """d_1 of each of the images to the others of rows (rows: the same images as chunked
    rows; its self-match, at index i, left out): NumPy."""
    d1, d2, nearest = metrics.nearest_two(images, rows)
    return np.where(nearest == np.arange(len(images)), d2, d1)


def novelty_with_intervals(d1_train, d1_heldout, rng, num_replicates=BOOTSTRAP_REPLICATES):
    """(metrics.novelty's numbers with the 95% percentile intervals closer_to_train_low/_high
    and ratio_low/_high, the bootstrap replicates {'closer_to_train', 'ratio'})."""
    counts = metrics.resample_counts(len(d1_train), num_replicates, rng)
    closer, ratio = metrics.novelty_replicates(d1_train, d1_heldout, counts)
    out = metrics.novelty(d1_train, d1_heldout)
    for name, r in (('closer_to_train', closer), ('ratio', ratio)):
        out[f'{name}_low'], out[f'{name}_high'] = metrics.percentile_interval(r)
    return out, {'closer_to_train': closer, 'ratio': ratio}


def excess(novelty, replicates, references, null_closer):
    """{metric: {'value', 'low', 'high'}}: metrics.excess_fraction of the model's
    closer_to_train (null: null_closer, p_0) and ratio (null: the held-out images') towards
    the copier's, with the percentile interval of the fraction over the bootstrap replicates
    (references: {HELDOUT | COPIER: (numbers, replicates)}, resampled independently of the
    model's)."""
    (held, held_rep), (copier, copier_rep) = references[HELDOUT], references[COPIER]
    nulls = {'closer_to_train': (null_closer, null_closer),
             'ratio': (held['ratio'], held_rep['ratio'])}
    out = {}
    for name, (null, null_rep) in nulls.items():
        value = float(metrics.excess_fraction(novelty[name], null, copier[name]))
        fractions = metrics.excess_fraction(replicates[name], null_rep, copier_rep[name])
        fractions = fractions[np.isfinite(fractions)]
        low, high = (metrics.percentile_interval(fractions) if len(fractions)
                     else (float('nan'), float('nan')))
        out[name] = {'value': value, 'low': low, 'high': high}
    return out


def reference_novelty(ctx, rng):
    """{HELDOUT | COPIER: (novelty_with_intervals's numbers, replicates)} of the held-out
    images and of the training images as samples, and their d_1 for the figure."""
    train, heldout = ctx.dataset.train, ctx.dataset.heldout
    pairs = {HELDOUT: (metrics.nearest_distance(heldout, ctx.distance_rows),
                       nearest_other_distance(heldout, ctx.heldout_rows)),
             COPIER: (np.zeros(len(train)), metrics.nearest_distance(train, ctx.heldout_rows))}
    return {name: novelty_with_intervals(*d, rng) for name, d in pairs.items()}, pairs


def measure(ctx, cfg):
    """Per sampler (e1.METHODS): ctx.copy_metrics of ε_θ's samples and, with a held-out set,
    their novelty against all N training and the H held-out images with its intervals and
    its place between the two references; the references; the criteria's calibration; the
    real images' quality; samples, d_1 and the novelty distances for the figures."""
    del cfg  # E2 has no settings
    network = ctx.network()
    rng = np.random.default_rng(ctx.config.seed)
    numbers, samples, d1, distances = {}, {}, {}, {}
    references = None
    if ctx.heldout_rows is not None and ctx.heldout_rows.num_rows >= 2:
        references, reference_distances = reference_novelty(ctx, rng)
        numbers['novelty_references'] = {name: n for name, (n, _) in references.items()}
        sizes = {'train': int(ctx.distance_rows.num_rows),
                 'heldout': int(ctx.heldout_rows.num_rows)}
        numbers['novelty_sizes'] = sizes
        numbers['novelty_null_closer'] = sizes['train'] / (sizes['train'] + sizes['heldout'])
    for method in e1.METHODS:
        samples[method] = ctx.sample(network, method, key=SAMPLE_KEYS[method])
        numbers[method], d1[method] = ctx.copy_metrics(samples[method])
        if references is not None:
            distances[method] = (d1[method],
                                 metrics.nearest_distance(samples[method], ctx.heldout_rows))
            novelty, replicates = novelty_with_intervals(*distances[method], rng)
            numbers[method]['novelty'] = {**novelty, 'excess': excess(
                novelty, replicates, references, numbers['novelty_null_closer'])}
    if references is not None:
        distances[HELDOUT] = reference_distances[HELDOUT]
    numbers['calibration'] = ctx.calibration()
    numbers[e1.REAL] = ctx.real_quality()
    made = report.finished_sections(ctx.report_dir, [e1.KEY], ctx.provenance).get(e1.KEY)
    if made is not None:
        numbers['e1_memorisation_ratio'] = {m: made.numbers[m]['memorisation_ratio']
                                            for m in e1.METHODS}
    numbers['_samples'], numbers['_d1'], numbers['_distances'] = samples, d1, distances
    return numbers


def _novelty_figures(ctx, samples, distances, sizes):
    """The histograms of d_1 to the N training and to the H held-out images (per sampler, and
    for the held-out images themselves), and (images) samples above their nearest training and
    held-out images."""
    names = ['e2_novelty.png']
    fig, axes = figures.subplots(len(distances), width=4.5)
    for ax, (name, (d_train, d_heldout)) in zip(axes, distances.items()):
        figures.histogram(ax, {f'to the N = {sizes["train"]} training images': d_train,
                               f'to the H = {sizes["heldout"]} held-out images': d_heldout},
                          'd₁ (RMS per pixel)')
        ax.set_title('held-out images (others)' if name == HELDOUT else f'ε_θ, {name}')
    figures.save(fig, ctx.figure_path(names[0]),
                 'E2: nearest-image distance of the model\'s samples and of held-out images')
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


def _iv(n, name, fmt='.3f'):
    return f'{n[name]:{fmt}} [{n[name + "_low"]:{fmt}}, {n[name + "_high"]:{fmt}}]'


def _share(e):
    return f'{e["value"]:.0%} [{e["low"]:.0%}, {e["high"]:.0%}]'


def novelty_text(numbers, labels):
    """The novelty paragraph and table: each sampler, the exact null of closer-to-train and the
    two references, with intervals and the model's share of the copier's excess."""
    sizes, refs = numbers['novelty_sizes'], numbers['novelty_references']
    p0 = numbers['novelty_null_closer']
    rows = [[labels[m], number(numbers[m]['novelty']['d1_train'], '.4f'),
             number(numbers[m]['novelty']['d1_heldout'], '.4f'),
             _iv(numbers[m]['novelty'], 'closer_to_train'), _iv(numbers[m]['novelty'], 'ratio'),
             _share(numbers[m]['novelty']['excess']['closer_to_train']),
             _share(numbers[m]['novelty']['excess']['ratio'])] for m in e1.METHODS]
    rows.append(['independent of the training set: N/(N + H)', '–', '–', f'{p0:.3f}', '–',
                 '0%', '–'])
    held, copier = refs[HELDOUT], refs[COPIER]
    rows.append(['held-out images (a fresh draw; against the other H − 1)',
                 number(held['d1_train'], '.4f'), number(held['d1_heldout'], '.4f'),
                 _iv(held, 'closer_to_train'), _iv(held, 'ratio'), '–', '0%'])
    rows.append(['training images (a perfect copier)', number(copier['d1_train'], '.4f'),
                 number(copier['d1_heldout'], '.4f'), _iv(copier, 'closer_to_train'),
                 _iv(copier, 'ratio'), '100%', '100%'])
    table = markdown_table(
        ['samples', f'mean d₁ to N = {sizes["train"]} train', f'mean d₁ to H = '
         f'{sizes["heldout"]} held-out', 'closer to train [95%]', 'ratio [95%]',
         'share of a copier\'s excess: closer to train [95%]', 'ratio [95%]'], rows)
    shares = '; '.join(
        f'{m} {_share(numbers[m]["novelty"]["excess"]["closer_to_train"])} in closer-to-train '
        f'and {_share(numbers[m]["novelty"]["excess"]["ratio"])} in the ratio'
        for m in e1.METHODS)
    return (f'Novelty against the whole training set: d₁ to all N = {sizes["train"]} training '
            f'images against d₁ to the H = {sizes["heldout"]} held-out images (ratio = mean d₁ '
            'to train / mean d₁ to held-out; closer to train = fraction of samples nearer a '
            'training image, ties one half). With N ≠ H a sample that does not depend on the '
            'training set is not at 1/2 and 1: its N + H reference images are exchangeable, so '
            f'its nearest is a training image with probability N/(N + H) = {p0:.3f} whatever '
            'its law (0% of a copier\'s excess in closer-to-train; the held-out images, a fresh '
            'draw of the source each against the other H − 1, check it). The ratio has no such '
            'value: its 0% is the held-out images\' ratio, right for samples of the source\'s '
            'law, while samples far from every image have a ratio near 1 whatever their '
            'dependence (read it with the quality numbers above). 100%: the training images as '
            'samples, a perfect copier. Intervals: 95% percentiles of '
            f'{BOOTSTRAP_REPLICATES} bootstrap resamples of the samples (the shares: of the '
            f'model\'s and the references\' samples independently).\n\n{table}\n\n'
            f'Where the model lies from independence (0%) to a copier (100%): {shares}.')


def render(numbers, ctx):
    names = e1.nearest_figures(ctx, 'e2', 'E2 (ε_θ)', numbers['_samples'], numbers['_d1'])
    labels = e1.method_labels('ε_θ', ctx)
    rows = [(labels[m], numbers[m]) for m in e1.METHODS] + [e1.real_row(numbers)]
    parameters = 'EMA' if ctx.config.sampling.use_ema else 'raw (no EMA)'
    markdown = (f'{len(ctx.x_T)} samples of the trained network ({parameters} parameters) per '
                f'sampler, from the same x_T as E1.\n\n{e1.metrics_table(rows)}\n')
    optimum = numbers.get('e1_memorisation_ratio')
    memorised = ', '.join(
        f'{m} {numbers[m]["memorisation_ratio"]:.1%} (d₁ < δ: {numbers[m]["near_copy_rate"]:.1%})'
        + (f' (ε* in E1: {optimum[m]:.1%})' if optimum else '') for m in e1.METHODS)
    markdown += (f'\nMemorised samples of the network (d₁/d₂ < 1/3): {memorised}. '
                 f'{e1.quality_text(numbers, len(ctx.x_T), "the network")}\n\n'
                 f'{e1.criteria_text(numbers["calibration"], ctx.config.analysis.copy_quantile)}\n')
    summary = ('The trained network: ' + ', '.join(
        f'{m} {numbers[m]["memorisation_ratio"]:.1%} memorised (near copies '
        f'{numbers[m]["near_copy_rate"]:.1%})' for m in e1.METHODS) + '.')
    if numbers['_distances']:
        names += _novelty_figures(ctx, numbers['_samples'], numbers['_distances'],
                                  numbers['novelty_sizes'])
        markdown += f'\n{novelty_text(numbers, labels)}\n'
        excess = numbers['ddim']['novelty']['excess']
        summary += (f' Against all N training images its DDIM samples lie '
                    f'{_share(excess["closer_to_train"])} (closer-to-train) and '
                    f'{_share(excess["ratio"])} (d₁ ratio; negative: farther from the training '
                    'set than fresh images of the source are) of the way from a fresh draw of the '
                    'source to a perfect copier.')
    return Section(KEY, TITLE, markdown, numbers, names, summary=summary)


register(Experiment(KEY, TITLE, measure, render))
