"""Runs a sweep declared beside a config, resumably and as many runs at once as the machine
has room for, and collects the finished runs' results.

    python -m launch.sweep --config=configs/digits.py[:arg] --sweep_dir=D \
        [--sweep_arg=A] [--mode=all] [--launcher=local] [--override=key=value ...] \
        [--parallel=K] [--devices=0,1,...] [--seeds=K] [--wait_for_orphans=600] \
        [--slurm=FLAG ...] [--dry-run] [--wait] [--collect]

The config file's get_sweep(A) returns a list of override dicts ({'data.num_train': 64,
...}). Run i is `python -m diffgen.main --config=<config> --workdir=D/<name_i> --mode=<mode>
--config.<key>=<value> ...` (each --override is added to every run); <name_i> joins the
swept variable (the first key of each override dict) and its value (num_train_64). Its output is appended to
D/<name_i>.log (a rerun adds to the log, never truncates it). With --seeds=K every run is
made K times, with config.seed = s0, s0 + 1, ..., s0 + K - 1 (s0 the config's seed) and
named <name_i>_seed_<s> (--seeds=1: the first replicate alone, in the same workdir):
each seed draws its own initialisation, batch order, held-out and training subsets,
evaluation x_T and analysis x_T (all derive from config.seed). The runs go seed by seed
(every N of the first seed, then the next), so that a sweep stopped part way has whole
replicates.

Slots: with --devices (default: the GPUs in $CUDA_VISIBLE_DEVICES, else those nvidia-smi
lists) one run per device at a time, each seeing only its own (CUDA_VISIBLE_DEVICES=<id>);
without devices, --parallel runs at once (default 1) sharing the CPU cores.

Resumable: a run whose own config.json (what diffgen.main ran it with) holds the values the
sweep gives it now (its --config flags parsed by config_flags, as diffgen.main parses them)
and whose report holds every experiment it asks for, made from config.json's last training
step and config (the report's provenance: step and config digest), is finished and skipped
(finished()); any other run (never started, failed, interrupted, or stale: its config
changed) is run again and resumes from its checkpoints. Only finished runs
contribute a row to D/results.csv (written atomically); where the rows carry E6 numbers
D/emm.png plots the memorisation ratio against N with the EMM marked
(diffgen/analysis/experiments/e6_emm.py), and from the finished runs' eval.csv
D/transition.json, D/transition_ratio.png (both memorisation criteria against N per sampler
at the last step, pooled over seeds with a 95 % bootstrap over models and samples, and the
EMM as the logistic crossing N* with its interval) and D/transition_curves.png (rate against
training step per N, the mean over seeds with their range; diffgen/analysis/transition.py),
with both criteria's calibration at each N on the data alone (diffgen/analysis/copies.py
sweep_calibration: the rate each flags held-out images and noisy copies of training images).
SIGTERM or SIGINT to the sweep passes SIGTERM to
every running child (which saves a checkpoint and stops), waits for them, and exits 143:
every run stays resumable and no child outlives the sweep. Exit status 1 if a run failed.

A sweep killed outright (SIGKILL: the OOM killer, a node going away) takes its children
with it too: each child starts through CHILD_GUARD, which on Linux sets
prctl(PR_SET_PDEATHSIG, SIGTERM), so the child gets SIGTERM (saves a checkpoint and stops)
when the sweep dies, and exits at once if the sweep died before the guard ran; elsewhere the
guard stays as the child's parent and watches the sweep (its pid is in every child's
$DIFFGEN_PARENT_PID), sending SIGTERM when it is gone. With --launcher=tpu_pod the signal
reaches the local process only (launch/tpu_pod.sh and its gcloud ssh), not the pod's
workers. Every line a child prints is flushed to its log at once, so a killed sweep loses
none. A rerun started while a child of the killed sweep still holds its workdir's lock
(diffgen.lock: saving, compiling) waits for it: a lock held by a live process of this host
is waited for, with a line naming the pid, polled every second, up to --wait_for_orphans
seconds (default 600), after which that run fails with a status naming the pid and the lock
file; a lock held on another host, or by a pid that is gone, is not waited for.

A launcher is a function main_args -> argv that runs diffgen.main with those arguments;
LAUNCHERS maps --launcher names to them.

--launcher=slurm runs nothing here: it submits the unfinished runs not already in Slurm as
one job array, at most --parallel=K tasks at once (default: no limit), each task given the
allocation of launch/slurm.py's flags passed as --slurm=FLAG (repeatable), and a dependent
job running this sweep with --collect when the array has ended (launch/slurm_sweep.py);
--dry-run prints the two scripts instead, --wait waits for the jobs and collects. --collect
(any launcher) runs nothing and writes results.csv and the figures from the runs finished
now. Bad input is one line `diffgen: error: ...`, exit status 2.
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import errno
import importlib.util
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

if __package__ in (None, ''):  # run as a script: launch/sweep.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import flax.traverse_util  # noqa: E402
from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from diffgen import files  # noqa: E402
from diffgen.analysis import copies, transition  # noqa: E402
from diffgen.analysis.experiments import e6_emm  # noqa: E402
from diffgen.analysis.provenance import config_digest  # noqa: E402
from diffgen.errors import UserError, WorkdirError  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CONFIG = flags.DEFINE_string('config', None, 'Config file[:argument] that declares get_sweep.')
_SWEEP_DIR = flags.DEFINE_string('sweep_dir', None, 'Directory of the sweep: one workdir per run.')
_SWEEP_ARG = flags.DEFINE_string('sweep_arg', None, 'Argument passed to get_sweep.')
_MODE = flags.DEFINE_string('mode', 'all', 'diffgen.main --mode of every run.')
_LAUNCHER = flags.DEFINE_string('launcher', 'local',
                                'How each run is started: local, tpu_pod, slurm (one job '
                                'array: launch/slurm_sweep.py).')
_OVERRIDE = flags.DEFINE_multi_string('override', [], 'key=value added to every run.')
_PARALLEL = flags.DEFINE_integer('parallel', 1, 'Runs at once on the CPU (without devices); '
                                 'with --launcher=slurm, array tasks at once (%K; default: '
                                 'no limit).')
_SLURM = flags.DEFINE_multi_string('slurm', [], "With --launcher=slurm: a flag of "
                                   "launch/slurm.py for every array task ('--partition=gpu', "
                                   "'--time=4:00:00', '--sbatch=--mem=32G'); repeatable.")
_DRY_RUN = flags.DEFINE_bool('dry_run', False, 'With --launcher=slurm: print the array job '
                             'script (and its collect job), submit nothing (also --dry-run).')
_WAIT = flags.DEFINE_bool('wait', False, 'With --launcher=slurm: wait until the array (and '
                          'its collect job) has ended, then collect here too.')
_COLLECT = flags.DEFINE_bool('collect', False, 'Run nothing: write results.csv and the '
                             'figures from the runs finished now.')
_SEEDS = flags.DEFINE_integer('seeds', None, 'Replicates of every run, each with its own '
                               'config.seed and named <name>_seed_<seed> (default: one run, '
                               'named <name>).')
_DEVICES = flags.DEFINE_string('devices', None, 'GPU ids, one run on each at a time (default: '
                               '$CUDA_VISIBLE_DEVICES, else what nvidia-smi lists).')
_WAIT_FOR_ORPHANS = flags.DEFINE_integer(
    'wait_for_orphans', 600, 'Seconds a run waits for a live process of this host that holds '
    'its workdir lock (a child left behind by an earlier, killed sweep) before it fails.')


def run_local(main_args):
    """`python -m diffgen.main MAIN_ARGS` on this machine, from the repository root."""
    return [sys.executable, '-m', 'diffgen.main', *main_args]


def run_tpu_pod(main_args):
    """diffgen.main with MAIN_ARGS on every worker of the TPU pod $DIFFGEN_TPU in zone
    $DIFFGEN_TPU_ZONE through launch/tpu_pod.sh (the run's --workdir must be on GCS: use a
    gs:// --sweep_dir)."""
    return [os.path.join(REPO, 'launch', 'tpu_pod.sh'), f'--tpu={os.environ["DIFFGEN_TPU"]}',
            f'--zone={os.environ["DIFFGEN_TPU_ZONE"]}', '--', *main_args]


LAUNCHERS = {'local': run_local, 'tpu_pod': run_tpu_pod}

PARENT_PID = 'DIFFGEN_PARENT_PID'  # the sweep's pid, in every child's environment

# Every child starts as `python -I -S -c CHILD_GUARD MODE ARGV...` (stdlib only: no imports
# of the sweep's): with $DIFFGEN_PARENT_PID the sweep's pid, it makes sure the child dies
# with the sweep, even by SIGKILL. MODE 'auto', on Linux: prctl(PR_SET_PDEATHSIG, SIGTERM),
# then, if the sweep already died before that (its parent is no longer the sweep), exit 143;
# else exec ARGV, which keeps the setting: the child gets SIGTERM when the thread that
# started it ends (Runner.run_one's, which waits for the child) -- that is, when the sweep
# dies. MODE 'watch', or 'auto' without prctl (not Linux): the guard stays, as the child's
# parent in its process group, runs ARGV, polls every second whether the sweep still is its
# parent, and sends ARGV SIGTERM (then waits for it) when it is not; it ignores SIGTERM and
# SIGINT itself (the sweep's stop() sends them to the whole group, ARGV included) and exits
# with ARGV's status (128 + N for a signal N). Status 127 if ARGV cannot be started.
CHILD_GUARD = r'''
import os, signal, subprocess, sys, time
mode, argv = sys.argv[1], sys.argv[2:]
parent = int(os.environ['DIFFGEN_PARENT_PID'])
if mode == 'auto' and sys.platform.startswith('linux'):
    try:
        import ctypes
        prctl = ctypes.CDLL(None, use_errno=True).prctl
        PR_SET_PDEATHSIG = 1
        mode = 'exec' if prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) == 0 else 'watch'
    except (ImportError, OSError, AttributeError):
        mode = 'watch'
if os.getppid() != parent:
    sys.exit(143)    # the sweep died before the guard ran: it never sends the signal
if mode == 'exec':
    try:
        os.execvp(argv[0], argv)
    except OSError as e:
        print(f'sweep: cannot start {argv[0]}: {e}', file=sys.stderr, flush=True)
        sys.exit(127)
for s in (signal.SIGTERM, signal.SIGINT):   # a handler (not SIG_IGN): ARGV gets the default
    signal.signal(s, lambda *_: None)
try:
    child = subprocess.Popen(argv)
except OSError as e:
    print(f'sweep: cannot start {argv[0]}: {e}', file=sys.stderr, flush=True)
    sys.exit(127)
while child.poll() is None:
    if os.getppid() != parent:
        child.terminate()
        child.wait()
        break
    time.sleep(1.0)
rc = child.returncode
sys.exit(128 - rc if rc < 0 else rc)
'''


def guarded(argv, mode='auto'):
    """argv started through CHILD_GUARD (the child dies with the sweep): the command to run
    with $DIFFGEN_PARENT_PID set to this process's pid."""
    return [sys.executable, '-I', '-S', '-c', CHILD_GUARD, mode, *argv]


def load_sweep(config_flag, sweep_arg):
    """(get_config, list of override dicts) of a config file 'path[:arg]'."""
    path, _, _ = config_flag.partition(':')
    spec = importlib.util.spec_from_file_location('sweep_config', os.path.join(REPO, path)
                                                  if not os.path.isabs(path) else path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, 'get_sweep'):
        raise ValueError(f'{path} declares no get_sweep()')
    return module.get_config, module.get_sweep(sweep_arg)


def format_value(value):
    """A config value as diffgen.main's --config.key=value reads it back."""
    return repr(tuple(value)) if isinstance(value, (tuple, list)) else str(value)


def run_name(overrides):
    """num_train_64 for {'data.num_train': 64, ...}: the swept variable, the first key of a
    get_sweep() override dict (its last part), and its value."""
    key, value = next(iter(overrides.items()), ('run', ''))
    return re.sub(r'[^A-Za-z0-9_.=-]', '', f'{key.split(".")[-1]}_{format_value(value)}')


def config_overrides(overrides, extra):
    """The --config.key=value flags of a run: its override dict's, then each 'key=value' of
    extra (--override)."""
    return ([f'--config.{k}={format_value(v)}' for k, v in overrides.items()]
            + [f'--config.{e}' for e in extra])


def main_args(config_flag, workdir, mode, overrides, extra):
    """diffgen.main's arguments for one run."""
    return [f'--config={config_flag}', f'--workdir={workdir}', f'--mode={mode}',
            *config_overrides(overrides, extra)]


def run_config(config_flag, overrides, extra):
    """The config diffgen.main runs with: its --config and --config.key=value flags parsed
    by ml_collections' config_flags itself, as diffgen.main parses them (each value by its
    key's type: a float key's 1 is 1.0, a bool key's true is True, a string key's 64 is
    '64'). ValueError if config_flags refuses one (an unknown key, a bad value)."""
    path, colon, arg = config_flag.partition(':')
    argv = ['diffgen.main', f'--config={os.path.join(REPO, path)}{colon}{arg}',
            *config_overrides(overrides, extra)]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file('config', flag_values=values, lock_config=True,
                                    sys_argv=argv)
    try:
        values(argv)
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f'{" ".join(argv[1:])}: {e}') from e
    return values.config


