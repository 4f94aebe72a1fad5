"""The distance criterion of memorisation, which means the same at every N, and the
calibration of both criteria (docs/math.md §7).

The ratio criterion (Gu et al. 2023) flags a sample when d_1 / d_2 < 1/3. It depends on d_2,
the distance to the second-nearest training image, which shrinks as N grows: the same
near-copy is flagged more often at small N. The distance criterion flags a sample when

    d_1 < δ,   δ = the q-quantile (analysis.copy_quantile) of the source's own
                   nearest-neighbour distances  min_{j ≠ i} ‖y_i − y_j‖ / √D

over the whole source (every image of its pools, whatever N and the seed are; a fixed
random subset of at most dataset.source_images' max_images where it is larger), measured
from a fixed subset of m = min(2048, size) images i against all the others. δ does not
depend on N: a sample within δ of a training image is flagged at every N, and a held-out
image (a fresh draw of the source) is flagged at most at rate ≈ q, reached at N = the
whole source.

Calibration at one N (calibration()): the rate at which each criterion flags
  - held-out images, against the N training images (a criterion's false-positive rate for
    samples that are new images of the source);
  - noisy copies y_i + σ z of training images (z ~ N(0, I), σ the RMS noise per pixel, each
    of analysis.copy_noise_levels; n = max(N, 256) copies of the training images in turn),
    against the same N images (its detection rate for near-copies).
With max_queries, at most that many held-out images and noisy copies per level (a fixed
random subset of each; the rates' Monte-Carlo standard error is then at most
1/(2√max_queries)): a sweep's collect step calibrates every run this way (sweep_calibration).

The calibration of a sweep (sweep_calibration): per N, the mean over its seeds' runs (each
seed draws its own training subset) of each rate above, with δ once for the source.
"""
from __future__ import annotations

import numpy as np

from diffgen.analysis import metrics
from diffgen.data import dataset as datasets
from diffgen.data.dataset import source_images
from diffgen.errors import UserError
from diffgen.optimum import chunked
from diffgen.optimum.neighbors import knn

THRESHOLD_QUERIES = 2048   # m: source images whose nearest-neighbour distance is measured
CALIBRATION_COPIES = 256   # noisy copies per noise level at least (all N images if more)
SWEEP_QUERIES = 1024       # a sweep's calibration: held-out images and copies per level at most


def nearest_other(images, num_queries=THRESHOLD_QUERIES, mesh=None, seed=0):
    """min_{j ≠ i} ‖y_i − y_j‖ / √D for a fixed random subset of num_queries images i of the
    set (all of them if fewer; NumPy float64). A duplicated image has distance 0."""
    images = np.asarray(images, np.float32)
    queries = np.random.default_rng(seed).permutation(len(images))[:num_queries]
    distances, indices = knn(images[queries], images, 2, mesh=mesh, normalize=True)
    distances, indices = np.asarray(distances), np.asarray(indices)
    # the query itself is one of its two nearest (distance 0): keep the other one
    return np.where(indices[:, 0] == queries, distances[:, 1], distances[:, 0]).astype(np.float64)


def threshold(images, quantile, mesh=None):
    """δ: the quantile of nearest_other(images) (linear interpolation between order
    statistics)."""
    return float(np.quantile(nearest_other(images, mesh=mesh), quantile))


def source_threshold(config, mesh=None):
    """δ of config's data source at analysis.copy_quantile (the whole source: see the module
    docstring)."""
    return threshold(source_images(config), config.analysis.copy_quantile, mesh=mesh)


def flags(d1, d2, delta):
    """{'ratio': d_1/d_2 < 1/3, 'distance': d_1 < δ} per sample (boolean arrays)."""
    return {'ratio': metrics.memorised(d1, d2), 'distance': np.asarray(d1) < delta}


def rates(d1, d2, delta):
    """{'ratio': fraction flagged by the ratio criterion, 'distance': by the distance one}."""
    return {name: float(np.mean(f)) for name, f in flags(d1, d2, delta).items()}


def _subset(images, max_queries, rng):
    """images, or a random subset of max_queries of them in their order (None: all)."""
    if max_queries is None or len(images) <= max_queries:
        return images
    return images[np.sort(rng.choice(len(images), max_queries, replace=False))]


