"""Data-parallel training on 8 simulated devices equals training on one; the sharded training
set and the batch gathered from it are exact; multi-process start-up reads its settings.

The 8-device checks run in a child Python with XLA_FLAGS=--xla_force_host_platform_device_count=8
set before jax is imported, comparing get_mesh(1) with get_mesh(8) in the same process.
"""
import os
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from diffgen import data, parallel
from tests.tiny import tiny_digits_config

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Rows sharded over 8 devices: every process (here one) places its own rows; gathering by
# index gives exactly rows[idx], split over the devices, padding never drawn.
SHARDED_ROWS = """
import jax
import numpy as np
from jax.sharding import PartitionSpec as P

from diffgen import parallel

assert jax.device_count() == 8
mesh = parallel.get_mesh()
gather = jax.jit(parallel.gather_rows, static_argnums=2)
for rows in [np.arange(13 * 6, dtype=np.uint8).reshape(13, 3, 2),
             np.random.default_rng(0).standard_normal((40, 5)).astype(np.float32)]:
    n = len(rows)
    assert parallel.process_rows(n, mesh) == (0, parallel.padded_rows(n, mesh))
    sharded = parallel.shard_process_rows(rows, n, mesh)
    assert sharded.rows.sharding.spec == P(parallel.DATA_AXIS)
    assert sharded.rows.shape[0] % 8 == 0 and sharded.num_rows == n
    np.testing.assert_array_equal(np.asarray(sharded.rows)[:n], rows)
    assert not np.asarray(sharded.rows)[n:].any()
    idx = np.array([0, n - 1, 5, 5, 1, n - 2, 3, 7, 2, 0, 4, 6, 9, 8, 11, 12]) % n
    batch = gather(sharded.rows, idx, mesh)
    assert batch.dtype == rows.dtype and batch.sharding.spec == P(parallel.DATA_AXIS)
    np.testing.assert_array_equal(np.asarray(batch), rows[idx])
print('sharded rows ok')
"""

# 20 train steps (one jitted lax.scan) on 1 and on 8 devices from the same initial state.
# The batches, timesteps and noise are bitwise the same (indices and keys depend on the step
# alone, and threefry draws do not depend on the sharding); only the order of the float32
# sums (per-device partial means and gradients, then the all-reduce) differs. With Adam's
# eps = 1 the update lr m/(sqrt(v) + eps) is close to linear in the gradient, so those
# round-off differences pass through unamplified: each step's gradient sums run over
# B·H·W = 1024 terms, whose reordered float32 sums differ by about sqrt(1024)·u
# (u = 2^-24) relative, and 20 steps at most add them up: the parameters may differ by
# 20·sqrt(1024)·u ≈ 3.8e-5 of their total change. (With the default eps = 1e-8, Adam divides
# each coordinate by its own gradient scale, so coordinates with round-off-sized gradients
# get O(lr) different steps: that is not a property of the parallelism.)
DATA_PARALLEL = """
import jax
import numpy as np

from diffgen import data, parallel
from diffgen.training.loop import build, place_training_set
from diffgen.training.step import draw_batch, make_train_call, step_keys
from tests.tiny import tiny_digits_config

assert jax.device_count() == 8
config = tiny_digits_config(DATA_DIR, **{'training.steps_per_call': 20, 'training.unroll': False,
                                         'optim.eps': 1.0})
dataset = data.load(config)
run = build(config, dataset)
schedule, model, tx, initial = run.schedule, run.model, run.tx, run.state
initial = jax.device_get(initial)
params, batches = {}, {}
for devices in (1, 8):
    mesh = parallel.get_mesh(devices)
    train_set = place_training_set(dataset, mesh)
    batch_key, _, flip_key = step_keys(config.seed, 3)
    batches[devices] = np.asarray(jax.jit(
        lambda s: draw_batch(s, 16, batch_key, flip_key, True, mesh))(train_set))
    state, metrics = make_train_call(config, model, tx, schedule, mesh)(
        parallel.replicate(initial, mesh), train_set)
    assert int(state.step) == 20 and np.all(np.isfinite(np.asarray(metrics['loss'])))
    params[devices] = jax.tree.leaves(jax.device_get(state.params))
np.testing.assert_array_equal(batches[1], batches[8])
start = jax.tree.leaves(initial.params)
diff = np.sqrt(sum(np.sum((a - b) ** 2.0) for a, b in zip(params[1], params[8])))
moved = np.sqrt(sum(np.sum((a - b) ** 2.0) for a, b in zip(params[1], start)))
assert moved > 0 and diff <= 20 * np.sqrt(1024) * 2.0 ** -24 * moved, (diff, moved)
print(f'data parallel ok: relative difference {diff / moved:.2e}')
"""

