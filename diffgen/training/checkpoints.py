"""Orbax checkpoints of the TrainState under <workdir>/checkpoints, and the check that a
workdir's checkpoints came from a compatible config and training set.

Beside the checkpoints: config.json (the run's config) and training_set.json (the
fingerprint of its training set, diffgen.data.fingerprint). A run resumes only if every
key that changes what the model is (COMPATIBILITY_SECTIONS, COMPATIBILITY_TRAINING_KEYS,
and the gap objective's options when it is used) and the training set are the same.

Checkpoints are those Orbax counts as finished (a save cut short leaves a temporary
directory, or on a bucket a step directory without its commit marker: neither counts).
Restoring falls back from a checkpoint that cannot be read to the next older one, saying
so. Saves are asynchronous; a failed one (disk full, no permission) is a WorkdirError naming
the checkpoint's path and the reason, raised at the first check after it (check_saved) or
at wait, and the checkpoints before it stay.
"""
from __future__ import annotations

import json
import os
import re

import flax.traverse_util
import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from configs import default
from diffgen import files
from diffgen.errors import CorruptFileError, WorkdirError

# Config sections and training keys that fix what a checkpoint holds (parameter shapes,
# optimiser state) or what it means (data, forward process, objective, batch); the others
# (steps, logging, sampling, analysis) may change between a run and its resumption.
COMPATIBILITY_SECTIONS = ('seed', 'data', 'diffusion', 'model', 'optim')
COMPATIBILITY_TRAINING_KEYS = ('objective', 'batch_size')
GAP_TRAINING_KEYS = ('gap_max_k', 'gap_p_zero', 'gap_weighting')  # with objective 'gap'
_MUTABLE_DATA_KEYS = ('data_dir',)
SKIPPED = 'skipped_checkpoints'  # <workdir>/SKIPPED/<step>: checkpoints training set aside
_REASON_CHARS = 200


def checkpoint_dir(workdir):
    workdir = str(workdir)
    return os.path.join(workdir if '://' in workdir else os.path.abspath(workdir), 'checkpoints')


def config_path(workdir):
    return os.path.join(workdir, 'config.json')


def training_set_path(workdir):
    return os.path.join(workdir, 'training_set.json')


# What a value of config.json must be, by the JSON type of its default.
_KINDS = {dict: 'an object (a section)', list: 'a list', bool: 'true or false',
          int: 'an integer', float: 'a number', str: 'a string'}


def _json_defaults():
    """configs/default.py's config as config.json stores one (tuples as lists)."""
    return json.loads(json.dumps(default.get_config().to_dict(), default=list))


def _fits(value, ref):
    """Whether a JSON value is of the JSON type of ref (an integer also where ref is a
    number with a fraction; true and false only where ref is one)."""
    if isinstance(value, bool) or isinstance(ref, bool):
        return isinstance(value, bool) and isinstance(ref, bool)
    if isinstance(ref, float):
        return isinstance(value, (int, float))
    return isinstance(value, type(ref))


def _shape_problem(stored, reference, prefix=''):
    """What is wrong with the shape of a stored config (a JSON object) against reference
    (_json_defaults(), or a section of it), or None: each value must be of its default's JSON
    type (_fits; a section an object, checked key by key unless its keys are names the
    config chooses, default.NAMED_SECTIONS); a key whose default is null may hold anything.
    Keys the defaults lack are not checked (a key diffgen has since dropped)."""
    for key, ref in reference.items():
        if key not in stored or ref is None:
            continue
        name, value = prefix + key, stored[key]
        if not _fits(value, ref):
            text = json.dumps(value)
            text = text if len(text) <= 40 else text[:37] + '...'
            return f'{name} is {text}, not {_KINDS[type(ref)]}'
        if isinstance(ref, dict) and name not in default.NAMED_SECTIONS:
            problem = _shape_problem(value, ref, name + '.')
            if problem:
                return problem
    return None


def read_stored_config(workdir, remedy):
    """The config stored in workdir's config.json, as a dict; CorruptFileError naming the
    file, what is wrong and `remedy` if it is not JSON or not the shape of a diffgen config
    (_shape_problem: e.g. a section that is a string, a number that is a list)."""
    path = config_path(workdir)
    stored = files.read_json(path, remedy=remedy)
    problem = _shape_problem(stored, _json_defaults())
    if problem:
        raise CorruptFileError(f'{path} is damaged (not a diffgen config: {problem}); {remedy}')
    return stored