def _json(value):
    """value as JSON stores it (tuples as lists)."""
    return json.loads(json.dumps(value, default=list))


def _read_json(path):
    """The JSON file at path, or None if it is missing or not JSON."""
    if not files.exists(path):
        return None
    try:
        return json.loads(files.read_text(path))
    except ValueError:
        return None


def finished(workdir, config, mode):
    """True if the run in workdir is finished for config (run_config's):
      - its own config.json (the config diffgen.main trained it with) holds config's values,
        compared key by key as JSON stores them (keys added to diffgen after the run, absent
        from its config.json, left out; with --mode=analyze, which leaves config.json as its
        training wrote it, the analysis section too); a value that differs (an override
        changed) makes it stale;
      - its report holds every experiment of config.analysis.experiments, each made (its
        provenance) from config.json's last training step and with the digest of config.json
        (--mode=all: it was written by this run) or, with --mode=analyze, of config.
    Modes without a report never are."""
    if mode not in ('all', 'analyze'):
        return False
    stored = _read_json(os.path.join(workdir, 'config.json'))
    report = _read_json(os.path.join(workdir, 'report', 'report.json'))
    if not isinstance(stored, dict) or not isinstance(report, dict):
        return False
    held = flax.traverse_util.flatten_dict(stored, sep='.')
    wanted = flax.traverse_util.flatten_dict(_json(config.to_dict()), sep='.')
    if mode == 'analyze':
        wanted = {k: v for k, v in wanted.items() if not k.startswith('analysis.')}
    if any(json.dumps(held.get(key, value)) != json.dumps(value) for key, value in wanted.items()):
        return False
    want = {'step': (stored.get('training') or {}).get('num_steps'),
            'config_digest': config_digest(stored if mode == 'all' else config)}
    for key in config.analysis.experiments:
        made = (report.get(key) or {}).get('provenance') or {}
        if any(made.get(k) != v for k, v in want.items()):
            return False
    return True


