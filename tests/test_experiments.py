"""The report's experiments E1-E4 on tiny digits (an untrained network suffices for the
identities): the optimum copies, E4's ends are E1's and E2's samples (E3: tests/test_e3_gap.py),
and the hybrid denoiser selects per t and compiles once; the report's text
states its numbers, its tables come from one helper, and report.json leaves figure data out."""
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from diffgen import data
from diffgen.analysis.context import make_context
from diffgen.analysis import report
from diffgen.diffusion import samplers
from diffgen.diffusion.denoisers import hybrid_denoiser
from diffgen.analysis.experiments import e1_optimum_copies as e1
from diffgen.analysis.experiments import e4_hybrid as e4
from diffgen.analysis.experiments import e6_emm as e6
from diffgen.analysis.experiment import EXPERIMENTS
from diffgen.training.loop import build
from tests.tiny import tiny_digits_config


@pytest.fixture(scope='module')
def ctx(digits_data_dir, tmp_path_factory):
    config = tiny_digits_config(digits_data_dir, **{
        'diffusion.num_timesteps': 100, 'data.num_heldout': 64, 'analysis.num_samples': 64,
        'analysis.batch_size': 64,
        'analysis.sampler_steps': 10, 'analysis.quality.classifier_steps': 20,
        'analysis.e4.switch_fractions': (0.5,)})
    dataset = data.load(config)
    return make_context(config, str(tmp_path_factory.mktemp('work')), build(config, dataset))


@pytest.fixture(scope='module')
def sections(ctx):
    return {k: EXPERIMENTS[k].run(ctx) for k in ('e1', 'e2', 'e4')}


def test_e1_optimum_copies_with_deterministic_samplers(ctx, sections):
    numbers = sections['e1'].numbers
    for method in ('ddim', 'heun'):
        assert numbers[method]['memorisation_ratio'] >= 0.99
    for name in sections['e1'].figures:
        assert os.path.getsize(ctx.figure_path(name)) > 0


def test_e4_ends_are_e1_and_e2(sections):
    """t_switch = 0 with ε* first and t_switch = T with ε_θ first are ε* alone (E1); the
    other two ends are the network alone (E2): the same samples up to float round-off."""
    one, two, four = (sections[k].numbers for k in ('e1', 'e2', 'e4'))
    assert four['t_switch'] == [0, 50, 100]
    assert four['ends_max_abs_diff']['optimum'] <= 1e-5
    assert four['ends_max_abs_diff']['network'] <= 1e-5
    for order, index, expected in (('optimum_first', 0, one), ('network_first', -1, one),
                                   ('optimum_first', -1, two), ('network_first', 0, two)):
        for key in ('memorisation_ratio', 'exact_copy_rate', 'median_d1', 'fd'):
            assert four[order][key][index] == pytest.approx(expected['ddim'][key], rel=1e-5,
                                                            abs=1e-6)
    # the Gaussian arm at t_switch = 0 is ε* alone too; its text compares it with the network
    arm = four[e4.GAUSSIAN_ARM]
    assert arm['memorisation_ratio'][0] == pytest.approx(one['ddim']['memorisation_ratio'])
    assert e4.gaussian_text(four['t_switch'], four, 64) in sections['e4'].summary


def test_e2_reports_novelty(sections):
    novelty = sections['e2'].numbers['ddim']['novelty']
    assert 0.0 <= novelty['closer_to_train'] <= 1.0 and novelty['d1_heldout'] > 0


def test_markdown_table_and_number():
    assert report.markdown_table(['', 'a', 'b'], [['x', 1, '0.500'], ['y', '–', 2]]) == (
        '|  | a | b |\n| --- | ---: | ---: |\n| x | 1 | 0.500 |\n| y | – | 2 |')
    assert [report.number(v) for v in (0.12345, None, float('nan'), 'inf', -np.inf)] == [
        '0.123', '–', '–', '∞', '−∞']
    assert report.number(np.float32(2.5), '.2f') == '2.50'


