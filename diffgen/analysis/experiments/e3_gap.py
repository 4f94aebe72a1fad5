"""E3, the slight difference between the trained network and the optimum (docs/math.md §8):

    gap(t) = E‖ε_θ(x, t) − ε*(x, t)‖² / E‖ε*(x, t)‖²

on three kinds of points x at each t of the DDIM grid (analysis.sampler_steps steps):
forward-process points x = a_t y + σ_t ε of n training images y and of the n held-out
images (the same ε for both), and the states x_t of the trained model's own DDIM (η = 0)
trajectories from ctx.x_T. Along those trajectories also the entropy H(w) and the largest
weight max_i w_i of the optimal posterior w_i(x_t, t) over the training images
(diffgen.optimal.optimal_stats): H = log N for a uniform posterior, 0 for a one-hot one.
Each set is one jitted lax.scan over t.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from diffgen.analysis import metrics
from diffgen import figures
from diffgen.diffusion import samplers
from diffgen.diffusion.conversions import diffuse
from diffgen.optimum.optimal import optimal_eps, optimal_stats
from diffgen.analysis.experiment import Experiment, register
from diffgen.analysis.report import Section, markdown_table, number

KEY, TITLE = 'e3', 'E3: the gap between the network and the optimum'
_NOISE_KEY = 21                       # ctx.rng fold_in constant of E3's forward-process noise
TABLE_TIMES = (1, 10, 50, 100, 250, 500, 1000)   # per 1000 steps: rows of the table
GAP_HEADINGS = {'gap_train': 'gap, train', 'gap_heldout': 'gap, held-out',
                'gap_trajectory': 'gap, trajectory'}
CLOSE = 0.01      # the text states the t range where every gap is below this
ONE_HOT = 0.9     # and the largest t where the posterior's largest weight exceeds this


@jax.jit
def trajectory_gap(network, rows, schedule, x_T, pairs):
    """Runs DDIM (η = 0) with the network over pairs (t, t') and records, per step and
    sample, (‖ε_θ − ε*‖², ‖ε*‖², H(w), max_i w_i) at x_t: each (S, B); also returns x_0."""
    def step(x, ts):
        t, t_next = ts
        tt = jnp.full((x.shape[0],), t, jnp.int32)
        eps = network(x, tt)
        eps_star = optimal_eps(x, tt, rows=rows, schedule=schedule)
        sq_diff, sq_opt = metrics.squared_errors(eps, eps_star)
        entropy, max_weight = optimal_stats(x, tt, rows=rows, schedule=schedule)
        x_next = samplers.ddim_step(x, eps, t=t, t_next=t_next, schedule=schedule)  # eta = 0
        return x_next, (sq_diff, sq_opt, entropy, max_weight)

    return jax.lax.scan(step, x_T, pairs)


@jax.jit
def forward_gap(network, rows, schedule, y, noise, ts):
    """(‖ε_θ − ε*‖², ‖ε*‖²), each (S, B), at x = a_t y + σ_t noise for each t in ts."""
    def step(_, t):
        tt = jnp.full((y.shape[0],), t, jnp.int32)
        x = diffuse(y, eps=noise, a=schedule.a[t], sigma=schedule.sigma[t])
        return None, metrics.squared_errors(network(x, tt),
                                            optimal_eps(x, tt, rows=rows, schedule=schedule))

    return jax.lax.scan(step, None, ts)[1]


def _batched(fn, arrays, batch_size):
    """fn over batches of the leading axis of arrays; outputs joined along axis 1 (samples)."""
    outs = [fn(*(x[i:i + batch_size] for x in arrays))
            for i in range(0, len(arrays[0]), batch_size)]
    return [np.concatenate([np.asarray(o[j]) for o in outs], axis=1) for j in range(len(outs[0]))]


def measure(ctx, cfg):
    """The numbers of E3: t (descending, the DDIM grid without 0), gap per set, and the mean
    entropy and largest weight of the optimal posterior along the model's trajectories."""
    del cfg  # E3 has no settings
    T, batch = ctx.schedule.num_timesteps, ctx.config.analysis.batch_size
    pairs = samplers.step_pairs(T, ctx.config.analysis.sampler_steps)
    ts = pairs[:, 0]
    network, rows = ctx.network(), ctx.train_rows
    sq_diff, sq_opt, entropy, max_weight = _batched(
        lambda x: trajectory_gap(network, rows, ctx.schedule, x, pairs)[1], [ctx.x_T], batch)
    numbers = {'t': np.asarray(ts), 'gap_trajectory': metrics.gap(sq_diff, sq_opt),
               'entropy': entropy.mean(axis=1), 'max_weight': max_weight.mean(axis=1),
               'log_num_train': float(np.log(rows.num_rows))}
    sets = {'train': ctx.dataset.train}
    if len(ctx.dataset.heldout_images):
        sets = {'train': ctx.dataset.train[:len(ctx.dataset.heldout_images)],
                'heldout': ctx.dataset.heldout}
    n = min(len(y) for y in sets.values())
    noise = np.asarray(jax.random.normal(jax.random.fold_in(ctx.rng, _NOISE_KEY),
                                         (n,) + ctx.dataset.image_shape))
    for name, y in sets.items():
        d, o = _batched(lambda y, e: forward_gap(network, rows, ctx.schedule, y, e, ts),
                        [y[:n], noise], batch)
        numbers[f'gap_{name}'] = metrics.gap(d, o)
    return numbers


def _figure(ctx, numbers):
    fig, (ax_gap, ax_post) = figures.subplots(2, width=5.5, height=4.2)
    t = numbers['t']
    labels = {'gap_train': 'forward process, training images',
              'gap_heldout': 'forward process, held-out images',
              'gap_trajectory': "the model's own DDIM trajectories"}
    for key, label in labels.items():
        if key in numbers:
            ax_gap.plot(t, numbers[key], label=label, marker='.', markersize=3)
    ax_gap.set_yscale('log')
    ax_gap.set_xscale('log')
    ax_gap.set_xlabel('t')
    ax_gap.set_ylabel('gap(t) = E‖ε_θ − ε*‖² / E‖ε*‖²')
    ax_gap.set_title('relative gap between network and optimum')
    ax_gap.legend(fontsize=8)
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
    ax_post.legend(lines[0] + more[0], lines[1] + more[1], fontsize=8, loc='center left')
    ax_post.set_title("optimal posterior along the model's trajectories")
    name = 'e3_gap.png'
    figures.save(fig, ctx.figure_path(name), 'E3: the slight difference (sample means per t)')
    return name


def _table(numbers, T):
    """The rows of the t nearest TABLE_TIMES (per 1000 steps), t ascending."""
    t = numbers['t']
    rows = sorted({int(np.argmin(np.abs(t - max(1, round(s * T / 1000))))) for s in TABLE_TIMES},
                  key=lambda i: t[i])
    keys = [k for k in GAP_HEADINGS if k in numbers]
    return markdown_table(
        ['t', *(GAP_HEADINGS[k] for k in keys), 'H(w)', 'max w'],
        [[t[i], *(number(numbers[k][i], '.3g') for k in keys),
          number(numbers['entropy'][i]), number(numbers['max_weight'][i])] for i in rows])


def render(numbers, ctx):
    name = _figure(ctx, numbers)
    t, last = numbers['t'], -1   # t descends: index -1 is the smallest t
    text = (f'gap(t) on forward-process points and along {len(ctx.x_T)} DDIM trajectories of the '
            f'trained model ({ctx.config.analysis.sampler_steps} steps); H(w) and max w: the '
            f'optimal posterior over the N = {ctx.train_rows.num_rows} training images at the '
            f'trajectory\'s states (sample means).\n\n'
            f'{_table(numbers, ctx.schedule.num_timesteps)}\n\n'
            f'At t = {t[last]} the gap is {number(numbers["gap_train"][last], ".3g")} on noised '
            f'training images')
    if 'gap_heldout' in numbers:
        text += f' and {number(numbers["gap_heldout"][last], ".3g")} on noised held-out images'
    text += (f', and {number(numbers["gap_trajectory"][last], ".3g")} along the model\'s own '
             f'trajectories, where the optimal posterior\'s largest weight is '
             f'{number(numbers["max_weight"][last])}.')
    gaps = np.stack([numbers[k] for k in GAP_HEADINGS if k in numbers])
    close = np.all(gaps < CLOSE, axis=0)        # t descends with the index
    close_run = len(close) if close.all() else int(np.argmin(close))
    if close_run:
        text += f' The gap is below {CLOSE:g} on every set for all t ≥ {t[close_run - 1]}'
    else:
        text += f' At the largest t, {t[0]}, the gap is not below {CLOSE:g} on every set'
    one_hot = t[numbers['max_weight'] > ONE_HOT]
    text += (f'; the largest t at which the optimal posterior\'s largest weight exceeds '
             f'{ONE_HOT:g} along the trajectories is {one_hot.max()}.' if len(one_hot) else
             f'; the optimal posterior\'s largest weight exceeds {ONE_HOT:g} at no t along the '
             'trajectories.')
    return Section(KEY, TITLE, text, numbers, [name])


register(Experiment(KEY, TITLE, measure, render))
