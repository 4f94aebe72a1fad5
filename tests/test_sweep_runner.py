"""launch/sweep.py as a runner: a rerun skips finished runs and retries failed ones, a
failed or stale run never contributes a row, two runs go at once on two devices, and SIGTERM
to the sweep leaves no child behind. Each run is tests/fake_run.py, a stand-in for
diffgen.main that follows a plan."""
import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from diffgen.analysis.provenance import config_digest
from launch import sweep
from tests.tiny import REPO

CONFIG = 'configs/digits.py:smoke'
FAKE = [sys.executable, os.path.join(REPO, 'tests', 'fake_run.py')]


@pytest.fixture
def fake(tmp_path, monkeypatch):
    monkeypatch.setitem(sweep.LAUNCHERS, 'fake', lambda args: FAKE + list(args))
    monkeypatch.setenv('FAKE_PLAN', str(tmp_path / 'plan.json'))
    monkeypatch.setenv('FAKE_CALLS', str(tmp_path / 'calls.jsonl'))
    return tmp_path


def write_plan(tmp_path, sizes, fail=(), sleep=0.5):
    """plan.json for the runs of get_sweep(sizes) (their config and provenance are the fake
    run's own, from its flags)."""
    _, overrides_list = sweep.load_sweep(CONFIG, sizes)
    plan = {}
    for overrides in overrides_list:
        n = overrides['data.num_train']
        plan[os.path.join(str(tmp_path / 'sweep'), sweep.run_name(overrides))] = {
            'n': n, 'ratio': 1.0 if n == 16 else 0.25, 'fail': n in fail, 'sleep': sleep}
    (tmp_path / 'plan.json').write_text(json.dumps(plan))


def calls(tmp_path):
    path = tmp_path / 'calls.jsonl'
    return [json.loads(l) for l in path.read_text().splitlines()] if path.exists() else []


def results(tmp_path):
    with open(tmp_path / 'sweep' / 'results.csv') as f:
        return list(csv.DictReader(f))


def test_rerun_skips_finished_and_retries_failed_runs(fake):
    write_plan(fake, '16,64,256', fail=(256,))
    runs, summary = sweep.sweep(CONFIG, str(fake / 'sweep'), '16,64,256', 'all', 'fake')
    assert [r.status for r in runs] == ['ok', 'ok', 'failed (exit 1)']
    assert [r['run'] for r in results(fake)] == ['num_train_16', 'num_train_64']  # never counted
    assert summary['transition'] is None                               # no eval.csv
    e6 = summary['e6']                                                 # 16: 128 of 128,
    assert e6['emm'] == 16 and e6['num_samples'] == 128                # 64: 32 of 128
    assert e6['pooled']['crossing']['separated'] == [16, 64]           # N* between them
    assert len(calls(fake)) == 3

    write_plan(fake, '16,64,256')                                      # the failure is fixed
    runs, _ = sweep.sweep(CONFIG, str(fake / 'sweep'), '16,64,256', 'all', 'fake')
    assert [r.status for r in runs] == ['ok (finished before)'] * 2 + ['ok']
    assert [c['workdir'].rsplit('/', 1)[1] for c in calls(fake)[3:]] == ['num_train_256']
    assert [r['run'] for r in results(fake)] == ['num_train_16', 'num_train_64', 'num_train_256']
    with open(fake / 'sweep' / 'num_train_256.log') as f:
        log = f.read()
    assert log.count('--- sweep: start') == 2 and 'failing as planned' in log  # appended


def test_stale_run_is_rerun_not_counted(fake):
    write_plan(fake, '16')
    sweep.sweep(CONFIG, str(fake / 'sweep'), '16', 'all', 'fake')
    # the same sweep with another training length: the old report is stale
    extra = ['training.num_steps=800']
    write_plan(fake, '16', fail=(16,))
    runs, summary = sweep.sweep(CONFIG, str(fake / 'sweep'), '16', 'all', 'fake', extra)
    assert runs[0].status == 'failed (exit 1)' and len(calls(fake)) == 2
    assert results(fake) == [] and summary is None


