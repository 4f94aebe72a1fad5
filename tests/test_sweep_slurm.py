"""launch/sweep.py --launcher=slurm (launch/slurm_sweep.py): the sweep's runs as one job array
with a dependent collect job. Without a cluster: --dry-run prints the array and collect
scripts for the unfinished runs only and writes nothing, --collect alone writes results.csv
from the finished runs, bad input is one line. On the private cluster (tests/slurm_cluster.py)
an array sweep of 3 runs finishes, its collect job writes results.csv with all 3, a rerun
submits nothing, and a rerun after a run is lost submits that run alone (--wait: waits and
collects). Each run is tests/fake_run.py (a stand-in for diffgen.main) through --python."""
import csv
import json
import os
import re
import subprocess
import sys

from launch import slurm, sweep
from tests.test_slurm import cluster  # noqa: F401 -- the module's private Slurm cluster
from tests.test_sweep_runner import CONFIG, write_plan
from tests.tiny import REPO

SIZES = '16,64,256'
NAMES = ['num_train_16', 'num_train_64', 'num_train_256']


def run_sweep(tmp_path, *flags, env=None):
    return subprocess.run(
        [sys.executable, '-m', 'launch.sweep', f'--config={CONFIG}', f'--sweep_arg={SIZES}',
         f'--sweep_dir={tmp_path / "sweep"}', *flags], cwd=REPO, capture_output=True, text=True,
        timeout=300, env=dict(os.environ, FAKE_PLAN=str(tmp_path / 'plan.json'),
                              FAKE_CALLS=str(tmp_path / 'calls.jsonl'), **(env or {})))


def fake_python(tmp_path):
    """An interpreter for --slurm=--python=: launch/local.sh runs `$PYTHON -m diffgen.main
    ARGS`, this runs tests/fake_run.py ARGS."""
    path = tmp_path / 'fake_python'
    path.write_text(f'#!/usr/bin/env bash\nshift 2\nexec {sys.executable} '
                    f'{REPO}/tests/fake_run.py "$@"\n')
    path.chmod(0o755)
    return path


def sweep_here(tmp_path, *flags):
    """launch.sweep's main in this process (its absl flags parsed, then reset): the exit
    status; what it prints is for capsys."""
    from absl import flags as absl_flags
    argv = ['launch.sweep', f'--config={CONFIG}', f'--sweep_arg={SIZES}',
            f'--sweep_dir={tmp_path / "sweep"}',
            *('--dry_run' if f == '--dry-run' else f for f in flags)]
    try:
        return sweep.main(absl_flags.FLAGS(argv))
    finally:
        absl_flags.FLAGS.unparse_flags()


