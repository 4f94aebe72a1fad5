"""launch/sweep.py when the sweep itself dies (issue #24): a SIGKILLed sweep's child gets
SIGTERM and ends (launch.sweep.CHILD_GUARD), its log keeps every line the child printed, and
a rerun waits for a child an earlier sweep left behind (one still holding its workdir lock)
instead of failing that run, up to --wait_for_orphans seconds. The children are small
stand-ins (no diffgen.main): a talker that prints and sleeps, and tests/fake_run.py behind
the workdir lock, as diffgen.main takes it."""
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from diffgen import files
from launch import sweep
from tests.test_sweep_runner import CONFIG, FAKE, calls, results, write_plan
from tests.tiny import REPO

LINES = 20  # the talker's lines before it sleeps

# A child that records its pid, prints LINES lines, then sleeps; SIGTERM (what diffgen.main
# saves a checkpoint on) is recorded and ends it.
TALKER = textwrap.dedent(f"""
    import os, signal, sys, time
    here = os.path.dirname(os.path.abspath(__file__))
    def term(*_):
        open(os.path.join(here, 'talker.term'), 'w').write('SIGTERM')
        sys.exit(0)
    signal.signal(signal.SIGTERM, term)
    open(os.path.join(here, 'talker.pid'), 'w').write(str(os.getpid()))
    for i in range({LINES}):
        print(f'talker line {{i}} of {LINES}', flush=True)
    time.sleep(300)
""")

# A child that takes the workdir lock as diffgen.main does (exit 2 if it is in use, as
# diffgen.main's WorkdirError), then is tests/fake_run.py.
LOCKED_RUN = textwrap.dedent(f"""
    import runpy, sys
    sys.path.insert(0, {REPO!r})
    from diffgen import files
    from diffgen.errors import WorkdirError
    workdir = next(a.split('=', 1)[1] for a in sys.argv if a.startswith('--workdir='))
    try:
        with files.workdir_lock(workdir):
            sys.argv[0] = {FAKE[1]!r}
            runpy.run_path({FAKE[1]!r}, run_name='__main__')
    except WorkdirError as e:
        print(f'locked run: {{e}}', flush=True)
        sys.exit(2)
""")

# A process left behind: holds the lock of workdir argv[1] until the file argv[2] exists.
HOLDER = textwrap.dedent(f"""
    import os, sys, time
    sys.path.insert(0, {REPO!r})
    from diffgen import files
    with files.workdir_lock(sys.argv[1]):
        print('held', flush=True)
        deadline = time.time() + 300
        while not os.path.exists(sys.argv[2]) and time.time() < deadline:
            time.sleep(0.1)
""")


def running(pid):
    """Whether pid is a live process (a zombie, dead but not yet reaped, is not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f'/proc/{pid}/stat') as f:
            return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except FileNotFoundError:
        return False
    except OSError:
        return True


def wait_until(condition, seconds):
    """Polls condition every 0.1 s, up to `seconds`; returns its last value."""
    deadline = time.time() + seconds
    while not condition() and time.time() < deadline:
        time.sleep(0.1)
    return condition()


def end(pid):
    """SIGKILL to pid, a process this test started (directly or through the sweep), if it
    still runs."""
    if pid is not None and running(pid):
        os.kill(pid, signal.SIGKILL)


def wait_for_output(capsys, text, thread, seconds=120):
    """What the test printed (capsys) by the time text appears in it, thread ends, or the
    seconds pass."""
    out, deadline = '', time.time() + seconds
    while thread.is_alive() and text not in out and time.time() < deadline:
        time.sleep(0.2)
        out += capsys.readouterr().out
    return out + capsys.readouterr().out


@pytest.fixture
def locked(tmp_path, monkeypatch):
    """Runs go through LOCKED_RUN (the launcher 'locked'); tmp_path/sweep is the sweep."""
    script = tmp_path / 'locked_run.py'
    script.write_text(LOCKED_RUN)
    monkeypatch.setitem(sweep.LAUNCHERS, 'locked',
                        lambda args: [sys.executable, str(script), *args])
    monkeypatch.setenv('FAKE_PLAN', str(tmp_path / 'plan.json'))
    monkeypatch.setenv('FAKE_CALLS', str(tmp_path / 'calls.jsonl'))
    return tmp_path


@pytest.fixture
def holder(locked):
    """start(workdir) -> a process holding workdir's lock until release(); ended after."""
    started = []

    def start(workdir):
        (locked / 'holder.py').write_text(HOLDER)
        process = subprocess.Popen([sys.executable, str(locked / 'holder.py'), str(workdir),
                                    str(locked / 'release')], stdout=subprocess.PIPE, text=True)
        started.append(process)
        assert process.stdout.readline().strip() == 'held'
        return process

    def release():
        (locked / 'release').touch()
        for process in started:
            process.wait(timeout=60)

    start.release = release
    yield start
    (locked / 'release').touch()
    for process in started:
        end(process.pid)
        process.wait()


