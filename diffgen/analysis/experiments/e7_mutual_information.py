"""E7: the generalisation error I(z; S) on toy2d, estimated directly (docs/math.md §9).

K training sets S_k ~ P^N are drawn from the run's toy2d distribution (fresh points, not
the run's training set). Q(z | S) includes the training randomness ω (initialisation, noise
and batch draws), so R = analysis.e7.seeds_per_set models are fitted per set, K·R in all,
trained at once (diffgen.training.ensemble: the run's network, objective, optimiser and
batch size, the train step vmapped over the models; model m = k·R + r has its own init and
training streams fold_in(·, m)); M samples per model by DDIM (η = 0,
analysis.sampler_steps) from x_T drawn independently for every model (shared x_T would make
the samples of identical models coincide, and the pooled k-NN distances vanish). With the
Kozachenko–Leonenko estimator (diffgen.analysis.mutual_information, k = analysis.e7.knn_k):

    Î(z; S)      the RM samples of set k pooled over its seeds as the sample of Q(z | S_k),
                 K sets: Î ± t se (targets the K-set divergence of the R-seed mixtures), and
                 Ĩ ± t se_Ĩ, corrected by jackknives over the sets (the 1/K bias) and over the
                 seeds (the part of the seed dependence R seeds leave in the pooled sample),
                 se_Ĩ the jackknife of Ĩ itself (targets I(z; S));
    Î(z; ω | S)  the seed-only dependence: the same estimator applied to the R seeds of one
                 set, averaged over the K sets, x̄ ± t s/√K (targets the R-seed divergence,
                 at most log R), and its jackknife over the seeds Ĩ(z; ω | S) (targets
                 I(z; ω | S)); Î(z; S) + Î(z; ω | S) is exactly the estimate that treats every
                 model as its own set, of I(z; S, ω) = I(z; S) + I(z; ω | S) (what one model
                 per set measures),

for:
  - the empirical optimum ε* of each S_k with the same deterministic sampler (no seed): its
    samples are atoms on S_k, so Q(z|S_k) has atoms at S-dependent places and I = ∞; reported
    as ∞ with the measured exact-copy rate (the estimator returns ∞ once two samples of a set
    coincide);
  - the trained models after each of analysis.e7.train_steps steps;
  - validation cases with the same N, R and M, and a known I (no training, so a large K is
    cheap; each at the models' K and at analysis.e7.validation_num_sets), y ~ N(0, I_2):
      Gaussian: z | S, ω ~ N(ȳ_S + b ω, s² I), s² + b² = 1/N, b² = analysis.e7.
        validation_seed_share/N: I(z; S) = log 2 and I(z; ω | S) = log(1/(1 − share)) in
        closed form (mutual_information.gaussian_case; share 0 is the seedless case);
      atomic: z | S ~ (1/N) Σ_i N(y_i, h² I), h in analysis.e7.validation_atomic_widths (the
        optimum's atoms smoothed by h): I(z; S) by Monte Carlo (mutual_information.atomic_mi,
        with its standard error), I(z; ω | S) = 0;
    and E JS_K by Monte Carlo (mutual_information.expected_js). Coverage is judged per case:
    the corrected interval against I(z; S), the plain one against E JS_K, the seed-only
    corrected interval against I(z; ω | S).
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


def _row(label, samples, sets, k, seeds=True):
    """Î(z; S) and Ĩ(z; S) (seeds marginalised), Î(z; ω | S) and Ĩ(z; ω | S) (if seeds) and
    the copy numbers of samples (K, R, M, d) of models fitted to sets (K, N, d)."""
    num_sets, num_seeds, num_samples, dim = samples.shape
    pooled = samples.reshape(num_sets, num_seeds * num_samples, dim)
    row = {'case': label, **mi.mutual_information(samples, k).as_dict()}
    if seeds:
        row['seed_only'] = mi.seed_dependence(samples, k).as_dict()
    copy_rate, mem_ratio = _copy_stats(pooled, sets)
    return {**row, 'exact_copy_rate': copy_rate, 'memorisation_ratio': mem_ratio}


def _optimum_samples(sets, x_T, schedule, sampler_steps):
    """Deterministic DDIM samples (K, L, d) of the empirical optimum ε* of each S_k from
    x_T (K·L, d) laid out set by set."""
    num_sets = len(sets)
    x_T = np.asarray(x_T).reshape((num_sets, -1) + x_T.shape[1:])
    return np.stack([np.asarray(samplers.sample(optimal_denoiser(s, schedule), x, schedule,
                                                'ddim', sampler_steps))
                     for s, x in zip(sets, x_T)])


def validation_cases(cfg, seed):
    """The validation cases of cfg (analysis.e7): the Gaussian case with seed share 0 and with
    cfg.validation_seed_share, and the atomic case at each of cfg.validation_atomic_widths
    (its I(z; S) by Monte Carlo from the stream of seed)."""
    n, tau = cfg.num_train, VALIDATION_DATA_STD
    rng = np.random.default_rng([seed, _SETS_STREAM, 0])
    shares = sorted({0.0, float(cfg.validation_seed_share)})
    return ([mi.gaussian_case(2, n, tau, tau * np.sqrt((1 - f) / n), tau * np.sqrt(f / n))
             for f in shares]
            + [mi.atomic_case(rng, 2, n, tau, h) for h in cfg.validation_atomic_widths])


def _validation(case, num_sets, num_seeds, num_samples, k, seed, index):
    """One validation case at K = num_sets: Î(z; S), Ĩ(z; S) and the seed-only estimates of
    samples (K, R, M, 2), E JS_K (Monte Carlo, with its standard error), and whether each
    interval covers its target: the corrected one I(z; S), the plain one E JS_K, the
    seed-only corrected one I(z; ω | S)."""
    rng = np.random.default_rng([seed, _SETS_STREAM, 1 + index])
    z = mi.sample_case(rng, case, num_sets, num_seeds, num_samples)
    js, js_se = mi.expected_js(rng, case, num_sets, num_seeds,
                               num_draws=max(10, 1600 // num_sets))   # K·draws ≈ 1600 sets
    est, seed_est = mi.mutual_information(z, k), mi.seed_dependence(z, k)
    return {'case': case.name, 'num_sets': num_sets, 'truth': case.mi, 'truth_se': case.mi_se,
            'seed_truth': case.seed_mi, 'expected_js': js, 'expected_js_se': js_se,
            **est.as_dict(), 'seed_only': seed_est.as_dict(),
            'covered': bool(est.corrected_low <= case.mi <= est.corrected_high),
            'covered_js': bool(est.low <= js <= est.high),
            'covered_seed': bool(seed_est.corrected_low <= case.seed_mi
                                 <= seed_est.corrected_high)}


def measure(ctx, cfg):
    """Î(z; S), Ĩ(z; S) and the seed-only estimates with their intervals, exact-copy rate
    and memorisation ratio of the empirical optimum and of the trained models at each of
    cfg.train_steps; the validation cases; model 0's last samples and S_0 for the figure."""
    config = ctx.config
    _, name = parse_source(config.data.source)
    num_sets, num_seeds = cfg.num_sets, cfg.seeds_per_set
    num_train, num_samples, k = cfg.num_train, cfg.num_samples, cfg.knn_k
    num_models = num_sets * num_seeds
    lengths = sorted(cfg.train_steps)
    chunk = config.training.steps_per_call
    sets = draw_training_sets(name, num_sets, num_train, config.seed)
    dim = sets.shape[-1]
    x_T = jax.random.normal(jax.random.fold_in(ctx.rng, _NOISE_KEY),
                            (num_models * num_samples, dim))
    as_models = lambda z: np.asarray(z).reshape(num_sets, num_seeds, num_samples, dim)
    steps = config.analysis.sampler_steps

    opt = _optimum_samples(sets, x_T, ctx.schedule, steps)
    optimum = _row('empirical optimum', opt[:, None], sets, k, seeds=False)

    # K·R trained models (model k·R + r: set k, seed r), estimated at each training length.
    tx = make_optimizer(config.optim)
    states = ensemble.init_states(ctx.model, tx, config.seed, num_models, (dim,))
    call = ensemble.make_ensemble_train_call(config, ctx.model, tx, ctx.schedule, chunk)
    denoise = ensemble.ensemble_apply(ctx.model)
    train_sets = jnp.asarray(np.repeat(sets, num_seeds, axis=0))
    progress = Progress(f'e7: {num_sets} sets x {num_seeds} seeds', lengths[-1])
    step, trained = 0, []
    for length in lengths:
        while step < length:
            states, losses = call(states, train_sets)
            step += chunk
            if step % config.training.log_every == 0 or step == length:
                progress.report(step, f'  loss {float(np.mean(losses[-1])):.4f}')
        params = sampling_params(states, config.sampling.use_ema)
        z = as_models(samplers.sample(jax.tree_util.Partial(denoise, params), x_T,
                                      ctx.schedule, 'ddim', steps))
        trained.append(_row(f'trained, {length} steps', z, sets, k))

    sizes = sorted({num_sets, cfg.validation_num_sets})
    validation = [_validation(case, size, num_seeds, num_samples, k, config.seed,
                              i * len(sizes) + j)
                  for i, case in enumerate(validation_cases(cfg, config.seed))
                  for j, size in enumerate(sizes)]
    return {
        'num_sets': num_sets, 'seeds_per_set': num_seeds, 'num_train': num_train,
        'num_samples': num_samples, 'knn_k': k,
        'log_num_sets': float(np.log(num_sets)), 'log_seeds': float(np.log(num_seeds)),
        'optimum': {kk: ('inf' if isinstance(v, float) and np.isinf(v) else v)
                    for kk, v in optimum.items()},
        'trained': [{'steps': n, **r} for n, r in zip(lengths, trained)],
        'validation': validation,
        '_samples': z[0, 0], '_training_set': sets[0],
    }


