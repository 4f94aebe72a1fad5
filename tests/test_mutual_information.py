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
    ψ(4) − ψ(2) and every leave-two-out one 0 (one set), so se_F = se_Ĩ = 0 and
    Ĩ = 3 Î − 2 Î_(−k)."""
    apart = np.array([[[0.0], [1.0]], [[10.0], [12.0]], [[20.0], [23.0]]])
    est = mi.mutual_information(apart, k=1)
    full, loo = 1 / 2 + 1 / 3 + 1 / 4 + 1 / 5, 1 / 2 + 1 / 3
    assert est.value == pytest.approx(full) and est.se == pytest.approx(0.0, abs=1e-12)
    assert est.corrected == pytest.approx(3 * full - 2 * loo)
    assert est.corrected_se == pytest.approx(0.0, abs=1e-12)
    assert est.low == pytest.approx(est.value) and est.corrected_high == pytest.approx(
        est.corrected)


def _brute(z, k, drop):
    """Î of z (G, m, d) without the groups in drop, recomputed from scratch."""
    return mi.mutual_information_value(np.delete(z, list(drop), axis=0), k)


@pytest.mark.parametrize('extra', [None, 0, 2])
def test_leave_out_radii_against_recomputation(extra):
    """D̂_(−h) and D̂_(−h,−l) from one neighbour query equal the estimator recomputed on the
    remaining groups, also where the listed neighbours run out (extra = 0: brute force), on
    groups of different spread (one dense group inside the others) and with a duplicate."""
    rng = np.random.default_rng(7)
    z = 0.3 * rng.standard_normal((6, 30, 2)) + rng.standard_normal((6, 1, 2))
    z[2] *= 0.05
    z[4, 5] = z[1, 3]                     # a point of group 4 on one of group 1
    value, one, two = mi.divergence_jackknife(z, 3, pairs=True, extra=extra)
    assert value == pytest.approx(_brute(z, 3, ()), abs=1e-12)
    np.testing.assert_allclose(one, [_brute(z, 3, [h]) for h in range(6)], atol=1e-12)
    for h in range(6):
        for l in range(6):
            expected = np.nan if h == l else _brute(z, 3, [h, l])
            np.testing.assert_allclose(two[h, l], expected, atol=1e-12)


def _brute_corrected(z, k):
    """Ĩ(z; S) and se_Ĩ of samples z (K, R, M, d) straight from the module doc's formulas,
    every estimate recomputed on its subset of sets and seeds."""
    num_sets, num_seeds = z.shape[:2]
    pool = lambda sets: z[list(sets)].reshape(len(sets), -1, z.shape[-1])
    x = np.array([mi.mutual_information_value(zk, k) for zk in z])
    x_loo = np.array([[mi.mutual_information_value(np.delete(zk, r, 0), k) if num_seeds > 2
                       else 0.0 for r in range(num_seeds)] for zk in z])
    u = (num_seeds - 1) * (x - x_loo.mean(axis=1))          # x̃ − x
    sets = range(num_sets)
    g = lambda kept: mi.mutual_information_value(pool(kept), k) - u[list(kept)].mean()
    without = lambda *drop: [s for s in sets if s not in drop]
    g1 = np.array([g(without(j)) for j in sets])
    corrected = num_sets * g(list(sets)) - (num_sets - 1) * g1.mean()
    corrected_1 = np.array([(num_sets - 1) * g1[j] - (num_sets - 2) * np.mean(
        [g(without(j, l)) for l in sets if l != j]) for j in sets])
    se = np.sqrt((num_sets - 1) / num_sets * np.sum((corrected_1 - corrected_1.mean()) ** 2))
    return corrected, se


@pytest.mark.parametrize('num_seeds', [1, 2, 3])
def test_corrected_estimate_against_recomputation(num_seeds):
    """Ĩ(z; S) = K G − (K − 1) Ḡ with G = F − mean_k (x̃_k − x_k), and its se from the
    jackknife of Ĩ (leave-two-out), against every piece recomputed from scratch."""
    rng = np.random.default_rng(num_seeds)
    z = rng.standard_normal((5, num_seeds, 24, 2)) + rng.standard_normal((5, 1, 1, 2))
    z += 0.5 * rng.standard_normal((5, num_seeds, 1, 2))      # a seed dependence
    est = mi.mutual_information(z[:, 0] if num_seeds == 1 else z, k=3)
    corrected, se = _brute_corrected(z, 3)
    t = 2.7764451051977987  # Student t, 4 degrees of freedom, 97.5%
    assert est.corrected == pytest.approx(corrected, abs=1e-10)
    assert est.corrected_se == pytest.approx(se, abs=1e-10) and se > 0
    assert (est.corrected_low, est.corrected_high) == pytest.approx(
        (corrected - t * se, corrected + t * se))
    loo = np.array([_brute(z.reshape(5, -1, 2), 3, [j]) for j in range(5)])
    assert est.se == pytest.approx(np.sqrt(4 / 5 * np.sum((loo - loo.mean()) ** 2)))
    assert (est.low, est.high) == pytest.approx((est.value - t * est.se, est.value + t * est.se))


@pytest.mark.parametrize('num_seeds', [2, 3, 4, 8])
def test_seed_marginalisation_chain_rule(num_seeds):
    """Î with all K·R models as sets = Î(z; S) (seeds pooled per set) + Î(z; ω | S) (the
    estimator over the R seeds of each set, averaged), exactly; the seed-only intervals are
    x̄ ± t s/√K of the per-set values x_k and of their jackknife over the seeds
    x̃_k = R x_k − (R − 1) mean_r x_k^(−r) (R = 2: x_k^(−r) = 0, x̃_k = 2 x_k)."""
    rng = np.random.default_rng(4)
    z = rng.standard_normal((6, num_seeds, 40, 2)) + rng.standard_normal((6, 1, 1, 2))
    joint = mi.mutual_information_value(z.reshape(6 * num_seeds, 40, 2), 3)
    marginal = mi.mutual_information_value(z.reshape(6, num_seeds * 40, 2), 3)
    seed = mi.seed_dependence(z, 3)
    assert joint == pytest.approx(marginal + seed.value, abs=1e-10)
    assert mi.mutual_information(z, 3).value == pytest.approx(marginal, abs=1e-12)
    per_set = np.array([mi.mutual_information_value(zk, 3) for zk in z])
    loo = np.array([[mi.mutual_information_value(np.delete(zk, r, 0), 3) if num_seeds > 2
                     else 0.0 for r in range(num_seeds)] for zk in z])
    jack = num_seeds * per_set - (num_seeds - 1) * loo.mean(axis=1)
    t = 2.5705818366147395  # Student t, 5 degrees of freedom, 97.5%
    assert seed.value == pytest.approx(per_set.mean())
    assert (seed.low, seed.high) == pytest.approx(
        (seed.value - t * seed.se, seed.value + t * seed.se))
    assert seed.se == pytest.approx(per_set.std(ddof=1) / np.sqrt(6))
    assert seed.corrected == pytest.approx(jack.mean(), abs=1e-10)
    assert seed.corrected_se == pytest.approx(jack.std(ddof=1) / np.sqrt(6), abs=1e-10)
    if num_seeds == 2:
        assert seed.corrected == pytest.approx(2 * seed.value)


def test_seed_jackknife_removes_the_finite_seed_bias():
    """A weak seed dependence, z | S, ω ~ N(ȳ + b ω, s² I): the R-seed divergence is about
    I(z; ω | S) (1 − 1/R) (docs/math.md §9), the jackknife over the seeds about I(z; ω | S):
    over 8 replications (K = 16, R = 2, M = 256) the mean x̃ is within 0.04 of I = 0.288
    (8 × 16 sets: its standard error about 0.01), the mean x more than 0.1 below it."""
    case = mi.gaussian_case(2, 32, 1.0, np.sqrt(0.75 / 32), np.sqrt(0.25 / 32))
    assert case.mi == pytest.approx(np.log(2.0)) and case.seed_mi == pytest.approx(
        np.log(4 / 3))
    rng = np.random.default_rng(11)
    seeds = [mi.seed_dependence(mi.sample_case(rng, case, 16, 2, 256), 3) for _ in range(8)]
    plain, corrected = (np.mean([getattr(e, key) for e in seeds]) for key in (
        'value', 'corrected'))
    assert abs(corrected - case.seed_mi) < 0.04 and case.seed_mi - plain > 0.1


def test_mutual_information_recovers_closed_form():
    """z | S ~ N(mean S, I/N), N = 32, K = 32 sets, M = 128: I = log 2. Over 3 independent
    replications the corrected intervals cover log 2 at least twice, and the corrected
    estimates are within 0.3 of it (the coverage at E7's K: tests/test_e7_validation.py)."""
    case = mi.gaussian_case(2, 32, 1.0, 1 / np.sqrt(32))
    assert case.mi == pytest.approx(mi.gaussian_mean_mi(2, 32, 1.0, 1 / np.sqrt(32)))
    estimates = []
    for seed in range(3):
        rng = np.random.default_rng(seed)
        estimates.append(mi.mutual_information(mi.sample_case(rng, case, 32, 1, 128), k=3))
    assert sum(e.corrected_low <= case.mi <= e.corrected_high for e in estimates) >= 2
    assert all(abs(e.corrected - case.mi) < 0.3 for e in estimates)


def test_mutual_information_of_independent_samples_is_zero():
    z = np.random.default_rng(1).standard_normal((32, 256, 2))
    est = mi.mutual_information(z, k=3)
    assert est.low <= 0.0 <= est.high
    assert abs(est.value) < 0.1


def test_expected_js_limits():
    """JS_K of the validation cases: 0 for one set, log K for well-separated components
    (s ≪ τ/√N), and below both log K and I otherwise; with seeds it grows towards the
    K-set divergence of the seed-mixtures."""
    rng = np.random.default_rng(5)
    case = lambda s, n=32: mi.gaussian_case(2, n, 1.0, s)
    assert mi.expected_js(rng, case(0.2), 1, 1, num_draws=5)[0] == pytest.approx(0.0)
    separated, _ = mi.expected_js(rng, case(1e-3, 1), 4, 1, num_draws=5)
    assert separated == pytest.approx(np.log(4), abs=1e-3)
    truth = mi.gaussian_mean_mi(2, 32, 1.0, 1 / np.sqrt(32))
    js, se = mi.expected_js(rng, case(1 / np.sqrt(32)), 8, 1, num_draws=50)
    assert js + 3 * se < min(truth, np.log(8))
    atomic = mi.atomic_case(rng, 2, 32, 1.0, 0.2, num_sets=500)
    js, se = mi.expected_js(rng, atomic, 8, 2, num_draws=20)
    assert 0 < js + 3 * se and js - 3 * se < min(atomic.mi, np.log(8))


def test_atomic_mi_against_closed_form_and_quadrature():
    """atomic_mi (Monte Carlo) within 4 standard errors of: N = 1, a Gaussian channel
    z = y + h ξ, I = (d/2) log(1 + τ²/h²); and, d = 1, N = 3, the same sets' I computed as
    H(z) − mean_S H(q_S) with H(q_S) = −∫ q_S log q_S by quadrature on a fine grid."""
    rng = np.random.default_rng(9)
    value, se = mi.atomic_mi(rng, 2, 1, 1.0, 0.5, num_sets=2000, num_points=16)
    assert abs(value - np.log1p(1 / 0.25)) < 4 * se and se < 0.02
    value, se = mi.atomic_mi(np.random.default_rng(3), 1, 3, 1.0, 0.3, num_sets=2000,
                             num_points=16)
    sets = np.random.default_rng(3).standard_normal((2000, 3, 1))   # the same draws
    grid = np.linspace(-8, 8, 4001)
    q = np.mean(np.exp(-(grid[None, None, :] - sets) ** 2 / (2 * 0.09)), axis=1) / np.sqrt(
        2 * np.pi * 0.09)
    entropy = -np.sum(np.where(q > 0, q * np.log(np.where(q > 0, q, 1.0)), 0.0), axis=-1) * (
        grid[1] - grid[0])
    truth = 0.5 * np.log(2 * np.pi * np.e * 1.09) - entropy.mean()
    quad_se = entropy.std(ddof=1) / np.sqrt(len(entropy))
    assert abs(value - truth) < 4 * np.hypot(se, quad_se)


def test_sample_case_draws_each_model_from_its_centres():
    """sample_case: (K, R, M, d); the Gaussian case's seeds of one set differ by b ω, the
    atomic case's seeds share the set's atoms (I(z; ω | S) = 0)."""
    rng = np.random.default_rng(2)
    gauss = mi.gaussian_case(2, 32, 1.0, 1e-4, 1.0)
    z = mi.sample_case(rng, gauss, 3, 4, 50)
    assert z.shape == (3, 4, 50, 2)
    assert np.all(z.std(axis=2) < 1e-3) and np.all(np.ptp(z.mean(axis=2), axis=1) > 1e-2)
    atomic = mi.atomic_case(rng, 2, 4, 1.0, 1e-6, num_sets=10)
    z = mi.sample_case(rng, atomic, 3, 2, 200)
    for zk in z:
        points = zk.reshape(-1, 2)
        close = np.linalg.norm(points[:, None] - points[None], axis=-1) < 1e-4
        first = np.argmax(close, axis=1)        # the first point at the same atom
        assert len(np.unique(first)) == 4       # the set's 4 atoms, shared by both seeds
        assert len(np.unique(first[:200])) == len(np.unique(first[200:])) == 4
    assert atomic.seed_mi == 0.0 and gauss.seed_mi == pytest.approx(np.log1p(1e8))


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
