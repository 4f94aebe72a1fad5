"""The gap objective (docs/math.md §6; our formulation): its coefficients, its reduction to L_eps
at s = 0, and its population minimiser, which must be E[ε | x_t] (Tweedie) for both
weightings.

Tolerances. Monte-Carlo: a weighted regression slope β̂ = Σ w y u / Σ w u² has the
(heteroskedasticity-robust) standard error SE = √(Σ w² e² u²) / Σ w u², e = y − β u; we
allow 5 SE. Round-off: 1 − r = −expm1(L_t − L_s) with L = cumsum(log(1 − β)) in float32; any
summation order errs by |ΔL_t| ≤ t u Σ_{q≤t} |log(1 − β_q)| = t u |L_t| (u = 2⁻²⁴, Higham
Thm 4.1 with γ_t ≤ t u·(1 + O(tu))), and d log(1 − r)/d(L_t − L_s) = r/(1 − r).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffgen.diffusion import objectives
from diffgen.validation import validate
from diffgen.errors import ConfigError
from diffgen.diffusion.schedules import make_schedule
from tests.tiny import tiny_digits_config

U32 = 2.0 ** -24


@pytest.fixture(scope='module')
def schedule():
    return make_schedule('linear', 1000)


def log_alphas_bar64(schedule):
    return np.cumsum(np.log1p(-np.asarray(schedule.betas, np.float64)))


def cumsum_error(schedule, t):
    """|ΔL_t| ≤ (t + 1) u |L_t| (the summation bound above, one more u for log1p)."""
    return (np.asarray(t) + 1) * U32 * np.abs(log_alphas_bar64(schedule)[t])


@pytest.mark.parametrize('gap', [1, 10, 100, 1000])
def test_coefficients_match_float64(schedule, gap):
    t = np.arange(1, 1001)
    s = np.maximum(t - gap, 0)
    L = log_alphas_bar64(schedule)
    r = np.exp(L[t] - L[s])
    sqrt_r, sqrt_one_minus_r, c = map(np.asarray, objectives.gap_coefficients(
        schedule, jnp.asarray(t), jnp.asarray(s)))
    dL = cumsum_error(schedule, t) + cumsum_error(schedule, s) + U32 * np.abs(L[t] - L[s])
    rel_one_minus_r = dL * r / (1 - r) + 4 * U32
    rel_sigma2 = cumsum_error(schedule, t) * np.exp(L[t]) / (1 - np.exp(L[t])) + 4 * U32
    np.testing.assert_array_less(np.abs(sqrt_r / np.sqrt(r) - 1), dL / 2 + 4 * U32)
    np.testing.assert_array_less(np.abs(sqrt_one_minus_r ** 2 / (1 - r) - 1),
                                 rel_one_minus_r + 4 * U32)
    c64 = np.sqrt((1 - r) / (1 - np.exp(L[t])))
    np.testing.assert_array_less(np.abs(c / c64 - 1),
                                 (rel_one_minus_r + rel_sigma2) / 2 + 6 * U32)


def test_s_zero_is_the_forward_process(schedule):
    """s = 0 (p_zero = 1): c = 1 and target = ξ exactly, weight 1 in both weightings, and
    x_t = a_t x0 + σ_t ξ up to the coefficients' round-off."""
    rng = jax.random.key(0)
    t = jnp.arange(1, 1001)
    s = objectives.gap_timesteps(rng, t, max_k=100, p_zero=1.0)
    assert np.all(np.asarray(s) == 0)
    x0 = jax.random.uniform(jax.random.fold_in(rng, 1), (1000, 3), minval=-1, maxval=1)
    eps_s, xi = jax.random.normal(jax.random.fold_in(rng, 2), (2, 1000, 3))
    pair = jax.jit(objectives.gap_pair, static_argnames='weighting')
    for weighting in objectives.GAP_WEIGHTINGS:
        x_t, target, weight = pair(x0, t, s, eps_s=eps_s, xi=xi, schedule=schedule,
                                   weighting=weighting)
        np.testing.assert_array_equal(np.asarray(target), np.asarray(xi))
        np.testing.assert_array_equal(np.asarray(weight), 1.0)
    ab = np.exp(log_alphas_bar64(schedule))[:, None][np.asarray(t)]
    dL = cumsum_error(schedule, np.asarray(t))[:, None]
    a, sigma = np.sqrt(ab), np.sqrt(1 - ab)
    da = (dL / 2 + 4 * U32) * a                        # engine vs float64, and schedule.a
    dsigma = (dL / 2 * ab / (1 - ab) + 4 * U32) * sigma
    expected = a * np.asarray(x0, np.float64) + sigma * np.asarray(xi, np.float64)
    bound = 2 * (da * np.abs(x0) + dsigma * np.abs(xi)) + 4 * U32 * np.abs(expected)
    np.testing.assert_array_less(np.abs(np.asarray(x_t) - expected), bound)


def weighted_slope(target, u, weight):
    """(β̂, SE, intercept z-score) of the weighted regression of target on u."""
    den = np.sum(weight * u * u)
    slope = np.sum(weight * target * u) / den
    e = target - slope * u
    se = np.sqrt(np.sum(weight ** 2 * e ** 2 * u ** 2)) / den
    intercept_z = np.sum(weight * e) / np.sqrt(np.sum(weight ** 2 * e ** 2))
    return slope, se, intercept_z


