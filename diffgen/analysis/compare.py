"""--mode=compare: two trained models of the same data and forward process side by side,
typically one trained with L_eps and one with the gap objective (docs/math.md §6; the gap
objective's formulation is ours, from the paper's summary). Writes A/report/compare/.

An analysis like the report's experiments (measure, then render), over two models: it needs
a second workdir, so it is not in the experiment registry but run by compare().

A is --workdir with --config, B is --other_workdir with the config stored in it; both use
the parameters A's sampling.use_ema selects (EMA or raw). Measured:

  ε predictions, on forward-process points x_t = a_t y + σ_t ε of n training images, per t:
      diff(t) = E‖ε_A − ε_B‖² / E‖ε*‖²,  gap_A(t) = E‖ε_A − ε*‖² / E‖ε*‖² (and gap_B),
      bank(t) = E‖ε̂_bank − ε*‖² / E‖ε*‖²  (the gap-bank optimum, diffgen.optimum.gap_bank);
  samples of A, B, ε* and the gap-bank optimum from the same x_T (deterministic DDIM):
      the cosine similarity of every pair, per sample, centred on the training mean μ:
      cos(u − μ, v − μ) (diffgen.analysis.metrics.cosine_similarity);
  memorisation (diffgen.analysis.metrics) of each sample set: memorisation ratio, exact-copy rate,
      novelty (d_1 to the training set against d_1 to as many held-out images);
  sample quality (diffgen.analysis.quality): Fréchet distance, precision, recall.

The gap bank has BANK_DRAWS noises per training image and K = the gap model's
training.gap_max_k (B's if B used the gap objective, else A's, else the default).
"""
from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from diffgen import figures, files
from diffgen.analysis import metrics, quality, report
from diffgen.analysis.context import make_context
from diffgen.diffusion.denoisers import network_denoiser
from diffgen.errors import WorkdirError
from diffgen.optimum.gap_bank import bank_rows, gap_bank_denoiser
from diffgen.training import checkpoints as checkpointing
from diffgen.training.loop import restore_trained

BANK_DRAWS = 16
FRACTIONS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0)  # t / T
NAMES = ('A', 'B', 'eps*', 'gap bank')
BANK_KEY, POINTS_KEY = 1001, 1002  # fold_in constants of the analysis stream
SHOWN = 16                         # samples per model in the figure


@dataclasses.dataclass
class Other:
    """Model B: its stored config, workdir and restored training.loop.Run."""
    config: object
    workdir: str
    run: object


def _tuples(value):
    """JSON lists back to the tuples the configs hold."""
    if isinstance(value, dict):
        return {k: _tuples(v) for k, v in value.items()}
    return tuple(_tuples(v) for v in value) if isinstance(value, list) else value


def stored_config(workdir, data_dir):
    """The config stored in a workdir (config.json), reading its data from data_dir; a
    config.json that is damaged or not of a diffgen config's shape is one CorruptFileError
    naming it (checkpoints.read_stored_config)."""
    path = os.path.join(workdir, 'config.json')
    if not files.exists(path):
        raise WorkdirError(f'{workdir} holds no config.json; train a model there first')
    config = ml_collections.ConfigDict(_tuples(checkpointing.read_stored_config(
        workdir, remedy=('put back the config.json of the run that trained that model, or '
                         'train it anew'))))
    config.data.data_dir = data_dir
    return config


def gap_max_k(config_a, config_b):
    for c in (config_b, config_a):
        if c.training.objective == 'gap':
            return c.training.gap_max_k
    return config_a.training.gap_max_k


@jax.jit
def _predict(denoiser, x, t):
    return denoiser(x, t)


