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

Intervals: a percentile bootstrap over the K training sets (the set is the unit the outer
expectation averages over), resampling the per-set means ū_k with the neighbour distances
held fixed. If any sample coincides with another of its own set (r^own = 0, the atoms of the
empirical optimum with a deterministic sampler), Q(z|S_k) has atoms at S-dependent places
and I = ∞.
"""
from __future__ import annotations

import dataclasses

import numpy as np
from scipy.special import digamma, gammaln
from sklearn.neighbors import NearestNeighbors


@dataclasses.dataclass(frozen=True)
class Estimate:
    """A point estimate and its percentile-bootstrap interval [low, high]."""
    value: float
    low: float
    high: float

    def as_dict(self):
        return {'value': self.value, 'low': self.low, 'high': self.high}


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


def mutual_information(z, k=3, num_bootstrap=1000, level=0.95, seed=0):
    """Î(z; S) (nats) from samples z (K, M, d) of K models fitted to K training sets, with a
    percentile-bootstrap interval over the sets. Infinite if any set's samples are atoms."""
    c, u = mutual_information_terms(z, k)
    value = float(c + np.mean(u))
    if not np.isfinite(value):
        return Estimate(np.inf, np.inf, np.inf)
    rng = np.random.default_rng(seed)
    draws = c + u[rng.integers(len(u), size=(num_bootstrap, len(u)))].mean(axis=1)
    low, high = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2])
    return Estimate(value, float(low), float(high))


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
