"""E5: reproducibility across disjoint training sets (Kadkhodaie et al. 2024), with controls.

The run's training set, in its draw order (class-balanced prefixes), is cut into two
disjoint halves A = y_1..y_h and B = y_{h+1}..y_{2h}, h = ⌊N/2⌋, written as npz files
W/e5/half_a.npz and W/e5/half_b.npz. Two models per half, each with the run's config (its EMA
decay and warmup included) and its own seed, are trained by
diffgen.training.loop.train_and_evaluate (resumable like any run; analysis.e5.num_steps steps
each, by default the run's training.num_steps, a FieldReference in configs/default.py)
(MODELS: config.seed + 1 .. + 4, so that no two share an initialisation, noise draws or batch
positions, and none shares them with the run):

    A   on half A, seed s + 1        B   on half B, seed s + 2
    A'  on half A, seed s + 3        B'  on half B, seed s + 4

and the empirical optimum ε* of each half (ε*_A, ε*_B; docs/math.md §3). All six sample the
same x_T (ctx.x_T) with deterministic DDIM (the networks with the parameters
sampling.use_ema selects). Per sample i, with cos(u, v) = (u − μ)·(v − μ) / (‖u − μ‖ ‖v − μ‖)
and μ the run's mean training image (without centring the shared background, most pixels −1,
makes every pair of digits look alike):

    cross_i   = mean of cos(z_i^X, z_i^Y) over the cross pairs (A,B), (A,B'), (A',B), (A',B')
    seed_i    = mean of cos(z_i^X, z_i^Y) over the same-half pairs (A,A'), (B,B'): what the
                seed alone leaves (same data, other seed)
    optimum_i = cos(z_i^ε*A, z_i^ε*B)    the two halves' optima: copies of their own halves
    train_i^X = cos(z_i^X, y_{n(i)}),    y_{n(i)} the nearest (Euclidean) image of X's half.

Intervals: 95 % percentile intervals of a two-way bootstrap over the models and x_T
(metrics.pair_mean_replicates, BOOTSTRAP_REPLICATES replicates, drawn from the config seed):
each replicate resamples the samples i (the same draw for every series, so that differences
stay paired) and the two models of each half with replacement, and recomputes the pair means
over the drawn pairs (a model drawn twice is no seed pair with itself); the optimum's series
has no models to resample. Beside them the x_T-only intervals (models fixed), which describe
these four networks rather than training on a half. With two models per half the bootstrap
sees two draws of each half's training, so its model part understates the spread between
trainings (tests/test_pair_bootstrap.py). The means, and the paired differences cross − seed,
cross − optimum and seed − optimum, are reported with both.
The regime (regime()) is read off the two-way difference intervals: undetermined where the
seed control is not above the optimum's (the controls do not separate), memorising where cross
is not above the optimum's (the halves' models agree no more than copies of disjoint halves
do), generalising where it is above the optimum's and not below the seed control (the data
explain no disagreement beyond the seed's), intermediate otherwise. Each model's memorisation
ratio and exact-copy rate against its own half and its sample quality
(diffgen.analysis.quality: the source's one classifier, against the run's held-out set) are
reported beside.
"""
from __future__ import annotations

import os

import numpy as np
from absl import logging
from scipy import stats

from diffgen import figures, files
from diffgen.analysis import metrics, quality
from diffgen.analysis.experiment import Experiment, register
from diffgen.analysis.metrics import cosine_similarity
from diffgen.analysis.report import Section, markdown_table, number
from diffgen.data import to_float
from diffgen.errors import WorkdirError, require
from diffgen.optimum.optimal import optimal_denoiser
from diffgen.training.loop import train_and_evaluate
from diffgen.training.state import sampling_params

KEY, TITLE = 'e5', 'E5: reproducibility across disjoint training sets'
HALVES = ('a', 'b')
MODELS = (('A', 0, 1), ('B', 1, 2), ("A'", 0, 3), ("B'", 1, 4))  # (name, half, seed offset)
HALF_MODELS = (('A', "A'"), ('B', "B'"))   # the models of each half, in MODELS' order
BOOTSTRAP_REPLICATES = 2000


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


def half_config(config, npz_path, steps, seed):
    """The run's config with `seed`, trained on an npz file alone (no held-out set) for `steps`
    steps; everything else as the run (its optimiser, EMA decay and warmup included)."""
    c = config.copy_and_resolve_references()
    c.seed = seed
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


