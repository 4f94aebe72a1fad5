"""The transition from copying to creating, read from a sweep over the training-set size N
with R seeds per N (launch/sweep.py --seeds=R over configs/digits.py's get_sweep): each run
(one model: one N, one seed) has an eval.csv (evaluation during training,
diffgen/analysis/evaluation.py) with, per sampler and evaluated step, the fraction of its n
samples flagged by each memorisation criterion (docs/math.md §7):

  ratio     '<sampler>/memorisation_ratio'  d_1/d_2 < 1/3
  distance  '<sampler>/near_copy_rate'      d_1 < δ (δ fixed from the data: copies.py)

(a run without a criterion's column lacks that criterion). Per (sampler, criterion, N) the
final points are each seed s's rate p̂_s = k_s/n at its last evaluated step, k_s of n samples.

Pooled rate over the R_N seeds of N, and its 95 % percentile bootstrap over models and
samples (B replicates, default 2000, a fixed seed):
  p̄ = (1/R) Σ_s p̂_s;  replicate b: seeds s*_1..s*_R drawn from the R with replacement, then
  k*_j ~ Binomial(n, p̂_{s*_j}) for each, p̄*_b = (1/R) Σ_j k*_j/n;  interval: the order
  statistics p̄*_(⌈0.025B⌉), p̄*_(⌈0.975B⌉).
  Var(p̄*) = [(1/R) Σ_s (p̂_s − p̄)² + (1/R) Σ_s p̂_s(1 − p̂_s)/n] / R: the models' spread plus
  the samples'. With one seed (R = 1) only the samples are resampled (interval_over says
  'samples'): the interval then covers the sampling of x_T for that one model, not the model.
  The two-stage resampling counts the sampling noise twice when the seeds agree (once in
  their spread, once in the binomial draw), so it is conservative there; when models differ
  more than their samples it approaches the models' spread (Davison & Hinkley 1997, on
  hierarchical data).
  Every sample flagged (or none) in every seed gives the interval [1, 1] ([0, 0]).

EMM (effective model memorisation) as a logistic crossing: the model
  p(N) = 1 / (1 + exp(−(α + β log N)))
fitted by maximum likelihood to the binomial counts k of n of every (seed, N) point i,
  ℓ(α, β) = Σ_i [k_i η_i − n_i log(1 + e^{η_i})],  η_i = α + β log N_i,
in float64 (Newton steps on the concave ℓ for all bootstrap replicates at once:
fit_logistic; tested against scipy.optimize). The crossing is where p = τ
(analysis.e6.threshold, 0.9):
  log N* = (logit τ − α) / β,   logit τ = log(τ / (1 − τ)).
Its position against the swept range [N_min, N_max] follows the EMM's meaning (the largest N
that still memorises at τ), read from the fitted curve at the ends: fitted p < τ at every
swept N: "< smallest N"; p ≥ τ at every swept N: "> largest N"; else N* (a number, never
extrapolated). The maximum does not exist for
  - degenerate counts: all 0 (nothing flagged anywhere): "< smallest N"; all n: "> largest
    N"; no fit;
  - separated counts (separation()): every sample flagged below some N_c and none above it
    (or the mirror image): ℓ rises without bound as the curve steepens into a step at N_c,
    and the data place N* only between the two adjacent swept sizes N_a < N_b whose pooled
    rates lie on either side of τ: reported as 'between N_a and N_b', with no fit.
The 95 % interval is the percentile bootstrap of log N*: within each N draw its R_N seeds
with replacement, then each drawn point's k* ~ Binomial(n, p̂), and refit; a replicate whose
crossing is "< smallest N" counts as −∞, "> largest N" as +∞, a separated one as its interval
(its low end for the low bound, its high end for the high one); a bound at ±∞ is reported as
its flag. With one seed per N it covers the sampling of x_T only (interval_over).

The calibration of both criteria at each N (diffgen/analysis/copies.py sweep_calibration: the
rate at which each flags held-out images and noisy copies of the training images, on the data
alone, no model) is stored beside them where the sweep's collect step could read the data,
and drawn on the rate-against-N figure: the baseline that says how much of a criterion's
fall with N a copier that copies equally well at every N would show.

summarise() writes transition.json (the numbers a results page needs: `summary`'s layout),
transition_ratio.png and transition_curves.png.
"""
from __future__ import annotations

