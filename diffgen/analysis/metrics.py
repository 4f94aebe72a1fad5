"""Memorisation metrics of generated samples against a training set, and the relative gap
between two denoisers (docs/math.md §7).

Distances are over √D (root-mean-square difference per coordinate, [-1, 1] units):
  d_1, d_2  distances to the nearest and second-nearest training image;
  memorised iff d_1 / d_2 < 1/3 (Gu et al. 2023; d_1 = d_2 = 0, a copy of a duplicated
            image, counts as memorised); memorisation ratio = fraction memorised;
  exact copy iff d_1 < tol;
  novelty   d_1 to n training images against d_1 to n held-out images (the same n);
  gap       E‖ε_θ − ε*‖² / E‖ε*‖² over a set of points at one t.
Bootstrap intervals (percentile): resample_counts, novelty_replicates, pair_mean_replicates
(a two-way bootstrap over models and samples of similarities between pairs of models).
The metrics know nothing of how the samples were made.
"""
from __future__ import annotations

import numpy as np

from diffgen.optimum.neighbors import knn

MEMORISED_RATIO = 1.0 / 3.0
EXACT_COPY_TOL = 1e-3


def nearest_two(samples, train_set, chunk_size=2048, mesh=None):
    """(d_1, d_2, index of the nearest training image), distances over √D, NumPy arrays."""
    distances, indices = knn(samples, train_set, 2, chunk_size=chunk_size, mesh=mesh,
                             normalize=True)
    distances, indices = np.asarray(distances), np.asarray(indices)
    return distances[:, 0], distances[:, 1], indices[:, 0]


def memorised(d1, d2, ratio=MEMORISED_RATIO):
    """d_1 / d_2 < ratio, written d_1 < ratio d_2 so that d_2 = 0 needs d_1 = 0."""
    d1, d2 = np.asarray(d1), np.asarray(d2)
    return (d1 < ratio * d2) | ((d1 == 0) & (d2 == 0))


def memorisation_ratio(d1, d2, ratio=MEMORISED_RATIO):
    """The fraction of samples with d_1 / d_2 < ratio."""
    return float(np.mean(memorised(d1, d2, ratio)))


def exact_copy_rate(d1, tol=EXACT_COPY_TOL):
    """The fraction of samples with d_1 < tol (over √D)."""
    return float(np.mean(np.asarray(d1) < tol))


def nearest_distance(samples, reference, chunk_size=2048, mesh=None):
    """d_1: the distance (over √D) of each sample to its nearest reference example (NumPy)."""
    distances, _ = knn(samples, reference, 1, chunk_size=chunk_size, mesh=mesh, normalize=True)
    return np.asarray(distances)[:, 0]


def novelty(d1_train, d1_heldout):
    """Novelty of samples: d_1 to n training images against d_1 to n held-out images.

    If the samples do not depend on the training set, the two reference sets are i.i.d.
    draws of the same size from one law, so (d_1^train, d_1^heldout) is exchangeable and
        closer_to_train = P(d_1^train < d_1^heldout) + P(=)/2 = 1/2,   E d_1^train = E d_1^heldout;
    a copy of a training image in the set has d_1^train = 0. Returns the mean distances,
    ratio = mean d_1^train / mean d_1^heldout (1: no pull towards the training set) and
    closer_to_train (ties count one half)."""
    d1_train, d1_heldout = np.asarray(d1_train, np.float64), np.asarray(d1_heldout, np.float64)
    closer = np.mean(d1_train < d1_heldout) + 0.5 * np.mean(d1_train == d1_heldout)
    return {'d1_train': float(d1_train.mean()), 'd1_heldout': float(d1_heldout.mean()),
            'ratio': float(d1_train.mean() / d1_heldout.mean()),
            'closer_to_train': float(closer)}


def novelty_replicates(d1_train, d1_heldout, counts):
    """Bootstrap replicates of metrics.novelty's closer_to_train and ratio over the samples:
    with counts c (B, n) (resample_counts),
        closer*_b = Σ_i c_bi ([d_1^train < d_1^heldout] + [d_1^train = d_1^heldout]/2) / n,
        ratio*_b  = Σ_i c_bi d_1^train / Σ_i c_bi d_1^heldout.
    Returns (closer*, ratio*), each (B,)."""
    d1_train, d1_heldout = np.asarray(d1_train, np.float64), np.asarray(d1_heldout, np.float64)
    counts = np.asarray(counts, np.float64)
    closer = (d1_train < d1_heldout) + 0.5 * (d1_train == d1_heldout)
    return counts @ closer / len(closer), (counts @ d1_train) / (counts @ d1_heldout)