def write_halves(ctx):
    """Writes W/e5/half_{a,b}.npz; returns [(npz path, half images in [-1, 1])] for A and B."""
    ds, out = ctx.dataset, []
    for name, (images, labels) in zip(HALVES, split_halves(ds.train_images, ds.train_labels)):
        path = os.path.join(ctx.workdir, 'e5', f'half_{name}.npz')
        _write_npz(path, images, labels)
        out.append((path, to_float(images)))
    return out


def train_model(ctx, npz, half_name, seed, steps):
    """Trains (or resumes) one half model in W/e5/half_{half_name}_seed{seed}; returns its
    sampling parameters after `steps` steps."""
    workdir = os.path.join(ctx.workdir, 'e5', f'half_{half_name}_seed{seed}')
    logging.info('e5: half %s, seed %d: %d steps in %s', half_name, seed, steps, workdir)
    state = train_and_evaluate(half_config(ctx.config, npz, steps, seed), workdir)
    if int(state.step) != steps:
        raise WorkdirError(f'e5: training of half {half_name} (seed {seed}) stopped at step '
                           f'{int(state.step)}; rerun the same command to resume')
    return sampling_params(state, ctx.config.sampling.use_ema)


def mean_interval(x):
    """{'mean', 'low', 'high'}: x̄ ± z s/√n of a per-sample series (s with ddof 1; z = 1.96,
    the standard normal's 97.5 % quantile)."""
    x = np.asarray(x, np.float64)
    mean, se = float(np.mean(x)), float(np.std(x, ddof=1)) / np.sqrt(len(x))
    half = float(stats.norm.ppf(0.975)) * se
    return {'mean': mean, 'low': mean - half, 'high': mean + half}


def regime(minus_seed, minus_optimum, seed_minus_optimum):
    """The regime from the intervals {'low', 'high'} of the paired differences cross − seed,
    cross − optimum and seed − optimum:
      'undetermined'  seed − optimum has low <= 0: the seed control is not above the optimum's,
                      so the two controls do not separate the regimes;
      'memorising'    else if cross − optimum has low <= 0 (cross not above the optimum's);
      'generalising'  else if cross − seed has high >= 0 (cross not below the seed control);
      'intermediate'  otherwise (above the optimum's, below the seed control)."""
    if seed_minus_optimum['low'] <= 0:
        return 'undetermined'
    if minus_optimum['low'] <= 0:
        return 'memorising'
    return 'generalising' if minus_seed['high'] >= 0 else 'intermediate'


def _model_numbers(ctx, z, half, centre):
    """Memorisation ratio, exact-copy rate and train similarity of samples z against their own
    half, and their quality against the held-out set."""
    d1, d2, nearest = metrics.nearest_two(z, half, mesh=ctx.mesh)
    return {'train_similarity': mean_interval(cosine_similarity(z, half[nearest], centre)),
            'memorisation_ratio': metrics.memorisation_ratio(d1, d2),
            'exact_copy_rate': metrics.exact_copy_rate(d1),
            **quality.quality_metrics(z, ctx)}


def pair_similarities(samples, centre):
    """(cross (R, R, n), same (2, R, R, n)) per-sample cosines of HALF_MODELS' samples:
    cross[j, k] between model j of half A and model k of half B, same[h, j, k] between models
    j and k of half h (1 on the diagonal)."""
    cos = lambda x, y: cosine_similarity(samples[x], samples[y], centre)
    (a, b) = HALF_MODELS
    cross = np.stack([np.stack([cos(x, y) for y in b]) for x in a])
    same = np.stack([np.stack([np.stack([cos(x, y) for y in half]) for x in half])
                     for half in HALF_MODELS])
    return cross, same


def similarity_intervals(cross, same, optimum, rng, num_replicates=BOOTSTRAP_REPLICATES):
    """{name: {'mean', 'low', 'high', 'low_xT', 'high_xT'}} for cross, seed, optimum and the
    differences cross − seed, cross − optimum, seed − optimum: the pair means (cross: all R²
    cross pairs; seed: the same-half pairs j < k) over the samples, the two-way bootstrap's
    percentile interval (models and x_T) and the x_T-only one (models fixed), from one draw
    of the samples shared by every series."""
    n = len(optimum)
    counts = metrics.resample_counts(n, num_replicates, rng)
    upper = np.triu(np.ones(same.shape[1:3], bool), k=1)
    point = {'cross': float(cross.mean()), 'seed': float(same[:, upper].mean()),
             'optimum': float(np.mean(optimum))}
    opt = counts @ np.asarray(optimum, np.float64) / n
    replicates = {}
    for suffix, resample in (('', True), ('_xT', False)):
        c, u = metrics.pair_mean_replicates(cross, same, counts, rng, resample_models=resample)
        replicates[suffix] = {'cross': c, 'seed': u, 'optimum': opt}
    out = {}
    for name, (x, y) in {'cross': ('cross', None), 'seed': ('seed', None),
                         'optimum': ('optimum', None), 'cross_minus_seed': ('cross', 'seed'),
                         'cross_minus_optimum': ('cross', 'optimum'),
                         'seed_minus_optimum': ('seed', 'optimum')}.items():
        out[name] = {'mean': point[x] - (point[y] if y else 0.0)}
        for suffix, r in replicates.items():
            low, high = metrics.percentile_interval(r[x] - (r[y] if y else 0.0))
            out[name].update({f'low{suffix}': low, f'high{suffix}': high})
    return out