def test_a_sigkilled_sweeps_child_gets_sigterm_and_its_log_keeps_every_line(tmp_path):
    """The sweep (a subprocess) is SIGKILLed while its child runs: the child gets SIGTERM
    (it would save a checkpoint) and ends, and the run's log holds every line it printed."""
    (tmp_path / 'talker.py').write_text(TALKER)
    sweep_dir = tmp_path / 'sweep'
    driver = textwrap.dedent(f"""
        import sys
        from launch import sweep
        sweep.LAUNCHERS['talk'] = lambda args: [sys.executable, {str(tmp_path / 'talker.py')!r},
                                                *args]
        sweep.sweep({CONFIG!r}, {str(sweep_dir)!r}, '16', 'all', 'talk')
    """)
    process = subprocess.Popen([sys.executable, '-c', driver], cwd=REPO, env=os.environ,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = []
    reader = threading.Thread(target=lambda: out.extend(process.stdout), daemon=True)
    reader.start()
    child = None
    last = f'[num_train_16] talker line {LINES - 1} of {LINES}'
    try:
        # the sweep has read the child's last line (and written it to the log) when it
        # echoes it
        assert wait_until(lambda: any(last in l for l in out) or process.poll() is not None,
                          240), ''.join(out)
        assert any(last in l for l in out), ''.join(out)
        child = int((tmp_path / 'talker.pid').read_text())
        assert running(child)
        process.kill()
        process.wait(timeout=60)
        assert wait_until(lambda: not running(child), 30), 'the child outlived the sweep'
        assert (tmp_path / 'talker.term').read_text() == 'SIGTERM'
        log = (sweep_dir / 'num_train_16.log').read_text().splitlines()
        assert log[0].startswith('--- sweep: start')
        assert log[1:] == [f'talker line {i} of {LINES}' for i in range(LINES)]
    finally:
        end(child)
        if process.poll() is None:
            process.kill()
            process.wait()


@pytest.mark.parametrize('mode', ['auto', 'watch'])
def test_the_guard_ends_the_child_when_its_parent_is_sigkilled(tmp_path, mode):
    """CHILD_GUARD alone, under a parent that is SIGKILLed: prctl's death signal ('auto', on
    Linux) or the guard's watchdog ('watch', what other systems get) sends the child
    SIGTERM."""
    (tmp_path / 'talker.py').write_text(TALKER)
    argv = sweep.guarded([sys.executable, str(tmp_path / 'talker.py')], mode)
    parent = subprocess.Popen([sys.executable, '-c', textwrap.dedent(f"""
        import os, subprocess, sys
        p = subprocess.Popen({argv!r}, start_new_session=True, stdout=subprocess.DEVNULL,
                             env=dict(os.environ, {sweep.PARENT_PID}=str(os.getpid())))
        print(p.pid, flush=True)
        p.wait()
    """)], stdout=subprocess.PIPE, text=True)
    guard = child = None
    try:
        guard = int(parent.stdout.readline())
        assert wait_until(lambda: (tmp_path / 'talker.pid').exists(), 60)
        child = int((tmp_path / 'talker.pid').read_text())
        assert (child == guard) == (mode != 'watch')  # 'auto' execs the child in its place
        parent.kill()
        parent.wait()
        assert wait_until(lambda: not running(child), 30), 'the child outlived its parent'
        assert (tmp_path / 'talker.term').read_text() == 'SIGTERM'
        assert wait_until(lambda: not running(guard), 30), 'the guard outlived its parent'
    finally:
        end(child)
        end(guard)
        if parent.poll() is None:
            parent.kill()
            parent.wait()


@pytest.mark.parametrize('mode', ['auto', 'watch'])
def test_the_guard_passes_on_the_exit_status(mode):
    run = lambda argv: subprocess.run(sweep.guarded(argv, mode), env=dict(
        os.environ, **{sweep.PARENT_PID: str(os.getpid())})).returncode
    assert run([sys.executable, '-c', 'raise SystemExit(3)']) == 3
    assert run([sys.executable, '-c', 'import os, signal; os.kill(os.getpid(), signal.SIGTERM)'
                ]) in (-signal.SIGTERM, 128 + signal.SIGTERM)
    assert run([os.path.join(REPO, 'no-such-launcher')]) == 127


def test_a_rerun_waits_for_a_left_behind_holder_then_runs_and_counts_the_run(locked, holder,
                                                                             capsys):
    """A process (a child of an earlier sweep) still holds the run's workdir lock: the rerun
    says it waits for that pid, starts nothing meanwhile, and once the holder exits runs the
    run, which finishes and is counted (without the wait it would fail: exit 2)."""
    write_plan(locked, '16')
    workdir = locked / 'sweep' / 'num_train_16'
    left = holder(workdir)
    done = []
    thread = threading.Thread(target=lambda: done.append(
        sweep.sweep(CONFIG, str(locked / 'sweep'), '16', 'all', 'locked')))
    thread.start()
    waiting = f'waiting for pid {left.pid}, left by an earlier sweep, to release {workdir}'
    try:
        out = wait_for_output(capsys, waiting, thread)
        assert waiting in out, out
        time.sleep(2)     # two more polls: still nothing started while the lock is held
        assert thread.is_alive() and not (locked / 'calls.jsonl.started').exists()
    finally:
        holder.release()
        thread.join(timeout=120)
    assert not thread.is_alive()
    runs, _ = done[0]
    assert runs[0].status == 'ok', capsys.readouterr().out
    assert [c['workdir'] for c in calls(locked)] == [str(workdir)]
    assert [r['run'] for r in results(locked)] == ['num_train_16']
    assert not (workdir / files.LOCK).exists()


def test_a_holder_past_the_wait_limit_fails_the_run_naming_its_pid_and_lock(locked, holder,
                                                                          capsys):
    write_plan(locked, '16')
    workdir = locked / 'sweep' / 'num_train_16'
    left = holder(workdir)
    runs, summary = sweep.sweep(CONFIG, str(locked / 'sweep'), '16', 'all', 'locked',
                                wait_for_orphans=1)
    status = runs[0].status
    assert status.startswith('failed (') and '\n' not in status, status
    assert f'pid {left.pid}' in status and str(workdir / files.LOCK) in status, status
    assert '--wait_for_orphans' in status
    assert not (locked / 'calls.jsonl.started').exists()       # never started
    assert results(locked) == [] and summary is None
    assert f'not counted: num_train_16: {status}' in capsys.readouterr().out
    assert left.poll() is None                                 # the holder is left alone


def test_a_sweep_stopped_while_waiting_leaves_the_run_interrupted(locked, holder, capsys):
    write_plan(locked, '16')
    workdir = locked / 'sweep' / 'num_train_16'
    left = holder(workdir)
    run = sweep.Run('num_train_16', {}, None, ['--workdir=' + str(workdir)])
    runner = sweep.Runner(sweep.LAUNCHERS['locked'], str(locked / 'sweep'), [{}])
    thread = threading.Thread(target=runner.run_all, args=([run], 'all'))
    thread.start()
    try:
        out = wait_for_output(capsys, f'waiting for pid {left.pid}', thread)
        assert f'waiting for pid {left.pid}' in out, out
        runner.stop()
    finally:
        thread.join(timeout=60)
    assert not thread.is_alive() and run.status == 'interrupted'
    assert not (locked / 'calls.jsonl.started').exists()       # never started
    assert left.poll() is None


def test_a_lock_of_another_host_or_a_dead_pid_is_not_waited_for(locked, capsys):
    """Another host's lock: the run starts at once (and fails, as diffgen.main refuses it);
    a dead pid's lock: the run starts at once and takes it over."""
    write_plan(locked, '16')
    workdir = locked / 'sweep' / 'num_train_16'
    workdir.mkdir(parents=True)
    lock = workdir / files.LOCK
    lock.write_text(json.dumps({'host': 'elsewhere', 'pid': os.getpid(), 'since': '?'}))
    runs, _ = sweep.sweep(CONFIG, str(locked / 'sweep'), '16', 'all', 'locked')
    assert runs[0].status == 'failed (exit 2)'
    assert 'waiting for pid' not in capsys.readouterr().out
    dead = subprocess.Popen([sys.executable, '-c', 'pass'])
    dead.wait()
    lock.write_text(json.dumps({'host': socket.gethostname(), 'pid': dead.pid, 'since': '?'}))
    runs, _ = sweep.sweep(CONFIG, str(locked / 'sweep'), '16', 'all', 'locked')
    assert runs[0].status == 'ok'
    assert 'waiting for pid' not in capsys.readouterr().out
