"""Why DDIM and Heun lag DDPM on a memorising network: a study on one sweep run (issue 11).

    python studies/sampler_lag.py --workdir=RUNS/num_train_16 [--config=configs/digits.py:...] \
        [--steps=1000,2000,3000,4000,5000] [--num_samples=100] [--out=DIR] [--parts=1,2,3]

(--config defaults to the workdir's config.json, the run's own config.)

On a run's kept checkpoints (training.keep_period), from the fixed x_T of the evaluation
during training (diffgen.analysis.evaluation), it measures three candidate explanations:

1. Training length and parameters: for each kept step, with the EMA and the raw parameters,
   the memorisation ratio (d_1/d_2 < 1/3, docs/math.md §7) and the median d_1 of
   DDPM (all T steps), DDIM (100 and T steps, η = 0) and Heun (50 intervals).
2. Along each sampler's own path (DDPM and DDIM-100, EMA and raw, at the analysed step: the
   last of --steps), per band of t and separately for the samples whose endpoint copies
   (d_1/d_2 < 1/3) and those whose endpoint does not (a mean over all samples would mix the
   two outcomes, and the rarer one can carry most of it):
       x0-error(t)  = E‖x̂₀^θ(x_t) − x̂₀*(x_t)‖² / D,  x̂₀ = (x_t − σ_t ε̂)/a_t (docs/math.md §3),
   the network's image-space error where the sampler actually is;
       max weight   = max_i w_i(x_t) of ε* (docs/math.md §4): 1 in the basin of one image;
       forward distance ν(x_t, t) = min_i ‖x_t − a_t y_i‖ / (σ_t √D)
   the distance of the state from the nearest centre of the forward process's marginal
   p̂_t = (1/N) Σ_i N(a_t y_i, σ_t² I) in units of its noise: a forward-process state
   x_t = a_t y_j + σ_t ε has ν ≤ ‖ε‖/√D ≈ 1 ± 1/√(2D) (= when y_j is its nearest centre), so
   ν below the forward reference means too little noise for t (the state sits nearer a scaled
   training image than the forward process puts it), above it a state off the forward
   process. Reported as the median per band beside the reference: ν of forward-process states
   a_t y_J + σ_t ε (J uniform over the training set, ε ~ N(0, I)) at the same t.
3. Where the residual is made: DDPM from x_T down to x_{t_s}, then DDIM (η = 0) from exactly
   t_s (t_s added to the DDIM-100 grid: t_s, then the grid points below it) to 0, for a few
   t_s: the memorisation ratio tells from which noise level on the deterministic solver no
   longer reaches the training image DDPM was heading for.

Prints the tables, writes study.json (with the analysed step, the provenance of the analysed
checkpoint -- step, config digest, data fingerprint, machine, as a report section's -- and the
commit of this checkout) and sampler_lag.png into --out (default <workdir>/study). Nothing here
trains; it reads checkpoints only.
"""
from __future__ import annotations

import importlib
import json
import os
import pathlib
import subprocess
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from diffgen import files, figures  # noqa: E402
from diffgen.analysis import compare, metrics  # noqa: E402
from diffgen.analysis.evaluation import EvaluationInputs  # noqa: E402
from diffgen.analysis.provenance import provenance  # noqa: E402
from diffgen.diffusion import samplers  # noqa: E402
from diffgen.diffusion.conversions import x0_from_eps  # noqa: E402
from diffgen.diffusion.denoisers import network_denoiser  # noqa: E402
from diffgen.optimum.optimal import optimal_eps, optimal_stats  # noqa: E402
from diffgen.training import checkpoints  # noqa: E402
from diffgen.training.loop import restore_trained  # noqa: E402

SAMPLERS = (('ddpm', 0), ('ddim', 100), ('ddim', 1000), ('heun', 50))
BANDS = ((1, 10), (11, 50), (51, 100), (101, 250), (251, 500), (501, 1000))
SWITCH_TIMES = (1000, 500, 250, 100, 50, 20, 10)
DDIM_STEPS = 100          # the DDIM of parts 2 and 3
GROUPS = ('all', 'copies', 'novel')   # every sample; endpoint d1/d2 < 1/3; the others


