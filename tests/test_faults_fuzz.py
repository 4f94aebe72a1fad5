"""Fuzzing the two readers of files a user hands a run or leaves in a workdir: the npz data
source (data.source = 'npz:PATH') and the workdir's config.json (read on resume, and by
--mode=compare for the other workdir), with seeded random corruptions and wrong types.

- npz: images and labels of random dtypes (integers, floats with NaN and inf, bool,
  complex, strings), shapes (0 to 5 axes, zero-length ones) and ranges, keys missing or
  extra, a single array instead of an archive, then (sometimes) the file cut short or a
  byte changed. Accepted: the training set is uint8 (N, H, W, C) with every axis > 0.
- config.json: a run's own, with values at any depth replaced by values of other JSON
  types, keys dropped or added, sections replaced, then (sometimes) cut short or a byte
  changed. Accepted: every key a resume checks still holds the run's value (a dropped key
  or section: its default), as checkpoints._fingerprint defines those keys. Refused: one
  line naming the file, or the workdir whose checkpoints came from another config.

Each case must end in a result or in one UserError with a one-line message naming the
file, which diffgen.main prints as one `diffgen: error:` line with exit status 2
(`fail(str(error))`); never another exception. In this process, CASES of each; a few of the
refused ones then go through `python -m diffgen.main` to show the line and the status. In
the slow suite (python -m pytest -m slow)."""
import copy
import json
import os

import flax
import numpy as np
import pytest

from diffgen import data
from diffgen.analysis import compare
from diffgen.errors import UserError
from diffgen.training import checkpoints as checkpointing
from tests import tiny
from tests.fuzzing import mutate_object
from tests.test_faults_workdir import stand_in_workdir
from tests.tiny import override_flags, tiny_digits_config

pytestmark = pytest.mark.slow

CASES = 300
SEED = 0
CLI_CASES = 3   # refused cases of each reader run through diffgen.main

DTYPES = ['uint8', 'uint8', 'int8', 'int16', 'uint16', 'int64', 'float16', 'float32',
          'float64', 'bool', 'complex64', '<U1']
SIZES = [0, 1, 2, 3, 8, 8, 9, 16]
# values of every JSON type and of ranges that matter
VALUES = [None, True, False, 0, -1, 1, 2, 8, 1000, 0.5, -0.5, 1e308, float('nan'),
          float('inf'), '', 'x', '8', 'digits', 'npz:/nowhere.npz', 'ddim', [], [1], [1, 2],
          ['x'], [None], {}, {'a': 1}, {'ch': 8}]
EXTRA_KEYS = ['zzz', 'ch', 'batch_size', 'source', 'evals', 'plugins']


def one_line(error, *paths):
    """What diffgen.main prints for error, asserted to be one line naming one of paths."""
    assert isinstance(error, UserError), f'{type(error).__name__}: {error}'
    message = str(error)
    assert message and '\n' not in message, message
    assert any(str(path) in message for path in paths), message
    return f'diffgen: error: {message}'


def damage(raw, rng, rate):
    """raw bytes, at the given rate cut short or with one byte changed (half each)."""
    kind = 'none' if rng.random() >= rate else rng.choice(['cut', 'byte'])
    if kind == 'cut' and raw:
        return raw[:rng.integers(len(raw))]
    if kind == 'byte' and raw:
        position = rng.integers(len(raw))
        return raw[:position] + bytes([rng.integers(256)]) + raw[position + 1:]
    return raw


