"""diffgen.analysis.transition: the pooled bootstrap over models and samples against its
variance formula, the logistic fit against scipy.optimize, the crossing and its interval on
simulated sweeps (a known N*, its coverage), separated and degenerate counts, and the
summary, transition.json and figures from eval.csv files with both criteria and seeds."""
import json
import os

import numpy as np
import pytest
from scipy import optimize, special

from diffgen.analysis import transition
from diffgen.training.csv_log import CsvLog

SIZES = np.array([16, 32, 64, 128, 256, 512, 1541])
ALPHA, BETA, TAU = 8.0, -1.6, 0.9                     # p(N) = expit(8 − 1.6 log N)
TRUE_LOG_STAR = (special.logit(TAU) - ALPHA) / BETA   # N* ≈ 37.6, inside the range


def simulate(rng, seeds=3, n=100, alpha=ALPHA, beta=BETA, batch=()):
    """(N per point, k ~ Binomial(n, expit(α + β log N))) for `seeds` models per size."""
    num_train = np.repeat(SIZES, seeds)
    return num_train, rng.binomial(n, special.expit(alpha + beta * np.log(num_train)),
                                   batch + num_train.shape)


def delta_method_se(num_train, n, alpha=ALPHA, beta=BETA):
    """Asymptotic standard error of log N* = (logit τ − α)/β at the true (α, β): gᵀ I⁻¹ g,
    I = Σ n p (1 − p) (1, x)(1, x)ᵀ, g = (−1/β, −(logit τ − α)/β²)."""
    x = np.log(num_train)
    p = special.expit(alpha + beta * x)
    design = np.stack([np.ones_like(x), x], 1)
    info = (design.T * (n * p * (1 - p))) @ design
    g = np.array([-1 / beta, -(special.logit(TAU) - alpha) / beta ** 2])
    return float(np.sqrt(g @ np.linalg.solve(info, g)))


def test_counts_are_the_rates_times_n_and_a_wrong_n_is_refused():
    assert transition.counts([0.0, 0.37, 1.0], 100).tolist() == [0, 37, 100]
    with pytest.raises(ValueError, match='not multiples of 1/n'):
        transition.counts([0.37], 64)


def test_percentile_interval_is_the_inverted_cdf_order_statistic():
    values = np.random.default_rng(0).normal(size=999)
    for level in (0.95, 0.9):
        q = [(1 - level) / 2, (1 + level) / 2]
        np.testing.assert_array_equal(transition.percentile_interval(values, level),
                                      np.quantile(values, q, method='inverted_cdf'))
    # B = 2000: the 50th and 1950th order statistics; infinities kept as they are
    ranked = np.concatenate([[-np.inf] * 50, np.arange(1899.0), [np.inf] * 51])
    assert transition.percentile_interval(ranked) == (-np.inf, np.inf)
    ranked = np.concatenate([[-np.inf] * 49, np.arange(1902.0), [np.inf] * 49])
    assert transition.percentile_interval(ranked) == (0.0, 1900.0)


def test_bootstrap_variance_is_the_models_spread_plus_the_samples():
    """Var(p̄*) = [(1/R) Σ (p_s − p̄)² + (1/R) Σ p_s(1 − p_s)/n] / R over models and samples;
    the second term alone over samples. Tolerance: 4 standard errors of a variance
    estimated from B draws, √(2/(B − 1)) relative (near-normal replicates)."""
    k, n, b = np.array([20, 50, 80]), 100, 20000
    p = k / n
    samples_var = np.mean(p * (1 - p) / n) / len(k)
    models_var = np.mean((p - p.mean()) ** 2) / len(k) + samples_var
    tolerance = 4 * np.sqrt(2 / (b - 1))
    for over_models, expected in ((True, models_var), (False, samples_var)):
        replicates = transition.bootstrap_means(k, n, b, rng=1, over_models=over_models)
        assert replicates.mean() == pytest.approx(p.mean(), abs=4 * np.sqrt(expected / b))
        assert replicates.var(ddof=1) == pytest.approx(expected, rel=tolerance)