import json
import math
import os

import numpy as np
from scipy import special

from diffgen import figures, files
from diffgen.training.csv_log import read_csv

EVAL_CSV = 'eval.csv'
JSON = 'transition.json'
RATIO_FIGURE, CURVES_FIGURE = 'transition_ratio.png', 'transition_curves.png'
FORMAT = 2
CRITERIA = {'ratio': 'memorisation_ratio', 'distance': 'near_copy_rate'}   # criterion: column
RULES = {'ratio': 'd1/d2 < 1/3', 'distance': 'd1 < δ'}
LEVEL = 0.95
NUM_BOOT = 2000
BELOW, ABOVE, INSIDE, SEPARATED = '< smallest N', '> largest N', 'inside', 'separated'
OVER_MODELS, OVER_SAMPLES = 'models and samples', 'samples'


def counts(rates, n):
    """k = p̂ n of each rate p̂ of n samples (integers); ValueError if a rate is not a multiple
    of 1/n (n is not the number of samples it was measured on)."""
    rates, n = np.asarray(rates, np.float64), np.asarray(n, np.float64)
    k = np.round(rates * n)
    if not np.all(np.abs(rates * n - k) <= 1e-6 * np.maximum(n, 1)):
        raise ValueError(f'rates {rates.tolist()} are not multiples of 1/n for n = '
                         f'{n.tolist()}: n is not the number of samples evaluated')
    return k.astype(np.int64)


def percentile_interval(replicates, level=LEVEL):
    """(low, high): the order statistics θ*_(⌈Bq⌉) at q = (1 − level)/2 and (1 + level)/2 of B
    replicates (numpy's 'inverted_cdf' quantile; no interpolation, so ±∞ replicates are kept
    as they are)."""
    replicates = np.sort(np.asarray(replicates, np.float64))
    pick = lambda q: replicates[max(math.ceil(len(replicates) * q - 1e-9), 1) - 1]
    return pick((1 - level) / 2), pick((1 + level) / 2)


def bootstrap_means(k, n, num_boot=NUM_BOOT, rng=0, over_models=True):
    """B replicates of the pooled rate (1/R) Σ_j k*_j/n_j of R models (k, n: one entry per
    model): models drawn with replacement (over_models; else each model once), then
    k*_j ~ Binomial(n_j, k_j/n_j)."""
    rng = np.random.default_rng(rng)
    k, n = np.asarray(k, np.int64), np.broadcast_to(np.asarray(n, np.int64), np.shape(k))
    r = len(k)
    idx = (rng.integers(0, r, (num_boot, r)) if over_models
           else np.broadcast_to(np.arange(r), (num_boot, r)))
    drawn = rng.binomial(n[idx], k[idx] / n[idx])
    return np.mean(drawn / n[idx], axis=1)


def pooled_rate(k, n, num_boot=NUM_BOOT, seed=0, level=LEVEL):
    """{'rate': p̄, 'low', 'high', 'interval_over'} of R models' counts k of n (module
    docstring): over models and samples where R > 1, over samples alone where R = 1."""
    k = np.asarray(k, np.int64)
    n = np.broadcast_to(np.asarray(n, np.int64), k.shape)
    over_models = len(k) > 1
    low, high = percentile_interval(bootstrap_means(k, n, num_boot, seed, over_models), level)
    return {'rate': float(np.mean(k / n)), 'low': float(low), 'high': float(high),
            'interval_over': OVER_MODELS if over_models else OVER_SAMPLES}


def _log_likelihood(a, b, xc, k, n):
    """ℓ at centred parameters (a, b) of shape batch, points xc (M,), k and n (batch + (M,)),
    with the fitted p."""
    eta = a[..., None] + b[..., None] * xc
    return (k * eta - n * np.logaddexp(0.0, eta)).sum(-1), special.expit(eta)


