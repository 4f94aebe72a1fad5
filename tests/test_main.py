"""The entry point as a user runs it: bad input is one line and exit status 2 with nothing
written; SIGKILL mid-run and a rerun resume from the last checkpoint."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.tiny import REPO, override_flags, run_main


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp('data')


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [l for l in result.stderr.splitlines() if l.startswith('diffgen: error:')]
    assert len(lines) == 1, result.stderr[-2000:]
    assert 'Traceback' not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.parametrize('flag,fragments', [
    ('--config.training.batchsize=3', ['batchsize']),
    ('--config.data.source=mnist', ['data.source', 'mnist']),
    ('--config.data.source=tfds:no_such_dataset', ['no_such_dataset']),
    ('--config.sampling.method=euler', ['sampling.method', 'euler']),
    ('--config.model.name=transformer', ['model.name', 'transformer']),
    ('--config.data.num_train=5000', ['5000', '1781']),
    ('--config.data.source=npz:/nonexistent/images.npz', ['/nonexistent/images.npz']),
    ('--config.training.batch_size=abc', ['batch_size']),
    ('--config.optim.ema_decay=1.5', ['optim.ema_decay']),
])
def test_bad_input_is_one_line_and_exit_2(data_dir, tmp_path, flag, fragments):
    workdir = tmp_path / 'work'
    result = run_main('--config=configs/digits.py', f'--workdir={workdir}', '--mode=train',
                      *override_flags(data_dir), flag)
    assert_one_line_error(result, *fragments)
    assert not workdir.exists()


def test_unknown_config_file_and_mode(tmp_path):
    assert_one_line_error(run_main('--config=configs/nope.py', f'--workdir={tmp_path}/w'),
                          'configs/nope.py')
    assert_one_line_error(run_main('--config=configs/digits.py', f'--workdir={tmp_path}/w',
                                   '--mode=dance'), 'dance')
    assert_one_line_error(run_main('--config=configs/digits.py:huge', f'--workdir={tmp_path}/w'),
                          'huge')


def test_incompatible_workdir_is_refused_untouched(data_dir, tmp_path):
    workdir = tmp_path / 'work'
    first = run_main('--config=configs/digits.py', f'--workdir={workdir}', '--mode=train',
                     *override_flags(data_dir, **{'training.num_steps': 4}))
    assert first.returncode == 0, first.stderr[-3000:]
    before = sorted(os.listdir(workdir / 'checkpoints'))
    config_before = (workdir / 'config.json').read_text()
    second = run_main('--config=configs/digits.py', f'--workdir={workdir}', '--mode=train',
                      *override_flags(data_dir, **{'training.num_steps': 8, 'model.ch': 16}))
    assert_one_line_error(second, 'incompatible', 'model.ch')
    assert sorted(os.listdir(workdir / 'checkpoints')) == before
    assert (workdir / 'config.json').read_text() == config_before


def test_sigkill_then_rerun_resumes_to_the_same_parameters(data_dir, tmp_path):
    steps = {'training.num_steps': 400, 'training.checkpoint_every': 20,
             'training.log_every': 20, 'sampling.num_samples': 4}
    args = ['--config=configs/digits.py', '--mode=train', *override_flags(data_dir, **steps)]
    killed = tmp_path / 'killed'
    proc = subprocess.Popen([sys.executable, '-m', 'diffgen.main', f'--workdir={killed}',
                             *args], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    ckpt = killed / 'checkpoints'
    while time.time() < deadline:
        done = [int(n) for n in os.listdir(ckpt) if n.isdigit()] if ckpt.exists() else []
        if done and max(done) >= 40:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    at_kill = max(int(n) for n in os.listdir(ckpt) if n.isdigit())
    assert 40 <= at_kill < 400, 'the run was not killed mid-way'

    rerun = run_main(f'--workdir={killed}', *args)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert 'resumed from step' in rerun.stderr
    resumed_from = int(rerun.stderr.split('resumed from step ')[1].split()[0])
    assert resumed_from >= at_kill - 20

    straight = run_main(f'--workdir={tmp_path / "straight"}', *args)
    assert straight.returncode == 0, straight.stderr[-3000:]
    a = np.load(killed / 'samples' / 'samples.npz')['samples']
    b = np.load(tmp_path / 'straight' / 'samples' / 'samples.npz')['samples']
    np.testing.assert_array_equal(a, b)  # same final parameters -> same DDIM samples
