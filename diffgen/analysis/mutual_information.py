"""k-nearest-neighbour estimates of entropy and of the generalisation error I(z; S).

Kozachenko–Leonenko (1987) entropy estimate of n points x_i in R^d, with r_i the distance
from x_i to its k-th nearest neighbour among the others and V_d = π^{d/2} / Γ(d/2 + 1) the
volume of the unit ball:
    Ĥ = ψ(n) − ψ(k) + log V_d + (d/n) Σ_i log r_i          (nats),
a mean of per-point terms h_i = ψ(n) − ψ(k) + log V_d + d log r_i.

Divergence of G groups of m points (docs/math.md §9): with r^pool_{g,j} the k-th neighbour
distance of point j of group g among all Gm points and r^own_{g,j} among the m of its group,
    D̂ = ψ(Gm) − ψ(m) + (1/G) Σ_g ū_g,  ū_g = (d/m) Σ_j log( r^pool_{g,j} / r^own_{g,j} )
(= Ĥ(pooled) − mean_g Ĥ(group g); log V_d and ψ(k) cancel): an estimate of the generalised
Jensen–Shannon divergence JS_G of the groups' distributions (at most log G).

Generalisation error: K training sets S_k ~ P^N, samples z_{k,r,j} from R models (seeds) per
set, M each, z of shape (K, R, M, d) ((K, M, d) is R = 1). Two uses of D̂:
    F = D̂ over the K sets, the RM points of set k pooled over its seeds: Î(z; S);
    x_k = D̂ over the R seeds of set k (R groups of M points): the seed-only dependence.
Î(z; S) estimates the K-set divergence E JS_K of the R-seed mixtures Q_R(z|S_k) = (1/R) Σ_r
Q(z|S_k, ω_r), and x_k the R-seed divergence JS_R of set k. As K → ∞, JS_K → I(z; S, ω_1..R)
= I(z; S) + I(z; ω | S) − E JS_R: R seeds leave the part I(z; ω|S) − E JS_R of the seed
dependence unmarginalised, and it stays in Î(z; S). Both biases are removed by jackknives:
    x̃_k = R x_k − (R − 1) (1/R) Σ_r x_k^(−r)     (x_k^(−r) from the other R − 1 seeds;
                                                  R = 2: x_k^(−r) = 0 and x̃_k = 2 x_k),
since E JS_R = I(z; ω|S) − c/R + o(1/R) (exactly I (1 − 1/R) to leading order in a weak
dependence: JS_R ≈ ½ (1 − 1/R) E χ², I ≈ ½ E χ²), and over the K sets
    G  = F − (1/K) Σ_k (x̃_k − x_k)              (F less the unmarginalised seed dependence),
    G_(−j), G_(−j,−l)                           the same without set j (and l), pooled radii
                                                recomputed; F_(−j) likewise,
    Ĩ(z; S)  = K G − (K − 1) Ḡ,                 Ḡ = (1/K) Σ_j G_(−j),
    Ĩ_(−j)   = (K − 1) G_(−j) − (K − 2) (1/(K − 1)) Σ_{l≠j} G_(−j,−l)
                                                (the same correction on the other K − 1 sets),
    se_Ĩ² = ((K − 1)/K) Σ_j (Ĩ_(−j) − mean Ĩ_(−·))²,  se_F² likewise from the F_(−j),
with t the Student t quantile with K − 1 degrees of freedom:
    divergence interval  Î(z; S) = F ± t se_F          (targets E F: E JS_K of the Q_R(·|S_k)
                                                        up to the k-NN bias of finite M),
    corrected interval   Ĩ(z; S) ± t se_Ĩ              (targets I(z; S): E JS_K = I − c/K
                                                        + o(1/K), and the seed term above),
    seed only            Î(z; ω|S) = x̄ ± t s_x/√K     (targets E JS_R, at most log R),
                         Ĩ(z; ω|S) = mean x̃ ± t s_x̃/√K (targets I(z; ω | S)),
s the standard deviations (ddof 1) of the per-set values (the jackknife of a mean is the t
interval). The corrected interval's se is the jackknife of Ĩ itself (from leave-two-out
estimates), not that of G: the bias correction amplifies G's second-order terms, and se_G
understated the spread of Ĩ by about 15 % at K = 16 (covering 89–92 % instead of 95 %).
Î(z; S) + Î(z; ω|S) is exactly D̂ with all KR models as groups (the ψ terms and log radii
telescope). With R = 1 there is no seed term: G = F. If any sample coincides with k others of
its own model (r^own = 0, the atoms of the empirical optimum with a deterministic sampler),
Q(z|S_k) has atoms at S-dependent places and I = ∞.

Leave-one-group-out radii: removing group j changes the pooled radius of point i only if one
of its k nearest pooled neighbours lies in j; the new radius is then its k-th nearest
neighbour outside j, read from its q = 8k nearest pooled neighbours (by brute force where
fewer than k of them lie outside j); likewise for two groups j, l. One neighbour query serves
all G + G(G − 1)/2 jackknife replicates.

Validation cases (MixtureCase): model r of set k draws z ~ (1/C) Σ_c N(μ_{k,r,c}, std² I_d).
  gaussian_case: y_i ~ N(0, τ² I), ω ~ N(0, I), z | S, ω ~ N(ȳ + b ω, s² I):
      I(z; S) = (d/2) log(1 + τ²/(N (s² + b²))),   I(z; ω | S) = (d/2) log(1 + b²/s²);
  atomic_case: z | S ~ (1/N) Σ_i N(y_i, h² I), y_i ~ N(0, τ² I) (the empirical optimum's
      atoms smoothed by h; I = ∞ at h = 0): I(z; S) by Monte Carlo (atomic_mi), I(z; ω|S) = 0;
and their E JS_K (expected_js), the target of the divergence interval.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
from scipy import stats
from scipy.special import digamma, gammaln, logsumexp
from sklearn.neighbors import NearestNeighbors


@dataclasses.dataclass(frozen=True)
class Estimate:
    """Î (the divergence estimate) with its interval [low, high] = Î ± t se, and the
    bias-corrected Ĩ with [corrected_low, corrected_high] = Ĩ ± t corrected_se (module doc)."""
    value: float
    low: float
    high: float
    corrected: float
    corrected_low: float
    corrected_high: float
    se: float
    corrected_se: float

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
    return Estimate(*[np.inf] * 8)


def _t_half_width(level, dof):
    """t_{dof, (1 + level)/2}: the half-width of a level interval per standard error."""
    return float(stats.t.ppf(0.5 + 0.5 * level, dof))


def _estimate(value, se, corrected, corrected_se, level, dof):
    t = _t_half_width(level, dof)
    return Estimate(float(value), float(value - t * se), float(value + t * se),
                    float(corrected), float(corrected - t * corrected_se),
                    float(corrected + t * corrected_se), float(se), float(corrected_se))


def _neighbours(index, x, rows, q):
    """(distances, indices) (len(rows), q) of the q nearest other points of x[rows] in the
    fitted NearestNeighbors index of x, nearest first; a point itself is dropped wherever
    ties at distance 0 put it."""
    distances, indices = index.kneighbors(x[rows], n_neighbors=q + 1)
    self_last = np.argsort(indices == rows[:, None], axis=1, kind='stable')
    return (np.take_along_axis(distances, self_last, 1)[:, :q],
            np.take_along_axis(indices, self_last, 1)[:, :q])


class _Pool:
    """The pooled k-NN radii of groups z (G, m, d), and those among the points outside any
    set of groups (module doc, leave-one-group-out radii). Each point lists its q = k + extra
    nearest pooled neighbours (default extra = 7k); where fewer than k of them lie outside
    the removed groups, its radius is found by brute force."""

    def __init__(self, z, k, extra=None):
        z = np.asarray(z, np.float64)
        self.num_groups, self.m, d = z.shape
        self.n, self.k = self.num_groups * self.m, k
        self.x, self.groups = z.reshape(self.n, d), np.repeat(np.arange(self.num_groups), self.m)
        self.q = min(self.n - 1, k + (7 * k if extra is None else extra))
        self.index = NearestNeighbors().fit(self.x)
        self.distances, indices = _neighbours(self.index, self.x, np.arange(self.n), self.q)
        self.labels = self.groups[indices]
        with np.errstate(divide='ignore'):
            self.log_r = np.log(self.distances[:, k - 1])

    def _brute_radius(self, row, removed):
        """The k-th nearest neighbour distance of point row among the points outside the
        groups removed, by brute force."""
        kept = np.flatnonzero(~np.isin(self.groups, removed))
        sq = np.sum((self.x[kept] - self.x[row]) ** 2, axis=-1)
        sq[kept == row] = np.inf
        return np.sqrt(np.partition(sq, self.k - 1)[self.k - 1])

    def pooled(self):
        """pooled[g] = Σ_j log r^pool_{g,j} (G,)."""
        return np.bincount(self.groups, self.log_r, self.num_groups)

    def _kth_outside(self, rows, outside, removed):
        """log r of points rows from the running counts `outside` (rows, q) of their listed
        neighbours outside removed (a list of per-row group arrays); where fewer than k are
        listed, from a list 8 times longer, then by brute force."""
        radius = self.distances[rows, np.argmax(outside >= self.k, axis=1)]
        lost = np.flatnonzero(outside[:, -1] < self.k)
        if len(lost) and self.q < self.n - 1:
            far, indices = _neighbours(self.index, self.x, rows[lost], min(self.n - 1, 8 * self.q))
            labels = self.groups[indices]
            keep = np.logical_and.reduce([labels != g[lost, None] for g in removed])
            deep = np.cumsum(keep, axis=1)
            radius[lost] = far[np.arange(len(lost)), np.argmax(deep >= self.k, axis=1)]
            lost = lost[deep[:, -1] < self.k]
        for i in lost:
            radius[i] = self._brute_radius(rows[i], [g[i] for g in removed])
        with np.errstate(divide='ignore'):
            return np.log(radius)

    def _candidates(self, p):
        """(rows, h): the points whose p-th nearest neighbour (p < k) lies in a group h other
        than their own and than those of their nearer neighbours (each h once per point)."""
        h = self.labels[:, p]
        rows = np.flatnonzero((h != self.groups)
                              & np.all(self.labels[:, :p] != h[:, None], axis=1))
        return rows, h[rows]

    def without_one(self):
        """[h, g] = Σ_j log r^(−h)_{g,j}, radii among the points outside group h (h ≠ g;
        the diagonal is nan) (G, G)."""
        change = np.zeros((self.num_groups, self.num_groups))
        for p in range(self.k):
            rows, h = self._candidates(p)
            outside = np.cumsum(self.labels[rows] != h[:, None], axis=1)
            with np.errstate(invalid='ignore'):
                delta = self._kth_outside(rows, outside, [h]) - self.log_r[rows]
            change += np.bincount(h * self.num_groups + self.groups[rows], delta,
                                  self.num_groups ** 2).reshape(change.shape)
        sums = self.pooled()[None, :] + change
        np.fill_diagonal(sums, np.nan)
        return sums

    def without_two(self, chunk=4096):
        """[h, l, g] = Σ_j log r^(−h,−l)_{g,j}, radii among the points outside groups h and
        l (g ∉ {h, l}; nan elsewhere) (G, G, G). A point's radius changes only if h or l is a
        candidate of it (_candidates); each unordered pair {h, l} is taken once per point,
        with h its earlier candidate."""
        num = self.num_groups
        change = np.zeros((num, num, num))
        others = np.arange(num)
        for p in range(self.k):
            all_rows, all_h = self._candidates(p)
            for start in range(0, len(all_rows), chunk):
                rows, h = all_rows[start:start + chunk], all_h[start:start + chunk]
                labels = self.labels[rows]
                # partners l: not the point's own group, not h, not an earlier candidate
                earlier = np.zeros((len(rows), num), bool)
                earlier[np.arange(len(rows))[:, None], labels[:, :p]] = True
                use = ((others[None, :] != self.groups[rows, None])
                       & (others[None, :] != h[:, None]) & ~earlier)
                i, l = np.nonzero(use)
                keep = (labels[i] != h[i, None]) & (labels[i] != l[:, None])
                radius = self._kth_outside(rows[i], np.cumsum(keep, axis=1), [h[i], l])
                with np.errstate(invalid='ignore'):
                    delta = radius - self.log_r[rows[i]]
                g = self.groups[rows[i]]
                change += np.bincount(np.concatenate([(h[i] * num + l) * num + g,
                                                      (l * num + h[i]) * num + g]),
                                      np.concatenate([delta, delta]),
                                      num ** 3).reshape(num, num, num)
        pooled = self.pooled()
        sums = pooled[None, None, :] + change
        sums[others[:, None], others[None, :], others[:, None]] = np.nan   # g = h
        sums[others[:, None], others[None, :], others[None, :]] = np.nan   # g = l
        return sums


def _own_log_radii(z, k):
    """own[g] = Σ_j log r^own_{g,j} of groups z (G, m, d): each point's k-NN radius among the
    points of its own group (−inf where a point has k others of its group at distance 0).
    One query: the groups are set apart along an extra axis by more than any distance within
    a group (its entries are g · 2(span + 1), span the largest coordinate range), so each
    point's k nearest lie in its own group and their distances are the within-group ones."""
    z = np.asarray(z, np.float64)
    num_groups, m, d = z.shape
    span = float(np.max(np.ptp(z.reshape(-1, d), axis=0))) if z.size else 0.0
    apart = np.repeat(np.arange(num_groups) * 2.0 * (span + 1.0), m)[:, None]
    log_r = np.zeros(num_groups * m)
    with np.errstate(divide='ignore'):
        log_r = np.log(knn_radius(np.concatenate([z.reshape(-1, d), apart], axis=1), k))
    return log_r.reshape(num_groups, m).sum(axis=1)


