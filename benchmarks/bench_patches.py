"""The LS / ELS patch machines (diffgen.optimum.patches): correctness, speed against the
roofline of their GEMMs, and memory against a naive all-patches softmax.

    python benchmarks/bench_patches.py [--quick]

1. Correctness: both machines against a float64 NumPy brute force (explicit loops over
   pixels and over the paper's patch dictionaries) on a 5 × 6 × 2 case, every P of 1, 3, 5.
2. Speed, on the digits shape: N = 1541 training images of 8 × 8 × 1 (scikit-learn's
   digits, scaled to [-1, 1]), B = 256 queries, ELS with P = 5 at t = 500. The machine's
   work is, per class group (G classes of n pixels), two batched GEMMs over all N·n keys:
   logits queries·keysᵀ (G, B·n, N·n) with P²C-long rows, and weights·values (G, B·n, C):
   2 B N (P²C + C) Σ n² flops. Two references: (a) the roofline as bench_optimal.py
   measures its own, the time of those GEMMs as plain matmuls over the whole training set
   (no chunks, no softmax); the target is one ELS call ≤ 1.5 × that. With rows of only
   P²C = 25 those matmuls are bound by writing and reading the (G, B·n, N·n) arrays, like
   bench_optimal's 'large' shape, so also (b) the engine's own GEMMs at its block shapes
   (one block's two matmuls, hot in cache, times the number of blocks): the engine over
   (b) is the cost of its softmax (max, exp, sums) and patch cutting. Each is swept over
   block_logits (patches.DEFAULT_BLOCK_LOGITS marked), and rates are printed against the
   machine's GEMM peak (the best float32 1024 × 1024 matmul).
3. Memory: the peak rise of resident memory during three calls, in a fresh subprocess per
   (method, N), for the chunked machine and for a naive softmax that holds every key patch
   and the whole (G, N·n, B·n) logit array, at N = 385, 770, 1541; and XLA's temporary
   buffers for each (memory_analysis). The machine's should be flat in N.
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
import numpy as np  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

from benchmarks.timing import best_of, gemm_peak, peak_rss_rise  # noqa: E402
from diffgen.diffusion.schedules import make_schedule  # noqa: E402
from diffgen.optimum import patches  # noqa: E402

BATCH, PATCH, TIMESTEP = 256, 5, 500
NUM_TRAIN = 1541
BLOCKS = (2 ** 18, 2 ** 19, 2 ** 20, 2 ** 21, 2 ** 22)   # logits per block of keys
MEMORY_SIZES = (385, 770, 1541)
MEMORY_CHUNK = 64
MIB = 2.0 ** 20
SCHEDULE = make_schedule('linear', 1000)


def digits(num):
    """The first num of scikit-learn's 8 × 8 digits (0..16) scaled to [-1, 1], (num, 8, 8, 1),
    tiled if num exceeds the 1797 there are."""
    images = load_digits().images.astype(np.float32) / 8.0 - 1.0
    return np.resize(images, (num, 8, 8))[..., None]


def queries(train, batch, seed=1):
    """Forward-process points a_t y + σ_t ε of random training images at TIMESTEP."""
    rng = np.random.default_rng(seed)
    y = train[rng.integers(0, len(train), batch)]
    a, sigma = float(SCHEDULE.a[TIMESTEP]), float(SCHEDULE.sigma[TIMESTEP])
    return (a * y + sigma * rng.standard_normal(y.shape)).astype(np.float32)


# ---------------------------------------------------------------- correctness

def brute_force_x0(x, t, y, patch_size, equivariant):
    """float64 x̂₀ by explicit loops: for each pixel, the softmax over its dictionary (LS:
    the training patches at that pixel; ELS: at every pixel whose window overhangs the
    border by the same offsets) of −‖Π_p(x) − a Π_q(y_i)‖²/(2σ²), times the centre pixels."""
    X, Y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    _, height, width, _ = X.shape
    r = patch_size // 2
    a, s2 = float(SCHEDULE.a[t]), float(SCHEDULE.sigma2[t])
    pad = lambda im: np.pad(im, ((r, r), (r, r), (0, 0)))
    hang = lambda i, j: (max(r - i, 0), max(i + r - height + 1, 0), max(r - j, 0),
                         max(j + r - width + 1, 0))
    padded = [pad(im) for im in Y]
    out = np.zeros_like(X)
    for b in range(len(X)):
        xp = pad(X[b])
        for i in range(height):
            for j in range(width):
                q = xp[i:i + patch_size, j:j + patch_size]
                logits, values = [], []
                for n in range(len(Y)):
                    for k in range(height):
                        for l in range(width):
                            same = hang(k, l) == hang(i, j) if equivariant else (k, l) == (i, j)
                            if same:
                                key = padded[n][k:k + patch_size, l:l + patch_size]
                                logits.append(-((q - a * key) ** 2).sum() / (2 * s2))
                                values.append(Y[n, k, l])
                w = np.exp(np.array(logits) - max(logits))
                out[b, i, j] = (w / w.sum()) @ np.array(values)
    return out


def correctness():
    rng = np.random.default_rng(0)
    y = rng.uniform(-1, 1, (6, 5, 6, 2)).astype(np.float32)
    x = queries(y, 4)
    print('== correctness: 5 x 6 x 2 images, N = 6, B = 4, t = 500, chunks of 8 images')
    for equivariant in (False, True):
        for size in (1, 3, 5):
            machine = patches.patch_machine(y, SCHEDULE, size, equivariant=equivariant,
                                            chunk_size=8)
            got = np.asarray(patches.patch_x0(x, TIMESTEP, machine=machine, schedule=SCHEDULE))
            err = np.abs(got - brute_force_x0(x, TIMESTEP, y, size, equivariant)).max()
            print(f'{"ELS" if equivariant else "LS ":3s} P = {size}: max |x0 - float64 brute '
                  f'force| = {err:.1e}')


# ---------------------------------------------------------------- speed

def group_arrays(train, x, patch_size, equivariant):
    """Per class group: queries (G, B·n, P²C), keys (G, N·n, P²C), values (G, N·n, C) and
    uniform weights (G, B·n, N·n), for the roofline's plain matmuls."""
    height, width, _ = train.shape[1:]
    out = []
    for pixels in patches.patch_classes(height, width, patch_size, equivariant):
        q = patches.class_patches(jnp.asarray(x), pixels, patch_size)
        keys = patches.class_patches(jnp.asarray(train), pixels, patch_size)
        values = patches.class_patches(jnp.asarray(train), pixels, 1)
        weights = jnp.full((q.shape[0], q.shape[1], keys.shape[1]), 1.0 / keys.shape[1])
        out.append((q, keys, values, weights))
    return out


