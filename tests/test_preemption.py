"""Preemption as a TPU or cloud VM delivers it: SIGTERM mid-training saves a checkpoint at the
step reached and exits with status 0; the same command run again resumes from that step."""
import os
import signal
import subprocess
import sys

import pytest

from tests.tiny import REPO, override_flags, run_main

# behaviour, not numbers (runs compared bit for bit are computed alike): XLA's
# optimisations off, here and in the diffgen.main runs started (tests/conftest.py)
pytestmark = pytest.mark.usefixtures('unoptimized_module')

# No checkpoint falls due before the end: the one found after SIGTERM is the handler's.
STEPS = {'training.num_steps': 2000, 'training.checkpoint_every': 2000,
         'training.log_every': 2, 'sampling.num_samples': 4}


@pytest.fixture(scope='module')
def data_dir(digits_data_dir):
    return digits_data_dir


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_the_rerun_resumes_from_it(data_dir, tmp_path):
    workdir = tmp_path / 'work'
    args = ['--config=configs/digits.py', f'--workdir={workdir}', '--mode=train',
            *override_flags(data_dir, **STEPS)]
    proc = subprocess.Popen([sys.executable, '-m', 'diffgen.main', *args], cwd=REPO,
                            env=dict(os.environ, PYTHONUNBUFFERED='1'), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    trained = 0
    for line in proc.stdout:  # the first progress lines come once training runs
        if line.startswith('train step '):
            trained = int(line.split()[2].split('/')[0])
            if trained >= 6:
                break
    assert trained >= 6, 'training did not start'
    proc.send_signal(signal.SIGTERM)
    rest = proc.communicate(timeout=120)[0]
    assert proc.returncode == 0, rest[-3000:]
    assert 'SIGTERM: saved step' in rest, rest[-3000:]
    saved = int(rest.split('SIGTERM: saved step ')[1].split()[0])
    assert trained <= saved < 2000
    assert sorted(int(n) for n in os.listdir(workdir / 'checkpoints') if n.isdigit()) == [saved]
    assert not (workdir / 'samples').exists()  # stopped before the end: no final samples

    rerun = run_main(*[a for a in args if 'num_steps' not in a],
                     f'--config.training.num_steps={saved + 4}')
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f'resumed from step {saved} ' in rerun.stderr
    assert f'train step {saved + 4}/{saved + 4}' in rerun.stdout
