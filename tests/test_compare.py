"""--mode=compare: an L_eps model against a gap-objective model, and a model against itself
(every difference exactly 0, every cosine 1), with clear errors on bad workdirs.

The two trained runs (and the digits data and quality classifier they need) take minutes on
two shared CPU cores, so the tests that use them are marked slow."""
import json
import os

import numpy as np
import pytest

from diffgen.analysis import compare
from diffgen.errors import WorkdirError
from diffgen.training.loop import train_and_evaluate
from tests.tiny import override_flags, run_main, tiny_digits_config

SMALL = {'analysis.num_samples': 8, 'analysis.batch_size': 8, 'analysis.sampler_steps': 5,
         }


@pytest.fixture(scope='module')
def runs(digits_data_dir, tmp_path_factory):
    """(data dir, {name: (config, workdir)}) of an eps and a gap model trained 8 steps."""
    root = tmp_path_factory.mktemp('compare')
    data_dir = digits_data_dir
    out = {}
    for name, objective in (('eps', {}), ('gap', {'training.objective': 'gap',
                                                  'training.gap_max_k': 20,
                                                  'training.gap_weighting': 'xi'})):
        config = tiny_digits_config(data_dir, **SMALL, **objective)
        state = train_and_evaluate(config, root / name)
        assert int(state.step) == 8
        out[name] = (config, str(root / name))
    return data_dir, out


@pytest.mark.slow
def test_eps_against_gap_model(runs):
    _, runs = runs
    (config, workdir), (_, other) = runs['eps'], runs['gap']
    section = compare.compare(config, workdir, other)
    directory = os.path.join(workdir, 'report', 'compare')
    for name in ('report.json', 'report.md', 'compare_eps.png', 'compare_samples.png'):
        assert os.path.exists(os.path.join(directory, name)), name
    with open(os.path.join(directory, 'report.json')) as f:
        numbers = json.load(f)['compare']
    assert numbers['objectives'] == {'A': 'eps', 'B': 'gap, K=20, p_zero=0.0, weighting=xi'}
    assert numbers['gap_bank']['max_k'] == 20
    times = numbers['times']
    assert times[0] == 1 and times[-1] == config.diffusion.num_timesteps
    for curve in ('diff', 'gap_A', 'gap_B', 'bank'):
        assert len(numbers['eps'][curve]) == len(times)
        assert all(np.isfinite(v) and v >= 0 for v in numbers['eps'][curve])
    # t <= K: the gap bank is the training set, its ε̂ is ε* (up to float32 round-off)
    assert numbers['eps']['bank'][0] < 1e-6
    for name in compare.NAMES:
        memo = numbers['memorisation'][name]
        assert 0 <= memo['memorisation_ratio'] <= 1 and 0 <= memo['exact_copy_rate'] <= 1
        assert set(numbers['quality'][name]) == {'fd', 'precision', 'recall'}
    assert '| A vs B |' in section.markdown


@pytest.mark.slow
def test_a_model_against_itself(runs):
    _, runs = runs
    config, workdir = runs['gap']
    numbers = compare.compare(config, workdir, workdir).numbers
    assert np.all(np.asarray(numbers['eps']['diff']) == 0)
    np.testing.assert_array_equal(numbers['eps']['gap_A'], numbers['eps']['gap_B'])
    np.testing.assert_allclose(numbers['cosine']['A vs B']['mean'], 1.0, rtol=1e-12)
    assert numbers['memorisation']['A'] == numbers['memorisation']['B']


def test_bad_other_workdirs(digits_data_dir, tmp_path):
    """Checked before any model is restored."""
    config = tiny_digits_config(digits_data_dir)
    workdir = str(tmp_path / 'a')
    with pytest.raises(WorkdirError, match='needs --other_workdir'):
        compare.compare(config, workdir, None)
    with pytest.raises(WorkdirError, match='no config.json'):
        compare.compare(config, workdir, str(tmp_path))
    other = config.copy_and_resolve_references()
    other.diffusion.num_timesteps = 500
    with open(tmp_path / 'config.json', 'w') as f:
        json.dump(other.to_dict(), f, default=list)
    with pytest.raises(WorkdirError, match='another forward process'):
        compare.compare(config, workdir, str(tmp_path))


def test_compare_mode_without_other_workdir_is_one_line(digits_data_dir, tmp_path):
    result = run_main('--config=configs/digits.py', f'--workdir={tmp_path}', '--mode=compare',
                      *override_flags(digits_data_dir))
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith(
        'diffgen: error: --mode=compare needs --other_workdir')
