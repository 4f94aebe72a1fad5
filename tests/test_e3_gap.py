"""E3's measures (diffgen.analysis.experiments.e3_gap, docs/math.md §8): the x₀-space gap is
exactly 0 for ε* itself and, for a network that outputs 0, the closed form
E‖clip(x/a_t) − x̂₀*‖²/D computed here in float64; it stays below (hi − lo)² for any network;
the ε-space ratio of a zero network is 1 at every t (why it is shown only where
E‖ε*‖²/D is small); the trajectory is the DDIM sampler's; the section's text and table."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffgen import data
from diffgen.analysis.context import make_context
from diffgen.analysis.experiment import EXPERIMENTS
from diffgen.analysis.experiments import e3_gap as e3
from diffgen.diffusion import samplers
from diffgen.diffusion.schedules import make_schedule, schedule_arrays
from diffgen.optimum import chunked
from diffgen.optimum.optimal import optimal_denoiser
from diffgen.training.loop import build
from tests.tiny import tiny_digits_config

T = 100
TS = jnp.asarray([100, 60, 20, 5, 1], jnp.int32)


def _zero(x, t):
    return jnp.zeros_like(x)


def _huge(x, t):
    return -1e3 * x


@pytest.fixture(scope='module')
def points():
    """A training set (12 images 4x4x1 in [-1, 1] at uint8 levels), 6 of its images and
    6 others (off the training set), one noise draw, its rows and the schedule."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(18, 4, 4, 1)).astype(np.float32) / 127.5 - 1.0
    train, other = images[:12], images[12:]
    noise = rng.standard_normal((12, 4, 4, 1)).astype(np.float32)
    y = np.concatenate([train[:6], other])
    rows = chunked.prepare_rows(train, 8, np.float32)
    return train, y, noise, rows, make_schedule('linear', T)


def terms(network, points):
    train, y, noise, rows, schedule = points
    data_range = (jnp.float32(train.min()), jnp.float32(train.max()))
    out = e3.forward_gap(jax.tree_util.Partial(network) if callable(network) else network,
                         rows, schedule, y, noise, TS, data_range)
    return e3.summarise(out, np.prod(train.shape[1:])), out


def test_x0_gap_of_the_optimum_is_exactly_zero(points):
    train, _, _, rows, schedule = points
    summary, out = terms(optimal_denoiser(rows, schedule), points)
    assert np.all(np.asarray(out[e3.TERMS.index('sq_x0')]) == 0.0)
    assert np.all(summary['x0_gap'] == 0.0)
    np.testing.assert_allclose(summary['cosine'], 1.0, atol=1e-5)
    assert np.all(summary['gap'] < 1e-12)   # ε*'s two evaluations differ by float32 round-off


def test_x0_gap_of_a_zero_network_is_the_closed_form_in_float64(points):
    train, y, noise, _, _ = points
    summary, _ = terms(_zero, points)
    arrays = schedule_arrays('linear', T)
    lo, hi = train.min(), train.max()
    flat_train = train.reshape(len(train), -1).astype(np.float64)
    for i, t in enumerate(np.asarray(TS)):
        a, sigma2 = arrays['a'][t], arrays['sigma2'][t]
        x = (a * y + np.sqrt(sigma2) * noise.astype(np.float64)).reshape(len(y), -1)
        logits = -((x[:, None] - a * flat_train[None]) ** 2).sum(-1) / (2 * sigma2)
        w = np.exp(logits - logits.max(1, keepdims=True))
        x0_star = (w / w.sum(1, keepdims=True)) @ flat_train
        closed_form = np.mean(np.sum((np.clip(x / a, lo, hi) - x0_star) ** 2, 1)) / x.shape[1]
        assert summary['x0_gap'][i] == pytest.approx(closed_form, rel=1e-4), t
    # the ε-space ratio of the zero network: exactly 1 at every t, whatever the points
    np.testing.assert_allclose(summary['gap'], 1.0, rtol=1e-12)
    assert np.all(np.isnan(summary['cosine']))        # cos(0, ε*) is undefined


def test_x0_gap_is_bounded_by_the_data_range(points):
    train = points[0]
    summary, _ = terms(_huge, points)
    bound = (train.max() - train.min()) ** 2
    assert np.all(summary['x0_gap'] <= bound) and summary['x0_gap'].max() > 0.1 * bound
    # unclipped, this network's x̂₀ is far outside the data range at large t
    assert summary['gap'][0] > 1e4


def test_eps_norm_off_the_training_set_is_large_at_small_t(points):
    """At t = 1, ‖ε*‖²/D ≈ 1 + (a_t d₁/σ_t)² on the 6 points off the training set: far above
    INFORMATIVE, so the ε-ratio there says nothing; at t = T it is ≈ 1."""
    _, out = terms(_zero, points)
    per_point = np.asarray(out[e3.TERMS.index('sq_opt')]) / 16
    assert np.all(per_point[-1, 6:] > 100 * e3.INFORMATIVE)
    assert np.all(per_point[-1, :6] < e3.INFORMATIVE)   # training points: ε* = ε
    assert np.all(per_point[0] < e3.INFORMATIVE)


