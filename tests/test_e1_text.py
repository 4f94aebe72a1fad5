"""E1's and E2's reference row and text (diffgen.analysis.experiments.e1_optimum_copies,
e2_model_novelty): the real images are scored at the sample count, and every sentence states
the numbers it rests on: the §4 prediction per deterministic sampler, the FD of each sampler
against the real images', and in E2 the optimum's memorisation ratios from E1 when the report
holds E1 of the same checkpoint."""
import numpy as np
import pytest

from diffgen import data
from diffgen.analysis import quality, report
from diffgen.analysis.context import make_context
from diffgen.analysis.experiments import e1_optimum_copies as e1
from diffgen.analysis.experiments import e2_model_novelty as e2
from diffgen.training.loop import build
from tests.tiny import tiny_digits_config


def rows(ratios, fds, real_fd, num_images):
    numbers = {m: {'memorisation_ratio': r, 'fd': f} for m, r, f in zip(e1.METHODS, ratios, fds)}
    numbers[e1.REAL] = {'fd': real_fd, 'num_images': num_images}
    return numbers


def test_prediction_text_states_where_the_prediction_fails():
    assert e1.prediction_text(rows((1.0, 1.0, 0.5), (1, 1, 1), 1, 8), 8) == (
        'The prediction holds for ddim and heun.')
    assert e1.prediction_text(rows((1.0, 0.75, 1.0), (1, 1, 1), 1, 8), 8) == (
        'The prediction holds for ddim; not for heun (2 of 8 samples not memorised).')
    assert e1.prediction_text(rows((0.5, 0.25, 1.0), (1, 1, 1), 1, 8), 8) == (
        'The prediction holds for neither; not for ddim (4 of 8 samples not memorised) and '
        'heun (6 of 8 samples not memorised).')


def test_quality_text_compares_each_fd_with_the_real_images():
    numbers = rows((1, 1, 1), (12.0, 9.0, 30.0), 6.0, 8)
    assert e1.quality_text(numbers, 8, 'ε*') == (
        "FD of ε*'s samples: ddim 12.00 (2.00× the real images'), heun 9.00 (1.50× the real "
        "images'), ddpm 30.00 (5.00× the real images'); of 8 real training images: 6.00. The "
        "lowest is heun's, +3.00 from the real images'.")
    assert 'of all 8 real training images (fewer than the 20 samples): 6.00' in (
        e1.quality_text(numbers, 20, 'ε*'))
    numbers[e1.REAL]['fd'] = float('nan')
    assert e1.quality_text(numbers, 8, 'ε*') == (
        'FD was not measured (no classifier for this data).')


@pytest.fixture(scope='module')
def ctx(digits_data_dir, tmp_path_factory):
    """8 samples, 16 held-out images: the reference row must use 8 training images."""
    config = tiny_digits_config(digits_data_dir, **{
        'diffusion.num_timesteps': 100, 'data.num_heldout': 16, 'analysis.num_samples': 8,
        'analysis.batch_size': 8, 'analysis.sampler_steps': 5,
        'analysis.quality.classifier_steps': 20})
    return make_context(config, str(tmp_path_factory.mktemp('work')),
                        build(config, data.load(config)))


def test_real_images_are_scored_at_the_sample_count(ctx):
    assert len(ctx.x_T) == 8 and len(quality.real_reference(ctx)) == 16
    real = ctx.real_quality()
    assert real['num_images'] == 8
    assert real['fd'] == pytest.approx(
        quality.quality_metrics(ctx.dataset.train[:8], ctx)['fd'], rel=1e-6)
    assert real['fd'] != pytest.approx(
        quality.quality_metrics(ctx.dataset.train[:16], ctx)['fd'], rel=1e-3)


def test_e2_sets_the_optimums_ratios_from_e1_of_the_same_checkpoint(ctx):
    ratios = {'ddim': 1.0, 'heun': 0.875, 'ddpm': 0.5}
    e1_numbers = {**{m: {'memorisation_ratio': r} for m, r in ratios.items()},
                  'provenance': ctx.provenance}
    section = report.Section('e1', e1.TITLE, 'text', e1_numbers)
    report.write_report([section], ctx.report_dir, 'test')
    numbers = e2.measure(ctx, None)
    assert numbers['e1_memorisation_ratio'] == ratios
    markdown = e2.render(numbers, ctx).markdown
    for m in e1.METHODS:
        assert (f'{m} {numbers[m]["memorisation_ratio"]:.1%} (d₁ < δ: '
                f'{numbers[m]["near_copy_rate"]:.1%}) (ε* in E1: {ratios[m]:.1%})' in markdown)
    assert f'of 8 real training images: {report.number(numbers[e1.REAL]["fd"], ".2f")}' in (
        markdown)

    other = dict(ctx.provenance, step=ctx.provenance['step'] + 1)  # E1 of another checkpoint
    report.write_report([report.Section('e1', e1.TITLE, 'text', {**e1_numbers,
                                                                 'provenance': other})],
                        ctx.report_dir, 'test')
    assert 'e1_memorisation_ratio' not in e2.measure(ctx, None)
    assert np.isfinite(numbers[e1.REAL]['fd'])
