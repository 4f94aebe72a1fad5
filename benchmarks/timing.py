"""Timing helpers shared by the benchmarks."""
from __future__ import annotations

import gc
import os
import threading
import time

import jax


def time_train_calls(train_call, state, train_set, calls):
    """(seconds, state) of `calls` train calls in a row, timed until their results are ready."""
    start = time.perf_counter()
    for _ in range(calls):
        state, metrics = train_call(state, train_set)
    jax.block_until_ready(metrics)
    return time.perf_counter() - start, state


def best_of(repeats, fns):
    """{name: best seconds} of each fn() (which must return once its work is done), the fns
    interleaved `repeats` times, so that a noisy machine slows them alike."""
    best = {name: float('inf') for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    return best


MIB = 2 ** 20


def resident_mib():
    """This process's resident memory in MiB (Linux /proc/self/statm)."""
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / MIB


def peak_rss_rise(call, repeats=3):
    """The peak rise of resident memory (MiB) over `repeats` calls of call(), sampled every
    millisecond from a thread, above the level after a garbage collection."""
    gc.collect()
    before, peak, done = resident_mib(), [0.0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], resident_mib())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample)
    sampler.start()
    for _ in range(repeats):
        call()
    done.set()
    sampler.join()
    return max(peak[0], resident_mib()) - before


def gemm_peak(repeats=10, size=1024):
    """The machine's GEMM rate in GFLOP/s: the best of `repeats` float32 size² matmuls."""
    a = jax.random.normal(jax.random.key(2), (size, size))
    matmul = jax.jit(lambda a, b: a @ b)
    jax.block_until_ready(matmul(a, a))
    best = best_of(repeats, {'matmul': lambda: jax.block_until_ready(matmul(a, a))})['matmul']
    return 2 * size ** 3 / best / 1e9
