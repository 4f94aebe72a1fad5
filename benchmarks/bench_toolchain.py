"""The training toolchain's numbers on this machine:

    python benchmarks/bench_toolchain.py [cache] [memory] [dtype] [e3]   (default: all four)

cache   start-up of the same short digits smoke run (diffgen.main in a subprocess, a fresh
        workdir each time) with an empty persistent compilation cache, then with the cache
        the first run filled: both wall times and their ratio second / first.
memory  XLA's memory statistics of the compiled train call (compiled.memory_analysis()) of
        the digits smoke config, without and with donation of the train state.
dtype   steps/s of that train call with training.compute_dtype bfloat16 against float32
        (XLA:CPU has no bfloat16 arithmetic: expect no gain on a CPU).
e3      the digits smoke model trained with compute_dtype float32 and with bfloat16 (same
        seed, same batches), then E3 on each: its x0-gap E|x0_net - x0*|^2/D and the cosine of
        eps_theta and eps* per t on training, held-out and trajectory points, side by side,
        and the largest difference between the two curves.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

import jax

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from configs import digits  # noqa: E402
from diffgen import data  # noqa: E402
from diffgen.analysis.context import make_context  # noqa: E402
from diffgen.analysis.runner import run_experiments  # noqa: E402
from diffgen.training.loop import (build, place_training_set, restore_trained,  # noqa: E402
                                   train_and_evaluate)
from diffgen.training.step import make_train_call  # noqa: E402
from benchmarks.timing import time_train_calls  # noqa: E402

SMOKE = '--config=configs/digits.py:smoke'
SHORT = ['--config.training.num_steps=10', '--config.training.log_every=5',
         '--config.training.checkpoint_every=10', '--config.sampling.num_samples=16',
         '--config.sampling.num_steps=10']


def timed_run(workdir, cache):
    """Wall time of a short smoke run (its data from the default data dir, prepared by
    smoke_run before)."""
    start = time.perf_counter()
    result = subprocess.run(
        [sys.executable, '-m', 'diffgen.main', SMOKE, f'--workdir={workdir}', '--mode=train',
         *SHORT, f'--config.training.compile_cache_dir={cache}'],
        cwd=REPO, capture_output=True, text=True)
    if result.returncode:
        raise RuntimeError(result.stderr[-3000:])
    return time.perf_counter() - start


def bench_cache():
    smoke_run()  # the digits dataset prepared in the data dir, outside the timings
    with tempfile.TemporaryDirectory() as tmp:
        cache = os.path.join(tmp, 'cache')
        first = timed_run(os.path.join(tmp, 'first'), cache)
        entries = len(os.listdir(cache))
        second = timed_run(os.path.join(tmp, 'second'), cache)
    print(f'compilation cache, {SMOKE} for 10 steps + a 16-sample grid in a subprocess:')
    print(f'  first start (cache empty)    : {first:7.1f} s  ({entries} entries written)')
    print(f'  second start (cache warm)    : {second:7.1f} s')
    print(f'  ratio second / first         : {second / first:.2f}')


def smoke_run(compute_dtype='float32'):
    config = digits.get_config('smoke')
    config.training.compute_dtype = compute_dtype
    dataset = data.load(config)
    run = build(config, dataset)
    return config, run, place_training_set(dataset, run.mesh)


def bench_memory():
    config, run, train_set = smoke_run()
    print(f'train call memory, {SMOKE} (batch {config.training.batch_size}, '
          f'{config.training.steps_per_call} steps per call, {jax.devices()[0].platform}):')
    for donate in (False, True):
        call = make_train_call(config, run.model, run.tx, run.schedule, run.mesh, donate=donate)
        stats = call.lower(run.state, train_set).compile().memory_analysis()
        peak = (stats.argument_size_in_bytes + stats.output_size_in_bytes
                + stats.temp_size_in_bytes - stats.alias_size_in_bytes)
        print(f'  donate={donate!s:5}: arguments {stats.argument_size_in_bytes / 2**20:6.2f} MiB'
              f'  outputs {stats.output_size_in_bytes / 2**20:6.2f} MiB'
              f'  temporaries {stats.temp_size_in_bytes / 2**20:6.2f} MiB'
              f'  aliased {stats.alias_size_in_bytes / 2**20:6.2f} MiB'
              f'  -> {peak / 2**20:6.2f} MiB')


def bench_dtype(calls=10, repeats=3):
    rates = {}
    for dtype in ('float32', 'bfloat16'):
        config, run, train_set = smoke_run(dtype)
        call = make_train_call(config, run.model, run.tx, run.schedule, run.mesh, donate=True)
        state, _ = jax.block_until_ready(call(run.state, train_set))  # compile
        best = float('inf')
        for _ in range(repeats):
            seconds, state = time_train_calls(call, state, train_set, calls)
            best = min(best, seconds)
        rates[dtype] = calls * config.training.steps_per_call / best
    print(f'compute dtype, {SMOKE} train call on {jax.devices()[0].platform} '
          f'({jax.devices()[0].device_kind}), best of {repeats} x {calls} calls:')
    for dtype, rate in rates.items():
        print(f'  {dtype:9}: {rate:7.1f} steps/s')
    print(f'  ratio bfloat16 / float32: {rates["bfloat16"] / rates["float32"]:.2f}')


E3_TIMES = (1, 10, 50, 100, 250, 500, 1000)


def e3_curves(compute_dtype, workdir):
    """E3's numbers of the digits smoke model trained with compute_dtype in workdir."""
    config = digits.get_config('smoke')
    config.training.compute_dtype = compute_dtype
    train_and_evaluate(config, workdir)
    run_experiments(make_context(config, workdir, restore_trained(config, workdir)), ['e3'])
    with open(os.path.join(workdir, 'report', 'report.json')) as f:
        return json.load(f)['e3']


def bench_e3():
    with tempfile.TemporaryDirectory() as tmp:
        curves = {d: e3_curves(d, os.path.join(tmp, d)) for d in ('float32', 'bfloat16')}
    ts = curves['float32']['t']
    rows = [ts.index(min(ts, key=lambda s: abs(s - t))) for t in E3_TIMES]
    print(f'E3 of {SMOKE} trained with compute_dtype float32 / bfloat16:')
    for kind in ('x0_gap', 'cosine'):
        for where in ('train', 'heldout', 'trajectory'):
            a, b = (curves[d][f'{kind}_{where}'] for d in ('float32', 'bfloat16'))
            cells = '  '.join(f't={ts[i]}: {a[i]:.4g}/{b[i]:.4g}' for i in rows)
            diff = max(abs(x - y) for x, y in zip(a, b))
            print(f'  {kind:6} {where:10} {cells}   max |difference| over t {diff:.3g}')


PARTS = {'cache': bench_cache, 'memory': bench_memory, 'dtype': bench_dtype, 'e3': bench_e3}

if __name__ == '__main__':
    for name in sys.argv[1:] or list(PARTS):
        PARTS[name]()
