"""The patch machines of Kamb & Ganguli (2025), "An analytic theory of creativity in
convolutional diffusion models" (ICML; arXiv 2412.20292): the optimal denoisers under
locality (LS) and under locality and translation equivariance (ELS) (docs/math.md §11).

Images are (H, W, C). Π_p(φ) ∈ R^{P·P·C} is the P × P patch of φ centred on pixel p (P odd,
r = P // 2), all channels, with zeros where it extends past the image (zero padding, as in
the networks the paper models). For a noisy image x at step t (a = a_t, σ² = σ_t²) each
pixel p takes a softmax over a dictionary K(p) of training patches k = Π_q(y_i) (image i,
centre q):

    w_k(x, p) = softmax_{k ∈ K(p)}( −‖Π_p(x) − a Π_q(y_i)‖² / (2σ²) ),
    x̂₀(x)(p) = Σ_{k ∈ K(p)} w_k y_i(q)        (the patches' centre pixels, C channels),
    ε̂(x, t) = (x − a x̂₀) / σ.

  LS  (paper §3.2, eqs. 7-8): K(p) = {Π_p(y_i) : i = 1..N}, the N training patches at the
      SAME location p.
  ELS (paper §3.3, eqs. 9-10, with the boundary of §3.4 and App. B.2, eq. 41, Fig. 9):
      K(p) = {Π_q(y_i) : i = 1..N, q ~ p}, where q ~ p iff the patches at q and p have the
      same zero-padding: the same offsets of the P × P window fall outside the image. A zero
      pixel has probability zero under the forward process, so a patch showing padding can
      only have come from a training patch with the same boundary overlap (App. B.2):
      interior patches (window inside the image) match every interior patch of every
      training image, edge patches those along the same edge at the same distance from it,
      corner patches only those at the same location. This is the paper's "boundary-broken"
      ELS machine, the one it compares with zero-padded networks. Per axis the offsets past
      the border of a pixel at row i are (max(r − i, 0), max(i + r − (H − 1), 0)), so the
      classes are products of row classes and column classes; rows with both zero (the
      interior rows r..H−1−r) form one class, every other row is its own.

The padded entries are zero in both patches of a pair of the same class, so the distance
is over the pixels inside the image. P ≥ 2·max(H, W) − 1 covers the whole image from every
pixel: every class is one pixel, both machines become the same, and their weights are those
of ε* (diffgen.optimum.optimal), the same for every pixel.

Computation, on the chunked-GEMM core (diffgen.optimum.chunked) and an online softmax as in
diffgen.optimum.optimal. Expanding the square (‖Π_p(x)‖² cancels) the logits are

    s_k = (a/σ²) Π_p(x)·Π_q(y_i) − (a²/(2σ²)) ‖Π_q(y_i)‖².

The pixels are grouped into classes of equal size n (patch_classes; LS: HW classes of one
pixel). For a group of G classes the queries are the B·n patches of the batch at each
class's pixels, (G, B·n, P²C), and the keys the N·n training patches at the same pixels.
The training images are streamed in chunks of C_N images (cut into patches per chunk), and
each chunk's keys in blocks of at most b keys (key_block: G·B·n·b ≈ block_logits floats,
chosen at trace time from the batch); per block

    logits = queries · keysᵀ   (G, B·n, b), one batched GEMM,
    running max m, l = Σ e^{s − m}, acc = Σ e^{s − m} y_i(q)  (a second GEMM, (G, B·n, C)),

rescaled when m grows, as in optimal.py; padding images get ‖k‖² = +inf, so logit −inf
(λ = a²/(2σ²) > 0 at every t ≥ 1: a_T is 6.4e-3 (linear) and 4.9e-5 (cosine, T = 1000)).
The logits' float32 round-off is that of optimal.py with D = P²C (tests/test_patches.py
bounds it).
Shards of the training set (along N over the mesh's data axis) are merged by pmax of m and
psum of the rescaled (l, acc). Working memory is O(B·H·W·(P²C + C) + C_N·H·W·P²C +
block_logits) floats, whatever N: never O(B·HW · N·HW). The flops are 2 B N (P²C + C) Σ n²
over the classes (the ELS interior class dominates: n = (H − 2r)(W − 2r)); ‖Π_p(x)‖² is never
formed.

A time-dependent patch size P(t) (the paper's single calibrated hyperparameter, App. C.2) is
a table of length T + 1. Inside jit each distinct P is run under lax.cond on whether any
example of the batch has it, and its rows are selected: the samplers call a denoiser with
one t for the whole batch, so exactly one P is computed; a batch with mixed t computes each
of its distinct P for the whole batch and takes each example's own, which is correct and
costs one pass per distinct P.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from diffgen import parallel
from diffgen.diffusion import conversions
from diffgen.errors import ConfigError
from diffgen.optimum import chunked

# Working sets where none is given. A chunk of training images is cut into its patches at
# once: C_N images with at most DEFAULT_CHUNK_FLOATS floats of patches (C_N·H·W·P²·C at the
# machine's largest P; at least 8 images). Within a chunk each class group's keys are taken
# in blocks whose logits (G, B·n, block) hold about DEFAULT_BLOCK_LOGITS floats (4 MiB),
# the block chosen at trace time from the batch. benchmarks/bench_patches.py measured block
# sizes at the digits shape (ELS, P = 5, B = 256) on this project's 2-core CPU.
DEFAULT_CHUNK_FLOATS = 2 ** 22
DEFAULT_BLOCK_LOGITS = 2 ** 20


def check_patch_size(patch_size, image_shape):
    """ConfigError unless every patch size (an int, or a sequence of them) is an odd integer
    >= 1 and, for image_shape (H, W, ...) (None: not checked), at most 2·max(H, W) − 1, the
    size that covers the whole image from every pixel."""
    sizes = [patch_size] if np.ndim(patch_size) == 0 else list(patch_size)
    for p in sizes:
        if isinstance(p, (bool, np.bool_)) or not isinstance(p, (int, np.integer)):
            raise ConfigError(f'patch size {p!r} is not an integer (an odd P >= 1)')
        if p < 1 or p % 2 == 0:
            raise ConfigError(f'patch size P={p} must be an odd integer >= 1 (a P x P patch '
                              f'centred on its pixel)')
        if image_shape is not None:
            height, width = image_shape[:2]
            largest = 2 * max(height, width) - 1
            if p > largest:
                raise ConfigError(f'patch size P={p} is larger than {largest} = 2*max(H, W) - 1, '
                                  f'which already covers the whole {height}x{width} image from '
                                  f'every pixel')


def patch_size_array(patch_size, num_timesteps, image_shape=None):
    """P(t) for t = 0..T as int32 (T+1,): an int for every t, or a sequence of length T+1
    (entry t is P(t)); each checked by check_patch_size."""
    if np.ndim(patch_size) == 0:
        check_patch_size(patch_size, image_shape)
        return np.full(num_timesteps + 1, int(patch_size), np.int32)
    sizes = list(patch_size)
    if len(sizes) != num_timesteps + 1:
        raise ConfigError(f'a patch size per timestep needs T+1 = {num_timesteps + 1} entries '
                          f'(t = 0..T), got {len(sizes)}')
    check_patch_size(sizes, image_shape)
    return np.asarray(sizes, np.int32)


@functools.lru_cache(maxsize=None)
def patch_classes(height, width, patch_size, equivariant):
    """The pixels' classes for P = patch_size, as a tuple of int arrays (G, n) of flat pixel
    indices i·W + j, one array per class size n (G classes of n pixels each; every pixel in
    exactly one class). LS: every pixel its own class. ELS: pixels whose P × P windows have
    the same offsets past the border (module docstring)."""
    if not equivariant:
        return (np.arange(height * width).reshape(-1, 1),)
    r = patch_size // 2

    def line_classes(length):
        """Positions 0..length-1 grouped by the window's overhang past each end."""
        classes = {}
        for i in range(length):
            classes.setdefault((max(r - i, 0), max(i + r - (length - 1), 0)), []).append(i)
        return list(classes.values())

    by_size = {}
    for rows in line_classes(height):
        for cols in line_classes(width):
            pixels = (np.asarray(rows)[:, None] * width + np.asarray(cols)[None, :]).ravel()
            by_size.setdefault(len(pixels), []).append(pixels)
    return tuple(np.stack(by_size[n]) for n in sorted(by_size))


