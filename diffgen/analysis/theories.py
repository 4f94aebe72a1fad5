"""The reference denoisers of the report by name (docs/math.md §11), and how a sample of the
network is compared with a sample of a reference.

    optimum   ε*, the empirical-optimal denoiser of the training set (§3)
    identity  ε̂ = 0 (x̂₀ = x / a_t)
    mean      x̂₀ = μ, the training set's mean
    gaussian  the posterior mean of N(μ, Σ) with the training set's mean and covariance
              (Li, Dai & Qu 2024)
    ls, els   the local and the equivariant local score machines of Kamb & Ganguli (2025),
              with a patch size P(t) calibrated against the network (calibrate)

r² of a sample x̂ of a reference against the network's sample x from the same x_T
(Kamb & Ganguli's measure: the fraction of the network sample's pixel variance the
reference explains):

    r² = 1 − Σ_p (x̂_p − x_p)² / Σ_p (x_p − x̄)²,   x̄ = the mean of x over its pixels p,

1 for the same image, 0 for a flat image at x̄, negative for worse than that.
"""
from __future__ import annotations

import numpy as np

from diffgen.errors import ConfigError
from diffgen.optimum import patches, references

NAMES = ('optimum', 'identity', 'mean', 'gaussian', 'ls', 'els')
PATCH_MACHINES = {'ls': False, 'els': True}   # name -> equivariant
LABELS = {'network': 'network ε_θ', 'optimum': 'optimum ε*', 'identity': 'identity (ε̂ = 0)',
          'mean': 'data mean', 'gaussian': 'Gaussian (μ, Σ)', 'ls': 'LS patch machine',
          'els': 'ELS patch machine'}


def check_names(names, key):
    """ConfigError unless every name is one of NAMES."""
    unknown = [n for n in names if n not in NAMES]
    if unknown:
        raise ConfigError(f'{key}: unknown reference {unknown[0]!r}; the references are '
                          f'{", ".join(NAMES)}')


def denoiser(ctx, name, patch_table=None):
    """The reference denoiser `name` (NAMES) of ctx's training set; the patch machines need
    patch_table, their P per timestep (calibrate)."""
    train, schedule, mesh = ctx.dataset.train, ctx.schedule, ctx.mesh
    if name == 'optimum':
        return ctx.optimum()
    if name == 'identity':
        return references.identity_denoiser()
    if name == 'mean':
        return references.mean_denoiser(train, schedule, mesh=mesh)
    if name == 'gaussian':
        return ctx.gaussian()
    if name in PATCH_MACHINES:
        if patch_table is None:
            raise ValueError(f'the {name} machine needs its patch sizes P(t) (calibrate)')
        return patches.patch_denoiser(train, schedule, patch_table,
                                      equivariant=PATCH_MACHINES[name], mesh=mesh)
    check_names([name], 'reference')


def r_squared(samples, predictions):
    """r² of each prediction against its sample (both (B, ...)), per sample (float64;
    see the module docstring). A flat sample (zero variance) gives NaN."""
    x = np.asarray(samples, np.float64).reshape(len(samples), -1)
    y = np.asarray(predictions, np.float64).reshape(len(predictions), -1)
    total = np.sum((x - x.mean(axis=1, keepdims=True)) ** 2, axis=1)
    with np.errstate(invalid='ignore', divide='ignore'):
        return 1.0 - np.sum((y - x) ** 2, axis=1) / total


def median_interval(values, num_resamples=2000, level=0.95, seed=0):
    """{'median', 'q1', 'q3', 'low', 'high', 'n'} of values (NaN left out): the median and
    quartiles, and the percentile bootstrap interval of the median over the values (B
    resamples with replacement)."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if not len(v):
        return {'median': None, 'q1': None, 'q3': None, 'low': None, 'high': None, 'n': 0}
    rng = np.random.default_rng(seed)
    medians = np.median(rng.choice(v, (num_resamples, len(v))), axis=1)
    tail = (1 - level) / 2
    return {'median': float(np.median(v)), 'q1': float(np.quantile(v, 0.25)),
            'q3': float(np.quantile(v, 0.75)), 'low': float(np.quantile(medians, tail)),
            'high': float(np.quantile(medians, 1 - tail)), 'n': int(len(v))}


def paired_median_difference(a, b, num_resamples=2000, level=0.95, seed=0):
    """{'difference', 'low', 'high'}: median(a) − median(b) of two per-sample series of the
    same samples, with a percentile bootstrap interval resampling samples (pairs) together."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(a), (num_resamples, len(a)))
    diffs = np.median(a[idx], axis=1) - np.median(b[idx], axis=1)
    tail = (1 - level) / 2
    return {'difference': float(np.median(a) - np.median(b)),
            'low': float(np.quantile(diffs, tail)), 'high': float(np.quantile(diffs, 1 - tail))}
