"""Faults of runs, workdirs and data that issue #24 found (each tried with the tiny config,
as a user meets it, through `python -m diffgen.main`): two runs preparing a fresh data dir at
once, a workdir lock whose pid was taken again, --workdir or data.data_dir naming a file, a
config.json of the right syntax and the wrong shape, degenerate npz images, a damaged
training_set.json. Each either recovers with nothing lost or ends in exit status 2 with one
`diffgen: error:` line as stderr's last (no traceback) that names the file or key and what
to do, and leaves what was there as it was. Variants of a fault beside the one tried on the
command line are checked in this process (the same code, the same message).

The refused resumes use a stand-in workdir (stand_in_workdir: the tiny run's config.json
and training_set.json beside a checkpoint of a stand-in pytree), since they stop before any
checkpoint is restored; the two tests that train (the twin runs on a fresh data dir, and a
resume after a lock is taken over) are slow.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap

import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import default
from diffgen import data, files
from diffgen.analysis import compare
from diffgen.data.pixels import ImageTransform
from diffgen.data.sources import npz_pool
from diffgen.errors import CorruptFileError, DataError, WorkdirError
from diffgen.training import checkpoints as checkpointing
from diffgen.training.loop import training_set_fingerprint
from tests import tiny
from tests.tiny import REPO, override_flags, tiny_digits_config

# behaviour, not numbers: XLA's optimisations off, here and in the runs started
pytestmark = pytest.mark.usefixtures('unoptimized_module')

# A run of `python -m diffgen.main ARGV` that imports first, then waits for the file GO, so
# that two of them start their work at the same moment.
AT_ONCE = textwrap.dedent('''
    import os, runpy, sys, time
    import jax, tensorflow_datasets  # noqa: F401 -- the slow imports, before the start
    go, sys.argv = sys.argv[1], ['diffgen.main', *sys.argv[2:]]
    print('ready', flush=True)
    while not os.path.exists(go):
        time.sleep(0.01)
    runpy.run_module('diffgen.main', run_name='__main__', alter_sys=True)
''')


@pytest.fixture(scope='module')
def module_dir(tmp_path_factory):
    return tmp_path_factory.mktemp('faults_workdir')


def flags(workdir, data_dir, cache='auto', **overrides):
    """diffgen.main's arguments for training the tiny config in workdir, with the
    compilation cache `cache` ('auto': the data dir's)."""
    return ['--config=configs/digits.py', f'--workdir={workdir}', '--mode=train',
            f'--config.training.compile_cache_dir={cache}',
            *override_flags(data_dir, **overrides)]


def run_main(*args):
    return tiny.run_main(*args, timeout=900)


def assert_one_line(result, *fragments):
    """Exit status 2, stderr's last line the only `diffgen: error:` line, no traceback, and
    that line holds every fragment; returns it."""
    stderr = result.stderr
    assert result.returncode == 2, stderr[-3000:]
    assert 'Traceback' not in stderr, stderr[-3000:]
    lines = stderr.strip().splitlines()
    errors = [l for l in lines if l.startswith('diffgen: error:')]
    assert errors == lines[-1:], stderr[-3000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
    return errors[0]


def contents(directory):
    """{relative path: bytes} of every file under directory (a symlink's target name)."""
    found = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            found[os.path.relpath(path, directory)] = (
                os.readlink(path) if os.path.islink(path) else open(path, 'rb').read())
    return found


def stand_in_workdir(workdir, config):
    """Makes workdir a stand-in for a run of config that reached step 8: a checkpoint of
    step 8 holding a stand-in pytree (a resume reads config.json and training_set.json
    before it restores anything), and the run's config.json and training_set.json.
    Returns the training set's fingerprint."""
    fingerprint = training_set_fingerprint(data.load(config))
    manager = checkpointing.make_manager(str(workdir), 3)
    manager.save(8, args=ocp.args.StandardSave({'x': np.zeros(2)}))
    manager.wait_until_finished()
    checkpointing.write_config(str(workdir), config, fingerprint)
    assert checkpointing.finished_steps(workdir) == [8]
    return fingerprint


@pytest.fixture(scope='module')
def stand_in(digits_data_dir, module_dir):
    workdir = module_dir / 'stand_in'
    stand_in_workdir(workdir, tiny_digits_config(digits_data_dir))
    return workdir, digits_data_dir


@pytest.fixture
def resumable(stand_in, tmp_path):
    """A copy of the stand-in workdir, and the data dir."""
    workdir, data_dir = stand_in
    return shutil.copytree(workdir, tmp_path / 'work'), data_dir


@pytest.fixture(scope='module')
def twins(module_dir):
    """Two tiny runs (8 steps, checkpoints 4 and 8) started at the same moment on a fresh
    data dir, as `launch.sweep --parallel=2` starts them on a new machine: (data dir,
    compilation cache, [(workdir, exit status, stderr)])."""
    data_dir, cache, go = module_dir / 'data', module_dir / 'cache', module_dir / 'go'
    runs = []
    for name in ('a', 'b'):
        workdir = module_dir / name
        runs.append((workdir, subprocess.Popen(
            [sys.executable, '-c', AT_ONCE, str(go), *flags(workdir, data_dir, cache)],
            cwd=REPO, env=dict(os.environ, PYTHONUNBUFFERED='1'), text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)))
    for _, process in runs:
        assert process.stdout.readline() == 'ready\n', process.communicate()[1][-3000:]
    go.touch()
    ended = [(workdir, process, process.communicate(timeout=900)) for workdir, process in runs]
    return data_dir, cache, [(w, p.returncode, err) for w, p, (_, err) in ended]


# --- a fresh data dir, two runs at once -----------------------------------------------------

@pytest.mark.slow
def test_two_runs_preparing_a_fresh_data_dir_at_once_both_finish(twins):
    data_dir, _, runs = twins
    for workdir, status, stderr in runs:
        assert status == 0, stderr[-3000:]
        assert 'Traceback' not in stderr and 'diffgen: error' not in stderr
        assert checkpointing.finished_steps(workdir) == [4, 8]
    prepared = data_dir / 'diffgen_digits'
    assert [p.name for p in prepared.iterdir() if not p.name.startswith('.')] == ['1.0.0']
    # both trained on the same training set
    fingerprints = {json.loads((w / 'training_set.json').read_text())['fingerprint']
                    for w, _, _ in runs}
    assert len(fingerprints) == 1


# --- the workdir lock ---------------------------------------------------------------------

@pytest.fixture
def live_pid():
    """A process that runs while the test does (a pid that is taken), ended afterwards."""
    process = subprocess.Popen(['sleep', '600'])
    yield process.pid
    process.kill()
    process.wait()


def write_lock(workdir, pid, **fields):
    lock = workdir / files.LOCK
    lock.write_text(json.dumps({'host': socket.gethostname(), 'pid': pid,
                                'since': '2025-01-02 03:04:05', **fields}))
    return lock


@pytest.mark.slow
def test_a_lock_whose_pid_was_taken_again_is_taken_over_and_the_run_resumes(twins, tmp_path,
                                                                          live_pid):
    """A run SIGKILLed with its lock in place; its pid now belongs to another process (one
    that started at another time than the lock records): the rerun takes the lock over,
    says so, and resumes from the last checkpoint."""
    data_dir, cache, runs = twins
    workdir = shutil.copytree(runs[0][0], tmp_path / 'work')
    start = files._start_time(live_pid)
    assert start is not None   # Linux: /proc/<pid>/stat
    lock = write_lock(workdir, live_pid, start=start - 1, boot_id=files._boot_id())
    result = run_main(*flags(workdir, data_dir, cache, **{'training.num_steps': 12}))
    assert result.returncode == 0, result.stderr[-3000:]
    assert (f'taking over the stale lock {lock} of pid {live_pid} (its pid now belongs to '
            'another process)') in result.stderr
    assert 'resumed from step 8 ' in result.stderr
    assert checkpointing.finished_steps(workdir) == [4, 8, 12]
    assert not lock.exists()    # released by the rerun


def test_a_lock_of_a_live_pid_without_a_start_time_names_the_file_to_delete(resumable,
                                                                          live_pid):
    """A lock that records no start time (of a diffgen before it did) and a pid that runs:
    whether that is the run cannot be told, so one line naming the lock file to delete if
    that run is gone; nothing changed."""
    workdir, data_dir = resumable
    lock = write_lock(workdir, live_pid)
    before = contents(workdir)
    result = run_main(*flags(workdir, data_dir, **{'training.num_steps': 12}))
    assert_one_line(result, f'{workdir} is in use by pid {live_pid} on this host',
                    'cannot be told', f'delete {lock} if that run is gone')
    assert contents(workdir) == before


def test_lock_states_of_a_pid_taken_again_or_this_very_rerun(tmp_path, live_pid, caplog):
    """files.lock_holder and workdir_lock in this process: a pid taken again by a process
    that started later is gone (verified); one recorded without a start time runs
    (unverified); this process's own pid in a lock it does not hold (a restarted container
    whose rerun got the dead run's pid) is gone and taken over."""
    start = files._start_time(live_pid)
    write_lock(tmp_path, live_pid, start=start + 1)
    held = files.lock_holder(str(tmp_path))
    assert (held['alive'], held['verified']) == (False, True)
    write_lock(tmp_path, live_pid, start=start, boot_id=files._boot_id())
    held = files.lock_holder(str(tmp_path))
    assert (held['alive'], held['verified']) == (True, True)
    with pytest.raises(WorkdirError, match=f'in use by pid {live_pid} on this host.*another '
                                           '--workdir$'):
        with files.workdir_lock(str(tmp_path)):
            pass
    write_lock(tmp_path, live_pid, start=start, boot_id='another boot')
    assert files.lock_holder(str(tmp_path))['alive'] is False
    write_lock(tmp_path, live_pid)
    held = files.lock_holder(str(tmp_path))
    assert (held['alive'], held['verified']) == (True, False)
    lock = write_lock(tmp_path, os.getpid(), start=1)
    with files.workdir_lock(str(tmp_path)):
        assert json.loads(lock.read_text())['pid'] == os.getpid()
        assert files.lock_holder(str(tmp_path))['alive'] is True   # held by this process now
    assert (f'taking over the stale lock {lock} of pid {os.getpid()} (this run has its pid '
            'now)') in caplog.text
    for damaged in ({'host': socket.gethostname(), 'pid': -1}, {'host': 'x', 'pid': 'x'}, [1]):
        lock.write_text(json.dumps(damaged))
        with pytest.raises(CorruptFileError, match=f'{lock} is damaged.*delete it'):
            with files.workdir_lock(str(tmp_path)):
                pass
        assert files.lock_holder(str(tmp_path)) is None


# --- --workdir and data.data_dir naming a file ---------------------------------------------

def test_workdir_naming_a_file_is_one_line_and_the_file_stays(tmp_path):
    path = tmp_path / 'notes.txt'
    path.write_text('a file of the user\n')
    result = run_main(*flags(path, tmp_path / 'data'))
    assert_one_line(result, f'--workdir {path} is a file, not a directory', 'name a directory')
    assert path.read_text() == 'a file of the user\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['notes.txt']


def test_workdir_below_a_file_is_one_workdir_error(tmp_path):
    path = tmp_path / 'notes.txt'
    path.write_text('a file of the user\n')
    with pytest.raises(WorkdirError, match=f'cannot create --workdir {path}/run: Not a '
                                           'directory.*name a directory'):
        with files.workdir_lock(str(path / 'run')):
            pass
    assert path.read_text() == 'a file of the user\n'


def test_data_dir_naming_a_file_is_one_line_and_the_file_stays(tmp_path):
    path = tmp_path / 'data'
    path.write_text('a file of the user\n')
    workdir = tmp_path / 'work'
    result = run_main('--config=configs/digits.py', f'--workdir={workdir}', '--mode=train',
                      *override_flags(path))
    assert_one_line(result, f'data.data_dir {path} is not a directory ({path} is a file)',
                    'name a directory')
    assert path.read_text() == 'a file of the user\n'
    assert sorted(p.name for p in tmp_path.iterdir()) == ['data']   # no workdir either


def test_data_dir_below_a_file_or_from_the_environment_names_what_set_it(tmp_path,
                                                                        monkeypatch):
    path = tmp_path / 'data'
    path.write_text('x')
    with pytest.raises(DataError, match=f'data.data_dir {path}/sub/dir is not a directory '
                                        f'\\({path} is a file\\)'):
        data.data_dir(str(path / 'sub' / 'dir'))
    monkeypatch.setenv('DIFFGEN_DATA_DIR', str(path))
    with pytest.raises(DataError, match=f'DIFFGEN_DATA_DIR {path} is not a directory'):
        data.data_dir('')
    assert data.data_dir(str(tmp_path / 'new' / 'dir')) == str(tmp_path / 'new' / 'dir')


# --- config.json of the wrong shape -------------------------------------------------------

WRONG_SHAPES = [
    # (what config.json holds: the whole text, or {dotted key: value} set in the run's own)
    ('{"training": "x"}', 'training is "x", not an object (a section)'),
    ({'model.ch_mult': 2}, 'model.ch_mult is 2, not a list'),
    ({'training.batch_size': '16'}, 'training.batch_size is "16", not an integer'),
    ({'training.batch_size': 16.5}, 'training.batch_size is 16.5, not an integer'),
    ({'optim.learning_rate': 'fast'}, 'optim.learning_rate is "fast", not a number'),
    ({'optim.ema_decay': True}, 'optim.ema_decay is true, not a number'),
    ({'optim.ema_warmup': 0}, 'optim.ema_warmup is 0, not true or false'),
    ({'data': None}, 'data is null, not an object (a section)'),
    ({'evaluation.evals': []}, 'evaluation.evals is [], not an object (a section)'),
    ({'data.source': ['digits']}, 'data.source is ["digits"], not a string'),
]


def wrong_shape(workdir, held):
    """Writes held (see WRONG_SHAPES) into workdir's config.json."""
    path = workdir / 'config.json'
    if isinstance(held, str):
        path.write_text(held)
        return
    path.write_text(json.dumps(tiny.set_keys(json.loads(path.read_text()), held), indent=2))


def test_config_json_of_the_wrong_shape_is_one_line_and_the_workdir_stays(resumable):
    """The issue's case: config.json `{"training": "x"}`."""
    workdir, data_dir = resumable
    held, problem = WRONG_SHAPES[0]
    wrong_shape(workdir, held)
    before = contents(workdir)
    result = run_main(*flags(workdir, data_dir, **{'training.num_steps': 12}))
    assert_one_line(result, f'{workdir}/config.json is damaged (not a diffgen config: '
                    f'{problem})', 'new --workdir', 'put back the config.json')
    assert contents(workdir) == before


@pytest.mark.parametrize('held,problem', WRONG_SHAPES)
def test_every_wrong_shape_of_config_json_names_the_key(resumable, held, problem):
    """check_compatible (the resume) and compare's reading of another workdir: one
    CorruptFileError naming the file and the key, whatever the shape."""
    workdir, data_dir = resumable
    wrong_shape(workdir, held)
    message = f'{workdir}/config.json is damaged (not a diffgen config: {problem})'
    with pytest.raises(CorruptFileError) as raised:
        checkpointing.check_compatible(workdir, tiny_digits_config(data_dir))
    assert str(raised.value).startswith(message) and '\n' not in str(raised.value)
    with pytest.raises(CorruptFileError, match='put back the config.json of the run'):
        compare.stored_config(str(workdir), str(data_dir))


def test_a_section_missing_from_config_json_held_its_defaults(resumable):
    """A section config.json lacks (written before diffgen had it, or dropped) is taken to
    have held its defaults, as a missing key is: the resume goes on where the run's values
    are the defaults, and names the keys where they are not."""
    workdir, data_dir = resumable
    config = tiny_digits_config(data_dir)
    stored = json.loads((workdir / 'config.json').read_text())
    assert stored['diffusion'] == json.loads(json.dumps(config.diffusion.to_dict()))
    for section in ('diffusion', 'model'):
        del stored[section]
    (workdir / 'config.json').write_text(json.dumps(stored))
    with pytest.raises(WorkdirError, match=r'incompatible config \(.*model\.ch: 64 -> 8; '):
        checkpointing.check_compatible(workdir, config)
    config.model = default.get_config().model   # the defaults (configs/default.py)
    checkpointing.check_compatible(workdir, config)


# --- npz images of degenerate shapes -------------------------------------------------------

def test_npz_images_of_zero_channels_is_one_line_and_the_file_stays(tmp_path):
    data_dir = tmp_path / 'data'
    path = tmp_path / 'mine.npz'
    np.savez(path, images=np.zeros((32, 8, 8, 0), np.uint8))
    saved = path.read_bytes()
    workdir = tmp_path / 'work'
    result = run_main('--config=configs/digits.py', f'--workdir={workdir}', '--mode=train',
                      *override_flags(data_dir, **{'data.source': f'npz:{path}',
                                                   'data.num_heldout': 0}))
    assert_one_line(result, f'{path}: "images" must be (N, H, W) or (N, H, W, C) with N, H, '
                    'W, C > 0, not (32, 8, 8, 0)')
    assert path.read_bytes() == saved
    assert sorted(p.name for p in tmp_path.iterdir()) == ['mine.npz']   # no workdir, no data dir


@pytest.mark.parametrize('images,problem', [
    (np.zeros((0, 8, 8), np.uint8), 'with N, H, W, C > 0, not (0, 8, 8, 1)'),
    (np.zeros((32, 0, 8, 1), np.uint8), 'with N, H, W, C > 0, not (32, 0, 8, 1)'),
    (np.zeros((32, 8), np.uint8), 'not (32, 8)'),
    (np.zeros((32,), np.uint8), 'not (32,)'),
    (np.zeros((), np.uint8), 'not ()'),
    (np.zeros((4, 8, 8, 1, 1), np.uint8), 'not (4, 8, 8, 1, 1)'),
    (np.zeros((4, 8, 8), bool), '"images" must be uint8, integers or floats, not bool'),
    (np.zeros((4, 8, 8), complex), 'not complex128'),
    (np.full((4, 8, 8), 'x'), 'not <U1'),
    (np.full((4, 8, 8), np.nan), 'float "images" must be finite'),
    (np.full((4, 8, 8), 2.0), 'must lie in [0, 1] or [-1, 1], found 2..2'),
    (np.full((4, 8, 8), 300, np.int32), 'must lie in 0..255, found 300..300'),
])
def test_npz_images_of_other_degenerate_shapes_and_types_are_one_data_error(tmp_path, images,
                                                                           problem):
    path = tmp_path / 'mine.npz'
    np.savez(path, images=images)
    with pytest.raises(DataError) as raised:
        npz_pool(str(path), ImageTransform(0, 0))
    message = str(raised.value)
    assert message.startswith(f'{path}') and problem in message and '\n' not in message


def changed_bytes(raw, offset, value):
    return raw[:offset] + bytes([value]) + raw[offset + 1:]


def test_npz_with_damaged_zip_fields_or_header_is_one_data_error(tmp_path):
    """Bytes changed where np.load raises neither OSError nor ValueError: the archive's
    compression method (NotImplementedError), its encryption flag (RuntimeError), an array
    header's closing bracket (tokenize.TokenError)."""
    path = tmp_path / 'mine.npz'
    np.savez(path, images=np.zeros((4, 8, 8), np.uint8))
    archive = path.read_bytes()
    entry = archive.rfind(b'PK\x01\x02')   # the central directory's entry of images.npy
    single = tmp_path / 'single.npy'
    np.save(single, np.zeros((4, 8, 8), np.uint8))
    array = single.read_bytes()
    for damaged in (changed_bytes(archive, entry + 10, 1), changed_bytes(archive, entry + 8, 1),
                    changed_bytes(array, array.index(b'}'), ord(' '))):
        path.write_bytes(damaged)
        with pytest.raises(DataError, match=f'cannot read {path} as .npz \\(cut short or '
                                            'damaged\\?\\)'):
            npz_pool(str(path), ImageTransform(0, 0))


def test_a_held_out_set_that_takes_every_example_is_one_data_error(tmp_path):
    """data.num_train = -1 (all that remain) and data.num_heldout = the source's size: no
    training set (was accepted, empty)."""
    path = tmp_path / 'mine.npz'
    np.savez(path, images=np.zeros((16, 8, 8), np.uint8))
    config = tiny_digits_config(tmp_path / 'data', **{'data.source': f'npz:{path}',
                                                      'data.num_heldout': 16})
    with pytest.raises(DataError, match=f'no examples of npz:{path} remain to train on after '
                                        'data.num_heldout=16 held out of its 16; lower '
                                        'data.num_heldout$'):
        data.load(config)


# --- training_set.json damaged -------------------------------------------------------------

def test_training_set_json_emptied_is_named_as_damaged_not_blamed_on_the_data(resumable):
    workdir, data_dir = resumable
    path = workdir / 'training_set.json'
    path.write_text('{}')
    before = contents(workdir)
    result = run_main(*flags(workdir, data_dir, **{'training.num_steps': 12}))
    line = assert_one_line(result, f'{path} is damaged (no "fingerprint" string in it)',
                           'delete it to go on without checking the training set',
                           "put back the run's training_set.json")
    assert 'changed' not in line and 'new --workdir' not in line
    assert contents(workdir) == before


@pytest.mark.parametrize('text,problem', [
    ('[]', 'a JSON list, not an object'), ('"x"', 'a JSON str, not an object'),
    ('{"fingerprint": 3}', 'no "fingerprint" string in it'), ('', 'not JSON'),
    ('{"fingerprint": "ab', 'not JSON'),
])
def test_training_set_json_of_any_wrong_shape_is_named_as_damaged(resumable, text, problem):
    """In this process (check_compatible); then deleted, as the message says, the workdir
    resumes."""
    workdir, data_dir = resumable
    path = workdir / 'training_set.json'
    good = json.loads(path.read_text())['fingerprint']
    path.write_text(text)
    config = tiny_digits_config(data_dir)
    with pytest.raises(CorruptFileError) as raised:
        checkpointing.check_compatible(workdir, config, good)
    message = str(raised.value)
    assert message.startswith(f'{path} is damaged ({problem}') and 'delete it' in message
    assert '\n' not in message and 'changed' not in message
    path.unlink()
    checkpointing.check_compatible(workdir, config, good)
