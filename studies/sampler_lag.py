"""Why DDIM and Heun lag DDPM on a memorising network: a study on one sweep run (issue 11).

    python studies/sampler_lag.py --workdir=RUNS/num_train_16 \
        --config=configs/digits.py:num_train=16 [--steps=1000,2000,3000,4000,5000] \
        [--num_samples=100] [--out=DIR]

On a run's kept checkpoints (training.keep_period), from the fixed x_T of the evaluation
during training (diffgen.analysis.evaluation), it measures three candidate explanations:

1. Training length and parameters: for each kept step, with the EMA and the raw parameters,
   the memorisation ratio (d_1/d_2 < 1/3, docs/math.md §7) and the median d_1 of
   DDPM (all T steps), DDIM (100 and T steps, η = 0) and Heun (50 intervals).
2. The network's error along each sampler's own path (last step, EMA and raw): at the
   states x_t each sampler visits, per band of t,
       x0-error(t) = E‖x̂₀^θ(x_t) − x̂₀*(x_t)‖² / D,  x̂₀ = (x_t − σ_t ε̂)/a_t (docs/math.md §3)
   (the error the network makes in image space where the sampler actually is), and the
   largest posterior weight max_i w_i(x_t) of ε* (docs/math.md §4): 1 when x_t lies in the
   basin of one training image.
3. Where the residual is made: DDPM from x_T down to t_s, then DDIM (η = 0, the DDIM grid
   below t_s) to 0, for a few t_s: the memorisation ratio tells from which noise level on
   the deterministic solver no longer reaches the training image DDPM was heading for.

Prints the tables, writes study.json and sampler_lag.png into --out (default
<workdir>/study). Nothing here trains; it reads checkpoints only.
"""
from __future__ import annotations

import importlib
import json
import os
import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402

from diffgen import files, figures  # noqa: E402
from diffgen.analysis import metrics  # noqa: E402
from diffgen.analysis.evaluation import EvaluationInputs  # noqa: E402
from diffgen.diffusion import samplers  # noqa: E402
from diffgen.diffusion.conversions import x0_from_eps  # noqa: E402
from diffgen.diffusion.denoisers import network_denoiser  # noqa: E402
from diffgen.optimum.optimal import optimal_eps, optimal_stats  # noqa: E402
from diffgen.training import checkpoints  # noqa: E402
from diffgen.training.loop import restore_trained  # noqa: E402

_WORKDIR = flags.DEFINE_string('workdir', None, 'A finished run (a sweep run) with kept '
                               'checkpoints.', required=True)
_CONFIG = flags.DEFINE_string('config', None, "Its config file, 'configs/<name>.py[:arg]'.",
                              required=True)
_STEPS = flags.DEFINE_string('steps', '', 'Comma-separated kept steps (default: all kept).')
_NUM_SAMPLES = flags.DEFINE_integer('num_samples', 100, 'Samples per sampler.')
_OUT = flags.DEFINE_string('out', '', 'Output folder (default <workdir>/study).')
_PARTS = flags.DEFINE_list('parts', ['1', '2', '3'], 'Which of the three measurements to run.')

SAMPLERS = (('ddpm', 0), ('ddim', 100), ('ddim', 1000), ('heun', 50))
BANDS = ((1, 10), (11, 50), (51, 100), (101, 250), (251, 500), (501, 1000))
SWITCH_TIMES = (1000, 500, 250, 100, 50, 20, 10)


def load_config(spec, num_samples):
    path, _, arg = spec.partition(':')
    config = importlib.import_module(f'configs.{pathlib.Path(path).stem}').get_config(arg or None)
    config.evaluation.num_samples = num_samples
    return config


def sampler_metrics(evaluator, denoiser, schedule, method, num_steps):
    """(memorisation ratio, median d_1) of one sampler from the evaluation x_T."""
    x0 = samplers.sample(denoiser, jnp.asarray(evaluator.x_T), schedule, method,
                         num_steps or None, rng=evaluator.sample_rng)
    d1, d2, _ = metrics.nearest_two(np.asarray(x0), evaluator.train_rows)
    return metrics.memorisation_ratio(d1, d2), float(np.median(d1))


