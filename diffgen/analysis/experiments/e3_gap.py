"""E3, the slight difference between the trained network and the optimum (docs/math.md §8).

At each t of the DDIM grid (analysis.sampler_steps steps), on three kinds of points x:
forward-process points x = a_t y + σ_t ε of n training images y and of the n held-out images
(the same ε for both), and the states x_t of the trained model's own DDIM (η = 0) trajectories
from ctx.x_T, three measures of ε_θ against ε*:

    x₀-gap(t)  = E‖x̂₀^θ − x̂₀*‖² / D,   x̂₀ = clip((x − σ_t ε)/a_t, lo, hi)
    cos(t)     = E cos(ε_θ, ε*),        cos(u, v) = u·v / (‖u‖ ‖v‖)
    ε-ratio(t) = E‖ε_θ − ε*‖² / E‖ε*‖²  (metrics.gap)

with [lo, hi] the training set's range. x̂₀* = Σ_i w_i y_i lies in it, so the clip leaves it
as it is (up to round-off) and only brings x̂₀^θ nearer to it: x₀-gap ≤ (hi − lo)², and where
x̂₀^θ is in range x₀-gap = (σ_t²/a_t²) E‖ε_θ − ε*‖²/D. The ε-ratio is informative only where
E‖ε*‖²/D ≤ INFORMATIVE: off the training set at small t, ε* ≈ ε + a_t(y' − y_n)/σ_t, so
‖ε*‖²/D ≈ 1 + (a_t d₁/σ_t)² is huge and any bounded network (0 included) scores ≈ 1.
Along the trajectories also the entropy H(w) and the largest weight max_i w_i of the optimal
posterior w_i(x_t, t) over the training images (optimal_stats): H = log N for a uniform
posterior, 0 for a one-hot one. Each set is one jitted lax.scan over t.

Baselines (BASELINES, diffgen/optimum/references.py): the same x₀-gap and cosine with the
identity denoiser (ε̂ = 0, x̂₀ = x/a_t) and the Gaussian denoiser of the training set's mean
and covariance in the network's place, at the same points. Where a trivial denoiser is as
close to ε* as the network, the gap says nothing about the network: the text names the t
where the network's x₀-gap differs from the nearer baseline's by more than a factor
BASELINE_FACTOR (the informative range).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from diffgen.analysis import metrics
from diffgen import figures
from diffgen.diffusion import samplers
from diffgen.diffusion.conversions import diffuse, x0_from_eps
from diffgen.optimum import references
from diffgen.optimum.optimal import optimal_eps, optimal_stats
from diffgen.analysis.experiment import Experiment, register
from diffgen.analysis.report import Section, markdown_table, number

KEY, TITLE = 'e3', 'E3: the gap between the network and the optimum'
_NOISE_KEY = 21                       # ctx.rng fold_in constant of E3's forward-process noise
TABLE_TIMES = (1, 10, 50, 100, 250, 500, 1000)   # per 1000 steps: rows of the table
SETS = {'train': 'train', 'heldout': 'held-out', 'trajectory': 'trajectory'}
INFORMATIVE = 2.0  # the ε-ratio is shown where E‖ε*‖²/D ≤ this: the pull (a_t d₁/σ_t)² of ε*
                   # towards the nearest training image at most the noise's variance
ONE_HOT = 0.9      # the text states the largest t where the posterior's largest weight exceeds this
TERMS = ('sq_diff', 'sq_opt', 'sq_x0', 'dot', 'sq_model')   # point_terms, in order
BASELINES = ('identity', 'gaussian')
BASELINE_FACTOR = 2.0   # the network's x₀-gap is informative where it differs from the
                        # nearer baseline's by more than this factor


def point_terms(x, t, eps, eps_star, schedule, data_range):
    """Per example (each (B,)) at x (B, ...) and one t: ‖ε_θ − ε*‖², ‖ε*‖², ‖x̂₀^θ − x̂₀*‖²
    with x̂₀ = clip((x − σ_t ε)/a_t, lo, hi), ε_θ·ε* and ‖ε_θ‖² (the names of TERMS)."""
    lo, hi = data_range
    x0 = lambda e: jnp.clip(x0_from_eps(x, eps=e, a=schedule.a[t], sigma=schedule.sigma[t]),
                            lo, hi)
    total = lambda v: v.sum(axis=tuple(range(1, x.ndim)))
    sq_diff, sq_opt = metrics.squared_errors(eps, eps_star)
    return (sq_diff, sq_opt, total(jnp.square(x0(eps) - x0(eps_star))),
            total(eps * eps_star), total(eps * eps))


@jax.jit
def trajectory_gap(network, rows, schedule, x_T, pairs, data_range, baselines=()):
    """Runs DDIM (η = 0) with the network over pairs (t, t') and records, per step and
    sample, the point_terms and (H(w), max_i w_i) at x_t, then the point_terms of each
    baseline denoiser in the network's place at the same x_t: each (S, B); also returns x_0."""
    def step(x, ts):
        t, t_next = ts
        tt = jnp.full((x.shape[0],), t, jnp.int32)
        eps = network(x, tt)
        eps_star = optimal_eps(x, tt, rows=rows, schedule=schedule)
        entropy, max_weight = optimal_stats(x, tt, rows=rows, schedule=schedule)
        x_next = samplers.ddim_step(x, eps, t=t, t_next=t_next, schedule=schedule)  # eta = 0
        more = [v for b in baselines
                for v in point_terms(x, t, b(x, tt), eps_star, schedule, data_range)]
        return x_next, (*point_terms(x, t, eps, eps_star, schedule, data_range), entropy,
                        max_weight, *more)

    return jax.lax.scan(step, x_T, pairs)


@jax.jit
def forward_gap(network, rows, schedule, y, noise, ts, data_range):
    """The point_terms, each (S, B), at x = a_t y + σ_t noise for each t in ts."""
    def step(_, t):
        tt = jnp.full((y.shape[0],), t, jnp.int32)
        x = diffuse(y, eps=noise, a=schedule.a[t], sigma=schedule.sigma[t])
        return None, point_terms(x, t, network(x, tt),
                                 optimal_eps(x, tt, rows=rows, schedule=schedule), schedule,
                                 data_range)

    return jax.lax.scan(step, None, ts)[1]


def summarise(terms, dim):
    """Per t, from the point_terms (each (S, B)): x₀-gap = Σ_b ‖x̂₀^θ − x̂₀*‖²_b / (B D),
    cos = mean_b cos(ε_θ, ε*)_b (NaN where ε_θ = 0), ε-ratio = metrics.gap, and
    E‖ε*‖²/D; NumPy float64."""
    sq_diff, sq_opt, sq_x0, dot, sq_model = (np.asarray(v, np.float64) for v in terms)
    with np.errstate(invalid='ignore', divide='ignore'):
        cosine = dot / np.sqrt(sq_model * sq_opt)
    return {'x0_gap': sq_x0.mean(axis=-1) / dim, 'cosine': cosine.mean(axis=-1),
            'gap': metrics.gap(sq_diff, sq_opt), 'eps_opt_sq': sq_opt.mean(axis=-1) / dim}


def _batched(fn, arrays, batch_size):
    """fn over batches of the leading axis of arrays; outputs joined along axis 1 (samples)."""
    outs = [fn(*(x[i:i + batch_size] for x in arrays))
            for i in range(0, len(arrays[0]), batch_size)]
    return [np.concatenate([np.asarray(o[j]) for o in outs], axis=1) for j in range(len(outs[0]))]


def measure(ctx, cfg):
    """The numbers of E3: t (descending, the DDIM grid without 0); per set (SETS) the
    summarise measures as '<measure>_<set>'; the mean entropy and largest weight of the
    optimal posterior along the model's trajectories; the data range, the x₀-gap's bound and
    the E‖ε*‖²/D up to which the ε-ratio is shown (INFORMATIVE)."""
    del cfg  # E3 has no settings
    T, batch = ctx.schedule.num_timesteps, ctx.config.analysis.batch_size
    pairs = samplers.step_pairs(T, ctx.config.analysis.sampler_steps)
    ts = pairs[:, 0]
    network, rows = ctx.network(), ctx.train_rows
    train = ctx.dataset.train
    lo, hi = float(train.min()), float(train.max())
    data_range = (jnp.float32(lo), jnp.float32(hi))
    dim = int(np.prod(ctx.dataset.image_shape))
    baselines = baseline_denoisers(ctx)
    size = len(TERMS)
    outs = _batched(lambda x: trajectory_gap(network, rows, ctx.schedule, x, pairs, data_range,
                                             tuple(baselines.values()))[1], [ctx.x_T], batch)
    terms, (entropy, max_weight) = outs[:size], outs[size:size + 2]
    measured = {'trajectory': summarise(terms, dim)}
    for i, name in enumerate(baselines):
        start = size + 2 + i * size
        measured[f'trajectory_{name}'] = summarise(outs[start:start + size], dim)
    numbers = {'t': np.asarray(ts), 'entropy': entropy.mean(axis=1),
               'max_weight': max_weight.mean(axis=1),
               'log_num_train': float(np.log(rows.num_rows)), 'data_range': [lo, hi],
               'x0_gap_bound': (hi - lo) ** 2, 'informative_eps_opt_sq': INFORMATIVE}
    sets = {'train': train}
    if len(ctx.dataset.heldout_images):
        sets = {'train': train[:len(ctx.dataset.heldout_images)], 'heldout': ctx.dataset.heldout}
    n = min(len(y) for y in sets.values())
    noise = np.asarray(jax.random.normal(jax.random.fold_in(ctx.rng, _NOISE_KEY),
                                         (n,) + ctx.dataset.image_shape))
    for name, y in sets.items():
        for who, denoiser in {'': network, **baselines}.items():
            measured[f'{name}_{who}' if who else name] = summarise(_batched(
                lambda y, e: forward_gap(denoiser, rows, ctx.schedule, y, e, ts, data_range),
                [y[:n], noise], batch), dim)
    for name in SETS:
        for measure_name, values in measured.get(name, {}).items():
            numbers[f'{measure_name}_{name}'] = values
        for b in baselines:
            for measure_name in ('x0_gap', 'cosine'):
                if f'{name}_{b}' in measured:
                    numbers[f'{measure_name}_{name}_{b}'] = measured[f'{name}_{b}'][measure_name]
    numbers['baselines'] = list(baselines)
    return numbers


def baseline_denoisers(ctx):
    """{name: denoiser} of BASELINES on ctx's training set."""
    return {'identity': references.identity_denoiser(),
            'gaussian': ctx.gaussian()}


def informative(numbers, name):
    """Per t, whether the network's x₀-gap on set `name` differs from the nearer
    baseline's by more than BASELINE_FACTOR (either way)."""
    net = np.asarray(numbers[f'x0_gap_{name}'], np.float64)
    base = [np.asarray(numbers[f'x0_gap_{name}_{b}'], np.float64)
            for b in numbers.get('baselines', ()) if f'x0_gap_{name}_{b}' in numbers]
    if not base:
        return np.ones_like(net, bool)
    with np.errstate(divide='ignore', invalid='ignore'):
        nearest = np.min(np.abs(np.log(net[None] / np.stack(base))), axis=0)
    return np.nan_to_num(nearest, nan=0.0) > np.log(BASELINE_FACTOR)


def closer_farther(numbers, name):
    """Per t, (closer, farther): the network's x₀-gap on set `name` is below the smaller
    baseline gap divided by BASELINE_FACTOR (nearer ε* than every trivial denoiser), or above
    it times BASELINE_FACTOR (farther from ε* than the best trivial denoiser)."""
    net = np.asarray(numbers[f'x0_gap_{name}'], np.float64)
    best = np.min([np.asarray(numbers[f'x0_gap_{name}_{b}'], np.float64)
                   for b in numbers['baselines']], axis=0)
    return net * BASELINE_FACTOR < best, net > BASELINE_FACTOR * best


def _sets(numbers):
    return [s for s in SETS if f'gap_{s}' in numbers]


def _informative(numbers, name):
    """Where (per t) the ε-ratio of a set is informative: E‖ε*‖²/D ≤ INFORMATIVE."""
    return np.asarray(numbers[f'eps_opt_sq_{name}']) <= numbers['informative_eps_opt_sq']


def _figure(ctx, numbers):
    fig, (ax_x0, ax_cos, ax_ratio, ax_post) = figures.subplots(4, width=4.6, height=4.0)
    t = numbers['t']
    labels = {'train': 'forward process, training images',
              'heldout': 'forward process, held-out images',
              'trajectory': "the model's own DDIM trajectories"}
    styles = {'identity': ':', 'gaussian': '--'}
    for i, name in enumerate(_sets(numbers)):
        color = f'C{i}'
        ax_x0.plot(t, numbers[f'x0_gap_{name}'], label=labels[name], marker='.', markersize=3,
                   color=color)
        ax_cos.plot(t, numbers[f'cosine_{name}'], label=labels[name], marker='.', markersize=3,
                    color=color)
        for b in numbers.get('baselines', ()):
            for ax, key in ((ax_x0, 'x0_gap'), (ax_cos, 'cosine')):
                if f'{key}_{name}_{b}' in numbers and not (key == 'cosine' and b == 'identity'):
                    ax.plot(t, numbers[f'{key}_{name}_{b}'], linestyle=styles[b], color=color,
                            label=f'{b} baseline, {SETS[name]}', linewidth=1)
        ratio = np.where(_informative(numbers, name), numbers[f'gap_{name}'], np.nan)
        ax_ratio.plot(t, ratio, label=labels[name], marker='.', markersize=3)
    ax_x0.axhline(numbers['x0_gap_bound'], color='gray', linestyle=':',
                  label='bound (hi − lo)²')
    for ax, ylabel, title in (
            (ax_x0, 'E‖x̂₀^θ − x̂₀*‖² / D', 'x₀-space gap'),
            (ax_cos, 'mean cos(ε_θ, ε*)', 'cosine between network and optimum'),
            (ax_ratio, 'E‖ε_θ − ε*‖² / E‖ε*‖²',
             f'ε-space ratio where E‖ε*‖²/D ≤ {numbers["informative_eps_opt_sq"]:g}')):
        ax.set_xscale('log')
        ax.set_xlabel('t')
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.legend(fontsize=7)
    ax_x0.set_yscale('log')
    ax_ratio.set_yscale('log')
    ax_post.plot(t, numbers['entropy'], color='tab:blue', label='entropy H(w)')
    ax_post.axhline(numbers['log_num_train'], color='tab:blue', linestyle=':',
                    label='log N (uniform)')
    ax_post.set_xscale('log')
    ax_post.set_xlabel('t')
    ax_post.set_ylabel('entropy H(w) (nats)', color='tab:blue')
    ax_weight = ax_post.twinx()
    ax_weight.plot(t, numbers['max_weight'], color='tab:red', label='largest weight max w')
    ax_weight.set_ylim(0, 1.02)
    ax_weight.set_ylabel('largest weight max_i w_i', color='tab:red')
    lines = ax_post.get_legend_handles_labels()
    more = ax_weight.get_legend_handles_labels()
    ax_post.legend(lines[0] + more[0], lines[1] + more[1], fontsize=7, loc='center left')
    ax_post.set_title("optimal posterior along the model's trajectories")
    name = 'e3_gap.png'
    figures.save(fig, ctx.figure_path(name), 'E3: the slight difference (sample means per t)')
    return name


def _table(numbers, T):
    """The rows of the t nearest TABLE_TIMES (per 1000 steps), t ascending; the ε-ratio is
    '–' where it is not informative."""
    t, sets = numbers['t'], _sets(numbers)
    rows = sorted({int(np.argmin(np.abs(t - max(1, round(s * T / 1000))))) for s in TABLE_TIMES},
                  key=lambda i: t[i])
    informative = {s: _informative(numbers, s) for s in sets}
    base = numbers.get('baselines', ())
    header = ['t', *(f'x₀-gap, {SETS[s]}' for s in sets),
              *(f'x₀-gap {" / ".join(base)}, {SETS[s]}' for s in sets if base),
              *(f'cos, {SETS[s]}' for s in sets),
              *(f'ε-ratio, {SETS[s]}' for s in sets), 'H(w)', 'max w']
    return markdown_table(header, [
        [t[i], *(number(numbers[f'x0_gap_{s}'][i], '.3g') for s in sets),
         *(' / '.join(number(numbers[f'x0_gap_{s}_{b}'][i], '.3g') for b in base)
           for s in sets if base),
         *(number(numbers[f'cosine_{s}'][i]) for s in sets),
         *(number(numbers[f'gap_{s}'][i] if informative[s][i] else None, '.3g') for s in sets),
         number(numbers['entropy'][i]), number(numbers['max_weight'][i])] for i in rows])


def _where(t, mask):
    """The t (descending array) where mask holds, in words."""
    if mask.all():
        return 'at every t'
    if not mask.any():
        return 'at no t'
    if mask[:int(np.argmin(mask))].sum() == mask.sum():   # a run from the largest t down
        return f'for t ≥ {t[int(np.argmin(mask)) - 1]}'
    shown = t[mask]
    return f'at {mask.sum()} of the {len(t)} t (from {shown.min()} to {shown.max()})'


def render(numbers, ctx):
    name = _figure(ctx, numbers)
    t, last, sets = numbers['t'], -1, _sets(numbers)   # t descends: index -1 is the smallest t
    lo, hi = numbers['data_range']
    listed = lambda key, spec: ', '.join(f'{number(numbers[f"{key}_{s}"][last], spec)} '
                                         f'({SETS[s]})' for s in sets)
    text = (f'Network against optimum on forward-process points and along {len(ctx.x_T)} DDIM '
            f'trajectories of the trained model ({ctx.config.analysis.sampler_steps} steps): '
            f'x₀-gap = E‖x̂₀^θ − x̂₀*‖²/D with x̂₀ = (x − σ_t ε)/a_t clipped to the data range '
            f'[{number(lo, ".3g")}, {number(hi, ".3g")}] (at most '
            f'{number(numbers["x0_gap_bound"], ".3g")}); cos = mean cos(ε_θ, ε*); ε-ratio = '
            f'E‖ε_θ − ε*‖²/E‖ε*‖², shown only where E‖ε*‖²/D ≤ '
            f'{numbers["informative_eps_opt_sq"]:g} ('
            f'elsewhere ‖ε*‖²/D ≈ 1 + (a_t d₁/σ_t)² is large and a network that outputs 0 '
            f'scores ≈ 1); H(w) and max w: the optimal posterior over the N = '
            f'{ctx.train_rows.num_rows} training images at the trajectory\'s states (sample '
            f'means).\n\n{_table(numbers, ctx.schedule.num_timesteps)}\n\n'
            f'At t = {t[last]} the x₀-gap is {listed("x0_gap", ".3g")} and the cosine '
            f'{listed("cosine", ".3f")}. The ε-ratio is informative ' +
            '; '.join(f'on {SETS[s]} points {_where(t, _informative(numbers, s))}'
                      for s in sets))
    largest = max(sets, key=lambda s: np.max(numbers[f'eps_opt_sq_{s}']))
    i = int(np.argmax(numbers[f'eps_opt_sq_{largest}']))
    text += (f'; E‖ε*‖²/D reaches {number(numbers[f"eps_opt_sq_{largest}"][i], ".3g")} '
             f'({SETS[largest]}, t = {t[i]}).')
    one_hot = t[numbers['max_weight'] > ONE_HOT]
    text += (f' The largest t at which the optimal posterior\'s largest weight exceeds '
             f'{ONE_HOT:g} along the trajectories is {one_hot.max()}.' if len(one_hot) else
             f' The optimal posterior\'s largest weight exceeds {ONE_HOT:g} at no t along the '
             'trajectories.')
    if numbers.get('baselines'):
        text += (f' Baselines: the same x₀-gap with the {" and the ".join(numbers["baselines"])} '
                 f'denoiser in the network\'s place (dotted / dashed in the figure). The '
                 f'network\'s x₀-gap differs from the nearer baseline\'s by more than a factor '
                 f'{BASELINE_FACTOR:g} (where the gap says something about the network) ' +
                 '; '.join(f'on {SETS[s]} points {_where(t, informative(numbers, s))}'
                           for s in sets) + '; elsewhere a trivial denoiser is as close to ε*.')
    summary = ''
    if numbers.get('baselines'):
        parts = []
        for s in sets:
            closer, farther = closer_farther(numbers, s)
            parts.append(f'on {SETS[s]} points it is more than {BASELINE_FACTOR:g}× nearer ε* '
                         f'than the best of them {_where(t, closer)} and more than '
                         f'{BASELINE_FACTOR:g}× farther {_where(t, farther)}')
        summary = ('E3 beside two trivial denoisers (identity, Gaussian of the data\'s mean and '
                   'covariance) in the network\'s place: ' + '; '.join(parts) + '. Elsewhere '
                   'the network\'s gap to ε* is within a factor '
                   f'{BASELINE_FACTOR:g} of a trivial denoiser\'s and says little about it.')
    return Section(KEY, TITLE, text, numbers, [name], summary=summary)


register(Experiment(KEY, TITLE, measure, render))
