"""Timing helpers shared by the benchmarks."""
from __future__ import annotations

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