def _divergence(own, pooled, m, d):
    """D̂ = ψ(Gm) − ψ(m) + (d/(Gm)) Σ_g (pooled[g] − own[g]) over the G groups whose pooled
    entries (last axis) are not nan."""
    used = ~np.isnan(pooled)
    count = np.sum(used, axis=-1)
    total = np.sum(np.where(used, pooled - own, 0.0), axis=-1)
    with np.errstate(divide='ignore', invalid='ignore'):
        return digamma(count * m) - digamma(m) + d * total / (count * m)


def _jackknife(z, k, own, pairs, extra=None):
    """(D̂, D̂_(−h), D̂_(−h,−l) or None, pooled sums (G,)) of groups z (divergence_jackknife)."""
    num_groups, m, d = np.shape(z)
    own = _own_log_radii(z, k) if own is None else own
    pool = _Pool(z, k, extra)
    pooled = pool.pooled()
    nan = np.full(num_groups, np.nan)
    if np.any(np.isneginf(own)):
        return np.inf, nan, (np.full((num_groups,) * 2, np.nan) if pairs else None), pooled
    value = float(_divergence(own, pooled, m, d))
    leave_out = _divergence(own, pool.without_one(), m, d) if num_groups > 1 else nan
    if not pairs:
        return value, leave_out, None, pooled
    leave_two = (_divergence(own, pool.without_two(), m, d) if num_groups > 2
                 else np.full((num_groups,) * 2, np.nan))
    np.fill_diagonal(leave_two, np.nan)
    return value, leave_out, leave_two, pooled