def measure(ctx, cfg):
    """Trains the four half models; samples them and the halves' optima from ctx.x_T; the
    similarities of the module doc with their intervals, the regime, and per model its copy
    and quality numbers."""
    config = ctx.config
    train_steps = num_steps(cfg, config.training)
    halves = write_halves(ctx)
    steps = config.analysis.sampler_steps
    centre = ctx.dataset.train.mean(axis=0)
    samples, models = {}, {}
    for name, h, offset in MODELS:
        npz, half = halves[h]
        params = train_model(ctx, npz, HALVES[h], config.seed + offset, train_steps)
        samples[name] = ctx.sample(ctx.network(params), 'ddim', num_steps=steps)
        models[name] = {'half': HALVES[h].upper(), 'seed': config.seed + offset,
                        **_model_numbers(ctx, samples[name], half, centre)}
    for name, h in (('ε*_A', 0), ('ε*_B', 1)):
        half = halves[h][1]
        optimum = optimal_denoiser(half, ctx.schedule, chunk_size=config.optimal.chunk_size,
                                   mesh=ctx.mesh)
        samples[name] = ctx.sample(optimum, 'ddim', num_steps=steps)
        models[name] = {'half': HALVES[h].upper(), 'seed': None,
                        **_model_numbers(ctx, samples[name], half, centre)}
    cross, same = pair_similarities(samples, centre)
    optimum = cosine_similarity(samples['ε*_A'], samples['ε*_B'], centre)
    iv = similarity_intervals(cross, same, optimum, np.random.default_rng(config.seed))
    pairs = {f'{x}–{y}': float(cross[j, k].mean()) for j, x in enumerate(HALF_MODELS[0])
             for k, y in enumerate(HALF_MODELS[1])}
    pairs.update({f'{x}–{y}': float(same[h, j, k].mean())
                  for h, half in enumerate(HALF_MODELS) for j, x in enumerate(half)
                  for k, y in enumerate(half) if j < k})
    upper = np.triu(np.ones(same.shape[1:3], bool), k=1)
    return {
        'half_size': len(halves[0][1]), 'num_steps': train_steps,
        'ema_decay': config.optim.ema_decay, 'ema_warmup': bool(config.optim.ema_warmup),
        'num_samples': len(optimum), 'sampler': f'ddim, {steps} steps',
        'bootstrap_replicates': BOOTSTRAP_REPLICATES,
        'cross_similarity': iv['cross'], 'seed_similarity': iv['seed'],
        'optimum_similarity': iv['optimum'],
        'cross_minus_seed': iv['cross_minus_seed'],
        'cross_minus_optimum': iv['cross_minus_optimum'],
        'seed_minus_optimum': iv['seed_minus_optimum'],
        'regime': regime(iv['cross_minus_seed'], iv['cross_minus_optimum'],
                         iv['seed_minus_optimum']),
        'pairs': pairs, 'models': models,
        '_similarities': {'cross-half pairs (their mean)': cross.mean(axis=(0, 1)),
                          'same-half pairs: seed control (their mean)':
                              same[:, upper].mean(axis=(0, 1)),
                          'ε*_A vs ε*_B (optimum)': optimum},
    }


def _interval(m, suffix=''):
    """'mean [low, high]' of the two-way interval (suffix '_xT': the x_T-only one)."""
    return f'{m["mean"]:.3f} [{m["low" + suffix]:.3f}, {m["high" + suffix]:.3f}]'


