"""A sweep on a Slurm cluster: `python -m launch.sweep --launcher=slurm ...` submits the
sweep's unfinished runs as ONE job array (launch/slurm.py submit_array), task i running run i
(its override set and seed) in its own workdir <sweep_dir>/<run name>, at most --parallel=K
tasks at once (%K; without --parallel, as many as Slurm allows), and a dependent job that
collects results.csv when every task has ended (`python -m launch.sweep ... --collect`,
Slurm's afterany). Each task runs diffgen.main through launch/local.sh, as `python -m
launch.slurm` does, with the allocation of launch/slurm.py's flags given as --slurm=FLAG
(repeatable: --slurm=--partition=gpu --slurm=--time=4:00:00 --slurm=--sbatch=--mem=32G).

A rerun of the same command submits only the runs neither finished (launch.sweep.finished,
the provenance rule) nor still queued or running from an earlier submission
(<sweep_dir>/slurm/submitted.json, squeue), and nothing when there are none. A task that is
preempted is requeued (--requeue) and resumes from its checkpoint, as a single job does.
"""
from __future__ import annotations

import sys

from launch import slurm


def collect_argv(config_flag, sweep_dir, sweep_arg=None, mode='all', extra=(), seeds=None):
    """The command of the dependent job: the same sweep with --collect (run from the
    repository root, where a relative --config is read)."""
    argv = [sys.executable, '-m', 'launch.sweep', f'--config={config_flag}',
            f'--sweep_dir={sweep_dir}', f'--mode={mode}', '--launcher=slurm', '--collect']
    if sweep_arg is not None:
        argv.append(f'--sweep_arg={sweep_arg}')
    argv += [f'--override={e}' for e in extra]
    if seeds is not None:
        argv.append(f'--seeds={seeds}')
    return argv


def submit(runs, sweep_dir, options, max_parallel=None, collect=None, dry_run=False):
    """Submits the runs (launch.sweep.Run: status 'pending' = unfinished) that are neither
    finished nor still in Slurm as one array job, with `collect` (an argv) as its dependent
    job; with dry_run prints the scripts instead. Returns the job ids to wait for (the new
    array and its collect job, or the earlier submissions still holding unfinished runs);
    [] when nothing is submitted nor in Slurm. SlurmError when Slurm refuses."""
    commands = [(r.name, slurm.main_argv(options, r.args)) for r in runs]
    unfinished = {r.name for r in runs if r.status == 'pending'}
    todo = slurm.unsubmitted(commands, lambda name: name not in unfinished, sweep_dir)
    submitted = {name for name, _ in todo}
    in_slurm = sorted(unfinished - submitted)
    print(f'sweep: {len(runs)} runs, {len(runs) - len(unfinished)} finished before, '
          f'{len(in_slurm)} still in Slurm from an earlier submission, {len(todo)} to submit',
          flush=True)
    waiting = [str(i) for e in slurm.submissions(sweep_dir) if set(e.get('runs', ())) &
               set(in_slurm) for i in (e['job_id'], e.get('collect_job_id')) if i]
    if in_slurm:
        print(f'sweep: still in Slurm: {", ".join(in_slurm)} (jobs {", ".join(waiting)})',
              flush=True)
    if not todo:
        return waiting
    job_id = slurm.submit_array(todo, sweep_dir, max_parallel, options, dry_run, collect)
    if dry_run:
        return []
    entry = slurm.submissions(sweep_dir)[-1]
    limit = f', at most {max_parallel} at once' if max_parallel else ''
    print(f'sweep: submitted array job {job_id} ({len(todo)} runs{limit}): {entry["script"]}; '
          f'run i appends to {sweep_dir}/<run name>.log', flush=True)
    if entry.get('collect_job_id'):
        print(f'sweep: job {entry["collect_job_id"]} writes {sweep_dir}/results.csv when they '
              'have ended', flush=True)
    return waiting + [job_id] + ([entry['collect_job_id']] if entry.get('collect_job_id')
                                 else [])
