"""The single entry point:

    python -m diffgen.main --config=configs/digits.py[:variant] --workdir=DIR --mode=MODE
                           [--config.section.key=value ...]

Modes: train (train, resuming from DIR's checkpoints, then draw a sample grid), sample
(draw samples from DIR's latest checkpoint), analyze (the generalisation report in
DIR/report), all (train, then analyze), compare (DIR's model against
--other_workdir's, in DIR/report/compare).
Output: progress lines on stdout and one-line errors (`diffgen: error: ...`) on stderr, from
process 0 only; everything else diffgen says goes through absl logging (stderr), shown on
process 0 only: diffgen's own messages from INFO on, other libraries' (Orbax, clu) from
WARNING on, or everything at the level --verbosity gives.
Bad input (config, data, workdir), a damaged file in the workdir, a workdir in use by
another run and a full disk are reported as one line with exit status 2. SIGTERM or SIGINT
stops a run with one line saying what is kept: training saves a checkpoint and exits 0 (a
preemption); elsewhere (data loading, sampling, analysis, compare) the run exits 128 + the
signal's number, and a rerun continues (the analysis with its next unfinished section).
"""
from __future__ import annotations

import errno
import logging as std_logging
import os
import signal
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# TensorFlow only reads TFDS files here: its oneDNN kernels (and their start-up notice) serve nothing
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from diffgen import modes, parallel  # noqa: E402
from diffgen.errors import TrainingDiverged, UserError  # noqa: E402
from diffgen.validation import validate  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file[:argument].',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, samples, reports.')
_MODE = flags.DEFINE_enum('mode', 'all', list(modes.MODES), 'What to do.')
_OTHER_WORKDIR = flags.DEFINE_string('other_workdir', None,
                                     'The second workdir of --mode=compare.')
_STEP = flags.DEFINE_integer('step', None, 'sample / analyze: the kept checkpoint of this step '
                             '(default: the latest).')

# OS errors that are the environment's, not a bug: reported as one line.
ENVIRONMENT_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS)
# What a signal outside the training loop leaves, per mode.
KEPT = {
    'train': 'the checkpoints saved so far are kept',
    'sample': 'the checkpoints are kept, no samples were written',
    'analyze': 'the finished report sections are kept in {report}',
    'all': 'the checkpoints and the finished report sections ({report}) are kept',
    'compare': 'nothing of the comparison was written',
}


class Interrupted(BaseException):
    """SIGTERM or SIGINT outside the training loop (which saves and stops by itself).
    A BaseException, so that no `except Exception` on the way swallows it."""

    def __init__(self, signum):
        super().__init__(signum)
        self.signum = signum
        self.name = signal.Signals(signum).name


def raise_interrupted(signum, frame):
    del frame
    raise Interrupted(signum)


DIFFGEN_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


class DiffgenMessages(std_logging.Filter):
    """Without --verbosity: diffgen's own messages from INFO on, other libraries' (Orbax's
    every save and restore, clu's every metric) from WARNING on."""

    def filter(self, record):
        return record.levelno >= std_logging.WARNING or record.pathname.startswith(DIFFGEN_DIR)


class QuietLibraryErrors(std_logging.Filter):
    """Drops what Orbax and asyncio log about a failed save or restore (tracebacks of its
    threads): diffgen reports those failures itself, as one line."""

    def filter(self, record):
        return not (record.name == 'asyncio' or f'{os.sep}orbax{os.sep}' in record.pathname)


def quiet_closed_loop(unraisable):
    """sys.unraisablehook: drops the 'Event loop is closed' errors of a failed save's writes
    still in flight when Orbax closed its event loop (one traceback per write; diffgen
    reports the failure itself, as one line); any other goes to Python's default hook."""
    error = unraisable.exc_value
    if not (isinstance(error, RuntimeError) and str(error) == 'Event loop is closed'):
        sys.__unraisablehook__(unraisable)


def say(line):
    """A line of direct output on stderr, printed by process 0; the other processes log it
    as an error of theirs (so that a failure of one process alone is not lost)."""
    if parallel.process_index() == 0:
        print(line, file=sys.stderr, flush=True)
    else:
        logging.error('process %d: %s', parallel.process_index(), line.removeprefix('diffgen: '))