def flatten(tree):
    """The scalars of nested dicts as {'a.b': value}; lists are left out."""
    return {name: value for name, value in flax.traverse_util.flatten_dict(tree, sep='.').items()
            if not isinstance(value, list)}


def write_csv(rows, path):
    columns = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    text = io.StringIO()
    writer = csv.DictWriter(text, columns)
    writer.writeheader()
    writer.writerows({k: format_value(v) if isinstance(v, (tuple, list)) else v
                      for k, v in row.items()} for row in rows)
    files.write_text(path, text.getvalue())


def default_slots(devices=None, parallel=1):
    """The environments runs start in: one per GPU id, or `parallel` copies of the CPU one."""
    if devices is None:
        visible = os.environ.get('CUDA_VISIBLE_DEVICES')
        if visible is not None:
            devices = visible
        elif shutil.which('nvidia-smi'):
            listing = subprocess.run(['nvidia-smi', '-L'], capture_output=True, text=True)
            devices = ','.join(str(i) for i, line in enumerate(listing.stdout.splitlines())
                               if line.startswith('GPU'))
    ids = [d.strip() for d in (devices or '').split(',') if d.strip()]
    if ids:
        return [{'CUDA_VISIBLE_DEVICES': i} for i in ids]
    return [{} for _ in range(max(parallel, 1))]


