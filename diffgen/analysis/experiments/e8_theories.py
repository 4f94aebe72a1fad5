"""E8, which theory explains the network (docs/math.md §11): samples of the trained network
and of reference denoisers (diffgen/analysis/theories.py: ε*, the Gaussian denoiser, the LS
and ELS patch machines, ...) from the same x_T with the same sampler (analysis.e8.method,
analysis.e8.sampler_steps), compared sample by sample.

  - The patch machines' P(t) is calibrated against the network first (Kamb & Ganguli's
    single time-dependent hyperparameter): at analysis.e8.calibration_times values of t,
    log-spaced in [1, T], the P of analysis.e8.patch_sizes that minimises the mean squared
    x̂₀ error to the network on forward-process points a_t y + σ_t ε of the first
    analysis.e8.calibration_images training images; each t then takes the P of the nearest
    calibrated t. The calibration is stored with the section.
  - r² of each reference's sample against the network's (theories.r_squared), per sample;
    its median, quartiles and a percentile bootstrap interval of the median over samples;
    the best reference by median r² and its lead over the second with a paired bootstrap
    interval.
  - Along the network's own DDIM (η = 0) trajectories from the same x_T, at each t, the
    x₀-gap E‖x̂₀^θ − x̂₀^ref‖²/D (x̂₀ clipped to the data range, as E3) and the mean
    cos(ε_θ, ε_ref) of the network to each reference.
"""
from __future__ import annotations

import json
import os

import jax
import numpy as np

from diffgen import figures, files
from diffgen.analysis import theories
from diffgen.analysis.experiment import Experiment, register
from diffgen.analysis.experiments import e3_gap as e3
from diffgen.analysis.report import Section, markdown_table, number
from diffgen.diffusion import samplers
from diffgen.errors import require
from diffgen.optimum import patches

KEY, TITLE = 'e8', 'E8: which theory explains the network'
_SAMPLE_KEY, _CALIBRATION_KEY = 81, 82   # ctx.rng fold_in constants of E8
SHOWN = 12                                # samples per row of the sample figure
# Kamb & Ganguli (2025), Table 1: median r² of the ELS machine against convolution-only
# networks, and against a UNet with self-attention on CIFAR-10 (a citation, not a result).
PAPER_MEDIAN_R2 = {'MNIST': 0.94, 'FashionMNIST': 0.94, 'CIFAR-10': 0.95, 'CelebA': 0.96,
                   'CIFAR-10 with self-attention': 0.77}


def calibration_times(T, count):
    """count values of t log-spaced in [1, T] (rounded, unique, ascending)."""
    return sorted({int(round(v)) for v in np.geomspace(1, T, count)})


def _trajectory_terms(network, refs, schedule, x_T, pairs, data_range):
    """Per reference, e3.point_terms of (ε_θ, ε_ref) at the states of the network's DDIM
    (η = 0) trajectories: a tuple (one per reference) of tuples of (S, B) arrays."""
    def step(x, ts):
        t, t_next = ts
        tt = jax.numpy.full((x.shape[0],), t, jax.numpy.int32)
        eps = network(x, tt)
        terms = tuple(e3.point_terms(x, t, eps, ref(x, tt), schedule, data_range)
                      for ref in refs)
        return samplers.ddim_step(x, eps, t=t, t_next=t_next, schedule=schedule), terms

    return jax.lax.scan(step, x_T, pairs)[1]


_trajectory_terms = jax.jit(_trajectory_terms)