def divergence_jackknife(z, k=3, own=None, pairs=False, extra=None):
    """(D̂, D̂_(−h) (G,), D̂_(−h,−l) (G, G) or None) of groups z (G, m, d):
        D̂ = ψ(Gm) − ψ(m) + (d/(Gm)) Σ_g (pooled[g] − own[g]),
    D̂_(−h) the same over the G − 1 groups other than h, D̂_(−h,−l) (with pairs) over the
    G − 2 groups other than h and l (diagonal nan); own[g] = Σ_j log r^own_{g,j} (given, or
    computed); extra as in _Pool. D̂ = +inf (the rest nan) if a group's samples are atoms
    (own[g] = −inf)."""
    return _jackknife(z, k, own, pairs, extra)[:3]


def _as_models(z):
    z = np.asarray(z, np.float64)
    return z[:, None] if z.ndim == 3 else z


def seed_terms(z, k=3):
    """(x (K,), x̃ (K,), set_own (K,)) of samples z (K, R, M, d), R >= 2: x_k = D̂ over the
    R seeds of set k, x̃_k = R x_k − (R − 1) mean_r x_k^(−r) its jackknife over the seeds
    (x_k^(−r) = 0 for R = 2: one seed is no divergence), and set_own[k] = Σ log r of set k's
    RM points among themselves (the own radii of Î(z; S)). x_k = +inf if a model's samples
    are atoms."""
    z = _as_models(z)
    num_sets, num_seeds, num_samples, dim = z.shape
    own = _own_log_radii(z.reshape(num_sets * num_seeds, num_samples, dim), k).reshape(
        num_sets, num_seeds)
    set_own = _own_log_radii(z.reshape(num_sets, num_seeds * num_samples, dim), k)
    with np.errstate(invalid='ignore'):
        x = (digamma(num_seeds * num_samples) - digamma(num_samples)
             + dim * (set_own - own.sum(axis=1)) / (num_seeds * num_samples))
    x = np.where(np.any(np.isneginf(own), axis=1), np.inf, x)
    if num_seeds == 2:
        return x, 2 * x, set_own
    leave_out = np.array([
        np.mean(_divergence(own_k, _Pool(zk, k).without_one(), num_samples, dim))
        if np.isfinite(x_k) else np.nan for zk, own_k, x_k in zip(z, own, x)])
    return x, num_seeds * x - (num_seeds - 1) * leave_out, set_own


