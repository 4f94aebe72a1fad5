"""Memorisation metrics of generated samples against a training set (DESIGN.md §1).

Distances are over √D (root-mean-square difference per coordinate, [-1, 1] units):
  d_1, d_2  distances to the nearest and second-nearest training image;
  memorised iff d_1 / d_2 < 1/3 (Gu et al. 2023; d_1 = d_2 = 0, a copy of a duplicated
            image, counts as memorised); memorisation ratio = fraction memorised;
  exact copy iff d_1 < tol.
The metrics know nothing of how the samples were made.
"""
from __future__ import annotations

import numpy as np

from diffgen.neighbors import knn

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