@functools.lru_cache(maxsize=None)
def _window_index(height, width, patch_size):
    """(H·W, P·P) int: for pixel i·W + j and window offset (dy, dx), the flat index of
    pixel (i + dy, j + dx) of the image zero-padded by r = P // 2 on every side."""
    r = patch_size // 2
    i, j = np.divmod(np.arange(height * width), width)
    dy, dx = np.divmod(np.arange(patch_size * patch_size), patch_size)
    return (i[:, None] + dy[None, :]) * (width + 2 * r) + (j[:, None] + dx[None, :])


def class_patches(images, pixels, patch_size):
    """The zero-padded P × P patches (entries ordered (dy, dx, channel)) of images
    (M, H, W, C) centred on a group's pixels (G, n): (G, M·n, P·P·C), ordered (m, k).
    P = 1 gives the pixels themselves (G, M·n, C). One gather with static indices."""
    m, height, width, channels = images.shape
    r = patch_size // 2
    padded = jnp.pad(images, ((0, 0), (r, r), (r, r), (0, 0))).reshape(m, -1, channels)
    g, n = pixels.shape
    index = _window_index(height, width, patch_size)[pixels.ravel()].ravel()
    picked = padded[:, index].reshape(m, g, n, -1)
    return picked.transpose(1, 0, 2, 3).reshape(g, m * n, -1)