def _jackknife_se(values):
    """√(((n − 1)/n) Σ_j (v_j − v̄)²) of n leave-one-out values."""
    n = len(values)
    return float(np.sqrt((n - 1) / n * np.sum((values - values.mean()) ** 2)))


def mutual_information(z, k=3, level=0.95):
    """Î(z; S) and Ĩ(z; S) (nats) from samples z (K, R, M, d) of R seeds on each of K
    training sets ((K, M, d): one model per set), module doc: value ± t se_F (targets E JS_K
    of the R-seed mixtures) and corrected Ĩ = K G − (K − 1) Ḡ ± t se_Ĩ (targets I(z; S)).
    Infinite if any model's samples are atoms."""
    z = _as_models(z)
    num_sets, num_seeds, num_samples, dim = z.shape
    if num_seeds == 1:
        unmarginalised, set_own = np.zeros(num_sets), None
    else:
        x, x_tilde, set_own = seed_terms(z, k)
        if not np.all(np.isfinite(x)):
            return _infinite()
        unmarginalised = x_tilde - x
    value, f1, f2, _ = _jackknife(z.reshape(num_sets, num_seeds * num_samples, dim), k,
                                  set_own, True)
    if not np.isfinite(value):
        return _infinite()
    total = unmarginalised.sum()
    g = value - total / num_sets
    g1 = f1 - (total - unmarginalised) / (num_sets - 1)
    g2 = f2 - (total - unmarginalised[:, None] - unmarginalised[None, :]) / (num_sets - 2)
    np.fill_diagonal(g2, np.nan)
    corrected = num_sets * g - (num_sets - 1) * g1.mean()
    corrected_1 = (num_sets - 1) * g1 - (num_sets - 2) * np.nanmean(g2, axis=1)
    return _estimate(value, _jackknife_se(f1), corrected, _jackknife_se(corrected_1), level,
                     num_sets - 1)


