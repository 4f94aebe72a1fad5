"""Run outputs read and written through etils.epath, so that a workdir (or sweep dir) may be
a local path or a GCS bucket (gs://..., through TensorFlow's file system), as on TPU pods.
Orbax and the clu writers handle such paths themselves; everything else goes through here.

Every file is written atomically (a temporary file beside it, then renamed over it), and the
readers of what diffgen wrote (read_json, load_npz) turn a damaged file into one
CorruptFileError naming the file and what to do. workdir_lock keeps a second run out of a
workdir.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import time
import zipfile
import zlib

import numpy as np
from absl import logging
from etils import epath

from diffgen.errors import CorruptFileError, WorkdirError

LOCK = 'diffgen.lock'  # the workdir lock's file name (workdir_lock)


def makedirs(path):
    epath.Path(path).mkdir(parents=True, exist_ok=True)


def exists(path):
    return epath.Path(path).exists()


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
    except BaseException as e:
        if tmp.exists():
            tmp.unlink()
        if isinstance(e, OSError) and not e.filename:  # a full disk: say which file
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise


def open_file(path, mode='r'):
    return epath.Path(path).open(mode)


def read_json(path, remedy):
    """The JSON object (a dict) stored at path; CorruptFileError naming path and `remedy`
    (what the user should do) if it is not one (cut short, emptied, overwritten)."""
    try:
        value = json.loads(read_text(path))
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        raise CorruptFileError(f'{path} is damaged (not JSON: {e}); {remedy}') from e
    if not isinstance(value, dict):
        raise CorruptFileError(f'{path} is damaged (a JSON {type(value).__name__}, not an '
                               f'object); {remedy}')
    return value


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


# What np.load raises on a cut-short or damaged archive, besides OSError and ValueError.
NPZ_ERRORS = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error)


def load_npz(path, remedy='delete it and rerun the same command: diffgen writes it again'):
    """The arrays of an .npz file as a dict (read whole); CorruptFileError naming path and
    `remedy` if the archive or one of its arrays cannot be read (cut short, damaged)."""
    try:
        with epath.Path(path).open('rb') as f:
            with np.load(io.BytesIO(f.read()), allow_pickle=False) as archive:
                return {k: archive[k] for k in archive.files}
    except NPZ_ERRORS as e:
        raise CorruptFileError(f'{path} is damaged (not a readable .npz: {e}); '
                               f'{remedy}') from e


def _host():
    return socket.gethostname()


def _pid_running(pid):
    """Whether a process of this id runs on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it runs, as another user
        return True
    return True


def _holder_text():
    return json.dumps({'host': _host(), 'pid': os.getpid(),
                       'since': time.strftime('%Y-%m-%d %H:%M:%S')})


def _create_exclusive(path, text):
    """Creates the file path holding text, unless it exists (then False). Local: a complete
    temporary file hard-linked into place (atomic, never half written). On a bucket there is
    no exclusive create: written, then read back (a simultaneous start may still race)."""
    if '://' not in str(path):
        tmp = f'{path}.tmp-{os.getpid()}'
        try:
            with open(tmp, 'w') as f:
                f.write(text)
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        except OSError as e:
            if not e.filename:  # a full disk: say which file
                raise OSError(e.errno, e.strerror, str(path)) from e
            raise
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
    if exists(path):
        return False
    write_text(path, text)
    return read_text(path) == text


def lock_holder(workdir):
    """Who holds workdir's lock (workdir_lock): None if nobody (no lock file, or one that
    cannot be read: diffgen.main reports that itself), else {'host', 'pid', 'since', 'path',
    'alive'}, alive being whether that pid still runs if it is of this host (None for another
    host's, which cannot be asked)."""
    path = os.path.join(workdir, LOCK)
    try:
        holder = json.loads(read_text(path))
        host, pid = str(holder['host']), int(holder['pid'])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return {'host': host, 'pid': pid, 'since': holder.get('since', '?'), 'path': path,
            'alive': _pid_running(pid) if host == _host() else None}


@contextlib.contextmanager
def workdir_lock(workdir):
    """Holds workdir/LOCK (JSON: the holder's host, pid and start time) while the block runs,
    so that a second run on the same workdir stops at once: WorkdirError naming the holder.
    A lock whose holder is gone (a pid of this host that no longer runs: the run was killed)
    is stale and taken over, with a line saying so. A workdir created here and left empty
    (the run failed before writing anything) is removed again."""
    created = not exists(workdir)
    makedirs(workdir)
    path = os.path.join(workdir, LOCK)
    mine = _holder_text()
    while not _create_exclusive(path, mine):
        try:
            holder = json.loads(read_text(path))
            host, pid, since = holder['host'], int(holder['pid']), holder.get('since', '?')
        except FileNotFoundError:  # released meanwhile: try again
            continue
        except (ValueError, KeyError, TypeError) as e:
            raise CorruptFileError(f'{path} is damaged ({e}); delete it if no other run uses '
                                   f'{workdir}') from e
        if host != _host():
            raise WorkdirError(f'{workdir} is in use by pid {pid} on host {host} (since '
                               f'{since}); wait for that run, use another --workdir, or delete '
                               f'{path} if that run is gone')
        if _pid_running(pid):
            raise WorkdirError(f'{workdir} is in use by pid {pid} on this host (since '
                               f'{since}); wait for that run or use another --workdir')
        logging.warning('taking over the stale lock %s of pid %d (no longer running)', path, pid)
        epath.Path(path).unlink(missing_ok=True)
    try:
        yield path
    finally:
        if exists(path) and read_text(path) == mine:
            epath.Path(path).unlink()
        if created and not any(epath.Path(workdir).iterdir()):
            epath.Path(workdir).rmdir()