@dataclasses.dataclass
class Run:
    name: str
    overrides: dict
    config: object
    args: list
    status: str = 'pending'
    seconds: float = 0.0


class Runner:
    """Runs the runs in the free slots, children in their own process groups; stop() sends
    them SIGTERM and waits. Each child starts through CHILD_GUARD (guard: its MODE) from the
    thread that waits for it, and so dies (SIGTERM) with the sweep, even a SIGKILLed one.
    Before a run starts, a lock on its workdir held by a live process of this host (a child
    an earlier, killed sweep left behind, still saving its checkpoint) is waited for, up to
    wait_for_orphans seconds (wait_for_release)."""

    def __init__(self, launch, sweep_dir, slots, wait_for_orphans=600, guard='auto'):
        self.launch, self.sweep_dir, self.slots = launch, sweep_dir, slots
        self.wait_for_orphans, self.guard = wait_for_orphans, guard
        self.children = {}
        self.lock = threading.Lock()
        self.stopping = False

    def wait_for_release(self, run):
        """Waits while the lock of run's workdir (diffgen.files.workdir_lock) is held by a live
        process of this host, polling every second, with a line saying so; a lock held on
        another host, or by a process that is gone (diffgen.main takes it over), is not waited
        for. Returns False if the sweep is stopped meanwhile, True once the lock is free;
        WorkdirError naming the holder's pid and the lock file if it is still held after
        wait_for_orphans seconds."""
        workdir = os.path.join(self.sweep_dir, run.name)
        start, announced = time.monotonic(), None
        while not self.stopping:
            holder = files.lock_holder(workdir)
            if holder is None or not holder['alive'] or holder['host'] != socket.gethostname():
                return True
            pid, path = holder['pid'], holder['path']
            if time.monotonic() - start >= self.wait_for_orphans:
                raise WorkdirError(
                    f'{workdir} is still in use by pid {pid} on this host (since '
                    f'{holder.get("since", "?")}, lock {path}) after waiting '
                    f'{self.wait_for_orphans}s (--wait_for_orphans): end that process or wait '
                    'for it, then rerun the same command')
            if announced != pid:
                print(f'sweep: {run.name}: waiting for pid {pid}, left by an earlier sweep, to '
                      f'release {workdir} (lock {path}, since {holder.get("since", "?")}; up to '
                      f'{self.wait_for_orphans}s)', flush=True)
                announced = pid
            time.sleep(1.0)
        return False

    def run_one(self, run, env):
        """Runs one run to completion in env; returns its exit status (None: the sweep was
        stopped before it started). Every line the child prints goes to <sweep_dir>/<run>.log
        and is flushed at once (every 10 s on a bucket), so that a killed sweep loses none."""
        log_path = os.path.join(self.sweep_dir, f'{run.name}.log')
        if not self.wait_for_release(run):
            return None
        argv = self.launch(run.args)
        if shutil.which(os.path.join(REPO, argv[0]) if '/' in argv[0] else argv[0]) is None:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), argv[0])
        with self.lock:
            if self.stopping:
                return None
            process = subprocess.Popen(
                guarded(argv, self.guard), cwd=REPO,
                env={**os.environ, 'PYTHONUNBUFFERED': '1', PARENT_PID: str(os.getpid()), **env},
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                start_new_session=True)
            self.children[run.name] = process
        try:
            with files.open_file(log_path, 'a') as log:
                local, flushed = '://' not in str(log_path), time.monotonic()

                def write(text):
                    nonlocal flushed
                    log.write(text)
                    if local or time.monotonic() - flushed >= 10:
                        log.flush()
                        flushed = time.monotonic()

                write(f'--- sweep: start {time.strftime("%Y-%m-%d %H:%M:%S")} '
                      f'{" ".join(env_text(env))}\n')
                for line in process.stdout:
                    write(line)
                    print(f'  [{run.name}] {line}', end='', flush=True)
                rc = process.wait()
                write(f'--- sweep: exit {rc}\n')
        finally:
            if process.poll() is None:  # this thread fails (the log cannot be written): stop it
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
                process.communicate()
            with self.lock:
                del self.children[run.name]
        return rc

    def stop(self, *_):
        """SIGTERM to every running child; they save a checkpoint and exit."""
        with self.lock:
            self.stopping = True
            for process in self.children.values():
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass

    def run_all(self, runs, mode):
        """Runs the runs, as many at once as there are slots; sets each one's status."""
        queue = list(runs)
        threads = []
        slots = list(self.slots)
        cv = threading.Condition()

        def work(run, env):
            start = time.perf_counter()
            print(f'sweep: start {run.name} {" ".join(env_text(env))}', flush=True)
            try:
                rc = self.run_one(run, env)
                if rc is None or self.stopping:
                    run.status = 'interrupted'
                elif rc != 0:
                    run.status = f'failed (exit {rc})'
                elif mode in ('all', 'analyze') and not finished(
                        os.path.join(self.sweep_dir, run.name), run.config, mode):
                    run.status = 'incomplete'
                else:
                    run.status = 'ok'
            except Exception as e:  # noqa: BLE001 -- a launcher that cannot start: this run fails
                run.status = f'failed ({type(e).__name__}: {e})'
            finally:
                run.seconds = time.perf_counter() - start
                print(f'sweep: {run.name} {run.status} in {run.seconds:.0f}s', flush=True)
                with cv:
                    slots.append(env)
                    cv.notify()

        while queue and not self.stopping:
            with cv:
                while not slots and not self.stopping:
                    cv.wait(timeout=1.0)
                if self.stopping:
                    break
                env = slots.pop(0)
            thread = threading.Thread(target=work, args=(queue.pop(0), env))
            thread.start()
            threads.append(thread)
        for thread in threads:
            thread.join()
        for run in queue:
            run.status = 'interrupted'


