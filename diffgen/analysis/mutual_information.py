"""k-nearest-neighbour estimates of entropy and of the generalisation error I(z; S).

Kozachenko–Leonenko (1987) entropy estimate of n points x_i in R^d, with r_i the distance
from x_i to its k-th nearest neighbour among the others and V_d = π^{d/2} / Γ(d/2 + 1) the
volume of the unit ball:
    Ĥ = ψ(n) − ψ(k) + log V_d + (d/n) Σ_i log r_i          (nats),
a mean of per-point terms h_i = ψ(n) − ψ(k) + log V_d + d log r_i.

Generalisation error (docs/math.md §9): K training sets S_k ~ P^N, M samples z_{k,j} from the
model fitted to S_k, and I = H(z) − E_k H(z | S_k). With Ĥ(z) from all KM points pooled and
Ĥ(z | S_k) from the M points of set k,
    Î = ψ(KM) − ψ(M) + (1/K) Σ_k ū_k,  ū_k = (d/M) Σ_j log( r^pool_{k,j} / r^own_{k,j} ),
r^pool the k-th neighbour distance among all KM points, r^own among the M points of set k
(the log V_d and ψ(k) terms cancel). The pooled points are a sample of the K-component
mixture (1/K) Σ_k Q(z|S_k), not of Q̄ = E_S Q(z|S), so Î estimates the generalised
Jensen–Shannon divergence of the K conditionals: at most log K, and → I as K → ∞.

Seed marginalisation. Q(z | S) includes the training randomness ω (initialisation, noise
draws): with R models (seeds) per set, z of shape (K, R, M, d), Î(z; S) is computed with the
RM points of set k as its own sample (the mixture over seeds), and the seed-only dependence
Î(z; ω | S) with the same estimator applied, set by set, to the R seeds of one set (R
"sets" of M points each), averaged over k. The two add up exactly to the estimate with all KR
models as components: Î(z; S, ω) = Î(z; S) + Î(z; ω | S) (the ψ terms and the log radii
telescope).

Intervals: a jackknife over the K training sets (the unit the outer expectation averages
over). With Î_(−k) the estimate from the other K − 1 sets (their pooled radii recomputed),
Ī = (1/K) Σ_k Î_(−k) and t = the Student t quantile with K − 1 degrees of freedom,
    se² = ((K − 1)/K) Σ_k (Î_(−k) − Ī)²,
    Ĩ   = K Î − (K − 1) Ī                    (the jackknife bias correction),
    divergence interval  Î ± t se            (targets E JS_K, what Î estimates),
    corrected interval   Ĩ ± t se            (targets I(z; S): JS_K = I − O(1/K), and the
                                              correction removes the O(1/K) term).
For a mean of per-set values (the seed-only dependence) the jackknife is the t interval
x̄ ± t s/√K. If any sample coincides with another of its own set (r^own = 0, the atoms of the
empirical optimum with a deterministic sampler), Q(z|S_k) has atoms at S-dependent places
and I = ∞.
"""
from __future__ import annotations

import dataclasses

import numpy as np
from scipy import stats
from scipy.special import digamma, gammaln, logsumexp
from sklearn.neighbors import NearestNeighbors


@dataclasses.dataclass(frozen=True)
class Estimate:
    """Î (the K-set divergence estimate) with its interval [low, high] = Î ± t se, and the
    jackknife bias-corrected Ĩ with [corrected_low, corrected_high] = Ĩ ± t se (module doc).
    Where there is no jackknife (a mean of per-set values) Ĩ = Î."""
    value: float
    low: float
    high: float
    corrected: float
    corrected_low: float
    corrected_high: float
    se: float

    def as_dict(self):
        return dataclasses.asdict(self)


def log_unit_ball_volume(d):
    """log V_d = (d/2) log π − log Γ(d/2 + 1)."""
    return 0.5 * d * np.log(np.pi) - gammaln(0.5 * d + 1.0)


def knn_radius(x, k):
    """r_i: the distance from each row of x (n, d) to its k-th nearest other row (float64)."""
    x = np.asarray(x, np.float64)
    if not 1 <= k < x.shape[0]:
        raise ValueError(f'k must be in 1..{x.shape[0] - 1} for {x.shape[0]} points, got {k}')
    distances, _ = NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x)
    return distances[:, k]  # column 0 is the point itself


def entropy_terms(x, k=3):
    """The per-point terms h_i = ψ(n) − ψ(k) + log V_d + d log r_i (Ĥ is their mean);
    −inf where a point has k others at distance 0."""
    n, d = np.asarray(x).shape
    with np.errstate(divide='ignore'):
        log_r = np.log(knn_radius(x, k))
    return digamma(n) - digamma(k) + log_unit_ball_volume(d) + d * log_r


def kl_entropy(x, k=3):
    """The Kozachenko–Leonenko estimate Ĥ (nats) of the entropy of points x (n, d)."""
    return float(np.mean(entropy_terms(x, k)))


def mutual_information_terms(z, k=3):
    """(ψ(KM) − ψ(M), ū (K,)) for samples z (K, M, d) of K models: Î = c + mean(ū).
    ū_k = +inf if set k has k samples at distance 0 from one of its own."""
    z = np.asarray(z, np.float64)
    num_sets, m, d = z.shape
    pooled = knn_radius(z.reshape(num_sets * m, d), k).reshape(num_sets, m)
    own = np.stack([knn_radius(zk, k) for zk in z])
    with np.errstate(divide='ignore', invalid='ignore'):
        u = d * np.mean(np.log(pooled) - np.log(own), axis=1)
    u = np.where(np.any(own == 0, axis=1), np.inf, u)
    return digamma(num_sets * m) - digamma(m), u


