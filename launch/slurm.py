"""Runs diffgen on a Slurm cluster: one training job, or a sweep's runs as a job array.

One job (from the repository root, on a login node that shares the repository and the
workdir with the compute nodes):

    python -m launch.slurm [--nodes=1] [--ntasks_per_node=1] [--gpus_per_task=1] \
        [--cpus_per_task=C] [--time=HH:MM:SS] [--partition=P] [--account=A] \
        [--job_name=NAME] [--sbatch=--x=y ...] [--norequeue] [--signal_grace=S] \
        [--python=PYTHON] [--cpu_devices=N] [--dry-run] \
        -- --config=FILE[:arg] --workdir=DIR [--mode=MODE] [--config.section.key=value ...]

writes <workdir>/slurm/<name>.sbatch (<name>: --job_name, default diffgen-<workdir's
basename>) and submits it with `sbatch --parsable`, printing the job id and the output file,
<workdir>/slurm/<name>-<job id>.out. Everything after `--` goes to diffgen.main unchanged (a
relative --config or --workdir is relative to the repository root, where each task runs).
Each of the job's tasks (nodes x ntasks_per_node, started by srun) runs diffgen.main through
launch/local.sh; with more than one task in all it sets DIFFGEN_DISTRIBUTED=auto, so that
jax.distributed.initialize() reads the job's topology from Slurm (SLURM_JOB_ID,
SLURM_STEP_NODELIST, SLURM_NTASKS, SLURM_PROCID, SLURM_LOCALID) and the tasks train one
data-parallel model. --gpus_per_task=0 asks for no GPUs (a CPU cluster: the tasks'
collectives then go through JAX's CPU collectives, gloo); --cpu_devices=N gives each task N
simulated CPU devices (launch/local.sh --cpu_devices), for trying the sharded paths.

Preemption: the job is requeued when preempted or when a node fails (--requeue, the default)
and asks Slurm for SIGTERM --signal_grace seconds before its time limit (--signal=TERM@S);
diffgen.main saves a checkpoint on SIGTERM and exits 0, and the requeued job (or
`sbatch <script>` by hand) runs the same command, which resumes from the latest checkpoint.
Its output is appended to the same file (--open-mode=append). When Slurm preempts or
cancels a job it sends SIGTERM and waits KillWait (cluster-wide, often 30 s) or the
partition's GraceTime before SIGKILL: diffgen saves within that for the models here.

Errors (no sbatch on PATH, sbatch refusing the script: a bad option, partition, account)
are one line `diffgen: error: ...` (sbatch's own message) with exit status 2; the script
file is kept.

Job arrays (for launch/sweep.py): submit_array() submits one array job whose task i runs
command i, pending() lists the runs of earlier submissions still in Slurm, submit_after()
submits a job that runs once the array has ended (collecting its results), wait_for()
waits until jobs have left the queue. Every submission is recorded in
<sweep_dir>/slurm/submitted.json.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import os
import shlex
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOCAL_SH = os.path.join(REPO, 'launch', 'local.sh')


class SlurmError(Exception):
    """Slurm refused or could not be reached: str(error) is one line for the user."""


@dataclasses.dataclass
class Options:
    """How each job is allocated and started (the flags of `python -m launch.slurm`)."""
    nodes: int = 1
    ntasks_per_node: int = 1
    gpus_per_task: int = 1           # 0: no GPUs (a CPU cluster)
    cpus_per_task: int | None = None
    time: str | None = None          # Slurm's time formats: MM, HH:MM:SS, D-HH, ...
    partition: str | None = None
    account: str | None = None
    job_name: str | None = None
    sbatch: tuple = ()               # extra '--x=y' options, one #SBATCH line each
    requeue: bool = True
    signal_grace: int = 120          # seconds of SIGTERM warning before the time limit
    python: str = sys.executable
    cpu_devices: int | None = None   # simulated CPU devices per task (launch/local.sh)

    @property
    def num_tasks(self):
        return self.nodes * self.ntasks_per_node

    def check(self):
        for name in ('nodes', 'ntasks_per_node'):
            if getattr(self, name) < 1:
                raise SlurmError(f'--{name} must be at least 1, got {getattr(self, name)}')
        if self.gpus_per_task < 0:
            raise SlurmError(f'--gpus_per_task must be 0 or more, got {self.gpus_per_task}')
        if self.cpus_per_task is not None and self.cpus_per_task < 1:
            raise SlurmError(f'--cpus_per_task must be at least 1, got {self.cpus_per_task}')
        if self.signal_grace < 0:
            raise SlurmError(f'--signal_grace must be 0 or more, got {self.signal_grace}')
        for option in self.sbatch:
            if not option.startswith('-'):
                raise SlurmError(f'--sbatch={option!r} is not an sbatch option (--name=value)')
        return self


def q(arg):
    """arg quoted for bash (shlex: single quotes where needed)."""
    return shlex.quote(str(arg))


def quote_argv(argv):
    return ' '.join(q(a) for a in argv)


def _commit():
    try:
        out = subprocess.run(['git', '-C', REPO, 'rev-parse', '--short', 'HEAD'],
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else 'unknown'
    except (OSError, subprocess.SubprocessError):
        return 'unknown'


def _header(what, script, made_by, extra_comments=(), resubmit='it resumes'):
    now = datetime.datetime.now().astimezone().isoformat(timespec='seconds')
    lines = ['#!/bin/bash',
             f'# {what}',
             f'# Written by launch/slurm.py (diffgen) on {now}, repository {REPO} at commit '
             f'{_commit()}:',
             f'#   {made_by}',
             *(f'# {c}' for c in extra_comments),
             f'# Resubmit by hand ({resubmit}): sbatch {script}']
    return lines


def _sbatch_lines(options, name, output):
    """The #SBATCH lines of a job: allocation, output, requeue and signal."""
    o = options
    lines = [f'--job-name={name}', f'--nodes={o.nodes}', f'--ntasks-per-node={o.ntasks_per_node}']
    if o.cpus_per_task:
        lines.append(f'--cpus-per-task={o.cpus_per_task}')
    if o.gpus_per_task:
        lines.append(f'--gpus-per-task={o.gpus_per_task}')
    for key in ('time', 'partition', 'account'):
        if getattr(o, key):
            lines.append(f'--{key}={getattr(o, key)}')
    lines += [f'--chdir={REPO}', f'--output={output}', '--open-mode=append',
              '--requeue' if o.requeue else '--no-requeue']
    if o.signal_grace:
        lines.append(f'--signal=TERM@{o.signal_grace}')
    lines += list(o.sbatch)
    return [f'#SBATCH {line}' for line in lines]