def _plot(numbers, path):
    """Ĩ(z; S) and the seed-only Ĩ(z; ω | S) (bias-corrected, with their intervals) against
    training steps, the log K bound and the optimum's Î."""
    rows, optimum = numbers['trained'], numbers['optimum']
    steps = [r['steps'] for r in rows]
    fig, (ax,) = figures.subplots(width=5.5, height=4)
    for label, get in (('Ĩ(z; S), bias-corrected', lambda r: r),
                       ('Ĩ(z; ω | S), seed only, bias-corrected', lambda r: r['seed_only'])):
        value, low, high = np.array([[get(r)[key] for key in (
            'corrected', 'corrected_low', 'corrected_high')] for r in rows]).T
        ax.errorbar(steps, value, yerr=[value - low, high - value], marker='o', capsize=3,
                    label=label)
    ax.axhline(numbers['log_num_sets'], ls=':', c='gray', label='log K (bound of Î)')
    ax.set_xscale('log')
    ax.minorticks_off()
    ax.set_xticks(steps, [str(n) for n in steps])
    ax.set_xlabel('training steps')
    ax.set_ylabel('nats')
    ax.set_title(f'empirical optimum: Î = {number(optimum["value"])}, exact-copy rate '
                 f'{number(optimum["exact_copy_rate"])}', fontsize=9)
    ax.legend()
    figures.save(fig, path)


