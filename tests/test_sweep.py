"""launch/sweep.py: the sweep declared in configs/digits.py, run names and flags, results
collected into results.csv and emm.png (with a stand-in launcher), and (slow) a real
two-run sweep."""
import csv
import json
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
    assert all(r['analysis.experiments'] == ('e6',) for r in runs)
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


def test_sweep_collects_results(tmp_path, monkeypatch):
    """A stand-in launcher writes each run's report.json (ratio 1 at N = 16, 0.5 at 64, a
    failure at 256): results.csv has one row per run in order, emm.png exists, EMM = 16."""
    calls = []

    def fake(args, log_path):
        calls.append(args)
        workdir = next(a for a in args if a.startswith('--workdir=')).split('=', 1)[1]
        n = int(next(a for a in args if a.startswith('--config.data.num_train=')).split('=')[1])
        if n == 256:
            return 1
        os.makedirs(os.path.join(workdir, 'report'))
        with open(os.path.join(workdir, 'report', 'report.json'), 'w') as f:
            json.dump({'e6': {'num_train': n, 'memorisation_ratio': 1.0 if n == 16 else 0.5}}, f)
        return 0

    monkeypatch.setitem(sweep.LAUNCHERS, 'fake', fake)
    rows, (num_train, ratios, emm) = sweep.sweep('configs/digits.py:smoke', str(tmp_path),
                                                 '16,64,256', 'all', 'fake')
    assert len(calls) == 3 and calls[0][1] == f'--workdir={tmp_path}/num_train_16'
    assert num_train.tolist() == [16, 64] and ratios.tolist() == [1.0, 0.5] and emm == 16
    with open(tmp_path / 'results.csv') as f:
        table = list(csv.DictReader(f))
    assert [r['run'] for r in table] == ['num_train_16', 'num_train_64', 'num_train_256']
    assert [r['status'] for r in table] == ['ok', 'ok', 'failed (exit 1)']
    assert table[1]['e6.memorisation_ratio'] == '0.5' and table[2]['e6.num_train'] == ''
    assert os.path.exists(tmp_path / 'emm.png')


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