def _environment(options):
    """The exports of a job's script (before its srun)."""
    lines = ['set -euo pipefail',
             f'export PYTHON={q(options.python)}   # the interpreter launch/local.sh runs',
             'export PYTHONUNBUFFERED=1   # output as it happens']
    if options.num_tasks > 1:
        lines.append('# several tasks: jax.distributed.initialize() reads the topology from '
                     'Slurm (SLURM_*)')
        lines.append('export DIFFGEN_DISTRIBUTED=auto')
    if options.gpus_per_task:
        ids = ','.join(str(i) for i in range(options.gpus_per_task))
        lines.append('# each task uses every GPU Slurm binds to it (--gpus-per-task), not only '
                     'the one of its SLURM_LOCALID')
        lines.append(f'export JAX_LOCAL_DEVICE_IDS={ids}')
    return lines


def _srun(options, argv_text):
    """srun starting a command (argv_text: its words, quoted for bash) in every task, each
    task announcing itself on stderr first."""
    srun = ['srun', '--kill-on-bad-exit=1']
    if options.cpus_per_task:  # srun of Slurm 22.05 does not inherit it from sbatch
        srun.append(f'--cpus-per-task={options.cpus_per_task}')
    announce = ('echo "--- slurm: task ${SLURM_PROCID} of ${SLURM_NTASKS} on $(hostname)" >&2; '
                'exec "$@"')
    return f'{quote_argv(srun)} bash -c {q(announce)} task {argv_text}'


