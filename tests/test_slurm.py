"""launch/slurm.py against a private one-node Slurm cluster (tests/slurm_cluster.py, started
once for this module, where Slurm is installed and we are root): a 2-task srun training
of a few steps equals the 1-process run with as many devices, a job array of fake runs
finishes and its rerun submits nothing, scancel leaves a training its resubmitted script
resumes (cancelled again once resumed), and sbatch's refusals are one line. The two
trainings are marked slow: each starts JAX processes, whose start-up and compilation are
most of their time. The script's shape and quoting are checked without a cluster (--dry-run)."""
import json
import os
import re
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from launch import slurm
from tests.slurm_cluster import Cluster, skip_reason
from tests.tiny import REPO, override_flags, tiny_digits_config

LAUNCH = [sys.executable, '-m', 'launch.slurm']
CPU = ['--gpus_per_task=0']   # the test cluster has no GPUs


@pytest.fixture(scope='module')
def cluster():
    reason = skip_reason()
    if reason:
        pytest.skip(reason)
    started = Cluster.start()
    before = os.environ.get('SLURM_CONF')
    os.environ['SLURM_CONF'] = started.conf   # for launch.slurm here and in subprocesses
    try:
        yield started
    finally:
        if before is None:
            os.environ.pop('SLURM_CONF', None)
        else:
            os.environ['SLURM_CONF'] = before
        started.stop()


