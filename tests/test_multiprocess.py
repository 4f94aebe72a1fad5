"""Two processes on this machine (jax.distributed on localhost, 4 simulated CPU devices each)
train the tiny digits config as one 8-device data-parallel job; a single process restores
their checkpoint.

The two workers are started the way a user starts them by hand: the same launch/local.sh
command with $DIFFGEN_COORDINATOR, $DIFFGEN_NUM_PROCESSES and $DIFFGEN_PROCESS_ID set, read
by diffgen.parallel.initialize() in diffgen.main. Each worker holds only the training rows
of its own four devices. The TPU-pod launcher is checked with a fake gcloud.
"""
import os
import re
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from diffgen import data
from diffgen.training import checkpoints as checkpointing
from diffgen.training.loop import build
from tests.tiny import REPO, override_flags, tiny_digits_config

STEPS = {'training.num_steps': 4, 'training.checkpoint_every': 4, 'training.log_every': 2,
         'sampling.num_samples': 8}


def free_port():
    with socket.socket() as s:
        s.bind(('localhost', 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_and_one_process_restores(digits_data_dir, tmp_path, unoptimized):
    # unoptimized: it checks who prints, what is saved and that one process restores it,
    # not numbers
    data_dir = digits_data_dir
    config = tiny_digits_config(data_dir, **STEPS)
    dataset = data.load(config)  # prepares the digits once, before the workers read them
    workdir = tmp_path / 'work'
    (out0, err0), (out1, err1) = run_two_processes(workdir, *override_flags(data_dir, **STEPS))
    assert (workdir / 'samples' / 'samples.npz').exists()
    # only process 0 prints progress lines and shows diffgen's messages (absl INFO)
    assert 'train step 4/4' in out0 and re.search(r'^I\d{4} .*modes\.py:\d+\] ', err0, re.M)
    assert 'train step' not in out1 + err1 and not re.search(r'^I\d{4} ', err1, re.M)

    assert jax.process_count() == 1
    fresh = build(config, dataset).state
    manager = checkpointing.make_manager(workdir, 3)
    assert manager.all_steps() == [4]
    restored = checkpointing.restore_latest(manager, fresh)
    assert int(restored.step) == 4
    moved = [np.max(np.abs(np.asarray(a) - np.asarray(b)))
             for a, b in zip(jax.tree.leaves(restored.params), jax.tree.leaves(fresh.params))]
    assert all(np.isfinite(m) for m in moved) and max(moved) > 0


def run_two_processes(workdir, *flags, expect=0):
    """[(stdout, stderr)] of two processes started as by hand, each with 4 CPU devices,
    running --mode=train of configs/digits.py with flags; each must exit with expect."""
    coordinator = f'localhost:{free_port()}'
    workers = []
    for process_id in range(2):
        env = dict(os.environ, PYTHON=sys.executable, DIFFGEN_COORDINATOR=coordinator,
                   DIFFGEN_NUM_PROCESSES='2', DIFFGEN_PROCESS_ID=str(process_id))
        workers.append(subprocess.Popen(
            [os.path.join(REPO, 'launch', 'local.sh'), '--cpu_devices=4',
             '--config=configs/digits.py', f'--workdir={workdir}', '--mode=train', *flags],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [w.communicate(timeout=900) for w in workers]   # a hang guard (a loaded machine)
    for w, (out, err) in zip(workers, outputs):
        assert w.returncode == expect, out[-2000:] + err[-3000:]
    return outputs


@pytest.mark.slow
@pytest.mark.parametrize('flag', ['--config.optim.ema_decay=1.5',    # found after start-up
                                  '--config.optim.no_such_key=1'])   # found parsing the flags
def test_only_process_0_prints_the_one_line_error(digits_data_dir, tmp_path, flag, unoptimized):
    (out0, err0), (out1, err1) = run_two_processes(
        tmp_path / 'work', *override_flags(digits_data_dir), flag, expect=2)
    assert [l for l in err0.splitlines() if l.startswith('diffgen: error:')], err0[-2000:]
    assert 'diffgen: error:' not in out1 + err1, err1[-2000:]


def fake_program(path, record):
    """An executable that writes its arguments (NUL-separated) and $DIFFGEN_DISTRIBUTED to
    record, then exits 0."""
    path.write_text('#!/usr/bin/env bash\n'
                    f'printf "%s\\0" "$@" > {record}\n'
                    f'echo "DIFFGEN_DISTRIBUTED=${{DIFFGEN_DISTRIBUTED:-}}" > {record}.env\n')
    path.chmod(0o755)


def recorded(record):
    return record.read_text().split('\0')[:-1]


def test_tpu_pod_launch_runs_the_config_on_every_worker(tmp_path):
    """launch/tpu_pod.sh calls `gcloud compute tpus tpu-vm ssh NAME --zone=Z --worker=all
    --command=...`; that command, run by a worker's shell, starts launch/local.sh with
    DIFFGEN_DISTRIBUTED=auto and diffgen's arguments intact (quotes, spaces, parentheses)."""
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    fake_program(bin_dir / 'gcloud', tmp_path / 'gcloud_args')
    fake_program(bin_dir / 'fake_python', tmp_path / 'python_args')
    diffgen_args = ['--config=configs/cifar10.py', '--workdir=gs://bucket/runs/c10',
                    '--mode=train', '--config.model.attn_resolutions=(16,)',
                    "--config.data.source=npz:/data/my images.npz"]
    env = dict(os.environ, PATH=f'{bin_dir}:{os.environ["PATH"]}',
               PYTHON=str(bin_dir / 'fake_python'))
    launch = [os.path.join(REPO, 'launch', 'tpu_pod.sh'), '--tpu=pod-a', '--zone=us-central2-b',
              '--project=proj', f'--repo_dir={REPO}', '--']
    result = subprocess.run([*launch, *diffgen_args], env=env, capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    args = recorded(tmp_path / 'gcloud_args')
    assert args[:7] == ['compute', 'tpus', 'tpu-vm', 'ssh', 'pod-a', '--zone=us-central2-b',
                        '--worker=all']
    assert '--project=proj' in args
    command = [a for a in args if a.startswith('--command=')]
    assert len(command) == 1

    worker = subprocess.run(['bash', '-c', command[0][len('--command='):]], env=env,
                            capture_output=True, text=True, timeout=60)
    assert worker.returncode == 0, worker.stderr
    assert recorded(tmp_path / 'python_args') == ['-m', 'diffgen.main', *diffgen_args]
    assert (tmp_path / 'python_args.env').read_text().strip() == 'DIFFGEN_DISTRIBUTED=auto'

    dry = subprocess.run([*launch[:-1], '--dry-run', '--', *diffgen_args], env=env, capture_output=True,
                         text=True, timeout=60)
    assert dry.returncode == 0 and 'gcloud compute tpus tpu-vm ssh pod-a' in dry.stdout
    (tmp_path / 'gcloud_args').unlink()
    local = subprocess.run([*launch, '--config=configs/cifar10.py', '--workdir=/tmp/runs/c10'],
                           env=env, capture_output=True, text=True, timeout=60)
    assert local.returncode == 2 and 'gs://' in local.stderr
    assert not (tmp_path / 'gcloud_args').exists()  # the dry run and the refusal call nothing