def fit_logistic(log_n, k, n, max_iter=200, tol=1e-10):
    """(α, β, converged) of p = 1/(1 + exp(−(α + β log N))) fitted to counts k of n at the
    points log_n (M,) by maximum likelihood (module docstring), float64; k and n have shape
    batch + (M,) (a batch of data sets on the same points, e.g. bootstrap replicates, fitted
    at once); α, β and converged have shape batch. Newton steps θ ← θ + I⁻¹ U with
    U = Σ_i (k_i − n_i p_i) x_i, I = Σ_i n_i p_i (1 − p_i) x_i x_iᵀ in the centred
    parametrisation η = a + b (log N − mean log N), each halved until ℓ (concave) does not
    fall; converged where the last step moved θ by less than tol. The maximum exists only
    for counts neither degenerate nor separated (separation()): check first."""
    xc = np.asarray(log_n, np.float64)
    centre = xc.mean()
    xc = xc - centre
    k = np.asarray(k, np.float64)
    n = np.broadcast_to(np.asarray(n, np.float64), k.shape)
    a = special.logit((k.sum(-1) + 0.5) / (n.sum(-1) + 1.0))
    b = np.zeros_like(a)
    converged = np.zeros(a.shape, bool)
    for _ in range(max_iter):
        value, p = _log_likelihood(a, b, xc, k, n)
        w = n * p * (1 - p)
        i00, i01, i11 = w.sum(-1), (w * xc).sum(-1), (w * xc * xc).sum(-1)
        u0, u1 = (k - n * p).sum(-1), ((k - n * p) * xc).sum(-1)
        with np.errstate(divide='ignore', invalid='ignore'):
            det = i00 * i11 - i01 * i01
            da, db = (i11 * u0 - i01 * u1) / det, (i00 * u1 - i01 * u0) / det
        scale = np.where(converged | ~np.isfinite(da + db), 0.0, 1.0)
        da, db = np.nan_to_num(da), np.nan_to_num(db)
        for _ in range(60):                                       # halve until ℓ rises
            new = _log_likelihood(a + scale * da, b + scale * db, xc, k, n)[0]
            worse = ~(new >= value - 1e-12 * np.abs(value)) & (scale > 0)
            if not worse.any():
                break
            scale = np.where(worse, scale / 2, scale)
        a, b = a + scale * da, b + scale * db
        converged |= (np.maximum(np.abs(scale * da), np.abs(scale * db)) < tol) & (scale > 0)
        if converged.all():
            break
    return a - b * centre, b, converged


def separation(log_n, k, n, threshold):
    """(low, high) of log N* where counts k of n at the points log_n (M,; k of shape
    batch + (M,)) are separated, NaN elsewhere. Separated: some sample is flagged only at
    N ≤ N_c and some unflagged only at N ≥ N_c, every sample flagged below N_c and none above
    (or the mirror image, flagged at large N): the likelihood then rises without bound as the
    fitted curve steepens into a step at N_c, and the data place the crossing only between
    the two adjacent sizes whose pooled rates p̂ = Σk/Σn (over the points of each size) lie
    on either side of τ: (low, high) = (log N_{u−1}, log N_u), u the first size where p̂ is on
    the far side of τ (below it for a falling rate, at or above it for a rising one); as
    for a fit (_log_crossing), (−∞, −∞) where p̂ < τ at every size and (+∞, +∞) where p̂ ≥ τ
    at every size. Degenerate counts (all 0, all n) are not separated here."""
    k = np.asarray(k)
    n = np.broadcast_to(np.asarray(n), k.shape)
    log_n = np.asarray(log_n, np.float64)
    x = np.broadcast_to(log_n, k.shape)
    flagged, unflagged = k > 0, k < n
    top = lambda mask: np.max(np.where(mask, x, -np.inf), -1)
    bottom = lambda mask: np.min(np.where(mask, x, np.inf), -1)
    down = top(flagged) <= bottom(unflagged)     # flagged at small N only
    up = top(unflagged) <= bottom(flagged)       # flagged at large N only
    separated = (down | up) & flagged.any(-1) & unflagged.any(-1)
    sizes, where = np.unique(log_n, return_inverse=True)
    one_hot = (where[:, None] == np.arange(len(sizes))).astype(np.float64)
    rate = (k @ one_hot) / (n @ one_hot)                        # batch + (sizes,)
    far = np.where(down[..., None], rate < threshold, rate >= threshold)
    u = np.argmax(far, -1)                                      # first size on the far side
    ends = np.concatenate([[-np.inf], sizes])
    low, high = ends[u], sizes[u]
    for side, value in ((rate < threshold, -np.inf), (rate >= threshold, np.inf)):
        everywhere = np.all(side, -1)
        low, high = np.where(everywhere, value, low), np.where(everywhere, value, high)
    return np.where(separated, low, np.nan), np.where(separated, high, np.nan)


