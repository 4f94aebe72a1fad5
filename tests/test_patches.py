"""Kamb & Ganguli's LS and ELS patch machines (diffgen.optimum.patches) against a float64
brute force that loops over pixels and builds each pixel's patch dictionary from the paper's
rule (App. B.2): LS the training patches at the same pixel, ELS those at every pixel whose
window overhangs the border by the same offsets (compared here by the overhang itself, not
by the engine's row × column classes).

Tolerances are the worst-case float32 round-off bounds of tests/test_optimal.py applied to
each pixel's softmax (its keys are the dictionary's patches, D = P·P·C): logits
s_k = (a/σ²) Π_p(x)·k − (a²/(2σ²))‖k‖² err by at most δ = (D + 6) u max_k[(a/σ²) Σ|x k| +
(a²/(2σ²))‖k‖²] (u = 2⁻²⁴; the dot products and norms have D terms), which moves each weight
by at most 2δ e^{4δ} w_k (1 − w_k); the sums over the K keys, the chunks and their
rescalings add a relative (2K + 8·chunks + 16) u. So |Δx̂₀(p)| ≤ max|y| (Σ_k 2δ e^{4δ} w_k (1 − w_k)
+ 2 (2K + 8·chunks + 16) u), and ε̂ = (x − a x̂₀)/σ adds a|Δx̂₀|/σ and 3u(|x| + a|x̂₀|)/σ.
Both sides read the same float32 inputs (x, y and the float32 schedule's a_t, σ_t²).
"""
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffgen.diffusion import samplers
from diffgen.diffusion.schedules import make_schedule
from diffgen.errors import ConfigError
from diffgen.optimum import chunked, optimal, patches

ROOT = pathlib.Path(__file__).resolve().parents[1]
U32 = 2.0 ** -24
TIMES = [1, 10, 100, 300, 600, 1000]
NUM_TRAIN, CHUNK = 12, 8          # two chunks of 8 images, the last with 4 padding rows
# Logits per block of keys: blocks of 12 interior keys at P = 3 (16 blocks), of 5 keys for
# the LS machine (16 keys padded to 20), one block for small groups (patches.key_block)
BLOCK_LOGITS = 1800
SCHEDULE = make_schedule('linear', 1000)


def training_set(shape, n=NUM_TRAIN, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (n,) + shape).astype(np.float32)


def queries(y, seed=1):
    """(x, t): forward-process points a_t y_i + σ_t ε of random training images at every t
    of TIMES, then pure noise at the same t (posteriors of every sharpness)."""
    rng = np.random.default_rng(seed)
    t = np.array(TIMES * 2, np.int32)
    a = np.asarray(SCHEDULE.a)[t[:len(TIMES)]].reshape(-1, 1, 1, 1)
    sigma = np.asarray(SCHEDULE.sigma)[t[:len(TIMES)]].reshape(-1, 1, 1, 1)
    picked = y[rng.integers(0, len(y), len(TIMES))]
    forward = a * picked + sigma * rng.standard_normal(picked.shape)
    noise = rng.standard_normal((len(TIMES),) + y.shape[1:])
    return np.concatenate([forward, noise]).astype(np.float32), t


def overhang(i, j, height, width, r):
    """The window's offsets past the top, bottom, left and right borders at pixel (i, j)."""
    return (max(r - i, 0), max(i + r - (height - 1), 0), max(r - j, 0),
            max(j + r - (width - 1), 0))


