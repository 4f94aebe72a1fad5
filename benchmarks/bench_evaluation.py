"""The cost of evaluation during training against the training it interrupts, side by side.

    python benchmarks/bench_evaluation.py [config[:arg]]     (default configs/digits.py)

Times, in one process and interleaved, the train calls of one evaluation interval (the
shortest period of the config's evaluators, config.evaluation.evals) and one evaluation of the
evaluators due then (diffgen.analysis.evaluation.Evaluations, classifier already cached),
and prints their ratio: the fraction of training time that evaluation adds. The target is at
most 0.10.
"""
from __future__ import annotations

import importlib
import os
import pathlib
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
os.environ.setdefault('DIFFGEN_DATA_DIR', os.path.join(tempfile.gettempdir(), 'diffgen_data'))

import jax  # noqa: E402

from diffgen import data  # noqa: E402
from diffgen.analysis.evaluation import Evaluations  # noqa: E402
from diffgen.training.loop import build, place_training_set  # noqa: E402
from diffgen.training.state import sampling_params  # noqa: E402
from diffgen.training.step import make_train_call  # noqa: E402
from benchmarks.timing import time_train_calls  # noqa: E402


def load_config(spec):
    """get_config(arg) of a config file named 'configs/<name>.py[:arg]'."""
    path, _, arg = spec.partition(':')
    return importlib.import_module(f'configs.{pathlib.Path(path).stem}').get_config(arg or None)


def main(spec='configs/digits.py', repeats=3):
    config = load_config(spec)
    t = config.training
    dataset = data.load(config)
    run = build(config, dataset)
    train_set = place_training_set(dataset, run.mesh)
    train_call = make_train_call(config, run.model, run.tx, run.schedule, run.mesh)
    evaluations = Evaluations(config, run)
    period = min(entry.every for entry in evaluations.evals.values())
    due = evaluations.due(period, last=False)
    evaluate = lambda state: evaluations(sampling_params(state, config.sampling.use_ema), due)
    state = run.state
    state, _ = jax.block_until_ready(train_call(state, train_set))     # compile
    evaluate(state)                                                    # compile, classifier
    calls = period // t.steps_per_call
    best_train = best_eval = float('inf')
    for _ in range(repeats):
        seconds, state = time_train_calls(train_call, state, train_set, calls)
        best_train = min(best_train, seconds)
        start = time.perf_counter()
        evaluate(state)
        best_eval = min(best_eval, time.perf_counter() - start)
    e = config.evaluation
    print(f'{spec}: every {period} steps the evaluators {due}, {e.num_samples} samples, '
          f'{e.num_images} images, {jax.devices()[0].platform}')
    print(f'  {period} train steps : {best_train:8.2f} s')
    print(f'  one evaluation   : {best_eval:8.2f} s')
    print(f'  evaluation / training: {best_eval / best_train:.3f}  (target <= 0.10)')


if __name__ == '__main__':
    main(*sys.argv[1:2])