def _log_crossing(alpha, beta, threshold, log_min, log_max):
    """log N* of fitted curves (arrays), −∞ / +∞ where the crossing is outside the swept
    range: by the fitted p at its ends (module docstring)."""
    logit_tau = special.logit(threshold)
    ends = alpha[..., None] + beta[..., None] * np.array([log_min, log_max])
    below, above = np.all(ends < logit_tau, -1), np.all(ends >= logit_tau, -1)
    with np.errstate(divide='ignore', invalid='ignore'):
        log_star = np.clip((logit_tau - alpha) / beta, log_min, log_max)
    return np.where(below, -np.inf, np.where(above, np.inf, log_star))


def log_crossings(log_n, k, n, threshold, log_min, log_max):
    """(low, high, converged) of log N* for counts k (batch + (M,)) of n at the points log_n
    (M,): equal where the data determine a crossing (a fit, or −∞ for all 0 and +∞ for all
    n, outside the range), the separation() interval where they are separated; NaN and not
    converged where the fit failed."""
    k = np.asarray(k)
    n = np.broadcast_to(np.asarray(n), k.shape)
    low, high = separation(log_n, k, n, threshold)
    none, every = np.all(k == 0, -1), np.all(k == n, -1)
    fit = np.isnan(low) & ~none & ~every
    converged = np.ones(k.shape[:-1], bool)
    if fit.any():
        alpha, beta, ok = fit_logistic(log_n, k[fit], n[fit])
        star = np.where(ok, _log_crossing(alpha, beta, threshold, log_min, log_max), np.nan)
        low[fit], high[fit], converged[fit] = star, star, ok
    for mask, value in ((none, -np.inf), (every, np.inf)):
        low[mask], high[mask] = value, value
    return low, high, converged


def _flag(log_value, log_min, log_max):
    """(number or None, position) of a log N."""
    if log_value < log_min:
        return None, BELOW
    if log_value > log_max:
        return None, ABOVE
    return round(float(np.exp(log_value)), 2), INSIDE