def _job_start_line():
    return ('echo "--- slurm: job ${SLURM_JOB_ID} (restart ${SLURM_RESTART_COUNT:-0}) on '
            '${SLURM_JOB_NODELIST}, ${SLURM_NTASKS} task(s), $(date -Is)"')


def main_argv(options, main_args):
    """What each task runs: launch/local.sh [--cpu_devices=N] MAIN_ARGS."""
    devices = [f'--cpu_devices={options.cpu_devices}'] if options.cpu_devices else []
    return [LOCAL_SH, *devices, *main_args]


def workdir_of(main_args):
    values = [a.split('=', 1)[1] for a in main_args if a.startswith('--workdir=')]
    if not values or not values[-1]:
        raise SlurmError('diffgen.main needs --workdir=DIR (after --)')
    workdir = values[-1]
    if '://' in workdir:
        raise SlurmError(f'--workdir={workdir}: a Slurm job needs a workdir on a filesystem '
                         'the nodes share')
    return os.path.join(REPO, workdir)  # relative: to the repository root, where tasks run


def job_name(options, workdir):
    return options.job_name or f'diffgen-{os.path.basename(os.path.normpath(workdir))}'


def training_script(options, main_args, made_by='python -m launch.slurm'):
    """(path, text) of the batch script of one diffgen.main job."""
    options.check()
    workdir = workdir_of(main_args)
    name = job_name(options, workdir)
    slurm_dir = os.path.join(workdir, 'slurm')
    path = os.path.join(slurm_dir, f'{name}.sbatch')
    lines = _header(f'diffgen.main on {options.num_tasks} Slurm task(s): {name}', path, made_by,
                    [f'Output: {slurm_dir}/{name}-<job id>.out (a requeued job appends to it)'])
    lines += _sbatch_lines(options, name, os.path.join(slurm_dir, f'{name}-%j.out'))
    lines += ['', *_environment(options), _job_start_line(),
              _srun(options, quote_argv(main_argv(options, main_args)))]
    return path, '\n'.join(lines) + '\n'


def _write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f'{path}.tmp{os.getpid()}'
    with open(tmp, 'w') as f:
        f.write(text)
    os.replace(tmp, path)


def _run(argv, what):
    """subprocess.run of a Slurm client; SlurmError with its own message if it fails."""
    if shutil.which(argv[0]) is None:
        raise SlurmError(f'{argv[0]} not found on PATH: {what} needs a Slurm login node '
                         '(Slurm\'s client commands)')
    try:
        result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        raise SlurmError(f'{argv[0]} did not answer within 120 s ({what})') from None
    if result.returncode != 0:
        message = ' '.join(l.strip() for l in (result.stderr or result.stdout).splitlines()
                           if l.strip()) or f'exit status {result.returncode}'
        raise SlurmError(f'{what}: {message}')
    return result.stdout


def submit(path, extra=()):
    """Submits the batch script at path with `sbatch --parsable`; returns the job id."""
    out = _run(['sbatch', '--parsable', *extra, path], f'sbatch refused {path}')
    job_id = out.strip().split(';')[0]
    if not job_id.isdigit():
        raise SlurmError(f'sbatch answered {out.strip()!r}, not a job id ({path})')
    return job_id


def launch(options, main_args, dry_run=False, made_by='python -m launch.slurm'):
    """Writes and submits one diffgen.main job; returns (job id, script path, script text);
    with dry_run writes and submits nothing (job id None)."""
    path, text = training_script(options, main_args, made_by)
    if dry_run:
        return None, path, text
    _write(path, text)
    return submit(path), path, text


# ---------------------------------------------------------------------------- job arrays

def _record_path(sweep_dir):
    return os.path.join(sweep_dir, 'slurm', 'submitted.json')


def submissions(sweep_dir):
    """The submissions recorded in <sweep_dir>/slurm/submitted.json (a list of dicts with
    job_id, script, runs and, for an array, collect_job_id)."""
    try:
        with open(_record_path(sweep_dir)) as f:
            return json.load(f)
    except FileNotFoundError:
        return []
    except ValueError as e:
        raise SlurmError(f'{_record_path(sweep_dir)} is damaged ({e}); move it away to '
                         'resubmit every unfinished run') from None