def _fingerprint(config_dict, gap):
    """The dotted keys that must match for a resume (with gap, also the gap objective's
    options), with values as JSON stores them."""
    training = config_dict.get('training') or {}
    keys = COMPATIBILITY_TRAINING_KEYS + (GAP_TRAINING_KEYS if gap else ())
    tree = {k: config_dict.get(k) for k in COMPATIBILITY_SECTIONS}
    tree['training'] = {k: training.get(k) for k in keys}
    flat = flax.traverse_util.flatten_dict(json.loads(json.dumps(tree, default=list)), sep='.')
    return {k: v for k, v in flat.items() if k.split('.')[-1] not in _MUTABLE_DATA_KEYS}


def _fill(tree, defaults):
    """tree with every dotted key of defaults that it lacks set to the default's value (a
    section it lacks, too: a section added to diffgen later held its defaults then)."""
    tree = json.loads(json.dumps(tree))
    for key, value in defaults.items():
        node = tree
        for part in key.split('.')[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                break
        else:
            node.setdefault(key.split('.')[-1], value)
    return tree


def finished_steps(workdir):
    """The steps of the workdir's finished checkpoints, as Orbax finds them (read only)."""
    options = ocp.CheckpointManagerOptions(create=False, read_only=True)
    return list(ocp.CheckpointManager(checkpoint_dir(workdir), options=options).all_steps())


def has_checkpoint(workdir):
    return bool(finished_steps(workdir))


def check_compatible(workdir, config, fingerprint=None):
    """Raises WorkdirError if the workdir's checkpoints came from an incompatible config, or
    (fingerprint given: diffgen.data.fingerprint of the training set) from another training
    set."""
    if not has_checkpoint(workdir):
        return
    path = config_path(workdir)
    if not files.exists(path):
        raise WorkdirError(f'{workdir} holds checkpoints but no config.json; '
                           'use a new --workdir')
    stored = read_stored_config(workdir, remedy=(
        'it describes the checkpoints beside it: use a new --workdir, or put back the '
        'config.json of the run that wrote them'))
    current = config.to_dict()
    # A key added to diffgen after the run was written is absent from its config.json: it
    # held the default then (new keys default to what diffgen did before them).
    defaults = flax.traverse_util.flatten_dict(_json_defaults(), sep='.')
    stored = _fill(stored, defaults)
    gap = all((c.get('training') or {}).get('objective') == 'gap' for c in (stored, current))
    stored, current = _fingerprint(stored, gap), _fingerprint(current, gap)
    diffs = [f'{k}: {stored.get(k)!r} -> {current.get(k)!r}'
             for k in sorted(set(stored) | set(current)) if stored.get(k) != current.get(k)]
    if diffs:
        raise WorkdirError(f'the checkpoints in {workdir} come from an incompatible config '
                           f'({"; ".join(diffs[:3])}); use a new --workdir')
    path = training_set_path(workdir)
    if fingerprint is None or not files.exists(path):
        return
    remedy = ('it is the fingerprint of the training set the checkpoints beside it were '
              'trained on: delete it to go on without checking the training set (the next '
              'training writes it again), or put back the run\'s training_set.json')
    stored = files.read_json(path, remedy=remedy)
    if not isinstance(stored.get('fingerprint'), str):
        raise CorruptFileError(f'{path} is damaged (no "fingerprint" string in it); {remedy}')
    if stored.get('fingerprint') != fingerprint:
        raise WorkdirError(f'the checkpoints in {workdir} were trained on another training '
                           f'set (fingerprint {stored.get("fingerprint")} -> {fingerprint}: '
                           f'the contents of {config.data.source} changed); use a new '
                           '--workdir')


def write_config(workdir, config, fingerprint=None):
    """Stores the run's config, and the fingerprint of its training set if given, beside
    its checkpoints (process 0 only)."""
    if jax.process_index() == 0:
        files.write_text(config_path(workdir),
                         json.dumps(config.to_dict(), indent=2, default=list))
        if fingerprint is not None:
            files.write_text(training_set_path(workdir),
                             json.dumps({'fingerprint': fingerprint}, indent=2))


def make_manager(workdir, keep, keep_period=0):
    """A CheckpointManager keeping the `keep` newest checkpoints, and also every one whose
    step is a multiple of keep_period (> 0), so that those can be analysed later with
    --step; saves are asynchronous."""
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, keep_period=keep_period or None,
                                           create=True)
    return ocp.CheckpointManager(checkpoint_dir(workdir), options=options)