CASES = [  # (t, s or None for the gap distribution, K, p_zero)
    (1, 0, 1, 0.0), (2, 1, 1, 0.0), (50, 49, 1, 0.0), (500, 499, 1, 0.0), (500, 400, 1, 0.0),
    (1000, 900, 1, 0.0), (300, 0, 1, 0.0), (700, None, 100, 0.2), (60, None, 100, 0.0),
]
POWERFUL = [(50, 49), (500, 499), (500, 400), (1000, 900)]  # k_t (1 − c) > 10 SE at n = 2e5


@pytest.mark.parametrize('weighting', objectives.GAP_WEIGHTINGS)
@pytest.mark.parametrize('t, s, max_k, p_zero', CASES)
def test_population_minimiser_is_gaussian_posterior_mean(schedule, t, s, max_k, p_zero,
                                                         weighting):
    """Gaussian data y ~ N(μ, ς²): E[ε | x_t] = k_t (x_t − a_t μ), k_t = σ_t/(a_t² ς² + σ_t²)
    (tests/gaussian.py). (x_t, target) are jointly Gaussian given s, so E[target | x_t] is
    linear in u = x_t − a_t μ and the minimiser E[w target | x_t]/E[w | x_t] of the loss is
    the weighted regression slope times u: it must be k_t, with a zero intercept."""
    mu, spread, n = 0.3, 0.5, 200_000
    rng = jax.random.key(t)
    keys = jax.random.split(rng, 4)
    x0 = mu + spread * jax.random.normal(keys[0], (n, 1))
    tt = jnp.full((n,), t)
    ss = (objectives.gap_timesteps(keys[1], tt, max_k=max_k, p_zero=p_zero) if s is None
          else jnp.full((n,), s))
    eps_s, xi = jax.random.normal(keys[2], (n, 1)), jax.random.normal(keys[3], (n, 1))
    x_t, target, weight = jax.jit(objectives.gap_pair, static_argnames='weighting')(
        x0, tt, ss, eps_s=eps_s, xi=xi, schedule=schedule, weighting=weighting)
    ab = np.exp(log_alphas_bar64(schedule))[t]
    a, sigma = np.sqrt(ab), np.sqrt(1 - ab)
    k = sigma / (a ** 2 * spread ** 2 + sigma ** 2)
    u = np.asarray(x_t, np.float64)[:, 0] - a * mu
    w = np.asarray(weight, np.float64)
    slope, se, intercept_z = weighted_slope(np.asarray(target, np.float64)[:, 0], u, w)
    assert abs(slope - k) < 5 * se, (slope, k, se)
    assert abs(intercept_z) < 5
    if (t, s) in POWERFUL:  # power: the target ξ without 1/c would have slope k c
        c = float(objectives.gap_coefficients(schedule, t, s)[2])
        assert abs(k * c - k) > 10 * se


def test_get_objective_binds_the_gap_options():
    config = tiny_digits_config('/unused', **{'training.objective': 'gap',
                                              'training.gap_max_k': 7,
                                              'training.gap_weighting': 'xi'})
    loss = objectives.get_objective(config.training)
    assert loss.func is objectives.gap_loss
    assert loss.keywords == dict(max_k=7, p_zero=0.0, weighting='xi')
    config.training.objective = 'eps'
    assert objectives.get_objective(config.training) is objectives.OBJECTIVES['eps']


@pytest.mark.parametrize('key, value, message', [
    ('training.gap_max_k', 0, 'gap_max_k must be >= 1'),
    ('training.gap_p_zero', 1.5, r'gap_p_zero must be in \[0, 1\]'),
    ('training.gap_weighting', 'c2', "gap_weighting='c2' is not one of"),
])
def test_validation_rejects_bad_gap_settings(key, value, message):
    with pytest.raises(ConfigError, match=message):
        validate(tiny_digits_config('/unused', **{key: value}))


def test_gap_loss_values(schedule):
    """The loss is mean(weight (ε_θ − ξ/c)²) of gap_pair's draws: with a network that
    returns zeros it is mean(ξ²/c²) ('eps') or mean(ξ²) ('xi') of the same draws (float32
    sums of 1024 terms: relative error below 1024 u)."""
    zeros = lambda params, x, t, train, rngs: jnp.zeros_like(x)

    @jax.jit
    def losses_and_references(x0, rng):
        t_rng, s_rng, _, xi_rng, _ = jax.random.split(rng, 5)
        t = objectives.sample_timesteps(t_rng, x0.shape[0], 1000)
        s = objectives.gap_timesteps(s_rng, t, max_k=50, p_zero=0.1)
        xi = jax.random.normal(xi_rng, x0.shape)
        c = objectives.gap_coefficients(schedule, t, s)[2][:, None, None, None]
        loss = lambda w: objectives.gap_loss(zeros, None, x0, rng=rng, schedule=schedule,
                                             max_k=50, p_zero=0.1, weighting=w)
        return loss('eps'), loss('xi'), jnp.mean(xi ** 2 / c ** 2), jnp.mean(xi ** 2)

    x0 = jax.random.uniform(jax.random.key(1), (64, 4, 4, 1), minval=-1, maxval=1)
    loss_eps, loss_xi, ref_eps, ref_xi = losses_and_references(x0, jax.random.key(2))
    np.testing.assert_allclose(float(loss_eps), float(ref_eps), rtol=1024 * U32)
    np.testing.assert_allclose(float(loss_xi), float(ref_xi), rtol=1024 * U32)
