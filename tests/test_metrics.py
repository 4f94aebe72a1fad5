"""The memorisation, novelty and gap metrics (diffgen.metrics) on hand-computed cases."""
import numpy as np
import pytest

from diffgen.analysis import metrics

# Training set in D = 4 (distances are divided by sqrt(4) = 2).
TRAIN = np.array([[0., 0, 0, 0], [2, 0, 0, 0], [0, 4, 0, 0]], np.float32)


def test_nearest_two_ratio_and_copies_by_hand():
    samples = np.array([[0.2, 0, 0, 0],    # d1 = 0.2/2, d2 = 1.8/2: d1/d2 = 1/9, memorised
                        [1.0, 0, 0, 0],    # d1 = d2 = 1/2: d1/d2 = 1, not memorised
                        [2.0, 0, 0, 0]],   # an exact copy of y_1: d1 = 0, d2 = 1
                       np.float32)
    d1, d2, nearest = metrics.nearest_two(samples, TRAIN)
    np.testing.assert_allclose(d1, [0.1, 0.5, 0.0], atol=1e-6)
    np.testing.assert_allclose(d2, [0.9, 0.5, 1.0], atol=1e-6)
    np.testing.assert_array_equal(nearest, [0, 0, 1])
    np.testing.assert_array_equal(metrics.memorised(d1, d2), [True, False, True])
    assert metrics.memorisation_ratio(d1, d2) == pytest.approx(2 / 3)
    assert metrics.exact_copy_rate(d1) == pytest.approx(1 / 3)
    np.testing.assert_allclose(metrics.nearest_distance(samples, TRAIN), d1, atol=1e-6)


def test_ratio_threshold_is_strict_and_duplicates_count():
    d1, d2 = np.array([1.0, 0.999, 0.0]), np.array([3.0, 3.0, 0.0])
    np.testing.assert_array_equal(metrics.memorised(d1, d2), [False, True, True])


def test_novelty_by_hand():
    out = metrics.novelty([0.0, 1.0, 2.0, 3.0], [1.0, 1.0, 1.0, 4.0])
    assert out['d1_train'] == pytest.approx(1.5)
    assert out['d1_heldout'] == pytest.approx(1.75)
    assert out['ratio'] == pytest.approx(6 / 7)
    assert out['closer_to_train'] == pytest.approx((1 + 0.5 + 0 + 1) / 4)   # a tie counts 1/2


def test_novelty_is_one_half_for_samples_independent_of_the_training_set():
    """Samples and two reference sets drawn i.i.d. from one law: exchangeable distances, so
    closer_to_train = 1/2 up to sampling error (std 1/(2 sqrt(n)) for n samples)."""
    rng = np.random.default_rng(0)
    n, D = 4096, 8
    train, heldout, samples = (rng.normal(size=(n, D)).astype(np.float32) for _ in range(3))
    out = metrics.novelty(metrics.nearest_distance(samples, train),
                          metrics.nearest_distance(samples, heldout))
    assert abs(out['closer_to_train'] - 0.5) < 4 * 0.5 / np.sqrt(n)
    assert abs(out['ratio'] - 1.0) < 0.02


def test_squared_errors_and_gap_by_hand():
    eps_opt = np.array([[3.0, 4.0], [0.0, 1.0]])     # ‖ε*‖² = 25, 1
    eps_model = np.array([[3.0, 0.0], [0.0, 0.0]])   # ‖ε_θ − ε*‖² = 16, 1
    sq_diff, sq_opt = metrics.squared_errors(eps_model, eps_opt)
    np.testing.assert_allclose(sq_diff, [16.0, 1.0])
    np.testing.assert_allclose(sq_opt, [25.0, 1.0])
    assert metrics.gap(sq_diff, sq_opt) == pytest.approx(17 / 26)   # a ratio of means
    per_t = metrics.gap(np.stack([sq_diff, 2 * sq_diff]), np.stack([sq_opt, sq_opt]))
    np.testing.assert_allclose(per_t, [17 / 26, 34 / 26])