def define_flags():
    """The command line (defined only when run as a script, so that tests can import this)."""
    flags.DEFINE_string('workdir', None, 'A finished run (a sweep run) with kept checkpoints.',
                        required=True)
    flags.DEFINE_string('config', '', "Its config file, 'configs/<name>.py[:arg]' (default: "
                        "the workdir's config.json, exactly the run's).")
    flags.DEFINE_string('steps', '', 'Comma-separated kept steps (default: all kept); parts 2 '
                        'and 3 analyse the last.')
    flags.DEFINE_integer('num_samples', 100, 'Samples per sampler.')
    flags.DEFINE_string('out', '', 'Output folder (default <workdir>/study).')
    flags.DEFINE_list('parts', ['1', '2', '3'], 'Which of the three measurements to run.')


def load_config(spec, workdir, num_samples):
    """The run's config, from configs/<name>.py[:arg] or (spec '') the workdir's config.json,
    with evaluation.num_samples = num_samples (the evaluation's x_T)."""
    if spec:
        path, _, arg = spec.partition(':')
        config = importlib.import_module(f'configs.{pathlib.Path(path).stem}').get_config(
            arg or None)
    else:
        stored = files.read_json(os.path.join(workdir, 'config.json'),
                                 remedy='give --config=configs/<name>.py[:arg]')
        config = compare.stored_config(workdir, stored['data']['data_dir'])
    config.evaluation.num_samples = num_samples
    return config


def code_commit():
    """The short HEAD of the checkout this script runs from, '+dirty' when a tracked file has
    changes; 'unknown' without git."""
    git = lambda *args: subprocess.run(['git', '-C', str(pathlib.Path(__file__).parent), *args],
                                       capture_output=True, text=True, check=True).stdout.strip()
    try:
        return git('rev-parse', '--short', 'HEAD') + (
            '+dirty' if git('status', '--porcelain', '--untracked-files=no') else '')
    except (OSError, subprocess.CalledProcessError):
        return 'unknown'


def sampler_metrics(evaluator, denoiser, schedule, method, num_steps):
    """(memorisation ratio, median d_1) of one sampler from the evaluation x_T."""
    x0 = samplers.sample(denoiser, jnp.asarray(evaluator.x_T), schedule, method,
                         num_steps or None, rng=evaluator.sample_rng)
    d1, d2, _ = metrics.nearest_two(np.asarray(x0), evaluator.train_rows)
    return metrics.memorisation_ratio(d1, d2), float(np.median(d1))


@jax.jit
def ddpm_path(denoiser, x_T, schedule, rng):
    """DDPM (samplers.ddpm_step, the same noise): (ts, x_t before each step t = T..1
    (T, B, ...), the endpoint x_0)."""
    def step(x, t):
        eps = denoiser(x, jnp.full((x.shape[0],), t, jnp.int32))
        return samplers.ddpm_step(x, eps, t=t, schedule=schedule, rng=rng), x

    ts = jnp.arange(schedule.num_timesteps, 0, -1)
    x0, states = jax.lax.scan(step, x_T, ts)
    return ts, states, x0


def ddim_path(denoiser, x_T, schedule, num_steps):
    """DDIM (η = 0): (ts, x_t before each step of its grid (S, B, ...), the endpoint x_0)."""
    pairs = samplers.step_pairs(schedule.num_timesteps, num_steps)

    @jax.jit
    def run(x_T):
        def step(x, ts):
            t, t_next = ts
            eps = denoiser(x, jnp.full((x.shape[0],), t, jnp.int32))
            return samplers.ddim_step(x, eps, t=t, t_next=t_next, schedule=schedule), x
        return jax.lax.scan(step, x_T, pairs)

    x0, states = run(x_T)
    return np.asarray(pairs)[:, 0], states, x0


@jax.jit
def path_errors(denoiser, states, ts, rows, schedule):
    """Per visited t and sample (each (S, B)): ‖x̂₀^θ − x̂₀*‖²/D and max_i w_i."""
    def one(x, t):
        tt = jnp.full((x.shape[0],), t, jnp.int32)
        a, sigma = schedule.a[t], schedule.sigma[t]
        x0_net = x0_from_eps(x, eps=denoiser(x, tt), a=a, sigma=sigma)
        x0_opt = x0_from_eps(x, eps=optimal_eps(x, tt, rows=rows, schedule=schedule), a=a,
                             sigma=sigma)
        err = jnp.mean((x0_net - x0_opt).reshape(x.shape[0], -1) ** 2, axis=1)
        return err, optimal_stats(x, tt, rows=rows, schedule=schedule)[1]
    return jax.lax.map(lambda a: one(*a), (states, ts))