def calibration(train, heldout, delta, noise_levels, seed=0, mesh=None, rows=None,
                max_queries=None):
    """{'heldout': rates of the held-out images, 'noisy_<σ>': rates of noisy copies at RMS
    σ, 'num_copies': n, 'num_heldout': held-out images used, 'threshold': δ} against the
    training set train (model space; rows: the whole training set as float32 chunked rows
    where train is one host's part of it); heldout may be None or empty (left out).
    n = max(N, 256) copies of the training images in turn; with max_queries, at most that
    many held-out images and copies (random subsets: see the module docstring)."""
    train = np.asarray(train, np.float32)
    if rows is None:
        rows = chunked.prepare_rows(train, 0, np.float32, mesh=mesh)
    subsets = np.random.default_rng([seed, 1])   # apart from the noise's stream below
    out = {}
    if heldout is not None and len(heldout):
        heldout = _subset(np.asarray(heldout, np.float32), max_queries, subsets)
        d1, d2, _ = metrics.nearest_two(heldout, rows, mesh=mesh)
        out['heldout'], out['num_heldout'] = rates(d1, d2, delta), len(heldout)
    n = max(len(train), CALIBRATION_COPIES)
    source = train[np.arange(n) % len(train)]
    source = _subset(source, max_queries, subsets)
    rng = np.random.default_rng(seed)
    for sigma in noise_levels:
        noisy = source + np.float32(sigma) * rng.standard_normal(source.shape, np.float32)
        d1, d2, _ = metrics.nearest_two(noisy, rows, mesh=mesh)
        out[f'noisy_{sigma:g}'] = rates(d1, d2, delta)
    out['num_copies'], out['threshold'] = len(source), float(delta)
    return out


def sweep_calibration(runs, max_queries=SWEEP_QUERIES, mesh=None):
    """The calibration of a sweep's runs (runs: (N, seed, config) triples of one source):
    [{'num_train': N, 'seeds': [seed], 'threshold': δ, 'num_copies': n, 'num_heldout': m,
      'heldout': {'ratio', 'distance'}, 'noisy': [{'sigma': σ, 'ratio', 'distance'}]}]
    by N ascending, each rate the mean over the seeds of N of calibration(the run's training
    and held-out sets, δ, analysis.copy_noise_levels, max_queries); 'heldout' is None where
    the runs have no held-out images. δ is the source's (source_threshold of the first
    config). [] for no runs; DataError where a run's data cannot be read; UserError where
    the runs differ in source, image transform, copy_quantile or copy_noise_levels (one δ
    and one set of σ serve them all)."""
    runs = sorted(runs, key=lambda r: (r[0], r[1]))
    if not runs:
        return []
    shared = lambda c: (c.data.source, c.data.center_crop, c.data.image_size,
                        c.analysis.copy_quantile, tuple(c.analysis.copy_noise_levels))
    differ = sorted({repr(shared(c)) for _, _, c in runs})
    if len(differ) > 1:
        raise UserError('the runs to calibrate differ in (data.source, data.center_crop, '
                        'data.image_size, analysis.copy_quantile, analysis.copy_noise_levels): '
                        + ' vs '.join(differ))
    delta = source_threshold(runs[0][2], mesh=mesh)
    per_n = {}
    for num_train, seed, config in runs:
        data = datasets.load(config)
        heldout = data.heldout if len(data.heldout_images) else None
        per_n.setdefault(int(num_train), []).append((int(seed), calibration(
            data.train, heldout, delta, config.analysis.copy_noise_levels, mesh=mesh,
            max_queries=max_queries)))
    out = []
    for num_train, done in sorted(per_n.items()):
        first = done[0][1]
        mean = lambda key, rule: float(np.mean([c[key][rule] for _, c in done]))
        levels = [k for k in first if k.startswith('noisy_')]
        out.append({
            'num_train': num_train, 'seeds': [s for s, _ in done], 'threshold': float(delta),
            'num_copies': first['num_copies'], 'num_heldout': first.get('num_heldout', 0),
            'heldout': ({r: mean('heldout', r) for r in ('ratio', 'distance')}
                        if all('heldout' in c for _, c in done) else None),
            'noisy': [{'sigma': float(k[len('noisy_'):]),
                       **{r: mean(k, r) for r in ('ratio', 'distance')}} for k in levels]})
    return out