@jax.jit
def ddpm_path(denoiser, x_T, schedule, rng):
    """DDPM (samplers.ddpm_step, the same noise) recording x_t before each step t = T..1."""
    def step(x, t):
        eps = denoiser(x, jnp.full((x.shape[0],), t, jnp.int32))
        return samplers.ddpm_step(x, eps, t=t, schedule=schedule, rng=rng), x

    ts = jnp.arange(schedule.num_timesteps, 0, -1)
    return ts, jax.lax.scan(step, x_T, ts)[1]


def ddim_path(denoiser, x_T, schedule, num_steps):
    """DDIM (η = 0) recording x_t before each step of its grid."""
    pairs = samplers.step_pairs(schedule.num_timesteps, num_steps)

    @jax.jit
    def run(x_T):
        def step(x, ts):
            t, t_next = ts
            eps = denoiser(x, jnp.full((x.shape[0],), t, jnp.int32))
            return samplers.ddim_step(x, eps, t=t, t_next=t_next, schedule=schedule), x
        return jax.lax.scan(step, x_T, pairs)[1]

    return np.asarray(pairs)[:, 0], run(x_T)


@jax.jit
def path_errors(denoiser, states, ts, rows, schedule):
    """Per visited t: mean over samples of ‖x̂₀^θ − x̂₀*‖²/D and of max_i w_i."""
    def one(x, t):
        tt = jnp.full((x.shape[0],), t, jnp.int32)
        a, sigma = schedule.a[t], schedule.sigma[t]
        x0_net = x0_from_eps(x, eps=denoiser(x, tt), a=a, sigma=sigma)
        x0_opt = x0_from_eps(x, eps=optimal_eps(x, tt, rows=rows, schedule=schedule), a=a,
                             sigma=sigma)
        err = jnp.mean((x0_net - x0_opt).reshape(x.shape[0], -1) ** 2, axis=1)
        return jnp.mean(err), jnp.mean(optimal_stats(x, tt, rows=rows, schedule=schedule)[1])
    return jax.lax.map(lambda a: one(*a), (states, ts))


def banded(ts, values):
    ts, values = np.asarray(ts), np.asarray(values)
    return [float(values[(ts >= lo) & (ts <= hi)].mean()) for lo, hi in BANDS]


@jax.jit
def switch_sample(denoiser, x_T, schedule, rng, t_switch, pairs):
    """DDPM for t > t_switch, then DDIM (η = 0) on `pairs` (the DDIM grid below t_switch)."""
    def ddpm_step(x, t):
        eps = denoiser(x, jnp.full((x.shape[0],), t, jnp.int32))
        new = samplers.ddpm_step(x, eps, t=t, schedule=schedule, rng=rng)
        return jnp.where(t > t_switch, new, x), None

    x = jax.lax.scan(ddpm_step, x_T, jnp.arange(schedule.num_timesteps, 0, -1))[0]

    def ddim_step(x, ts):
        t, t_next = ts
        eps = denoiser(x, jnp.full((x.shape[0],), t, jnp.int32))
        new = samplers.ddim_step(x, eps, t=t, t_next=t_next, schedule=schedule)
        return jnp.where(t <= t_switch, new, x), None

    return jax.lax.scan(ddim_step, x, pairs)[0]