def test_finished_is_read_from_the_runs_own_config_json(fake):
    """Overrides that ast.literal_eval and config_flags parse differently (a float key's 1,
    a bool key's true, a string key's 16): the run is finished when its config.json (what
    diffgen.main parsed) and report say so, and is not run again; a changed override makes it
    stale, and it runs again."""
    extra = ['optim.eps=1', 'data.random_flip=true', 'model.init_from=16']
    write_plan(fake, '16')
    runs, _ = sweep.sweep(CONFIG, str(fake / 'sweep'), '16', 'all', 'fake', extra)
    assert runs[0].status == 'ok' and len(calls(fake)) == 1
    stored = json.loads((fake / 'sweep' / 'num_train_16' / 'config.json').read_text())
    assert (stored['optim']['eps'], stored['data']['random_flip'],
            stored['model']['init_from']) == (1.0, True, '16')   # literal_eval: 1, 'true', 16
    assert config_digest(stored) == config_digest(runs[0].config)

    runs, _ = sweep.sweep(CONFIG, str(fake / 'sweep'), '16', 'all', 'fake', extra)
    assert runs[0].status == 'ok (finished before)' and len(calls(fake)) == 1
    assert [r['run'] for r in results(fake)] == ['num_train_16']

    runs, _ = sweep.sweep(CONFIG, str(fake / 'sweep'), '16', 'all', 'fake',
                          ['optim.eps=2', *extra[1:]])                 # an override changed
    assert runs[0].status == 'ok' and len(calls(fake)) == 2
    assert json.loads((fake / 'sweep' / 'num_train_16' / 'config.json').read_text())[
        'optim']['eps'] == 2.0


def test_two_runs_at_once_on_two_devices(fake):
    write_plan(fake, '16,32,64,128', sleep=1.5)
    slots = sweep.default_slots('0,1')
    assert slots == [{'CUDA_VISIBLE_DEVICES': '0'}, {'CUDA_VISIBLE_DEVICES': '1'}]
    runs, _ = sweep.sweep(CONFIG, str(fake / 'sweep'), '16,32,64,128', 'all', 'fake',
                          slots=slots)
    assert all(r.status == 'ok' for r in runs)
    done = sorted(calls(fake), key=lambda c: c['start'])
    assert sorted(c['device'] for c in done[:2]) == ['0', '1']
    assert done[1]['start'] < done[0]['end']                  # the first two overlapped
    for a in done:                                             # never two runs on one device
        for b in done:
            if a is not b and a['device'] == b['device']:
                assert a['end'] <= b['start'] or b['end'] <= a['start']


def test_sigterm_stops_the_children_and_leaves_no_orphan(fake):
    write_plan(fake, '16,32', sleep=60)
    driver = textwrap.dedent(f"""
        import sys
        from launch import sweep
        sweep.LAUNCHERS['fake'] = lambda args: {FAKE!r} + list(args)
        runs, _ = sweep.sweep({CONFIG!r}, {str(fake / 'sweep')!r}, '16,32', 'all', 'fake',
                              slots=sweep.default_slots('0,1'))
        print('statuses', [r.status for r in runs], flush=True)
    """)
    process = subprocess.Popen([sys.executable, '-c', driver], cwd=REPO, env=os.environ,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    started = fake / 'calls.jsonl.started'
    deadline = time.time() + 120
    while (not started.exists() or len(started.read_text().split()) < 2) \
            and time.time() < deadline:
        time.sleep(0.2)
    children = [int(p) for p in started.read_text().split()]
    assert len(children) == 2
    process.send_signal(signal.SIGTERM)
    out = process.communicate(timeout=60)[0]
    assert "statuses ['interrupted', 'interrupted']" in out, out
    assert 'every run is resumable' in out
    for pid in children:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    assert not (fake / 'sweep' / 'num_train_16' / 'report').exists()


def test_collect_writes_the_transition_with_both_criteria_calibrated(fake):
    """With eval.csv in the finished runs, collect writes transition.json with the criteria's
    calibration on each N's data (copies.sweep_calibration of the runs' configs)."""
    write_plan(fake, '16,64')
    sweep.sweep(CONFIG, str(fake / 'sweep'), '16,64', 'all', 'fake')
    for n, rate in ((16, 0.9), (64, 0.2)):
        (fake / 'sweep' / f'num_train_{n}' / 'eval.csv').write_text(
            f'step,ddim/memorisation_ratio,ddim/near_copy_rate\n100,{rate},{rate}\n')
    runs, summary = sweep.collect_only(CONFIG, str(fake / 'sweep'), '16,64')
    calibration = summary['transition']['calibration']
    assert [c['num_train'] for c in calibration] == [16, 64]
    config = runs[0].config
    assert [x['sigma'] for x in calibration[0]['noisy']] == list(config.analysis.copy_noise_levels)
    for c in calibration:
        assert 0 < c['threshold'] and c['seeds'] == [config.seed]
        for x in c['noisy']:
            assert 0 <= x['ratio'] <= 1 and 0 <= x['distance'] <= 1
    with open(fake / 'sweep' / 'transition.json') as f:
        assert json.load(f)['calibration'] == json.loads(json.dumps(calibration))