def crossing(num_train, k, n, threshold=0.9, num_boot=NUM_BOOT, seed=0, level=LEVEL):
    """The EMM as the logistic crossing p(N*) = threshold, fitted to the points (one per seed
    and N: num_train, counts k of n, arrays of one length), with its percentile bootstrap
    interval (module docstring). A dict:
      n_star, low, high   numbers inside the swept range, else None;
      position            {'n_star', 'low', 'high'}: 'inside', '< smallest N', '> largest N',
                          or for n_star 'separated' (the counts determine no single N*);
      degenerate          None, 'all 0' or 'all 1' (no fit);
      separated           None, or [N_a, N_b] where the counts are separated (separation());
      alpha, beta         the fitted curve (None without a fit);
      threshold, range ([N_min, N_max]), interval_over ('models and samples' where some N
      has several seeds, else 'samples'), num_boot, num_boot_failed (replicates whose fit
      did not converge, left out), text (crossing_text).
    None with fewer than two distinct N. Separated bootstrap replicates enter the interval
    by their whole interval (its low end for the low bound, its high end for the high one)."""
    num_train = np.asarray(num_train, np.float64)
    k = np.asarray(k, np.int64)
    n = np.broadcast_to(np.asarray(n, np.int64), k.shape)
    sizes = np.unique(num_train)
    if len(sizes) < 2:
        return None
    log_n, (log_min, log_max) = np.log(num_train), np.log(sizes[[0, -1]])
    groups = [np.flatnonzero(num_train == s) for s in sizes]
    out = {'threshold': float(threshold), 'alpha': None, 'beta': None,
           'range': [int(sizes[0]), int(sizes[-1])], 'degenerate': None, 'separated': None,
           'interval_over': OVER_MODELS if any(len(g) > 1 for g in groups) else OVER_SAMPLES,
           'num_boot': int(num_boot), 'num_boot_failed': 0}
    if np.all(k == 0) or np.all(k == n):
        out['degenerate'] = 'all 0' if np.all(k == 0) else 'all 1'
        flag = BELOW if out['degenerate'] == 'all 0' else ABOVE
        out.update(n_star=None, low=None, high=None,
                   position={'n_star': flag, 'low': flag, 'high': flag})
        out['text'] = crossing_text(out)
        return out
    gap = separation(log_n, k, n, threshold)
    if np.isnan(gap[0]):
        alpha, beta, ok = fit_logistic(log_n, k, n)
        if not ok:
            raise ArithmeticError(f'the logistic fit to k = {k.tolist()} of n = {n.tolist()} '
                                  f'at N = {num_train.tolist()} did not converge')
        out.update(alpha=float(alpha), beta=float(beta))
        n_star, at = _flag(_log_crossing(alpha, beta, threshold, log_min, log_max),
                           log_min, log_max)
    elif np.isfinite(gap).all():
        out['separated'] = [round(float(np.exp(g))) for g in gap]
        n_star, at = None, SEPARATED
    else:
        out['separated'] = [None if np.isinf(g) else round(float(np.exp(g))) for g in gap]
        n_star, at = None, BELOW if gap[1] == -np.inf else ABOVE
    rng = np.random.default_rng(seed)
    idx = np.concatenate([g[rng.integers(0, len(g), (num_boot, len(g)))] if len(g) > 1
                          else np.broadcast_to(g, (num_boot, 1)) for g in groups], axis=1)
    drawn = rng.binomial(n[idx], k[idx] / n[idx])
    lows, highs, ok = log_crossings(log_n[idx[0]], drawn, n[idx], threshold, log_min, log_max)
    failed = ~ok | np.isnan(lows)
    if failed.all():
        raise ArithmeticError(f'no bootstrap replicate of k = {k.tolist()} could be fitted')
    low, high = percentile_interval(lows[~failed], level)[0], \
        percentile_interval(highs[~failed], level)[1]
    (lo, at_lo), (hi, at_hi) = _flag(low, log_min, log_max), _flag(high, log_min, log_max)
    out.update(n_star=n_star, low=lo, high=hi,
               position={'n_star': at, 'low': at_lo, 'high': at_hi},
               num_boot_failed=int(np.sum(failed)))
    out['text'] = crossing_text(out)
    return out


def bound_text(c, key):
    """c[key] ('n_star', 'low' or 'high') of a crossing() as text: the N rounded ('181'), its
    flag with the range's end ('< smallest N (16)', '> largest N (1541)'), or for separated
    counts 'between 32 and 64'; None for no crossing."""
    if c is None:
        return None
    position = c['position'][key]
    if position == INSIDE:
        return f'{c[key]:.0f}'
    if position == SEPARATED:
        return 'between {} and {}'.format(*c['separated'])
    return f'{position} ({c["range"][0] if position == BELOW else c["range"][1]})'


def crossing_text(c):
    """'N* = 181 [128, 256]' of a crossing(); a bound outside the swept range as '< smallest
    N (16)' / '> largest N (1541)', never a number; 'no fit ...' for None."""
    if c is None:
        return 'no fit (fewer than two training-set sizes)'
    star = bound_text(c, 'n_star')
    text = f'N* = {star}' if c['position']['n_star'] == INSIDE else f'N* {star}'
    if c['degenerate']:
        flagged = 'no sample' if c['degenerate'] == 'all 0' else 'every sample'
        return f'{text} ({flagged} flagged at every N: no fit)'
    if c['separated']:
        text += ' (separated counts: no fit)'
    return f'{text} [{bound_text(c, "low")}, {bound_text(c, "high")}]'