def test_pooled_interval_over_models_is_wider_when_seeds_disagree():
    disagree = transition.pooled_rate([20, 50, 80], 100)
    samples_only = transition.percentile_interval(
        transition.bootstrap_means([20, 50, 80], 100, over_models=False))
    assert disagree['rate'] == pytest.approx(0.5)
    assert disagree['interval_over'] == 'models and samples'
    assert disagree['high'] - disagree['low'] > 2 * (samples_only[1] - samples_only[0])
    # one seed: the samples-only bootstrap, and it says so
    one = transition.pooled_rate([50], 100, seed=3)
    assert one['interval_over'] == 'samples'
    assert (one['low'], one['high']) == transition.percentile_interval(
        transition.bootstrap_means([50], 100, rng=3, over_models=False))


def test_fit_logistic_is_scipys_maximum_likelihood():
    """The batched Newton fit against scipy.optimize.minimize of −ℓ(α, β) =
    −Σ [k η − n log(1 + e^η)], η = α + β log N, in float64 (raw, uncentred log N), and a
    batch of data sets fitted at once equals each fitted alone."""
    rng = np.random.default_rng(0)
    num_train, k = simulate(rng, batch=(3,))
    x = np.log(num_train)
    alpha, beta, ok = transition.fit_logistic(x, k, 100)
    assert ok.all()
    for i in range(3):
        loss = lambda t: -np.sum(k[i] * (t[0] + t[1] * x) - 100 * np.logaddexp(0, t[0] + t[1] * x))
        reference = optimize.minimize(loss, [0.0, 0.0], method='BFGS', options={'gtol': 1e-9})
        np.testing.assert_allclose([alpha[i], beta[i]], reference.x, rtol=1e-5)
        alone = transition.fit_logistic(x, k[i], 100)
        np.testing.assert_allclose([alone[0], alone[1]], [alpha[i], beta[i]], rtol=1e-10)


def test_separated_counts_place_the_crossing_between_two_sizes():
    x = np.log(SIZES)
    gap = lambda k, n=100: tuple(np.exp(transition.separation(x, np.array(k), n, TAU)))
    np.testing.assert_allclose(gap([100, 100, 0, 0, 0, 0, 0]), (32, 64))        # complete
    np.testing.assert_allclose(gap([100, 100, 50, 0, 0, 0, 0]), (32, 64))       # 0.5 < τ at 64
    np.testing.assert_allclose(gap([100, 100, 95, 0, 0, 0, 0]), (64, 128))      # 0.95 ≥ τ
    np.testing.assert_allclose(gap([0, 0, 0, 0, 100, 100, 100]), (128, 256))    # rising
    np.testing.assert_allclose(gap([80, 0, 0, 0, 0, 0, 0]), (0, 0))             # < smallest N
    np.testing.assert_allclose(gap([100] * 6 + [95]), (np.inf, np.inf))         # > largest N
    assert np.isnan(gap([100, 90, 50, 0, 0, 0, 0])).all()                        # overlap: a fit
    assert np.isnan(gap([0] * 7)).all() and np.isnan(gap([100] * 7)).all()     # degenerate
    c = transition.crossing(SIZES, [100, 100, 0, 0, 0, 0, 0], 100)
    assert c['n_star'] is None and c['separated'] == [32, 64] and c['alpha'] is None
    assert (c['low'], c['high']) == (32, 64)   # every replicate is the same separated set
    assert c['text'] == 'N* between 32 and 64 (separated counts: no fit) [32, 64]'