@pytest.fixture(scope='module')
def ctx(digits_data_dir, tmp_path_factory):
    config = tiny_digits_config(digits_data_dir, **{
        'diffusion.num_timesteps': 100, 'data.num_heldout': 32, 'analysis.num_samples': 32,
        'analysis.batch_size': 32, 'analysis.sampler_steps': 10})
    return make_context(config, str(tmp_path_factory.mktemp('work')),
                        build(config, data.load(config)))


def test_trajectory_is_the_ddim_sampler_and_the_optimum_has_no_gap(ctx):
    pairs = samplers.step_pairs(100, 10)
    x_T = jnp.asarray(ctx.x_T[:16])
    data_range = (jnp.float32(-1.0), jnp.float32(1.0))
    x0, (*point, entropy, max_weight) = e3.trajectory_gap(
        ctx.network(), ctx.train_rows, ctx.schedule, x_T, pairs, data_range)
    expected = samplers.sample(ctx.network(), x_T, ctx.schedule, 'ddim', num_steps=10)
    np.testing.assert_allclose(x0, expected, atol=1e-4)
    assert len(point) == len(e3.TERMS) and all(p.shape == (len(pairs), 16) for p in point)
    log_n = np.log(ctx.train_rows.num_rows)
    assert np.all((np.asarray(entropy) >= -1e-4) & (np.asarray(entropy) <= log_n + 1e-4))
    assert np.all((np.asarray(max_weight) > 0) & (np.asarray(max_weight) <= 1 + 1e-6))
    _, (*point, _, _) = e3.trajectory_gap(ctx.optimum(), ctx.train_rows, ctx.schedule, x_T,
                                          pairs, data_range)
    summary = e3.summarise(point, 64)
    assert np.all(summary['x0_gap'] == 0.0) and np.all(summary['gap'] < 1e-10)


def test_section_states_its_numbers(ctx):
    section = EXPERIMENTS['e3'].run(ctx)
    numbers, t = section.numbers, section.numbers['t']
    for s in e3.SETS:
        for key in ('x0_gap', 'cosine', 'gap', 'eps_opt_sq'):
            assert numbers[f'{key}_{s}'].shape == t.shape
        assert np.all((numbers[f'x0_gap_{s}'] >= 0)
                      & (numbers[f'x0_gap_{s}'] <= numbers['x0_gap_bound']))
    assert numbers['data_range'] == [-1.0, 1.0] and numbers['x0_gap_bound'] == 4.0
    x0_gap = numbers['x0_gap_trajectory'][-1]
    assert f'At t = {t[-1]} the x₀-gap is ' in section.markdown
    assert f'{x0_gap:.3g} (trajectory)' in section.markdown
    held_out = e3._informative(numbers, 'heldout')
    assert f'on held-out points {e3._where(t, held_out)}' in section.markdown
    rows = [r for r in section.markdown.splitlines() if r.startswith(f'| {t[-1]} |')]
    # columns: t, x₀-gap per set, baselines' x₀-gap per set, cos per set, ε-ratio per set
    ratio_cell = rows[0].split(' | ')[1 + 3 * len(e3.SETS) + 1]    # ε-ratio, held-out
    assert (ratio_cell == '–') == (not held_out[-1])
    # the baselines: the identity denoiser outputs 0, so its x₀-gap on the forward points is
    # the zero network's; the informative range is where the network's gap is more than
    # BASELINE_FACTOR from the nearer baseline's, recomputed here in float64
    assert numbers['baselines'] == ['identity', 'gaussian']
    y = ctx.dataset.train[:32]
    noise = np.asarray(jax.random.normal(jax.random.fold_in(ctx.rng, e3._NOISE_KEY),
                                         (32,) + ctx.dataset.image_shape))
    zero = jax.tree_util.Partial(lambda x, t: jnp.zeros_like(x))
    data_range = (jnp.float32(-1.0), jnp.float32(1.0))
    want = e3.summarise(e3.forward_gap(zero, ctx.train_rows, ctx.schedule, y, noise,
                                       jnp.asarray(t), data_range), 64)['x0_gap']
    np.testing.assert_allclose(numbers['x0_gap_train_identity'], want, rtol=1e-5, atol=1e-9)
    for s in e3.SETS:
        net = np.asarray(numbers[f'x0_gap_{s}'], np.float64)
        base = np.stack([numbers[f'x0_gap_{s}_{b}'] for b in ('identity', 'gaussian')])
        factor = np.exp(np.min(np.abs(np.log(net / base)), axis=0))
        np.testing.assert_array_equal(e3.informative(numbers, s), factor > e3.BASELINE_FACTOR)
        closer, farther = e3.closer_farther(numbers, s)
        np.testing.assert_array_equal(closer, net * e3.BASELINE_FACTOR < base.min(axis=0))
        np.testing.assert_array_equal(farther, net > e3.BASELINE_FACTOR * base.min(axis=0))
        assert f'{e3._where(t, closer)} and more than 2× farther {e3._where(t, farther)}' in (
            section.summary)
