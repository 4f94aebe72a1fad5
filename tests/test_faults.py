"""Faults a run meets, tried as a user meets them, one test each: a damaged file diffgen
wrote, a checkpoint cut short, a second run on the same workdir, a resume with a changed
model or training set (or from before a config key existed), num_steps below the
checkpoint, bad npz input, SIGTERM / SIGINT outside training, a full disk, a sweep rerun.
Each asserts the one line (and exit status) the user gets, that nothing earlier was lost
(the previous checkpoint restores, finished report sections remain) and, where the user can
act, that the rerun completes. Last, the randomised crash test (slow): SIGKILL at random
moments across --mode=all, each rerun resuming, ends with the parameters and report of an
uninterrupted run.

Most workdirs are copies of one tiny model trained here (checkpoints 4 and 8); the command
line runs use the same tiny config (tests/tiny.py) without evaluation during training."""
import glob
import json
import logging
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import jax
import numpy as np
import pytest

import tests.toy_experiment  # noqa: F401 -- registers the experiment 'toy'
from diffgen import data, files
from diffgen.analysis.context import make_context
from diffgen.analysis.runner import run_experiments
from diffgen.errors import ConfigError, CorruptFileError, DataError, WorkdirError
from diffgen.training import checkpoints as checkpointing
from diffgen.training.loop import build, restore_trained, train_and_evaluate
from launch import sweep
from tests.test_main import assert_one_line_error
from tests.test_sweep_runner import CONFIG as SWEEP_CONFIG, results, write_plan
from tests.test_sweep_runner import fake  # noqa: F401 -- the fixture: runs are tests/fake_run.py
from tests import tiny
from tests.tiny import REPO, override_flags, tiny_digits_config

# behaviour, not numbers (runs compared bit for bit are computed alike): XLA's
# optimisations off, here and in the diffgen.main runs started (tests/conftest.py)
pytestmark = pytest.mark.usefixtures('unoptimized_module')

PLUGINS = "--config.analysis.plugins=('tests.toy_experiment','tests.pause_experiment')"
ANALYSIS = {'analysis.num_samples': 8, 'analysis.batch_size': 8, 'analysis.sampler_steps': 5,
            'analysis.quality.classifier_steps': 20}


@pytest.fixture(scope='module')
def data_dir(digits_data_dir):
    return digits_data_dir


@pytest.fixture(scope='module')
def trained(data_dir, tmp_path_factory):
    """A workdir of the tiny model trained 8 steps: checkpoints 4 and 8."""
    workdir = tmp_path_factory.mktemp('trained') / 'work'
    train_and_evaluate(tiny_digits_config(data_dir), workdir)
    return workdir


def copy_of(workdir, tmp_path, name='work'):
    return shutil.copytree(workdir, tmp_path / name)


def main_args(workdir, mode, data_dir, **overrides):
    return ['--config=configs/digits.py', f'--workdir={workdir}', f'--mode={mode}',
            *override_flags(data_dir, **overrides)]


def run_main(*args):
    """tests.tiny.run_main with a timeout that only a hang reaches, also on a busy shared
    machine (where one of these runs has taken over 5 minutes)."""
    return tiny.run_main(*args, timeout=900)


def start_main(*args, **env):
    """`python -m diffgen.main ARGS` started, its stdout and stderr merged and piped."""
    return subprocess.Popen([sys.executable, '-m', 'diffgen.main', *args], cwd=REPO, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED='1', **env),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def signal_at(proc, marker, signum, timeout=600):
    """Sends signum once proc prints a line (or logs a message) starting with marker;
    returns (exit status, its whole output)."""
    seen = []
    deadline = time.time() + timeout
    for line in proc.stdout:
        seen.append(line)
        if message(line).startswith(marker) or time.time() > deadline:
            break
    assert seen and message(seen[-1]).startswith(marker), ''.join(seen)[-3000:]
    proc.send_signal(signum)
    rest = proc.communicate(timeout=300)[0]
    return proc.returncode, ''.join(seen) + rest


def error_lines(output):
    return [l for l in output.splitlines() if l.startswith('diffgen: ')]


# an absl log line: `W1202 23:05:00.123456 12345 checkpoints.py:240] message`
ABSL_LINE = re.compile(r'^([DIWEF])\d{4} [\d:.]+ +\d+ ([\w.]+\.py):\d+\] ')


def message(line):
    """line without absl's prefix, if it is a log line."""
    return ABSL_LINE.sub('', line)