def excess_fraction(value, null, copier):
    """(value − null) / (copier − null), elementwise: where value lies from a reference that
    does not depend on the training set (null: 0) to a copier of it (copier: 1); NaN where
    the two ends coincide."""
    value, null, copier = (np.asarray(x, np.float64) for x in (value, null, copier))
    with np.errstate(divide='ignore', invalid='ignore'):
        return np.where(copier != null, (value - null) / (copier - null), np.nan)


def squared_errors(eps_model, eps_opt):
    """(‖ε_θ − ε*‖², ‖ε*‖²) per example, summed over all axes but the first (jnp or NumPy)."""
    axes = tuple(range(1, eps_opt.ndim))
    diff = eps_model - eps_opt
    return (diff * diff).sum(axis=axes), (eps_opt * eps_opt).sum(axis=axes)


def gap(sq_diff, sq_opt):
    """gap = E‖ε_θ − ε*‖² / E‖ε*‖² = Σ_b ‖ε_θ − ε*‖²_b / Σ_b ‖ε*‖²_b over the last axis
    (the examples), from the per-example terms of squared_errors; NumPy float64."""
    sq_diff, sq_opt = np.asarray(sq_diff, np.float64), np.asarray(sq_opt, np.float64)
    return sq_diff.sum(axis=-1) / sq_opt.sum(axis=-1)


def cosine_similarity(u, v, centre=0.0):
    """Row-wise cos(u_i − μ, v_i − μ) of two batches (B, ...) flattened to vectors."""
    u = (np.asarray(u, np.float64) - centre).reshape(len(u), -1)
    v = (np.asarray(v, np.float64) - centre).reshape(len(v), -1)
    return np.sum(u * v, axis=1) / (np.linalg.norm(u, axis=1) * np.linalg.norm(v, axis=1))


def resample_counts(n, num_replicates, rng):
    """(B, n) int: how often each of n items is drawn in each of B resamples of n items with
    replacement (multinomial(n, 1/n)); a resampled mean is counts @ x / n."""
    return rng.multinomial(n, np.full(n, 1.0 / n), size=num_replicates)


def percentile_interval(replicates, level=0.95):
    """(low, high): the (1 − level)/2 and (1 + level)/2 quantiles of bootstrap replicates."""
    low, high = np.quantile(np.asarray(replicates, np.float64), [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def pair_mean_replicates(cross, same, counts, rng, resample_models=True):
    """Two-way bootstrap replicates of the mean similarity over cross-half and same-half pairs
    of models.

    Models 1..R of half A and 1..R of half B (R >= 2) all sample the same n inputs (x_T);
    cross (R, R, n): s_jk,i between model j of A and model k of B at input i; same (2, R, R, n):
    u_h,jj',i between models j, j' of half h (A = 0, B = 1; the entries j < j' are read). The
    estimates are
        cross = (1/R²) Σ_jk s̄_jk,   same = mean over h and j < j' of ū_h,jj'   (bars: mean over i).
    Replicate b draws the inputs with counts c_b (given: (B, n), resample_counts, so that other
    per-input series can share them) and, with resample_models, R models of each half with
    replacement (counts w_h,j; otherwise w = 1), and recomputes both over the drawn pairs:
        cross*_b = Σ_jk w_A,j w_B,k m_jk / R²,         m_jk = Σ_i c_bi s_jk,i / n,
        same*_b  = Σ_h Σ_{j<j'} w_h,j w_h,j' m_h,jj' / Σ_h Σ_{j<j'} w_h,j w_h,j'.
    A model drawn twice is no same-half pair with itself (its similarity with itself is 1):
    only pairs of distinct models count, and a replicate whose draws leave no such pair in
    either half draws its models again. Returns (cross*, same*), each (B,)."""
    cross, same = np.asarray(cross, np.float64), np.asarray(same, np.float64)
    counts = np.asarray(counts, np.float64)
    R, n = cross.shape[0], cross.shape[-1]
    B = len(counts)
    m_cross = (counts @ cross.reshape(R * R, n).T / n).reshape(B, R, R)
    m_same = (counts @ same.reshape(2 * R * R, n).T / n).reshape(B, 2, R, R)
    upper = np.triu(np.ones((R, R)), k=1)
    w = np.ones((B, 2, R))
    pair_weights = lambda w: w[..., :, None] * w[..., None, :] * upper   # (..., 2, R, R)
    redraw = np.full(B, resample_models)
    while redraw.any():
        w[redraw] = rng.multinomial(R, np.full(R, 1.0 / R), size=(int(redraw.sum()), 2))
        redraw = pair_weights(w).sum(axis=(1, 2, 3)) == 0
    cross_rep = (w[:, 0, :, None] * w[:, 1, None, :] * m_cross).sum(axis=(1, 2)) / R ** 2
    weights = pair_weights(w)
    same_rep = (weights * m_same).sum(axis=(1, 2, 3)) / weights.sum(axis=(1, 2, 3))
    return cross_rep, same_rep
