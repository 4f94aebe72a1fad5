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
  - the trained models after each of analysis.e7.train_steps steps;
  - a validation case with the same N, M and a closed form: y ~ N(0, I_2),
    z | S ~ N(ȳ_S, I_2 / N), for which I(z; S) = (d/2) log(1 + τ²/(N s²)) = log 2
    (mutual_information.gaussian_mean_mi), at the models' K and at
    analysis.e7.validation_num_sets (no training there, so a large K is cheap).

Î estimates the K-set Jensen–Shannon divergence, at most log K; it approaches I as K grows.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from diffgen import figures
from diffgen.analysis import metrics
from diffgen.analysis import mutual_information as mi
from diffgen.analysis.experiment import Experiment, register
from diffgen.analysis.report import Section, markdown_table, number
from diffgen.data import parse_source, toy2d
from diffgen.diffusion import samplers
from diffgen.errors import require
from diffgen.optimum.optimal import optimal_denoiser
from diffgen.progress import Progress
from diffgen.training import ensemble
from diffgen.training.state import make_optimizer, sampling_params

KEY, TITLE = 'e7', 'E7: mutual information I(z; S) on toy2d'
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


def measure(ctx, cfg):
    """Î(z; S) with its interval, exact-copy rate and memorisation ratio of the empirical
    optimum and of the trained models at each of cfg.train_steps; the closed-form validation
    case; model 0's last samples and S_0 for the figure."""
    config = ctx.config
    _, name = parse_source(config.data.source)
    num_sets, num_train, num_samples, k = cfg.num_sets, cfg.num_train, cfg.num_samples, cfg.knn_k
    lengths = sorted(cfg.train_steps)
    chunk = config.training.steps_per_call
    sets = draw_training_sets(name, num_sets, num_train, config.seed)
    dim = sets.shape[-1]
    x_T = jax.random.normal(jax.random.fold_in(ctx.rng, _NOISE_KEY),
                            (num_sets * num_samples, dim))
    estimate = lambda z: mi.mutual_information(z, k, cfg.num_bootstrap, seed=config.seed)
    as_sets = lambda z: np.asarray(z).reshape(num_sets, num_samples, dim)
    steps = config.analysis.sampler_steps

    opt = _optimum_samples(sets, x_T, ctx.schedule, steps)
    optimum = _row('empirical optimum', estimate(opt), *_copy_stats(opt, sets))

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
        params = sampling_params(states, config.sampling.use_ema)
        z = as_sets(samplers.sample(jax.tree_util.Partial(denoise, params), x_T,
                                    ctx.schedule, 'ddim', steps))
        trained.append(_row(f'trained, {length} steps', estimate(z), *_copy_stats(z, sets)))

    validation = [_validation(num_val, num_train, num_samples, dim, k, cfg.num_bootstrap,
                              config.seed, i)
                  for i, num_val in enumerate(sorted({num_sets, cfg.validation_num_sets}))]
    return {
        'num_sets': num_sets, 'num_train': num_train, 'num_samples': num_samples, 'knn_k': k,
        'log_num_sets': float(np.log(num_sets)),
        'optimum': {kk: ('inf' if isinstance(v, float) and np.isinf(v) else v)
                    for kk, v in optimum.items()},
        'trained': [{'steps': n, **r} for n, r in zip(lengths, trained)],
        'validation': validation,
        '_samples': z[0], '_training_set': sets[0],
    }


