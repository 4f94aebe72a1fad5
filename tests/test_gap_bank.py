"""The gap-bank empirical optimum against a float64 brute force, its reduction to ε* for
t ≤ K, and its convergence to ε* as the bank grows.

Round-off bound (float32, u = 2⁻²⁴; the argument of tests/test_optimal.py): the brute force
takes the engine's float32 coefficients (√r, √(1 − r), c) and bank rows as its inputs, so only
the engine's arithmetic is under test. The logit q·u_k is one GEMM of length D' = 2D + 3 on a
query built with at most 6 roundings: |Δs_k| ≤ δ_k = (D' + 6) u Σ_m |q_m u_km|; with
δ = max_k δ_k every weight moves by |Δw_k| ≤ ε_k = 2δ e^{4δ} w_k (1 − w_k), so ε̂ moves by at
most Σ_k ε_k |v_k| (v_k = (x − centre_k)/(√(1 − r) c), Σ Δw_k = 0). The online sums over n
rows in K chunks err by a relative r_s = (2n + 8K + 16) u on l and acc, i.e. by
2 r_s (a max|y| + b max|ε|)/(√(1 − r) c); the final x − centre and scalings add
6 u (|x| + |centre|)/(√(1 − r) c).

Monte Carlo: ε̂_M(x) is a self-normalised importance-sampling estimate of ε*(x) over the
bank's noise draws, with standard error SE² ≈ Σ_k w_k² ‖v_k − ε̂‖² per coordinate; we allow
5 SE.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffgen.diffusion import samplers
from diffgen.optimum.gap_bank import bank_rows, gap_bank_denoiser
from diffgen.diffusion.objectives import gap_coefficients
from diffgen.diffusion.schedules import make_schedule

U32 = 2.0 ** -24


@pytest.fixture(scope='module')
def schedule():
    return make_schedule('linear', 1000)


def float64_coefficients(schedule, t, s):
    """(√r, √(1 − r), c) in float64 from the float32 betas, each (B, 1)."""
    L = np.cumsum(np.log1p(-np.asarray(schedule.betas, np.float64)))
    one_minus_r = -np.expm1(L[t] - L[s])
    return (np.exp((L[t] - L[s]) / 2)[:, None], np.sqrt(one_minus_r)[:, None],
            np.sqrt(one_minus_r / -np.expm1(L[t]))[:, None])


def brute_force(x, t, bank, num_rows, schedule, max_k, exact=False):
    """float64 gap-bank optimum from the stored rows: ε̂, weights, v_k, and the bound terms;
    with the engine's float32 coefficients, or (exact) float64 ones."""
    rows = np.asarray(bank.rows, np.float64)[:num_rows]
    dim = (rows.shape[1] - 3) // 2
    Y, E = rows[:, :dim], rows[:, dim:2 * dim]
    X = np.asarray(x, np.float64).reshape(len(x), dim)
    t = np.asarray(t)
    s = np.maximum(t - max_k, 0)
    if exact:
        sqrt_r, sqrt_1mr, c = float64_coefficients(schedule, t, s)
    else:
        sqrt_r, sqrt_1mr, c = (np.asarray(v, np.float64)[:, None] for v in
                               gap_coefficients(schedule, jnp.asarray(t), jnp.asarray(s)))
    a = sqrt_r * np.asarray(schedule.a, np.float64)[s][:, None]
    b = sqrt_r * np.asarray(schedule.sigma, np.float64)[s][:, None]
    centres = a[:, :, None] * Y[None] + b[:, :, None] * E[None]          # (B, n, D)
    logits = -((X[:, None] - centres) ** 2).sum(-1) / (2 * sqrt_1mr ** 2)
    e = np.exp(logits - logits.max(1, keepdims=True))
    w = e / e.sum(1, keepdims=True)
    g = 1.0 / (sqrt_1mr * c)                                             # (B, 1)
    v = g[:, :, None] * (X[:, None] - centres)
    eps = (w[:, :, None] * v).sum(1)
    q = np.concatenate([a * X, b * X, -a * a / 2, -a * b, -b * b / 2], 1) / sqrt_1mr ** 2
    return dict(eps=eps, w=w, e=e, v=v, g=g, a=a, b=b, X=X, Y=Y, E=E, centres=centres, q=q,
                rows=rows)


def round_off_bound(ref, num_chunks):
    """Per-coordinate bound on |ε̂_engine − ε̂_float64| (module doc)."""
    n, d_prime = ref['rows'].shape
    delta = ((d_prime + 6) * U32 * (np.abs(ref['q']) @ np.abs(ref['rows']).T)).max(1)[:, None]
    e, total = ref['e'], ref['e'].sum(1, keepdims=True)
    others = total - e
    top = e.argmax(1)
    others[np.arange(len(e)), top] = [np.delete(row, i).sum() for row, i in zip(e, top)]
    eps_w = 2 * delta * np.exp(4 * delta) * ref['w'] * others / total
    softmax = (eps_w[:, :, None] * np.abs(ref['v'])).sum(1)
    r_sum = (2 * n + 8 * num_chunks + 16) * U32
    sums = 2 * r_sum * ref['g'] * (ref['a'] * np.abs(ref['Y']).max()
                                   + ref['b'] * np.abs(ref['E']).max())
    centre = np.abs((ref['w'][:, :, None] * ref['centres']).sum(1))
    final = 6 * U32 * ref['g'] * (np.abs(ref['X']) + centre)
    return softmax + sums + final