def test_the_crossing_recovers_a_known_crossing():
    """On one simulated sweep (3 seeds per N, n = 100): N* within 4 asymptotic standard
    errors (delta method) of the truth, the interval covers it and is over models."""
    num_train, k = simulate(np.random.default_rng(7))
    c = transition.crossing(num_train, k, 100, TAU)
    assert c['position'] == {'n_star': 'inside', 'low': 'inside', 'high': 'inside'}
    assert abs(np.log(c['n_star']) - TRUE_LOG_STAR) < 4 * delta_method_se(num_train, 100)
    assert c['low'] <= np.exp(TRUE_LOG_STAR) <= c['high']
    assert c['interval_over'] == 'models and samples' and c['num_boot_failed'] == 0
    assert c['text'] == f'N* = {c["n_star"]:.0f} [{c["low"]:.0f}, {c["high"]:.0f}]'
    # with one seed per N the interval is over samples only
    one = transition.crossing(*simulate(np.random.default_rng(7), seeds=1), 100, TAU)
    assert one['interval_over'] == 'samples'


def test_the_crossing_interval_covers_the_truth_in_simulated_sweeps():
    """Over M simulated sweeps, the 95 % interval covers the true N* at least at rate
    0.95 − 3 √(0.95 · 0.05 / M) (the binomial error of the coverage estimate; one-sided: the
    two-stage bootstrap is conservative where the seeds agree, as here)."""
    rng, m = np.random.default_rng(11), 150
    covered = 0
    for i in range(m):
        num_train, k = simulate(rng)
        c = transition.crossing(num_train, k, 100, TAU, num_boot=300, seed=i)
        low = c['low'] if c['low'] is not None else (0 if c['position']['low'] == '< smallest N'
                                                     else np.inf)
        high = c['high'] if c['high'] is not None else (np.inf if c['position']['high'] ==
                                                        '> largest N' else 0)
        covered += low <= np.exp(TRUE_LOG_STAR) <= high
    assert covered / m >= 0.95 - 3 * np.sqrt(0.95 * 0.05 / m)


def test_degenerate_and_outside_crossings_are_flags_not_numbers():
    num_train = np.repeat(SIZES, 3)
    for k, flag, degenerate in ((np.zeros(21, int), '< smallest N', 'all 0'),
                                (np.full(21, 100), '> largest N', 'all 1')):
        c = transition.crossing(num_train, k, 100)
        assert c['degenerate'] == degenerate and c['alpha'] is None
        assert (c['n_star'], c['low'], c['high']) == (None, None, None)
        assert c['position'] == {'n_star': flag, 'low': flag, 'high': flag}
        assert flag in c['text'] and 'no fit' in c['text']
    # a fitted curve above τ at every swept N, or below it everywhere: flags, no number
    for alpha, flag in ((10.0, '> largest N'), (2.0, '< smallest N')):
        _, k = simulate(np.random.default_rng(3), alpha=alpha, beta=-1.0)
        c = transition.crossing(num_train, k, 100)
        assert c['degenerate'] is None and c['alpha'] is not None
        assert c['n_star'] is None and c['position']['n_star'] == flag
        assert f'N* {flag} (' in c['text']
    assert transition.crossing([64, 64], [10, 20], 100) is None   # one N: no fit


def write_eval(path, rows):
    log = CsvLog(str(path), resume_step=0)
    for step, row in rows:
        log.append(step, row)


def test_curves_of_evaluators_with_different_periods(tmp_path):
    """An evaluator that did not run at a step leaves its cell empty: its curve has only
    the steps where it ran."""
    write_eval(tmp_path / 'num_train_16' / 'eval.csv',
               [(step, {'ddim/memorisation_ratio': step / 2000, 'loss/gap': 0.1,
                        **({'ddpm/memorisation_ratio': step / 2000} if step % 1000 == 0
                           else {})}) for step in (500, 1000, 1500, 2000)])
    curves = transition.read_curves(str(tmp_path), [('num_train_16', 16, 0)])
    np.testing.assert_array_equal(curves['ddim']['ratio'][16][0][0], [500, 1000, 1500, 2000])
    np.testing.assert_array_equal(curves['ddpm']['ratio'][16][0][0], [1000, 2000])
    np.testing.assert_allclose(curves['ddpm']['ratio'][16][0][1], [0.5, 1.0])
    assert set(curves['ddim']) == {'ratio'}      # no near_copy_rate column: no distance