def _plot(numbers, path):
    """Î against training steps with intervals, the log K bound and the optimum's Î."""
    rows, optimum = numbers['trained'], numbers['optimum']
    steps = [r['steps'] for r in rows]
    values = np.array([r['value'] for r in rows])
    err = np.array([[r['value'] - r['low'], r['high'] - r['value']] for r in rows]).T
    fig, (ax,) = figures.subplots(width=5.5, height=4)
    ax.errorbar(steps, values, yerr=err, marker='o', capsize=3, label='trained models')
    ax.axhline(numbers['log_num_sets'], ls=':', c='gray', label='log K (estimator bound)')
    ax.set_xscale('log')
    ax.minorticks_off()
    ax.set_xticks(steps, [str(n) for n in steps])
    ax.set_xlabel('training steps')
    ax.set_ylabel('Î(z; S) (nats)')
    ax.set_title(f'empirical optimum: Î = {number(optimum["value"])}, exact-copy rate '
                 f'{number(optimum["exact_copy_rate"])}', fontsize=9)
    ax.legend()
    figures.save(fig, path)


def render(numbers, ctx):
    n, name = numbers, parse_source(ctx.config.data.source)[1]
    optimum, validation = n['optimum'], n['validation']
    plot, scatter = 'e7_mutual_information.png', 'e7_samples.png'
    _plot(n, ctx.figure_path(plot))
    figures.save_scatter(np.asarray(n['_samples']), ctx.figure_path(scatter),
                         reference=n['_training_set'],
                         title=f'model 0 after {n["trained"][-1]["steps"]} steps, S_0 '
                               f'(N = {n["num_train"]})')
    rows = [optimum, *n['trained']] + [
        {'case': f'validation, K = {v["num_sets"]}: z|S ~ N(mean S, I/N)', **v} for v in validation]
    table = markdown_table(
        ['case', 'Î(z; S) (nats)', '95% interval', 'exact-copy rate', 'memorisation ratio'],
        [[r['case'], number(r['value']), f'[{number(r["low"])}, {number(r["high"])}]',
          number(r.get('exact_copy_rate')), number(r.get('memorisation_ratio'))] for r in rows])
    infinite = np.isinf(float(optimum['value']))
    markdown = '\n'.join([
        f'I(z; S) = H(z) − E_k H(z | S_k) for {n["num_sets"]} training sets of N = '
        f'{n["num_train"]} points of `{name}`, {n["num_samples"]} DDIM samples per model, '
        f'Kozachenko–Leonenko k = {n["knn_k"]}, 95% bootstrap intervals over the sets. The '
        f'estimator is bounded by log K = {n["log_num_sets"]:.3f}.', '', table, '',
        f'Empirical optimum: exact-copy rate {number(optimum["exact_copy_rate"])}, Î = '
        f'{number(optimum["value"])}'
        + (' (two samples of a set coincide, so the set\'s entropy estimate is −∞).'
           if infinite else '.'),
        f'Validation: analytic I = {validation[0]["analytic"]:.3f} nats; '
        + '; '.join(f'K = {v["num_sets"]}: {v["value"]:.3f} [{v["low"]:.3f}, {v["high"]:.3f}] '
                    f'({"covered" if v["covered"] else "not covered"})' for v in validation)
        + '. Pooling K sets estimates the K-set Jensen–Shannon divergence, which falls short '
        'of I by a bias that shrinks as K grows.'])
    return Section(KEY, TITLE, markdown, numbers, [plot, scatter])


def check(config):
    an, t = config.analysis.e7, config.training
    require(parse_source(config.data.source)[0] == 'toy2d',
            f'e7 estimates I(z; S) on toy2d sources only, not {config.data.source!r}')
    require(an.train_steps and all(n >= 1 and n % t.steps_per_call == 0
                                   for n in an.train_steps),
            f'analysis.e7.train_steps={tuple(an.train_steps)} must be positive multiples of '
            f'training.steps_per_call={t.steps_per_call}')
    require(an.num_sets >= 2 and an.validation_num_sets >= 2 and an.num_train >= 1
            and an.num_samples >= 2 and an.knn_k >= 1 and an.num_bootstrap >= 1,
            'analysis.e7 sizes out of range (num_sets, validation_num_sets >= 2, num_train >= 1, '
            'num_samples >= 2, knn_k >= 1, num_bootstrap >= 1)')


register(Experiment(KEY, TITLE, measure, render, check, trains=True))
