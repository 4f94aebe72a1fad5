"""Run outputs read and written through etils.epath, so that a workdir (or sweep dir) may be
a local path or a GCS bucket (gs://..., through TensorFlow's file system), as on TPU pods.
Orbax and the clu writers handle such paths themselves; everything else goes through here."""
from __future__ import annotations

import io

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
    """Writes text, creating the parent directory."""
    p = epath.Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text)


def write_bytes(path, data):
    p = epath.Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)


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
