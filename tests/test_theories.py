"""E8's comparison of samples (diffgen/analysis/theories.py) against independent computations:
r² per sample by explicit sums, the bootstrap interval of a median against the binomial
order-statistic interval, and the paired difference's interval covering a known shift."""
import numpy as np
import pytest
from scipy import stats

from diffgen.analysis import theories
from diffgen.errors import ConfigError


def test_r_squared_per_sample_by_explicit_sums():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 4, 4, 1))
    y = x + 0.3 * rng.normal(size=x.shape)
    got = theories.r_squared(x, y)
    for i in range(5):
        a, b = x[i].ravel(), y[i].ravel()
        want = 1 - sum((b - a) ** 2) / sum((a - a.mean()) ** 2)
        assert got[i] == pytest.approx(want, rel=1e-12)
    assert np.all(theories.r_squared(x, x) == 1.0)
    flat = np.broadcast_to(x.mean(axis=(1, 2, 3), keepdims=True), x.shape)
    np.testing.assert_allclose(theories.r_squared(x, flat), 0.0, atol=1e-12)


def test_median_interval_matches_the_order_statistic_interval():
    """For n i.i.d. values the median's distribution-free 95 % interval is [x_(j), x_(k)]
    with j, k from Binomial(n, 1/2); the bootstrap percentile interval of the median lands
    within a few order statistics of it (n = 401)."""
    rng = np.random.default_rng(1)
    v = rng.normal(size=401)
    s = theories.median_interval(v, num_resamples=4000)
    order = np.sort(v)
    j, k = stats.binom.ppf([0.025, 0.975], len(v), 0.5).astype(int)
    assert s['median'] == np.median(v) and s['n'] == 401
    assert order[j - 4] <= s['low'] <= order[j + 4]
    assert order[k - 4] <= s['high'] <= order[k + 4]
    assert s['q1'] == pytest.approx(np.quantile(v, 0.25))
    with_nan = theories.median_interval(np.array([np.nan, 1.0, 2.0, 3.0]))
    assert with_nan['n'] == 3 and with_nan['median'] == 2.0


def test_paired_median_difference_covers_a_known_shift():
    rng = np.random.default_rng(2)
    base = rng.normal(size=300)
    shifted = base + 0.25 + 0.05 * rng.normal(size=300)
    d = theories.paired_median_difference(shifted, base)
    assert d['low'] < 0.25 < d['high'] and d['low'] > 0


def test_unknown_reference_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown reference 'linear'"):
        theories.check_names(('optimum', 'linear'), 'analysis.e8.references')
