"""The single entry point:

    python -m diffgen.main --config=configs/digits.py[:variant] --workdir=DIR --mode=MODE
                           [--config.section.key=value ...]

Modes: train (train, resuming from DIR's checkpoints, then draw a sample grid), sample
(draw samples from DIR's latest checkpoint), all (train, then sample).
Bad input (config, data, workdir) is reported as one line with exit status 2.
"""
from __future__ import annotations

import os
import sys

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

from absl import app, flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

MODES = ('train', 'sample', 'all')

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file[:argument].',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, samples, reports.')
_MODE = flags.DEFINE_string('mode', 'all', f'One of {MODES}.')


def fail(message, status=2):
    print(f'diffgen: error: {message}', file=sys.stderr, flush=True)
    sys.exit(status)


def parse_flags(argv):
    """absl flag parsing, with every problem (unknown key, bad value, missing file) as one
    line and exit status 2 instead of a traceback."""
    try:
        return flags.FLAGS(argv)
    except (flags.Error, AttributeError, KeyError, TypeError, ValueError, OSError,
            SyntaxError) as e:
        message = str(e).strip().strip("'").replace('\\n', ' ').replace('\n', ' ')
        fail(message.replace("\\'", "'").replace('\\"', '"'))


def run(config, workdir, mode):
    from diffgen import modes
    return modes.MODES[mode](config, workdir)


def main(argv):
    if len(argv) > 1:
        fail(f'unexpected arguments {argv[1:]}')
    from diffgen.config_validation import validate
    from diffgen.errors import TrainingDiverged, UserError
    try:
        if _CONFIG.value is None:
            fail('--config is required, e.g. --config=configs/digits.py')
        if not _WORKDIR.value:
            fail('--workdir is required')
        if _MODE.value not in MODES:
            fail(f'--mode={_MODE.value!r} is not one of {MODES}')
        config = validate(_CONFIG.value)
        run(config, _WORKDIR.value, _MODE.value)
    except UserError as e:
        fail(str(e))
    except TrainingDiverged as e:
        fail(str(e), status=1)


if __name__ == '__main__':
    app.run(main, flags_parser=parse_flags)