def read_curves(sweep_dir, runs):
    """{sampler: {criterion: {N: {seed: (steps array, rate array)}}}} from the runs' eval.csv
    files, one curve per column '<sampler>/<CRITERIA[criterion]>' at the steps where its
    evaluator ran (another evaluator's steps leave its cell empty); runs: (run name, N, seed)
    triples (missing files are skipped)."""
    curves = {}
    columns = {column: criterion for criterion, column in CRITERIA.items()}
    for name, num_train, seed in runs:
        path = os.path.join(sweep_dir, name, EVAL_CSV)
        if not files.exists(path):
            continue
        rows = read_csv(path)
        for column in (rows[0] if rows else ()):
            sampler, _, metric = column.partition('/')
            ran = [r for r in rows if r[column] != '']
            if metric not in columns or not ran:
                continue
            per_n = curves.setdefault(sampler, {}).setdefault(columns[metric], {})
            per_n.setdefault(int(num_train), {})[int(seed)] = (
                np.array([int(r['step']) for r in ran]),
                np.array([float(r[column]) for r in ran]))
    return curves


def _step_curves(per_seed):
    """{'steps', 'mean', 'min', 'max', 'seeds'} of one N's seeds' curves ({seed: (steps,
    rates)}): mean, min and max over the seeds at the steps every seed has."""
    steps = sorted(set.intersection(*(set(s.tolist()) for s, _ in per_seed.values())))
    at = np.array([rates[np.searchsorted(s, steps)] for s, rates in
                   (per_seed[seed] for seed in sorted(per_seed))]).reshape(len(per_seed), -1)
    return {'steps': steps, 'mean': at.mean(0).tolist(), 'min': at.min(0).tolist(),
            'max': at.max(0).tolist(),
            'seeds': [{'seed': seed, 'steps': per_seed[seed][0].tolist(),
                       'rate': per_seed[seed][1].tolist()} for seed in sorted(per_seed)]}


def series(per_n, num_samples, threshold=0.9, num_boot=NUM_BOOT, seed=0):
    """The numbers of one sampler and criterion ({N: {seed: (steps, rates)}}, rates of
    num_samples samples): per N the final points of its seeds (their last evaluated step),
    their pooled rate and bootstrap interval, and the step curves; the crossing over all the
    (seed, N) points. A seed whose final rate is not finite is left out and listed in
    'nonfinite' as [N, seed]."""
    out = {key: [] for key in ('num_train', 'rate', 'low', 'high', 'interval_over', 'num_seeds',
                               'seeds', 'seed_rates', 'final_step', 'nonfinite', 'curves')}
    points_n, points_k = [], []
    for num_train in sorted(per_n):
        out['curves'].append({'num_train': num_train, **_step_curves(per_n[num_train])})
        finals = {}
        for s, (steps, rates) in sorted(per_n[num_train].items()):
            if np.isfinite(rates[-1]):
                finals[s] = (int(steps[-1]), float(rates[-1]))
            else:
                out['nonfinite'].append([num_train, s])
        if not finals:
            continue
        k = counts([r for _, r in finals.values()], num_samples)
        pooled = pooled_rate(k, num_samples, num_boot, seed)
        for key in ('rate', 'low', 'high', 'interval_over'):
            out[key].append(pooled[key])
        out['num_train'].append(num_train)
        out['num_seeds'].append(len(finals))
        out['seeds'].append(list(finals))
        out['final_step'].append([step for step, _ in finals.values()])
        out['seed_rates'].append([r for _, r in finals.values()])
        points_n += [num_train] * len(k)
        points_k += k.tolist()
    out['crossing'] = (crossing(points_n, points_k, num_samples, threshold, num_boot, seed)
                       if points_k else None)
    return out


