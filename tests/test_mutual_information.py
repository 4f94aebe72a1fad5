"""k-NN entropy and mutual-information estimators against hand computations and closed forms,
and the vmapped ensemble against models trained on their own."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import toy2d
from diffgen.training import ensemble
from diffgen.analysis import mutual_information as mi
from diffgen.networks import get_network
from diffgen.diffusion.schedules import get_schedule
from diffgen.training.state import make_optimizer


def test_kl_entropy_hand_computed():
    # 1-D points 0, 1, 3, k = 1: radii 1, 1, 2; ψ(3) − ψ(1) = 1 + 1/2, V_1 = 2.
    expected = 1.5 + np.log(2.0) + np.log(2.0) / 3
    assert mi.kl_entropy(np.array([[0.0], [1.0], [3.0]]), k=1) == pytest.approx(expected, 1e-12)


def test_log_unit_ball_volume():
    assert np.exp(mi.log_unit_ball_volume(1)) == pytest.approx(2.0)
    assert np.exp(mi.log_unit_ball_volume(2)) == pytest.approx(np.pi)
    assert np.exp(mi.log_unit_ball_volume(3)) == pytest.approx(4 * np.pi / 3)


@pytest.mark.parametrize('dim', [1, 2, 3])
def test_kl_entropy_of_gaussian(dim):
    """Ĥ of 4000 Gaussian points within 4 standard errors of ½ log((2πe)^d det Σ)."""
    rng = np.random.default_rng(dim)
    a = rng.standard_normal((dim, dim))
    cov = a @ a.T + 0.5 * np.eye(dim)
    x = rng.multivariate_normal(np.zeros(dim), cov, size=4000)
    terms = mi.entropy_terms(x, k=3)
    se = terms.std() / np.sqrt(len(terms))
    assert abs(terms.mean() - mi.gaussian_entropy(cov)) < 4 * se


def test_gaussian_closed_forms():
    assert mi.gaussian_entropy(np.eye(2)) == pytest.approx(np.log(2 * np.pi * np.e))
    # d = 2, N = 4, τ = 1, s = 1/2: (2/2) log(1 + 1/(4 · 1/4)) = log 2.
    assert mi.gaussian_mean_mi(2, 4, 1.0, 0.5) == pytest.approx(np.log(2.0))


def test_mutual_information_hand_computed():
    # Two sets of two 1-D points, k = 1. Separated sets: own radii = pooled radii, so
    # Î = ψ(4) − ψ(2) = 1/2 + 1/3.
    apart = np.array([[[0.0], [1.0]], [[10.0], [12.0]]])
    c, u = mi.mutual_information_terms(apart, k=1)
    assert c == pytest.approx(5 / 6) and np.allclose(u, 0.0)
    # Interleaved sets {0, 2} and {1, 3}: own radii 2, pooled radii 1, ū_k = log(1/2).
    interleaved = np.array([[[0.0], [2.0]], [[1.0], [3.0]]])
    assert mi.mutual_information_value(interleaved, k=1) == pytest.approx(5 / 6 - np.log(2.0))


def test_jackknife_hand_computed():
    """Three separated sets of two points: Î = ψ(6) − ψ(2), every leave-one-out Î_(−k) =
    ψ(4) − ψ(2), so se = 0 and Ĩ = 3 Î − 2 Î_(−k)."""
    apart = np.array([[[0.0], [1.0]], [[10.0], [12.0]], [[20.0], [23.0]]])
    est = mi.mutual_information(apart, k=1)
    full, loo = 1 / 2 + 1 / 3 + 1 / 4 + 1 / 5, 1 / 2 + 1 / 3
    assert est.value == pytest.approx(full) and est.se == pytest.approx(0.0, abs=1e-12)
    assert est.corrected == pytest.approx(3 * full - 2 * loo)
    assert est.low == pytest.approx(est.value) and est.corrected_high == pytest.approx(
        est.corrected)


def test_jackknife_interval_formula():
    """se² = ((K−1)/K) Σ (Î_(−k) − Ī)², intervals ± t_{K−1, 0.975} se around Î and Ĩ."""
    z = np.random.default_rng(3).standard_normal((5, 40, 2))
    z[0] += 1.0  # one set apart, so that the leave-one-out estimates differ
    est = mi.mutual_information(z, k=3)
    loo = np.array([mi.mutual_information_value(np.delete(z, j, axis=0), 3) for j in range(5)])
    se = np.sqrt(4 / 5 * np.sum((loo - loo.mean()) ** 2))
    t = 2.7764451051977987  # Student t, 4 degrees of freedom, 97.5%
    assert est.se == pytest.approx(se) and se > 0
    assert est.corrected == pytest.approx(5 * est.value - 4 * loo.mean())
    assert (est.low, est.high) == pytest.approx((est.value - t * se, est.value + t * se))
    assert (est.corrected_low, est.corrected_high) == pytest.approx(
        (est.corrected - t * se, est.corrected + t * se))


def test_seed_marginalisation_chain_rule():
    """Î with all K·R models as sets = Î(z; S) (seeds pooled per set) + Î(z; ω | S) (the
    estimator over the R seeds of each set, averaged), exactly; the seed-only interval is
    x̄ ± t s/√K of the per-set values."""
    rng = np.random.default_rng(4)
    z = rng.standard_normal((6, 2, 50, 2)) + rng.standard_normal((6, 1, 1, 2))
    joint = mi.mutual_information_value(z.reshape(12, 50, 2), 3)
    marginal = mi.mutual_information_value(z.reshape(6, 100, 2), 3)
    seed = mi.seed_dependence(z, 3)
    assert joint == pytest.approx(marginal + seed.value, abs=1e-10)
    per_set = np.array([mi.mutual_information_value(zk, 3) for zk in z])
    half = 2.5705818366147395 * per_set.std(ddof=1) / np.sqrt(6)  # t, 5 dof, 97.5%
    assert seed.value == pytest.approx(per_set.mean())
    assert (seed.low, seed.high) == pytest.approx((seed.value - half, seed.value + half))


def test_mutual_information_recovers_closed_form():
    """z | S ~ N(mean S, I/N), N = 32, K = 32 sets, M = 128: I = log 2. Over 3 independent
    replications the corrected intervals cover log 2 at least twice, and the corrected
    estimates are within 0.3 of it (the coverage at E7's K: test_e5_e7, slow)."""
    truth = mi.gaussian_mean_mi(2, 32, 1.0, 1 / np.sqrt(32))
    estimates = []
    for seed in range(3):
        rng = np.random.default_rng(seed)
        z = mi.sample_gaussian_mean_case(rng, 32, 32, 128, 2, 1.0, 1 / np.sqrt(32))
        estimates.append(mi.mutual_information(z, k=3))
    assert sum(e.corrected_low <= truth <= e.corrected_high for e in estimates) >= 2
    assert all(abs(e.corrected - truth) < 0.3 for e in estimates)


def test_mutual_information_of_independent_samples_is_zero():
    z = np.random.default_rng(1).standard_normal((32, 256, 2))
    est = mi.mutual_information(z, k=3)
    assert est.low <= 0.0 <= est.high
    assert abs(est.value) < 0.1


def test_gaussian_mean_js_limits():
    """JS_K of the closed-form case: 0 for one set, log K for well-separated components
    (s ≪ τ/√N), and below both log K and I otherwise."""
    rng = np.random.default_rng(5)
    assert mi.gaussian_mean_js(rng, 1, 32, 2, 1.0, 0.2, num_draws=5)[0] == pytest.approx(0.0)
    separated, _ = mi.gaussian_mean_js(rng, 4, 1, 2, 1.0, 1e-3, num_draws=5)
    assert separated == pytest.approx(np.log(4), abs=1e-3)
    truth = mi.gaussian_mean_mi(2, 32, 1.0, 1 / np.sqrt(32))
    js, se = mi.gaussian_mean_js(rng, 8, 32, 2, 1.0, 1 / np.sqrt(32), num_draws=50)
    assert js + 3 * se < min(truth, np.log(8))


def test_atoms_give_infinite_mutual_information():
    z = np.random.default_rng(2).standard_normal((4, 16, 2))
    z[1, 3] = z[1, 7]  # two samples of set 1 coincide: an atom
    est = mi.mutual_information(z, k=1)
    assert np.isinf(est.value) and np.isinf(est.low)


def _toy_setup():
    config = toy2d.get_config()
    config.model.mlp_hidden, config.model.mlp_depth = 16, 1
    config.training.batch_size = 8
    config.diffusion.num_timesteps = 50
    model = get_network(config.model)
    return config, model, make_optimizer(config.optim), get_schedule(config)


def test_ensemble_models_train_independently():
    """Model 0 of a K = 3 ensemble ends exactly where model 0 of a K = 1 ensemble on the
    same set does (vmap adds no coupling between the models), and ensemble_apply gives
    model k's output on rows k·M .. (k+1)·M − 1."""
    config, model, tx, schedule = _toy_setup()
    sets = jnp.asarray(np.random.default_rng(0).standard_normal((3, 10, 2)), jnp.float32)
    call = ensemble.make_ensemble_train_call(config, model, tx, schedule, 2)
    three, losses = call(ensemble.init_states(model, tx, 0, 3, (2,)), sets)
    one, _ = call(ensemble.init_states(model, tx, 0, 1, (2,)), sets[:1])
    assert losses.shape == (2, 3)
    for a, b in zip(jax.tree.leaves(three.params), jax.tree.leaves(one.params)):
        np.testing.assert_allclose(a[0], b[0], rtol=1e-5, atol=1e-6)
    leaves = jax.tree.leaves(three.params)
    assert any(not np.allclose(l[0], l[1]) for l in leaves)  # distinct inits and data

    x = jax.random.normal(jax.random.key(0), (3 * 4, 2))
    t = jnp.arange(1, 13)
    out = jax.jit(ensemble.ensemble_apply(model))(three.params, x, t)
    for k in range(3):
        rows = slice(4 * k, 4 * (k + 1))
        p_k = jax.tree.map(lambda p: p[k], three.params)
        np.testing.assert_allclose(out[rows], model.apply(p_k, x[rows], t[rows]),
                                   rtol=1e-5, atol=1e-6)
    assert np.abs(np.asarray(out)).max() > 0
