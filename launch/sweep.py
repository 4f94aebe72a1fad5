"""Runs a sweep declared beside a config, one run after another, and collects the results.

    python -m launch.sweep --config=configs/digits.py[:arg] --sweep_dir=D \
        [--sweep_arg=A] [--mode=all] [--launcher=local] [--override=key=value ...]

The config file's get_sweep(A) returns a list of override dicts ({'data.num_train': 64,
...}). Run i is `python -m diffgen.main --config=<config> --workdir=D/<name_i> --mode=<mode>
--config.<key>=<value> ...` (each --override is added to every run), started by the chosen
launcher; <name_i> joins the overridden keys' last parts and values (num_train_64). Its
output goes to D/<name_i>.log. Rerunning the same command resumes: every run resumes from
its checkpoints. Then every run's report/report.json is flattened ('e6.memorisation_ratio')
into one row of D/results.csv (with the run name, its status, its seconds and its
overrides), and where the rows carry E6 numbers D/emm.png plots the memorisation ratio
against N with the EMM marked (diffgen/experiments/e6_emm.py). Exit status 1 if a run failed.

A launcher is a function (main_args, log_path) -> exit status that runs diffgen.main with
those arguments to completion; LAUNCHERS maps --launcher names to them.
"""
from __future__ import annotations

import csv
import importlib.util
import io
import json
import os
import re
import subprocess
import sys
import time

if __package__ in (None, ''):  # run as a script: launch/sweep.py
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from diffgen import files  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_CONFIG = flags.DEFINE_string('config', None, 'Config file[:argument] that declares get_sweep.')
_SWEEP_DIR = flags.DEFINE_string('sweep_dir', None, 'Directory of the sweep: one workdir per run.')
_SWEEP_ARG = flags.DEFINE_string('sweep_arg', None, 'Argument passed to get_sweep.')
_MODE = flags.DEFINE_string('mode', 'all', 'diffgen.main --mode of every run.')
_LAUNCHER = flags.DEFINE_string('launcher', 'local',
                                'How each run is started: local, tpu_pod.')
_OVERRIDE = flags.DEFINE_multi_string('override', [], 'key=value added to every run.')


def run_local(main_args, log_path):
    """Runs `python -m diffgen.main MAIN_ARGS` here, from the repository root; its output
    goes to log_path and, line by line, to stdout. Returns its exit status."""
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    with files.open_file(log_path, 'w') as log:
        process = subprocess.Popen([sys.executable, '-m', 'diffgen.main', *main_args], cwd=REPO,
                                   env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                   text=True)
        for line in process.stdout:
            log.write(line)
            print(f'  {line}', end='', flush=True)
        return process.wait()


def run_tpu_pod(main_args, log_path):
    """Runs diffgen.main with MAIN_ARGS on every worker of the TPU pod $DIFFGEN_TPU in zone
    $DIFFGEN_TPU_ZONE through launch/tpu_pod.sh (the run's --workdir must be on GCS: use a
    gs:// --sweep_dir); its output goes to log_path and stdout. Returns its exit status."""
    pod = [os.path.join(REPO, 'launch', 'tpu_pod.sh'), f'--tpu={os.environ["DIFFGEN_TPU"]}',
           f'--zone={os.environ["DIFFGEN_TPU_ZONE"]}', '--']
    with files.open_file(log_path, 'w') as log:
        process = subprocess.Popen([*pod, *main_args], stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
        for line in process.stdout:
            log.write(line)
            print(f'  {line}', end='', flush=True)
        return process.wait()


LAUNCHERS = {'local': run_local, 'tpu_pod': run_tpu_pod}


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
    """num_train_64 for {'data.num_train': 64} (keys' last parts and values, joined by _);
    keys whose values are tuples (run settings, not the swept variable) are left out."""
    parts = [f'{k.split(".")[-1]}_{v}' for k, v in overrides.items()
             if not isinstance(v, (tuple, list))]
    return re.sub(r'[^A-Za-z0-9_.=-]', '', '_'.join(parts)) or 'run'


def main_args(config_flag, workdir, mode, overrides, extra):
    """diffgen.main's arguments for one run."""
    flags_ = [f'--config.{k}={format_value(v)}' for k, v in overrides.items()]
    return [f'--config={config_flag}', f'--workdir={workdir}', f'--mode={mode}', *flags_,
            *(f'--config.{e}' for e in extra)]


def flatten(tree, prefix=''):
    """The scalars of nested dicts as {'a.b': value}; lists are left out."""
    out = {}
    for key, value in tree.items():
        name = f'{prefix}{key}'
        if isinstance(value, dict):
            out.update(flatten(value, name + '.'))
        elif not isinstance(value, list):
            out[name] = value
    return out


def collect(sweep_dir, runs):
    """One row per run: name, status, seconds, overrides, then its report.json numbers."""
    rows = []
    for name, overrides, status, seconds in runs:
        row = {'run': name, 'status': status, 'seconds': round(seconds, 1), **overrides}
        path = os.path.join(sweep_dir, name, 'report', 'report.json')
        if files.exists(path):
            row.update(flatten(json.loads(files.read_text(path))))
        rows.append(row)
    return rows


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


def sweep(config_flag, sweep_dir, sweep_arg=None, mode='all', launcher='local', extra=()):
    """Runs the sweep, writes results.csv (and emm.png); returns (rows, EMM summary or None)."""
    from diffgen.analysis.experiments import e6_emm
    get_config, overrides_list = load_sweep(config_flag, sweep_arg)
    launch = LAUNCHERS[launcher]
    files.makedirs(sweep_dir)
    runs = []
    for i, overrides in enumerate(overrides_list):
        name = run_name(overrides)
        args = main_args(config_flag, os.path.join(sweep_dir, name), mode, overrides, extra)
        print(f'sweep {i + 1}/{len(overrides_list)}: {name}', flush=True)
        start = time.perf_counter()
        rc = launch(args, os.path.join(sweep_dir, f'{name}.log'))
        seconds = time.perf_counter() - start
        status = 'ok' if rc == 0 else f'failed (exit {rc})'
        print(f'sweep {i + 1}/{len(overrides_list)}: {name} {status} in {seconds:.0f}s',
              flush=True)
        runs.append((name, overrides, status, seconds))
    rows = collect(sweep_dir, runs)
    write_csv(rows, os.path.join(sweep_dir, e6_emm.RESULTS))
    threshold = get_config(config_flag.partition(':')[2] or None).analysis.e6_threshold
    summary = e6_emm.write_sweep_summary(sweep_dir, rows, threshold)
    print(f'wrote {os.path.join(sweep_dir, e6_emm.RESULTS)}', flush=True)
    if summary is not None:
        num_train, ratios, emm = summary
        print('memorisation ratio by N: ' + ', '.join(
            f'{n}: {r:.3f}' for n, r in zip(num_train, ratios)) + f'; EMM = {emm}', flush=True)
    return rows, summary


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f'unexpected arguments {argv[1:]}')
    if not _CONFIG.value or not _SWEEP_DIR.value:
        raise app.UsageError('--config and --sweep_dir are required')
    if _LAUNCHER.value not in LAUNCHERS:
        raise app.UsageError(f'--launcher={_LAUNCHER.value!r} is not one of {tuple(LAUNCHERS)}')
    rows, _ = sweep(_CONFIG.value, _SWEEP_DIR.value, _SWEEP_ARG.value, _MODE.value,
                    _LAUNCHER.value, _OVERRIDE.value)
    return 1 if any(r['status'] != 'ok' for r in rows) else 0


if __name__ == '__main__':
    app.run(main)