def _record(sweep_dir, entry):
    entries = submissions(sweep_dir) + [entry]
    _write(_record_path(sweep_dir), json.dumps(entries, indent=2) + '\n')


def _next_index(sweep_dir, prefix):
    slurm_dir = os.path.join(sweep_dir, 'slurm')
    taken = [n[len(prefix) + 1:-len('.sbatch')] for n in
             (os.listdir(slurm_dir) if os.path.isdir(slurm_dir) else [])
             if n.startswith(prefix + '_') and n.endswith('.sbatch')]
    return max([int(t) for t in taken if t.isdigit()], default=-1) + 1


def array_script(commands, sweep_dir, max_parallel, options, index=0,
                 made_by='launch/slurm.py submit_array()'):
    """(path, text) of the array job whose task i runs commands[i] = (run name, argv), its
    output appended to <sweep_dir>/<run name>.log."""
    options.check()
    if not commands:
        raise SlurmError('no runs to submit')
    if max_parallel is not None and max_parallel < 1:
        raise SlurmError(f'at most {max_parallel} runs at once: need 1 or more')
    sweep_dir = os.path.abspath(sweep_dir)
    slurm_dir = os.path.join(sweep_dir, 'slurm')
    path = os.path.join(slurm_dir, f'array_{index}.sbatch')
    name = options.job_name or f'diffgen-sweep-{os.path.basename(os.path.normpath(sweep_dir))}'
    n = len(commands)
    lines = _header(f'A diffgen sweep: {n} run(s) of {sweep_dir}, task i runs run i', path,
                    made_by, ['Output: each run appends to <sweep dir>/<run name>.log; Slurm\'s '
                              f'own messages go to {slurm_dir}/array_{index}_<task>.out'],
                    resubmit='every run again, each resuming; rerunning the sweep submits only '
                    'its unfinished runs')
    array = f'0-{n - 1}' + (f'%{max_parallel}' if max_parallel else '')
    lines += _sbatch_lines(options, name, os.path.join(slurm_dir, f'array_{index}_%a.out'))
    lines.insert(lines.index(f'#SBATCH --job-name={name}') + 1, f'#SBATCH --array={array}')
    lines += ['', *_environment(options), 'case "$SLURM_ARRAY_TASK_ID" in']
    for i, (run, argv) in enumerate(commands):
        lines.append(f'  {i}) run={q(run)}; command=({quote_argv(argv)}) ;;')
    lines += ['  *) echo "no run for array task $SLURM_ARRAY_TASK_ID" >&2; exit 2 ;;', 'esac',
              f'log={q(sweep_dir)}/"$run".log',
              'echo "--- slurm: start job ${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID} (restart '
              '${SLURM_RESTART_COUNT:-0}) on $(hostname), $(date -Is): ${command[*]}" >> "$log"',
              _srun(options, '"${command[@]}"') + ' >> "$log" 2>&1']
    return path, '\n'.join(lines) + '\n'


def submit_array(commands, sweep_dir, max_parallel=None, slurm_options=None, dry_run=False,
                 collect=None):
    """Submits the runs `commands` ([(run name, argv)], the sweep's unfinished runs not
    pending()) as one job array of at most max_parallel tasks at once; returns its job id
    (None with dry_run, which prints the script and writes nothing). The script is
    <sweep_dir>/slurm/array_<n>.sbatch; the job id and run names are recorded in
    <sweep_dir>/slurm/submitted.json. collect (an argv) is submitted as a dependent job
    (submit_after) that runs when every task has ended, whatever their status."""
    options = slurm_options or Options()
    path, text = array_script(commands, sweep_dir, max_parallel, options,
                              _next_index(sweep_dir, 'array'))
    if dry_run:
        print(text, end='')
        if collect:
            print(collect_script(collect, sweep_dir, '<array job id>', options)[1], end='')
        return None
    _write(path, text)
    job_id = submit(path)
    entry = {'job_id': job_id, 'script': path, 'runs': [run for run, _ in commands],
             'submitted': datetime.datetime.now().astimezone().isoformat(timespec='seconds')}
    try:
        if collect:
            entry['collect_job_id'] = submit_after(collect, job_id, sweep_dir, options)
    finally:
        _record(sweep_dir, entry)
    return job_id


