"""The distance criterion of memorisation (diffgen/analysis/copies.py) against independent
computations: a float64 NumPy brute force of δ, and the chi distribution of a noisy copy's
distance to its source."""
import numpy as np
import pytest
from scipy import stats

from diffgen.analysis import copies
from diffgen.errors import UserError


def _source(num, dim, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (num, dim)).astype(np.float32)


def test_threshold_is_the_quantile_of_nearest_neighbour_distances():
    images = _source(300, 12)
    images[7] = images[3]                        # a duplicated image: its distance is 0
    d = np.sqrt(((images[:, None].astype(np.float64) - images[None]) ** 2).mean(-1))
    np.fill_diagonal(d, np.inf)
    brute = d.min(axis=1)
    got = copies.nearest_other(images, num_queries=len(images))
    queries = np.random.default_rng(0).permutation(len(images))
    # float32 distances of O(1) values: round-off ~1e-6 relative
    np.testing.assert_allclose(got, brute[queries], rtol=1e-5, atol=1e-6)
    assert got[list(queries).index(7)] == 0.0
    for q in (0.05, 0.5):
        assert copies.threshold(images, q) == pytest.approx(np.quantile(brute, q), rel=1e-5)


def test_distance_criterion_flags_a_noisy_copy_at_the_same_rate_at_every_n():
    """A noisy copy y + σz (z ~ N(0, I_D)) lies ‖σz‖/√D = σ χ_D/√D from its source, whatever
    N is: the distance criterion flags it with probability ≥ P(χ_D < δ√D/σ), reached when
    no other training image is within δ. With σ chosen so that this is 1/2, the rate must
    match it at every N within the binomial error of n copies (5 standard errors), while
    the ratio criterion's rate falls as N grows (d₂ shrinks)."""
    dim = 16
    source = _source(4096, dim, seed=1)
    delta = copies.threshold(source, 0.05)
    sigma = delta * np.sqrt(dim) / stats.chi.median(dim)     # P(σ χ_D/√D < δ) = 1/2
    expected = stats.chi.cdf(delta * np.sqrt(dim) / sigma, dim)
    n = 2048
    tolerance = 5 * np.sqrt(expected * (1 - expected) / n)
    ratio_rates = []
    for num_train in (16, 128, 1024, 4096):
        train = source[:num_train]
        copies_of = train[np.arange(n) % num_train]
        noisy = copies_of + sigma * np.random.default_rng(num_train).standard_normal(
            copies_of.shape).astype(np.float32)
        d = np.sqrt(((noisy[:, None].astype(np.float64) - train[None]) ** 2).mean(-1))
        d.sort(axis=1)
        rates = copies.rates(d[:, 0], d[:, 1], delta)
        assert abs(rates['distance'] - expected) < tolerance, (num_train, rates, expected)
        ratio_rates.append(rates['ratio'])
    first = ratio_rates[0]
    assert first - ratio_rates[-1] > 5 * np.sqrt(first * (1 - first) / n), ratio_rates


def test_calibration_counts_heldout_and_noisy_copies():
    source = _source(600, 8, seed=2)
    train, heldout = source[:100], source[100:300]
    delta = copies.threshold(source, 0.05)
    cal = copies.calibration(train, heldout, delta, (0.0, 10.0))
    # noise 0: every copy is its source (d_1 = 0, flagged by both criteria); noise 10 (far
    # beyond the data's range): none is within δ of any training image
    assert cal['noisy_0'] == {'ratio': 1.0, 'distance': 1.0}
    assert cal['noisy_10']['distance'] == 0.0
    d = np.sqrt(((heldout[:, None].astype(np.float64) - train[None]) ** 2).mean(-1))
    d.sort(axis=1)
    assert cal['heldout']['distance'] == pytest.approx(np.mean(d[:, 0] < delta))
    assert cal['num_copies'] == 256 and cal['threshold'] == delta


def test_calibration_with_max_queries_uses_subsets_of_that_size():
    source = _source(600, 8, seed=4)
    train, heldout = source[:300], source[300:]
    delta = copies.threshold(source, 0.5)   # a held-out rate near 0.3: a subset's can differ
    cal = copies.calibration(train, heldout, delta, (0.0, 10.0), max_queries=50)
    assert cal['num_copies'] == 50 and cal['num_heldout'] == 50
    assert cal['noisy_0'] == {'ratio': 1.0, 'distance': 1.0}   # every copy is its source
    # the held-out rate is a fraction of 50 of them, and within 5 SE of the brute-force rate
    # over all 300 (a draw of 50 of 300 without replacement: the hypergeometric SE)
    d = np.sqrt(((heldout[:, None].astype(np.float64) - train[None]) ** 2).mean(-1))
    d.sort(axis=1)
    full = np.mean(d[:, 0] < delta)
    count = cal['heldout']['distance'] * 50
    assert abs(count - round(count)) < 1e-9
    assert 0.1 < full < 0.9
    se = np.sqrt(full * (1 - full) / 50 * (300 - 50) / (300 - 1))
    assert abs(cal['heldout']['distance'] - full) <= 5 * se
    # max_queries at least the sizes: the same as without it
    assert copies.calibration(train, heldout, delta, (0.1,), max_queries=1000) == \
        copies.calibration(train, heldout, delta, (0.1,))


def test_sweep_calibration_means_each_n_over_its_seeds(digits_data_dir):
    from diffgen.data import dataset
    from tests.tiny import tiny_digits_config
    configs = [(n, s, tiny_digits_config(digits_data_dir, **{'data.num_train': n, 'seed': s}))
               for n, s in ((64, 1), (16, 0), (64, 0))]
    for _, _, c in configs:
        c.analysis.copy_noise_levels = (0.1,)
    got = copies.sweep_calibration(configs, max_queries=64)
    assert [g['num_train'] for g in got] == [16, 64] and got[1]['seeds'] == [0, 1]
    delta = copies.source_threshold(configs[0][2])
    for entry in got:
        singles = [copies.calibration(dataset.load(c).train, dataset.load(c).heldout, delta,
                                      (0.1,), max_queries=64)
                   for n, _, c in configs if n == entry['num_train']]
        assert entry['threshold'] == delta and entry['num_heldout'] == 16
        for rule in ('ratio', 'distance'):
            assert entry['heldout'][rule] == pytest.approx(
                np.mean([s['heldout'][rule] for s in singles]))
            assert entry['noisy'][0][rule] == pytest.approx(
                np.mean([s['noisy_0.1'][rule] for s in singles]))
    assert copies.sweep_calibration([]) == []
    # runs of other noise levels cannot share one calibration: a one-line error, no work
    configs[0][2].analysis.copy_noise_levels = (0.2,)
    with pytest.raises(UserError, match='copy_noise_levels.*vs'):
        copies.sweep_calibration(configs)
