"""The empirical-optimal engine against its roofline and against a naive full softmax.

    python benchmarks/bench_optimal.py [--quick] [cifar|large ...]   (default: both shapes)

Two shapes, batch B = 64 queries:
  cifar: N = 50 000 training images of D = 3072 (CIFAR-10). The work is two GEMMs,
         x Yᵀ (B×D by D×N) and w Y (B×N by N×D), 4·B·N·D flops; the roofline is the time of
         those two plain matmuls, and the target is engine ≤ 0.8 × roofline at the default
         chunk (chunked.default_chunk_size()). Each engine's rate is also printed in GFLOP/s
         against the machine's GEMM peak, measured here as the best rate of a 1024 × 1024
         float32 matmul.
  large: N = 4 194 304 points of D = 16. The training set is only 256 MiB, but one B×N
         float32 logit matrix is 1 GiB and a naive softmax holds several: this is where the
         chunked engine's O(B·C + C·D) working set matters.

Times are the best of interleaved repeats in this process. Memory is XLA's compiled
temporary-buffer size (memory_analysis) and the peak rise of resident memory while the call
runs, sampled in a fresh subprocess per method (so the methods do not share an allocator).
"""
from __future__ import annotations

import functools
import gc
import json
import os
import pathlib
import subprocess
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from diffgen.optimum import chunked
from diffgen.optimum import optimal  # noqa: E402
from diffgen.diffusion.schedules import make_schedule  # noqa: E402
from benchmarks.timing import best_of, gemm_peak, peak_rss_rise  # noqa: E402

BATCH = 64
SHAPES = {'cifar': (50_000, 3072), 'large': (4_194_304, 16)}
CHUNKS = {'cifar': (512, 2048, 8192, 16384, 65536), 'large': (2048, 8192, 32768, 65536)}
WHY = {
    'cifar': 'the CIFAR-10 training set; the target is engine <= 0.8 x roofline at the '
             'default chunk.',
    'large': 'N large, D small (a 4M-point toy set): the training set is small, but one '
             'B x N float32\nlogit matrix is 1 GiB and the naive softmax must hold it; the '
             'engine holds B x C. Here\nthe "roofline" matmuls themselves write/read a B x N '
             'matrix, so compare the engine with naive.',
}
TIMESTEP = 500   # every t costs the same; mid-range so the posterior is not one-hot
MIB = 2.0 ** 20


@jax.jit
def naive_x0(y, sq_norms, schedule, x, t):
    """x̂₀* with the whole B×N logit matrix: softmax(q Yᵀ − c n) Y."""
    alpha_bar = schedule.alphas_bar[t]
    a, sigma2 = jnp.sqrt(alpha_bar), 1.0 - alpha_bar
    logits = ((a / sigma2)[:, None] * x) @ y.T - (a * a / (2 * sigma2))[:, None] * sq_norms
    return jax.nn.softmax(logits, axis=1) @ y


@jax.jit
def engine_x0(rows, schedule, x, t):
    """optimal.optimal_x0 with its arguments positional, as the other measured calls."""
    return optimal.optimal_x0(x, t, rows=rows, schedule=schedule)


@jax.jit
def scores_matmul(x, y):
    """The first GEMM alone: x Yᵀ."""
    return x @ y.T


@jax.jit
def values_matmul(w, y):
    """The second GEMM alone: w Y."""
    return w @ y


def make_inputs(shape_name, chunk_size=None):
    """Training set (uniform in [-1, 1], made on the device), queries and timesteps."""
    n, d = SHAPES[shape_name]
    y = jax.jit(lambda k: jax.random.uniform(k, (n, d), minval=-1.0, maxval=1.0))(
        jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (BATCH, d))
    t = jnp.full((BATCH,), TIMESTEP, jnp.int32)
    rows = None if chunk_size is None else chunked.prepare_rows(y, chunk_size)
    return y, rows, x, t


def method_call(method, y, rows, x, t, schedule):
    """(function, args) of one measured method."""
    n = y.shape[0]
    if method == 'engine':
        return engine_x0, (rows, schedule, x, t)
    if method == 'naive':
        return naive_x0, (y, jnp.sum(y * y, axis=1), schedule, x, t)
    if method == 'scores':
        return scores_matmul, (x, y)
    return values_matmul, (jnp.full((x.shape[0], n), 1.0 / n), y)


def temp_mib(fn, args):
    """XLA's temporary buffers for one call, in MiB (arguments and outputs excluded)."""
    return fn.lower(*args).compile().memory_analysis().temp_size_in_bytes / MIB


def best_times(calls, repeats):
    """Best wall time of each call over interleaved repeats (after a warm-up call)."""
    for fn, args in calls.values():
        jax.block_until_ready(fn(*args))
    return best_of(repeats, {name: functools.partial(lambda f, a: jax.block_until_ready(f(*a)),
                                                     fn, args)
                             for name, (fn, args) in calls.items()})



