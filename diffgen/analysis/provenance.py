"""Where a reported number came from: the checkpoint step, a digest of the run's config and a
fingerprint of its training set. Every report section carries these; a section whose
provenance differs from the current run's is stale (another checkpoint, config or training
set) and is never merged into its report.

  config_digest     SHA-256 (first 16 hex digits) of the config as canonical JSON (sorted
                    keys, tuples as lists), without the keys that only choose which sections
                    run (SELECTION_KEYS): analysing e5 alone and then e1-e4 gives sections of
                    one report
  data_fingerprint  SHA-256 (first 16 hex digits) of the training set's uint8 rows, in
                    order, with their shape (diffgen.data.fingerprint)
  machine           what the report was made on: CPU cores, architecture, accelerator kind
                    and count (not the host's name); recorded, never compared: a section
                    made elsewhere from the same checkpoint, config and training set is of
                    the same report, and a report older than this field still merges
"""
from __future__ import annotations

import hashlib
import json
import os
import platform

import jax

from diffgen.data.fingerprint import data_fingerprint


SELECTION_KEYS = ('experiments', 'plugins')   # of config.analysis
MATCHED = ('step', 'config_digest', 'data_fingerprint')  # what sections of one report share


def config_digest(config) -> str:
    """The digest of a ConfigDict (or of its to_dict()), without analysis.SELECTION_KEYS."""
    tree = json.loads(json.dumps(config.to_dict() if hasattr(config, 'to_dict') else config,
                                 default=list))
    for key in SELECTION_KEYS:
        (tree.get('analysis') or {}).pop(key, None)
    text = json.dumps(tree, sort_keys=True, default=list, separators=(',', ':'))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def machine() -> str:
    """'16 CPU cores, x86_64, NVIDIA H200 x1': this process's CPU cores, architecture and
    JAX devices (kind of the first, count of all)."""
    return (f'{os.cpu_count()} CPU cores, {platform.machine()}, '
            f'{jax.devices()[0].device_kind} x{jax.device_count()}')


def provenance(config, step, train_examples) -> dict:
    """{'step', 'config_digest', 'data_fingerprint', 'machine'} of a report made from a
    checkpoint."""
    return {'step': int(step), 'config_digest': config_digest(config),
            'data_fingerprint': data_fingerprint(train_examples), 'machine': machine()}


def matched(made):
    """The part of a provenance dict (made) that decides whether two sections belong to one
    report: its MATCHED keys (not the machine); anything but a dict (None: no provenance)
    as it is."""
    return {k: made.get(k) for k in MATCHED} if isinstance(made, dict) else made