def measure(ctx, cfg):
    """Calibrated P(t) per patch machine; per reference the r² of its samples against the
    network's (summary, and per sample for the figure); the best reference and its lead;
    the x₀-gap and cosine of the network to each reference along its DDIM trajectories."""
    T, shape = ctx.schedule.num_timesteps, ctx.dataset.image_shape
    names = list(cfg.references)
    if not ctx.dataset.is_image:
        names = [n for n in names if n not in theories.PATCH_MACHINES]
    else:
        for p in cfg.patch_sizes:
            patches.check_patch_size(p, shape)
    steps = cfg.sampler_steps or ctx.config.analysis.sampler_steps
    x_T = ctx.x_T[:cfg.num_samples or len(ctx.x_T)]
    network = ctx.network()
    numbers = {'references': names, 'method': cfg.method,
               'sampler_steps': 0 if cfg.method == 'ddpm' else steps,
               'num_samples': len(x_T), 'num_train': int(ctx.train_rows.num_rows),
               'attention': list(ctx.config.model.attn_resolutions)}
    tables = {}
    for name in names:
        if name in theories.PATCH_MACHINES:
            calibration = patches.calibrate_patch_sizes(
                network, ctx.dataset.train, ctx.dataset.train[:cfg.calibration_images],
                ctx.schedule, calibration_times(T, cfg.calibration_times), cfg.patch_sizes,
                equivariant=theories.PATCH_MACHINES[name],
                rng=jax.random.fold_in(ctx.rng, _CALIBRATION_KEY), mesh=ctx.mesh)
            numbers[f'calibration_{name}'] = calibration
            tables[name] = patches.patch_size_table(calibration, T)
    refs = {name: theories.denoiser(ctx, name, tables.get(name)) for name in names}
    draw = lambda d: ctx.sample(d, cfg.method, x_T=x_T, num_steps=steps, key=_SAMPLE_KEY)
    samples = {'network': draw(network)}
    samples.update({name: draw(d) for name, d in refs.items()})
    r2 = {name: theories.r_squared(samples['network'], samples[name]) for name in names}
    numbers['r2'] = {name: theories.median_interval(v) for name, v in r2.items()}
    median = lambda n: numbers['r2'][n]['median']
    ranked = sorted(names, key=lambda n: -np.inf if median(n) is None else -median(n))
    numbers['best'] = ranked[0]
    if len(ranked) > 1:
        numbers['lead'] = {'over': ranked[1], **theories.paired_median_difference(
            r2[ranked[0]], r2[ranked[1]])}
    pairs = samplers.step_pairs(T, ctx.config.analysis.sampler_steps)
    train = ctx.dataset.train
    data_range = (np.float32(train.min()), np.float32(train.max()))
    terms = _trajectory_terms(network, tuple(refs.values()), ctx.schedule, x_T, pairs,
                              data_range)
    dim = int(np.prod(shape))
    numbers['t'] = np.asarray(pairs[:, 0])
    for name, ref_terms in zip(refs, terms):
        summary = e3.summarise(ref_terms, dim)
        numbers[f'x0_gap_{name}'], numbers[f'cosine_{name}'] = (summary['x0_gap'],
                                                                 summary['cosine'])
    numbers['_samples'], numbers['_r2'] = samples, r2
    return numbers


def _figures(ctx, numbers):
    names, made = numbers['references'], []
    samples = numbers['_samples']
    if ctx.dataset.is_image:
        rows = [(theories.LABELS[k], samples[k][:SHOWN]) for k in ['network', *names]]
        made.append('e8_samples.png')
        figures.image_rows(rows, ctx.figure_path(made[-1]),
                           f'E8: the network and each reference from the same x_T '
                           f'({numbers["method"]})')
    fig, (ax_r2, ax_gap, ax_cos) = figures.subplots(3, width=4.8, height=4.0)
    values = [numbers['_r2'][n][np.isfinite(numbers['_r2'][n])] for n in names]
    ax_r2.boxplot(values, showfliers=False)
    ax_r2.set_xticks(range(1, len(names) + 1), [theories.LABELS[n] for n in names])
    for i, v in enumerate(values):
        ax_r2.scatter(np.full(len(v), i + 1) + np.random.default_rng(i).uniform(-0.15, 0.15,
                      len(v)), v, s=4, alpha=0.4)
    ax_r2.set_ylabel("r² of the reference's sample against the network's")
    ax_r2.tick_params(axis='x', labelrotation=30, labelsize=7)
    ax_r2.set_title('per-sample r² (boxes: quartiles)')
    t = numbers['t']
    for n in names:
        ax_gap.plot(t, numbers[f'x0_gap_{n}'], marker='.', markersize=3, label=theories.LABELS[n])
        ax_cos.plot(t, numbers[f'cosine_{n}'], marker='.', markersize=3, label=theories.LABELS[n])
    for ax, ylabel in ((ax_gap, 'E‖x̂₀^θ − x̂₀^ref‖² / D'), (ax_cos, 'mean cos(ε_θ, ε_ref)')):
        ax.set_xscale('log')
        ax.set_xlabel('t')
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7)
    ax_gap.set_yscale('log')
    ax_gap.set_title("along the network's DDIM trajectories")
    ax_cos.set_title("along the network's DDIM trajectories")
    made.append('e8_r2.png')
    figures.save(fig, ctx.figure_path(made[-1]), 'E8: how well each reference predicts the '
                 'network')
    return made


