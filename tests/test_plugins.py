"""Experiment plugins: a module named in analysis.plugins registers an experiment that
--mode=analyze runs like a built-in one (tests/toy_experiment.py); an unknown module or
experiment is one clear error; each experiment's settings are config.analysis.<key>."""
import json

import pytest

from configs import digits
from diffgen import data
from diffgen.analysis.experiment import EXPERIMENTS
from diffgen.errors import ConfigError
from diffgen.training.loop import train_and_evaluate
from diffgen.validation import validate
from tests.test_main import assert_one_line_error
from tests.tiny import override_flags, run_main, tiny_digits_config

# behaviour, not numbers (runs compared bit for bit are computed alike): XLA's
# optimisations off, here and in the diffgen.main runs started (tests/conftest.py)
pytestmark = pytest.mark.usefixtures('unoptimized_module')

PLUGIN = "--config.analysis.plugins=('tests.toy_experiment',)"


@pytest.fixture(scope='module')
def trained(digits_data_dir, tmp_path_factory):
    """(config, data dir, workdir) of a tiny digits model trained 8 steps."""
    root = tmp_path_factory.mktemp('plugins')
    config = tiny_digits_config(digits_data_dir)
    train_and_evaluate(config, root / 'work')
    return config, digits_data_dir, root / 'work'


def test_a_plugin_experiment_is_analysed_into_the_report(trained):
    config, data_dir, workdir = trained
    result = run_main('--config=configs/digits.py', f'--workdir={workdir}', '--mode=analyze',
                      *override_flags(data_dir, **{'analysis.num_samples': 8}), PLUGIN,
                      "--config.analysis.experiments=('toy',)")
    assert result.returncode == 0, result.stderr[-3000:]
    report_md = (workdir / 'report' / 'report.md').read_text()
    numbers = json.loads((workdir / 'report' / 'report.json').read_text())
    dataset = data.load(config)
    assert '## Toy: the sizes the report works with' in report_md
    assert f'| training images N | {len(dataset.train_images)} |' in report_md
    assert numbers['toy']['num_train'] == len(dataset.train_images) == 1797 - 16
    assert numbers['toy']['num_samples'] == 8
    assert numbers['toy']['train_mean'] == pytest.approx(float(dataset.train.mean()), rel=1e-6)
    assert set(numbers) == {'toy'}   # only the listed experiment ran


def test_an_unknown_plugin_module_is_one_line(digits_data_dir, tmp_path):
    result = run_main('--config=configs/digits.py', f'--workdir={tmp_path / "work"}',
                      '--mode=analyze', *override_flags(digits_data_dir),
                      "--config.analysis.plugins=('tests.no_such_plugin',)")
    assert_one_line_error(result, 'analysis.plugins', 'tests.no_such_plugin')
    assert not (tmp_path / 'work').exists()


def test_an_unregistered_experiment_names_the_known_ones():
    config = digits.get_config()
    config.analysis.experiments = ('e1', 'e9')
    with pytest.raises(ConfigError, match="'e9' is not one of .*'e1', 'e2'"):
        validate(config)


def test_settings_are_the_experiments_own_section():
    config = digits.get_config('smoke')
    assert EXPERIMENTS['e4'].settings(config).switch_fractions == (0.0, 0.01, 0.05, 0.2, 1.0)
    assert EXPERIMENTS['e7'].settings(config) is config.analysis.e7
    assert EXPERIMENTS['e1'].settings(config).to_dict() == {}   # E1 has no settings