def collect_script(argv, sweep_dir, after, options, index=0):
    """(path, text) of a one-task job running argv once job `after` has ended."""
    sweep_dir = os.path.abspath(sweep_dir)
    slurm_dir = os.path.join(sweep_dir, 'slurm')
    path = os.path.join(slurm_dir, f'collect_{index}.sbatch')
    one = dataclasses.replace(options, nodes=1, ntasks_per_node=1, gpus_per_task=0,
                              job_name=f'{options.job_name or "diffgen-sweep"}-collect',
                              cpu_devices=None)
    lines = _header(f'Collects the results of {sweep_dir} after job {after} has ended', path,
                    'launch/slurm.py submit_after()',
                    resubmit=f'it collects again once job {after} has ended')
    lines += _sbatch_lines(one, one.job_name, os.path.join(slurm_dir, f'collect_{index}.out'))
    lines += [f'#SBATCH --dependency=afterany:{after}', '#SBATCH --kill-on-invalid-dep=yes',
              '', 'set -euo pipefail', _job_start_line(), quote_argv(argv)]
    return path, '\n'.join(lines) + '\n'


def submit_after(argv, after, sweep_dir, slurm_options=None):
    """Submits a one-task job running argv (e.g. `python -m launch.sweep ... --collect`)
    once job `after` (every task of an array) has ended; returns its job id."""
    options = slurm_options or Options()
    path, text = collect_script(argv, sweep_dir, after, options,
                                _next_index(sweep_dir, 'collect'))
    _write(path, text)
    return submit(path)


def queued(job_ids):
    """{job or array task id ('123', '123_4'): state} of those of job_ids (and of their
    array tasks) that Slurm still lists (pending, running, completing, ...)."""
    job_ids = [str(j) for j in job_ids]
    if not job_ids:
        return {}
    try:
        out = _run(['squeue', '-h', '-r', '-o', '%i %T', '-j', ','.join(job_ids)],
                   'squeue failed')
    except SlurmError as e:
        if 'Invalid job id' not in str(e):
            raise
        out = ''   # none of them is known to Slurm any more (gone from its memory)
    wanted = set(job_ids)
    states = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].split('_')[0] in wanted:
            states[parts[0]] = parts[1]
    return states


def pending(sweep_dir):
    """{run name: Slurm state} of the runs of earlier submissions to sweep_dir still queued
    or running: a rerun of the sweep submits only runs neither finished nor in here."""
    entries = [e for e in submissions(sweep_dir) if e.get('runs')]
    states = queued([e['job_id'] for e in entries])
    runs = {}
    for e in entries:
        for i, run in enumerate(e['runs']):
            state = states.get(f'{e["job_id"]}_{i}')
            if state:
                runs[run] = state
    return runs


def unsubmitted(commands, is_finished, sweep_dir):
    """The (run name, argv) of commands to submit now: those neither finished
    (is_finished(run name) false) nor still in Slurm from an earlier submission (pending)."""
    todo = [(run, argv) for run, argv in commands if not is_finished(run)]
    in_slurm = pending(sweep_dir) if todo else {}
    return [(run, argv) for run, argv in todo if run not in in_slurm]


