"""Exact k-nearest-neighbour search against a float64 brute force.

Round-off bound (u = 2⁻²⁴): d² = ‖q‖² − 2 q·y + ‖y‖² in float32 sums D-term products
(each within γ_D ≈ D·u of the sum of magnitudes, Higham Thm 3.5) and adds three terms (2
more roundings), so |Δd²| ≤ E = (D + 4) u (‖q‖² + 2 Σ_j |q_j y_j| + ‖y‖²). Clamping at 0
only moves d² towards the true value, and |√a − √b| ≤ min(√|a − b|, |a − b|/√b), so with
the final sqrt (and division by √D) rounding: |Δd| ≤ min(√E, E/d) + 2u d.
"""
import numpy as np
import pytest

from diffgen.optimum import chunked
from diffgen.optimum.neighbors import knn

U32 = 2.0 ** -24


def brute_force(queries, train_set):
    """float64 distances (B, N) and the order by (distance, index)."""
    Q = np.asarray(queries, np.float64).reshape(len(queries), -1)
    Y = np.asarray(train_set, np.float64).reshape(len(train_set), -1)
    d = np.sqrt(((Q[:, None, :] - Y[None]) ** 2).sum(-1))
    order = np.stack([np.lexsort((np.arange(len(Y)), row)) for row in d])
    return d, order


def distance_bound(queries, train_set):
    """min(√E, E/d) + 2u d per (query, training point), from the module doc."""
    Q = np.asarray(queries, np.float64).reshape(len(queries), -1)
    Y = np.asarray(train_set, np.float64).reshape(len(train_set), -1)
    e = (Q.shape[1] + 4) * U32 * ((Q * Q).sum(1)[:, None] + 2 * np.abs(Q) @ np.abs(Y).T
                                  + (Y * Y).sum(1)[None])
    d = np.sqrt(((Q[:, None, :] - Y[None]) ** 2).sum(-1))
    with np.errstate(divide='ignore'):
        return np.minimum(np.sqrt(e), e / d) + 2 * U32 * d


def check_knn(queries, train_set, k, *, chunk_size, normalize=False):
    """Distances within the bound of the brute force and indices equal to its (d, index)
    order, where that order is decided: consecutive brute-force distances among the first
    k + 1 either tie exactly or differ by more than both bounds."""
    d_ref, order = brute_force(queries, train_set)
    bound = distance_bound(queries, train_set)
    rows_q = np.arange(len(queries))[:, None]
    first = order[:, :k + 1]
    gaps = np.diff(d_ref[rows_q, first], axis=1)
    margin = bound[rows_q, first][:, 1:] + bound[rows_q, first][:, :-1]
    assert np.all((gaps == 0) | (gaps > margin)), 'test data leaves the order undecided'
    distances, indices = knn(queries, train_set, k, chunk_size=chunk_size, normalize=normalize)
    scale = np.sqrt(np.prod(np.shape(train_set)[1:])) if normalize else 1.0
    np.testing.assert_array_equal(indices, order[:, :k])
    err = np.abs(np.asarray(distances, np.float64) * scale - d_ref[rows_q, order[:, :k]])
    assert np.all(err <= bound[rows_q, order[:, :k]] + 2 * U32 * d_ref[rows_q, order[:, :k]])


@pytest.mark.parametrize('n,k,chunk_size', [(37, 2, 8), (37, 5, 4), (37, 3, 2048), (40, 10, 8),
                                            (2, 2, 5)])
def test_matches_brute_force(n, k, chunk_size):
    rng = np.random.default_rng(0)
    y = rng.uniform(-1, 1, (n, 4, 4, 3)).astype(np.float32)
    q = np.concatenate([y[:3], rng.uniform(-1, 1, (5, 4, 4, 3)).astype(np.float32)])
    check_knn(q, y, k, chunk_size=chunk_size)


def test_normalized_distances():
    rng = np.random.default_rng(1)
    y = rng.uniform(-1, 1, (30, 7)).astype(np.float32)
    q = rng.uniform(-1, 1, (6, 7)).astype(np.float32)
    check_knn(q, y, 3, chunk_size=8, normalize=True)


def test_ties_go_to_the_smaller_index():
    """Copies of the same points placed in different chunks and at different positions: the
    copies are exactly equidistant from any query and must come out by increasing index."""
    rng = np.random.default_rng(2)
    base = rng.uniform(-1, 1, (6, 5)).astype(np.float32)
    y = np.concatenate([base, base[::-1], base[[0, 0, 3]], base[:2]])   # 17 rows
    queries = np.concatenate([base[[0, 3]], rng.uniform(-1, 1, (4, 5)).astype(np.float32)])
    for chunk_size in (3, 4, 8, 64):
        d_ref, order = brute_force(queries, y)
        distances, indices = knn(queries, y, 6, chunk_size=chunk_size)
        np.testing.assert_array_equal(indices, order[:, :6])
        # equal points give bit-identical distances
        for q, (dist, idx) in enumerate(zip(np.asarray(distances), np.asarray(indices))):
            same = d_ref[q, idx][:, None] == d_ref[q, idx][None, :]
            assert np.all((dist[:, None] == dist[None, :])[same])


def test_prepared_rows_are_reused():
    rng = np.random.default_rng(3)
    y = rng.uniform(-1, 1, (25, 6)).astype(np.float32)
    rows = chunked.prepare_rows(y, 8)
    q = rng.uniform(-1, 1, (4, 6)).astype(np.float32)
    np.testing.assert_array_equal(knn(q, rows, 3)[1], knn(q, y, 3, chunk_size=8)[1])


def test_k_out_of_range_is_a_clear_error():
    y = np.zeros((4, 3), np.float32)
    for k in (0, 5):
        with pytest.raises(ValueError, match='k must be in 1..4'):
            knn(y, y, k)
