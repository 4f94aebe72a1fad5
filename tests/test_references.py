"""The linear reference denoisers (diffgen.optimum.references) against float64 NumPy.

The Gaussian denoiser is compared with its closed form x̂₀ = μ + a Σ (a²Σ + σ²I)⁻¹ (x − a μ)
solved in float64 (no eigendecomposition), from the same data and the same float32
schedule values. The tolerance is a worst-case float32 round-off bound (u = 2⁻²⁴), derived
for the computation x̂₀ = μ + U (g ⊙ Uᵀ u), u = x − a μ, g = a λ/(a² λ + σ²):
  - μ, U, λ rounded to float32: relative u each (λ moves g by at most u relative, since
    d log g / d log λ = σ²/(a²λ + σ²) ≤ 1); forming g adds at most 6 roundings;
  - u = x − a μ: at most u(|x| + 2a|μ|) per coordinate;
  - each product with U or Uᵀ is a length-D dot: γ_D Σ|terms| ≈ D u Σ|terms| (Higham 3.5);
so with A = |U| every error is at most a multiple (2D + 16) of u A(|g| ⊙ Aᵀ(|u| + |x| + 2a|μ|))
plus u(|μ| + |x̂₀|) from the last addition; ε̂ = (x − a x̂₀)/σ adds a|Δx̂₀|/σ and
3u(|x| + a|x̂₀|)/σ. The float64 reference's own error (eigh, solve; condition ≤ 1 + a²λ_max/σ²)
is below 1e-11 here.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffgen.diffusion import samplers
from diffgen.diffusion.schedules import make_schedule
from diffgen.optimum import references

U32 = 2.0 ** -24
TIMES = np.array([1, 10, 100, 500, 1000], np.int32)


@pytest.fixture(scope='module')
def schedule():
    return make_schedule('linear', 1000)


def schedule64(schedule, t):
    """The float32 schedule values a_t, σ_t², σ_t at t, in float64, shaped (B, 1)."""
    pick = lambda v: np.asarray(v, np.float64)[np.asarray(t)][:, None]
    return pick(schedule.a), pick(schedule.sigma2), pick(schedule.sigma)


def gaussian_closed_form(x, t, y, schedule):
    """float64 x̂₀ = μ + a Σ (a²Σ + σ²I)⁻¹ (x − a μ) and ε̂ = (x − a x̂₀)/σ, with the empirical
    (1/N) mean and covariance of y, by a linear solve."""
    X = np.asarray(x, np.float64).reshape(len(x), -1)
    Y = np.asarray(y, np.float64).reshape(len(y), -1)
    mu = Y.mean(0)
    cov = (Y - mu).T @ (Y - mu) / len(Y)
    a, s2, s = schedule64(schedule, t)
    x0 = np.stack([mu + ai * cov @ np.linalg.solve(ai * ai * cov + si * np.eye(len(mu)),
                                                  xi - ai * mu)
                   for xi, ai, si in zip(X, a[:, 0], s2[:, 0])])
    return mu, cov, x0, (X - a * x0) / s


def gaussian_bounds(x, t, y, schedule, x0):
    """Per-coordinate round-off bounds for x̂₀ and ε̂ (module docstring)."""
    X = np.asarray(x, np.float64).reshape(len(x), -1)
    Y = np.asarray(y, np.float64).reshape(len(y), -1)
    mu = Y.mean(0)
    variances, basis = np.linalg.eigh((Y - mu).T @ (Y - mu) / len(Y))
    variances = np.maximum(variances, 0.0)
    a, s2, s = schedule64(schedule, t)
    d = X.shape[1]
    gain = a * variances / (a * a * variances + s2)
    A = np.abs(basis)
    spread = np.abs(X - a * mu) + np.abs(X) + 2 * a * np.abs(mu)
    x0_bound = (2 * d + 16) * U32 * ((gain * (spread @ A)) @ A.T) + U32 * (np.abs(mu) + np.abs(x0))
    eps_bound = (a * x0_bound + 3 * U32 * (np.abs(X) + a * np.abs(x0))) / s
    return x0_bound, eps_bound


def test_identity_is_zero(schedule):
    x = np.random.default_rng(0).standard_normal((3, 4, 4, 1)).astype(np.float32)
    eps = references.identity_denoiser()(x, jnp.asarray(TIMES[:3]))
    assert eps.shape == x.shape and eps.dtype == jnp.float32
    assert np.all(np.asarray(eps) == 0)


def test_mean_denoiser_matches_float64(schedule):
    """ε̂ = (x − a μ)/σ: μ, the product, the subtraction and the division round once each."""
    rng = np.random.default_rng(1)
    y = rng.uniform(-1, 1, (37, 3, 2, 2)).astype(np.float32)
    x = rng.standard_normal((len(TIMES), 3, 2, 2)).astype(np.float32)
    got = np.asarray(references.mean_denoiser(y, schedule)(x, jnp.asarray(TIMES)), np.float64)
    a, _, s = schedule64(schedule, TIMES)
    X, mu = x.reshape(len(x), -1).astype(np.float64), y.reshape(len(y), -1).mean(0, np.float64)
    expected = (X - a * mu) / s
    bound = 5 * U32 * (np.abs(X) + a * np.abs(mu)) / s
    assert np.all(np.abs(got.reshape(len(x), -1) - expected) <= bound)


@pytest.mark.parametrize('n,shape', [
    (40, (3, 2, 2)),   # full-rank covariance (N > D = 12)
    (5, (4, 4, 1)),    # rank 4 < D = 16: eigenvalues clipped at 0, their directions inert
    (1, (2, 3, 1)),    # one image: Σ = 0, x̂₀ = y_1 (= ε*)
])
def test_gaussian_matches_float64_closed_form(schedule, n, shape):
    rng = np.random.default_rng(n)
    y = rng.uniform(-1, 1, (n,) + shape).astype(np.float32)
    t = np.concatenate([TIMES, TIMES])
    x = np.concatenate([
        # forward-process points of training images, and pure noise
        (np.asarray(schedule.a)[TIMES].reshape(-1, 1, 1, 1) * y[rng.integers(0, n, len(TIMES))]
         + np.asarray(schedule.sigma)[TIMES].reshape(-1, 1, 1, 1)
         * rng.standard_normal((len(TIMES),) + shape)),
        rng.standard_normal((len(TIMES),) + shape)]).astype(np.float32)
    mu, cov, x0_ref, eps_ref = gaussian_closed_form(x, t, y, schedule)
    x0_bound, eps_bound = gaussian_bounds(x, t, y, schedule, x0_ref)
    mean, basis, variances = references.gaussian_moments(y)
    x0 = references.gaussian_x0(x, jnp.asarray(t), mean=mean, basis=basis, variances=variances,
                                schedule=schedule)
    eps = references.gaussian_denoiser(y, schedule)(x, jnp.asarray(t))
    assert np.all(np.abs(np.asarray(x0, np.float64).reshape(len(x), -1) - x0_ref) <= x0_bound)
    assert np.all(np.abs(np.asarray(eps, np.float64).reshape(len(x), -1) - eps_ref) <= eps_bound)
    if n == 1:
        np.testing.assert_array_equal(np.asarray(x0).reshape(len(x), -1),
                                      np.broadcast_to(y.reshape(1, -1), (len(x), y[0].size)))


def test_moments_accumulated_in_chunks_equal_one_pass():
    """μ and Σ summed over chunks of rows equal the one-pass float64 moments (to float64
    round-off: N·D·u_64 relative, far below 1e-12 here)."""
    y = np.random.default_rng(2).uniform(-1, 1, (1000, 7)).astype(np.float32)
    mean, cov = references.training_moments(y, chunk=64)
    Y = y.astype(np.float64)
    np.testing.assert_allclose(mean, Y.mean(0), rtol=0, atol=1e-13)
    np.testing.assert_allclose(cov, np.cov(Y.T, bias=True), rtol=0, atol=1e-13)


def test_gaussian_approaches_the_population_denoiser(schedule):
    """Training sets drawn from N(m, S): the Gaussian denoiser of N samples tends to the exact
    E[ε | x_t] = σ (a² S + σ² I)⁻¹ (x − a m) as N grows. Its error comes from the empirical μ
    and Σ, which err by O(N^{-1/2}) (delta method), so the RMS error over test points must
    fall with every tenfold N and its log-log slope must be near −1/2 (averaged over 4
    training sets per N; float32 round-off, ~1e-6, is far below every error here)."""
    rng = np.random.default_rng(3)
    d = 6
    m = rng.uniform(-0.5, 0.5, d)
    root = rng.standard_normal((d, d)) / np.sqrt(d)
    S = root @ root.T + 0.05 * np.eye(d)
    t = np.repeat(np.array([20, 100, 300, 700], np.int32), 500)
    a, s2, s = schedule64(schedule, t)
    y_test = rng.multivariate_normal(m, S, len(t))
    x = (a * y_test + s * rng.standard_normal((len(t), d))).astype(np.float32)
    population = np.stack([si * np.linalg.solve(ai * ai * S + si * si * np.eye(d), xi - ai * m)
                           for xi, ai, si in zip(x.astype(np.float64), a[:, 0], s[:, 0])])
    sizes = [100, 1000, 10000, 100000]
    rms = []
    for n in sizes:
        errors = [np.mean((np.asarray(references.gaussian_denoiser(
            rng.multivariate_normal(m, S, n).astype(np.float32), schedule)(x, jnp.asarray(t)),
            np.float64) - population) ** 2) for _ in range(4)]
        rms.append(np.sqrt(np.mean(errors)))
    assert all(b < a for a, b in zip(rms, rms[1:])), rms
    slope = np.polyfit(np.log(sizes), np.log(rms), 1)[0]
    assert -0.75 < slope < -0.25, (slope, rms)


def test_gaussian_of_a_diagonal_set_is_the_diagonal_closed_form(schedule):
    """The 2D points μ ± √D s_j e_j have mean μ and covariance diag(s²) exactly (dyadic
    values: exact in float32 and in every float64 sum here), so their Gaussian denoiser is
    the per-coordinate closed form of tests/gaussian.py, x̂₀ = μ + a s² (x − a μ)/(a² s² + σ²)
    and ε̂ = (x − a x̂₀)/σ = σ (x − a μ)/(a² s² + σ²) (here in float64, from the float32
    schedule's σ² and σ, as the engine reads them), within the round-off bound above."""
    d = 4
    mu = np.array([0.125, -0.25, 0.375, 0.0])
    s = np.array([0.25, 0.5, 0.125, 0.375])
    y = np.concatenate([mu + np.sqrt(d) * np.diag(s), mu - np.sqrt(d) * np.diag(s)])
    y = y.astype(np.float32)
    x = np.random.default_rng(4).standard_normal((len(TIMES), d)).astype(np.float32)
    eps = np.asarray(references.gaussian_denoiser(y, schedule)(x, jnp.asarray(TIMES)),
                     np.float64)
    a, s2, sig = schedule64(schedule, TIMES)
    closed = (x - a * (mu + a * s ** 2 * (x - a * mu) / (a * a * s ** 2 + s2))) / sig
    x0_ref, eps_ref = gaussian_closed_form(x, TIMES, y, schedule)[2:]
    np.testing.assert_allclose(eps_ref, closed, rtol=1e-12, atol=0)
    _, eps_bound = gaussian_bounds(x, TIMES, y, schedule, x0_ref)
    assert np.all(np.abs(eps - closed) <= eps_bound)


def test_every_sampler_takes_the_gaussian_reference():
    """A Partial denoiser: a sampler compiles once for two training sets of the same shape,
    and returns finite samples (ddim and heun; ddpm calls its denoiser the same way)."""
    schedule = make_schedule('linear', 20)
    rng = np.random.default_rng(5)
    x_T = jax.random.normal(jax.random.key(0), (3, 2, 2, 1))
    compiled = samplers._sample._cache_size()
    for method, steps in (('ddim', 5), ('heun', 3)):
        for _ in range(2):
            y = rng.uniform(-1, 1, (6, 2, 2, 1)).astype(np.float32)
            out = samplers.sample(references.gaussian_denoiser(y, schedule), x_T, schedule,
                                  method, steps, rng=jax.random.key(1))
            assert out.shape == x_T.shape and np.all(np.isfinite(np.asarray(out)))
    assert samplers._sample._cache_size() - compiled == 2  # one per method, not per set
