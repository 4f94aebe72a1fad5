"""Run outputs read and written through etils.epath, so that a workdir (or sweep dir) may be
a local path or a GCS bucket (gs://..., through TensorFlow's file system), as on TPU pods.
Orbax and the clu writers handle such paths themselves; everything else goes through here.

Every file is written atomically (a temporary file beside it, then renamed over it), and the
readers of what diffgen wrote (read_json, load_npz) turn a damaged file into one
CorruptFileError naming the file and what to do. workdir_lock keeps a second run out of a
workdir; shared_lock makes runs take turns at work in a directory they share (the data dir).
"""
from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import socket
import time
import tokenize
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
    tmp = p.parent / f'.{p.name}.tmp-{_host()}-{os.getpid()}'  # one per writer, NFS too
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


# What np.load raises on a cut-short or damaged archive, besides OSError and ValueError:
# zipfile's NotImplementedError (a compression method byte changed) and RuntimeError (an
# encryption flag set), tokenize.TokenError (an array header whose brackets were changed).
NPZ_ERRORS = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error,
              NotImplementedError, RuntimeError, tokenize.TokenError)


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


@contextlib.contextmanager
def shared_lock(path, what):
    """Holds an exclusive lock on the file path (created if missing, kept afterwards) while
    the block runs: for work that several runs may start at once in a directory they share
    (a dataset prepared in the data dir). A second run waits for the first, saying once what
    it waits for (`what`), and should then find the work done. A local path only (an advisory
    fcntl.flock, on NFS too); on a bucket (gs://) there is no lock and the block runs at
    once, so its caller must tolerate a twin that finished first."""
    if '://' in str(path):
        yield
        return
    makedirs(os.path.dirname(path) or '.')
    with open(path, 'a') as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logging.info('waiting for another run %s (lock %s)', what, path)
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


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


def _boot_id():
    """This host's boot id (/proc/sys/kernel/random/boot_id; new at every boot), or None
    where there is none (not Linux)."""
    try:
        with open('/proc/sys/kernel/random/boot_id') as f:
            return f.read().strip() or None
    except OSError:
        return None


def _start_time(pid):
    """When process pid started, in clock ticks since boot (field 22 of /proc/<pid>/stat),
    or None where that cannot be read (not Linux, no such process). A pid taken again by
    another process has another start time."""
    try:
        with open(f'/proc/{pid}/stat') as f:
            stat = f.read()
        return int(stat.rsplit(')', 1)[1].split()[19])  # fields 3, 4, ... after the name
    except (OSError, IndexError, ValueError):
        return None


_HELD = set()  # the lock files this process holds (workdir_lock), as _held_key names them


def _held_key(path):
    """path as _HELD names it: one name however the workdir was spelled (a local path
    resolved, a bucket's as it is)."""
    return str(path) if '://' in str(path) else os.path.realpath(path)


def _holder_text():
    return json.dumps({'host': _host(), 'pid': os.getpid(),
                       'since': time.strftime('%Y-%m-%d %H:%M:%S'),
                       'start': _start_time(os.getpid()), 'boot_id': _boot_id()})