def random_array(rng, shape, dtype):
    """An array of shape and dtype with values of a random range (for floats, sometimes a
    NaN or inf in it)."""
    if dtype == '<U1':
        return np.full(shape, 'x')
    if dtype == 'bool':
        return rng.integers(0, 2, shape).astype(bool)
    if dtype.startswith(('int', 'uint')):
        info = np.iinfo(dtype)
        low, high = [(0, 256), (0, 256), (0, 256), (-3, 256), (0, 300), (0, 70000)][
            rng.integers(6)]
        return rng.integers(max(low, info.min), min(high, info.max + 1), shape).astype(dtype)
    low, high = [(0, 1), (0, 1), (-1, 1), (-1, 1), (-0.2, 1), (0, 255), (-1e4, 1e4)][
        rng.integers(7)]
    values = rng.uniform(low, high, shape).astype(dtype)
    if values.size and rng.random() < 0.2:
        values.flat[rng.integers(values.size)] = [np.nan, np.inf, -np.inf][rng.integers(3)]
    return values


def random_npz(path, rng):
    """Writes a randomly wrong (or right) npz source to path."""
    n = SIZES[rng.integers(len(SIZES))] if rng.random() < 0.3 else 16
    shapes = [(n, 8, 8), (n, 8, 8, 1), (n, 8, 8, 3)] if rng.random() < 0.6 else [
        (n, 8, 8, 0), (n, 8), (n,), (), (n, 8, 8, 1, 1), (n, SIZES[rng.integers(len(SIZES))], 8)]
    shape = shapes[rng.integers(len(shapes))]
    dtype = 'uint8' if rng.random() < 0.3 else DTYPES[rng.integers(len(DTYPES))]
    arrays = {'images': random_array(rng, shape, dtype)}
    if rng.random() < 0.5:
        label_shape = [(n,), (n,), (n, 1), (n + 1,), ()][rng.integers(5)]
        label_dtype = ['int32', 'int64', 'uint8', 'float32', 'bool'][rng.integers(5)]
        labels = random_array(rng, label_shape, label_dtype)
        if rng.random() < 0.2 and labels.size and label_dtype.startswith('int'):
            labels.flat[0] = [-1, 10**6][rng.integers(2)]
        arrays['labels'] = labels
    if rng.random() < 0.1:
        arrays['pixels'] = arrays.pop('images')        # the key misnamed
    if rng.random() < 0.1:
        arrays['extra'] = np.zeros(3)
    with open(path, 'wb') as f:
        if rng.random() < 0.05:
            np.save(f, next(iter(arrays.values())))   # a single array, not an archive
        else:
            np.savez(f, **arrays)
    path.write_bytes(damage(path.read_bytes(), rng, 0.25))


def npz_config(data_dir, path, rng):
    """The tiny config reading path, with a random training-set and held-out size."""
    return tiny_digits_config(data_dir, **{
        'data.source': f'npz:{path}', 'data.num_train': [-1, -1, 1, 4, 100][rng.integers(5)],
        'data.num_heldout': [0, 0, 2, 20][rng.integers(4)]})


def test_npz_sources_end_in_a_training_set_or_one_line(tmp_path):
    rng = np.random.default_rng(SEED)
    outcomes = {'accepted': 0, 'refused': []}
    for case in range(CASES):
        path = tmp_path / f'case{case}.npz'
        random_npz(path, rng)
        config = npz_config(tmp_path / 'data', path, rng)
        data.check_config(config)   # what diffgen.main validates first (nothing is read)
        try:
            dataset = data.load(config)
        except Exception as e:  # noqa: BLE001 -- one_line fails anything but a UserError
            outcomes['refused'].append((config, one_line(e, path)))
            continue
        images = dataset.train_images
        assert images.dtype == np.uint8 and images.ndim == 4 and 0 not in images.shape, (
            case, images.dtype, images.shape)
        outcomes['accepted'] += 1
    refused = outcomes['refused']
    assert outcomes['accepted'] >= 20 and len(refused) >= CASES // 2, (
        outcomes['accepted'], len(refused))

    for case, (config, line) in enumerate(refused[:CLI_CASES]):   # through the command line
        workdir = tmp_path / f'work{case}'
        d = config.data
        result = tiny.run_main(
            '--config=configs/digits.py', f'--workdir={workdir}', '--mode=train',
            *override_flags(d.data_dir, **{'data.source': d.source, 'data.num_train': d.num_train,
                                           'data.num_heldout': d.num_heldout}), timeout=900)
        assert_printed(result, line)
        assert not workdir.exists()