def forward_distance(states, ts, rows, schedule):
    """ν(x_t, t) = min_i ‖x_t − a_t y_i‖ / (σ_t √D) of states (S, B, ...) at times ts (S,):
    (a_t/σ_t) d_1(x_t/a_t), d_1 the nearest-training-image distance over √D (metrics)."""
    ts = np.asarray(ts)
    a = np.asarray(schedule.a)[ts].reshape((-1,) + (1,) * (np.ndim(states) - 1))
    sigma = np.asarray(schedule.sigma)[ts].reshape(a.shape)
    scaled = (np.asarray(states, np.float32) / a).reshape((-1,) + np.shape(states)[2:])
    d1 = metrics.nearest_distance(scaled, rows).reshape(len(ts), -1)
    return d1 * (a / sigma).reshape(-1, 1)


def forward_states(train, ts, num, schedule, seed=0):
    """Forward-process states a_t y_J + σ_t ε at each of ts (S, num, ...): J uniform over the
    training images train (N, ...), ε ~ N(0, I), from a fixed NumPy stream."""
    rng = np.random.default_rng(seed)
    ts = np.asarray(ts)
    y = np.asarray(train, np.float32)[rng.integers(0, len(train), (len(ts), num))]
    shape = (-1,) + (1,) * (y.ndim - 1)
    a, sigma = (np.asarray(v)[ts].reshape(shape) for v in (schedule.a, schedule.sigma))
    return a * y + sigma * rng.standard_normal(y.shape).astype(np.float32)


def banded(ts, values, reduce=np.mean):
    """reduce over the (t, sample) entries of values (S, B) with t in each band (None where a
    band holds none)."""
    ts, values = np.asarray(ts), np.asarray(values)
    out = []
    for lo, hi in BANDS:
        chosen = values[(ts >= lo) & (ts <= hi)]
        out.append(float(reduce(chosen)) if chosen.size else None)
    return out


def split_by_endpoint(ts, values, copies, reduce=np.mean):
    """{'all', 'copies', 'novel'}: banded values (S, B) over every sample, over those whose
    endpoint copies (copies (B,) bool) and over the others."""
    return {'all': banded(ts, values, reduce), 'copies': banded(ts, values[:, copies], reduce),
            'novel': banded(ts, values[:, ~copies], reduce)}


def path_summary(denoiser, path, rows, train, schedule):
    """Part 2 for one sampler's path (ts, states, endpoint): the endpoint's copy flags, the
    x0-error, max weight and forward distance per band and group, and the forward
    reference."""
    ts, states, x0 = path
    d1, d2, _ = metrics.nearest_two(np.asarray(x0), rows)
    copies = metrics.memorised(d1, d2)
    err, weight = (np.asarray(v) for v in path_errors(denoiser, states, jnp.asarray(ts), rows,
                                                      schedule))
    nu = forward_distance(states, ts, rows, schedule)
    reference = forward_distance(forward_states(train, ts, len(copies), schedule), ts, rows,
                                 schedule)
    return {'num_samples': int(len(copies)), 'num_copies': int(copies.sum()),
            'copy_fraction': float(copies.mean()),
            'x0_error': split_by_endpoint(ts, err, copies),
            'max_weight': split_by_endpoint(ts, weight, copies),
            'forward_distance': {**split_by_endpoint(ts, nu, copies, np.median),
                                 'forward': banded(ts, reference, np.median)}}


def handover_pairs(num_timesteps, num_steps, t_switch):
    """The DDIM steps (t, t') after the hand-over at exactly t_switch: from t_switch to the
    largest point of the DDIM grid (samplers.timestep_grid) below it, then down that grid to
    0; (S', 2) int32, pairs[0, 0] = t_switch (none when t_switch = 0)."""
    grid = samplers.timestep_grid(num_timesteps, num_steps)
    times = np.concatenate([[t_switch], grid[grid < t_switch][::-1]]).astype(np.int32)
    return jnp.asarray(np.stack([times[:-1], times[1:]], axis=1).reshape(-1, 2))


