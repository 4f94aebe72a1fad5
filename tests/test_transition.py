"""diffgen.analysis.transition: Wilson intervals against scipy, the EMM bracket, and the
figures from a sweep's eval.csv files."""
import os

import numpy as np
import pytest
from scipy import stats

from diffgen.analysis import transition
from diffgen.training.csv_log import CsvLog


@pytest.mark.parametrize('k,n', [(0, 100), (3, 20), (50, 100), (99, 100), (100, 100), (1, 1)])
def test_wilson_interval_is_the_closed_form(k, n):
    """centre = (p + z²/2n)/(1 + z²/n), half-width = z √(p(1−p)/n + z²/4n²)/(1 + z²/n)."""
    z, p = stats.norm.ppf(0.975), k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    np.testing.assert_allclose(transition.wilson_interval(k, n),
                               (max(0.0, centre - half), min(1.0, centre + half)),
                               rtol=1e-9, atol=1e-12)


def test_curves_of_evaluators_with_different_periods(tmp_path):
    """An evaluator that did not run at a step leaves its cell empty: its curve has only
    the steps where it ran."""
    log = CsvLog(str(tmp_path / 'num_train_16' / 'eval.csv'), resume_step=0)
    for step in (500, 1000, 1500, 2000):
        row = {'ddim/memorisation_ratio': step / 2000, 'loss/gap': 0.1}
        if step % 1000 == 0:
            row['ddpm/memorisation_ratio'] = step / 1000 / 2
        log.append(step, row)
    curves = transition.read_curves(str(tmp_path), [('num_train_16', 16)])
    np.testing.assert_array_equal(curves[16]['ddim'][0], [500, 1000, 1500, 2000])
    np.testing.assert_array_equal(curves[16]['ddpm'][0], [1000, 2000])
    np.testing.assert_allclose(curves[16]['ddpm'][1], [0.5, 1.0])


def test_emm_bracket():
    sizes = [16, 32, 64, 128]
    ratios = [1.0, 0.93, 0.91, 0.2]
    lows = [0.96, 0.88, 0.85, 0.13]
    highs = [1.0, 0.97, 0.95, 0.29]
    assert transition.emm(sizes, ratios, lows, highs) == {'emm': 64, 'low': 16, 'high': 64}
    assert transition.emm(sizes, [0.1] * 4, [0.0] * 4, [0.2] * 4) == {
        'emm': None, 'low': None, 'high': None}


def test_summary_from_eval_csv(tmp_path):
    runs = [('num_train_16', 16), ('num_train_64', 64), ('num_train_256', 256)]
    finals = {16: 1.0, 64: 0.95, 256: 0.0}
    for name, n in runs[:2] + runs[2:]:
        log = CsvLog(str(tmp_path / name / 'eval.csv'), resume_step=0)
        for step in (1000, 2000):
            log.append(step, {'ddpm/memorisation_ratio': finals[n] * step / 2000,
                              'ddim/memorisation_ratio': 0.0})
    points = transition.summarise(str(tmp_path), runs, num_samples=100)
    assert points['ddpm']['num_train'] == [16, 64, 256]
    assert points['ddpm']['ratio'] == [1.0, 0.95, 0.0]
    assert points['ddpm']['emm']['emm'] == 64 and points['ddim']['emm']['emm'] is None
    low, high = transition.wilson_interval(95, 100)
    assert points['ddpm']['low'][1] == pytest.approx(low)
    for name in ('transition_ratio.png', 'transition_curves.png'):
        assert os.path.getsize(tmp_path / name) > 0
    assert transition.summarise(str(tmp_path / 'empty'), runs, 100) is None
