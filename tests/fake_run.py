"""A stand-in for `python -m diffgen.main` in the sweep runner's tests: reads the plan
($FAKE_PLAN, JSON {workdir: {...}}), records its call in $FAKE_CALLS (one JSON line: workdir,
pid, CUDA_VISIBLE_DEVICES, start and end times), sleeps, then exits 1 where the plan says
fail, else writes what diffgen.main writes: config.json (its --config flags parsed by
ml_collections' config_flags, as diffgen.main parses them) and report.json with the planned
ratio (and every other experiment of its config.analysis.experiments, each with only its
provenance) and that config's provenance (its training.num_steps and digest). SIGTERM ends it with
status 0 and no report (as diffgen.main saves a checkpoint and stops)."""
import json
import os
import signal
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
args = dict(a[2:].split('=', 1) for a in sys.argv[1:] if a.startswith('--') and '=' in a)
workdir = args['workdir']
plan = json.load(open(os.environ['FAKE_PLAN']))[workdir]
start = time.time()
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))


def record():
    with open(os.environ['FAKE_CALLS'], 'a') as f:
        f.write(json.dumps({'workdir': workdir, 'pid': os.getpid(), 'start': start,
                            'end': time.time(),
                            'device': os.environ.get('CUDA_VISIBLE_DEVICES')}) + '\n')


with open(os.environ['FAKE_CALLS'] + '.started', 'a') as f:
    f.write(f'{os.getpid()}\n')
time.sleep(plan.get('sleep', 0.5))
record()
if plan.get('fail'):
    print('fake run: failing as planned', flush=True)
    sys.exit(1)
sys.path.insert(0, REPO)
from absl import flags  # noqa: E402 -- imported after the sleep: SIGTERM finds the handler set
from ml_collections import config_flags  # noqa: E402
from diffgen.analysis.provenance import config_digest  # noqa: E402

argv = [sys.argv[0], *(a for a in sys.argv[1:] if a.startswith('--config'))]
values = flags.FlagValues()
config_flags.DEFINE_config_file('config', flag_values=values, lock_config=True, sys_argv=argv)
values(argv)
config = values.config
os.makedirs(os.path.join(workdir, 'report'), exist_ok=True)
with open(os.path.join(workdir, 'config.json'), 'w') as f:   # as checkpoints.write_config
    json.dump(config.to_dict(), f, indent=2, default=list)
provenance = {'step': config.training.num_steps, 'config_digest': config_digest(config),
              'data_fingerprint': 'x'}
with open(os.path.join(workdir, 'report', 'report.json'), 'w') as f:
    report = {key: {'provenance': provenance} for key in config.analysis.experiments}
    report['e6'] = {'num_train': plan['n'], 'memorisation_ratio': plan['ratio'],
                    'num_samples': 128, 'provenance': provenance}
    json.dump(report, f)
print('fake run: done', flush=True)