def finish_by_hand(tmp_path, name):
    """Runs the fake run of `name` here, as the sweep would: afterwards it is finished."""
    _, runs = sweep.plan(CONFIG, str(tmp_path / 'sweep'), SIZES)
    run = next(r for r in runs if r.name == name)
    done = subprocess.run([sys.executable, 'tests/fake_run.py', *run.args], cwd=REPO,
                          env=dict(os.environ, FAKE_PLAN=str(tmp_path / 'plan.json'),
                                   FAKE_CALLS=str(tmp_path / 'calls.jsonl')),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def results(tmp_path):
    with open(tmp_path / 'sweep' / 'results.csv') as f:
        return [row['run'] for row in csv.DictReader(f)]


def one_line_error(result):
    assert result.returncode == 2 and result.stdout.strip() == '', result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('diffgen: error: '), result.stderr
    return lines[0]


# ------------------------------------------------------------------------- no cluster

def test_dry_run_prints_the_unfinished_runs_array_and_collect_alone_collects(tmp_path,
                                                                           capsys):
    write_plan(tmp_path, SIZES, sleep=0)
    flags = ['--launcher=slurm', '--parallel=2', '--slurm=--gpus_per_task=0',
             '--slurm=--partition=gpu', '--slurm=--sbatch=--mem=8G']
    assert sweep_here(tmp_path, *flags, '--dry-run') == 0
    out = capsys.readouterr().out
    assert 'sweep: 3 runs, 0 finished before, 0 still in Slurm from an earlier submission, ' \
        '3 to submit' in out
    assert '#SBATCH --array=0-2%2' in out and '#SBATCH --partition=gpu' in out
    assert '#SBATCH --mem=8G' in out and '--gpus-per-task' not in out
    for i, name in enumerate(NAMES):
        assert re.search(rf'^  {i}\) run={name}; command=\(.*/launch/local\.sh '
                         rf'--config={re.escape(CONFIG)} --workdir=\S*/sweep/{name} ', out, re.M)
    # the collect job: after the array, the same sweep with --collect
    assert '#SBATCH --dependency=afterany:<array job id>' in out
    assert re.search(r'^\S*python\S* -m launch\.sweep .*--launcher=slurm --collect', out, re.M)
    assert not (tmp_path / 'sweep').exists()   # nothing written, nothing submitted

    # one run finished: the dry run shows the other two; --collect counts the finished one
    finish_by_hand(tmp_path, 'num_train_64')
    assert sweep_here(tmp_path, *flags, '--dry-run') == 0
    out = capsys.readouterr().out
    assert '1 finished before' in out and '#SBATCH --array=0-1%2' in out
    assert 'run=num_train_64' not in out and 'run=num_train_256' in out
    assert not (tmp_path / 'sweep' / 'slurm').exists()
    assert sweep_here(tmp_path, '--collect') == 0
    assert results(tmp_path) == ['num_train_64']
    assert 'num_train_16: not finished' in capsys.readouterr().out
    assert len((tmp_path / 'calls.jsonl').read_text().splitlines()) == 1   # ran nothing


def test_bad_slurm_input_is_one_line(tmp_path, capsys):
    write_plan(tmp_path, SIZES, sleep=0)
    # the command line: one line on stderr, exit status 2
    assert '--slurm: ' in one_line_error(run_sweep(tmp_path, '--launcher=slurm',
                                                   '--slurm=--no_such_flag=1', '--dry-run'))
    for flags, message in [(['--wait'], 'only with --launcher=slurm'),
                           (['--launcher=slurm', '--dry-run', '--sweep_dir=gs://bucket/sweep'],
                            'nodes share'),
                           (['--launcher=slurm', '--slurm=--dry-run'], "the sweep's own flag"),
                           (['--launcher=slurm', '--parallel=0', '--dry-run'], 'need 1 or more')]:
        assert sweep_here(tmp_path, *flags) == 2
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith('diffgen: error: '), captured
        assert message in lines[0], lines
    assert not (tmp_path / 'sweep').exists()


# ------------------------------------------------------------------------- the cluster

def test_array_sweep_collects_all_runs_and_its_rerun_submits_nothing(cluster, tmp_path):  # noqa: F811
    write_plan(tmp_path, SIZES, sleep=0.5)
    flags = ['--launcher=slurm', '--parallel=2', '--slurm=--gpus_per_task=0',
             f'--slurm=--python={fake_python(tmp_path)}', '--slurm=--job_name=fake-sweep']
    first = run_sweep(tmp_path, *flags)
    assert first.returncode == 0, first.stderr
    assert '3 to submit' in first.stdout
    record = slurm.submissions(str(tmp_path / 'sweep'))
    assert len(record) == 1 and record[0]['runs'] == NAMES, record
    script = (tmp_path / 'sweep' / 'slurm' / 'array_0.sbatch').read_text()
    assert '#SBATCH --array=0-2%2' in script
    slurm.wait_for([record[0]['job_id'], record[0]['collect_job_id']], poll=1, timeout=300)
    for name in NAMES:   # each task ran its own run, in its own workdir
        log = (tmp_path / 'sweep' / f'{name}.log').read_text()
        assert 'fake run: done' in log and '--- slurm: start job ' in log, log
        assert (tmp_path / 'sweep' / name / 'report' / 'report.json').exists()
    calls = [json.loads(l) for l in (tmp_path / 'calls.jsonl').read_text().splitlines()]
    assert sorted(os.path.basename(c['workdir']) for c in calls) == sorted(NAMES)
    assert results(tmp_path) == NAMES   # written by the collect job

    again = run_sweep(tmp_path, *flags)
    assert again.returncode == 0, again.stderr
    assert '3 finished before' in again.stdout and '0 to submit' in again.stdout
    assert len(slurm.submissions(str(tmp_path / 'sweep'))) == 1   # nothing submitted

    # a run lost (its report gone): the rerun submits it alone; --wait waits and collects
    os.remove(tmp_path / 'sweep' / 'num_train_64' / 'report' / 'report.json')
    (tmp_path / 'sweep' / 'results.csv').unlink()
    waited = run_sweep(tmp_path, *flags, '--wait')
    assert waited.returncode == 0, waited.stdout + waited.stderr
    assert '2 finished before' in waited.stdout and '1 to submit' in waited.stdout
    record = slurm.submissions(str(tmp_path / 'sweep'))
    assert len(record) == 2 and record[1]['runs'] == ['num_train_64']
    assert '#SBATCH --array=0-0%2' in (tmp_path / 'sweep' / 'slurm' / 'array_1.sbatch').read_text()
    assert results(tmp_path) == NAMES
    assert not slurm.queued([record[1]['job_id'], record[1]['collect_job_id']])