def reason(error):
    """An Orbax / TensorStore error as a short phrase: the OS error it carries, else the
    first line of its root cause (the last of its chain) without TensorStore's spec."""
    chain = [error]
    while (chain[-1].__cause__ or chain[-1].__context__) is not None and len(chain) < 20:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)
    code = re.search(r"os_error_code='?(\d+)", ' '.join(str(e) for e in chain))
    if code:
        return os.strerror(int(code.group(1)))
    root = chain[-1]
    if isinstance(root, OSError) and root.strerror:
        return root.strerror
    line = (str(root).strip().splitlines() or [type(root).__name__])[0]
    line = line.split(' See full TensorStore details')[0]
    return line if len(line) <= _REASON_CHARS else line[:_REASON_CHARS] + ' ...'


def _save_failed(manager, step, error):
    """The WorkdirError of a failed save of step, after removing what it left."""
    directory = epath.Path(manager.directory)
    if jax.process_index() == 0:
        for leftover in directory.glob(f'{step}.orbax-checkpoint-tmp*'):
            leftover.rmtree(missing_ok=True)
    kept = [s for s in manager.all_steps() if s != step]
    where = (f'the checkpoint of step {max(kept)} is kept' if kept else
             'no earlier checkpoint exists')
    return WorkdirError(f'cannot save checkpoint {step} in {directory}: {reason(error)}; the '
                        f'run stopped and {where}: free space or fix permissions, then rerun '
                        'the same command')


def save(manager, state, previous=None, force=False):
    """Starts saving state (asynchronously) once the save of step `previous` (the one
    before, if any) has finished; returns its step. WorkdirError if either fails."""
    wait(manager, previous)  # Orbax waits for it too: so that its failure is told as its own
    step = int(jax.device_get(state.step))
    try:
        manager.save(step, args=ocp.args.StandardSave(state), force=force)
    except Exception as e:  # noqa: BLE001 -- any failure to write is reported as one line
        raise _save_failed(manager, step, e) from e
    return step


def wait(manager, step):
    """Waits for the save of step (the last one started) to finish; WorkdirError if it
    failed."""
    try:
        manager.wait_until_finished()
    except Exception as e:  # noqa: BLE001 -- as in save
        raise _save_failed(manager, step, e) from e


def check_saved(manager, step):
    """Without waiting for a save in progress: WorkdirError if the save of step (the last
    one started) has failed. Returns step while that save is still running, None once it is
    known to have succeeded (nothing left to check)."""
    if step is None or manager.is_saving_in_progress():
        return step
    wait(manager, step)
    return None


def restore_latest(manager, target, step=None, set_aside=False):
    """The newest checkpoint that Orbax can restore onto target's structure and shardings
    (or the kept one of the given step), or None if there is none.

    A checkpoint that cannot be restored (cut short, damaged) is skipped for the next older
    one, with a line naming it and why; with set_aside (training, which saves those steps
    again) the skipped ones are moved to <workdir>/skipped_checkpoints/<step> once an older
    one restored. WorkdirError if none can be restored (then nothing is moved)."""
    steps = sorted(manager.all_steps(), reverse=True)
    if step is not None:
        if step not in steps:
            raise WorkdirError(f'no checkpoint of step {step} in {manager.directory}; kept '
                               f'steps: {sorted(steps)} (training.keep_period keeps more)')
        steps = [step]
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    skipped = []
    for s in steps:
        try:
            restored = manager.restore(s, args=ocp.args.StandardRestore(abstract))
        except Exception as e:  # noqa: BLE001 -- any unreadable checkpoint is skipped
            skipped.append((s, reason(e)))
            logging.warning('checkpoint %d in %s cannot be restored (%s)%s', s, manager.directory,
                            reason(e), '; trying the one before' if s != steps[-1] else '')
            continue
        if skipped and set_aside:
            _set_aside(manager, [bad for bad, _ in skipped])
        return restored
    if skipped:
        raise WorkdirError(f'no checkpoint in {manager.directory} can be restored ('
                           + '; '.join(f'step {s}: {why}' for s, why in skipped)
                           + '); use a new --workdir')
    return None


def _set_aside(manager, steps):
    """Moves the checkpoints of steps to <workdir>/SKIPPED/<step> (process 0), out of the
    way of the saves that will write those steps again."""
    directory = epath.Path(manager.directory)
    target = directory.parent / SKIPPED
    if jax.process_index() == 0:
        target.mkdir(parents=True, exist_ok=True)
        for s in steps:
            place, n = target / str(s), 1
            while place.exists():  # that step was set aside before
                place, n = target / f'{s}.{n}', n + 1
            (directory / str(s)).rename(place)
            logging.warning('moved the checkpoint of step %d to %s', s, place)
    manager.reload()