class PatchSoftmax(NamedTuple):
    """Online-softmax sums of one group's queries, relative to the running maximum."""
    max: jax.Array        # (G, Q) m, -inf before any valid key
    total: jax.Array      # (G, Q) l = Σ e^{s − m}
    weighted: jax.Array   # (G, Q, C) acc = Σ e^{s − m} y_i(q)


def _reference(new_max):
    """The maximum to subtract: 0 where nothing has been seen yet (new_max = -inf)."""
    return jnp.where(new_max > -jnp.inf, new_max, 0.0)


def _rescale(state, new_max):
    """(l, acc) ← e^{m − m'} (l, acc), with m' = new_max ≥ m."""
    scale = jnp.exp(state.max - _reference(new_max))
    return PatchSoftmax(new_max, scale * state.total, scale[..., None] * state.weighted)


def key_block(num_classes, num_queries, num_keys, block_logits):
    """Keys per block: at most num_keys, and at most block_logits / (G·Q) so that a block's
    logits (G, Q, block) hold about block_logits floats; at least 1."""
    return max(1, min(num_keys, block_logits // (num_classes * num_queries)))


def _softmax_block(state, queries, norm_scale, keys, values, norms):
    """Adds one block of keys (G, K, P²C) with values (G, K, C) and norms ‖k‖² (G, K)
    (+inf on padding) to one group's sums; logits (G, Q, K)."""
    gram = jax.lax.dot_general(queries, keys, (((2,), (2,)), ((0,), (0,))),
                               preferred_element_type=jnp.float32)
    logits = gram - norm_scale[None, :, None] * norms[:, None, :]
    new_max = jnp.maximum(state.max, jnp.max(logits, axis=2))
    state = _rescale(state, new_max)
    p = jnp.exp(logits - _reference(new_max)[:, :, None])
    weighted = jax.lax.dot_general(p, values, (((2,), (1,)), ((0,), (0,))),
                                   preferred_element_type=jnp.float32)
    return PatchSoftmax(new_max, state.total + jnp.sum(p, axis=2), state.weighted + weighted)


def _patch_step(states, chunk, aux, *, patch_size, classes, image_shape, block_logits):
    """Adds one chunk of training images to every group's sums, in blocks of keys of at most
    key_block(...) (a lax.scan over blocks when the chunk has more). aux holds, per group,
    the queries (a/σ²) Π_p(x) (G, Q, P²C) and λ = a²/(2σ²) per query (Q,). Padding rows
    (zero images) get ‖k‖² = +inf, hence logit −inf (λ > 0). chunk.gram (the whole-image
    products, unused) is dead code to XLA."""
    images = chunk.rows.astype(jnp.float32).reshape((-1,) + image_shape)
    new_states = []
    for state, pixels, (queries, norm_scale) in zip(states, classes, aux):
        keys = class_patches(images, pixels, patch_size)         # (G, K, P²C)
        values = class_patches(images, pixels, 1)                # (G, K, C)
        norms = jnp.where(jnp.repeat(chunk.valid, pixels.shape[1]),
                          jnp.sum(keys * keys, axis=-1), jnp.inf)
        num_classes, num_keys = norms.shape
        block = key_block(num_classes, queries.shape[1], num_keys, block_logits)
        if block == num_keys:
            new_states.append(_softmax_block(state, queries, norm_scale, keys, values, norms))
            continue
        blocks = -(-num_keys // block)
        pad = ((0, 0), (0, blocks * block - num_keys))
        split = lambda v: jnp.moveaxis(v.reshape((num_classes, blocks, block) + v.shape[2:]),
                                       1, 0)
        xs = (split(jnp.pad(keys, pad + ((0, 0),))), split(jnp.pad(values, pad + ((0, 0),))),
              split(jnp.pad(norms, pad, constant_values=jnp.inf)))
        state, _ = jax.lax.scan(
            lambda state, kvn: (_softmax_block(state, queries, norm_scale, *kvn), None),
            state, xs)
        new_states.append(state)
    return tuple(new_states)


def _combine_shards(states):
    """Merges the per-shard sums: m = pmax(m_k), (l, acc) = psum of the rescaled sums."""
    merged = []
    for state in states:
        state = _rescale(state, jax.lax.pmax(state.max, parallel.DATA_AXIS))
        total, weighted = jax.lax.psum((state.total, state.weighted), parallel.DATA_AXIS)
        merged.append(PatchSoftmax(state.max, total, weighted))
    return tuple(merged)


def _x0_one_size(x, a, sigma2, *, rows, image_shape, patch_size, equivariant, block_logits):
    """x̂₀ (B, H, W, C) of the machine with one patch size for every example."""
    batch = x.shape[0]
    height, width, channels = image_shape
    classes = patch_classes(height, width, patch_size, equivariant)
    scaled = x * (a / sigma2)[:, None, None, None]
    norm_scale = a * a / (2.0 * sigma2)
    aux = tuple((class_patches(scaled, pixels, patch_size), jnp.repeat(norm_scale, pixels.shape[1]))
                for pixels in classes)
    init = tuple(PatchSoftmax(jnp.full((g, batch * n), -jnp.inf), jnp.zeros((g, batch * n)),
                              jnp.zeros((g, batch * n, channels)))
                 for g, n in (pixels.shape for pixels in classes))
    step = functools.partial(_patch_step, patch_size=patch_size, classes=classes,
                             image_shape=image_shape, block_logits=block_logits)
    states = chunked.reduce_rows(rows, step, _combine_shards, state=init,
                                 queries=x.reshape(batch, -1), aux=aux)
    x0 = jnp.zeros((batch, height * width, channels))
    for state, pixels in zip(states, classes):
        g, n = pixels.shape
        mean = (state.weighted / state.total[..., None]).reshape(g, batch, n, channels)
        x0 = x0.at[:, pixels.ravel()].set(mean.transpose(1, 0, 2, 3).reshape(batch, g * n,
                                                                             channels))
    return x0.reshape(x.shape)


@flax.struct.dataclass
class PatchMachine:
    """An LS or ELS machine: the training images as chunked rows (sharded along N on a mesh)
    and P(t); a pytree whose leaves are the rows and the table."""
    rows: chunked.ChunkedRows       # training images flattened to H·W·C, float32
    table: jax.Array                # (T+1,) int32, P(t)
    sizes: tuple = flax.struct.field(pytree_node=False)         # the distinct P of table
    image_shape: tuple = flax.struct.field(pytree_node=False)   # (H, W, C)
    equivariant: bool = flax.struct.field(pytree_node=False)    # ELS (True) or LS
    block_logits: int = flax.struct.field(pytree_node=False, default=DEFAULT_BLOCK_LOGITS)


@jax.jit
def patch_x0(x, t, *, machine, schedule):
    """x̂₀(x, t) of the machine (module docstring), shaped like x (B, H, W, C); t an int or
    one per example, each example with its own P(t)."""
    if tuple(x.shape[1:]) != machine.image_shape:
        raise ValueError(f'images of shape {x.shape[1:]} do not match the machine\'s '
                         f'{machine.image_shape}')
    t = jnp.broadcast_to(jnp.asarray(t, jnp.int32), (x.shape[0],))
    x = x.astype(jnp.float32)
    run = functools.partial(_x0_one_size, x, schedule.a[t], schedule.sigma2[t],
                            rows=machine.rows, image_shape=machine.image_shape,
                            equivariant=machine.equivariant, block_logits=machine.block_logits)
    if len(machine.sizes) == 1:
        return run(patch_size=machine.sizes[0])
    size_of_t = machine.table[t]
    x0 = jnp.zeros_like(x)
    for size in machine.sizes:
        use = (size_of_t == size)[:, None, None, None]
        x0 = jax.lax.cond(jnp.any(use),
                          lambda x0, size=size, use=use: jnp.where(use, run(patch_size=size), x0),
                          lambda x0: x0, x0)
    return x0


def patch_eps(x, t, *, machine, schedule):
    """ε̂(x, t) = (x − a_t x̂₀)/σ_t with x̂₀ = patch_x0: the denoiser's pure function (not
    jitted itself: outside jit only patch_x0 compiles, once for x̂₀ and ε̂ alike)."""
    t = jnp.broadcast_to(jnp.asarray(t, jnp.int32), (x.shape[0],))
    x = x.astype(jnp.float32)
    x0 = patch_x0(x, t, machine=machine, schedule=schedule)
    return conversions.eps_from_x0(x, x0=x0, a=schedule.a[t], sigma=schedule.sigma[t])


def default_chunk_size(image_shape, patch_size):
    """Training images per chunk where none is given: DEFAULT_CHUNK_FLOATS floats of P × P
    patches (all channels) at every pixel, at least 8 images."""
    height, width, channels = image_shape
    return max(8, DEFAULT_CHUNK_FLOATS // (height * width * patch_size ** 2 * channels))


def _training_images(train_set):
    """The training set as float32 NumPy images (N, H, W, C)."""
    images = np.asarray(train_set, np.float32)
    if images.ndim != 4:
        raise ValueError(f'the patch machines need images (N, H, W, C), got shape '
                         f'{images.shape}')
    return images


def patch_machine(train_set, schedule, patch_size, *, equivariant, chunk_size=None, mesh=None,
                  rows=None, block_logits=DEFAULT_BLOCK_LOGITS):
    """The PatchMachine of a training set (N, H, W, C) in [-1, 1] with P(t) = patch_size (an
    int, or T+1 of them). rows: the training set already as chunked.ChunkedRows (shared
    between machines); chunk_size: training images per chunk (None: default_chunk_size);
    block_logits: floats of logits per block of keys."""
    images = _training_images(train_set)
    table = patch_size_array(patch_size, schedule.num_timesteps, images.shape[1:])
    if rows is None:
        rows = chunked.prepare_rows(
            images, chunk_size or default_chunk_size(images.shape[1:], int(table.max())),
            jnp.float32, mesh=mesh)
    sizes = tuple(sorted({int(p) for p in table}))
    table = jnp.asarray(table) if mesh is None else parallel.replicate(jnp.asarray(table), mesh)
    return PatchMachine(rows, table, sizes, tuple(images.shape[1:]), bool(equivariant),
                        int(block_logits))


def patch_denoiser(train_set, schedule, patch_size, *, equivariant, chunk_size=None, mesh=None,
                   block_logits=DEFAULT_BLOCK_LOGITS):
    """The denoiser (x, t) -> ε̂(x, t) of the LS (equivariant=False) or ELS (True) machine of a
    training set (N, H, W, C) in [-1, 1], with P(t) = patch_size: an odd int for every t, or
    a sequence of T+1 of them (entry t for step t). A jax.tree_util.Partial of patch_eps whose
    leaves are the training images (sharded along N over the mesh's data axis when a mesh is
    given), P(t) and the schedule. chunk_size: training images per chunk (None:
    default_chunk_size); block_logits: floats of logits per block of keys (module docstring)."""
    machine = patch_machine(train_set, schedule, patch_size, equivariant=equivariant,
                            chunk_size=chunk_size, mesh=mesh, block_logits=block_logits)
    return jax.tree_util.Partial(patch_eps, machine=machine, schedule=schedule)


@jax.jit
def _apply(denoiser, x, t):
    return denoiser(x, t)


def calibrate_patch_sizes(target, train_set, images, schedule, ts, candidates, *, equivariant,
                          rng, mesh=None, chunk_size=None, batch_size=256,
                          block_logits=DEFAULT_BLOCK_LOGITS):
    """The patch size that makes the machine closest to a target denoiser, per t.

    For each t in ts: x_t = a_t y + σ_t ε for every y of images (ε from fold_in(rng, t)), the
    target's x̂₀ = (x_t − σ_t target(x_t, t))/a_t, and for each candidate P the machine's
    x̂₀ with P; error[t, P] = mean over images and coordinates of (x̂₀^machine − x̂₀^target)².
    (The same ranking as the ε error: x̂₀ differences are ε differences times σ_t/a_t.) The
    best P minimises it (ties: the first candidate). Kamb & Ganguli (App. C.2) rank by the
    cosine of ε along the network's own trajectories; this is the forward-process variant.

    The images go through in batches of batch_size; chunk_size and block_logits are
    patch_machine's. Returns {'t': ts, 'patch_size': best P per t, 'error': (len(ts),
    len(candidates)), 'candidates'}; patch_size_table expands it to P(t) for every t."""
    train = _training_images(train_set)
    images = _training_images(images)
    candidates = [int(p) for p in candidates]
    check_patch_size(candidates, train.shape[1:])
    rows = chunked.prepare_rows(
        train, chunk_size or default_chunk_size(train.shape[1:], max(candidates)), jnp.float32,
        mesh=mesh)
    machines = [patch_machine(train, schedule, p, equivariant=equivariant, mesh=mesh, rows=rows,
                              block_logits=block_logits) for p in candidates]
    target = target if isinstance(target, jax.tree_util.Partial) else \
        jax.tree_util.Partial(target)
    ts = [int(t) for t in ts]
    error = np.zeros((len(ts), len(candidates)), np.float64)
    for i, t in enumerate(ts):
        noise = np.asarray(jax.random.normal(jax.random.fold_in(rng, t), images.shape))
        x_t = np.asarray(conversions.diffuse(images, eps=noise, a=schedule.a[t],
                                             sigma=schedule.sigma[t]), np.float32)
        for start in range(0, len(images), batch_size):
            x = jnp.asarray(x_t[start:start + batch_size])
            tt = jnp.full((x.shape[0],), t, jnp.int32)
            wanted = np.asarray(conversions.x0_from_eps(
                x, eps=_apply(target, x, tt), a=schedule.a[t], sigma=schedule.sigma[t]),
                np.float64)
            for j, machine in enumerate(machines):
                got = np.asarray(patch_x0(x, tt, machine=machine, schedule=schedule), np.float64)
                error[i, j] += np.sum((got - wanted) ** 2)
    error /= images.size
    best = np.asarray(candidates, np.int32)[np.argmin(error, axis=1)]
    return {'t': np.asarray(ts, np.int32), 'patch_size': best, 'error': error,
            'candidates': np.asarray(candidates, np.int32)}


def patch_size_table(calibration, num_timesteps):
    """P(t) for t = 0..T (int32 (T+1,), for patch_denoiser) from calibrate_patch_sizes'
    result: piecewise constant, each t taking the P of the nearest calibrated t (ties: the
    smaller calibrated t)."""
    ts = np.asarray(calibration['t'], np.int64)
    sizes = np.asarray(calibration['patch_size'], np.int32)
    order = np.argsort(ts, kind='stable')
    ts, sizes = ts[order], sizes[order]
    grid = np.arange(num_timesteps + 1)
    return sizes[np.argmin(np.abs(grid[:, None] - ts[None, :]), axis=1)]