def render(numbers, ctx):
    names = numbers['r2']
    made = _figures(ctx, numbers)
    table = markdown_table(
        ['reference', 'median r²', '95% interval', 'quartiles'],
        [[theories.LABELS[n], number(s['median']), f'[{number(s["low"])}, {number(s["high"])}]',
          f'{number(s["q1"])} – {number(s["q3"])}'] for n, s in names.items()])
    sampler = numbers['method'] + (f' ({numbers["sampler_steps"]} steps)'
                                   if numbers['sampler_steps'] else '')
    text = (f'{numbers["num_samples"]} samples of the network and of each reference from the '
            f'same x_T with {sampler}; r² = 1 − Σ(x̂ − x)²/Σ(x − x̄)² of each reference\'s '
            f'sample x̂ against the network\'s x, per sample (interval: bootstrap of the '
            f'median over samples).\n\n{table}\n\n')
    best = numbers['best']
    text += f'The reference that explains the network best is {theories.LABELS[best]}'
    if 'lead' in numbers:
        lead = numbers['lead']
        text += (f', median r² {number(lead["difference"], "+.3f")} above '
                 f'{theories.LABELS[lead["over"]]} (paired bootstrap 95% interval '
                 f'[{number(lead["low"], "+.3f")}, {number(lead["high"], "+.3f")}]'
                 + ('; the two are not distinguished at this sample size' if
                    lead['low'] <= 0 <= lead['high'] else '') + ')')
    text += '.'
    for name in theories.PATCH_MACHINES:
        if f'calibration_{name}' in numbers:
            c = numbers[f'calibration_{name}']
            text += (f' Calibrated {name.upper()} patch size P(t): ' + ', '.join(
                f't = {t}: {p}' for t, p in zip(c['t'], c['patch_size'])) + '.')
    text += (' Kamb & Ganguli (2025) report a median r² of the ELS machine against '
             'convolution-only networks of ' + ', '.join(
                 f'{v:.2f} ({k})' for k, v in PAPER_MEDIAN_R2.items()) + '.')
    s = names[best]
    summary = (f'Of the references, {theories.LABELS[best]} predicts the network\'s samples best: '
               f'median r² {number(s["median"])} [{number(s["low"])}, {number(s["high"])}] over '
               f'{numbers["num_samples"]} samples from the same x_T (' + ', '.join(
                   f'{theories.LABELS[n]} {number(v["median"])}' for n, v in names.items()
                   if n != best) + f'; N = {numbers["num_train"]}, network '
               + ('with' if numbers['attention'] else 'without') + ' self-attention). Kamb & '
               f'Ganguli report {PAPER_MEDIAN_R2["MNIST"]:.2f} for their ELS machine against '
               'convolution-only networks on 28×28 MNIST.')
    return Section(KEY, TITLE, text, numbers, made, summary=summary)


def check(config):
    e8 = config.analysis.e8
    theories.check_names(e8.references, 'analysis.e8.references')
    require(e8.method in samplers.METHODS, f'analysis.e8.method: unknown sampler '
            f'{e8.method!r}; the samplers are {", ".join(samplers.METHODS)}')
    for p in e8.patch_sizes:
        patches.check_patch_size(p, None)
    require(e8.calibration_times >= 1, 'analysis.e8.calibration_times must be at least 1')
    require(e8.calibration_images >= 1, 'analysis.e8.calibration_images must be at least 1')
    require(e8.num_samples >= 0, 'analysis.e8.num_samples must be >= 0 (0: analysis.num_samples)')