def logged(output, level, source):
    """The messages of output's absl log lines of level ('I', 'W', ...) from source (a file
    name such as 'checkpoints.py')."""
    return [message(l) for l in output.splitlines()
            if (m := ABSL_LINE.match(l)) and m.groups() == (level, source)]


def restores(workdir, data_dir, step):
    """The state of workdir's checkpoint of step, restored onto the tiny model."""
    config = tiny_digits_config(data_dir)
    state = build(config, data.load(config)).state
    manager = checkpointing.make_manager(workdir, 3)
    restored = checkpointing.restore_latest(manager, state, step=step)
    assert int(restored.step) == step
    return restored


def cut_short(checkpoint):
    """Truncates the largest data file of a checkpoint directory to half its size."""
    paths = sorted(glob.glob(os.path.join(checkpoint, '**', 'd', '*'), recursive=True),
                   key=os.path.getsize)
    with open(paths[-1], 'r+b') as f:
        f.truncate(os.path.getsize(paths[-1]) // 2)


def leaves_equal(a, b):
    return all(np.array_equal(np.asarray(x), np.asarray(y))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


# --- damaged files diffgen wrote ----------------------------------------------------------

def test_damaged_config_json_is_one_line_and_the_checkpoints_stay(trained, data_dir, tmp_path):
    workdir = copy_of(trained, tmp_path)
    good = (workdir / 'config.json').read_text()
    (workdir / 'config.json').write_text(good[:len(good) // 2])   # a write cut short
    result = run_main(*main_args(workdir, 'train', data_dir, **{'training.num_steps': 12}))
    assert_one_line_error(result, f'{workdir}/config.json is damaged', 'new --workdir')
    assert checkpointing.finished_steps(workdir) == [4, 8]
    restores(workdir, data_dir, 8)
    (workdir / 'config.json').write_text(good)   # put back: the workdir resumes
    checkpointing.check_compatible(workdir, tiny_digits_config(data_dir))


def test_damaged_report_json_names_it_and_the_rerun_completes(trained, data_dir, tmp_path):
    workdir = copy_of(trained, tmp_path)
    (workdir / 'report').mkdir()
    (workdir / 'report' / 'report.json').write_text('{"toy": {"num_train": 17')  # cut short
    config = tiny_digits_config(data_dir, **ANALYSIS)
    ctx = make_context(config, str(workdir), restore_trained(config, workdir))
    with pytest.raises(CorruptFileError, match=f'{workdir}/report/report.json is damaged.*'
                                               'delete it'):
        run_experiments(ctx, ['toy'])
    (workdir / 'report' / 'report.json').unlink()
    run_experiments(ctx, ['toy'])
    numbers = json.loads((workdir / 'report' / 'report.json').read_text())
    assert numbers['toy']['provenance']['step'] == 8


def test_damaged_eval_csv_names_it_and_the_checkpoints_stay(trained, data_dir, tmp_path):
    workdir = copy_of(trained, tmp_path)
    (workdir / 'eval.csv').write_text('step,loss_train\n4,0.97\nx8,0.9\n')  # overwritten
    config = tiny_digits_config(data_dir, **{'training.num_steps': 12})
    with pytest.raises(CorruptFileError, match=f'{workdir}/eval.csv is damaged.*delete it'):
        train_and_evaluate(config, workdir)
    assert checkpointing.finished_steps(workdir) == [4, 8]
    restores(workdir, data_dir, 8)


def test_damaged_json_and_npz_readers_name_the_file(tmp_path):
    """files.read_json and files.load_npz (report.json, config.json, training_set.json, the
    quality classifier's cache): a file cut short is one CorruptFileError naming it."""
    path = tmp_path / 'a.json'
    for text in ('{"a": 1', '', '[1, 2]'):
        path.write_text(text)
        with pytest.raises(CorruptFileError, match=f'{path} is damaged.*do this'):
            files.read_json(str(path), remedy='do this')
    npz = tmp_path / 'a.npz'
    files.save_npz(str(npz), x=np.arange(1000.0))
    whole = npz.read_bytes()
    assert np.array_equal(files.load_npz(str(npz))['x'], np.arange(1000.0))
    for cut in (len(whole) // 2, len(whole) - 30):
        npz.write_bytes(whole[:cut])
        with pytest.raises(CorruptFileError, match=f'{npz} is damaged'):
            files.load_npz(str(npz))


# --- checkpoints --------------------------------------------------------------------------

def test_checkpoint_cut_short_is_skipped_for_the_one_before(trained, data_dir, tmp_path):
    """The newest checkpoint cannot be read: training says so, sets it aside, resumes from
    the one before and completes."""
    workdir = copy_of(trained, tmp_path)
    cut_short(workdir / 'checkpoints' / '8')
    result = run_main(*main_args(workdir, 'train', data_dir, **{'training.num_steps': 12}))
    assert result.returncode == 0, result.stderr[-3000:]
    warnings = logged(result.stderr, 'W', 'checkpoints.py')
    assert warnings[0].startswith(f'checkpoint 8 in {workdir}/checkpoints '
                                  'cannot be restored ('), warnings
    assert f'moved the checkpoint of step 8 to {workdir}/skipped_checkpoints/8' in warnings[1]
    assert 'resumed from step 4 ' in result.stderr   # (resuming is exact: tests/test_train.py)
    assert checkpointing.finished_steps(workdir) == [4, 8, 12]
    restores(workdir, data_dir, 12)


def test_unfinished_checkpoint_does_not_count(trained, data_dir, tmp_path):
    """A save cut short leaves a temporary directory: Orbax does not count it, so neither a
    restore nor 'has a checkpoint' sees it."""
    workdir = copy_of(trained, tmp_path)
    shutil.copytree(workdir / 'checkpoints' / '8',
                    workdir / 'checkpoints' / '12.orbax-checkpoint-tmp-1795857419')
    assert checkpointing.finished_steps(workdir) == [4, 8]
    restores(workdir, data_dir, 8)
    shutil.rmtree(workdir / 'checkpoints' / '4')
    shutil.rmtree(workdir / 'checkpoints' / '8')
    assert not checkpointing.has_checkpoint(workdir)
    with pytest.raises(WorkdirError, match=f'no checkpoint in {workdir}; run --mode=train'):
        restore_trained(tiny_digits_config(data_dir), workdir)


# --- the workdir lock ---------------------------------------------------------------------

def test_a_second_run_on_a_workdir_exits_2_naming_the_first(trained, data_dir, tmp_path):
    workdir = copy_of(trained, tmp_path)
    with files.workdir_lock(str(workdir)):   # this process is the first run
        result = run_main(*main_args(workdir, 'train', data_dir, **{'training.num_steps': 12}))
    assert_one_line_error(result, f'{workdir} is in use by pid {os.getpid()} on this host',
                          'another --workdir')
    assert checkpointing.finished_steps(workdir) == [4, 8]
    assert not (workdir / files.LOCK).exists()   # released by its holder


def test_a_stale_lock_is_taken_over(tmp_path, caplog):
    gone = subprocess.Popen([sys.executable, '-c', 'pass'])
    gone.wait()   # a run killed with its lock in place
    lock = tmp_path / files.LOCK
    lock.write_text(json.dumps({'host': socket.gethostname(), 'pid': gone.pid, 'since': 'x'}))
    with files.workdir_lock(str(tmp_path)):
        assert json.loads(lock.read_text())['pid'] == os.getpid()
    assert f'taking over the stale lock {lock} of pid {gone.pid}' in caplog.text   # a warning
    assert not lock.exists()


def test_a_stale_lock_another_rerun_took_over_meanwhile_is_not_deleted(tmp_path, monkeypatch):
    """Two reruns meet the same stale lock: the one that took it over first has written its
    own lock by the time the other would delete the stale one; that fresh lock stays and the
    second rerun meets it (here: held on another host, so it stops with the holder named)."""
    gone = subprocess.Popen([sys.executable, '-c', 'pass'])
    gone.wait()
    lock = tmp_path / files.LOCK
    lock.write_text(json.dumps({'host': socket.gethostname(), 'pid': gone.pid, 'since': 'x'}))
    fresh = json.dumps({'host': 'node-7', 'pid': 1, 'since': 'y'})
    state = files._holder_state

    def first_rerun_wins(path, holder):
        out = state(path, holder)
        if holder['pid'] == gone.pid:   # the other rerun takes the stale lock over now
            lock.write_text(fresh)
        return out
    monkeypatch.setattr(files, '_holder_state', first_rerun_wins)
    with pytest.raises(WorkdirError, match='pid 1 on host node-7'):
        with files.workdir_lock(str(tmp_path)):
            pass
    assert lock.read_text() == fresh


def test_a_lock_held_on_another_host_names_it(tmp_path):
    (tmp_path / files.LOCK).write_text(json.dumps({'host': 'node-7', 'pid': 1, 'since': 'x'}))
    with pytest.raises(WorkdirError, match=f'pid 1 on host node-7.*delete {tmp_path}/'):
        with files.workdir_lock(str(tmp_path)):
            pass
    (tmp_path / files.LOCK).write_text('{"host": "node-7", "pi')
    with pytest.raises(CorruptFileError, match=f'{tmp_path}/{files.LOCK} is damaged'):
        with files.workdir_lock(str(tmp_path)):
            pass


def test_lock_holder_names_the_holder_and_whether_it_runs(tmp_path):
    assert files.lock_holder(str(tmp_path)) is None                      # no lock
    with files.workdir_lock(str(tmp_path)):
        held = files.lock_holder(str(tmp_path))
    assert (held['host'], held['pid'], held['alive']) == (socket.gethostname(), os.getpid(), True)
    assert held['path'] == str(tmp_path / files.LOCK)
    gone = subprocess.Popen([sys.executable, '-c', 'pass'])
    gone.wait()
    (tmp_path / files.LOCK).write_text(json.dumps({'host': socket.gethostname(), 'pid': gone.pid}))
    assert files.lock_holder(str(tmp_path))['alive'] is False             # killed: stale
    (tmp_path / files.LOCK).write_text(json.dumps({'host': 'node-7', 'pid': 1, 'since': 'x'}))
    assert files.lock_holder(str(tmp_path))['alive'] is None              # cannot be asked
    (tmp_path / files.LOCK).write_text('{"host": "node-7", "pi')
    assert files.lock_holder(str(tmp_path)) is None                       # diffgen.main says


def test_a_failed_run_leaves_no_workdir_behind(data_dir, tmp_path):
    workdir = tmp_path / 'new'
    with pytest.raises(DataError):
        with files.workdir_lock(str(workdir)):
            raise DataError('the run failed before writing anything')
    assert not workdir.exists()


# --- resuming ---------------------------------------------------------------------------

@pytest.mark.parametrize('overrides,changed', [
    ({'training.objective': 'gap'}, 'training.objective'),
    ({'training.batch_size': 32}, 'training.batch_size'),
    ({'optim.beta2': 0.99}, 'optim.beta2'),
    ({'diffusion.schedule': 'cosine'}, 'diffusion.schedule'),
    ({'data.num_heldout': 32}, 'data.num_heldout'),
    ({'model.ch': 16}, 'model.ch'),
    ({'seed': 1}, 'seed'),
])
def test_resume_refuses_a_change_of_what_the_model_is(trained, data_dir, overrides, changed):
    """Refused untouched: the checkpoints and config.json stay as they were (diffgen.main
    tells a WorkdirError as one line, exit status 2: test_a_second_run_on_a_workdir_...)."""
    config_before = (trained / 'config.json').read_text()
    config = tiny_digits_config(data_dir, **{'training.num_steps': 12, **overrides})
    with pytest.raises(WorkdirError, match=f'incompatible config.*{changed}'):
        train_and_evaluate(config, trained)
    assert checkpointing.finished_steps(trained) == [4, 8]
    assert (trained / 'config.json').read_text() == config_before


def test_resume_checks_the_gap_objectives_options_when_it_is_used(trained, data_dir,
                                                                   tmp_path):
    workdir = copy_of(trained, tmp_path)
    gap = {'training.objective': 'gap', 'training.gap_max_k': 10}
    stored = tiny_digits_config(data_dir, **gap).to_dict()
    (workdir / 'config.json').write_text(json.dumps(stored, default=list))
    checkpointing.check_compatible(workdir, tiny_digits_config(data_dir, **gap))
    with pytest.raises(WorkdirError, match=r'training.gap_max_k: 10 -> 50'):
        checkpointing.check_compatible(
            workdir, tiny_digits_config(data_dir, **{**gap, 'training.gap_max_k': 50}))


def test_a_config_json_from_before_a_key_existed_still_resumes(trained, data_dir, tmp_path,
                                                                caplog):
    """A key added to diffgen after a run was written (here model.init_from) is absent from
    that run's config.json: it held the default then (configs/default.py), so the run
    resumes, and its config.json is written whole again. The default is not a wildcard: a
    value other than it is still a change."""
    caplog.set_level(logging.INFO)   # 'resumed from step' is an absl INFO message
    workdir = copy_of(trained, tmp_path)
    stored = json.loads((workdir / 'config.json').read_text())
    del stored['model']['init_from']
    (workdir / 'config.json').write_text(json.dumps(stored))
    with pytest.raises(WorkdirError, match="incompatible config.*model.init_from: '' -> 'x'"):
        checkpointing.check_compatible(
            workdir, tiny_digits_config(data_dir, **{'model.init_from': 'x'}))
    state = train_and_evaluate(tiny_digits_config(data_dir, **{'training.num_steps': 12}),
                               workdir)
    assert 'resumed from step 8 ' in caplog.text
    assert int(state.step) == 12 and checkpointing.finished_steps(workdir) == [4, 8, 12]
    assert json.loads((workdir / 'config.json').read_text())['model']['init_from'] == ''


def test_resume_refuses_a_changed_training_set(data_dir, tmp_path):
    """The npz file's contents changed under the same config: a new training set."""
    rng = np.random.default_rng(0)
    path = tmp_path / 'mine.npz'
    np.savez(path, images=rng.integers(0, 256, (64, 8, 8, 1), dtype=np.uint8))
    workdir = tmp_path / 'work'
    source = {'data.source': f'npz:{path}', 'data.num_heldout': 0}
    train_and_evaluate(tiny_digits_config(data_dir, **{'training.num_steps': 4, **source}),
                       workdir)
    np.savez(path, images=rng.integers(0, 256, (64, 8, 8, 1), dtype=np.uint8))
    result = run_main(*main_args(workdir, 'train', data_dir, **source))
    assert_one_line_error(result, f'the checkpoints in {workdir} were trained on another '
                          'training set', f'npz:{path}')
    assert checkpointing.finished_steps(workdir) == [4]


def test_num_steps_below_the_checkpoint_says_so(trained, data_dir, tmp_path):
    workdir = copy_of(trained, tmp_path)
    config_before = (workdir / 'config.json').read_text()
    result = run_main(*main_args(workdir, 'all', data_dir, **{'training.num_steps': 4}))
    assert_one_line_error(result, 'training.num_steps=4 is below the step 8 of the checkpoint')
    assert (workdir / 'config.json').read_text() == config_before
    assert checkpointing.finished_steps(workdir) == [4, 8]
    assert not (workdir / 'report').exists()


# --- signals outside training -----------------------------------------------------------

def test_sigterm_during_analysis_keeps_finished_sections_and_the_rerun_continues(
        trained, data_dir, tmp_path):
    workdir = copy_of(trained, tmp_path)
    args = [*main_args(workdir, 'analyze', data_dir, **ANALYSIS), PLUGINS,
            "--config.analysis.experiments=('toy','pause')"]
    status, output = signal_at(start_main(*args, DIFFGEN_TEST_PAUSE='600'), 'pause: started',
                               signal.SIGTERM)
    assert status == 128 + signal.SIGTERM, output[-3000:]
    assert error_lines(output) == [
        f'diffgen: stopped by SIGTERM: the finished report sections are kept in '
        f'{workdir}/report/report.json; rerun the same command to continue'], output[-3000:]
    numbers = json.loads((workdir / 'report' / 'report.json').read_text())
    assert set(numbers) == {'toy'} and numbers['toy']['provenance']['step'] == 8
    assert not (workdir / files.LOCK).exists()

    rerun = run_main(*args)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert 'analysis 1/2: toy kept' in rerun.stderr   # absl INFO messages of diffgen
    assert 'analysis 2/2: pause ...' in rerun.stderr
    after = json.loads((workdir / 'report' / 'report.json').read_text())
    assert after['toy'] == numbers['toy'] and after['pause']['num_samples'] == 8
    report_md = (workdir / 'report' / 'report.md').read_text()
    assert '## Toy: ' in report_md and '## Pause: ' in report_md


def test_sigint_during_sampling_is_one_line_and_writes_nothing(trained, data_dir, tmp_path):
    workdir = copy_of(trained, tmp_path)
    args = main_args(workdir, 'sample', data_dir, **{'sampling.method': 'ddpm',
                                                     'sampling.num_steps': 0,
                                                     'sampling.num_samples': 64})
    status, output = signal_at(start_main(*args), 'sampling 64 samples', signal.SIGINT)
    assert status == 128 + signal.SIGINT, output[-3000:]
    assert error_lines(output) == [
        'diffgen: stopped by SIGINT: the checkpoints are kept, no samples were written; '
        'rerun the same command to continue'], output[-3000:]
    assert not (workdir / 'samples').exists()
    assert not (workdir / files.LOCK).exists()
    restores(workdir, data_dir, 8)


def test_sigterm_during_compare_is_one_line_and_writes_nothing(trained, data_dir, tmp_path):
    a, b = copy_of(trained, tmp_path, 'a'), copy_of(trained, tmp_path, 'b')
    args = [*main_args(a, 'compare', data_dir, **ANALYSIS), f'--other_workdir={b}']
    status, output = signal_at(start_main(*args), 'compare: ', signal.SIGTERM)
    assert status == 128 + signal.SIGTERM, output[-3000:]
    assert error_lines(output) == [
        'diffgen: stopped by SIGTERM: nothing of the comparison was written; rerun the same '
        'command to continue'], output[-3000:]
    assert not (a / 'report' / 'compare').exists()
    assert not (a / files.LOCK).exists()


# --- a full disk --------------------------------------------------------------------------

# diffgen.main in a process whose local file writes through etils.epath (diffgen.files, and
# Orbax's metadata files) fail with ENOSPC where FULL_WHERE (an expression of the path p)
# holds: a full disk, without filling one.
INJECT_ENOSPC = '''
import errno, sys
from etils import epath
from absl import app
Local = type(epath.Path('/'))
def failing(write):
    def full(self, data, *args, **kwargs):
        p = str(self)
        if FULL_WHERE:
            raise OSError(errno.ENOSPC, 'No space left on device')
        return write(self, data, *args, **kwargs)
    return full
Local.write_bytes, Local.write_text = failing(Local.write_bytes), failing(Local.write_text)
from diffgen import main
sys.argv[0] = 'diffgen.main'
app.run(main.main, flags_parser=main.parse_flags)
'''


def run_main_disk_full(where, *args):
    """run_main(*args) with every write whose path p makes `where` true failing: ENOSPC."""
    script = INJECT_ENOSPC.replace('FULL_WHERE', where)
    return subprocess.run([sys.executable, '-c', script, *args], cwd=REPO,
                          env=dict(os.environ, PYTHONUNBUFFERED='1'), capture_output=True,
                          text=True, timeout=900)


def test_disk_full_stops_training_at_the_failed_save(trained, data_dir, tmp_path):
    """The save of step 12 fails in the background, while training goes on (the disk is
    full for the metadata Orbax writes beside the arrays, while their writes are in flight):
    the run stops at the latest at the next save, with one line naming the checkpoint and
    the reason (no traceback of the writes left in flight); the half-written checkpoint is
    removed, checkpoint 8 restores and, space freed, the rerun resumes from it."""
    workdir = copy_of(trained, tmp_path)
    args = main_args(workdir, 'train', data_dir, **{'training.num_steps': 2000,
                                                    'training.checkpoint_every': 4})
    result = run_main_disk_full("'/12.orbax-checkpoint-tmp' in p and "
                                "'/default.orbax-checkpoint-tmp/' in p", *args)
    assert_one_line_error(result, f'cannot save checkpoint 12 in {workdir}/checkpoints: No '
                          'space left on device', 'checkpoint of step 8 is kept')
    reached = max(int(l.split()[2].split('/')[0]) for l in result.stdout.splitlines()
                  if l.startswith('train step '))
    assert 12 <= reached <= 16, 'the run went on past the next save after the failed one'
    assert sorted(os.listdir(workdir / 'checkpoints')) == ['4', '8']   # no half checkpoint
    assert not (workdir / files.LOCK).exists()
    restores(workdir, data_dir, 8)

    rerun = run_main(*[a for a in args if 'num_steps' not in a],
                     '--config.training.num_steps=16')
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert 'resumed from step 8 ' in rerun.stderr
    assert checkpointing.finished_steps(workdir) == [8, 12, 16]
    restores(workdir, data_dir, 16)


def test_disk_full_at_a_file_write_is_one_line_and_loses_nothing(trained, data_dir,
                                                                 tmp_path):
    """config.json, written at every start, is the first file diffgen writes."""
    workdir = copy_of(trained, tmp_path)
    config_before = (workdir / 'config.json').read_text()
    args = main_args(workdir, 'train', data_dir, **{'training.num_steps': 12})
    result = run_main_disk_full("'/.config.json.tmp' in p", *args)
    assert_one_line_error(result, f'{workdir}/config.json: No space left on device',
                          'free space')
    assert (workdir / 'config.json').read_text() == config_before
    assert not glob.glob(str(workdir / '.config.json.tmp*'))
    assert checkpointing.finished_steps(workdir) == [4, 8]
    restores(workdir, data_dir, 8)


# --- npz input ----------------------------------------------------------------------------

def npz_config(data_dir, path, **overrides):
    return tiny_digits_config(data_dir, **{'data.source': f'npz:{path}', 'data.num_heldout': 0,
                                           'training.num_steps': 4, **overrides})


def test_npz_width_that_does_not_halve_is_one_line(data_dir, tmp_path):
    path = tmp_path / 'wide.npz'
    np.savez(path, images=np.zeros((32, 8, 9, 1), np.uint8))   # ch_mult (1, 2): halved once
    with pytest.raises(ConfigError, match=r'8x9 images of npz:.*cannot be halved 1 times.*'
                                          'multiples of 2'):
        train_and_evaluate(npz_config(data_dir, path), tmp_path / 'work')
    assert not (tmp_path / 'work').exists()


def test_npz_cut_short_is_one_line(data_dir, tmp_path):
    path = tmp_path / 'mine.npz'
    np.savez(path, images=np.random.default_rng(0).integers(0, 256, (64, 8, 8), np.uint8))
    whole = path.read_bytes()
    path.write_bytes(whole[:len(whole) * 2 // 3])   # a copy cut short
    workdir = tmp_path / 'work'
    result = run_main(*main_args(workdir, 'train', data_dir, **{
        'data.source': f'npz:{path}', 'data.num_heldout': 0}))
    assert_one_line_error(result, f'cannot read {path} as .npz (cut short or damaged?)')
    assert not workdir.exists()


def test_npz_float_range_is_decided_by_a_stated_rule(data_dir, tmp_path):
    """[0, 1] floats with round-off below 0 stay [0, 1]; a minimum <= -0.5 is [-1, 1]; a
    minimum in between is ambiguous: an error, never a guess."""
    pixels = np.random.default_rng(0).integers(0, 256, (64, 8, 8, 1)).astype(np.uint8)
    path = tmp_path / 'floats.npz'
    unit = pixels / 255.0
    unit[0, 0, 0, 0] = -0.001                 # round-off of a pixel 0
    np.savez(path, images=unit)
    loaded = data.load(npz_config(data_dir, path))
    assert rows(loaded.train_images) == rows(np.where(unit < 0, 0, pixels))
    np.savez(path, images=pixels / 127.5 - 1.0)
    assert rows(data.load(npz_config(data_dir, path)).train_images) == rows(pixels)
    unit[0, 0, 0, 0] = -0.2
    np.savez(path, images=unit)
    with pytest.raises(DataError, match=r'neither \[0, 1\].*nor clearly \[-1, 1\].*uint8'):
        data.load(npz_config(data_dir, path))


def rows(images):
    return sorted(map(bytes, images))


# --- sweeps (launch/sweep.py; each run is tests/fake_run.py, as in tests/test_sweep_runner.py) --

def test_sweep_rerun_appends_the_log_and_never_counts_a_failed_runs_old_report(fake):
    """A run finished; the sweep is rerun with longer training and that run fails: its log
    holds both attempts (appended, not reopened for writing), its old report stays on disk
    but, stale, never reaches results.csv, and the sweep says the run failed."""
    write_plan(fake, '16')
    runs, _ = sweep.sweep(SWEEP_CONFIG, str(fake / 'sweep'), '16', 'all', 'fake')
    assert runs[0].status == 'ok' and [r['run'] for r in results(fake)] == ['num_train_16']
    extra = ['training.num_steps=800']
    write_plan(fake, '16', fail=(16,))
    runs, summary = sweep.sweep(SWEEP_CONFIG, str(fake / 'sweep'), '16', 'all', 'fake', extra)
    assert runs[0].status == 'failed (exit 1)'
    assert results(fake) == [] and summary is None
    assert (fake / 'sweep' / 'num_train_16' / 'report' / 'report.json').exists()
    log = (fake / 'sweep' / 'num_train_16.log').read_text()
    assert log.count('--- sweep: start') == 2
    assert log.index('fake run: done') < log.index('fake run: failing as planned')


# --- SIGKILL at random moments (acceptance: nothing is lost, the end is the same) ----------

# A smoke-sized --mode=all: 16 training steps, the final sampling, and three experiments: E1,
# E2 and E5 (which trains four models of its own, resumable like the run, of
# analysis.e5.num_steps steps: by default training.num_steps).
CRASH = {'training.num_steps': 16, 'training.checkpoint_every': 4, 'data.num_train': 64,
         'diffusion.num_timesteps': 100, 'analysis.num_samples': 16, 'analysis.batch_size': 16,
         'analysis.sampler_steps': 5, 'analysis.quality.classifier_steps': 20}
CRASH_FLAGS = ["--config.analysis.experiments=('e1','e2','e5')"]
CRASH_EXPERIMENTS = {'e1', 'e2', 'e5'}
# The phases a kill lands in, by the line that starts each: training, the final sampling,
# E2, E5 up to its second training, and from E5's second training (seed 2, after one
# finished E5 model) to the end (E1's resumption is E2's).
PHASES = ('train step 4/16', 'sampling ', 'analysis 2/3: e2 ...', 'analysis 3/3: e5 ...',
          'e5: half b, seed 2')


def run_logged(args, log_path, kill_at=None):
    """Runs diffgen.main, writing its output with the seconds since its start to log_path;
    kill_at = (phase, delay): SIGKILL delay seconds after its first line starting with phase.
    Returns (exit status, [(seconds, line)])."""
    proc = subprocess.Popen([sys.executable, '-m', 'diffgen.main', *args], cwd=REPO, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED='1'),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    start, lines, timer = time.time(), [], None
    with open(log_path, 'w') as log:
        for line in proc.stdout:
            lines.append((time.time() - start, line))
            log.write(f'{lines[-1][0]:8.1f} {line}')
            log.flush()
            if kill_at and timer is None and message(line).startswith(kill_at[0]):
                timer = threading.Timer(kill_at[1], proc.kill)
                timer.start()
    proc.wait()
    if timer is not None:
        timer.cancel()
    return proc.returncode, lines


@pytest.mark.slow
def test_sigkill_at_random_moments_across_mode_all_ends_as_an_uninterrupted_run(data_dir,
                                                                                  tmp_path):
    """Kill i lands at a random moment of phase i (PHASES): a delay drawn uniformly over
    the time the uninterrupted run spent between that phase's first line and the next
    phase's. Each rerun resumes (checkpoints, finished report sections); the last one
    completes with the uninterrupted run's parameters, samples and report."""
    args = lambda w: [*main_args(w, 'all', data_dir, **CRASH), *CRASH_FLAGS]
    status, lines = run_logged(args(tmp_path / 'straight'), tmp_path / 'straight.log')
    assert status == 0, ''.join(l for _, l in lines)[-3000:]
    starts = [next(t for t, l in lines if message(l).startswith(p)) for p in PHASES]
    starts.append(lines[-1][0])

    rng = random.Random(12)
    killed, landed = tmp_path / 'killed', []
    for i, phase in enumerate(PHASES):
        delay = rng.uniform(0, starts[i + 1] - starts[i])
        status, out = run_logged(args(killed), tmp_path / f'kill_{i}.log', (phase, delay))
        landed.append((status, phase, out[-1][1].strip() if out else ''))
    print('\n'.join(map(str, landed)))   # where each kill landed (pytest -s)
    assert sum(status == -signal.SIGKILL for status, _, _ in landed) >= len(PHASES) // 2, landed
    status, out = run_logged(args(killed), tmp_path / 'final.log')
    assert status == 0, ''.join(l for _, l in out)[-3000:]

    config = tiny_digits_config(data_dir, **CRASH)
    target = build(config, data.load(config)).state
    ends = [checkpointing.restore_latest(checkpointing.make_manager(w, 3), target)
            for w in (tmp_path / 'straight', killed)]
    assert int(ends[0].step) == int(ends[1].step) == 16
    assert leaves_equal(ends[0], ends[1])   # params, EMA params, optimiser state
    reports = [json.loads((w / 'report' / 'report.json').read_text())
               for w in (tmp_path / 'straight', killed)]
    assert set(reports[0]) == CRASH_EXPERIMENTS
    assert reports[0] == reports[1]
    samples = [np.load(w / 'samples' / 'samples.npz')['samples']
               for w in (tmp_path / 'straight', killed)]
    np.testing.assert_array_equal(samples[0], samples[1])
