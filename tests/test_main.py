"""The entry point as a user runs it: bad input is one line and exit status 2 with nothing
written; SIGKILL mid-run and a rerun resume from the last checkpoint. (A workdir of another
model is refused untouched: tests/test_faults.py.)"""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from diffgen import data
from diffgen.errors import ConfigError, UserError
from diffgen.validation import validate
from tests.tiny import REPO, override_flags, run_main, tiny_digits_config


@pytest.fixture(scope='module')
def data_dir(digits_data_dir):
    return digits_data_dir


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [l for l in result.stderr.splitlines() if l.startswith('diffgen: error:')]
    assert len(lines) == 1, result.stderr[-2000:]
    assert 'Traceback' not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.parametrize('flag,fragments', [
    ('--config.training.batchsize=3', ['unknown config key', 'batchsize']),
    ('--config.training.batch_size=abc', ['batch_size', 'abc']),
])
def test_bad_input_is_one_line_and_exit_2(data_dir, tmp_path, flag, fragments):
    """The whole path as a user meets it: a bad flag is one line on stderr, exit status 2,
    nothing written. Found parsing the flags (diffgen.main.parse_flags), so started as a
    command: diffgen.main's flags cannot be defined in this process beside launch.sweep's.
    Bad values that parse are checked in this process below."""
    workdir = tmp_path / 'work'
    result = run_main('--config=configs/digits.py', f'--workdir={workdir}', '--mode=train',
                      *override_flags(data_dir), flag)
    assert_one_line_error(result, *fragments)
    assert not workdir.exists()


@pytest.mark.parametrize('key,value,fragments', [
    ('training.batchsize', 3, ['batchsize']),
    ('data.source', 'mnist', ['data.source', 'mnist']),
    ('sampling.method', 'euler', ['sampling.method', 'euler']),
    ('model.name', 'transformer', ['model.name', 'transformer']),
    ('optim.ema_decay', 1.5, ['optim.ema_decay']),
])
def test_bad_config_value_is_one_config_error(data_dir, key, value, fragments):
    """Found by diffgen.validation before any work (diffgen.main: one line, exit 2)."""
    config = tiny_digits_config(data_dir)
    *sections, name = key.split('.')
    node = config
    for section in sections:
        node = node[section]
    node[name] = value          # (a new key where the config has none: training.batchsize)
    with pytest.raises(ConfigError) as error:
        validate(config)
    assert_one_line_message(str(error.value), *fragments)


@pytest.mark.parametrize('key,value,fragments', [
    ('data.source', 'tfds:no_such_dataset', ['no_such_dataset']),
    ('data.num_train', 5000, ['5000', '1781']),
    ('data.source', 'npz:/nonexistent/images.npz', ['/nonexistent/images.npz']),
])
def test_data_a_config_cannot_have_is_one_user_error(data_dir, key, value, fragments):
    """Valid values, found wrong when the data are read (diffgen.main: one line, exit 2)."""
    config = validate(tiny_digits_config(data_dir, **{key: value}))
    with pytest.raises(UserError) as error:
        data.load(config)
    assert_one_line_message(str(error.value), *fragments)


def assert_one_line_message(message, *fragments):
    assert message and '\n' not in message and 'Traceback' not in message, message
    for fragment in fragments:
        assert fragment in message, message


def test_unknown_config_file_and_mode(tmp_path):
    assert_one_line_error(run_main('--config=configs/nope.py', f'--workdir={tmp_path}/w'),
                          'configs/nope.py')
    assert_one_line_error(run_main('--config=configs/digits.py', f'--workdir={tmp_path}/w',
                                   '--mode=dance'), 'dance')
    assert_one_line_error(run_main('--config=configs/digits.py:huge', f'--workdir={tmp_path}/w'),
                          'huge')


# diffgen.main whose training, once the checkpoint of step PAUSE_AT is saved and finished,
# waits there: a SIGKILL sent then lands mid-run whatever the machine's speed.
PAUSE_AFTER_SAVE = '''
import sys, time
from absl import app
from diffgen import main
from diffgen.training import checkpoints
save = checkpoints.save
def save_then_wait(manager, state, *args, **kwargs):
    step = save(manager, state, *args, **kwargs)
    if step == PAUSE_AT:
        checkpoints.wait(manager, step)
        time.sleep(3600)
    return step
checkpoints.save = save_then_wait
sys.argv[0] = 'diffgen.main'
app.run(main.main, flags_parser=main.parse_flags)
'''


@pytest.mark.slow   # resuming is exact: tests/test_train.py; SIGKILL: tests/test_faults.py
def test_sigkill_then_rerun_resumes_to_the_same_parameters(data_dir, tmp_path, unoptimized):
    steps = {'training.num_steps': 80, 'training.checkpoint_every': 20,
             'training.log_every': 20, 'sampling.num_samples': 4}
    args = ['--config=configs/digits.py', '--mode=train', *override_flags(data_dir, **steps)]
    killed = tmp_path / 'killed'
    proc = subprocess.Popen([sys.executable, '-c', PAUSE_AFTER_SAVE.replace('PAUSE_AT', '40'),
                             f'--workdir={killed}', *args], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = killed / 'checkpoints'
    deadline = time.time() + 600
    while not (ckpt / '40').exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, f'the run ended (status {proc.returncode}) before step 40'
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert sorted(int(n) for n in os.listdir(ckpt) if n.isdigit()) == [20, 40]

    rerun = run_main(f'--workdir={killed}', *args)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert 'resumed from step 40 ' in rerun.stderr, rerun.stderr[-3000:]

    straight = run_main(f'--workdir={tmp_path / "straight"}', *args)
    assert straight.returncode == 0, straight.stderr[-3000:]
    a = np.load(killed / 'samples' / 'samples.npz')['samples']
    b = np.load(tmp_path / 'straight' / 'samples' / 'samples.npz')['samples']
    np.testing.assert_array_equal(a, b)  # same final parameters -> same DDIM samples