def brute_force(x, t, y, sizes, equivariant, num_chunks):
    """float64 x̂₀, ε̂ and their round-off bounds (module docstring), pixel by pixel; sizes
    holds each example's P."""
    X, Y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    batch, height, width, channels = X.shape
    a_all = np.asarray(SCHEDULE.a, np.float64)
    s2_all = np.asarray(SCHEDULE.sigma2, np.float64)
    x0, x0_bound = np.zeros_like(X), np.zeros(X.shape[:3])
    for b in range(batch):
        size, a, s2 = int(sizes[b]), a_all[t[b]], s2_all[t[b]]
        r = size // 2
        pad = lambda im: np.pad(im, ((r, r), (r, r), (0, 0)))
        xp, yp = pad(X[b]), np.stack([pad(im) for im in Y])
        # every training patch with its image, centre and overhang
        keys = {(n, k, l): yp[n, k:k + size, l:l + size].ravel()
                for n in range(len(Y)) for k in range(height) for l in range(width)}
        for i in range(height):
            for j in range(width):
                here = overhang(i, j, height, width, r)
                chosen = [key for key in keys if (key[1:] == (i, j) if not equivariant else
                                                  overhang(*key[1:], height, width, r) == here)]
                k = np.stack([keys[key] for key in chosen])
                values = np.stack([Y[key] for key in chosen])
                q = xp[i:i + size, j:j + size].ravel()
                logits = -((q - a * k) ** 2).sum(1) / (2 * s2)
                e = np.exp(logits - logits.max())
                w = e / e.sum()
                x0[b, i, j] = w @ values
                delta = (k.shape[1] + 6) * U32 * np.max(
                    (a / s2) * (np.abs(k) @ np.abs(q)) + (a * a / (2 * s2)) * (k * k).sum(1))
                top = e.argmax()
                others = e.sum() - e
                others[top] = np.delete(e, top).sum()   # 1 − w_top without cancellation
                with np.errstate(divide='ignore'):
                    spread = np.exp(np.log(2 * delta) + 4 * delta + np.log(w * others / e.sum()))
                sums = 2 * (2 * len(chosen) + 8 * num_chunks + 16) * U32
                x0_bound[b, i, j] = np.abs(Y).max() * (spread.sum() + sums)
    a, s = a_all[t].reshape(-1, 1, 1, 1), np.sqrt(s2_all[t]).reshape(-1, 1, 1, 1)
    eps = (X - a * x0) / s
    eps_bound = (a * x0_bound[..., None] + 3 * U32 * (np.abs(X) + a * np.abs(x0))) / s
    return dict(x0=x0, eps=eps, x0_bound=x0_bound[..., None], eps_bound=eps_bound)


def assert_within(value, expected, bound):
    value = np.asarray(value, np.float64)
    assert np.all(np.isfinite(value))
    excess = np.abs(value - expected) - bound
    assert np.all(excess <= 0), (np.abs(value - expected).max(), excess.max())


def machine_for(y, patch_size, equivariant):
    return patches.patch_machine(y, SCHEDULE, patch_size, equivariant=equivariant,
                                 chunk_size=CHUNK, block_logits=BLOCK_LOGITS)


def num_chunks(machine, shards=1):
    """The chunks the engine's sums run over, counting a cross-shard merge as one each."""
    return machine.rows.rows.shape[0] // machine.rows.chunk_size + shards


@pytest.mark.parametrize('shape,equivariant,patch_size', [
    ((5, 6, 1), False, 3),
    ((5, 6, 1), True, 3),     # corner, two kinds of edge and interior classes
    ((5, 6, 1), True, 1),     # one class: every pixel of every training image
    ((5, 6, 1), True, 11),    # 2 max(H, W) - 1: every window covers the image, all classes one pixel
    ((6, 6, 3), True, 5),     # three channels; the two kinds of edge class have one size
    ((6, 6, 3), False, 1),    # LS, P = 1: each pixel's posterior over the N pixel values there
    ((5, 6, 1), False, 'table'),  # P(t) = 1 for t <= 100, else 3: a batch of mixed t
])
def test_matches_float64_brute_force(shape, equivariant, patch_size):
    y = training_set(shape)
    x, t = queries(y)
    if patch_size == 'table':
        patch_size = np.where(np.arange(SCHEDULE.num_timesteps + 1) <= 100, 1, 3)
    machine = machine_for(y, patch_size, equivariant)
    sizes = np.asarray(machine.table)[t]
    ref = brute_force(x, t, y, sizes, equivariant, num_chunks(machine))
    assert_within(patches.patch_x0(x, t, machine=machine, schedule=SCHEDULE), ref['x0'],
                  ref['x0_bound'])
    denoiser = patches.patch_denoiser(y, SCHEDULE, patch_size, equivariant=equivariant,
                                      chunk_size=CHUNK, block_logits=BLOCK_LOGITS)
    assert_within(denoiser(x, jnp.asarray(t)), ref['eps'], ref['eps_bound'])