def queries(train, t, key):
    """Forward-process points of training images at t, and pure noise, (B, ...)."""
    k1, k2, k3 = jax.random.split(key, 3)
    idx = jax.random.randint(k1, (len(t),), 0, len(train))
    ab = make_schedule('linear', 1000).alphas_bar[jnp.asarray(t)]
    shape = (len(t),) + (1,) * (train.ndim - 1)
    forward = (jnp.sqrt(ab).reshape(shape) * train[idx]
               + jnp.sqrt(1 - ab).reshape(shape) * jax.random.normal(k2, train[idx].shape))
    return jnp.concatenate([forward, jax.random.normal(k3, forward.shape)])


TIMES = [1, 2, 5, 10, 11, 12, 20, 100, 300, 600, 1000]


def test_gap_bank_equals_float64_brute_force(schedule):
    rng = np.random.default_rng(0)
    train = jnp.asarray(rng.uniform(-1, 1, (6, 2, 2, 1)), jnp.float32)
    max_k, draws = 10, 4
    bank = bank_rows(train, draws, jax.random.key(3), chunk_size=8)
    assert bank.chunk_size == 8 and bank.num_rows == 24
    rows = np.asarray(bank.rows)[:24]
    np.testing.assert_array_equal(rows[:, :4], np.repeat(np.asarray(train).reshape(6, 4), 4, 0))
    t = np.array(TIMES * 2)
    x = queries(train, TIMES, jax.random.key(4))
    got = np.asarray(gap_bank_denoiser(bank, schedule, max_k)(x, jnp.asarray(t)))
    ref = brute_force(x, t, bank, 24, schedule, max_k)
    bound = round_off_bound(ref, bank.rows.shape[0] // bank.chunk_size)
    np.testing.assert_array_less(np.abs(got.reshape(len(t), -1) - ref['eps']), bound)


def test_gap_bank_is_eps_star_for_t_at_most_k(schedule):
    """s = 0: the centres a_t y_i repeat M times; the softmax is ε*'s (float64, both sides)."""
    rng = np.random.default_rng(1)
    train = rng.uniform(-1, 1, (5, 3)).astype(np.float32)
    bank = bank_rows(train, 3, jax.random.key(0), chunk_size=8)
    t = np.array([1, 3, 8, 20] * 2)
    x = np.asarray(queries(jnp.asarray(train), [1, 3, 8, 20], jax.random.key(1)), np.float64)
    ref = brute_force(x, t, bank, 15, schedule, 20, exact=True)
    ab = np.exp(np.cumsum(np.log1p(-np.asarray(schedule.betas, np.float64))))[t][:, None]
    logits = -((x[:, None] - np.sqrt(ab)[:, :, None] * train[None]) ** 2).sum(-1) / (2 * (1 - ab))
    w = np.exp(logits - logits.max(1, keepdims=True))
    w /= w.sum(1, keepdims=True)
    eps_star = (x - np.sqrt(ab) * (w @ train)) / np.sqrt(1 - ab)
    np.testing.assert_array_equal(np.asarray(gap_coefficients(schedule, jnp.asarray(t), 0)[2]),
                                  1.0)
    np.testing.assert_allclose(ref['eps'], eps_star, rtol=1e-9, atol=1e-9)


def test_gap_bank_approaches_eps_star_as_the_bank_grows(schedule):
    """M = 16 and M = 4096 draws: |ε̂_M − ε*| ≤ 5 SE at M = 4096, and the RMS error falls by
    more than 4 (1/√M predicts 16)."""
    rng = np.random.default_rng(2)
    train = rng.uniform(-1, 1, (3, 2)).astype(np.float32)
    max_k = 50
    t = np.array([200, 600] * 16)
    x = np.asarray(queries(jnp.asarray(train), t[:16], jax.random.key(5)))
    ab = np.asarray(schedule.alphas_bar, np.float64)[t][:, None]
    x64 = x.astype(np.float64)
    logits = -((x64[:, None] - np.sqrt(ab)[:, :, None] * train[None]) ** 2).sum(-1) / (2 * (1 - ab))
    w = np.exp(logits - logits.max(1, keepdims=True))
    w /= w.sum(1, keepdims=True)
    eps_star = (x64 - np.sqrt(ab) * (w @ train)) / np.sqrt(1 - ab)
    errors = {}
    for draws in (16, 4096):
        bank = bank_rows(train, draws, jax.random.key(draws), chunk_size=1024)
        got = np.asarray(gap_bank_denoiser(bank, schedule, max_k)(x, jnp.asarray(t)), np.float64)
        errors[draws] = got - eps_star
    ref = brute_force(x, t, bank, 3 * 4096, schedule, max_k)
    se = np.sqrt((ref['w'][:, :, None] ** 2 * (ref['v'] - ref['eps'][:, None]) ** 2).sum(1))
    np.testing.assert_array_less(np.abs(errors[4096]), 5 * se)
    rms = {m: np.sqrt(np.mean(err ** 2)) for m, err in errors.items()}
    assert rms[4096] < rms[16] / 4, rms


def test_every_sampler_takes_the_gap_bank():
    """A Partial denoiser: each sampler compiles once for two banks of the same shape."""
    schedule = make_schedule('linear', 100)
    train = np.random.default_rng(3).uniform(-1, 1, (4, 2, 2, 1)).astype(np.float32)
    x_T = jax.random.normal(jax.random.key(0), (3, 2, 2, 1))
    compiled = samplers._sample._cache_size()
    for method, steps in (('ddim', 10), ('heun', 5), ('ddpm', None)):
        outs = []
        for key in (0, 1):
            denoiser = gap_bank_denoiser(bank_rows(train, 2, jax.random.key(key)), schedule, 5)
            outs.append(np.asarray(samplers.sample(denoiser, x_T, schedule, method, steps,
                                                   rng=jax.random.key(1))))
        assert all(np.all(np.isfinite(o)) for o in outs)
    assert samplers._sample._cache_size() - compiled == 3  # one per method, not per bank