@jax.jit
def switch_sample(denoiser, x_T, schedule, rng, t_switch, pairs):
    """DDPM for t > t_switch (down to x_{t_switch}), then DDIM (η = 0) on pairs, which start
    at t_switch (handover_pairs)."""
    def ddpm_step(x, t):
        eps = denoiser(x, jnp.full((x.shape[0],), t, jnp.int32))
        new = samplers.ddpm_step(x, eps, t=t, schedule=schedule, rng=rng)
        return jnp.where(t > t_switch, new, x), None

    x = jax.lax.scan(ddpm_step, x_T, jnp.arange(schedule.num_timesteps, 0, -1))[0]

    def ddim_step(x, ts):
        t, t_next = ts
        eps = denoiser(x, jnp.full((x.shape[0],), t, jnp.int32))
        return samplers.ddim_step(x, eps, t=t, t_next=t_next, schedule=schedule), None

    return jax.lax.scan(ddim_step, x, pairs)[0]


def _cells(values, fmt):
    return ' '.join('   -  ' if v is None else format(v, fmt) for v in values)


def run_study(config, workdir, steps=None, parts=('1', '2', '3'), out=None, spec=''):
    """Parts 1-3 on the workdir's kept checkpoints `steps` (default all kept; parts 2 and 3
    at the last of them, recorded as analysed_step); prints the tables, writes study.json
    and sampler_lag.png into out (default <workdir>/study) and returns the result."""
    out = out or os.path.join(workdir, 'study')
    run = restore_trained(config, workdir)
    schedule, T = run.schedule, run.schedule.num_timesteps
    evaluator = EvaluationInputs(config, run)
    rows, train = evaluator.train_rows, run.dataset.train
    x_T = jnp.asarray(evaluator.x_T)
    steps = list(steps or checkpoints.finished_steps(workdir))
    analysed = steps[-1]
    result = {'workdir': workdir, 'config': spec or 'config.json',
              'num_train': int(len(run.dataset.train_images)),
              'num_samples': int(len(evaluator.x_T)), 'steps': steps, 'analysed_step': analysed,
              'bands': BANDS, 'ddim_steps': DDIM_STEPS, 'by_step': {}, 'paths': {},
              'switch': {}, 'commit': code_commit(),
              'provenance': provenance(config, analysed, run.dataset.train_images)}

    print('1. memorisation ratio / median d1, per kept step and parameters')
    header = ' '.join(f'{m}-{n or T:<5}' for m, n in SAMPLERS)
    print(f'  step  params  {header}')
    for step in (steps if '1' in parts else ()):
        step_run = restore_trained(config, workdir, step)
        for use_ema in (True, False):
            denoiser = network_denoiser(step_run.model, step_run.params(use_ema))
            row = {f'{m}-{n or T}': sampler_metrics(evaluator, denoiser, schedule, m, n)
                   for m, n in SAMPLERS}
            result['by_step'][f'{step}/{"ema" if use_ema else "raw"}'] = row
            cells = ' '.join(f'{r:.2f}/{d:.2f}  ' for r, d in row.values())
            print(f'  {step:5d}  {"ema" if use_ema else "raw"}     {cells}', flush=True)

    last = restore_trained(config, workdir, analysed)
    print(f'2. along each path at step {analysed}, per band of t {BANDS}, for all samples and '
          'split by whether the endpoint copies: E|x0_net - x0*|^2/D, max posterior weight, '
          'median forward distance nu (forward process: nu of a_t y + sigma_t eps)')
    for use_ema in ((True, False) if '2' in parts else ()):
        denoiser = network_denoiser(last.model, last.params(use_ema))
        for name, path in (
                ('ddpm', ddpm_path(denoiser, x_T, schedule, evaluator.sample_rng)),
                (f'ddim-{DDIM_STEPS}', ddim_path(denoiser, x_T, schedule, DDIM_STEPS))):
            key = f'{name}/{"ema" if use_ema else "raw"}'
            summary = result['paths'][key] = path_summary(denoiser, path, rows, train, schedule)
            print(f'  {key}: {summary["num_copies"]} of {summary["num_samples"]} endpoints copy')
            for group in GROUPS:
                print(f'    {group:7s} x0-error   {_cells(summary["x0_error"][group], ".4f")}')
                print(f'    {group:7s} max weight {_cells(summary["max_weight"][group], ".4f")}')
                print(f'    {group:7s} nu         '
                      f'{_cells(summary["forward_distance"][group], ".4f")}')
            print(f'    forward nu         {_cells(summary["forward_distance"]["forward"], ".4f")}',
                  flush=True)

    print(f'3. DDPM down to t_s, then DDIM-{DDIM_STEPS} from exactly t_s (EMA, step {analysed}):'
          ' memorisation ratio')
    for t_s in (SWITCH_TIMES if '3' in parts else ()):
        denoiser = network_denoiser(last.model, last.params(True))
        x0 = switch_sample(denoiser, x_T, schedule, evaluator.sample_rng, t_s,
                           handover_pairs(T, DDIM_STEPS, t_s))
        d1, d2, _ = metrics.nearest_two(np.asarray(x0), rows)
        result['switch'][t_s] = (metrics.memorisation_ratio(d1, d2), float(np.median(d1)))
        print(f'  t_s = {t_s:4d}: {result["switch"][t_s][0]:.2f} (median d1 '
              f'{result["switch"][t_s][1]:.3f})', flush=True)

    files.makedirs(out)
    files.write_text(os.path.join(out, 'study.json'), json.dumps(result, indent=2))
    if result['by_step'] and result['paths']:
        plot(result, steps, os.path.join(out, 'sampler_lag.png'))
    print(f'wrote {out}/study.json and sampler_lag.png (step {analysed} analysed)')
    return result


