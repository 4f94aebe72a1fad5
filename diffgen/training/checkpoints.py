"""Orbax checkpoints of the TrainState under <workdir>/checkpoints, and the check that a
workdir's checkpoints came from a compatible config (<workdir>/config.json)."""
from __future__ import annotations

import json
import os

import jax
import orbax.checkpoint as ocp

from diffgen import files
from diffgen.errors import WorkdirError

# Config sections that fix what a checkpoint holds (parameter shapes, optimiser state) or
# what it means (data, forward process); the others (steps, logging, sampling) may change
# between a run and its resumption.
COMPATIBILITY_SECTIONS = ('seed', 'data', 'diffusion', 'model', 'optim')
_MUTABLE_DATA_KEYS = ('data_dir',)


def checkpoint_dir(workdir):
    workdir = str(workdir)
    return os.path.join(workdir if '://' in workdir else os.path.abspath(workdir), 'checkpoints')


def config_path(workdir):
    return os.path.join(workdir, 'config.json')


def _flatten(tree, prefix=''):
    if not isinstance(tree, dict):
        return {prefix: tree}
    out = {}
    for k, v in tree.items():
        out.update(_flatten(v, f'{prefix}.{k}' if prefix else k))
    return out


def _fingerprint(config_dict):
    """The dotted keys of the compatibility sections, with values as JSON stores them."""
    fp = json.loads(json.dumps({k: config_dict.get(k) for k in COMPATIBILITY_SECTIONS}))
    flat = _flatten(fp)
    return {k: v for k, v in flat.items() if k.split('.')[-1] not in _MUTABLE_DATA_KEYS}


def has_checkpoint(workdir):
    d = checkpoint_dir(workdir)
    return any(n.isdigit() for n in files.listdir(d))


def check_compatible(workdir, config):
    """Raises WorkdirError if the workdir's checkpoints came from an incompatible config."""
    if not has_checkpoint(workdir):
        return
    path = config_path(workdir)
    if not files.exists(path):
        raise WorkdirError(f'{workdir} holds checkpoints but no config.json; '
                           'use a new --workdir')
    stored = _fingerprint(json.loads(files.read_text(path)))
    current = _fingerprint(config.to_dict())
    diffs = [f'{k}: {stored.get(k)!r} -> {current.get(k)!r}'
             for k in sorted(set(stored) | set(current)) if stored.get(k) != current.get(k)]
    if diffs:
        raise WorkdirError(f'the checkpoints in {workdir} come from an incompatible config '
                           f'({"; ".join(diffs[:3])}); use a new --workdir')


def write_config(workdir, config):
    """Stores the run's config beside its checkpoints (process 0 only)."""
    if jax.process_index() == 0:
        files.write_text(config_path(workdir),
                         json.dumps(config.to_dict(), indent=2, default=list))


def make_manager(workdir, keep, keep_period=0):
    """A CheckpointManager keeping the `keep` newest checkpoints, and also every one whose
    step is a multiple of keep_period (> 0), so that those can be analysed later with
    --step; saves are asynchronous."""
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, keep_period=keep_period or None,
                                           create=True)
    return ocp.CheckpointManager(checkpoint_dir(workdir), options=options)


def save(manager, state, force=False):
    step = int(jax.device_get(state.step))
    manager.save(step, args=ocp.args.StandardSave(state), force=force)
    return step


def restore_latest(manager, target, step=None):
    """The latest checkpoint (or the kept one of the given step) restored onto target's
    structure and shardings, or None if there is none."""
    if step is not None and step not in manager.all_steps():
        raise WorkdirError(f'no checkpoint of step {step} in {manager.directory}; kept steps: '
                           f'{sorted(manager.all_steps())} (training.keep_period keeps more)')
    step = manager.latest_step() if step is None else step
    if step is None:
        return None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    try:
        return manager.restore(step, args=ocp.args.StandardRestore(abstract))
    except (ValueError, KeyError, TypeError) as e:
        raise WorkdirError(f'checkpoint {step} in {manager.directory} does not fit this '
                           f'config: {str(e).splitlines()[0]}') from e
