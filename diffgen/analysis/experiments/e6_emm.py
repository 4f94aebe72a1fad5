"""E6: effective model memorisation (EMM): the training-set size N at which the trained
model's memorisation ratio (fraction of samples with d_1/d_2 < 1/3) falls through
analysis.e6.threshold τ (0.9), found by a sweep over N with several seeds per N.

In one run, E6 measures that run's own point: the memorisation ratio of analysis.num_samples
deterministic DDIM samples (from ctx.x_T) against the run's training set of N images, with
its binomial standard error √(p(1 − p)/n); beside it the N-independent criterion's rate
(d_1 < δ, diffgen/analysis/copies.py) and both criteria's calibration at this N (the rate
each flags held-out images and noisy copies of training images: ctx.calibration()). The sweep over N is one command,

    python -m launch.sweep --config=configs/digits.py:smoke --sweep_dir=D
        [--sweep_arg=16,64,256] [--seeds=3]

which runs each N of configs/digits.py's get_sweep() (each --seeds times, with its own
config.seed) in D/num_train_<N>[_seed_<s>] (with analysis.experiments = ('e6', 'e8')), then
collects every run's report.json into D/results.csv (columns 'seed', 'e6.num_train',
'e6.memorisation_ratio', 'e6.num_samples', ...) and draws D/emm.png (sweep_summary, plot_emm
below). To put the sweep into a run's report, point the run at it:
--config.analysis.e6.sweep_dir=D; E6 then reads D/results.csv (if it exists) and adds the
ratio-against-N table, the EMM and the plot.

The sweep's numbers (sweep_summary) pool the rows (models) of each N as
diffgen/analysis/transition.py pools the seeds of its eval.csv curves: the mean ratio over
the seeds of N with its 95 % percentile bootstrap over models and samples, and the EMM as the
logistic crossing p(N*) = τ of p(N) = 1/(1 + exp(−(α + β log N))) fitted by maximum
likelihood to the counts k = ratio · n of every row, with its bootstrap interval ("< smallest
N" / "> largest N" where it lies outside the swept range; docs/math.md §7). Beside it, the
coarse reading off the swept sizes, effective_model_memorisation: the largest N whose pooled
ratio is ≥ τ. Rows without a 'seed' column (an older results.csv) are one model each; rows
without e6.num_samples (or with different ones) give the pooled means only, no interval or
crossing (a count needs its n).
"""
from __future__ import annotations

import csv
import io
import math
import os

import numpy as np

from diffgen import figures, files
from diffgen.analysis import copies, metrics, transition
from diffgen.analysis.experiment import Experiment, register
from diffgen.analysis.experiments import e1_optimum_copies
from diffgen.analysis.report import Section, markdown_table
from diffgen.errors import require

KEY, TITLE = 'e6', 'E6: effective model memorisation'

RESULTS = 'results.csv'
FIGURE = 'emm.png'
N_COLUMN, RATIO_COLUMN = 'e6.num_train', 'e6.memorisation_ratio'
SAMPLES_COLUMN, STEP_COLUMN, SEED_COLUMN = 'e6.num_samples', 'e6.provenance.step', 'seed'


def effective_model_memorisation(num_train, ratios, threshold=0.9):
    """The EMM read off the swept sizes: max{N : ratio(N) >= threshold}, or None if no N
    reaches the threshold (the crossing lies between it and the next larger size)."""
    reached = [n for n, r in zip(num_train, ratios) if r >= threshold]
    return max(reached) if reached else None


def read_results(sweep_dir):
    """The rows of sweep_dir/results.csv (dicts of strings); [] if there is none."""
    path = os.path.join(sweep_dir, RESULTS)
    if not files.exists(path):
        return []
    return list(csv.DictReader(io.StringIO(files.read_text(path))))


def _given(row, column):
    return row.get(column) not in (None, '')


def _points(rows):
    """[(N, seed, ratio, n or None, step)] of the rows that have N and a ratio; a row without
    a seed is a model of its own (its row number as seed); step -1 where not recorded."""
    return [(int(float(r[N_COLUMN])),
             int(float(r[SEED_COLUMN])) if _given(r, SEED_COLUMN) else i,
             float(r[RATIO_COLUMN]),
             int(float(r[SAMPLES_COLUMN])) if _given(r, SAMPLES_COLUMN) else None,
             int(float(r[STEP_COLUMN])) if _given(r, STEP_COLUMN) else -1)
            for i, r in enumerate(rows) if _given(r, N_COLUMN) and _given(r, RATIO_COLUMN)]


