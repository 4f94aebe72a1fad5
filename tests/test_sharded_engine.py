"""The training set sharded over 8 simulated devices gives what one device gives.

Each test runs a child Python with XLA_FLAGS=--xla_force_host_platform_device_count=8 set
before jax is imported. The sharded sums differ from the single-device ones only in their
order, so both lie within the float32 round-off bound of tests/test_optimal.py (counting the
8 shards' chunks and the cross-shard rescale as chunks) around the float64 brute force, and
hence within the sum of the two bounds of each other. Nearest-neighbour indices must agree
exactly, ties included (copies of a point land on different devices). N = 3 leaves seven of
the eight shards all padding.
"""
import os
import pathlib
import subprocess
import sys
import textwrap

ROOT = pathlib.Path(__file__).resolve().parents[1]

COMMON = """
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from diffgen import parallel
from diffgen.optimum import chunked
from diffgen.optimum import neighbors
from diffgen.optimum import optimal
from diffgen.diffusion.schedules import make_schedule

assert jax.device_count() == 8, jax.devices()
mesh = parallel.get_mesh()
schedule = make_schedule('linear', 1000)


def prepare(y, chunk_size):
    sharded = chunked.prepare_rows(y, chunk_size, mesh=mesh)
    assert sharded.rows.sharding.spec == P(parallel.DATA_AXIS)
    assert len({s.device for s in sharded.rows.addressable_shards}) == 8
    assert sharded.rows.shape[0] % (8 * sharded.chunk_size) == 0
    return sharded, chunked.prepare_rows(y, chunk_size)
"""

OPTIMAL = """
from tests.test_optimal import TIMES, assert_within, bounds, brute_force, forward_points
from tests.test_optimal import training_set

apply = jax.jit(lambda denoiser, x, t: denoiser(x, t))
for n, chunk_size in [(37, 4), (40, 2048), (3, 8)]:
    y = training_set(n, (4, 4, 3))
    sharded, single = prepare(y, chunk_size)
    t = np.array(TIMES * 2, np.int32)
    x = np.concatenate([forward_points(y, t[:len(TIMES)], schedule, 1),
                        np.random.default_rng(2).standard_normal((len(TIMES), 4, 4, 3))
                        .astype(np.float32)])
    ref = brute_force(x, t, y, schedule)
    chunks = sharded.rows.shape[0] // sharded.chunk_size + 8
    b_sharded = bounds(x, t, y, schedule, ref, chunks)
    b_single = bounds(x, t, y, schedule, ref, single.rows.shape[0] // single.chunk_size)
    for key, fn in [('x0', optimal.optimal_x0), ('eps', optimal.optimal_eps)]:
        a = fn(x, t, rows=sharded, schedule=schedule)
        b = fn(x, t, rows=single, schedule=schedule)
        assert_within(a, ref[key], b_sharded[key])
        assert_within(a, b, b_sharded[key] + b_single[key])
    den = optimal.optimal_denoiser(sharded, schedule)
    assert_within(apply(den, x, t), optimal.optimal_eps(x, t, rows=single, schedule=schedule),
                  b_sharded['eps'] + b_single['eps'])
    for i, key in enumerate(['entropy', 'max_weight']):
        a = optimal.optimal_stats(x, t, rows=sharded, schedule=schedule)[i]
        b = optimal.optimal_stats(x, t, rows=single, schedule=schedule)[i]
        assert_within(a, ref[key], b_sharded[key])
        assert_within(a, b, b_sharded[key] + b_single[key])
print('sharded optimal ok')
"""

KNN = """
from tests.test_neighbors import brute_force, distance_bound

rng = np.random.default_rng(0)
for n, k, chunk_size in [(37, 5, 4), (40, 2, 2048), (3, 2, 8)]:
    half = rng.uniform(-1, 1, ((n + 1) // 2, 12)).astype(np.float32)
    y = np.concatenate([half, half[::-1]])[:n]   # every point twice, far apart in index
    queries = np.concatenate([y[:2], rng.uniform(-1, 1, (6, 12)).astype(np.float32)])
    sharded, single = prepare(y, chunk_size)
    d_ref, order = brute_force(queries, y)
    bound = distance_bound(queries, y)
    d_sh, i_sh = neighbors.knn(queries, sharded, k)
    d_one, i_one = neighbors.knn(queries, single, k)
    np.testing.assert_array_equal(i_sh, i_one)
    np.testing.assert_array_equal(i_sh, order[:, :k])
    rows = np.arange(len(queries))[:, None]
    assert np.all(np.abs(np.asarray(d_sh, np.float64) - d_ref[rows, i_sh]) <= bound[rows, i_sh])
    assert np.all(np.abs(np.asarray(d_sh) - np.asarray(d_one)) <= 2 * bound[rows, i_sh])
print('sharded knn ok')
"""


def run_on_eight_devices(body):
    env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8',
               JAX_PLATFORMS='cpu', PYTHONPATH=str(ROOT))
    script = textwrap.dedent(COMMON) + textwrap.dedent(body)
    result = subprocess.run([sys.executable, '-c', script], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_sharded_optimal_equals_single_device():
    assert 'sharded optimal ok' in run_on_eight_devices(OPTIMAL)


def test_sharded_knn_equals_single_device():
    assert 'sharded knn ok' in run_on_eight_devices(KNN)