def seed_dependence(z, k=3, level=0.95):
    """Î(z; ω | S) = mean_k x_k ± t s_x/√K (targets E JS_R) and Ĩ(z; ω | S) = mean_k x̃_k
    ± t s_x̃/√K (targets I(z; ω | S)) from samples z (K, R, M, d), R >= 2 (module doc);
    t with K − 1 degrees of freedom. Infinite if any model's samples are atoms."""
    x, x_tilde, _ = seed_terms(z, k)
    if not np.all(np.isfinite(x)):
        return _infinite()
    se = lambda v: v.std(ddof=1) / np.sqrt(len(v))
    return _estimate(x.mean(), se(x), x_tilde.mean(), se(x_tilde), level, len(x) - 1)


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


@dataclasses.dataclass(frozen=True)
class MixtureCase:
    """A validation case: model r of set k draws z ~ (1/C) Σ_c N(μ_{k,r,c}, std² I_d), the
    centres from centres(rng, K, R) as (K, R, C, d), or (K, 1, C, d) where the seed changes
    nothing; mi = I(z; S) (with mi_se, its Monte-Carlo standard error, 0 for a closed form)
    and seed_mi = I(z; ω | S)."""
    name: str
    std: float
    centres: Callable
    mi: float
    mi_se: float
    seed_mi: float