def sweep_points(rows):
    """(N, memorisation ratio) per N of the rows that have both, sorted by N (NumPy arrays):
    the mean ratio over the rows (seeds) of each N."""
    per_n = {}
    for n, _, ratio, _, _ in _points(rows):
        per_n.setdefault(n, []).append(ratio)
    sizes = sorted(per_n)
    return (np.array(sizes, np.int64),
            np.array([np.mean(per_n[n]) for n in sizes], np.float64))


def sweep_summary(rows, threshold, num_boot=transition.NUM_BOOT, seed=0):
    """The sweep's E6 numbers from results.csv rows, or None when no row has them:
    {'num_train', 'memorisation_ratio': sweep_points(), 'emm': effective_model_memorisation
    of those, 'threshold', 'num_samples', 'pooled': transition.series() of the rows (per N
    the pooled ratio, its bootstrap interval, the seeds' ratios; the crossing) without its
    step curves, or None with 'note' saying why}."""
    points = _points(rows)
    if not points:
        return None
    num_train, ratios = sweep_points(rows)
    out = {'num_train': num_train, 'memorisation_ratio': ratios, 'threshold': float(threshold),
           'emm': effective_model_memorisation(num_train.tolist(), ratios.tolist(), threshold),
           'num_samples': None, 'pooled': None, 'note': None}
    samples = {p[3] for p in points}
    if None in samples or len(samples) > 1:
        out['note'] = (f'no interval or crossing: {RESULTS} has rows without {SAMPLES_COLUMN}'
                       if None in samples else
                       f'no interval or crossing: rows with different {SAMPLES_COLUMN} '
                       f'({sorted(samples)})')
        return out
    per_n = {}
    for n, s, ratio, _, step in points:
        per_n.setdefault(n, {})[s] = (np.array([step]), np.array([ratio]))
    out['num_samples'] = samples.pop()
    pooled = transition.series(per_n, out['num_samples'], threshold, num_boot, seed)
    out['pooled'] = {k: v for k, v in pooled.items() if k != 'curves'}
    return out


def plot_emm(summary, path):
    """Memorisation ratio against N (log axis) and the threshold: with the pooled numbers,
    seeds faint, pooled means with bootstrap bars, the fitted logistic and N* with its
    interval (transition.plot_rate_panel); without them the means and the coarse EMM."""
    fig, (ax,) = figures.subplots(width=5.5, height=4)
    if summary['pooled'] is not None:
        transition.plot_rate_panel(ax, summary['pooled'], 'tab:blue', 'ddim')
    else:
        ax.plot(summary['num_train'], summary['memorisation_ratio'], marker='o')
        if summary['emm'] is not None:
            ax.axvline(summary['emm'], ls='--', c='tab:red', label=f'largest N ≥ threshold: '
                                                                   f'{summary["emm"]}')
    ax.axhline(summary['threshold'], ls=':', c='gray', label=f'threshold {summary["threshold"]}')
    ax.set_xscale('log', base=2)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel('training-set size N')
    ax.set_ylabel('memorisation ratio (d1/d2 < 1/3)')
    ax.legend(fontsize=8)
    return figures.save(fig, path)


def write_sweep_summary(sweep_dir, rows, threshold, figure_path=None):
    """Draws the EMM plot (default sweep_dir/emm.png) from results rows; returns (N array,
    pooled ratio array, coarse EMM) or None when no row has E6 numbers. (launch.sweep's
    collect uses sweep_summary and plot_emm, which give the pooled numbers too.)"""
    summary = sweep_summary(rows, threshold)
    if summary is None:
        return None
    plot_emm(summary, figure_path or os.path.join(sweep_dir, FIGURE))
    return summary['num_train'], summary['memorisation_ratio'], summary['emm']