def fail(message, status=2):
    say(f'diffgen: error: {message}')
    sys.exit(status)


def one_line(error):
    """An exception's message as one line: its last line if it carries a traceback."""
    text = str(error).replace('\\n', '\n').replace("\\'", "'").strip()
    lines = [l.strip() for l in text.splitlines() if l.strip()]
    if any(l.startswith('Traceback') for l in lines):
        lines = lines[-1:]
    return ' '.join(lines) or type(error).__name__


def parse_flags(argv):
    """absl flag parsing, with every problem (unknown key, bad value, missing file) as one
    line and exit status 2 instead of a traceback."""
    try:
        return flags.FLAGS(argv)
    except AttributeError as e:  # ml_collections: an override of a key the config lacks
        keys = [a.split('=')[0][len('--config.'):] for a in argv if a.startswith('--config.')]
        unknown = [k for k in keys if k.split('.')[-1] in str(e)]
        hint = [l for l in one_line(e).split("'") if 'Did you mean' in l]
        fail(f'unknown config key {unknown[0] if unknown else one_line(e)!r}'
             + (f' ({hint[0].strip()})' if hint else ''))
    except (flags.Error, KeyError, TypeError, ValueError, OSError, SyntaxError) as e:
        fail(one_line(e))


def run(config, workdir, mode):
    options = modes.Options(step=_STEP.value, other_workdir=_OTHER_WORKDIR.value)
    return modes.run(mode, config, workdir, options)


def set_up_logging(explicit_verbosity):
    """diffgen's messages at INFO, other libraries' from WARNING (unless --verbosity chose a
    level for all); processes other than 0 log errors only. Called before jax.distributed
    starts (the launcher's declared index) and again after (its own)."""
    handler = logging.get_absl_handler()
    if not explicit_verbosity:
        logging.set_verbosity(logging.INFO)
        if not any(isinstance(f, DiffgenMessages) for f in handler.filters):
            handler.addFilter(DiffgenMessages())  # every logger's records
    if parallel.process_index() > 0:
        logging.set_verbosity(logging.ERROR)


def main(argv):
    for name in ('absl', 'asyncio'):
        std_logging.getLogger(name).addFilter(QuietLibraryErrors())
    sys.unraisablehook = quiet_closed_loop
    if len(argv) > 1:
        fail(f'unexpected arguments {argv[1:]}')
    set_up_logging(flags.FLAGS['verbosity'].present)
    try:
        parallel.initialize()  # several processes (a TPU pod, $DIFFGEN_COORDINATOR ...)
    except ValueError as e:
        fail(str(e))
    set_up_logging(flags.FLAGS['verbosity'].present)
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, raise_interrupted)
    try:
        try:
            config = _CONFIG.value
            if config is not None:
                config.keys()  # a config file that failed to load raises here
        except Exception as e:  # noqa: BLE001 -- the config file failed to load or run
            fail(f'cannot load --config: {one_line(e)}')
        if config is None:
            fail('--config is required, e.g. --config=configs/digits.py')
        if not _WORKDIR.value:
            fail('--workdir is required')
        config = validate(config)
        modes.init_compile_cache(config)
        run(config, _WORKDIR.value, _MODE.value)
    except UserError as e:
        fail(str(e))
    except TrainingDiverged as e:
        fail(str(e), status=1)
    except OSError as e:
        if e.errno not in ENVIRONMENT_ERRNOS:
            raise
        fail(f'{e.filename or "a file"}: {e.strerror}; free space or fix permissions, then '
             'rerun the same command')
    except Interrupted as e:
        report = os.path.join(_WORKDIR.value or '.', 'report', 'report.json')
        kept = KEPT.get(_MODE.value, 'what finished is kept').format(report=report)
        say(f'diffgen: stopped by {e.name}: {kept}; rerun the same command to continue')
        sys.exit(128 + e.signum)


if __name__ == '__main__':
    app.run(main, flags_parser=parse_flags)