def summary(curves, num_samples, threshold=0.9, num_boot=NUM_BOOT, seed=0, calibration=None):
    """The sweep's transition as JSON-able numbers (transition.json):
      format, threshold, level, num_samples, num_boot, bootstrap_seed,
      criteria: {criterion: {column, rule}},
      samplers: {sampler: {criterion: series(): {
          num_train: [N], rate: [pooled p̄], low: [..], high: [..] (95 % bootstrap),
          interval_over: ['models and samples' | 'samples'], num_seeds: [R_N],
          seeds: [[seed]], seed_rates: [[p̂_s]], final_step: [[step]], nonfinite: [[N, seed]],
          crossing: crossing() (N*, low, high, position flags, text, ...) or None,
          curves: [{num_train, steps, mean, min, max, seeds: [{seed, steps, rate}]}]}}},
      points: {sampler: {num_train, ratio, low, high, emm: {emm, low, high}}}: the ratio
          criterion's pooled rates and crossing (as text: '181', '< smallest N (16)') in the
          layout diffgen/docs.py's transition_points reads,
      calibration: copies.sweep_calibration()'s list as given ([] where there is none)."""
    out = {'format': FORMAT, 'threshold': float(threshold), 'level': LEVEL,
           'num_samples': int(num_samples), 'num_boot': int(num_boot), 'bootstrap_seed': seed,
           'criteria': {c: {'column': CRITERIA[c], 'rule': RULES[c]} for c in CRITERIA},
           'samplers': {}, 'points': {}, 'calibration': list(calibration or [])}
    for sampler in sorted(curves):
        out['samplers'][sampler] = {
            c: series(curves[sampler][c], num_samples, threshold, num_boot, seed)
            for c in CRITERIA if c in curves[sampler]}
        ratio = out['samplers'][sampler].get('ratio')
        if ratio and ratio['num_train']:
            c = ratio['crossing']
            out['points'][sampler] = {
                'num_train': ratio['num_train'], 'ratio': ratio['rate'], 'low': ratio['low'],
                'high': ratio['high'],
                'emm': {'emm': bound_text(c, 'n_star'), 'low': bound_text(c, 'low'),
                        'high': bound_text(c, 'high')}}
    return out


def _colors():
    return figures.pyplot().rcParams['axes.prop_cycle'].by_key()['color']


def plot_rate_panel(ax, s, color, label, offset=1.0):
    """One series() on ax against N (log axis): each seed's final rate as a faint point, the
    pooled rate with its bootstrap interval, the fitted logistic and N* with its interval
    (a shaded span, to the range's end where a bound is outside it). offset multiplies N to
    keep the samplers' bars apart."""
    sizes = np.asarray(s['num_train'], np.float64)
    for num_train, rates in zip(sizes, s['seed_rates']):
        ax.scatter([num_train * offset] * len(rates), rates, color=color, alpha=0.35, s=16,
                   linewidths=0)
    rate = np.asarray(s['rate'])
    err = np.maximum([rate - np.asarray(s['low']), np.asarray(s['high']) - rate], 0.0)
    c = s['crossing']
    ax.errorbar(sizes * offset, rate, yerr=err, fmt='o', color=color, capsize=3, ms=4,
                label=f'{label}: EMM {crossing_text(c)}')
    if c is None or c['alpha'] is None:
        return
    grid = np.geomspace(sizes[0], sizes[-1], 200)
    ax.plot(grid, special.expit(c['alpha'] + c['beta'] * np.log(grid)), '--', color=color, lw=1)
    if c['n_star'] is not None:
        ax.axvline(c['n_star'], color=color, ls=':', lw=1.2)
    ends = {BELOW: sizes[0], ABOVE: sizes[-1]}
    low = c['low'] if c['low'] is not None else ends[c['position']['low']]
    high = c['high'] if c['high'] is not None else ends[c['position']['high']]
    ax.axvspan(low, high, color=color, alpha=0.08)


def _rate_axes(ax, threshold, ylabel):
    ax.axhline(threshold, ls=':', c='gray', lw=1)
    ax.set_xscale('log', base=2)
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel('training-set size N')
    ax.set_ylabel(ylabel)


def plot_calibration(ax, calibration, criterion):
    """The criterion's calibration against N in grey (copies.sweep_calibration's list): the
    rate it flags noisy copies of training images at each RMS σ (solid, darker for smaller
    σ) and held-out images (dashed)."""
    if not calibration:
        return
    sizes = [c['num_train'] for c in calibration]
    sigmas = [n['sigma'] for n in calibration[0]['noisy']]
    for i, sigma in enumerate(sigmas):
        ax.plot(sizes, [next((n[criterion] for n in c['noisy'] if n['sigma'] == sigma),
                             math.nan) for c in calibration], '-', marker='x', ms=3, lw=0.8,
                color=str(0.25 + 0.45 * i / max(len(sigmas) - 1, 1)),
                label=f'data alone: training image + noise σ={sigma:g}')
    if all(c['heldout'] is not None for c in calibration):
        ax.plot(sizes, [c['heldout'][criterion] for c in calibration], '--', marker='x', ms=3,
                lw=0.8, color='0.5', label='data alone: held-out images')


