"""The fingerprint of a training set: SHA-256 (first 16 hex digits) of its examples' dtype and
shape, then their bytes in order. Two training sets with the same fingerprint are the same
examples in the same order; a checkpoint (training.checkpoints) and a report section
(analysis.provenance) record the fingerprint of the set they were made from."""
from __future__ import annotations

import hashlib

import numpy as np


def data_fingerprint(examples) -> str:
    """The fingerprint of a training set (uint8 images, or float points)."""
    examples = np.ascontiguousarray(examples)
    digest = hashlib.sha256(f'{examples.dtype} {examples.shape}'.encode())
    digest.update(examples.tobytes())
    return digest.hexdigest()[:16]