def mutual_information_value(z, k=3):
    """Î(z; S) = ψ(KM) − ψ(M) + (1/K) Σ_k ū_k (nats) of samples z (K, M, d); +inf if a set's
    samples are atoms."""
    c, u = mutual_information_terms(z, k)
    return float(c + np.mean(u))


def _infinite():
    return Estimate(*[np.inf] * 7)


def mutual_information(z, k=3, level=0.95):
    """Î(z; S) (nats) from samples z (K, M, d) of K models (or mixtures of R seeds, M = RM')
    fitted to K training sets, with the jackknife over sets of the module doc: the interval
    Î ± t se and the bias-corrected Ĩ ± t se. Infinite if any set's samples are atoms."""
    z = np.asarray(z, np.float64)
    num_sets = len(z)
    value = mutual_information_value(z, k)
    if not np.isfinite(value):
        return _infinite()
    leave_out = np.array([mutual_information_value(np.delete(z, j, axis=0), k)
                          for j in range(num_sets)])
    mean = leave_out.mean()
    se = float(np.sqrt((num_sets - 1) / num_sets * np.sum((leave_out - mean) ** 2)))
    corrected = float(num_sets * value - (num_sets - 1) * mean)
    low, high = (float(q) * se for q in stats.t.interval(level, num_sets - 1))   # ∓ t se
    return Estimate(value, value + low, value + high, corrected, corrected + low,
                    corrected + high, se)


def seed_dependence(z, k=3, level=0.95):
    """Î(z; ω | S) (nats) from samples z (K, R, M, d) of R seeds per set: the mean over sets
    of x_k = Î of set k's R seeds (mutual_information_value(z[k])), with x̄ ± t s/√K, s the
    standard deviation (ddof 1) of the x_k, t with K − 1 degrees of freedom (the jackknife of
    a mean). Corrected = value: no jackknife over R seeds (the estimate targets the R-seed
    divergence, at most log R). Infinite if any model's samples are atoms."""
    per_set = np.array([mutual_information_value(zk, k) for zk in np.asarray(z, np.float64)])
    if not np.all(np.isfinite(per_set)):
        return _infinite()
    value = float(per_set.mean())
    se = float(per_set.std(ddof=1) / np.sqrt(len(per_set)))
    low, high = (float(q) * se for q in stats.t.interval(level, len(per_set) - 1))
    return Estimate(value, value + low, value + high, value, value + low, value + high, se)


def gaussian_entropy(cov):
    """H(N(μ, Σ)) = ½ log((2πe)^d det Σ) (nats)."""
    cov = np.atleast_2d(np.asarray(cov, np.float64))
    return 0.5 * (cov.shape[0] * np.log(2 * np.pi * np.e) + np.linalg.slogdet(cov)[1])


def gaussian_mean_mi(dim, num_train, data_std, noise_std):
    """I(z; S) in closed form for S = {y_1..y_N}, y_i ~ N(0, τ² I_d), and z | S ~ N(ȳ, s² I_d),
    ȳ = (1/N) Σ_i y_i (τ = data_std, s = noise_std):
        I(z; S) = I(z; ȳ) = (d/2) log(1 + τ² / (N s²)).
    z depends on S only through ȳ (z ⊥ S | ȳ and ȳ is a function of S), so I(z; S) =
    I(z; ȳ); ȳ ~ N(0, (τ²/N) I) and z = ȳ + s ξ is a Gaussian channel:
    I = H(z) − H(z | ȳ) = (d/2) log(2πe(τ²/N + s²)) − (d/2) log(2πe s²)."""
    return 0.5 * dim * np.log1p(data_std ** 2 / (num_train * noise_std ** 2))


def sample_gaussian_mean_case(rng, num_sets, num_train, num_samples, dim, data_std,
                              noise_std):
    """Samples (K, M, d) of the closed-form case of gaussian_mean_mi: K training sets of N
    points y ~ N(0, τ² I), then M draws z ~ N(ȳ_k, s² I) for each."""
    sets = data_std * rng.standard_normal((num_sets, num_train, dim))
    means = sets.mean(axis=1, keepdims=True)
    return means + noise_std * rng.standard_normal((num_sets, num_samples, dim))


def gaussian_mean_js(rng, num_sets, num_train, dim, data_std, noise_std, num_draws=100,
                     num_points=64):
    """(E JS_K, its Monte-Carlo standard error): the K-set divergence Î targets in the
    closed-form case of gaussian_mean_mi, q_k = N(ȳ_k, s² I), ȳ_k ~ N(0, (τ²/N) I):
        JS_K = (1/K) Σ_k E_{z~q_k}[ log q_k(z) − log (1/K) Σ_j q_j(z) ],
    log q_k(z) − log q_j(z) = (‖z − ȳ_j‖² − ‖z − ȳ_k‖²) / (2 s²). Each of num_draws draws of
    K means gives one JS_K from num_points points z per component."""
    values = []
    for _ in range(num_draws):
        means = data_std / np.sqrt(num_train) * rng.standard_normal((num_sets, dim))
        z = means[:, None] + noise_std * rng.standard_normal((num_sets, num_points, dim))
        sq = np.sum((z[:, :, None, :] - means[None, None]) ** 2, axis=-1) / (2 * noise_std ** 2)
        own = np.take_along_axis(sq, np.arange(num_sets)[:, None, None], axis=2)[..., 0]
        mixture = logsumexp(-sq, axis=2) - np.log(num_sets)
        values.append(np.mean(-own - mixture))
    values = np.asarray(values)
    return float(values.mean()), float(values.std(ddof=1) / np.sqrt(num_draws))
