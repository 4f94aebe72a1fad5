"""The empirical-optimal denoiser against a float64 NumPy brute force (softmax over all N).

Tolerances are worst-case float32 round-off bounds (u = 2⁻²⁴), derived here, computed from
the data and the reference posterior; nothing is tuned to what the engine prints. Both sides
see the same float32 inputs (x, y, and ᾱ_t from the float32 schedule), so only the engine's
arithmetic is under test:

(1) Logits. s_i = (a/σ²) x·y_i − (a²/(2σ²)) ‖y_i‖². A float32 dot product or squared norm of
    length D errs by at most γ_D Σ_j |terms| ≈ D·u·Σ_j |terms| (Higham, Thm 3.5); the scalars
    a = √ᾱ, a/σ², a²/(2σ²), the scaled query and the final subtraction add at most 6 more
    roundings of relative size u to each term. So |Δs_i| ≤ δ_i with
        δ_i = (D + 6) u [(a/σ²) Σ_j |x_j y_ij| + (a²/(2σ²)) ‖y_i‖²].
    With bfloat16 storage (unit round-off u_b = 2⁻⁸) the query is rounded before the GEMM,
    adding u_b (a/σ²) Σ_j |x_j y_ij| (y is compared as stored, i.e. rounded).
(2) Softmax. For logits moved by Δ, |Δ_i| ≤ δ = max_i δ_i, along s + τΔ:
        dw_i/dτ = w_i Σ_{j≠i} w_j (Δ_i − Δ_j),   |dw_i/dτ| ≤ 2δ w_i(τ) (1 − w_i(τ)),
    and every weight moves by a factor within [e^{−2δ}, e^{2δ}], so
        |Δw_i| ≤ ε_i = 2δ e^{4δ} w_i (1 − w_i).
    This vanishes for a one-hot posterior (t = 1), however large the logits' round-off.
    Then |Δx̂₀| ≤ max|y| Σ_i ε_i;  |Δ max w| ≤ max_i ε_i;  and with h(p) = −p log p,
    |h'| ≤ |log w_i| + 2δ + 1 between w_i and w_i + Δw_i, so |ΔH| ≤ Σ_i ε_i (|log w_i| + 2δ + 1).
(3) Sums. exp (a few ulp), the centring s_i − m (≤ u|s_i − m| in the exponent, and
    e^{s−m}|s − m| ≤ 1), the sums over the C rows of a chunk, over the K chunks and their
    rescalings: a relative error of at most r = (2N + 8K + 16) u on l, acc and v, so
    |Δx̂₀| ≤ 2r max|y|, |Δ max w| ≤ 2r max w and |ΔH| ≤ 2r (1 + 2 log N) (since log l and
    v/l are both within [−log N, log N]). bfloat16 weights in the second GEMM add u_b max|y|.
(4) ε* = (x − a x̂₀*)/σ adds a|Δx̂₀|/σ and 3u (|x| + a|x̂₀|)/σ.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffgen.diffusion import conversions, samplers
from diffgen.diffusion.schedules import make_schedule
from diffgen.optimum import chunked, optimal
from diffgen.optimum.neighbors import knn

U32 = 2.0 ** -24
U_BF16 = 2.0 ** -8
TIMES = [1, 2, 10, 100, 300, 600, 1000]


@pytest.fixture(scope='module')
def schedule():
    return make_schedule('linear', 1000)


def brute_force(x, t, y, schedule):
    """float64 posterior over all N: weights (B, N), logits (B, N), x̂₀, ε*, H, max w."""
    X = np.asarray(x, np.float64).reshape(len(x), -1)
    Y = np.asarray(y, np.float64).reshape(len(y), -1)
    # the engine's inputs a_t, σ_t² (float32 roundings of float64 values), in float64
    a = np.asarray(schedule.a, np.float64)[np.asarray(t)][:, None]
    s2 = np.asarray(schedule.sigma2, np.float64)[np.asarray(t)][:, None]
    logits = -((X[:, None, :] - a[:, :, None] * Y[None]) ** 2).sum(-1) / (2 * s2)
    e = np.exp(logits - logits.max(1, keepdims=True))
    w = e / e.sum(1, keepdims=True)
    x0 = w @ Y
    safe_log = np.log(np.where(w > 0, w, 1.0))
    return dict(w=w, e=e, x0=x0, eps=(X - a * x0) / np.sqrt(s2),
                entropy=-(w * safe_log).sum(1), max_weight=w.max(1), log_w=safe_log)


def bounds(x, t, y, schedule, ref, num_chunks, bf16=False):
    """Per-query round-off bounds (1)–(4) for x̂₀, ε*, H and max w (see the module doc)."""
    X = np.asarray(x, np.float64).reshape(len(x), -1)
    Y = np.asarray(y, np.float64).reshape(len(y), -1)
    n, d = Y.shape
    # the engine's inputs a_t, σ_t² (float32 roundings of float64 values), in float64
    a = np.asarray(schedule.a, np.float64)[np.asarray(t)][:, None]
    s2 = np.asarray(schedule.sigma2, np.float64)[np.asarray(t)][:, None]
    cross = (a / s2) * (np.abs(X) @ np.abs(Y).T)
    norms = (a * a / (2 * s2)) * (Y * Y).sum(1)[None]
    delta = (d + 6) * U32 * (cross + norms) + (U_BF16 * cross if bf16 else 0.0)
    delta = delta.max(1, keepdims=True)
    # w_i (1 − w_i) with 1 − w_i summed from the other weights (no cancellation at w_i ≈ 1)
    e, total = ref['e'], ref['e'].sum(1, keepdims=True)
    others = total - e
    top = e.argmax(1)
    others[np.arange(len(e)), top] = [np.delete(row, i).sum() for row, i in zip(e, top)]
    with np.errstate(divide='ignore'):  # in logs: e^{4δ} may overflow where w(1 − w) is 0
        eps_w = np.exp(np.log(2 * delta) + 4 * delta + np.log(ref['w'] * others / total))
    r = (2 * n + 8 * num_chunks + 16) * U32
    y_max = np.abs(Y).max()
    x0 = y_max * (eps_w.sum(1) + 2 * r + (U_BF16 if bf16 else 0.0))
    eps = (a[:, 0] * x0 + 3 * U32 * (np.abs(X).max(1) + a[:, 0] * np.abs(ref['x0']).max(1)))
    eps /= np.sqrt(s2[:, 0])
    entropy = (eps_w * (np.abs(ref['log_w']) + 2 * delta + 1)).sum(1) + 2 * r * (1 + 2 * np.log(n))
    max_weight = eps_w.max(1) + 2 * r * ref['max_weight']
    return dict(x0=x0, eps=eps, entropy=entropy, max_weight=max_weight)


def assert_within(value, expected, bound):
    """|value − expected| ≤ bound per query (max over each query's coordinates)."""
    value = np.asarray(value, np.float64).reshape(len(bound), -1)
    err = np.abs(value - np.asarray(expected).reshape(len(bound), -1)).max(1)
    assert np.all(np.isfinite(value))
    assert np.all(err <= bound), (err, bound)


def forward_points(y, t, schedule, seed):
    """x_t = a_t y_i + σ_t ε for random training points i: posteriors of every sharpness."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(y), len(t))
    a = np.asarray(schedule.a)[t].reshape((-1,) + (1,) * (y.ndim - 1))
    sigma = np.asarray(schedule.sigma)[t].reshape(a.shape)
    return (a * y[idx] + sigma * rng.standard_normal(y[idx].shape)).astype(np.float32)


def training_set(n, shape, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (n,) + shape).astype(np.float32)


@pytest.mark.parametrize('n,chunk_size,shape', [
    (37, 8, (4, 4, 3)),     # chunk does not divide N: 5 chunks of 8, last one 5 rows
    (40, 8, (4, 4, 3)),     # chunk divides N
    (37, 5, (2,)),          # points, chunk not a multiple of 8
    (37, 2048, (4, 4, 3)),  # one chunk
    (1, 4, (4, 4, 3)),      # a single training point: w = 1
])
def test_matches_float64_brute_force(schedule, n, chunk_size, shape):
    y = training_set(n, shape)
    t = np.array(TIMES * 2, np.int32)
    x = np.concatenate([forward_points(y, t[:len(TIMES)], schedule, 1),
                        np.random.default_rng(2).standard_normal((len(TIMES),) + shape)
                        .astype(np.float32)])
    rows = chunked.prepare_rows(y, chunk_size)
    ref = brute_force(x, t, y, schedule)
    bound = bounds(x, t, y, schedule, ref, rows.rows.shape[0] // rows.chunk_size)
    assert_within(optimal.posterior_mean(x, t, rows, schedule=schedule), ref['x0'], bound['x0'])
    assert_within(optimal.optimal_denoiser(rows, schedule)(x, t), ref['eps'], bound['eps'])
    entropy, max_weight = optimal.posterior_stats(x, t, rows, schedule=schedule)
    assert_within(entropy, ref['entropy'], bound['entropy'])
    assert_within(max_weight, ref['max_weight'], bound['max_weight'])


def test_score_is_the_gradient_of_the_log_density(schedule):
    """score*(x, t) = −ε*/σ_t (conversions.score_from_eps) is ∇_x log p̂_t(x) with
    p̂_t = (1/N) Σ_i N(a_t y_i, σ_t² I): against float64 central differences of log p̂_t
    (step h: truncation ~h² |∂³ log p̂_t| and round-off ~u_64 |log p̂_t|/h, both far below
    1e-6 here), within ε*'s round-off bound (4) over σ_t plus the division's rounding."""
    y = training_set(9, (3, 2))
    t = np.array([50, 100, 300, 600, 1000], np.int32)
    x = forward_points(y, t, schedule, 6)
    score = conversions.score_from_eps(optimal.optimal_denoiser(y, schedule)(x, t),
                                       sigma=schedule.sigma[t])
    X, Y = x.reshape(len(x), -1).astype(np.float64), y.reshape(len(y), -1).astype(np.float64)
    ab = np.asarray(schedule.alphas_bar, np.float64)[t][:, None]

    def log_density(X):  # log p̂_t(x) up to a constant, per query
        logits = -((X[:, None, :] - np.sqrt(ab)[:, :, None] * Y[None]) ** 2).sum(-1)
        logits /= 2 * (1 - ab)
        top = logits.max(1)
        return top + np.log(np.exp(logits - top[:, None]).sum(1))

    h = 1e-5
    steps = h * np.eye(X.shape[1])
    numeric = np.stack([(log_density(X + e) - log_density(X - e)) / (2 * h) for e in steps], 1)
    sigma = np.sqrt(1 - ab[:, 0])
    bound = bounds(x, t, y, schedule, brute_force(x, t, y, schedule), 1)['eps'] / sigma
    assert_within(score, numeric, bound + 2 * U32 * np.abs(numeric).max(1) + 1e-6)
    assert np.abs(numeric).max() > 1  # not trivially small


def test_bfloat16_storage(schedule):
    """bfloat16 rows and GEMM inputs, float32 sums: within the bound with u_b = 2⁻⁸ terms,
    against the brute force over the rows as stored (rounded to bfloat16)."""
    y = training_set(37, (4, 4, 3))
    t = np.array(TIMES, np.int32)
    x = forward_points(y, t, schedule, 3)
    y_stored = np.asarray(jnp.asarray(y, jnp.bfloat16).astype(jnp.float32))
    rows = chunked.prepare_rows(y, 8, jnp.bfloat16)
    assert rows.rows.dtype == jnp.bfloat16
    ref = brute_force(x, t, y_stored, schedule)
    bound = bounds(x, t, y_stored, schedule, ref, 5, bf16=True)
    assert_within(optimal.posterior_mean(x, t, rows, schedule=schedule), ref['x0'], bound['x0'])


def test_no_overflow_where_naive_softmax_overflows(schedule):
    """t = 1 (σ² ≈ 1e-4) and queries far from every training point: logits ~1e7, so
    exp(logit) overflows float32 (> 88.7) while the engine stays finite and exact."""
    y = training_set(37, (4, 4, 3))
    x = np.full((3, 4, 4, 3), 30.0, np.float32) * np.array([1, -1, 0.5], np.float32)[:, None,
                                                                                    None, None]
    t = np.ones(3, np.int32)
    ref = brute_force(x, t, y, schedule)
    ab = float(schedule.alphas_bar[1])
    naive_logits = (np.sqrt(ab) * x.reshape(3, -1) @ y.reshape(37, -1).T) / (1 - ab)
    assert np.abs(naive_logits).max() > 1e6
    with np.errstate(over='ignore'):
        assert not np.all(np.isfinite(np.exp(naive_logits.astype(np.float32))))
    rows = chunked.prepare_rows(y, 8)
    bound = bounds(x, t, y, schedule, ref, 5)
    assert_within(optimal.posterior_mean(x, t, rows, schedule=schedule), ref['x0'], bound['x0'])
    assert_within(optimal.optimal_denoiser(rows, schedule)(x, t), ref['eps'], bound['eps'])
    entropy, max_weight = optimal.posterior_stats(x, t, rows, schedule=schedule)
    assert_within(entropy, ref['entropy'], bound['entropy'])
    assert_within(max_weight, ref['max_weight'], bound['max_weight'])


def test_all_padding_chunk(schedule):
    """A trailing chunk with no valid row leaves the sums unchanged (no 0·inf, no NaN)."""
    y = training_set(5, (6,))
    padded = np.concatenate([y, np.zeros((11, 6), np.float32)])
    rows = chunked.ChunkedRows(jnp.asarray(padded), jnp.sum(jnp.asarray(padded) ** 2, 1), 5, 8)
    t = np.array([1, 500, 1000], np.int32)
    x = forward_points(y, t, schedule, 4)
    ref = brute_force(x, t, y, schedule)
    bound = bounds(x, t, y, schedule, ref, 2)
    assert_within(optimal.posterior_mean(x, t, rows, schedule=schedule), ref['x0'], bound['x0'])
    entropy, max_weight = optimal.posterior_stats(x, t, rows, schedule=schedule)
    assert_within(entropy, ref['entropy'], bound['entropy'])


def test_denoiser_is_a_pytree_and_jits_as_an_argument(schedule):
    y1, y2 = training_set(16, (4, 4, 3), 0), training_set(16, (4, 4, 3), 1)
    den1 = optimal.optimal_denoiser(y1, schedule, chunk_size=8)
    den2 = optimal.optimal_denoiser(y2, schedule, chunk_size=8)
    assert isinstance(den1, jax.tree_util.Partial)
    assert any(leaf.shape == (16, 48) and np.array_equal(leaf, y1.reshape(16, -1))
               for leaf in jax.tree_util.tree_leaves(den1))
    apply = jax.jit(lambda denoiser, x, t: denoiser(x, t))
    t = np.array([3, 300], np.int32)
    x = forward_points(y1, t, schedule, 5)
    for den in (den1, den2):
        np.testing.assert_array_equal(apply(den, x, t), den(x, t))
    assert apply._cache_size() == 1  # the training set is an argument, not a constant


def test_ddim_with_the_optimum_returns_training_points(schedule):
    """The memorisation fact of docs/math.md §4: deterministic DDIM with ε* ends on training points
    (the last step returns x̂₀* at t_1, a one-hot average for σ_{t_1} → 0)."""
    y = training_set(40, (4, 4, 3))
    den = optimal.optimal_denoiser(y, schedule, chunk_size=16)
    x_T = jax.random.normal(jax.random.key(0), (8, 4, 4, 3))
    z = np.asarray(samplers.sample(den, x_T, schedule, 'ddim', num_steps=50))
    distances, indices = knn(z, y, 2, normalize=True)
    # The last step computes (x − σ (x − a x̂₀*)/σ)/a = x̂₀* with ~8 float32 roundings of
    # values ≤ 4 in magnitude (a ≈ 1), and x̂₀* = y_i when the posterior is one-hot.
    np.testing.assert_allclose(z, y[np.asarray(indices[:, 0])], rtol=0, atol=8 * 4 * U32)
    assert np.all(np.asarray(distances[:, 1]) > 0.1)  # the second-nearest is far away