def _regime_sentence(n):
    """The regime of n['regime'] in words, with the numbers it was read from."""
    s, o = n['cross_minus_seed'], n['cross_minus_optimum']
    if n['regime'] == 'undetermined':
        return ('Regime: undetermined — the seed control is not above the similarity of the '
                f'halves\' optima (difference {_interval(n["seed_minus_optimum"])}), so the '
                'controls do not separate memorisation from generalisation here.')
    if n['regime'] == 'memorising':
        return ('Regime: memorising — the cross-half similarity is not above that of the '
                f'halves\' optima, which copy their own halves (difference {_interval(o)}).')
    above = f'the cross-half similarity is above the optimum\'s by {_interval(o)}'
    if n['regime'] == 'generalising':
        relation = 'above' if s['low'] > 0 else 'not distinguishable from'
        return (f'Regime: generalising — {above}, and {relation} the seed control '
                f'(difference {_interval(s)}): the two halves\' models agree at least as much '
                'as two seeds on the same half, so at these numbers of models and samples no '
                'part of their disagreement is attributable to their different training images.')
    return (f'Regime: intermediate — {above} but below the seed control (difference '
            f'{_interval(s)}): part of the disagreement between the halves\' models comes '
            'from their training images.')


def _histogram(series, path):
    fig, (ax,) = figures.subplots(width=5.5, height=4)
    figures.histogram(ax, series, 'centred cosine similarity of two samples from the same x_T')
    figures.save(fig, path)


def render(numbers, ctx):
    n = numbers
    name = 'e5_reproducibility.png'
    _histogram(n['_similarities'], ctx.figure_path(name))
    rows = [('cross-half: mean over ' + ', '.join(
                 f'{x}–{y}' for x in HALF_MODELS[0] for y in HALF_MODELS[1]), 'cross_similarity'),
            ('seed control: mean over ' + ', '.join(f'{x}–{y}' for x, y in HALF_MODELS),
             'seed_similarity'),
            ('ε*_A–ε*_B: the halves\' optima', 'optimum_similarity'),
            ('cross-half − seed control (paired)', 'cross_minus_seed'),
            ('cross-half − optima (paired)', 'cross_minus_optimum'),
            ('seed control − optima (paired)', 'seed_minus_optimum')]
    table = markdown_table(
        ['pairs (same x_T)', 'mean cosine [95% interval: models and x_T]',
         '[95% interval: x_T only]'],
        [[label, _interval(n[key]), f'[{n[key]["low_xT"]:.3f}, {n[key]["high_xT"]:.3f}]']
         for label, key in rows])
    models = markdown_table(
        ['model', 'half', 'seed', 'cos to nearest image of its half', 'memorisation ratio',
         'exact-copy rate', 'FD', 'precision', 'recall'],
        [[name_, m['half'], '–' if m['seed'] is None else str(m['seed']),
          _interval(m['train_similarity']), number(m['memorisation_ratio']),
          number(m['exact_copy_rate']), number(m['fd'], '.2f'), number(m['precision']),
          number(m['recall'])] for name_, m in n['models'].items()])
    (a, a2), (b, b2) = HALF_MODELS
    pairs = ', '.join(f'{pair} {value:.3f}' for pair, value in n['pairs'].items())
    warmup = ' with warm-up' if n['ema_warmup'] else ''
    markdown = '\n'.join([
        f'Four models trained {n["num_steps"]} steps each with their own seeds and the run\'s '
        f'EMA (decay {n["ema_decay"]:g}{warmup}): {a} and {a2} on half A, {b} and {b2} on half '
        f'B, disjoint halves of {n["half_size"]} images; with the halves\' empirical optima, '
        f'all sampled from the same {n["num_samples"]} x_T ({n["sampler"]}). Cosine '
        'similarities of images centred on the training-set mean, averaged over the pairs of '
        'models; 95% percentile intervals of a two-way bootstrap over the models (resampled '
        f'within each half) and the x_T ({n["bootstrap_replicates"]} replicates), and beside '
        'them over the x_T alone (these networks, not training on a half). With two models '
        'per half the bootstrap sees two trainings of each half, so even the two-way '
        'intervals understate the spread between trainings.', '', table, '',
        f'Per pair: {pairs}.', '',
        _regime_sentence(n), '',
        'Per model, against its own half (memorisation ratio: d_1/d_2 < 1/3; exact copy: '
        'd_1 < 1e-3; cosine to the nearest image: mean ± 1.96 standard errors over the '
        'samples) and sample quality against the held-out set:', '', models])
    summary = (f'Two models per disjoint half: their samples\' cross-half similarity '
               f'{_interval(n["cross_similarity"])} against {_interval(n["seed_similarity"])} '
               f'for two seeds on one half and {_interval(n["optimum_similarity"])} for the '
               f'halves\' optima (intervals over models and x_T): {n["regime"]}.')
    return Section(KEY, TITLE, markdown, numbers, [name], summary=summary)


def check(config):
    require(config.analysis.e5.num_steps >= 0,
            'analysis.e5.num_steps must be >= 0 (default training.num_steps)')


register(Experiment(KEY, TITLE, measure, render, check, trains=True))