def test_whole_image_ls_is_the_optimum():
    """P = 2 max(H, W) − 1: every pixel's window holds the whole image, so the LS weights are
    ε*'s, the same at every pixel: LS = ε* within the sum of both engines' bounds (the patch
    bound above; tests/test_optimal.py's for ε*)."""
    from tests.test_optimal import bounds, brute_force as optimum_brute_force
    y = training_set((5, 6, 1))
    x, t = queries(y)
    machine = machine_for(y, 11, False)
    ref = brute_force(x, t, y, np.full(len(t), 11), False, num_chunks(machine))
    rows = chunked.prepare_rows(y, CHUNK)
    optimum = optimum_brute_force(x, t, y, SCHEDULE)
    optimum_bound = bounds(x, t, y, SCHEDULE, optimum, rows.rows.shape[0] // rows.chunk_size)
    np.testing.assert_allclose(ref['eps'].reshape(len(x), -1), optimum['eps'], rtol=1e-9,
                               atol=1e-9 * np.abs(optimum['eps']).max())
    got = np.asarray(patches.patch_denoiser(y, SCHEDULE, 11, equivariant=False,
                                            chunk_size=CHUNK)(x, jnp.asarray(t)), np.float64)
    star = np.asarray(optimal.optimal_denoiser(rows, SCHEDULE)(x, jnp.asarray(t)), np.float64)
    bound = ref['eps_bound'].reshape(len(x), -1) + optimum_bound['eps'][:, None]
    assert np.all(np.abs(got - star).reshape(len(x), -1) <= bound)


def test_els_is_translation_equivariant_away_from_the_boundary():
    """Roll x by s = (1, 1): a pixel p whose window lies inside the image, and whose shifted
    window at p + s does too without wrapping, sees the same patch at p + s in the rolled
    image, and the ELS machine gives both the same dictionary (every interior training
    patch), so x̂₀'(p + s) = x̂₀(p) within both points' bounds. The LS machine, whose
    dictionaries are tied to the location, must fail the same check somewhere."""
    shape, size = (5, 6, 1), 3
    y = training_set(shape)
    x, t = queries(y)
    shifted = np.roll(x, (1, 1), axis=(1, 2))
    r = size // 2
    pairs = [(i, j) for i in range(r, shape[0] - r - 1) for j in range(r, shape[1] - r - 1)]
    assert len(pairs) == 6
    gaps = {}
    for equivariant in (True, False):
        machine = machine_for(y, size, equivariant)
        chunks = num_chunks(machine)
        sizes = np.full(len(t), size)
        bound = (brute_force(x, t, y, sizes, equivariant, chunks)['x0_bound']
                 + np.roll(brute_force(shifted, t, y, sizes, equivariant, chunks)['x0_bound'],
                           (-1, -1), axis=(1, 2)))
        here = np.asarray(patches.patch_x0(x, t, machine=machine, schedule=SCHEDULE), np.float64)
        there = np.roll(np.asarray(patches.patch_x0(shifted, t, machine=machine,
                                                    schedule=SCHEDULE), np.float64),
                        (-1, -1), axis=(1, 2))
        gaps[equivariant] = [np.abs(here - there)[:, i, j] - bound[:, i, j] for i, j in pairs]
    assert np.max(gaps[True]) <= 0
    assert np.max(gaps[False]) > 0


SHARDED = """
import jax
import numpy as np
from jax.sharding import PartitionSpec as P
from diffgen import parallel
from diffgen.optimum import patches, references
from tests.test_patches import (CHUNK, SCHEDULE, assert_within, brute_force, num_chunks,
                                queries, training_set)

assert jax.device_count() == 8, jax.devices()
mesh = parallel.get_mesh()
y = training_set((5, 6, 1))   # 12 images in chunks of 8: two shards hold them, six only padding
x, t = queries(y)
sharded = patches.patch_machine(y, SCHEDULE, 5, equivariant=True, chunk_size=CHUNK, mesh=mesh)
single = patches.patch_machine(y, SCHEDULE, 5, equivariant=True, chunk_size=CHUNK)
assert sharded.rows.rows.sharding.spec == P(parallel.DATA_AXIS)
sizes = np.full(len(t), 5)
ref_sharded = brute_force(x, t, y, sizes, True, num_chunks(sharded, 8))
ref_single = brute_force(x, t, y, sizes, True, num_chunks(single))
a = patches.patch_x0(x, t, machine=sharded, schedule=SCHEDULE)
b = patches.patch_x0(x, t, machine=single, schedule=SCHEDULE)
assert_within(a, ref_sharded['x0'], ref_sharded['x0_bound'])
assert_within(a, np.asarray(b, np.float64), ref_sharded['x0_bound'] + ref_single['x0_bound'])
gauss = [np.asarray(references.gaussian_denoiser(y, SCHEDULE, mesh=m)(x, t))
         for m in (mesh, None)]
np.testing.assert_array_equal(*gauss)
print('sharded patches ok')
"""


def test_sharded_equals_single_device():
    """The training images sharded over 8 simulated devices (a child Python with
    XLA_FLAGS=--xla_force_host_platform_device_count=8): the ELS machine (P = 5 on 5 × 6:
    one- and two-pixel classes) is within its
    bound (counting the 8 shards' merges as chunks) of the brute force, and within the sum of
    both bounds of the single-device machine; the Gaussian reference, replicated, is the same
    array."""
    env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=8',
               JAX_PLATFORMS='cpu', PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, '-c', textwrap.dedent(SHARDED)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert 'sharded patches ok' in result.stdout


@pytest.mark.parametrize('size', [0, -1, 2, 4, 13, 2.0, True, '3'])
def test_check_patch_size_refuses(size):
    with pytest.raises(ConfigError) as error:
        patches.check_patch_size(size, (5, 6, 1))
    assert '\n' not in str(error.value)


def test_check_patch_size_accepts():
    for size in (1, 3, 11, np.int64(5)):
        patches.check_patch_size(size, (5, 6, 1))
    patches.check_patch_size([1, 3, 11], (5, 6))
    patches.check_patch_size(101, None)        # no image shape: the size is not bounded
    with pytest.raises(ConfigError):
        patches.check_patch_size([3, 4], None)
    with pytest.raises(ConfigError):
        patches.patch_size_array([3] * 10, 1000)  # not T + 1 entries


def test_patch_size_table_takes_the_nearest_calibrated_t():
    calibration = {'t': np.array([500, 10, 100]), 'patch_size': np.array([7, 1, 3])}
    table = patches.patch_size_table(calibration, 1000)
    assert table.shape == (1001,) and table.dtype == np.int32
    expected = np.where(np.arange(1001) <= 55, 1, np.where(np.arange(1001) <= 300, 3, 7))
    np.testing.assert_array_equal(table, expected)   # t = 55 and 300: ties to the smaller t


def test_calibration_recovers_the_target_patch_size():
    """With the LS machine of P = 3 as the target, the calibration picks P = 3 at every t:
    its error is the round trip x̂₀ → ε̂ → x̂₀ of the target's own output, below the other
    candidate's."""
    y = training_set((5, 6, 1))
    target = patches.patch_denoiser(y, SCHEDULE, 3, equivariant=False, chunk_size=CHUNK,
                                    block_logits=BLOCK_LOGITS)
    ts = [100, 400, 800]
    calibration = patches.calibrate_patch_sizes(
        target, y, y, SCHEDULE, ts, [1, 3], equivariant=False,
        rng=jax.random.key(0), chunk_size=CHUNK, block_logits=BLOCK_LOGITS)
    np.testing.assert_array_equal(calibration['t'], ts)
    np.testing.assert_array_equal(calibration['patch_size'], [3, 3, 3])
    assert calibration['error'].shape == (3, 2)
    assert np.all(calibration['error'][:, 1] < calibration['error'][:, 0])
    np.testing.assert_array_equal(patches.patch_size_table(calibration, 1000), np.full(1001, 3))


def test_the_ddim_sampler_takes_the_patch_machine(unoptimized):
    """A Partial denoiser: the sampler compiles once for two training sets of the same shape
    and returns finite samples (a behaviour test: XLA's optimisations off)."""
    x_T = jax.random.normal(jax.random.key(0), (2, 5, 6, 1))
    compiled = samplers._sample._cache_size()
    for seed in (0, 1):
        denoiser = patches.patch_denoiser(training_set((5, 6, 1), seed=seed), SCHEDULE, 3,
                                          equivariant=True, chunk_size=CHUNK)
        out = samplers.sample(denoiser, x_T, SCHEDULE, 'ddim', 4)
        assert out.shape == x_T.shape and np.all(np.isfinite(np.asarray(out)))
    assert samplers._sample._cache_size() - compiled == 1