def env_text(env):
    return [f'{k}={v}' for k, v in env.items()]


def replicate(overrides_list, seeds, first_seed):
    """[(run name, overrides)]: each override dict once (seeds None), or seeds times with
    'seed': first_seed + k added and the name suffixed _seed_<seed>, seed by seed (so
    --seeds=1 runs the first replicate of --seeds=3, in the same workdirs)."""
    if seeds is None:
        return [(run_name(o), o) for o in overrides_list]
    return [(f'{run_name(o)}_seed_{first_seed + k}', {**o, 'seed': first_seed + k})
            for k in range(seeds) for o in overrides_list]


def plan(config_flag, sweep_dir, sweep_arg=None, mode='all', extra=(), seeds=None):
    """(get_config, runs) of the sweep (each run seeds times: replicate()), the finished ones
    with status 'ok (finished before)', the others 'pending'."""
    get_config, overrides_list = load_sweep(config_flag, sweep_arg)
    first_seed = run_config(config_flag, {}, extra).seed
    runs = []
    for name, overrides in replicate(overrides_list, seeds, first_seed):
        workdir = os.path.join(sweep_dir, name)
        config = run_config(config_flag, overrides, extra)
        run = Run(name, overrides, config,
                  main_args(config_flag, workdir, mode, overrides, extra))
        if finished(workdir, config, mode):
            run.status = 'ok (finished before)'
        runs.append(run)
    return get_config, runs