def eps_curves(ctx, denoisers, times):
    """{name: (len(times),)} of diff, gap_A, gap_B, bank (module doc) on n = min(N,
    analysis.num_samples) training images, one fixed ε per (image, t)."""
    train = ctx.dataset.train
    key = jax.random.fold_in(ctx.rng, POINTS_KEY)
    n = min(len(train), ctx.config.analysis.num_samples)
    y = train[np.asarray(jax.random.permutation(key, len(train)))[:n]]
    a, sigma = np.asarray(ctx.schedule.a), np.asarray(ctx.schedule.sigma)
    batch = ctx.config.analysis.batch_size
    curves = {k: [] for k in ('diff', 'gap_A', 'gap_B', 'bank')}
    for t in times:
        eps = np.asarray(jax.random.normal(jax.random.fold_in(key, t), y.shape))
        x = (a[t] * y + sigma[t] * eps).astype(np.float32)
        pred = {}
        for name, denoiser in denoisers.items():
            pred[name] = np.concatenate([
                np.asarray(_predict(denoiser, xb, jnp.full((len(xb),), t)))
                for xb in np.split(x, range(batch, n, batch))]).astype(np.float64)
        opt = pred['eps*']
        for curve, (u, v) in (('diff', ('A', 'B')), ('gap_A', ('A', 'eps*')),
                              ('gap_B', ('B', 'eps*')), ('bank', ('gap bank', 'eps*'))):
            sq_diff, _ = metrics.squared_errors(pred[u], pred[v])
            _, sq_opt = metrics.squared_errors(pred[u], opt)
            curves[curve].append(float(metrics.gap(sq_diff, sq_opt)))
    return {k: np.asarray(v) for k, v in curves.items()}


def memorisation(samples, ctx):
    """Memorisation ratio, exact-copy rate and novelty of samples (diffgen.metrics)."""
    d1, d2, _ = metrics.nearest_two(samples, ctx.distance_rows, mesh=ctx.mesh)
    out = {'memorisation_ratio': metrics.memorisation_ratio(d1, d2),
           'exact_copy_rate': metrics.exact_copy_rate(d1)}
    if ctx.heldout_rows is not None:
        novelty = metrics.novelty(*ctx.novelty_distances(samples))
        out.update({f'novelty_{k}': v for k, v in novelty.items()})
    return out


def _plot_curves(times, curves, path):
    fig, (ax,) = figures.subplots(width=6, height=4)
    labels = {'diff': '‖ε_A − ε_B‖² / ‖ε*‖²', 'gap_A': '‖ε_A − ε*‖² / ‖ε*‖²',
              'gap_B': '‖ε_B − ε*‖² / ‖ε*‖²', 'bank': '‖ε_bank − ε*‖² / ‖ε*‖²'}
    for key, label in labels.items():
        ax.loglog(times, curves[key], marker='o', label=label)
    ax.set_xlabel('t')
    ax.set_ylabel('relative squared difference')
    ax.legend()
    figures.save(fig, path)


def compare(config, workdir, other_workdir):
    """Runs the comparison of workdir's model (A) with other_workdir's (B); returns the
    report Section, written to A/report/compare/."""
    if not other_workdir:
        raise WorkdirError('--mode=compare needs --other_workdir=DIR (the second model)')
    config_b = stored_config(other_workdir, config.data.data_dir)
    if config_b.diffusion.to_dict() != config.diffusion.to_dict():
        raise WorkdirError(f'{other_workdir} used another forward process; cannot compare')
    run_a = restore_trained(config, workdir)
    other = Other(config_b, other_workdir, restore_trained(config_b, other_workdir))
    if not np.array_equal(run_a.dataset.train_images, other.run.dataset.train_images):
        raise WorkdirError(f'{workdir} and {other_workdir} were trained on different '
                           'training sets; cannot compare')
    ctx = make_context(config, workdir, run_a)
    ctx.report_dir = os.path.join(report.report_dir(workdir), 'compare')
    section = render(measure(ctx, other), ctx)
    if jax.process_index() == 0:
        report.write_report([section], ctx.report_dir, f'diffgen comparison: {workdir} vs '
                            f'{other_workdir}')
        logging.info('compare: wrote %s/report.md', ctx.report_dir)
    return section