def wait_for(job_ids, poll=5.0, timeout=None):
    """Waits until none of job_ids (nor any of their array tasks) is in squeue any more;
    TimeoutError after timeout seconds (None: no limit)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while queued(job_ids):
        if deadline is not None and time.monotonic() > deadline:
            raise TimeoutError(f'jobs {", ".join(map(str, job_ids))} still in the queue after '
                               f'{timeout} s')
        time.sleep(poll)


# ---------------------------------------------------------------------------- command line

def _flags():
    from absl import flags
    values = flags.FlagValues()
    flags.DEFINE_integer('nodes', 1, 'Nodes of the job.', flag_values=values)
    flags.DEFINE_integer('ntasks_per_node', 1, 'Tasks (processes) per node: one per GPU.',
                         flag_values=values)
    flags.DEFINE_integer('gpus_per_task', 1, 'GPUs per task (0: none, a CPU cluster).',
                         flag_values=values)
    flags.DEFINE_integer('cpus_per_task', None, 'CPU cores per task.', flag_values=values)
    flags.DEFINE_string('time', None, 'Time limit (Slurm format: HH:MM:SS, D-HH, ...).',
                        flag_values=values)
    flags.DEFINE_string('partition', None, 'Partition.', flag_values=values)
    flags.DEFINE_string('account', None, 'Account charged.', flag_values=values)
    flags.DEFINE_string('job_name', None, 'Job name (default diffgen-<workdir basename>); '
                        'the script is <workdir>/slurm/<job_name>.sbatch.', flag_values=values)
    flags.DEFINE_multi_string('sbatch', [], "An extra '#SBATCH' option ('--x=y'); repeatable.",
                              flag_values=values)
    flags.DEFINE_bool('requeue', True, 'Requeue the job when preempted or its node fails.',
                      flag_values=values)
    flags.DEFINE_integer('signal_grace', 120, 'SIGTERM this many seconds before the time '
                         'limit (0: none).', flag_values=values)
    flags.DEFINE_string('python', sys.executable, 'Interpreter on the nodes.',
                        flag_values=values)
    flags.DEFINE_integer('cpu_devices', None, 'Simulated CPU devices per task.',
                         flag_values=values)
    flags.DEFINE_bool('dry_run', False, 'Print the script; write and submit nothing.',
                      flag_values=values)
    return values


def error(message):
    print(f'diffgen: error: {message}', file=sys.stderr, flush=True)
    return 2


def _options(values):
    return Options(**{f.name: getattr(values, f.name) for f in dataclasses.fields(Options)
                      if f.name != 'sbatch'}, sbatch=tuple(values.sbatch))


def parse_options(args, what='--slurm'):
    """Options from this module's flags (['--partition=gpu', '--gpus_per_task=0', ...], as
    `python -m launch.slurm` takes them before --; --dry-run excluded): for launch/sweep.py's
    --slurm. SlurmError (one line) for a flag it does not know or a bad value."""
    from absl import flags
    if any(a.split('=', 1)[0] in ('--dry-run', '--dry_run', '--nodry_run') for a in args):
        raise SlurmError(f'{what}: --dry-run is the sweep\'s own flag, not a Slurm option')
    values = _flags()
    try:
        rest = values(['launch.slurm', *args])
    except flags.Error as e:
        raise SlurmError(f'{what}: {e}') from None
    if len(rest) > 1:
        raise SlurmError(f'{what}: {rest[1:]} are not flags of launch/slurm.py (--name=value)')
    return _options(values).check()


def main(argv=None):
    from absl import flags
    argv = list(sys.argv if argv is None else argv)
    split = argv.index('--') if '--' in argv else len(argv)
    ours = ['--dry_run' if a == '--dry-run' else a for a in argv[:split]]
    main_args = argv[split + 1:]
    values = _flags()
    if any(a in ('-h', '--help', '--helpfull') for a in ours[1:]):
        print(f'usage: python -m launch.slurm [flags] -- <diffgen.main arguments>\n\n'
              f'{(__doc__ or "").strip()}\n\nflags:\n{values.main_module_help() or values}')
        return 0
    try:
        rest = values(ours)
    except flags.Error as e:
        return error(f'{e} (diffgen.main\'s arguments go after --)')
    if len(rest) > 1:
        return error(f'unexpected arguments {rest[1:]} (diffgen.main\'s arguments go after --)')
    options = _options(values)
    made_by = 'python -m launch.slurm ' + quote_argv([*ours[1:], '--', *main_args])
    try:
        job_id, path, text = launch(options, main_args, values.dry_run, made_by)
    except SlurmError as e:
        return error(str(e))
    if job_id is None:
        print(text, end='')
        return 0
    output = os.path.join(os.path.dirname(path), f'{job_name(options, workdir_of(main_args))}'
                          f'-{job_id}.out')
    print(f'submitted job {job_id}: {path}')
    print(f'output: {output}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
