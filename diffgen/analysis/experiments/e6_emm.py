"""E6: effective model memorisation (EMM): the largest training-set size N at which the
trained model's memorisation ratio (fraction of samples with d_1/d_2 < 1/3) is at least
analysis.e6.threshold (0.9), found by a sweep over N.

In one run, E6 measures that run's own point: the memorisation ratio of analysis.num_samples
deterministic DDIM samples (from ctx.x_T) against the run's training set of N images, with
its binomial standard error √(p(1 − p)/n). The sweep over N is one command,

    python -m launch.sweep --config=configs/digits.py:smoke --sweep_dir=D [--sweep_arg=16,64,256]

which runs each N of configs/digits.py's get_sweep() in D/num_train_<N> (with
analysis.experiments = ('e6',)), then collects every run's report.json into D/results.csv
(columns 'e6.num_train', 'e6.memorisation_ratio', ...) and draws D/emm.png with
write_sweep_summary below. To put the sweep into a run's report, point the run at it:
--config.analysis.e6.sweep_dir=D; E6 then reads D/results.csv (if it exists) and adds the
ratio-against-N table, the EMM and the plot.
"""
from __future__ import annotations

import csv
import io
import math
import os

import numpy as np

from diffgen import figures, files
from diffgen.analysis import metrics
from diffgen.analysis.experiment import Experiment, register
from diffgen.analysis.report import Section, markdown_table
from diffgen.errors import require

KEY, TITLE = 'e6', 'E6: effective model memorisation'

RESULTS = 'results.csv'
FIGURE = 'emm.png'
N_COLUMN, RATIO_COLUMN = 'e6.num_train', 'e6.memorisation_ratio'


def effective_model_memorisation(num_train, ratios, threshold=0.9):
    """EMM = max{N : ratio(N) >= threshold}, or None if no N reaches the threshold."""
    reached = [n for n, r in zip(num_train, ratios) if r >= threshold]
    return max(reached) if reached else None


def read_results(sweep_dir):
    """The rows of sweep_dir/results.csv (dicts of strings); [] if there is none."""
    path = os.path.join(sweep_dir, RESULTS)
    if not files.exists(path):
        return []
    return list(csv.DictReader(io.StringIO(files.read_text(path))))


def sweep_points(rows):
    """(N, memorisation ratio) of the rows that have both, sorted by N (NumPy arrays)."""
    points = sorted((int(float(r[N_COLUMN])), float(r[RATIO_COLUMN])) for r in rows
                    if r.get(N_COLUMN) not in (None, '') and r.get(RATIO_COLUMN) not in (None, ''))
    return np.array([p[0] for p in points], np.int64), np.array([p[1] for p in points])


def plot_emm(num_train, ratios, emm, threshold, path):
    """Memorisation ratio against N (log axis), the threshold and the EMM marked."""
    fig, (ax,) = figures.subplots(width=5.5, height=4)
    ax.plot(num_train, ratios, marker='o')
    ax.axhline(threshold, ls=':', c='gray', label=f'threshold {threshold}')
    if emm is not None:
        ax.axvline(emm, ls='--', c='tab:red', label=f'EMM = {emm}')
    ax.set_xscale('log', base=2)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel('training-set size N')
    ax.set_ylabel('memorisation ratio (d1/d2 < 1/3)')
    ax.legend()
    return figures.save(fig, path)


def write_sweep_summary(sweep_dir, rows, threshold, figure_path=None):
    """Draws the EMM plot (default sweep_dir/emm.png) from results rows; returns
    (N array, ratio array, EMM) or None when no row has E6 numbers."""
    num_train, ratios = sweep_points(rows)
    if not len(num_train):
        return None
    emm = effective_model_memorisation(num_train.tolist(), ratios.tolist(), threshold)
    plot_emm(num_train, ratios, emm, threshold, figure_path or os.path.join(sweep_dir, FIGURE))
    return num_train, ratios, emm


def measure(ctx, cfg):
    """This run's memorisation ratio (with its binomial standard error) and exact-copy rate
    of DDIM samples; with cfg.sweep_dir, the sweep's ratio against N and its EMM."""
    steps = ctx.config.analysis.sampler_steps
    samples = ctx.sample(ctx.network(), 'ddim', num_steps=steps)
    d1, d2, _ = metrics.nearest_two(samples, ctx.distance_rows, mesh=ctx.mesh)
    ratio = metrics.memorisation_ratio(d1, d2)
    numbers = {'num_train': int(ctx.dataset.train_images.shape[0]), 'memorisation_ratio': ratio,
               'memorisation_ratio_se': math.sqrt(ratio * (1 - ratio) / len(samples)),
               'exact_copy_rate': metrics.exact_copy_rate(d1), 'num_samples': len(samples),
               'sampler': f'ddim, {steps} steps', 'threshold': cfg.threshold}
    num_train, ratios = sweep_points(read_results(cfg.sweep_dir) if cfg.sweep_dir else [])
    if len(num_train):
        numbers['sweep'] = {'sweep_dir': cfg.sweep_dir, 'num_train': num_train,
                            'memorisation_ratio': ratios, 'emm': effective_model_memorisation(
                                num_train.tolist(), ratios.tolist(), cfg.threshold)}
    return numbers


def render(numbers, ctx):
    n, sweep_dir = numbers, ctx.config.analysis.e6.sweep_dir
    lines = [f'This run (N = {n["num_train"]}): memorisation ratio {n["memorisation_ratio"]:.3f} '
             f'(± {n["memorisation_ratio_se"]:.3f}) of {n["num_samples"]} DDIM samples, '
             f'exact-copy rate {n["exact_copy_rate"]:.3f}.']
    if 'sweep' not in n:
        if sweep_dir:
            lines.append(f'\nNo E6 results in {sweep_dir}/{RESULTS} yet.')
        lines.append('\nThe EMM needs a sweep over N: run `python -m launch.sweep '
                     '--config=<config> --sweep_dir=D`, then analyse with '
                     '`--config.analysis.e6.sweep_dir=D`.')
        return Section(KEY, TITLE, '\n'.join(lines), numbers)
    sweep, threshold = n['sweep'], n['threshold']
    plot_emm(sweep['num_train'], sweep['memorisation_ratio'], sweep['emm'], threshold,
             ctx.figure_path(FIGURE))
    table = markdown_table(['N', 'memorisation ratio'],
                           [[k, f'{r:.3f}'] for k, r in zip(sweep['num_train'],
                                                           sweep['memorisation_ratio'])])
    emm = sweep['emm'] if sweep['emm'] is not None else f'none (no N reaches {threshold})'
    lines += ['', f'Sweep {sweep["sweep_dir"]}:', '', table, '',
              f'EMM (largest N with ratio ≥ {threshold}): {emm}.']
    return Section(KEY, TITLE, '\n'.join(lines), numbers, [FIGURE])


def check(config):
    require(0.0 < config.analysis.e6.threshold <= 1.0, 'analysis.e6.threshold must be in (0, 1]')


register(Experiment(KEY, TITLE, measure, render, check, trains=True))