# E1 of --mode=analyze on a trained tiny workdir, with the training set sharded over 8
# devices and the sample batches split over them, against 1 device: the same x_T and keys,
# and the empirical optimum and nearest neighbours differ only in float32 summation order
# (tests/test_sharded_engine.py), so the rates (counts over 16 samples, away from their
# thresholds) agree exactly and the distances and quality numbers to round-off.
ANALYZE = """
import jax
import numpy as np

import dataclasses

from diffgen import parallel
from diffgen.analysis import report, runner  # runner registers the experiments
from diffgen.analysis.context import make_context
from diffgen.analysis.experiment import EXPERIMENTS
from diffgen.training.loop import restore_trained, train_and_evaluate
from tests.tiny import tiny_digits_config

config = tiny_digits_config(DATA_DIR, **{
    'training.num_steps': 4, 'analysis.num_samples': 16, 'analysis.batch_size': 16,
    'analysis.sampler_steps': 5, 'analysis.quality.classifier_steps': 20})
train_and_evaluate(config, WORKDIR)
run = restore_trained(config, WORKDIR)
numbers = {}
for devices in (1, 8):
    mesh = parallel.get_mesh(devices)
    state = parallel.replicate(jax.device_get(run.state), mesh)
    ctx = make_context(config, WORKDIR + f'/{devices}', dataclasses.replace(run, mesh=mesh, state=state))
    assert len(ctx.train_rows.rows.sharding.device_set) == devices
    numbers[devices] = {k: report.reported(EXPERIMENTS[k].run(ctx).numbers)
                        for k in ('e1', 'e2', 'e3', 'e4')}
flat = lambda tree, p='': ({k: v for key, sub in tree.items() for k, v in
                            flat(sub, f'{p}{key}.').items()} if isinstance(tree, dict)
                           else {p[:-1]: tree})
one, eight = flat(numbers[1]), flat(numbers[8])
assert one.keys() == eight.keys() and any('memorisation_ratio' in k for k in one)
for key in one:
    if 'rate' in key or 'ratio' in key:
        assert one[key] == eight[key], (key, one[key], eight[key])
    elif isinstance(one[key], float):
        assert np.isclose(one[key], eight[key], rtol=1e-4, atol=1e-5), (key, one[key], eight[key])
print('sharded analyze ok')
"""


def run_on_eight_devices(script, **substitutions):
    env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8',
               JAX_PLATFORMS='cpu', PYTHONPATH=str(ROOT))
    script = textwrap.dedent(script)
    for name, value in substitutions.items():
        script = script.replace(name, repr(value))
    result = subprocess.run([sys.executable, '-c', script], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=900)   # a hang guard, not a speed test: a loaded 2-core machine needs minutes
    assert result.returncode == 0, result.stdout + result.stderr[-5000:]
    return result.stdout


def test_sharded_rows_and_gathered_batches_are_exact():
    assert 'sharded rows ok' in run_on_eight_devices(SHARDED_ROWS)


def test_data_parallel_training_on_8_devices_equals_1_device(digits_data_dir):
    assert 'data parallel ok' in run_on_eight_devices(DATA_PARALLEL,
                                                      DATA_DIR=str(digits_data_dir))


def test_a_host_reads_only_its_rows_of_the_training_set(digits_data_dir):
    """data.load(train_rows=...) reads rows [start, stop) of the very training set a whole
    load draws (stop may run into the padding past N; a host may hold padding only)."""
    config = tiny_digits_config(digits_data_dir)
    whole = data.load(config)
    n = len(whole.train_images)
    for start, stop in [(0, 8), (100, 300), (n - 5, n + 3), (n + 1, n + 7)]:
        part = data.load(config, train_rows=lambda num, rows=(start, stop): rows)
        assert part.num_train == n and part.train_start == min(start, n)
        np.testing.assert_array_equal(part.train_images, whole.train_images[start:stop])
        np.testing.assert_array_equal(part.train_labels, whole.train_labels[start:stop])
        np.testing.assert_array_equal(part.heldout_images, whole.heldout_images)


def test_initialize_is_a_no_op_for_one_process():
    assert parallel.initialize({}) is False
    assert parallel.initialize({parallel.DISTRIBUTED_ENV: 'off',
                                'TPU_WORKER_HOSTNAMES': 'h0,h1'}) is False


@pytest.mark.parametrize('environ,message', [
    ({parallel.COORDINATOR_ENV: 'localhost:1234'}, 'set all of'),
    ({parallel.NUM_PROCESSES_ENV: '2', parallel.PROCESS_ID_ENV: '0'}, 'set all of'),
    ({parallel.DISTRIBUTED_ENV: 'yes'}, 'not auto or off'),
])
def test_initialize_rejects_incomplete_settings(environ, message):
    with pytest.raises(ValueError, match=message):
        parallel.initialize(environ)


@pytest.mark.slow
def test_sharded_analyze_gives_the_single_device_report(digits_data_dir, tmp_path):
    assert 'sharded analyze ok' in run_on_eight_devices(
        ANALYZE, DATA_DIR=str(digits_data_dir), WORKDIR=str(tmp_path / 'work'))