def launch(*args, env=None):
    return subprocess.run([*LAUNCH, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)


def submitted(result):
    """(job id, output file) of a `python -m launch.slurm` that submitted a job."""
    assert result.returncode == 0, result.stderr
    job_id = re.search(r'^submitted job (\d+): ', result.stdout, re.M).group(1)
    output = re.search(r'^output: (.+)$', result.stdout, re.M).group(1)
    return job_id, output


def read(path):
    with open(path, errors='replace') as f:
        return f.read()


# ------------------------------------------------------------------------- no cluster

def fake_program(path, record):
    """An executable that writes its arguments (NUL-separated) and $DIFFGEN_DISTRIBUTED to
    record."""
    path.write_text('#!/usr/bin/env bash\n'
                    f'printf "%s\\0" "$@" > {record}\n'
                    f'echo "DIFFGEN_DISTRIBUTED=${{DIFFGEN_DISTRIBUTED:-}}" > {record}.env\n')
    path.chmod(0o755)


def test_dry_run_prints_the_script_and_its_srun_runs_diffgen_with_the_arguments_intact(
        tmp_path):
    main_args = ['--config=configs/cifar10.py', f'--workdir={tmp_path}/work', '--mode=train',
                 '--config.model.attn_resolutions=(16,)',
                 "--config.data.source=npz:/data/my images's.npz"]
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    result = launch('--nodes=2', '--ntasks_per_node=4', '--gpus_per_task=1', '--time=2:00:00',
                    '--partition=gpu', '--account=lab', '--sbatch=--mem=64G',
                    '--sbatch=--constraint=a100', '--signal_grace=300', '--dry-run',
                    f'--python={bin_dir}/python', '--', *main_args)
    assert result.returncode == 0, result.stderr
    script = result.stdout
    assert not (tmp_path / 'work').exists()   # nothing written, nothing submitted
    assert script.startswith('#!/bin/bash\n# ')
    assert f'sbatch {tmp_path}/work/slurm/diffgen-work.sbatch' in script   # how to resubmit
    sbatch = re.findall(r'^#SBATCH (\S+)$', script, re.M)
    for line in ['--job-name=diffgen-work', '--nodes=2', '--ntasks-per-node=4',
                 '--gpus-per-task=1', '--time=2:00:00', '--partition=gpu', '--account=lab',
                 f'--output={tmp_path}/work/slurm/diffgen-work-%j.out', '--open-mode=append',
                 '--requeue', '--signal=TERM@300', '--mem=64G', '--constraint=a100',
                 f'--chdir={REPO}']:
        assert line in sbatch, (line, sbatch)
    assert 'export DIFFGEN_DISTRIBUTED=auto' in script and 'export JAX_LOCAL_DEVICE_IDS=0' in script
    assert len(re.findall(r'^srun ', script, re.M)) == 1

    # the script run by bash with a fake srun (it runs its command once) and a fake python:
    # diffgen.main gets every argument unchanged, with DIFFGEN_DISTRIBUTED=auto
    (bin_dir / 'srun').write_text('#!/usr/bin/env bash\n'
                                  'while [[ "$1" == --* ]]; do shift; done\n'
                                  'SLURM_PROCID=0 SLURM_NTASKS=8 exec "$@"\n')
    (bin_dir / 'srun').chmod(0o755)
    fake_program(bin_dir / 'python', tmp_path / 'args')
    one = launch(*CPU, '--norequeue', f'--python={bin_dir}/python', '--cpu_devices=4',
                 '--dry-run', '--', *main_args)
    assert one.returncode == 0, one.stderr
    assert '#SBATCH --no-requeue' in one.stdout and '--gpus-per-task' not in one.stdout
    assert 'DIFFGEN_DISTRIBUTED' not in one.stdout   # one task: no jax.distributed
    ran = subprocess.run(['bash', '-c', script],
                         env=dict(os.environ, PATH=f'{bin_dir}:{os.environ["PATH"]}',
                                  SLURM_JOB_ID='1', SLURM_JOB_NODELIST='n1', SLURM_NTASKS='8'),
                         capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stderr
    assert '--- slurm: task 0 of 8 on ' in ran.stderr
    assert (tmp_path / 'args').read_text().split('\0')[:-1] == ['-m', 'diffgen.main', *main_args]
    assert (tmp_path / 'args.env').read_text().strip() == 'DIFFGEN_DISTRIBUTED=auto'


def test_without_sbatch_one_line_error_and_only_the_script_is_left(tmp_path):
    # PATH holds the interpreter's directory alone: no sbatch (nor git)
    env = dict(os.environ, PATH=os.path.dirname(sys.executable))
    result = launch(*CPU, '--', '--config=configs/digits.py', f'--workdir={tmp_path}/w',
                    env=env)
    assert result.returncode == 2 and result.stdout == ''
    assert result.stderr.startswith('diffgen: error: sbatch not found on PATH')
    assert len(result.stderr.splitlines()) == 1
    assert os.listdir(tmp_path / 'w') == ['slurm']
    assert os.listdir(tmp_path / 'w' / 'slurm') == ['diffgen-w.sbatch']
    # our own flags: a misplaced diffgen flag is one line too
    wrong = launch(*CPU, '--config=configs/digits.py', f'--workdir={tmp_path}/v')
    assert wrong.returncode == 2 and wrong.stderr.startswith('diffgen: error: ')
    assert "arguments go after --" in wrong.stderr and not (tmp_path / 'v').exists()


def test_help_prints_the_usage_and_every_flag_and_submits_nothing():
    result = launch('--help')
    assert result.returncode == 0 and result.stderr == ''
    assert result.stdout.startswith('usage: python -m launch.slurm [flags] -- ')
    for flag in ('--nodes', '--ntasks_per_node', '--gpus_per_task', '--time', '--partition',
                 '--account', '--[no]dry_run', '--[no]requeue'):
        assert f'{flag}:' in result.stdout


# ------------------------------------------------------------------------- the cluster

@pytest.mark.parametrize('flag, message', [
    ('--sbatch=--bogus', "unrecognized option '--bogus'"),
    ('--partition=no_such_partition', 'invalid partition'),
])
def test_sbatch_refusal_is_one_line_and_leaves_only_the_script(cluster, tmp_path, flag,
                                                               message):
    result = launch(*CPU, flag, '--', '--config=configs/digits.py', f'--workdir={tmp_path}/w')
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == ''
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith('diffgen: error: sbatch refused '), lines
    assert message in lines[0].lower() if message.islower() else message in lines[0]
    assert os.listdir(tmp_path / 'w' / 'slurm') == ['diffgen-w.sbatch']
    assert not cluster.run('squeue', '-h').stdout.strip()   # nothing was queued


# What each fake run does: sleeps (so that its array task is seen in the queue), writes its
# marker, says so. Its name has what bash quoting must survive.
FAKE_RUN = ('import sys, time; time.sleep(3); open(sys.argv[1], "w").write(sys.argv[2]); '
            'print("fake run done:", sys.argv[2])')
COLLECT = ('import glob, sys; markers = sorted(glob.glob(sys.argv[1] + "/*.marker")); '
           'open(sys.argv[1] + "/collected", "w").write("\\n".join(markers))')


def test_array_sweep_finishes_and_its_rerun_submits_nothing(cluster, tmp_path):
    sweep_dir = tmp_path / 'sweep'
    sweep_dir.mkdir()
    names = ['num_train_16', 'num_train_64', "odd name's (x y)"]

    def marker(name):
        return sweep_dir / f'{name}.marker'

    commands = [(name, [sys.executable, '-c', FAKE_RUN, str(marker(name)), name])
                for name in names]

    def finished(name):
        return marker(name).exists()

    todo = slurm.unsubmitted(commands, finished, str(sweep_dir))
    assert todo == commands
    options = slurm.Options(gpus_per_task=0, job_name='fake-sweep')
    collect = [sys.executable, '-c', COLLECT, str(sweep_dir)]
    job_id = slurm.submit_array(todo, str(sweep_dir), max_parallel=2, slurm_options=options,
                                collect=collect)
    record = json.loads((sweep_dir / 'slurm' / 'submitted.json').read_text())
    assert len(record) == 1 and record[0]['job_id'] == job_id and record[0]['runs'] == names
    script = (sweep_dir / 'slurm' / 'array_0.sbatch').read_text()
    assert '#SBATCH --array=0-2%2' in script and 'case "$SLURM_ARRAY_TASK_ID" in' in script
    # while they are queued or running, a rerun submits nothing either
    assert set(slurm.pending(str(sweep_dir))) == set(names)
    assert slurm.unsubmitted(commands, finished, str(sweep_dir)) == []

    slurm.wait_for([job_id, record[0]['collect_job_id']], poll=1, timeout=240)
    for name in names:
        assert marker(name).read_text() == name, read(sweep_dir / f'{name}.log')
        log = read(sweep_dir / f'{name}.log')
        assert f'fake run done: {name}' in log and '--- slurm: start job ' in log
    # the collect job ran after every task had ended: it saw the three markers
    assert (sweep_dir / 'collected').read_text().splitlines() == sorted(
        str(marker(n)) for n in names)
    assert slurm.pending(str(sweep_dir)) == {}
    assert slurm.unsubmitted(commands, finished, str(sweep_dir)) == []   # all finished
    # one unfinished run not in Slurm any more is submitted again, alone
    marker(names[1]).unlink()
    assert slurm.unsubmitted(commands, finished, str(sweep_dir)) == [commands[1]]


# ------------------------------------------------------------------------- training

def ckpt_steps(workdir):
    path = workdir / 'checkpoints'
    return sorted(int(n) for n in os.listdir(path) if n.isdigit()) if path.exists() else []


def restored_params(config, dataset, workdir):
    from diffgen.training import checkpoints as checkpointing
    from diffgen.training.loop import build
    fresh = build(config, dataset).state
    manager = checkpointing.make_manager(workdir, 3)
    state = checkpointing.restore_latest(manager, fresh)
    return int(state.step), jax.tree.leaves(state.params)


# As tests/test_multiprocess.py: a few steps (each task's compilation is most of the time).
STEPS = {'training.num_steps': 4, 'training.checkpoint_every': 4, 'training.log_every': 2,
         'sampling.num_samples': 4}


@pytest.mark.slow
def test_two_srun_tasks_train_like_one_process_with_as_many_devices(cluster, digits_data_dir,
                                                                   tmp_path, unoptimized):
    # unoptimized: XLA's optimisations off in all three processes (both sides of the
    # comparison are computed alike; what differs is only where the all-reduce sums)
    from diffgen import data
    config = tiny_digits_config(digits_data_dir, **STEPS)
    dataset = data.load(config)
    flags = ['--config=configs/digits.py', '--mode=train',
             *override_flags(digits_data_dir, **STEPS)]
    # the reference: one process, 8 simulated CPU devices, run beside the job
    reference = subprocess.Popen(
        [os.path.join(REPO, 'launch', 'local.sh'), '--cpu_devices=8', *flags,
         f'--workdir={tmp_path}/one'], cwd=REPO, env=dict(os.environ, PYTHON=sys.executable),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    job_id, output = submitted(launch(*CPU, '--ntasks_per_node=2', '--cpus_per_task=1',
                                      '--cpu_devices=4', '--', *flags,
                                      f'--workdir={tmp_path}/two'))
    reference_out = reference.communicate(timeout=600)[0]
    assert reference.returncode == 0, reference_out[-3000:]
    slurm.wait_for([job_id], poll=1, timeout=600)
    log = read(output)
    assert '--- slurm: task 0 of 2 on ' in log and '--- slurm: task 1 of 2 on ' in log, log
    # process 0 alone prints progress (a second process 0, e.g. two separate 1-process runs,
    # would print it twice, or fail on the workdir's lock)
    num_steps = config.training.num_steps
    assert log.count(f'train step {num_steps}/{num_steps}') == 1, log[-3000:]
    assert 'diffgen: error' not in log and 'Traceback' not in log, log[-3000:]

    step_one, one = restored_params(config, dataset, tmp_path / 'one')
    step_two, two = restored_params(config, dataset, tmp_path / 'two')
    assert step_one == step_two == num_steps
    # Tolerance. Both runs do the same 8-device computation from the same initialisation on
    # the same batches; only the gradient all-reduce's summation order differs (gloo between
    # the two processes, XLA within one), by a few float32 ulps (2^-23 relative) of the
    # summed terms. For most parameters Adam turns that into a few ulps of the parameters'
    # scale (max |p|, about 1) per step, adding up over the steps: bulk tolerance
    # STEPS x 4 ulps x scale. Components whose gradient is near Adam's eps (1e-8) are the
    # exception: there u = lr g / (|g| + eps) and a round-off dg moves u by lr dg / eps, up
    # to Adam's whole step (|u| <= lr): for those the bound is 2 lr per step. Measured: with
    # 8 steps (XLA optimised) the bulk differed by at most 4.6e-7 (4 ulps of 1), a few
    # eps-regime components of leaves of size ~1e-5 by 1.3e-5; with these 4 steps (XLA's
    # optimisations off) every element by at most 1.3e-6, within the bulk tolerance (1.9e-6).
    # So: at least 99 % of the elements within the bulk tolerance, every element within the
    # eps-regime bound.
    bulk = num_steps * 4 * 2.0 ** -23 * max(float(np.max(np.abs(a))) for a in one)
    worst = num_steps * 2 * float(config.optim.learning_rate)
    diffs = np.concatenate([np.abs(np.asarray(a) - np.asarray(b)).ravel()
                            for a, b in zip(one, two)])
    assert np.all(np.isfinite(diffs)) and diffs.max() <= worst, diffs.max()
    assert np.mean(diffs <= bulk) >= 0.99, (np.mean(diffs <= bulk), np.sort(diffs)[-20:])


def wait_for_line(path, pattern, job_id, timeout=600):
    """The first match of pattern (a regex) in the file at path, which the running job
    job_id writes; fails if the job ends first."""
    deadline = time.monotonic() + timeout
    while True:
        text = read(path) if os.path.exists(path) else ''
        found = re.search(pattern, text, re.M)
        if found:
            return found
        assert slurm.queued([job_id]), f'job {job_id} ended before {pattern!r}:\n' + text[-3000:]
        assert time.monotonic() < deadline, f'no {pattern!r} in {path}'
        time.sleep(0.2)


def cancel(cluster, job_id, output):
    """scancel of a running job; returns the step its SIGTERM checkpoint saved."""
    cluster.run('scancel', job_id)
    slurm.wait_for([job_id], poll=0.5, timeout=120)
    log = read(output)
    assert 'SIGTERM: saved step ' in log, log[-3000:]
    return int(log.rsplit('SIGTERM: saved step ', 1)[1].split()[0])


@pytest.mark.slow
def test_scancel_mid_training_leaves_a_run_the_resubmitted_script_resumes(
        cluster, digits_data_dir, tmp_path, unoptimized):
    # Far more steps than either job trains: each is cancelled once it has trained a few
    # (its progress lines in its output), however fast the machine. No checkpoint falls due
    # before that: the one found is the SIGTERM handler's.
    workdir = tmp_path / 'work'
    steps = {'training.num_steps': 4000, 'training.checkpoint_every': 4000,
             'training.log_every': 2, 'sampling.num_samples': 4}
    job_id, output = submitted(launch(
        *CPU, '--job_name=cancelled', '--', '--config=configs/digits.py', f'--workdir={workdir}',
        '--mode=train', *override_flags(digits_data_dir, **steps)))
    wait_for_line(output, r'^train step [1-9]\d*/4000 ', job_id)
    saved = cancel(cluster, job_id, output)
    assert 0 < saved < 4000 and ckpt_steps(workdir) == [saved]
    assert not (workdir / 'samples').exists()   # stopped before the end

    # the same script again, as its comment says: it resumes from that step and trains on
    # (cancelled again once it has: the run stays resumable)
    script = workdir / 'slurm' / 'cancelled.sbatch'
    again = cluster.run('sbatch', '--parsable', str(script))
    again_id = again.stdout.strip().split(';')[0]
    rerun = workdir / 'slurm' / f'cancelled-{again_id}.out'
    wait_for_line(rerun, rf'resumed from step {saved} ', again_id)
    wait_for_line(rerun, rf'^train step (?!{saved}/)\d+/4000 ', again_id)
    saved_again = cancel(cluster, again_id, rerun)
    assert saved < saved_again < 4000 and ckpt_steps(workdir) == [saved, saved_again]
    assert 'Traceback' not in read(output) + read(rerun)
