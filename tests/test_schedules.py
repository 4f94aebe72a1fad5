"""Schedule quantities are float64 computations rounded once to float32 (diffgen.diffusion.
schedules), and the empirical optimum built on them matches a float64 computation."""
import jax
import numpy as np
import pytest

from diffgen.diffusion.schedules import SCHEDULES, make_schedule, schedule_arrays
from diffgen.optimum.optimal import optimal_denoiser

U32 = 2.0 ** -24   # float32 unit round-off


@pytest.mark.parametrize('name', SCHEDULES.names())
def test_every_array_is_the_float32_rounding_of_float64(name):
    schedule, arrays = make_schedule(name, 1000), schedule_arrays(name, 1000)
    for field, exact in arrays.items():
        np.testing.assert_array_equal(np.asarray(getattr(schedule, field)),
                                      exact.astype(np.float32), err_msg=field)


def test_sigma_at_t1_is_beta_1():
    """Linear schedule: 1 - alphas_bar_1 = beta_1 = 1e-4 exactly; from float32 alphas_bar_1
    it would be 1.00017e-4."""
    schedule = make_schedule('linear', 1000)
    assert abs(float(schedule.sigma2[1]) - 1e-4) <= U32 * 1e-4
    assert abs(float(schedule.sigma[1]) ** 2 - 1e-4) <= 3 * U32 * 1e-4
    assert float(schedule.posterior_variance[1]) == 0.0
    beta = schedule_arrays('linear', 1000)['betas']
    tilde_beta_2 = beta[2] * beta[1] / (1 - (1 - beta[1]) * (1 - beta[2]))
    np.testing.assert_allclose(np.asarray(schedule.posterior_variance[2]), tilde_beta_2,
                               rtol=4 * U32)


def eps_star_float64(x, train, t, arrays):
    """eps*(x, t) by brute force in float64: softmax of -||x - a y_i||^2 / (2 sigma^2)."""
    a, sigma2 = arrays['a'][t], arrays['sigma2'][t]
    x = x.reshape(len(x), -1).astype(np.float64)
    y = train.reshape(len(train), -1).astype(np.float64)
    logits = -((x[:, None] - a * y[None]) ** 2).sum(-1) / (2 * sigma2)
    w = np.exp(logits - logits.max(1, keepdims=True))
    w /= w.sum(1, keepdims=True)
    return (x - a * (w @ y)) / np.sqrt(sigma2)


def test_optimum_at_t1_matches_float64_in_image_dimension():
    """D = 3072, queries x = a_1 y_0 + sigma_1 xi near a training image: eps*(x, 1) ~ xi
    within 1e-5 relative of float64 (sigma_1 from float32 alphas_bar put it 8e-5 off)."""
    schedule, arrays = make_schedule('linear', 1000), schedule_arrays('linear', 1000)
    k_train, k_noise = jax.random.split(jax.random.key(0))
    train = np.asarray(jax.random.uniform(k_train, (6, 3, 32, 32), minval=-1.0, maxval=1.0))
    xi = np.asarray(jax.random.normal(k_noise, (4, 3, 32, 32)))
    x = (np.float32(arrays['a'][1]) * train[[0, 0, 3, 5]]
         + np.float32(arrays['sigma'][1]) * xi).astype(np.float32)
    eps = np.asarray(optimal_denoiser(train, schedule)(x, np.ones(4, np.int32)), np.float64)
    exact = eps_star_float64(x, train, 1, arrays)
    rel = np.linalg.norm(eps.reshape(4, -1) - exact, axis=1) / np.linalg.norm(exact, axis=1)
    assert np.all(rel < 1e-5), rel