def measure(ctx, cfg):
    """This run's memorisation ratio (with its binomial standard error), near-copy rate
    (d_1 < δ) and exact-copy rate of DDIM samples (kept for figures as '_samples', not
    stored), both criteria's calibration; with cfg.sweep_dir, the sweep's numbers
    (sweep_summary)."""
    steps = ctx.config.analysis.sampler_steps
    samples = ctx.sample(ctx.network(), 'ddim', num_steps=steps)
    d1, d2, _ = metrics.nearest_two(samples, ctx.distance_rows, mesh=ctx.mesh)
    ratio = metrics.memorisation_ratio(d1, d2)
    near = copies.rates(d1, d2, ctx.copy_threshold())['distance']
    numbers = {'num_train': int(ctx.dataset.train_images.shape[0]), 'memorisation_ratio': ratio,
               'memorisation_ratio_se': math.sqrt(ratio * (1 - ratio) / len(samples)),
               'near_copy_rate': near,
               'near_copy_rate_se': math.sqrt(near * (1 - near) / len(samples)),
               'exact_copy_rate': metrics.exact_copy_rate(d1), 'num_samples': len(samples),
               'sampler': f'ddim, {steps} steps', 'threshold': cfg.threshold,
               'calibration': ctx.calibration(), '_samples': samples}
    summary = sweep_summary(read_results(cfg.sweep_dir), cfg.threshold) if cfg.sweep_dir else None
    if summary is not None:
        numbers['sweep'] = {'sweep_dir': cfg.sweep_dir, **summary}
    return numbers


def render(numbers, ctx):
    n, sweep_dir = numbers, ctx.config.analysis.e6.sweep_dir
    lines = [f'This run (N = {n["num_train"]}): memorisation ratio {n["memorisation_ratio"]:.3f} '
             f'(± {n["memorisation_ratio_se"]:.3f}) of {n["num_samples"]} DDIM samples, '
             f'exact-copy rate {n["exact_copy_rate"]:.3f}.']
    if 'near_copy_rate' in n:
        lines.append(f'Under the N-independent criterion d₁ < δ: {n["near_copy_rate"]:.3f} '
                     f'(± {n["near_copy_rate_se"]:.3f}).')
    if 'calibration' in n:
        lines.append('\n' + e1_optimum_copies.criteria_text(n['calibration'],
                                                             ctx.config.analysis.copy_quantile))
    if 'sweep' not in n:
        if sweep_dir:
            lines.append(f'\nNo E6 results in {sweep_dir}/{RESULTS} yet.')
        lines.append('\nThe EMM needs a sweep over N: run `python -m launch.sweep '
                     '--config=<config> --sweep_dir=D --seeds=3`, then analyse with '
                     '`--config.analysis.e6.sweep_dir=D`.')
        return Section(KEY, TITLE, '\n'.join(lines), numbers)
    sweep, threshold = n['sweep'], n['threshold']
    plot_emm(sweep, ctx.figure_path(FIGURE))
    pooled = sweep['pooled']
    if pooled is None:
        rows = [[k, f'{r:.3f}', '–', '–', '–']
                for k, r in zip(sweep['num_train'], sweep['memorisation_ratio'])]
    else:
        rows = [[k, f'{r:.3f}', f'[{lo:.3f}, {hi:.3f}] over {over}', len(seeds),
                 ', '.join(f'{x:.2f}' for x in rates)]
                for k, r, lo, hi, over, seeds, rates in zip(
                    pooled['num_train'], pooled['rate'], pooled['low'], pooled['high'],
                    pooled['interval_over'], pooled['seeds'], pooled['seed_rates'])]
    table = markdown_table(['N', 'memorisation ratio (mean over seeds)', '95 % bootstrap',
                            'seeds', 'per seed'], rows)
    emm = sweep['emm'] if sweep['emm'] is not None else f'none (no N reaches {threshold})'
    lines += ['', f'Sweep {sweep["sweep_dir"]}:', '', table, '',
              f'EMM read off the swept sizes (largest N with ratio ≥ {threshold}): {emm}.']
    if pooled is None:
        lines.append(f'EMM as a logistic crossing: {sweep["note"]}.')
    else:
        c = pooled['crossing']
        over = f', interval over {c["interval_over"]}' if c else ''
        lines.append(f'EMM as the logistic crossing p(N*) = {threshold} of p(N) = '
                     f'1/(1 + exp(−(α + β log N))) (maximum likelihood on the counts of every '
                     f'model, 95 % bootstrap{over}): {transition.crossing_text(c)}.')
    return Section(KEY, TITLE, '\n'.join(lines), numbers, [FIGURE])


def check(config):
    require(0.0 < config.analysis.e6.threshold <= 1.0, 'analysis.e6.threshold must be in (0, 1]')


register(Experiment(KEY, TITLE, measure, render, check, trains=True))
