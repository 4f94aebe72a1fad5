"""E7: the generalisation error I(z; S) on toy2d, estimated directly (docs/math.md §9).

K training sets S_k ~ P^N are drawn from the run's toy2d distribution (fresh points, not
the run's training set); one model per S_k, all K trained at once (diffgen.ensemble: the
run's network, objective, optimiser and batch size, the train step vmapped over k); M
samples per model by DDIM (η = 0, analysis.sampler_steps) from x_T drawn independently for
every k (shared x_T would make the samples of K identical models coincide, and the pooled
k-NN distances vanish). Then Î = Ĥ(z) − (1/K) Σ_k Ĥ(z | S_k) with the Kozachenko–Leonenko
estimator and a bootstrap interval over the K sets (diffgen.mutual_information), for:

  - the empirical optimum ε* of each S_k with the same deterministic sampler: its samples
    are atoms on S_k (a deterministic function of (S_k, x_T) that lands on a training point),
    so Q(z|S_k) has atoms at S-dependent places and I = ∞; reported as ∞ with the measured
    exact-copy rate (the estimator itself returns ∞ once two samples of a set coincide);
  - the trained models after each of analysis.e7_train_steps steps;
  - a validation case with the same N, M and a closed form: y ~ N(0, I_2),
    z | S ~ N(ȳ_S, I_2 / N), for which I(z; S) = (d/2) log(1 + τ²/(N s²)) = log 2
    (mutual_information.gaussian_mean_mi), at the models' K and at
    analysis.e7_validation_num_sets (no training there, so a large K is cheap).

Î estimates the K-set Jensen–Shannon divergence, at most log K; it approaches I as K grows.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from diffgen.training import ensemble
from diffgen import figures
from diffgen.analysis import metrics
from diffgen.diffusion import samplers
from diffgen.data import toy2d
from diffgen.analysis import mutual_information as mi
from diffgen.data import parse_source
from diffgen.errors import ConfigError
from diffgen.optimum.optimal import optimal_denoiser
from diffgen.progress import Progress
from diffgen.analysis.experiment import Experiment, register
from diffgen.errors import require
from diffgen.analysis.report import Section
from diffgen.training.state import make_optimizer

_SETS_STREAM = 0xE7  # separates E7's training-set draws from every other numpy stream
_NOISE_KEY = 7       # fold_in constant of E7's x_T in the analysis stream
VALIDATION_DATA_STD = 1.0


def draw_training_sets(name, num_sets, num_train, seed):
    """K training sets of N i.i.d. points of the named toy2d distribution: (K, N, 2)."""
    rng = np.random.default_rng([seed, _SETS_STREAM])
    points = toy2d.DISTRIBUTIONS[name](rng, num_sets * num_train)
    return points.reshape(num_sets, num_train, -1)


def _copy_stats(samples, sets):
    """(exact-copy rate, memorisation ratio) of samples (K, M, d) against their own sets."""
    d1, d2 = zip(*(metrics.nearest_two(z, s)[:2] for z, s in zip(samples, sets)))
    d1, d2 = np.concatenate(d1), np.concatenate(d2)
    return metrics.exact_copy_rate(d1), metrics.memorisation_ratio(d1, d2)


def _row(label, estimate, copy_rate, mem_ratio):
    return {'case': label, **estimate.as_dict(), 'exact_copy_rate': copy_rate,
            'memorisation_ratio': mem_ratio}


def _fmt(x):
    return '∞' if np.isinf(x) else f'{x:.3f}'


def _optimum_samples(sets, x_T, schedule, sampler_steps):
    """Deterministic DDIM samples (K, M, d) of the empirical optimum ε* of each S_k."""
    num_sets = len(sets)
    x_T = np.asarray(x_T).reshape((num_sets, -1) + x_T.shape[1:])
    return np.stack([np.asarray(samplers.sample(optimal_denoiser(s, schedule), x, schedule,
                                                'ddim', sampler_steps))
                     for s, x in zip(sets, x_T)])


def _validation(num_sets, num_train, num_samples, dim, k, num_bootstrap, seed, index):
    """Î of the closed-form case y ~ N(0, I), z | S ~ N(ȳ, I/N) with K = num_sets, against
    its analytic value log(1 + 1)·d/2."""
    noise_std = VALIDATION_DATA_STD / np.sqrt(num_train)
    truth = mi.gaussian_mean_mi(dim, num_train, VALIDATION_DATA_STD, noise_std)
    z = mi.sample_gaussian_mean_case(np.random.default_rng([seed, _SETS_STREAM, 1 + index]),
                                     num_sets, num_train, num_samples, dim,
                                     VALIDATION_DATA_STD, noise_std)
    est = mi.mutual_information(z, k, num_bootstrap, seed=seed)
    return {'num_sets': num_sets, 'analytic': float(truth), **est.as_dict(),
            'covered': bool(est.low <= truth <= est.high)}


def _plot(steps, rows, log_k, path):
    values = np.array([r['value'] for r in rows])
    err = np.array([[r['value'] - r['low'], r['high'] - r['value']] for r in rows]).T
    fig, (ax,) = figures.subplots(width=5.5, height=4)
    ax.errorbar(steps, values, yerr=err, marker='o', capsize=3, label='trained models')
    ax.axhline(log_k, ls=':', c='gray', label='log K (estimator bound)')
    ax.set_xscale('log')
    ax.minorticks_off()
    ax.set_xticks(steps, [str(n) for n in steps])
    ax.set_xlabel('training steps')
    ax.set_ylabel('Î(z; S) (nats)')
    ax.set_title('empirical optimum: I = ∞ (samples are training points)', fontsize=9)
    ax.legend()
    figures.save(fig, path)


def run(ctx):
    config, a = ctx.config, ctx.config.analysis
    kind, name = parse_source(config.data.source)
    if kind != 'toy2d':
        raise ConfigError(f'e7 estimates I(z; S) on toy2d sources only, not {config.data.source!r}')
    num_sets, num_train, num_samples, k = (a.e7_num_sets, a.e7_num_train, a.e7_num_samples,
                                           a.e7_knn_k)
    lengths = sorted(a.e7_train_steps)
    chunk = config.training.steps_per_call
    if not lengths or any(n < 1 or n % chunk for n in lengths):
        raise ConfigError(f'analysis.e7_train_steps={tuple(lengths)} must be positive '
                          f'multiples of training.steps_per_call={chunk}')
    sets = draw_training_sets(name, num_sets, num_train, config.seed)
    dim = sets.shape[-1]
    x_T = jax.random.normal(jax.random.fold_in(ctx.rng, _NOISE_KEY),
                            (num_sets * num_samples, dim))
    estimate = lambda z: mi.mutual_information(z, k, a.e7_num_bootstrap, seed=config.seed)
    as_sets = lambda z: np.asarray(z).reshape(num_sets, num_samples, dim)

    opt = _optimum_samples(sets, x_T, ctx.schedule, a.sampler_steps)
    rows = [_row('empirical optimum', estimate(opt), *_copy_stats(opt, sets))]

    # K trained models, estimated at each training length.
    tx = make_optimizer(config.optim)
    states = ensemble.init_states(ctx.model, tx, config.seed, num_sets, (dim,))
    call = ensemble.make_ensemble_train_call(config, ctx.model, tx, ctx.schedule, chunk)
    denoise = ensemble.ensemble_apply(ctx.model)
    train_sets = jnp.asarray(sets)
    progress = Progress(f'e7: {num_sets} models', lengths[-1])
    step, trained = 0, []
    for length in lengths:
        while step < length:
            states, losses = call(states, train_sets)
            step += chunk
            if step % config.training.log_every == 0 or step == length:
                progress.report(step, f'  loss {float(np.mean(losses[-1])):.4f}')
        params = states.ema_params if config.sampling.use_ema else states.params
        z = as_sets(samplers.sample(jax.tree_util.Partial(denoise, params), x_T,
                                    ctx.schedule, 'ddim', a.sampler_steps))
        trained.append(_row(f'trained, {length} steps', estimate(z), *_copy_stats(z, sets)))
    rows += trained

    validation = [_validation(num_val, num_train, num_samples, dim, k, a.e7_num_bootstrap,
                              config.seed, i)
                  for i, num_val in enumerate(sorted({num_sets, a.e7_validation_num_sets}))]
    rows += [{'case': f'validation, K = {v["num_sets"]}: z|S ~ N(mean S, I/N)', 'value': v['value'],
              'low': v['low'], 'high': v['high'], 'exact_copy_rate': float('nan'),
              'memorisation_ratio': float('nan')} for v in validation]

    plot = ctx.figure_path('e7_mutual_information.png')
    _plot(lengths, trained, np.log(num_sets), plot)
    scatter = ctx.figure_path('e7_samples.png')
    figures.save_scatter(np.asarray(z[0]), scatter, reference=sets[0],
                        title=f'model 0 after {lengths[-1]} steps, S_0 (N = {num_train})')

    table = ['| case | Î(z; S) (nats) | 95% interval | exact-copy rate | memorisation ratio |',
             '| --- | --- | --- | --- | --- |']
    for r in rows:
        table.append(f'| {r["case"]} | {_fmt(r["value"])} | [{_fmt(r["low"])}, '
                     f'{_fmt(r["high"])}] | {r["exact_copy_rate"]:.3f} | '
                     f'{r["memorisation_ratio"]:.3f} |')
    markdown = '\n'.join([
        f'I(z; S) = H(z) − E_k H(z | S_k) for {num_sets} training sets of N = {num_train} '
        f'points of `{name}`, {num_samples} DDIM samples per model, Kozachenko–Leonenko '
        f'k = {k}, 95% bootstrap intervals over the sets. The estimator is bounded by '
        f'log K = {np.log(num_sets):.3f}.', '', *table, '',
        f'The empirical optimum\'s samples are training points (exact-copy rate '
        f'{rows[0]["exact_copy_rate"]:.3f}), so its I(z; S) is unbounded: reported as ∞.',
        f'Validation: analytic I = {validation[0]["analytic"]:.3f} nats; '
        + '; '.join(f'K = {v["num_sets"]}: {v["value"]:.3f} [{v["low"]:.3f}, {v["high"]:.3f}] '
                    f'({"covered" if v["covered"] else "not covered"})' for v in validation)
        + '. Pooling K sets estimates the K-set Jensen–Shannon divergence, which falls short '
        'of I by a bias that shrinks as K grows.'])
    numbers = {
        'num_sets': num_sets, 'num_train': num_train, 'num_samples': num_samples, 'knn_k': k,
        'log_num_sets': float(np.log(num_sets)),
        'optimum': {kk: ('inf' if isinstance(v, float) and np.isinf(v) else v)
                    for kk, v in rows[0].items()},
        'trained': [{'steps': n, **r} for n, r in zip(lengths, trained)],
        'validation': validation,
    }
    return Section('e7', 'E7: mutual information I(z; S) on toy2d', markdown, numbers,
                   [os.path.basename(plot), os.path.basename(scatter)])


def check(config):
    an, t = config.analysis, config.training
    require(all(n >= 1 and n % t.steps_per_call == 0 for n in an.e7_train_steps),
            f'analysis.e7_train_steps must be positive multiples of '
            f'training.steps_per_call={t.steps_per_call}')
    require(an.e7_num_sets >= 2 and an.e7_validation_num_sets >= 2 and an.e7_num_train >= 1
            and an.e7_num_samples >= 2 and an.e7_knn_k >= 1 and an.e7_num_bootstrap >= 1,
            'analysis.e7_* sizes out of range (K >= 2, N >= 1, M >= 2, k >= 1)')


register(Experiment('e7', 'E7: mutual information I(z; S) on toy2d', measure=lambda ctx, cfg: run(ctx),
                    render=lambda section, ctx: section, check=check))  # TRANSITIONAL