def collect_only(config_flag, sweep_dir, sweep_arg=None, mode='all', extra=(), seeds=None):
    """--collect: results.csv and the figures from the runs finished now (collect()),
    running nothing; returns (runs, summary) as sweep() does, the unfinished runs with
    status 'not finished'."""
    get_config, runs = plan(config_flag, sweep_dir, sweep_arg, mode, extra, seeds)
    for run in runs:
        if run.status == 'pending':
            run.status = 'not finished'
    files.makedirs(sweep_dir)
    return runs, collect(runs, sweep_dir, get_config(config_flag.partition(':')[2] or None))


def sweep(config_flag, sweep_dir, sweep_arg=None, mode='all', launcher='local', extra=(),
          slots=None, seeds=None, wait_for_orphans=600):
    """Runs the unfinished runs of the sweep (each seeds times: replicate()), writes
    results.csv (finished runs only) and emm.png; returns (runs, EMM summary or None). A run
    whose workdir is still locked by a live process of this host waits for it up to
    wait_for_orphans seconds (Runner.wait_for_release), then fails."""
    get_config, runs = plan(config_flag, sweep_dir, sweep_arg, mode, extra, seeds)
    files.makedirs(sweep_dir)
    todo = [r for r in runs if r.status == 'pending']
    print(f'sweep: {len(runs)} runs, {len(runs) - len(todo)} finished before, '
          f'{len(todo)} to run', flush=True)
    runner = Runner(LAUNCHERS[launcher], sweep_dir, slots or default_slots(), wait_for_orphans)
    previous = {s: signal.signal(s, runner.stop) for s in (signal.SIGTERM, signal.SIGINT)} \
        if threading.current_thread() is threading.main_thread() else {}
    try:
        runner.run_all(todo, mode)
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    summary = collect(runs, sweep_dir, get_config(config_flag.partition(':')[2] or None))
    if runner.stopping:
        print('sweep: stopped by a signal; every run is resumable: rerun the same command',
              flush=True)
    return runs, summary


