"""Runs started at once on a fresh data dir (what `launch.sweep --parallel=2` does on a new
machine): each prepares `diffgen_digits` and the quality classifier's cache only if no other
run has, taking turns (diffgen.files.shared_lock), and both go on with the same data."""
import os
import select
import subprocess
import sys
import textwrap

import numpy as np

from diffgen import files
from diffgen.analysis import quality
from tests.tiny import REPO

# One run's data work, started at the same moment as its twin: everything heavy is imported
# first, then it waits for the file GO and loads the digits (preparing diffgen_digits) and
# the quality classifier (training and caching it), and prints what it read.
RUN = textwrap.dedent('''
    import os, sys, time
    import numpy as np
    from diffgen import data
    from diffgen.analysis import quality
    from diffgen.data.sources import import_tfds
    from tests.tiny import tiny_digits_config
    data_dir, go = sys.argv[1], sys.argv[2]
    import_tfds()
    config = tiny_digits_config(data_dir)
    print('ready', flush=True)
    while not os.path.exists(go):
        time.sleep(0.01)
    dataset = data.load(config)
    model, params = quality.feature_extractor(config, dataset)
    print('done', int(dataset.train_images.astype(np.int64).sum()), flush=True)
''')


def test_two_runs_prepare_a_fresh_data_dir_at_once(digits_data_dir, tmp_path):
    data_dir, go = tmp_path / 'data', tmp_path / 'go'
    env = dict(os.environ, PYTHONUNBUFFERED='1',   # the session's compilations, not anew
               JAX_COMPILATION_CACHE_DIR=str(digits_data_dir / 'jax_compilation_cache'))
    runs = [subprocess.Popen([sys.executable, '-c', RUN, str(data_dir), str(go)], cwd=REPO,
                             env=env, text=True, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE) for _ in range(2)]
    for run in runs:
        assert run.stdout.readline() == 'ready\n', run.communicate()[1][-3000:]
    go.touch()   # both at once
    outputs = [run.communicate(timeout=600) for run in runs]
    for run, (out, err) in zip(runs, outputs):
        assert run.returncode == 0, err[-3000:]
        assert 'Traceback' not in err
    done = [out.split()[-2:] for out, _ in outputs]
    assert done[0][0] == 'done' and done[0] == done[1]   # the same training set in both
    prepared = data_dir / 'diffgen_digits'
    assert [p.name for p in prepared.iterdir() if not p.name.startswith('.')] == ['1.0.0']
    caches = list((data_dir / 'diffgen_quality').glob('*.npz'))
    assert len(caches) == 1 and files.load_npz(caches[0])
    assert not list((data_dir / 'diffgen_quality').glob('.*tmp*'))   # no write left half done


def test_a_run_waits_for_the_shared_lock(tmp_path):
    """shared_lock: a second holder (another process) waits until the first lets go."""
    lock = tmp_path / 'x.lock'
    hold = textwrap.dedent(f'''
        import sys
        from absl import logging
        from diffgen import files
        logging.set_verbosity(logging.INFO)   # its 'waiting for' line
        with files.shared_lock({str(lock)!r}, 'testing'):
            print('held', flush=True)
            sys.stdin.readline()
        print('released', flush=True)
    ''')
    first = subprocess.Popen([sys.executable, '-c', hold], cwd=REPO, text=True,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert first.stdout.readline() == 'held\n'
    second = subprocess.Popen([sys.executable, '-c', hold], cwd=REPO, text=True,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    # the second says it waits (a log line on stderr) and does not hold the lock yet
    assert select.select([second.stderr], [], [], 120)[0], 'no line from the second holder'
    assert 'waiting for another run testing' in second.stderr.readline()
    first.stdin.write('\n')
    first.stdin.flush()
    assert first.communicate(timeout=60)[0] == 'released\n'
    out, _ = second.communicate('\n', timeout=60)
    assert out == 'held\nreleased\n'
