"""The loss evaluator (diffgen.analysis.evaluation, type 'loss'): its stratified grid of t and
its ε, and its train / held-out losses, gap and paired t-interval, against a float64 NumPy
recomputation of the same grid on a tiny case (a linear denoiser ε̂ = c_t x)."""
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from scipy import stats

from diffgen.analysis import evaluation
from diffgen.diffusion.schedules import make_schedule, schedule_arrays

T, K, M, SHAPE = 10, 3, 2, (2, 2, 1)   # strata {1..3}, {4..6}, {7..10}


def _linear(c, x, t):
    return c[t].reshape((-1,) + (1,) * (x.ndim - 1)) * x


@pytest.fixture(scope='module')
def inputs():
    """EvaluationInputs of a made-up run: 7 training and 4 held-out images (n = 4), T = 10,
    network calls of at most 4 rows (two batches of 2 images: one shape, one compilation)."""
    rng = np.random.default_rng(0)
    train = rng.uniform(-1, 1, (7,) + SHAPE).astype(np.float32)
    heldout = rng.uniform(-1, 1, (4,) + SHAPE).astype(np.float32)
    dataset = types.SimpleNamespace(train=train, heldout=heldout, train_images=train,
                                    heldout_images=heldout, image_shape=SHAPE)
    run = types.SimpleNamespace(dataset=dataset, schedule=make_schedule('linear', T), mesh=None)
    config = ml_collections.ConfigDict({
        'seed': 3, 'evaluation': {'num_samples': 2, 'num_images': 6},
        'optimal': {'chunk_size': 0, 'storage_dtype': 'float32'},
        'sampling': {'batch_size': 4}})
    return evaluation.EvaluationInputs(config, run)


def test_stratified_times_one_per_stratum():
    strata = [(1, 3), (4, 6), (7, 10)]
    for seed in range(20):
        t, w = evaluation.stratified_times(jax.random.PRNGKey(seed), T, K)
        assert all(lo <= tk <= hi for tk, (lo, hi) in zip(t, strata)), t
        np.testing.assert_array_equal(w, [0.3, 0.3, 0.4])
    t, w = evaluation.stratified_times(jax.random.PRNGKey(0), T, 50)   # at most T strata
    np.testing.assert_array_equal(t, np.arange(1, T + 1))
    np.testing.assert_allclose(w, 0.1)


def test_loss_gap_equals_a_float64_recomputation(inputs):
    """train, heldout, gap and its interval equal a float64 NumPy computation of
    ℓ_i = Σ_k w_k (1/M) Σ_m ‖c_{t_k}(a y_i + σ ε_ikm) − ε_ikm‖² / D on the same t_k and ε
    (image i of both sets with the same ε), and the interval scipy's paired t-test's; the
    grid is the same at every evaluation. Tolerance: float32 network arithmetic on sums of
    D·M·K = 24 terms of size O(1), relative 1e-5."""
    c = jnp.linspace(-0.5, 1.5, T + 1)
    denoiser = jax.tree_util.Partial(_linear, c)
    options = types.SimpleNamespace(t_strata=K, eps_per_image=M)
    out = evaluation.denoising_loss_gap(inputs, options, denoiser, None)
    assert out == evaluation.denoising_loss_gap(inputs, options, denoiser, None)

    t, w = inputs.loss_times(K)
    assert [1 <= t[0] <= 3, 4 <= t[1] <= 6, 7 <= t[2] <= 10] == [True] * 3
    n = len(inputs.train)
    assert n == len(inputs.heldout) == 4
    eps = np.asarray(evaluation.loss_noise(inputs.loss_eps_key, jnp.arange(n), K, M, SHAPE),
                     np.float64)                                   # (n, K, M, ...)
    s = schedule_arrays('linear', T)
    c64 = np.asarray(c, np.float64)

    def losses(images):
        y = np.asarray(images, np.float64)[:, None, None]           # (n, 1, 1, ...)
        a = s['a'][t][None, :, None, None, None, None]
        sigma = s['sigma'][t][None, :, None, None, None, None]
        x = a * y + sigma * eps
        eps_hat = c64[t][None, :, None, None, None, None] * x
        per_km = ((eps_hat - eps) ** 2).reshape(n, K, M, -1).mean(axis=(2, 3))
        return per_km @ w                                           # (n,)

    train, heldout = losses(inputs.train), losses(inputs.heldout)
    assert out['train'] == pytest.approx(train.mean(), rel=1e-5)
    assert out['heldout'] == pytest.approx(heldout.mean(), rel=1e-5)
    assert out['gap'] == pytest.approx(heldout.mean() - train.mean(), rel=1e-4, abs=1e-6)
    low, high = stats.ttest_rel(heldout, train).confidence_interval(0.95)
    assert (out['gap_low'], out['gap_high']) == pytest.approx((low, high), rel=1e-4, abs=1e-6)
    assert out['gap_low'] < out['gap'] < out['gap_high']


def test_loss_without_heldout_images_reports_train_only(inputs):
    alone = types.SimpleNamespace(**{**vars(inputs), 'heldout': None})
    alone.losses = inputs.losses
    out = evaluation.denoising_loss_gap(
        alone, types.SimpleNamespace(t_strata=K, eps_per_image=M),
        jax.tree_util.Partial(_linear, jnp.zeros(T + 1)), None)
    assert set(out) == {'train'}