def plot_ratio_against_n(result, path):
    """The rate against N (log axis) at the last step, one panel per criterion, one colour
    per sampler: seeds faint, pooled means with 95 % bootstrap bars, the fitted logistic, N*
    and its interval (dotted line, shaded span); the threshold dotted grey; the criterion's
    calibration on the data alone in grey (plot_calibration)."""
    criteria = [c for c in CRITERIA if any(c in per for per in result['samplers'].values())]
    fig, axes = figures.subplots(len(criteria), width=5.6, height=4.4)
    for ax, criterion in zip(axes, criteria):
        samplers = [m for m in result['samplers'] if criterion in result['samplers'][m]]
        for i, (m, color) in enumerate(zip(samplers, _colors())):
            s = result['samplers'][m][criterion]
            if s['num_train']:
                plot_rate_panel(ax, s, color, m, 2 ** (0.06 * (i - (len(samplers) - 1) / 2)))
        plot_calibration(ax, result.get('calibration'), criterion)
        _rate_axes(ax, result['threshold'], f'fraction flagged ({RULES[criterion]})')
        ax.set_title(f'{criterion} criterion')
        ax.legend(fontsize=7, loc='best')
    return figures.save(fig, path, 'Memorisation at the end of training: pooled over seeds, '
                                   '95% bootstrap over models and samples')


def plot_curves(result, path):
    """The rate against training step, one panel per sampler (columns) and criterion (rows),
    one line per N: the mean over its seeds, a band from their min to their max."""
    plt = figures.pyplot()
    samplers = list(result['samplers'])
    criteria = [c for c in CRITERIA if any(c in per for per in result['samplers'].values())]
    fig, axes = plt.subplots(len(criteria), len(samplers), squeeze=False,
                             figsize=(4.5 * len(samplers), 3.8 * len(criteria)))
    sizes = sorted({c['num_train'] for per in result['samplers'].values()
                    for s in per.values() for c in s['curves']})
    color = {n: plt.cm.viridis(i / max(len(sizes) - 1, 1)) for i, n in enumerate(sizes)}
    for row, criterion in zip(axes, criteria):
        for ax, m in zip(row, samplers):
            for curve in result['samplers'][m].get(criterion, {'curves': []})['curves']:
                n, seeds = curve['num_train'], len(curve['seeds'])
                ax.plot(curve['steps'], curve['mean'], marker='.', color=color[n],
                        label=f'N = {n} ({seeds} seed{"s" * (seeds > 1)})')
                ax.fill_between(curve['steps'], curve['min'], curve['max'], color=color[n],
                                alpha=0.15, lw=0)
            ax.set_title(f'{m}, {criterion} criterion ({RULES[criterion]})', fontsize=9)
            ax.set_ylim(-0.03, 1.03)
            ax.set_xlabel('training step')
            ax.set_ylabel('fraction flagged')
    axes[0][0].legend(fontsize=7)
    return figures.save(fig, path, 'Memorisation during training: mean over seeds, band from '
                                   'their min to their max')


def summarise(sweep_dir, runs, num_samples, threshold=0.9, num_boot=NUM_BOOT, seed=0,
              calibration=None):
    """Reads the sweep's eval.csv files (runs: (run name, N, seed) triples), writes
    transition.json (summary(), with calibration: copies.sweep_calibration's list, or a
    callable returning it, called only when some run has evaluations), transition_ratio.png
    and transition_curves.png into sweep_dir; returns summary() (None if no run has
    evaluations)."""
    curves = read_curves(sweep_dir, runs)
    if not curves:
        return None
    if callable(calibration):
        calibration = calibration()
    result = summary(curves, num_samples, threshold, num_boot, seed, calibration)
    files.write_text(os.path.join(sweep_dir, JSON), json.dumps(result, indent=1))
    plot_ratio_against_n(result, os.path.join(sweep_dir, RATIO_FIGURE))
    plot_curves(result, os.path.join(sweep_dir, CURVES_FIGURE))
    return result