def calibrate(finished_runs):
    """copies.sweep_calibration of the finished runs (the criteria on the data alone, per N);
    [] with a printed note where their data cannot be read here."""
    if not finished_runs:
        return []
    print(f'calibrating both memorisation criteria on the data of {len(finished_runs)} '
          'finished runs', flush=True)
    try:
        return copies.sweep_calibration(
            [(r.config.data.num_train, r.config.seed, r.config) for r in finished_runs])
    except UserError as e:
        print(f'calibration left out: {e}', flush=True)
        return []


def collect(runs, sweep_dir, config):
    """results.csv from the finished runs (run, seconds, seed, overrides, report numbers);
    the others are listed, never counted. From the finished runs' eval.csv, transition.json
    and its figures (diffgen/analysis/transition.py: per sampler and criterion the rate by N
    at the last step pooled over seeds with its bootstrap interval, and the EMM as the
    logistic crossing N* with its interval), printed; from results.csv's E6 numbers the same
    pooling, emm.png and its EMM (diffgen/analysis/experiments/e6_emm.py), printed. Returns
    {'transition': transition.summarise()'s numbers or None, 'e6': e6_emm.sweep_summary() or
    None}, or None when neither has a number."""
    rows = []
    for run in runs:
        if not run.status.startswith('ok'):
            continue
        path = os.path.join(sweep_dir, run.name, 'report', 'report.json')
        row = {'run': run.name, 'seconds': round(run.seconds, 1), 'seed': run.config.seed,
               **run.overrides}
        if files.exists(path):
            row.update(flatten(json.loads(files.read_text(path))))
        rows.append(row)
    write_csv(rows, os.path.join(sweep_dir, e6_emm.RESULTS))
    print(f'wrote {os.path.join(sweep_dir, e6_emm.RESULTS)} ({len(rows)} finished runs)',
          flush=True)
    left = [f'{r.name}: {r.status}' for r in runs if not r.status.startswith('ok')]
    if left:
        print('not counted: ' + '; '.join(left), flush=True)
    finished_runs = [r for r in runs if r.status.startswith('ok')]
    threshold = config.analysis.e6.threshold
    triples = [(r.name, r.config.data.num_train, r.config.seed) for r in finished_runs]
    result = transition.summarise(
        sweep_dir, triples, config.evaluation.num_samples if not finished_runs
        else finished_runs[0].config.evaluation.num_samples, threshold,
        calibration=lambda: calibrate(finished_runs))
    for sampler, per_criterion in (result or {'samplers': {}})['samplers'].items():
        for criterion, s in per_criterion.items():
            print(f'{sampler}, {criterion} criterion ({transition.RULES[criterion]}): rate by N '
                  'at the last step, mean over seeds [95% bootstrap]: ' + ', '.join(
                      f'{n}: {r:.2f} [{lo:.2f}, {hi:.2f}] ({k} seed{"s" * (k > 1)})'
                      for n, r, lo, hi, k in zip(s['num_train'], s['rate'], s['low'],
                                                  s['high'], s['num_seeds'])) +
                  f'; EMM {transition.crossing_text(s["crossing"])}', flush=True)
    e6 = e6_emm.sweep_summary(rows, threshold)
    if e6 is not None:
        e6_emm.plot_emm(e6, os.path.join(sweep_dir, e6_emm.FIGURE))
        pooled = e6['pooled']
        print('E6 memorisation ratio by N, mean over seeds: ' + ', '.join(
            f'{n}: {r:.3f}' for n, r in zip(e6['num_train'], e6['memorisation_ratio'])) +
            f'; largest N with ratio >= {threshold}: {e6["emm"]}; EMM ' +
            (transition.crossing_text(pooled['crossing']) if pooled else e6['note']),
            flush=True)
    if result is None and e6 is None:
        return None
    return {'transition': result, 'e6': e6}