def gaussian_case(dim, num_train, data_std, noise_std, seed_std=0.0):
    """y_i ~ N(0, τ² I_d), ω ~ N(0, I_d) per model, z | S, ω ~ N(ȳ + b ω, s² I_d) (τ =
    data_std, s = noise_std, b = seed_std). z | S ~ N(ȳ, (s² + b²) I) and z | S, ω is a
    Gaussian channel from ω, so (gaussian_mean_mi)
        I(z; S) = (d/2) log(1 + τ²/(N (s² + b²))),   I(z; ω | S) = (d/2) log(1 + b²/s²)."""
    def centres(rng, num_sets, num_seeds):
        means = data_std / np.sqrt(num_train) * rng.standard_normal((num_sets, 1, 1, dim))
        if seed_std == 0:
            return means
        return means + seed_std * rng.standard_normal((num_sets, num_seeds, 1, dim))
    return MixtureCase(f'gaussian, b = {seed_std:.3g}', noise_std, centres,
                       float(gaussian_mean_mi(dim, num_train, data_std,
                                              np.hypot(noise_std, seed_std))), 0.0,
                       float(0.5 * dim * np.log1p((seed_std / noise_std) ** 2)))


def atomic_mi(rng, dim, num_train, data_std, width, num_sets=4000, num_points=64):
    """(I(z; S), its standard error) for z | S ~ q_S = (1/N) Σ_i N(y_i, h² I_d), y_i ~
    N(0, τ² I_d) (τ = data_std, h = width), by Monte Carlo:
        I(z; S) = E_S E_{z~q_S}[ log q_S(z) − log p(z) ],   p = N(0, (τ² + h²) I_d)
    the marginal of z (= y_J + h ξ with y_J ~ N(0, τ² I)): the mean over num_sets sets of
    each set's mean over num_points of its own z, the standard error from the spread of
    those per-set means (independent replicates)."""
    sets = data_std * rng.standard_normal((num_sets, num_train, dim))
    pick = rng.integers(0, num_train, (num_sets, num_points))
    z = np.take_along_axis(sets, pick[..., None], 1) + width * rng.standard_normal(
        (num_sets, num_points, dim))
    log_q = _log_mixture(z, sets, width)
    var = data_std ** 2 + width ** 2
    log_p = -np.sum(z ** 2, -1) / (2 * var) - 0.5 * dim * np.log(2 * np.pi * var)
    per_set = np.mean(log_q - log_p, axis=1)
    return float(per_set.mean()), float(per_set.std(ddof=1) / np.sqrt(num_sets))


