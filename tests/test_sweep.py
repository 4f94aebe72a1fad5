"""launch/sweep.py: the sweep declared in configs/digits.py, run names and flags, and (slow) a
real two-run sweep. The runner itself (resuming, slots, results.csv and the EMM from finished
runs only, SIGTERM) is tested with a stand-in run in tests/test_sweep_runner.py."""
import csv
import os
import subprocess
import sys

import pytest

from configs import digits
from launch import sweep
from tests.tiny import REPO, TINY_OVERRIDES


def test_digits_sweep_declaration():
    runs = digits.get_sweep()
    assert [r['data.num_train'] for r in runs] == list(digits.SWEEP_NUM_TRAIN)
    assert all(r['analysis.experiments'] == ('e6', 'e8') for r in runs)
    assert [r['data.num_train'] for r in digits.get_sweep('16,64,256')] == [16, 64, 256]
    get_config, loaded = sweep.load_sweep('configs/digits.py:smoke', '8,9')
    assert loaded == digits.get_sweep('8,9') and get_config('smoke').training.num_steps == 600


def test_names_and_flags():
    overrides = {'data.num_train': 64, 'analysis.experiments': ('e6',)}
    assert sweep.run_name(overrides) == 'num_train_64'
    assert sweep.main_args('configs/digits.py:smoke', 'D/num_train_64', 'all', overrides,
                           ['training.num_steps=8']) == [
        '--config=configs/digits.py:smoke', '--workdir=D/num_train_64', '--mode=all',
        '--config.data.num_train=64', "--config.analysis.experiments=('e6',)",
        '--config.training.num_steps=8']
    assert sweep.flatten({'e6': {'n': 1, 'sweep': {'emm': 2}, 'list': [1]}, 'x': 'y'}) == {
        'e6.n': 1, 'e6.sweep.emm': 2, 'x': 'y'}


@pytest.mark.slow
def test_real_sweep_of_two_tiny_runs(tmp_path):
    """python -m launch.sweep runs two tiny digits runs end to end (train, E6)."""
    extra = [f'--override={k}={v}' for k, v in TINY_OVERRIDES.items()
             if not isinstance(v, tuple)] + ['--override=model.attn_resolutions=()',
                                             '--override=analysis.num_samples=16']
    result = subprocess.run(
        [sys.executable, '-m', 'launch.sweep', '--config=configs/digits.py',
         f'--sweep_dir={tmp_path}', '--sweep_arg=16,32', *extra], cwd=REPO, text=True,
        capture_output=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    with open(tmp_path / 'results.csv') as f:
        table = list(csv.DictReader(f))
    assert [r['e6.num_train'] for r in table] == ['16', '32']
    assert all(0.0 <= float(r['e6.memorisation_ratio']) <= 1.0 for r in table)
    assert os.path.exists(tmp_path / 'emm.png') and 'EMM' in result.stdout