def measure(ctx, other):
    """The numbers of the module doc for A (ctx's model) and B (other); both with the
    parameters A's sampling.use_ema selects. Also SHOWN samples of each for the figure."""
    config, dataset = ctx.config, ctx.dataset
    max_k = gap_max_k(config, other.config)
    bank = bank_rows(dataset.train, BANK_DRAWS, jax.random.fold_in(ctx.rng, BANK_KEY),
                     chunk_size=config.optimal.chunk_size, mesh=ctx.mesh)
    b = other.run
    denoisers = {'A': ctx.network(),
                 'B': network_denoiser(b.model, b.params(config.sampling.use_ema)),
                 'eps*': ctx.optimum(), 'gap bank': gap_bank_denoiser(bank, ctx.schedule, max_k)}

    T = ctx.schedule.num_timesteps
    times = np.unique(np.clip(np.round(np.asarray(FRACTIONS) * T).astype(int), 1, T))
    logging.info('compare: ε predictions over t ...')
    curves = eps_curves(ctx, denoisers, times)
    samples = {}
    for name, denoiser in denoisers.items():
        logging.info('compare: sampling %s ...', name)
        samples[name] = ctx.sample(denoiser, 'ddim')
    centre = dataset.train.mean(axis=0)
    pairs = [(u, v) for i, u in enumerate(NAMES) for v in NAMES[i + 1:]]
    cosines = {f'{u} vs {v}': metrics.cosine_similarity(samples[u], samples[v], centre)
               for u, v in pairs}
    logging.info('compare: memorisation and quality ...')
    return {
        'workdirs': {'A': os.path.abspath(ctx.workdir), 'B': os.path.abspath(other.workdir)},
        'objectives': {'A': _objective(config), 'B': _objective(other.config)},
        'gap_bank': {'draws': BANK_DRAWS, 'max_k': max_k},
        'times': times, 'eps': curves,
        'cosine': {k: {'mean': float(v.mean()), 'median': float(np.median(v))}
                   for k, v in cosines.items()},
        'memorisation': {name: memorisation(s, ctx) for name, s in samples.items()},
        'quality': {name: quality.quality_metrics(s, ctx) for name, s in samples.items()},
        'parameters': 'EMA' if config.sampling.use_ema else 'raw (no EMA)',
        'num_samples': int(len(ctx.x_T)),
        'sampler': f'ddim, {config.analysis.sampler_steps} steps',
        '_samples': {name: samples[name][:SHOWN] for name in NAMES},
    }


def _objective(config):
    t = config.training
    if t.objective != 'gap':
        return t.objective
    return f'gap, K={t.gap_max_k}, p_zero={t.gap_p_zero}, weighting={t.gap_weighting}'


def render(n, ctx):
    """The comparison's Section: its tables and text from the numbers n; compare_eps.png
    and (images) compare_samples.png in ctx.report_dir."""
    _plot_curves(n['times'], n['eps'], ctx.figure_path('compare_eps.png'))
    figure_names = ['compare_eps.png']
    if ctx.dataset.is_image:
        figures.save_grid(np.concatenate([n['_samples'][name] for name in NAMES]),
                          ctx.figure_path('compare_samples.png'), ncols=SHOWN)
        figure_names.append('compare_samples.png')
    fmt = lambda v: report.number(v, '.4g')
    eps_rows = [[t] + [fmt(n['eps'][k][i]) for k in ('diff', 'gap_A', 'gap_B', 'bank')]
                for i, t in enumerate(n['times'])]
    memo_keys = sorted({k for m in n['memorisation'].values() for k in m})
    memo_rows = [[k] + [fmt(n['memorisation'][name].get(k)) for name in NAMES]
                 for k in memo_keys]
    memo_rows += [[k] + [fmt(n['quality'][name][k]) for name in NAMES]
                  for k in ('fd', 'precision', 'recall')]
    cos_rows = [[k, fmt(v['mean']), fmt(v['median'])] for k, v in n['cosine'].items()]
    markdown = '\n\n'.join([
        f"A = `{n['workdirs']['A']}` ({n['objectives']['A']}), "
        f"B = `{n['workdirs']['B']}` ({n['objectives']['B']}), {n['parameters']} parameters "
        "(sampling.use_ema of A's config, for both). The gap-bank optimum uses "
        f"{n['gap_bank']['draws']} noises per training image and s = max(t − "
        f"{n['gap_bank']['max_k']}, 0). {n['num_samples']} samples each, {n['sampler']}, "
        'all from the same x_T.',
        'ε predictions on forward-process points of training images (relative to E‖ε*‖²):',
        report.markdown_table(['t', 'A vs B', 'A vs ε*', 'B vs ε*', 'gap bank vs ε*'],
                              eps_rows),
        'Cosine similarity of samples from the same x_T (centred on the training mean):',
        report.markdown_table(['pair', 'mean', 'median'], cos_rows),
        'Memorisation (d_1/d_2 < 1/3) and quality (classifier features):',
        report.markdown_table(['metric', *NAMES], memo_rows),
    ])
    objectives = n['objectives']
    return report.Section('compare', f'Comparison: A ({objectives["A"]}) vs B '
                          f'({objectives["B"]})', markdown, n, figure_names)
