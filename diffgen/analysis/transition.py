"""The transition from copying to creating, read from a sweep over the training-set size N
(launch/sweep.py over configs/digits.py's get_sweep): each run's eval.csv (evaluation during
training, diffgen/analysis/evaluation.py) gives its memorisation ratio per sampler and step.

  memorisation ratio p̂ = k/n (k of n samples with d_1/d_2 < 1/3), with the 95 % Wilson
  score interval (z = 1.96):
      centre = (p̂ + z²/2n) / (1 + z²/n),  half-width = z √(p̂(1 − p̂)/n + z²/4n²) / (1 + z²/n);
  EMM (effective model memorisation, Gu et al. 2023; docs/math.md §7) at threshold τ = 0.9:
      the largest N of the sweep with p̂(N) ≥ τ, bracketed by the largest N whose interval
      lies above τ (low) and the largest N whose interval reaches τ (high). Between two
      swept sizes the EMM is not resolved: the next larger size bounds it from above.
"""
from __future__ import annotations

import os

import numpy as np
from scipy import stats

from diffgen import figures, files
from diffgen.training.csv_log import read_csv

EVAL_CSV = 'eval.csv'


def wilson_interval(k, n, level=0.95):
    """(low, high) of the Wilson score interval of a binomial proportion p̂ = k/n (scipy's):
    (p̂ + z²/2n ± z √(p̂(1 − p̂)/n + z²/4n²)) / (1 + z²/n), z the standard normal's
    (1 + level)/2 quantile; (nan, nan) for n = 0."""
    if n <= 0:
        return float('nan'), float('nan')
    interval = stats.binomtest(k, n).proportion_ci(confidence_level=level, method='wilson')
    return float(interval.low), float(interval.high)


def emm(sizes, ratios, lows, highs, threshold=0.9):
    """{'emm', 'low', 'high'}: the largest N with ratio >= threshold, and the largest N whose
    interval lies above (low) / reaches (high) the threshold; None where no N qualifies."""
    pick = lambda ok: max((n for n, o in zip(sizes, ok) if o), default=None)
    return {'emm': pick([r >= threshold for r in ratios]),
            'low': pick([lo >= threshold for lo in lows]),
            'high': pick([hi >= threshold for hi in highs])}


def read_curves(sweep_dir, runs):
    """{N: {name: (steps array, ratio array)}} from the runs' eval.csv files, one curve per
    memorisation evaluator (its column '<name>/memorisation_ratio', at the steps where it
    ran: another evaluator's steps leave its cell empty); runs: the (run name, N) pairs to
    read (missing files are skipped)."""
    curves = {}
    for name, n in runs:
        path = os.path.join(sweep_dir, name, EVAL_CSV)
        if not files.exists(path):
            continue
        rows = read_csv(path)
        columns = [k for k in (rows[0] if rows else ()) if k.endswith('/memorisation_ratio')]
        curves[n] = {}
        for column in columns:
            ran = [r for r in rows if r[column] != '']
            curves[n][column.split('/')[0]] = (np.array([int(r['step']) for r in ran]),
                                               np.array([float(r[column]) for r in ran]))
    return curves


def final_points(curves, num_samples, threshold=0.9):
    """{method: {'num_train', 'ratio', 'low', 'high', 'emm'}} from the last evaluation of each
    run (its final step), with Wilson intervals over num_samples samples."""
    out = {}
    methods = sorted({m for per_n in curves.values() for m in per_n})
    for m in methods:
        sizes = sorted(n for n in curves if m in curves[n])
        ratios = [float(curves[n][m][1][-1]) for n in sizes]
        intervals = [wilson_interval(round(r * num_samples), num_samples) for r in ratios]
        lows, highs = [i[0] for i in intervals], [i[1] for i in intervals]
        out[m] = {'num_train': sizes, 'ratio': ratios, 'low': lows, 'high': highs,
                  'emm': emm(sizes, ratios, lows, highs, threshold)}
    return out


def plot_ratio_against_n(points, threshold, path):
    """Memorisation ratio against N (log axis) per sampler, 95 % Wilson intervals, EMM."""
    fig, (ax,) = figures.subplots(width=6, height=4.2)
    for m, p in points.items():
        ratio = np.asarray(p['ratio'])
        err = np.maximum([ratio - np.asarray(p['low']), np.asarray(p['high']) - ratio], 0.0)
        label = f'{m} (EMM {p["emm"]["emm"] or "< smallest N"})'
        ax.errorbar(p['num_train'], ratio, yerr=err, marker='o', capsize=3, label=label)
    ax.axhline(threshold, ls=':', c='gray', label=f'threshold {threshold}')
    ax.set_xscale('log', base=2)
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel('training-set size N')
    ax.set_ylabel('memorisation ratio (d1/d2 < 1/3)')
    ax.legend(fontsize=8)
    return figures.save(fig, path, 'Memorisation at the end of training, 95% Wilson intervals')


def plot_curves(curves, path):
    """Memorisation ratio against training step, one panel per sampler, one line per N."""
    methods = sorted({m for per_n in curves.values() for m in per_n})
    fig, axes = figures.subplots(len(methods), width=4.5, height=3.8)
    for ax, m in zip(axes, methods):
        for n in sorted(curves):
            if m in curves[n]:
                steps, ratios = curves[n][m]
                ax.plot(steps, ratios, marker='.', label=f'N = {n}')
        ax.set_title(m)
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel('training step')
        ax.set_ylabel('memorisation ratio')
    axes[0].legend(fontsize=8)
    return figures.save(fig, path, 'Memorisation during training')


def summarise(sweep_dir, runs, num_samples, threshold=0.9):
    """Reads the sweep's eval.csv files and writes transition_ratio.png and
    transition_curves.png into sweep_dir; returns the final points per sampler (None if no
    run has evaluations)."""
    curves = read_curves(sweep_dir, runs)
    if not curves:
        return None
    points = final_points(curves, num_samples, threshold)
    plot_ratio_against_n(points, threshold, os.path.join(sweep_dir, 'transition_ratio.png'))
    plot_curves(curves, os.path.join(sweep_dir, 'transition_curves.png'))
    return points