@jax.jit
def logits_matmul(q, keys):
    """The first GEMM alone: queries · keysᵀ per class, (G, B·n, N·n)."""
    return jnp.einsum('gqd,gkd->gqk', q, keys)


@jax.jit
def values_matmul(weights, values):
    """The second GEMM alone: weights · values per class, (G, B·n, C)."""
    return jnp.einsum('gqk,gkc->gqc', weights, values)


@functools.partial(jax.jit, static_argnames=('patch_size', 'equivariant'))
def naive_x0(train, x, a, sigma2, *, patch_size, equivariant):
    """x̂₀ with every key patch of the training set and the whole logit array at once."""
    batch, height, width, channels = x.shape
    x0 = jnp.zeros((batch, height * width, channels))
    for pixels in patches.patch_classes(height, width, patch_size, equivariant):
        g, n = pixels.shape
        keys = patches.class_patches(train, pixels, patch_size)
        q = patches.class_patches(x, pixels, patch_size)
        values = patches.class_patches(train, pixels, 1)
        logits = ((a / sigma2) * jnp.einsum('gqd,gkd->gqk', q, keys)
                  - (a * a / (2 * sigma2)) * jnp.sum(keys * keys, -1)[:, None, :])
        w = jax.nn.softmax(logits, axis=2)
        mean = jnp.einsum('gqk,gkc->gqc', w, values).reshape(g, batch, n, channels)
        x0 = x0.at[:, pixels.ravel()].set(mean.transpose(1, 0, 2, 3).reshape(batch, g * n,
                                                                             channels))
    return x0.reshape(x.shape)