def _interval(value, low, high):
    return f'{number(value)} [{number(low)}, {number(high)}]'


def _corrected(r):
    return _interval(r['corrected'], r['corrected_low'], r['corrected_high'])


def _seed_sentence(n):
    """The seed-only dependence against Ĩ(z; S) at the longest training, from the numbers."""
    last = n['trained'][-1]
    seed = last['seed_only']
    relation = ('their intervals overlap' if seed['corrected_high'] >= last['corrected_low']
                and seed['corrected_low'] <= last['corrected_high'] else
                'the seed-only interval lies below'
                if seed['corrected_high'] < last['corrected_low']
                else 'the seed-only interval lies above')
    return (f'After {last["steps"]} steps the seed alone gives Ĩ(z; ω | S) = {_corrected(seed)} '
            f'(Î(z; ω | S) = {_interval(seed["value"], seed["low"], seed["high"])} between '
            f'{n["seeds_per_set"]} seeds of one set, before its jackknife over the seeds), '
            f'against Ĩ(z; S) = {_corrected(last)} between sets ({relation}). Treating each of '
            f'the {n["num_sets"] * n["seeds_per_set"]} models as its own set, as one model per '
            f'set does, measures I(z; S, ω), estimated (uncorrected) by the sum of the two Î: '
            f'{number(last["value"] + seed["value"])}.')


