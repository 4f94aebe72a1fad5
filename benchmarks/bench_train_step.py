"""The digits train call as a lax.scan loop against the same steps unrolled, side by side.

    python benchmarks/bench_train_step.py [steps_per_call]

Prints ms per train step for both forms and their ratio (why CPU configs set
training.unroll = True: XLA:CPU runs a convolution's weight gradient inside a while loop
far slower than outside one).
"""
from __future__ import annotations

import os
import pathlib
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
os.environ.setdefault('DIFFGEN_DATA_DIR', os.path.join(tempfile.gettempdir(), 'diffgen_data'))

import jax  # noqa: E402

from configs import digits  # noqa: E402
from diffgen import data, parallel  # noqa: E402
from diffgen.training.loop import build  # noqa: E402
from diffgen.training.step import make_train_call  # noqa: E402


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


if __name__ == '__main__':
    main(*(int(a) for a in sys.argv[1:2]))