def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)   # Orbax logs every restore at INFO
    config = load_config(_CONFIG.value, _NUM_SAMPLES.value)
    workdir = _WORKDIR.value
    out = _OUT.value or os.path.join(workdir, 'study')
    run = restore_trained(config, workdir)
    schedule, T = run.schedule, run.schedule.num_timesteps
    evaluator = EvaluationInputs(config, run)
    rows = evaluator.train_rows
    x_T = jnp.asarray(evaluator.x_T)
    kept = checkpoints.finished_steps(workdir)
    steps = [int(s) for s in _STEPS.value.split(',')] if _STEPS.value else kept
    result = {'workdir': workdir, 'config': _CONFIG.value, 'num_samples': _NUM_SAMPLES.value,
              'bands': BANDS, 'by_step': {}, 'paths': {}, 'switch': {}}

    print('1. memorisation ratio / median d1, per kept step and parameters')
    header = ' '.join(f'{m}-{n or T:<5}' for m, n in SAMPLERS)
    print(f'  step  params  {header}')
    for step in (steps if '1' in _PARTS.value else ()):
        step_run = restore_trained(config, workdir, step)
        for use_ema in (True, False):
            denoiser = network_denoiser(step_run.model, step_run.params(use_ema))
            row = {f'{m}-{n or T}': sampler_metrics(evaluator, denoiser, schedule, m, n)
                   for m, n in SAMPLERS}
            result['by_step'][f'{step}/{"ema" if use_ema else "raw"}'] = row
            cells = ' '.join(f'{r:.2f}/{d:.2f}  ' for r, d in row.values())
            print(f'  {step:5d}  {"ema" if use_ema else "raw"}     {cells}', flush=True)

    last = restore_trained(config, workdir, steps[-1])
    print(f'2. along each path at step {steps[-1]}: E|x0_net - x0*|^2/D, max posterior '
          f'weight; bands of t {BANDS}')
    for use_ema in ((True, False) if '2' in _PARTS.value else ()):
        denoiser = network_denoiser(last.model, last.params(use_ema))
        for name, (ts, states) in (
                ('ddpm', ddpm_path(denoiser, x_T, schedule, evaluator.sample_rng)),
                ('ddim-100', ddim_path(denoiser, x_T, schedule, 100))):
            err, weight = path_errors(denoiser, states, ts, rows, schedule)
            key = f'{name}/{"ema" if use_ema else "raw"}'
            result['paths'][key] = {'x0_error': banded(ts, err), 'max_weight': banded(ts, weight)}
            print(f'  {key:13s} x0-error   ' + ' '.join(f'{v:.4f}' for v in
                                                     result['paths'][key]['x0_error']))
            print(f'  {key:13s} max weight ' + ' '.join(f'{v:.3f}' for v in
                                                     result['paths'][key]['max_weight']),
                  flush=True)

    print(f'3. DDPM down to t_s, then DDIM-100 (EMA, step {steps[-1]}): memorisation ratio')
    denoiser = network_denoiser(last.model, last.params(True))
    pairs = samplers.step_pairs(T, 100)
    for t_s in (SWITCH_TIMES if '3' in _PARTS.value else ()):
        x0 = switch_sample(denoiser, x_T, schedule, evaluator.sample_rng, t_s, pairs)
        d1, d2, _ = metrics.nearest_two(np.asarray(x0), rows)
        result['switch'][t_s] = (metrics.memorisation_ratio(d1, d2), float(np.median(d1)))
        print(f'  t_s = {t_s:4d}: {result["switch"][t_s][0]:.2f} (median d1 '
              f'{result["switch"][t_s][1]:.3f})', flush=True)

    files.makedirs(out)
    files.write_text(os.path.join(out, 'study.json'), json.dumps(result, indent=2))
    if result['by_step'] and result['paths']:
        plot(result, steps, os.path.join(out, 'sampler_lag.png'))
    print(f'wrote {out}/study.json and sampler_lag.png')


def plot(result, steps, path):
    """Left: memorisation ratio against the kept step per sampler (EMA solid, raw dashed).
    Right: the x0-space error along DDPM's and DDIM's paths per band of t (EMA)."""
    fig, (left, right) = figures.subplots(ncols=2)
    for name in result['by_step'][f'{steps[0]}/ema']:
        for params, style in (('ema', '-'), ('raw', '--')):
            ratios = [result['by_step'][f'{s}/{params}'][name][0] for s in steps]
            left.plot(steps, ratios, style, marker='o', label=f'{name} ({params})')
    left.set(xlabel='training step', ylabel='memorisation ratio', ylim=(-0.02, 1.02))
    left.legend(fontsize=7)
    labels = [f'{lo}-{hi}' for lo, hi in BANDS]
    for name in ('ddpm/ema', 'ddim-100/ema'):
        right.plot(labels, result['paths'][name]['x0_error'], marker='o', label=name)
    right.set(xlabel='band of t', ylabel='E|x0_net - x0*|^2 / D', yscale='log')
    right.legend()
    figures.save(fig, path, title='Why the deterministic samplers lag DDPM')


if __name__ == '__main__':
    app.run(main)