def assert_printed(result, line):
    """diffgen.main's exit status 2 and line as stderr's last and only error line."""
    assert result.returncode == 2 and 'Traceback' not in result.stderr, result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert [l for l in lines if l.startswith('diffgen: error:')] == [line] == lines[-1:], (
        result.stderr[-3000:])


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
    """(workdir, config, fingerprint): the tiny digits run's stand-in workdir
    (tests.test_faults_workdir.stand_in_workdir: config.json is read before any checkpoint
    is restored), with its own data dir."""
    root = tmp_path_factory.mktemp('fuzz_workdir')
    config = tiny_digits_config(root / 'data')
    return root / 'work', config, stand_in_workdir(root / 'work', config)


def random_config_json(stored, rng):
    """stored (a config.json's dict) with one to three changes at random depths: a value
    replaced, a key dropped, a key added; sometimes the whole file or a section replaced."""
    value = copy.deepcopy(stored)
    if rng.random() < 0.05:
        return VALUES[rng.integers(len(VALUES))]
    for _ in range(rng.integers(1, 4)):
        node = value
        while isinstance(node, dict) and node and rng.random() < 0.7:
            children = [k for k in sorted(node) if isinstance(node[k], dict)]
            if not children:
                break
            node = node[children[rng.integers(len(children))]]
        if not isinstance(node, dict):
            continue
        mutate_object(node, rng, VALUES, EXTRA_KEYS)
    return value


def resume_keys(stored):
    """The keys a resume checks and their values (a dropped key: its default; a key that
    holds null is compared as absent)."""
    defaults = flax.traverse_util.flatten_dict(checkpointing._json_defaults(), sep='.')
    keys = checkpointing._fingerprint(checkpointing._fill(stored, defaults), gap=False)
    return {k: v for k, v in keys.items() if v is not None}


def test_workdir_config_json_ends_in_a_resume_or_one_line(workdir, tmp_path):
    work, config, fingerprint = workdir
    path = work / 'config.json'
    good = path.read_text()
    original = resume_keys(json.loads(good))
    rng = np.random.default_rng(SEED)
    outcomes = {'accepted': 0, 'refused': []}
    try:
        for case in range(CASES):
            raw = damage(json.dumps(random_config_json(json.loads(good), rng),
                                    indent=2).encode(), rng, 0.3)
            path.write_bytes(raw)
            try:
                checkpointing.check_compatible(work, config, fingerprint)
            except Exception as e:  # noqa: BLE001 -- one_line fails anything but a UserError
                # the file damaged, or the workdir's checkpoints of another config
                outcomes['refused'].append((raw, one_line(e, path, work)))
                continue
            try:   # what --mode=compare reads of the other workdir
                compare.stored_config(str(work), str(tmp_path / 'data'))
            except Exception as e:  # noqa: BLE001 -- as above
                one_line(e, path)
            assert resume_keys(json.loads(raw)) == original, (case, raw)
            outcomes['accepted'] += 1
    finally:
        path.write_text(good)
    refused = outcomes['refused']
    assert outcomes['accepted'] >= 20 and len(refused) >= CASES // 3, (
        outcomes['accepted'], len(refused))

    for raw, line in refused[:CLI_CASES]:   # the same refusals through the command line (a
        path.write_bytes(raw)               # resume: check_compatible)
        result = tiny.run_main('--config=configs/digits.py', f'--workdir={work}',
                               '--mode=train', *override_flags(work.parent / 'data'),
                               timeout=900)
        assert_printed(result, line)
        assert path.read_bytes() == raw and checkpointing.finished_steps(work) == [8]
    path.write_text(good)