def _validation_sentence(v):
    """One validation case: its estimates and whether each interval covers its target."""
    said = lambda covered: 'covered' if covered else 'not covered'
    truth_se = f' ± {v["truth_se"]:.3f}' if v['truth_se'] else ''
    return (f'{v["case"]}, K = {v["num_sets"]}: Ĩ(z; S) = {_corrected(v)} against '
            f'I = {v["truth"]:.3f}{truth_se} ({said(v["covered"])}); Î = '
            f'{_interval(v["value"], v["low"], v["high"])} against E JS_K = '
            f'{v["expected_js"]:.3f} ± {v["expected_js_se"]:.3f} ({said(v["covered_js"])}); '
            f'Ĩ(z; ω | S) = {_corrected(v["seed_only"])} against {v["seed_truth"]:.3f} '
            f'({said(v["covered_seed"])})')


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
        {**v, 'case': f'validation, K = {v["num_sets"]}: {v["case"]} (I = {v["truth"]:.3f})'}
        for v in validation]
    seed_cell = lambda r: (f'{_corrected(r["seed_only"])}; Î '
                           f'{_interval(*(r["seed_only"][key] for key in ("value", "low", "high")))}'
                           if 'seed_only' in r else '–')
    table = markdown_table(
        ['case', 'Î(z; S) (K-set divergence)', 'corrected Ĩ(z; S) (→ I)',
         'seed only Ĩ(z; ω \\| S); Î', 'exact-copy rate', 'memorisation ratio'],
        [[r['case'], _interval(r['value'], r['low'], r['high']), _corrected(r), seed_cell(r),
          number(r.get('exact_copy_rate')), number(r.get('memorisation_ratio'))]
         for r in rows])
    infinite = np.isinf(float(optimum['value']))
    markdown = '\n'.join([
        f'I(z; S) = H(z) − E_k H(z | S_k) for {n["num_sets"]} training sets of N = '
        f'{n["num_train"]} points of `{name}`, {n["seeds_per_set"]} models (seeds) per set '
        f'pooled as the sample of Q(z | S_k), {n["num_samples"]} DDIM samples per model, '
        f'Kozachenko–Leonenko k = {n["knn_k"]}. 95% intervals: jackknife over the sets with '
        f't quantiles ({n["num_sets"] - 1} degrees of freedom). Î estimates the K-set '
        f'divergence (at most log K = {n["log_num_sets"]:.3f}); Ĩ corrects it towards I(z; S) '
        'by jackknives over the sets and over the seeds (the seed dependence R seeds leave '
        'unmarginalised), its interval from the jackknife of Ĩ itself; the seed-only '
        f'Î(z; ω | S) applies the same estimator to the seeds of one set (at most log R = '
        f'{n["log_seeds"]:.3f}) and Ĩ(z; ω | S) is its jackknife over the seeds '
        '(docs/math.md §9).', '',
        table, '',
        f'Empirical optimum: exact-copy rate {number(optimum["exact_copy_rate"])}, Î = '
        f'{number(optimum["value"])}'
        + (' (two samples of a set coincide, so the set\'s entropy estimate is −∞).'
           if infinite else '.'),
        _seed_sentence(n),
        'Validation (known I(z; S) and I(z; ω | S); the atomic case\'s I by Monte Carlo): '
        + '; '.join(_validation_sentence(v) for v in validation) + '.'])
    return Section(KEY, TITLE, markdown, numbers, [plot, scatter])


def check(config):
    an, t = config.analysis.e7, config.training
    require(parse_source(config.data.source)[0] == 'toy2d',
            f'e7 estimates I(z; S) on toy2d sources only, not {config.data.source!r}')
    require(an.train_steps and all(n >= 1 and n % t.steps_per_call == 0
                                   for n in an.train_steps),
            f'analysis.e7.train_steps={tuple(an.train_steps)} must be positive multiples of '
            f'training.steps_per_call={t.steps_per_call}')
    require(an.num_sets >= 3 and an.validation_num_sets >= 3 and an.num_train >= 1
            and an.num_samples > an.knn_k >= 1 and an.seeds_per_set >= 2,
            'analysis.e7 sizes out of range (num_sets, validation_num_sets >= 3 for the '
            'jackknife, num_train >= 1, num_samples > knn_k >= 1, seeds_per_set >= 2)')
    require(0.0 <= an.validation_seed_share < 1.0
            and all(h > 0 for h in an.validation_atomic_widths),
            'analysis.e7.validation_seed_share must be in [0, 1) and '
            'analysis.e7.validation_atomic_widths positive')


register(Experiment(KEY, TITLE, measure, render, check, trains=True))
