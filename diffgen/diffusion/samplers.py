"""Samplers: pure functions of (denoiser, x_T, schedule, rng, steps), each one lax.scan in jit.

A denoiser is any callable `(x, t) -> eps_hat` with x of shape (B, ...) and integer t of
shape (B,) in 1..T: a network, the empirical optimum, a hybrid of the two. Pass it as a
`jax.tree_util.Partial` whose arrays (parameters, training set) are leaves, and the sampler
compiles once for all values of those arrays; a plain function is wrapped and its closure
becomes part of the program. Samplers know nothing of networks.

SAMPLERS maps config.sampling.method to the sampler; every sampler takes
`(denoiser, x_T, schedule, *, rng, num_steps, eta)` and returns x_0.

Notation (docs/math.md §1): a_t = sqrt(alphas_bar_t), sigma_t = sqrt(1 - alphas_bar_t).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from diffgen import parallel
from diffgen.diffusion import conversions
from diffgen.errors import ConfigError
from diffgen.registry import Registry

SAMPLERS = Registry('sampler')
HEUN_DEFAULT_STEPS = 50   # heun's num_steps when none is given (the others: all T steps)


def timestep_grid(num_timesteps, num_steps):
    """Exactly S = num_steps strided steps 0 = t_0 < t_1 < ... < t_S = T (numpy int32) with
    quadratic spacing (Song et al. 2021, used there for CIFAR-10):

        q_i = round(T (i/S)^2),   t_i = min(max_{j<=i} (q_j + i - j),  T - (S - i)),
    i.e. each t_i raised to at least t_{i-1} + 1 where rounding would repeat a step, and kept
    at most T - (S - i) so that S - i distinct steps still fit above it. Where the q_i are
    already distinct, t_i = q_i. Small t, where the data's fine detail is decided, get the
    short steps; with S = T it is every step."""
    if not 1 <= num_steps <= num_timesteps:
        raise ConfigError(f'sampler steps must be in 1..{num_timesteps}, got {num_steps}')
    i = np.arange(num_steps + 1)
    q = np.round(np.linspace(0.0, 1.0, num_steps + 1) ** 2 * num_timesteps).astype(np.int64)
    raised = np.maximum.accumulate(q - i) + i
    return np.minimum(raised, num_timesteps - (num_steps - i)).astype(np.int32)


def step_pairs(num_timesteps, num_steps):
    """The sampler's steps (t, t') in the order they run, t descending: (S, 2) int32, from
    (T, t_{S-1}) down to (t_1, 0), on timestep_grid(num_timesteps, num_steps)."""
    grid = timestep_grid(num_timesteps, num_steps)
    return jnp.stack([grid[1:][::-1], grid[:-1][::-1]], axis=1)


def ddim_step(x, eps, *, t, t_next, schedule, eta=0.0, z=None):
    """One DDIM step t -> t' (Song et al. 2021, eq. 12), docs/math.md §5:

        x0_hat = (x_t - sigma_t eps_hat) / a_t
        s^2 = eta^2 (sigma_{t'}^2 / sigma_t^2) (1 - alphas_bar_t / alphas_bar_{t'})
        x_{t'} = a_{t'} x0_hat + sqrt(sigma_{t'}^2 - s^2) eps_hat + s z,
    with 1 - alphas_bar_t / alphas_bar_{t'} = -expm1(log alphas_bar_t - log alphas_bar_{t'})
    (the quotient of float32 alphas_bar would lose ~u/(1 - ratio) relative precision).
    With eta = 0 (z unused) it is deterministic."""
    a, sigma, sigma2, log_ab = schedule.a, schedule.sigma, schedule.sigma2, schedule.log_alphas_bar
    x0 = conversions.x0_from_eps(x, eps=eps, a=a[t], sigma=sigma[t])
    if z is None:
        return conversions.diffuse(x0, eps=eps, a=a[t_next], sigma=sigma[t_next])
    s2 = eta ** 2 * (sigma2[t_next] / sigma2[t]) * -jnp.expm1(log_ab[t] - log_ab[t_next])
    dir_coef = jnp.sqrt(jnp.maximum(sigma2[t_next] - s2, 0.0))
    return conversions.diffuse(x0, eps=eps, a=a[t_next], sigma=dir_coef) + jnp.sqrt(s2) * z


def ddpm_step(x, eps, *, t, schedule, rng):
    """One ancestral step t -> t-1 (Ho et al. 2020, Algorithm 2, docs/math.md §5):
        x_{t-1} = (x_t - beta_t / sigma_t eps_hat) / sqrt(alpha_t) + sqrt(beta~_t) z,
    z ~ N(0, I) from fold_in(rng, t), z = 0 at t = 1."""
    mean = (x - schedule.betas[t] / schedule.sigma[t] * eps) / jnp.sqrt(schedule.alphas[t])
    z = jax.random.normal(jax.random.fold_in(rng, t), x.shape, x.dtype)
    return mean + jnp.where(t > 1, jnp.sqrt(schedule.posterior_variance[t]), 0.0) * z


def _eval(denoiser, x, t):
    return denoiser(x, jnp.full((x.shape[0],), t, jnp.int32))


@SAMPLERS.register('ddpm')
def ddpm(denoiser, x_T, schedule, *, rng, num_steps, eta):
    """Ancestral sampling (Ho et al. 2020, Algorithm 2) over all T steps, t = T..1:

        x_{t-1} = (x_t - beta_t / sigma_t eps_hat(x_t, t)) / sqrt(alpha_t) + sqrt(beta~_t) z,
        beta~_t = beta_t (1 - alphas_bar_{t-1}) / (1 - alphas_bar_t),  z ~ N(0, I), z = 0 at t = 1.
    num_steps is T (sampler_steps checks it) and eta is not used: the noise is beta~_t's.
    """
    del num_steps, eta

    def step(x, t):
        return ddpm_step(x, _eval(denoiser, x, t), t=t, schedule=schedule, rng=rng), None

    ts = jnp.arange(schedule.num_timesteps, 0, -1)
    return jax.lax.scan(step, x_T, ts)[0]


@SAMPLERS.register('ddim')
def ddim(denoiser, x_T, schedule, *, rng, num_steps, eta):
    """DDIM (Song et al. 2021, eq. 12) on the strided grid t_S = T > ... > t_0 = 0, each step
    ddim_step with z ~ N(0, I) from fold_in(rng, t):

        x_{t'} = a_{t'} x0_hat + sqrt(sigma_{t'}^2 - s^2) eps_hat + s z.
    eta = 0 is deterministic given x_T; eta = 1 with all T steps is DDPM with beta~.
    """
    def step(x, ts):
        t, t_next = ts
        eps = _eval(denoiser, x, t)
        z = jax.random.normal(jax.random.fold_in(rng, t), x.shape, x.dtype)
        return ddim_step(x, eps, t=t, t_next=t_next, schedule=schedule, eta=eta, z=z), None

    return jax.lax.scan(step, x_T, step_pairs(schedule.num_timesteps, num_steps))[0]


@SAMPLERS.register('heun')
def heun(denoiser, x_T, schedule, *, rng, num_steps, eta):
    """Second-order (Heun) solver of the probability-flow ODE (Karras et al. 2022, Alg. 1).

    In the scaled variables y = x / a_t and s_t = sigma_t / a_t the VP probability-flow ODE
    is dy/ds = eps_hat(a_t y, t). On the grid t -> t' (s -> s'):
        y_E = y + (s' - s) eps_hat(x_t, t)                       (Euler; = DDIM with eta = 0)
        y'  = y + (s' - s) (eps_hat(x_t, t) + eps_hat(a_{t'} y_E, t')) / 2   if t' > 0
    and the last step (t' = 0, s' = 0) is the Euler step. Deterministic: rng and eta are
    not used.
    """
    del rng, eta
    a, sigma = schedule.a, schedule.sigma
    s = sigma / a

    def step(y, ts):
        t, t_next = ts
        ds = s[t_next] - s[t]
        eps = _eval(denoiser, a[t] * y, t)
        y_euler = y + ds * eps

        def correct(_):
            eps_next = _eval(denoiser, a[t_next] * y_euler, t_next)
            return y + ds * 0.5 * (eps + eps_next)

        y_next = jax.lax.cond(t_next > 0, correct, lambda _: y_euler, None)
        return y_next, None

    pairs = step_pairs(schedule.num_timesteps, num_steps)
    y0 = jax.lax.scan(step, x_T / a[-1], pairs)[0]
    return y0  # a_0 = 1


METHODS = SAMPLERS.names()


def sampler_steps(method, num_steps, eta, *, num_timesteps):
    """The number of steps `method` runs for num_steps (None or 0: its default, T, or
    HEUN_DEFAULT_STEPS for heun), after checking the options as config.sampling holds them:
    a registered method, ddpm with all T steps only, 1 <= steps <= T, 0 <= eta <= 1.
    Raises ConfigError naming the sampling key that is wrong."""
    T = num_timesteps
    SAMPLERS.check('sampling.method', method)
    if method == 'ddpm' and num_steps not in (None, 0, T):
        raise ConfigError(f'sampling.num_steps={num_steps}: ddpm runs all T={T} steps; use '
                          f'ddim for fewer')
    if not 0.0 <= eta <= 1.0:
        raise ConfigError(f'sampling.eta must be in [0, 1], got {eta}')
    num_steps = int(num_steps or (HEUN_DEFAULT_STEPS if method == 'heun' else T))
    timestep_grid(T, num_steps)  # checks 1 <= num_steps <= T
    return num_steps


@functools.partial(jax.jit, static_argnames=('method', 'num_steps'))
def _sample(denoiser, x_T, schedule, *, rng, method, num_steps, eta):
    return SAMPLERS[method](denoiser, x_T, schedule, rng=rng, num_steps=num_steps, eta=eta)


def sample(denoiser, x_T, schedule, method='ddim', num_steps=None, eta=0.0, rng=None):
    """Runs a sampler from x_T and returns x_0 (one jitted lax.scan over the steps).

    method: 'ddpm' (all T steps; num_steps must be None or T), 'ddim' (num_steps strided
    steps, default T; eta in [0, 1]) or 'heun' (num_steps intervals, 2 num_steps - 1
    denoiser calls, default 50). rng is needed for 'ddpm' and for 'ddim' with eta > 0.
    """
    num_steps = sampler_steps(method, num_steps, eta, num_timesteps=schedule.num_timesteps)
    if rng is None:
        if method == 'ddpm' or (method == 'ddim' and eta > 0):
            raise ValueError(f'{method} with noise needs an rng key')
        rng = jax.random.key(0)
    if not isinstance(denoiser, jax.tree_util.Partial):
        denoiser = jax.tree_util.Partial(denoiser)
    return _sample(denoiser, x_T, schedule, rng=rng, method=method, num_steps=num_steps,
                   eta=jnp.float32(eta))


def initial_noise(rng, num, example_shape, *, batch_size):
    """x_T for sample i is drawn from fold_in(rng, batch index): the same x_T for the same
    (rng, num, batch_size), whatever the denoiser, so runs can be compared sample by sample."""
    out = []
    for b, start in enumerate(range(0, num, batch_size)):
        n = min(batch_size, num - start)
        out.append(jax.random.normal(jax.random.fold_in(rng, b), (n,) + tuple(example_shape)))
    return np.concatenate([np.asarray(x) for x in out])


def generate(denoiser, x_T, schedule, *, sampling_config, rng, mesh=None, batch_size=None):
    """Runs the configured sampler (config.sampling) on x_T in batches (sharded over the
    mesh's data axis) and returns the samples as a float32 NumPy array."""
    s = sampling_config
    mesh = mesh or parallel.get_mesh()
    devices = mesh.devices.size
    batch_size = min(batch_size or s.batch_size, x_T.shape[0])
    batch_size = -(-batch_size // devices) * devices  # every batch the same shape: one compile
    out = []
    for b, start in enumerate(range(0, x_T.shape[0], batch_size)):
        xb, n = parallel.pad_to_multiple(np.asarray(x_T[start:start + batch_size]), batch_size)
        xb = parallel.shard_batch(xb, mesh)
        x0 = sample(denoiser, xb, schedule, s.method, s.num_steps or None, s.eta,
                    rng=jax.random.fold_in(rng, b))
        out.append(parallel.to_host(x0)[:n])
    return np.concatenate(out)