def _log_mixture(z, centres, std):
    """log (1/C) Σ_c N(z; μ_c, std² I_d) for z (..., P, d), centres (..., C, d) -> (..., P),
    with ‖z − μ‖² = ‖z‖² + ‖μ‖² − 2 z·μ (float64)."""
    dim = z.shape[-1]
    sq = (np.sum(z ** 2, axis=-1)[..., :, None] + np.sum(centres ** 2, axis=-1)[..., None, :]
          - 2 * np.einsum('...pd,...cd->...pc', z, centres))
    return (logsumexp(-np.maximum(sq, 0.0) / (2 * std ** 2), axis=-1)
            - np.log(centres.shape[-2]) - 0.5 * dim * np.log(2 * np.pi * std ** 2))


def atomic_case(rng, dim, num_train, data_std, width, num_sets=4000, num_points=64):
    """y_i ~ N(0, τ² I_d), z | S ~ (1/N) Σ_i N(y_i, h² I_d), the same for every seed:
    I(z; S) by atomic_mi (with its standard error), I(z; ω | S) = 0."""
    def centres(rng, num_sets, num_seeds):
        return data_std * rng.standard_normal((num_sets, 1, num_train, dim))
    mi, se = atomic_mi(rng, dim, num_train, data_std, width, num_sets, num_points)
    return MixtureCase(f'atomic, h = {width:.3g}', width, centres, mi, se, 0.0)


def sample_case(rng, case, num_sets, num_seeds, num_samples):
    """Samples (K, R, M, d) of a MixtureCase: centres drawn once, then model r of set k
    draws M points, each from a uniformly chosen centre of its own plus std ξ."""
    centres = case.centres(rng, num_sets, num_seeds)
    centres = np.broadcast_to(centres, (num_sets, num_seeds) + centres.shape[2:])
    pick = rng.integers(0, centres.shape[2], (num_sets, num_seeds, num_samples))
    chosen = np.take_along_axis(centres, pick[..., None], 2)
    return chosen + case.std * rng.standard_normal(chosen.shape)


def expected_js(rng, case, num_sets, num_seeds, num_draws=100, num_points=64):
    """(E JS_K, its Monte-Carlo standard error): the K-set divergence of a MixtureCase's
    set-level conditionals q_k (the mixture of set k's R models, each 1/(RC) on its centres),
        JS_K = (1/K) Σ_k E_{z~q_k}[ log q_k(z) − log (1/K) Σ_j q_j(z) ],
    the target of the divergence interval of Î(z; S). Each of num_draws draws of centres
    gives one JS_K from num_points points z per set."""
    values = []
    for _ in range(num_draws):
        centres = case.centres(rng, num_sets, num_seeds)
        centres = centres.reshape(num_sets, -1, centres.shape[-1])      # (K, R·C, d)
        pick = rng.integers(0, centres.shape[1], (num_sets, num_points))
        z = np.take_along_axis(centres, pick[..., None], 1)
        z = z + case.std * rng.standard_normal(z.shape)                   # (K, P, d)
        log_q = _log_mixture(z.reshape(1, -1, z.shape[-1]), centres, case.std)
        log_q = log_q.reshape(num_sets, num_sets, num_points)             # [j, k, p]
        own = log_q[np.arange(num_sets), np.arange(num_sets)]
        values.append(np.mean(own - (logsumexp(log_q, axis=0) - np.log(num_sets))))
    values = np.asarray(values)
    return float(values.mean()), float(values.std(ddof=1) / np.sqrt(num_draws))
