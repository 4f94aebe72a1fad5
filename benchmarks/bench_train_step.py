"""The digits train call as a lax.scan loop against the same steps unrolled, side by side,
and the training loop against its step.

    python benchmarks/bench_train_step.py [steps_per_call]     scan against unrolled
    python benchmarks/bench_train_step.py loop [num_steps]     the loop against its step

The first prints ms per train step for both forms and their ratio (why CPU configs set
training.unroll = True: XLA:CPU runs a convolution's weight gradient inside a while loop
far slower than outside one).

`loop` runs the default digits run (train_and_evaluate with its evaluator, checkpoints,
TensorBoard) for num_steps steps (default 1500) in a temporary workdir and reads the
steps/s its progress line prints (the steps alone: evaluation and sample grids are left
out and reported as their share of the time); the unrolled train call of the same config
is timed just before and just after it in this process. Prints both rates and their
ratio loop / call (1.0: the loop costs nothing beyond its step).
"""
from __future__ import annotations

import os
import pathlib
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
os.environ.setdefault('DIFFGEN_DATA_DIR', os.path.join(tempfile.gettempdir(), 'diffgen_data'))

import contextlib  # noqa: E402
import io  # noqa: E402
import re  # noqa: E402

import jax  # noqa: E402

from configs import digits  # noqa: E402
from diffgen import data, parallel  # noqa: E402
from diffgen.analysis.evaluation import Evaluations  # noqa: E402
from diffgen.training.loop import build, place_training_set, train_and_evaluate  # noqa: E402
from diffgen.training.step import make_train_call  # noqa: E402
from benchmarks.timing import time_train_calls  # noqa: E402


def main(steps_per_call=5, repeats=3):
    config = digits.get_config()
    config.training.steps_per_call = steps_per_call
    dataset = data.load(config)
    run = build(config, dataset)
    schedule, model, tx, mesh, state = run.schedule, run.model, run.tx, run.mesh, run.state
    images = parallel.replicate(dataset.train_images, mesh)
    calls = {}
    for unroll in (False, True):
        config.training.unroll = unroll
        calls[unroll] = make_train_call(config, model, tx, schedule, mesh)
        jax.block_until_ready(calls[unroll](state, images))  # compile
    best = {False: float('inf'), True: float('inf')}
    for _ in range(repeats):  # interleaved, best of repeats
        for unroll, call in calls.items():
            start = time.perf_counter()
            jax.block_until_ready(call(state, images))
            best[unroll] = min(best[unroll], (time.perf_counter() - start) / steps_per_call)
    print(f'digits config, batch {config.training.batch_size}, {steps_per_call} steps per call, '
          f'{jax.devices()[0].platform}')
    print(f'  lax.scan loop : {best[False] * 1e3:8.1f} ms/step')
    print(f'  unrolled      : {best[True] * 1e3:8.1f} ms/step')
    print(f'  ratio loop / unrolled: {best[False] / best[True]:.1f}')


TIMED_CALLS = 20   # train calls per rate measurement of call_timer


def call_timer(config, calls=TIMED_CALLS):
    """A function () -> steps/s of the config's train call (donated state, as the loop runs
    it): `calls` calls in a row, their mean rate (as the loop's rate is a mean)."""
    dataset = data.load(config)
    run = build(config, dataset)
    train_set = place_training_set(dataset, run.mesh)
    call = make_train_call(config, run.model, run.tx, run.schedule, run.mesh, donate=True)
    state = [jax.block_until_ready(call(run.state, train_set))[0]]  # compile

    def rate():
        seconds, state[0] = time_train_calls(call, state[0], train_set, calls)
        return calls * config.training.steps_per_call / seconds
    return rate


def loop(num_steps=1500):
    config = digits.get_config()
    config.training.num_steps = num_steps
    call_rate = call_timer(config)
    before = call_rate()
    out = io.StringIO()
    with tempfile.TemporaryDirectory() as workdir, contextlib.redirect_stdout(out):
        train_and_evaluate(config, workdir, make_evaluations=Evaluations)
    lines = [l for l in out.getvalue().splitlines() if re.match(r'train step \d+/', l)]
    rate = float(re.search(r'([\d.]+) steps/s', lines[-1]).group(1))
    after = call_rate()
    step = (before + after) / 2
    print(f'digits config, {num_steps} steps of the default run, {jax.devices()[0].platform}')
    print(f'  the run\'s last progress line: {lines[-1]}')
    print(f'  the loop        : {rate:6.2f} steps/s')
    timed = TIMED_CALLS * config.training.steps_per_call
    print(f'  its train call  : {step:6.2f} steps/s  (mean of {timed} steps before the run '
          f'{before:.2f}, after it {after:.2f})')
    print(f'  ratio loop / call: {rate / step:.3f}', flush=True)


if __name__ == '__main__':
    if sys.argv[1:2] == ['loop']:
        loop(*(int(a) for a in sys.argv[2:3]))
    else:
        main(*(int(a) for a in sys.argv[1:2]))