def main(argv):
    del argv
    FLAGS = flags.FLAGS
    logging.set_verbosity(logging.WARNING)   # Orbax logs every restore at INFO
    config = load_config(FLAGS.config, FLAGS.workdir, FLAGS.num_samples)
    steps = [int(s) for s in FLAGS.steps.split(',')] if FLAGS.steps else None
    run_study(config, FLAGS.workdir, steps, FLAGS.parts, FLAGS.out, FLAGS.config)


def plot(result, steps, path):
    """Left: memorisation ratio against the kept step per sampler (EMA solid, raw dashed).
    Middle: the x0-space error along DDPM's and DDIM's paths per band of t (EMA), for the
    samples whose endpoint copies (solid) and the others (dashed). Right: the median forward
    distance along the same paths, and that of forward-process states."""
    fig, (left, middle, right) = figures.subplots(ncols=3)
    for name in result['by_step'][f'{steps[0]}/ema']:
        for params, style in (('ema', '-'), ('raw', '--')):
            ratios = [result['by_step'][f'{s}/{params}'][name][0] for s in steps]
            left.plot(steps, ratios, style, marker='o', label=f'{name} ({params})')
    left.set(xlabel='training step', ylabel='memorisation ratio', ylim=(-0.02, 1.02))
    left.legend(fontsize=7)
    labels = [f'{lo}-{hi}' for lo, hi in BANDS]
    nan = lambda values: [np.nan if v is None else v for v in values]
    for name in ('ddpm/ema', f'ddim-{result["ddim_steps"]}/ema'):
        paths = result['paths'][name]
        for group, style in (('copies', '-'), ('novel', '--')):
            middle.plot(labels, nan(paths['x0_error'][group]), style, marker='o',
                        label=f'{name}, {group}')
            right.plot(labels, nan(paths['forward_distance'][group]), style, marker='o',
                       label=f'{name}, {group}')
    right.plot(labels, nan(paths['forward_distance']['forward']), ':', c='gray',
               label='forward process')
    middle.set(xlabel='band of t', ylabel='E|x0_net - x0*|^2 / D', yscale='log')
    right.set(xlabel='band of t', ylabel='median min_i |x_t - a_t y_i| / (sigma_t sqrt(D))',
              yscale='log')
    for ax in (middle, right):
        ax.legend(fontsize=7)
        ax.tick_params(axis='x', labelrotation=45)
    figures.save(fig, path, title=f'Why the deterministic samplers lag DDPM '
                                  f'(paths at step {result["analysed_step"]})')


if __name__ == '__main__':
    define_flags()
    app.run(main)
