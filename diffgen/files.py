"""Run outputs read and written through etils.epath, so that a workdir (or sweep dir) may be
a local path or a GCS bucket (gs://..., through TensorFlow's file system), as on TPU pods.
Orbax and the clu writers handle such paths themselves; everything else goes through here."""
from __future__ import annotations

import io
import os

import numpy as np
from etils import epath


def makedirs(path):
    epath.Path(path).mkdir(parents=True, exist_ok=True)


def exists(path):
    return epath.Path(path).exists()


def listdir(path):
    """Names in a directory ([] where it does not exist)."""
    p = epath.Path(path)
    return [child.name for child in p.iterdir()] if p.exists() else []


def read_text(path):
    return epath.Path(path).read_text()


def write_text(path, text):
    """Writes text atomically (write_bytes), creating the parent directory."""
    write_bytes(path, text.encode())


def write_bytes(path, data):
    """Writes data atomically, creating the parent directory: into a temporary file beside
    path, then renamed over it, so that a reader (or a crash) never sees half a file."""
    p = epath.Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.parent / f'.{p.name}.tmp-{os.getpid()}'
    try:
        tmp.write_bytes(data)
        tmp.replace(p)
    except BaseException:
        if tmp.exists():
            tmp.unlink()
        raise


def open_file(path, mode='r'):
    return epath.Path(path).open(mode)


def save_figure(fig, path, **savefig_kwargs):
    """A matplotlib figure as PNG bytes at path."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format='png', **savefig_kwargs)
    write_bytes(path, buffer.getvalue())
    return path


def save_npz(path, **arrays):
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    write_bytes(path, buffer.getvalue())
    return path


def load_npz(path):
    """The arrays of an .npz file as a dict (read whole)."""
    with epath.Path(path).open('rb') as f:
        with np.load(io.BytesIO(f.read()), allow_pickle=False) as archive:
            return {k: archive[k] for k in archive.files}