def child(shape_name, method, chunk_size):
    """In a fresh process: the peak rise of resident memory over three calls, in MiB."""
    schedule = make_schedule('linear', 1000)
    y, rows, x, t = make_inputs(shape_name, chunk_size if method == 'engine' else None)
    fn, args = method_call(method, y, rows, x, t, schedule)
    compiled = fn.lower(*args).compile()
    jax.block_until_ready(args)
    del y, rows
    gc.collect()
    rise = peak_rss_rise(lambda: jax.block_until_ready(compiled(*args)))
    print(json.dumps({'rss_rise_mib': rise}))


def rss_rise(shape_name, method, chunk_size):
    out = subprocess.run([sys.executable, __file__, '--child', shape_name, method,
                          str(chunk_size)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])['rss_rise_mib']


def run_shape(shape_name, schedule, repeats, peak):
    n, d = SHAPES[shape_name]
    print(f'\n== {shape_name}: N = {n:,}, D = {d}, B = {BATCH}, t = {TIMESTEP}, '
          f'training set {n * d * 4 / MIB:,.0f} MiB, one B×N float32 matrix '
          f'{BATCH * n * 4 / MIB:,.0f} MiB')
    print(f'why: {WHY[shape_name]}')
    y, _, x, t = make_inputs(shape_name)
    calls = {m: method_call(m, y, None, x, t, schedule) for m in ('scores', 'values', 'naive')}
    engines = {}
    for c in CHUNKS[shape_name]:
        rows = chunked.prepare_rows(y, c)
        engines[c] = f'engine C={rows.chunk_size}'
        calls[engines[c]] = (engine_x0, (rows, schedule, x, t))
    if shape_name == 'cifar':   # bfloat16 storage is for accelerators; shown for completeness
        rows = chunked.prepare_rows(y, 512, jnp.bfloat16)
        calls['engine bf16 C=512'] = (engine_x0, (rows, schedule, x, t))
    temps = {name: temp_mib(fn, args) for name, (fn, args) in calls.items()}
    times = best_times(calls, repeats)
    roofline = times['scores'] + times['values']
    print(f'roofline x Yᵀ + w Y: {times["scores"] * 1e3:8.1f} + {times["values"] * 1e3:.1f} '
          f'= {roofline * 1e3:.1f} ms   (temp {temps["scores"] + temps["values"]:,.1f} MiB)')
    flops = 4 * BATCH * n * d
    for name in [k for k in calls if k.startswith('engine')] + ['naive']:
        rate = flops / times[name] / 1e9
        print(f'{name:18s} {times[name] * 1e3:8.1f} ms   {times[name] / roofline:5.2f} × roofline'
              f'   {rate:6.1f} GFLOP/s = {rate / peak:4.2f} × GEMM peak'
              f'   temp {temps[name]:9,.1f} MiB')
    return engines, times, roofline


def main(quick, shapes):
    schedule = make_schedule('linear', 1000)
    print(f'devices: {jax.devices()}, {os.cpu_count()} CPU cores; times are best of '
          f'interleaved repeats')
    peak = gemm_peak()
    print(f'GEMM peak: {peak:.0f} GFLOP/s (float32 1024 x 1024 matmul, best of 10)')
    default_chunk = chunked.default_chunk_size()
    summary = {}
    for shape_name in shapes:
        engines, times, roofline = run_shape(shape_name, schedule, 3 if quick else 5, peak)
        best = min(engines.values(), key=times.get)
        default = engines.get(default_chunk) or f'engine C={default_chunk}'
        summary[shape_name] = (best, default, times, roofline)
    print('\n== peak resident-memory rise during the call (fresh subprocess each)')
    for shape_name, (best, default, times, roofline) in summary.items():
        chunk = int(best.split('=')[1])
        rise = {m: rss_rise(shape_name, m, chunk) for m in ('engine', 'naive')}
        print(f'{shape_name}: engine (C={chunk}) {rise["engine"]:,.0f} MiB, '
              f'naive {rise["naive"]:,.0f} MiB')
    print('\n== summary')
    for shape_name, (best, default, times, roofline) in summary.items():
        at_default = (f'{times[default] / roofline:.2f} × roofline' if default in times
                      else 'not among the chunks timed')
        print(f'{shape_name}: best {best}: {times[best] / roofline:.2f} × roofline; default '
              f'chunk_size={default_chunk}: {at_default}; '
              f'naive {times["naive"] / roofline:.2f} × roofline')


if __name__ == '__main__':
    if sys.argv[1:2] == ['--child']:
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]))
    else:
        main('--quick' in sys.argv, [a for a in sys.argv[1:] if a in SHAPES] or list(SHAPES))