def engine_call(machine, x):
    return patches.patch_x0(x, TIMESTEP, machine=machine, schedule=SCHEDULE)


def temp_mib(fn, *args, **kwargs):
    return fn.lower(*args, **kwargs).compile().memory_analysis().temp_size_in_bytes / MIB


def block_gemms(groups, block_logits):
    """Per group: (calls of one block's two GEMMs, blocks per call): the engine's own GEMMs
    at its block shapes (patches.key_block), keys of one block reused, hot in cache."""
    out = []
    for q, keys, values, _ in groups:
        block = patches.key_block(q.shape[0], q.shape[1], keys.shape[1], block_logits)
        weights = jnp.full((q.shape[0], q.shape[1], block), 1.0 / block)
        out.append(((logits_matmul, (q, keys[:, :block])), (values_matmul, (weights,
                                                                             values[:, :block])),
                    -(-keys.shape[1] // block)))
    return out


def speed(repeats):
    train = digits(NUM_TRAIN)
    x = jnp.asarray(queries(train, BATCH))
    classes = patches.patch_classes(8, 8, PATCH, True)
    sum_n2 = sum(p.shape[0] * p.shape[1] ** 2 for p in classes)
    dim = PATCH * PATCH
    flops = 2 * BATCH * NUM_TRAIN * (dim + 1) * sum_n2
    print(f'\n== speed: ELS, P = {PATCH}, digits N = {NUM_TRAIN} of 8 x 8 x 1, B = {BATCH}, '
          f't = {TIMESTEP}; class groups (G, n) {[p.shape for p in classes]}, '
          f'Σ n² = {sum_n2} (of (HW)² = 4096), {flops / 1e9:.2f} GFLOP per call')
    groups = group_arrays(train, x, PATCH, True)
    calls = {}
    for g, (q, keys, values, weights) in enumerate(groups):
        calls[f'logits {g}'] = (logits_matmul, (q, keys))
        calls[f'values {g}'] = (values_matmul, (weights, values))
    counts = {}
    for b in BLOCKS:
        machine = patches.patch_machine(train, SCHEDULE, PATCH, equivariant=True, block_logits=b)
        calls[f'ELS block={b}'] = (engine_call, (machine, x))
        for g, (first, second, blocks) in enumerate(block_gemms(groups, b)):
            calls[f'block {b} {g} logits'], calls[f'block {b} {g} values'] = first, second
            counts[f'block {b} {g} logits'] = counts[f'block {b} {g} values'] = blocks
    for fn, args in calls.values():
        jax.block_until_ready(fn(*args))
    times = best_of(repeats, {name: functools.partial(
        lambda f, a: jax.block_until_ready(f(*a)), fn, args) for name, (fn, args) in calls.items()})
    roofline = sum(v for k, v in times.items() if k.startswith(('logits', 'values')))
    gemm1 = sum(v for k, v in times.items() if k.startswith('logits'))
    peak = gemm_peak()
    print(f'GEMM peak: {peak:.0f} GFLOP/s (float32 1024 x 1024 matmul, best of 10); the '
          f'flops at that rate: {flops / peak / 1e6:.1f} ms')
    print(f'roofline as bench_optimal measures it (plain batched matmuls over all N): logits '
          f'{gemm1 * 1e3:.1f} ms + values {(roofline - gemm1) * 1e3:.1f} ms = '
          f'{roofline * 1e3:.1f} ms (they write and read whole (G, B·n, N·n) arrays)')
    print(f'one chunk of all N images (patches.default_chunk_size); per block size: the '
          f'engine, and its own GEMMs (one block\'s two matmuls x blocks, summed over groups)')
    rows = []
    for b in BLOCKS:
        name = f'ELS block={b}'
        own = sum(times[k] * counts[k] for k in counts if k.startswith(f'block {b} '))
        rate = flops / times[name] / 1e9
        rows.append((name, times[name] / roofline, times[name] / own))
        print(f'{name:18s} {times[name] * 1e3:7.1f} ms   {rows[-1][1]:5.2f} x roofline   '
              f'{rows[-1][2]:5.2f} x its own GEMMs ({own * 1e3:6.1f} ms)   '
              f'{rate:5.1f} GFLOP/s = {rate / peak:4.2f} x GEMM peak'
              f'{"   (default)" if b == patches.DEFAULT_BLOCK_LOGITS else ""}')
    best = min(rows, key=lambda r: r[1])
    default = next(r for r in rows if r[0] == f'ELS block={patches.DEFAULT_BLOCK_LOGITS}')
    return best, default


# ---------------------------------------------------------------- memory


def child(method, num):
    """In a fresh process: XLA's temp buffers and the peak rise of resident memory over three
    calls, in MiB, as one JSON line."""
    train = digits(num)
    x = jnp.asarray(queries(train, BATCH))
    if method == 'engine':
        machine = patches.patch_machine(train, SCHEDULE, PATCH, equivariant=True,
                                        chunk_size=MEMORY_CHUNK)
        fn, args, kwargs = patches.patch_x0, (x, TIMESTEP), dict(machine=machine,
                                                                  schedule=SCHEDULE)
    else:
        fn = naive_x0
        args = (jnp.asarray(train), x, SCHEDULE.a[TIMESTEP], SCHEDULE.sigma2[TIMESTEP])
        kwargs = dict(patch_size=PATCH, equivariant=True)
    temp = temp_mib(fn, *args, **kwargs)
    jax.block_until_ready(fn(*args, **kwargs))
    gc.collect()
    rise = peak_rss_rise(lambda: jax.block_until_ready(fn(*args, **kwargs)))
    print(json.dumps({'temp_mib': temp, 'rss_rise_mib': rise}))


def measure_child(method, num):
    out = subprocess.run([sys.executable, __file__, '--child', method, str(num)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def memory():
    print(f'\n== memory: ELS P = {PATCH}, B = {BATCH}, chunks of {MEMORY_CHUNK} images; '
          f'peak resident-memory rise over 3 calls (fresh subprocess each) and XLA temp')
    rows = {}
    for num in MEMORY_SIZES:
        rows[num] = {m: measure_child(m, num) for m in ('engine', 'naive')}
        e, n = rows[num]['engine'], rows[num]['naive']
        print(f'N = {num:5d}: engine rss +{e["rss_rise_mib"]:7.1f} MiB (temp '
              f'{e["temp_mib"]:7.1f})   naive rss +{n["rss_rise_mib"]:7.1f} MiB (temp '
              f'{n["temp_mib"]:7.1f})')
    return rows


def main(quick):
    print(f'devices: {jax.devices()}, {os.cpu_count()} CPU cores; times are best of '
          f'interleaved repeats')
    correctness()
    best, default = speed(3 if quick else 5)
    rows = memory()
    print('\n== summary')
    for label, (name, roofline, own) in (('best', best), ('default', default)):
        print(f'ELS at the digits shape, {label} {name}: {roofline:.2f} x the roofline as '
              f'bench_optimal measures it (target <= 1.5 x), {own:.2f} x its own GEMMs')
    first, last = rows[MEMORY_SIZES[0]], rows[MEMORY_SIZES[-1]]
    print(f'memory from N = {MEMORY_SIZES[0]} to {MEMORY_SIZES[-1]}: engine temp '
          f'{first["engine"]["temp_mib"]:.1f} -> {last["engine"]["temp_mib"]:.1f} MiB, naive '
          f'{first["naive"]["temp_mib"]:.1f} -> {last["naive"]["temp_mib"]:.1f} MiB')


if __name__ == '__main__':
    if sys.argv[1:2] == ['--child']:
        child(sys.argv[2], int(sys.argv[3]))
    else:
        main('--quick' in sys.argv)
