"""E6's sweep numbers from results.csv rows (diffgen/analysis/experiments/e6_emm.py): the
rows of each N pooled over seeds as diffgen.analysis.transition pools them, the logistic
crossing, older rows (no seed, no num_samples), and the section's table and sentences."""
import os
import types

import numpy as np
import pytest

from diffgen.analysis import transition
from diffgen.analysis.experiments import e6_emm as e6


def rows_of(points, n=50):
    """results.csv rows (strings) of (N, seed, ratio) points, as launch.sweep writes them."""
    return [{'run': f'num_train_{size}_seed_{seed}', 'seed': str(seed),
             'e6.num_train': str(size), 'e6.memorisation_ratio': repr(ratio),
             'e6.num_samples': str(n), 'e6.provenance.step': '600'}
            for size, seed, ratio in points]


POINTS = [(16, 0, 1.0), (16, 1, 0.98), (16, 2, 1.0), (64, 0, 0.94), (64, 1, 0.7),
          (64, 2, 0.86), (256, 0, 0.2), (256, 1, 0.3), (256, 2, 0.1)]


def test_rows_of_several_seeds_are_pooled_per_n():
    summary = e6.sweep_summary(rows_of(POINTS), 0.9, num_boot=500)
    assert summary['num_train'].tolist() == [16, 64, 256] and summary['num_samples'] == 50
    np.testing.assert_allclose(summary['memorisation_ratio'], [2.98 / 3, 2.5 / 3, 0.2])
    assert summary['emm'] == 16                        # pooled 64: 0.833 < 0.9
    pooled = summary['pooled']
    assert pooled['seeds'] == [[0, 1, 2]] * 3 and pooled['final_step'] == [[600] * 3] * 3
    assert pooled['seed_rates'][1] == [0.94, 0.7, 0.86] and 'curves' not in pooled
    # the same numbers as transition's pooling and crossing of those counts
    k = [round(r * 50) for _, _, r in POINTS]
    assert pooled['crossing'] == transition.crossing([p[0] for p in POINTS], k, 50, 0.9, 500)
    assert pooled['low'][1] == transition.pooled_rate(k[3:6], 50, 500)['low']
    assert 16 < pooled['crossing']['n_star'] < 256


def test_older_rows_are_one_model_each_and_without_num_samples_have_no_interval(tmp_path):
    rows = [{'run': 'b', 'e6.num_train': '64', 'e6.memorisation_ratio': '0.25'},
            {'run': 'a', 'e6.num_train': '16', 'e6.memorisation_ratio': '0.95'},
            {'run': 'c', 'e6.num_train': '64', 'e6.memorisation_ratio': '0.75'},
            {'run': 'failed', 'e6.num_train': '', 'e6.memorisation_ratio': ''}]
    num_train, ratios = e6.sweep_points(rows)
    assert num_train.tolist() == [16, 64] and ratios.tolist() == [0.95, 0.5]
    summary = e6.sweep_summary(rows, 0.9)
    assert summary['pooled'] is None and 'e6.num_samples' in summary['note']
    with_n = [{**r, 'e6.num_samples': '20'} for r in rows[:3]]
    pooled = e6.sweep_summary(with_n, 0.9, num_boot=200)['pooled']
    assert pooled['seeds'] == [[1], [0, 2]] and pooled['num_seeds'] == [1, 2]   # row numbers
    assert pooled['interval_over'] == ['samples', 'models and samples']
    assert e6.write_sweep_summary(str(tmp_path), rows, 0.9)[2] == 16
    assert os.path.getsize(tmp_path / e6.FIGURE) > 0
    assert e6.sweep_summary(rows[3:], 0.9) is None


def test_the_section_gives_the_pooled_table_and_the_crossing(tmp_path):
    summary = e6.sweep_summary(rows_of(POINTS), 0.9, num_boot=200)
    numbers = {'num_train': 64, 'memorisation_ratio': 0.86, 'memorisation_ratio_se': 0.05,
               'exact_copy_rate': 0.0, 'num_samples': 50, 'threshold': 0.9,
               'sweep': {'sweep_dir': 'D', **summary}}
    ctx = types.SimpleNamespace(
        config=types.SimpleNamespace(analysis=types.SimpleNamespace(
            e6=types.SimpleNamespace(sweep_dir='D'))),
        figure_path=lambda name: str(tmp_path / name))
    section = e6.render(numbers, ctx)
    low, high = summary['pooled']['low'][1], summary['pooled']['high'][1]
    assert (f'| 64 | 0.833 | [{low:.3f}, {high:.3f}] over models and samples | 3 | '
            '0.94, 0.70, 0.86 |') in section.markdown
    assert 'largest N with ratio ≥ 0.9): 16.' in section.markdown
    assert transition.crossing_text(summary['pooled']['crossing']) in section.markdown
    assert os.path.getsize(tmp_path / e6.FIGURE) > 0


@pytest.mark.parametrize('ratio,flag', [(0.0, '< smallest N'), (1.0, '> largest N')])
def test_a_sweep_that_never_or_always_memorises_gives_a_flag(ratio, flag):
    points = [(size, seed, ratio) for size in (16, 64, 256) for seed in (0, 1)]
    crossing = e6.sweep_summary(rows_of(points), 0.9, num_boot=100)['pooled']['crossing']
    assert crossing['n_star'] is None and crossing['position']['n_star'] == flag
