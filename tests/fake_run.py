"""A stand-in for `python -m diffgen.main` in the sweep runner's tests: reads the plan
($FAKE_PLAN, JSON {workdir: {...}}), records its call in $FAKE_CALLS (one JSON line: workdir,
pid, CUDA_VISIBLE_DEVICES, start and end times), sleeps, then writes report.json with the
planned provenance and ratio, or exits 1 where the plan says fail. SIGTERM ends it with
status 0 and no report (as diffgen.main saves a checkpoint and stops)."""
import json
import os
import signal
import sys
import time

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
os.makedirs(os.path.join(workdir, 'report'), exist_ok=True)
provenance = {'step': plan['step'], 'config_digest': plan['digest'], 'data_fingerprint': 'x'}
with open(os.path.join(workdir, 'report', 'report.json'), 'w') as f:
    json.dump({'e6': {'num_train': plan['n'], 'memorisation_ratio': plan['ratio'],
                      'provenance': provenance}}, f)
print('fake run: done', flush=True)
