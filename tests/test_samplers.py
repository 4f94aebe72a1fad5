"""Samplers against Gaussian data, where the exact denoiser and each sampler's output law
are known in closed form (tests/gaussian.py)."""
import jax
import numpy as np
import pytest

from diffgen.diffusion import samplers
from diffgen.errors import ConfigError
from diffgen.diffusion.schedules import make_schedule
from tests.gaussian import closed_form_denoiser, exact_output_law

MU = np.array([0.5, -0.3, 0.0], np.float32)
S = np.array([0.3, 0.8, 0.15], np.float32)
N = 20_000


@pytest.fixture(scope='module')
def schedule():
    return make_schedule('linear', 1000)


@pytest.fixture(scope='module')
def x_T():
    return jax.random.normal(jax.random.key(1), (N, MU.size))


# (method, steps, allowed relative discretisation error of the output std)
CASES = [('ddpm', None, 0.03), ('ddim', 1000, 0.015), ('ddim', 100, 0.03), ('heun', 50, 0.01),
         ('heun', 18, 0.03)]


@pytest.mark.parametrize('method,num_steps,tol', CASES)
def test_sampler_matches_gaussian(schedule, x_T, method, num_steps, tol):
    denoiser = closed_form_denoiser(MU, S, schedule)
    x0 = np.asarray(samplers.sample(denoiser, x_T, schedule, method, num_steps,
                                    rng=jax.random.key(2)), np.float64)
    grid = None if method == 'ddpm' else samplers.timestep_grid(1000, num_steps)
    mean, std = exact_output_law(method, schedule, MU, S, grid)
    # The sampler's own law equals the data law up to its discretisation error: small at
    # these step counts (checked here so that the test below also checks the target).
    assert np.all(np.abs(mean - MU) < 0.02 * S + 1e-3), (mean, MU)
    assert np.all(np.abs(std / S - 1) < tol), (std, S)
    # Samples against that law: 5 Monte-Carlo standard errors (sd/sqrt(N) for the mean,
    # sd/sqrt(2N) for the standard deviation of a Gaussian sample).
    assert np.all(np.abs(x0.mean(0) - mean) < 5 * std / np.sqrt(N))
    assert np.all(np.abs(x0.std(0) - std) < 5 * std / np.sqrt(2 * N))


def test_ddim_is_deterministic(schedule, x_T):
    denoiser = closed_form_denoiser(MU, S, schedule)
    a = samplers.sample(denoiser, x_T[:64], schedule, 'ddim', rng=jax.random.key(0))
    b = samplers.sample(denoiser, x_T[:64], schedule, 'ddim', rng=jax.random.key(99))
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    c = samplers.sample(denoiser, x_T[64:128], schedule, 'ddim')
    assert not np.allclose(np.asarray(a), np.asarray(c))


def test_ddpm_depends_on_rng(schedule, x_T):
    denoiser = closed_form_denoiser(MU, S, schedule)
    a = samplers.sample(denoiser, x_T[:64], schedule, 'ddpm', rng=jax.random.key(0))
    b = samplers.sample(denoiser, x_T[:64], schedule, 'ddpm', rng=jax.random.key(1))
    assert not np.allclose(np.asarray(a), np.asarray(b))


def test_sampler_compiles_once_per_denoiser_structure(schedule, x_T):
    """New denoiser arrays (e.g. new parameters) reuse the compiled sampler."""
    before = samplers._sample._cache_size()
    for shift in (0.0, 1.0, 2.0):
        d = closed_form_denoiser(MU + shift, S, schedule)
        samplers.sample(d, x_T[:32], schedule, 'ddim', num_steps=10)
    assert samplers._sample._cache_size() == before + 1


def test_bad_sampler_arguments(schedule, x_T):
    d = closed_form_denoiser(MU, S, schedule)
    with pytest.raises(ConfigError, match="sampling.method='euler' is not one of"):
        samplers.sample(d, x_T[:4], schedule, 'euler')
    with pytest.raises(ConfigError, match='steps'):
        samplers.sample(d, x_T[:4], schedule, 'ddim', num_steps=2000)
    with pytest.raises(ConfigError, match='eta'):
        samplers.sample(d, x_T[:4], schedule, 'ddim', eta=1.5)


def quadratic_grid_with_duplicates_removed(T, num_steps):
    """The grid before exact step counts: round(T (i/S)^2) with repeats dropped."""
    return np.unique(np.round(np.linspace(0.0, 1.0, num_steps + 1) ** 2 * T).astype(np.int32))


@pytest.mark.parametrize('T', [10, 100, 1000])
def test_timestep_grid_takes_exactly_the_steps_asked_for(T):
    """Every S in 1..T: S + 1 points, strictly increasing, 0 and T at the ends; the same
    grid as before wherever rounding repeated no step (those step counts' numbers stand)."""
    unchanged = 0
    for num_steps in range(1, T + 1):
        grid = samplers.timestep_grid(T, num_steps)
        assert grid.dtype == np.int32 and len(grid) == num_steps + 1, num_steps
        assert grid[0] == 0 and grid[-1] == T and np.all(np.diff(grid) > 0), num_steps
        before = quadratic_grid_with_duplicates_removed(T, num_steps)
        if len(before) == num_steps + 1:
            np.testing.assert_array_equal(grid, before)
            unchanged += 1
    assert unchanged >= 3   # the comparison above ran (S = 1, 2, ... have no repeats)
    assert len(quadratic_grid_with_duplicates_removed(1000, 100)) == 99   # took 98 steps
    assert len(samplers.step_pairs(1000, 100)) == 100
