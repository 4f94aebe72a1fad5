"""E8 on tiny digits (an untrained network suffices for the identities): the section's r²
are those of its samples, the calibration picks the P of least error, the LS machine whose
patch covers the image samples exactly as ε* does, and a bad patch size is a ConfigError."""
import numpy as np
import pytest

from diffgen import data
from diffgen.analysis import theories
from diffgen.analysis.context import make_context
from diffgen.analysis.experiment import EXPERIMENTS
from diffgen.analysis.experiments import e8_theories as e8
from diffgen.errors import ConfigError
from diffgen.training.loop import build
from tests.tiny import tiny_digits_config

COVERS = 15   # 2·8 − 1: a patch this size covers the whole 8×8 image from every pixel


@pytest.fixture(scope='module')
def ctx(digits_data_dir, tmp_path_factory):
    config = tiny_digits_config(digits_data_dir, **{
        'diffusion.num_timesteps': 100, 'data.num_train': 48, 'data.num_heldout': 16,
        'analysis.num_samples': 16, 'analysis.batch_size': 16, 'analysis.sampler_steps': 5,
        'analysis.e8.sampler_steps': 5, 'analysis.e8.patch_sizes': (3, COVERS),
        'analysis.e8.calibration_times': 2, 'analysis.e8.calibration_images': 8,
        'analysis.e8.references': ('optimum', 'gaussian', 'els')})
    return make_context(config, str(tmp_path_factory.mktemp('work')),
                        build(config, data.load(config)))


def test_section_reports_the_r2_of_its_samples(ctx):
    section = EXPERIMENTS['e8'].run(ctx)
    numbers = section.numbers
    samples = numbers['_samples']
    assert numbers['references'] == ['optimum', 'gaussian', 'els']
    for name in numbers['references']:
        r2 = theories.r_squared(samples['network'], samples[name])
        np.testing.assert_array_equal(numbers['_r2'][name], r2)
        assert numbers['r2'][name]['median'] == pytest.approx(np.median(r2))
        assert numbers[f'x0_gap_{name}'].shape == numbers['t'].shape
    for name in ('els',):
        c = numbers[f'calibration_{name}']
        assert list(c['patch_size']) == [c['candidates'][j] for j in np.argmin(c['error'], 1)]
        assert f'Calibrated {name.upper()} patch size P(t)' in section.markdown
    best = numbers['best']
    assert numbers['r2'][best]['median'] == max(s['median'] for s in numbers['r2'].values())
    assert theories.LABELS[best] in section.summary
    assert all(f.endswith('.png') for f in section.figures)


def test_ls_covering_the_image_samples_as_the_optimum(ctx):
    table = np.full(ctx.schedule.num_timesteps + 1, COVERS, np.int32)
    ls = ctx.sample(theories.denoiser(ctx, 'ls', table), 'ddim', num_steps=5, key=e8._SAMPLE_KEY)
    opt = ctx.sample(ctx.optimum(), 'ddim', num_steps=5, key=e8._SAMPLE_KEY)
    # the same weights computed by two float32 reductions: round-off of a few 1e-6
    np.testing.assert_allclose(ls, opt, atol=1e-4)


def test_bad_patch_sizes_are_config_errors(ctx):
    config = ctx.config.copy_and_resolve_references()
    config.analysis.e8.patch_sizes = (4,)
    with pytest.raises(ConfigError, match='odd'):
        EXPERIMENTS['e8'].check(config)
    config.analysis.e8.patch_sizes = (17,)
    EXPERIMENTS['e8'].check(config)           # the image's size is known only to measure
    with pytest.raises(ConfigError, match='larger than 15'):
        e8.measure(ctx, config.analysis.e8)