def test_summary_from_eval_csv_with_both_criteria_and_seeds(tmp_path):
    """Three seeds per N: ddim with both criteria, heun with the ratio alone; the final
    points per seed, their mean, the curves' mean/min/max over seeds, a non-finite final
    rate left out and listed; transition.json holds the returned numbers; the figures."""
    sizes, seeds, n = (16, 64, 256), (0, 1, 2), 40
    final = {16: (1.0, 0.95, 1.0), 64: (0.6, 0.9, 0.75), 256: (0.0, 0.05, 0.1)}
    runs = []
    for s in seeds:
        for size in sizes:
            name = f'num_train_{size}_seed_{s}'
            runs.append((name, size, s))
            rows = []
            for step in (1000, 2000):
                ratio = final[size][s] if step == 2000 else 0.5
                rows.append((step, {'ddim/memorisation_ratio': ratio,
                                    'ddim/near_copy_rate': ratio / 2,
                                    'heun/memorisation_ratio': (float('nan') if (size, s) ==
                                                                (64, 2) and step == 2000
                                                                else 1 - ratio)}))
            write_eval(tmp_path / name / 'eval.csv', rows)
    result = transition.summarise(str(tmp_path), runs, num_samples=n, num_boot=200)
    assert set(result['samplers']) == {'ddim', 'heun'}
    assert set(result['samplers']['ddim']) == {'ratio', 'distance'}
    assert set(result['samplers']['heun']) == {'ratio'}
    ddim = result['samplers']['ddim']['ratio']
    assert ddim['num_train'] == list(sizes) and ddim['num_seeds'] == [3, 3, 3]
    assert ddim['seeds'] == [list(seeds)] * 3 and ddim['final_step'] == [[2000] * 3] * 3
    assert ddim['seed_rates'] == [list(final[size]) for size in sizes]
    np.testing.assert_allclose(ddim['rate'], [np.mean(final[size]) for size in sizes])
    assert all(lo <= r <= hi for lo, r, hi in zip(ddim['low'], ddim['rate'], ddim['high']))
    assert ddim['interval_over'] == ['models and samples'] * 3
    np.testing.assert_allclose(result['samplers']['ddim']['distance']['rate'],
                               [np.mean(final[size]) / 2 for size in sizes])
    curve = ddim['curves'][1]
    assert curve['num_train'] == 64 and curve['steps'] == [1000, 2000]
    np.testing.assert_allclose([curve['mean'][1], curve['min'][1], curve['max'][1]],
                               [0.75, 0.6, 0.9])
    heun = result['samplers']['heun']['ratio']
    assert heun['nonfinite'] == [[64, 2]] and heun['num_seeds'] == [3, 2, 3]
    assert ddim['crossing']['text'] == transition.crossing_text(ddim['crossing'])
    assert result['points']['ddim']['ratio'] == ddim['rate']
    assert result['points']['ddim']['emm']['emm'] == transition.bound_text(ddim['crossing'],
                                                                             'n_star')
    with open(tmp_path / transition.JSON) as f:
        assert json.load(f) == json.loads(json.dumps(result))
    for name in (transition.RATIO_FIGURE, transition.CURVES_FIGURE):
        assert os.path.getsize(tmp_path / name) > 0
    def never():
        raise AssertionError('the calibration is computed only when there are curves')
    assert transition.summarise(str(tmp_path / 'empty'), runs, n, calibration=never) is None
    calls = []
    with_callable = transition.summarise(str(tmp_path), runs, n, num_boot=200,
                                         calibration=lambda: calls.append(1) or [])
    assert calls == [1] and with_callable['calibration'] == []