def test_text_states_the_numbers_and_report_json_leaves_figure_data_out(ctx, sections):
    """The sentences give the measured values (no fixed conclusion), and report.json holds
    every reported number but none of the '_' figure data (samples, distances)."""
    one, four = sections['e1'], sections['e4']
    for method in e1.METHODS:
        ratio = one.numbers[method]['memorisation_ratio']
        assert f'{method} {ratio:.1%}' in one.markdown
        assert f'{method} {sections["e2"].numbers[method]["memorisation_ratio"]:.1%}' in (
            sections['e2'].markdown)
    ratios = four.numbers['optimum_first']['memorisation_ratio']
    below = [t for t, r in zip(four.numbers['t_switch'], ratios) if r < 0.5]
    assert (f'memorisation ratio below 0.5 is {below[0]} ' if below else
            'memorisation ratio below 0.5: none') in four.markdown
    path = report.write_report(list(sections.values()), ctx.report_dir, 'test')
    with open(path) as f:
        stored = json.load(f)
    assert set(stored['e1']) == {'ddim', 'heun', 'ddpm', 'real_training_images', 'calibration'}
    assert stored['e1']['calibration']['threshold'] > 0
    assert stored['e1']['ddim'] == pytest.approx(one.numbers['ddim'])
    assert stored['e4']['t_switch'] == four.numbers['t_switch']
    for section in sections.values():
        assert '| --- |' in section.markdown   # every table through report.markdown_table
        assert all(name.endswith('.png') and os.path.exists(ctx.figure_path(name))
                   for name in section.figures)


def test_e6_reports_its_point_and_a_sweep(ctx, tmp_path):
    """E6's own memorisation ratio with its binomial standard error; with a sweep dir, the
    ratio against N from its results.csv, the EMM, the table and the plot."""
    (tmp_path / e6.RESULTS).write_text('run,e6.num_train,e6.memorisation_ratio\n'
                                       'a,16,0.95\nb,64,0.5\nc,32,0.92\n')
    cfg = ml_collections.ConfigDict({'sweep_dir': str(tmp_path), 'threshold': 0.9})
    numbers = e6.measure(ctx, cfg)
    p, n = numbers['memorisation_ratio'], numbers['num_samples']
    assert n == len(ctx.x_T) and numbers['num_train'] == ctx.train_rows.num_rows
    assert numbers['memorisation_ratio_se'] == pytest.approx(np.sqrt(p * (1 - p) / n))
    # the N-independent criterion on the same samples, recomputed here: d_1 < δ in float64
    samples = numbers['_samples']
    assert samples.shape == ctx.x_T.shape
    train = np.asarray(ctx.dataset.train, np.float64).reshape(ctx.dataset.train.shape[0], -1)
    x = np.asarray(samples, np.float64).reshape(len(samples), -1)
    d1 = np.sqrt(((x[:, None] - train[None]) ** 2).mean(-1)).min(1)
    delta = numbers['calibration']['threshold']
    assert delta == ctx.copy_threshold()
    assert numbers['near_copy_rate'] == pytest.approx(np.mean(d1 < delta), abs=1.5 / n)
    assert set(numbers['calibration']) >= {'heldout', 'num_copies', *(
        f'noisy_{s:g}' for s in ctx.config.analysis.copy_noise_levels)}
    sweep = numbers['sweep']
    assert sweep['num_train'].tolist() == [16, 32, 64] and sweep['emm'] == 32
    section = e6.render(numbers, ctx)
    assert '| 32 | 0.920 |' in section.markdown and 'ratio ≥ 0.9): 32.' in section.markdown
    assert f'd₁ < δ: {numbers["near_copy_rate"]:.3f}' in section.markdown
    assert '| held-out images (new draws of the source) |' in section.markdown
    assert section.figures == [e6.FIGURE] and os.path.exists(ctx.figure_path(e6.FIGURE))


def _constant(value, x, t):
    return jnp.full(x.shape, value, jnp.float32)


def test_hybrid_denoiser_selects_per_t_and_compiles_once(ctx):
    high = jax.tree_util.Partial(_constant, jnp.float32(1.0))
    low = jax.tree_util.Partial(_constant, jnp.float32(-1.0))
    x = jnp.zeros((4, 2))
    out = hybrid_denoiser(high, low, 50)(x, jnp.array([1, 50, 51, 100]))
    np.testing.assert_array_equal(out[:, 0], [-1, -1, 1, 1])
    np.testing.assert_array_equal(hybrid_denoiser(high, low, 0)(x, jnp.full(4, 1)), 1)
    np.testing.assert_array_equal(hybrid_denoiser(high, low, 100)(x, jnp.full(4, 100)), -1)
    x_T = jnp.zeros((4, 8, 8, 1))
    samplers.sample(hybrid_denoiser(high, low, 10), x_T, ctx.schedule, 'ddim', num_steps=7)
    compiled = samplers._sample._cache_size()
    for t_switch in (0, 30, 100):
        samplers.sample(hybrid_denoiser(high, low, t_switch), x_T, ctx.schedule, 'ddim',
                        num_steps=7)
    assert samplers._sample._cache_size() == compiled