register(Experiment(KEY, TITLE, measure, render, check))


def read_sweep(sweep_dir, runs):
    """{reference: [(N, median r², low, high), ...]} from the E8 sections of a sweep's runs
    (runs: (run name, N) pairs; a run without an E8 section is left out), sorted by N."""
    points = {}
    for name, n in runs:
        path = os.path.join(sweep_dir, name, 'report', 'report.json')
        if not files.exists(path):
            continue
        section = json.loads(files.read_text(path)).get(KEY)
        for ref, s in ((section or {}).get('r2') or {}).items():
            if s.get('median') is not None:
                points.setdefault(ref, []).append((n, s['median'], s['low'], s['high']))
    return {ref: sorted(p) for ref, p in points.items()}


def read_leads(sweep_dir, runs):
    """[(N, best, over, difference, low, high), ...] sorted by N: each run's best reference by
    median r² and its lead over the second (paired bootstrap 95% interval), from the E8
    sections of a sweep's runs (runs: (run name, N) pairs; a run without a lead left out)."""
    leads = []
    for name, n in runs:
        path = os.path.join(sweep_dir, name, 'report', 'report.json')
        if not files.exists(path):
            continue
        section = json.loads(files.read_text(path)).get(KEY) or {}
        lead = section.get('lead')
        if section.get('best') and isinstance(lead, dict):
            leads.append((n, section['best'], lead['over'], lead['difference'], lead['low'],
                          lead['high']))
    return sorted(leads)


def read_setting(sweep_dir, runs):
    """What the sweep's largest-N run with an E8 section was (runs: (run name, N) pairs), for
    a comparison with a paper's setting: {'source', 'image_size' (0: the source's own),
    'num_steps', 'max_n', 'attention' (the network's attention resolutions; empty:
    convolution-only), 'method', 'sampler_steps', 'num_samples'}; None if no run has one."""
    for name, n in sorted(runs, key=lambda r: -r[1]):
        path = os.path.join(sweep_dir, name, 'report', 'report.json')
        config = os.path.join(sweep_dir, name, 'config.json')
        if not (files.exists(path) and files.exists(config)):
            continue
        section = json.loads(files.read_text(path)).get(KEY)
        if not section:
            continue
        stored = json.loads(files.read_text(config))
        try:
            return {'source': stored['data']['source'],
                    'image_size': stored['data']['image_size'],
                    'num_steps': stored['training']['num_steps'], 'max_n': n,
                    'attention': list(stored['model']['attn_resolutions']),
                    'method': section['method'], 'sampler_steps': section['sampler_steps'],
                    'num_samples': section['num_samples']}
        except (KeyError, TypeError):  # a config.json or section of another shape: no setting
            return None
    return None


def plot_against_n(variants, path):
    """Median r² against N (log axis) per reference, one panel per variant ({label:
    read_sweep's points}); each run a point with its bootstrap interval, the mean over runs
    at each N a line. Returns path, or None if there is nothing to draw."""
    variants = {k: v for k, v in variants.items() if v}
    if not variants:
        return None
    fig, axes = figures.subplots(len(variants), width=5.0, height=4.0)
    for ax, (label, points) in zip(axes, variants.items()):
        for i, (ref, rows) in enumerate(sorted(points.items())):
            n, med, lo, hi = (np.asarray(c, np.float64) for c in zip(*rows))
            ax.errorbar(n * (1 + 0.03 * (i - 1)), med, yerr=[med - lo, hi - med], fmt='o',
                        color=f'C{i}', alpha=0.5, markersize=3, capsize=2)
            sizes = np.unique(n)
            ax.plot(sizes, [med[n == s].mean() for s in sizes], color=f'C{i}',
                    label=theories.LABELS.get(ref, ref))
        ax.set_xscale('log', base=2)
        ax.set_xlabel('training-set size N')
        ax.set_ylabel("median r² against the network's samples")
        ax.set_title(label)
        ax.legend(fontsize=7)
    return figures.save(fig, path, 'E8 across the transition: which theory explains the network')