def _holder_state(path, holder):
    """(alive, verified) of a lock's holder (its JSON as a dict): alive is None for a holder
    on another host (it cannot be asked), else whether it still runs; verified is whether
    that was decided from the process's identity, not from its pid alone. The holder is gone
    (False, True) if its pid no longer runs, if this host booted since (another boot id), if
    its pid now belongs to a process that started at another time than the one recorded (a
    pid taken again), or if it is this very process and this process does not hold that lock
    (a rerun given the dead run's pid, as in a restarted container). A running pid recorded
    without a start time (a lock of an older diffgen), or one whose start time cannot be
    read here, is taken as alive but not verified: (True, False). A pid below 1 is a
    ValueError (a damaged lock)."""
    host, pid = str(holder['host']), int(holder['pid'])
    if pid < 1:
        raise ValueError(f'pid {pid} is not a process id')
    if host != _host():
        return None, False
    if pid == os.getpid():
        return _held_key(path) in _HELD, True
    if not _pid_running(pid):
        return False, True
    boot_id, start = holder.get('boot_id'), holder.get('start')
    if boot_id is not None and _boot_id() is not None and boot_id != _boot_id():
        return False, True
    now = _start_time(pid)
    if start is None or now is None:
        return True, False
    return now == start, True


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
    'alive', 'verified'}: alive is None for another host's holder (it cannot be asked), else
    whether it still runs, by workdir_lock's rule (_holder_state: a pid taken again by
    another process is not alive); verified is whether that was told from the process's
    start time and boot id rather than from its pid alone."""
    path = os.path.join(workdir, LOCK)
    try:
        holder = json.loads(read_text(path))
        host, pid = str(holder['host']), int(holder['pid'])
        alive, verified = _holder_state(path, holder)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    return {'host': host, 'pid': pid, 'since': holder.get('since', '?'), 'path': path,
            'alive': alive, 'verified': verified}


@contextlib.contextmanager
def workdir_lock(workdir):
    """Holds workdir/LOCK (JSON: the holder's host, pid, when it took the lock ('since'),
    when its process started, in clock ticks since boot ('start'), and the host's boot id)
    while the block runs, so that a second run on the same workdir stops
    at once: WorkdirError naming the holder. A lock whose holder is gone (by _holder_state's
    rule: its pid no longer runs, or was taken again by another process or by this rerun
    itself) is stale and taken over, with a line saying so; where a running pid cannot be
    told from the holder (no start time recorded or readable), the error names the lock file
    to delete if that run is gone. A workdir that names a file is a WorkdirError. A workdir
    created here and left empty (the run failed before writing anything) is removed again."""
    if exists(workdir) and not epath.Path(workdir).is_dir():
        raise WorkdirError(f'--workdir {workdir} is a file, not a directory; name a directory '
                           '(a new one is created)')
    created = not exists(workdir)
    try:
        makedirs(workdir)
    except (FileExistsError, NotADirectoryError) as e:  # a file on the way to it
        raise WorkdirError(f'cannot create --workdir {workdir}: {e.strerror} '
                           f'({e.filename or workdir}); name a directory') from e
    path = os.path.join(workdir, LOCK)
    mine = _holder_text()
    while not _create_exclusive(path, mine):
        try:
            text = read_text(path)
            holder = json.loads(text)
            host, pid, since = holder['host'], int(holder['pid']), holder.get('since', '?')
            alive, verified = _holder_state(path, holder)
        except FileNotFoundError:  # released meanwhile: try again
            continue
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise CorruptFileError(f'{path} is damaged ({e}); delete it if no other run uses '
                                   f'{workdir}') from e
        if alive is None:
            raise WorkdirError(f'{workdir} is in use by pid {pid} on host {host} (since '
                               f'{since}); wait for that run, use another --workdir, or delete '
                               f'{path} if that run is gone')
        if alive and verified:
            raise WorkdirError(f'{workdir} is in use by pid {pid} on this host (since '
                               f'{since}); wait for that run or use another --workdir')
        if alive:
            raise WorkdirError(f'{workdir} is in use by pid {pid} on this host (since '
                               f'{since}; whether that is the run that took the lock or a '
                               f'process given its pid later cannot be told here); wait for '
                               f'that run, use another --workdir, or delete {path} if that run '
                               'is gone')
        gone = ('no longer running' if not _pid_running(pid) else
                'this run has its pid now' if pid == os.getpid() else
                'its pid now belongs to another process')
        try:   # another rerun may have taken the stale lock over since it was read:
            if read_text(path) != text:   # then its fresh lock is not deleted, but met again
                continue
        except FileNotFoundError:
            continue
        logging.warning('taking over the stale lock %s of pid %d (%s)', path, pid, gone)
        epath.Path(path).unlink(missing_ok=True)
    _HELD.add(_held_key(path))
    try:
        yield path
    finally:
        _HELD.discard(_held_key(path))
        if exists(path) and read_text(path) == mine:
            epath.Path(path).unlink()
        if created and not any(epath.Path(workdir).iterdir()):
            epath.Path(workdir).rmdir()