def error(message):
    """One line `diffgen: error: ...` on stderr; the exit status 2."""
    print(f'diffgen: error: {message}', file=sys.stderr, flush=True)
    return 2


def sweep_slurm(config_flag, sweep_dir, sweep_arg=None, mode='all', extra=(), seeds=None,
                max_parallel=None, slurm_flags=(), dry_run=False, wait=False, poll=2.0):
    """--launcher=slurm: submits the unfinished runs not already in Slurm as one job array
    with a dependent collect job (launch/slurm_sweep.py); with wait, waits for them (and for
    earlier submissions still holding runs) and collects. Returns the exit status (0; with
    wait 1 if a run is not finished). SlurmError (one line) when Slurm refuses."""
    from launch import slurm, slurm_sweep
    if '://' in sweep_dir:
        raise slurm.SlurmError(f'--sweep_dir={sweep_dir}: a Slurm sweep needs a directory on a '
                               'filesystem the nodes share')
    sweep_dir = os.path.abspath(sweep_dir)
    options = slurm.parse_options(slurm_flags)
    _, runs = plan(config_flag, sweep_dir, sweep_arg, mode, extra, seeds)
    if not dry_run:
        files.makedirs(sweep_dir)
    jobs = slurm_sweep.submit(
        runs, sweep_dir, options, max_parallel,
        slurm_sweep.collect_argv(config_flag, sweep_dir, sweep_arg, mode, extra, seeds), dry_run)
    if dry_run or not wait:
        return 0
    if jobs:
        print(f'sweep: waiting for jobs {", ".join(jobs)}', flush=True)
        slurm.wait_for(jobs, poll=poll)
    runs, _ = collect_only(config_flag, sweep_dir, sweep_arg, mode, extra, seeds)
    return 0 if all(r.status.startswith('ok') for r in runs) else 1


def main(argv):
    if len(argv) > 1:
        return error(f'unexpected arguments {argv[1:]}')
    if not _CONFIG.value or not _SWEEP_DIR.value:
        return error('--config and --sweep_dir are required')
    if _LAUNCHER.value not in (*LAUNCHERS, 'slurm'):
        return error(f'--launcher={_LAUNCHER.value!r} is not one of {(*LAUNCHERS, "slurm")}')
    slurm_only = [f'--{name}' for name, given in (('slurm', _SLURM.value), ('dry-run', _DRY_RUN.value),
                                                   ('wait', _WAIT.value)) if given]
    if slurm_only and _LAUNCHER.value != 'slurm':
        return error(f'{", ".join(slurm_only)} only with --launcher=slurm')
    if _COLLECT.value:
        if _DRY_RUN.value or _WAIT.value:
            return error('--collect runs and submits nothing: no --dry-run or --wait with it')
        runs, _ = collect_only(_CONFIG.value, _SWEEP_DIR.value, _SWEEP_ARG.value, _MODE.value,
                               _OVERRIDE.value, _SEEDS.value)
        return 0
    if _LAUNCHER.value == 'slurm':
        from launch.slurm import SlurmError
        try:
            return sweep_slurm(_CONFIG.value, _SWEEP_DIR.value, _SWEEP_ARG.value, _MODE.value,
                               _OVERRIDE.value, _SEEDS.value,
                               _PARALLEL.value if _PARALLEL.present else None, _SLURM.value,
                               _DRY_RUN.value, _WAIT.value)
        except SlurmError as e:
            return error(str(e))
    slots = default_slots(_DEVICES.value, _PARALLEL.value)
    runs, _ = sweep(_CONFIG.value, _SWEEP_DIR.value, _SWEEP_ARG.value, _MODE.value,
                    _LAUNCHER.value, _OVERRIDE.value, slots, _SEEDS.value,
                    _WAIT_FOR_ORPHANS.value)
    if any(r.status == 'interrupted' for r in runs):
        return 143
    return 1 if any(not r.status.startswith('ok') for r in runs) else 0


if __name__ == '__main__':
    app.run(main, argv=['--dry_run' if a == '--dry-run' else a for a in sys.argv])
