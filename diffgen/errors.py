"""Errors that are the user's to fix: main.py prints them as one line and exits 2."""


class UserError(Exception):
    """Bad input (config, data, workdir): reported as one line, exit status 2."""


class ConfigError(UserError):
    """The config names an unknown key, an out-of-range value or an unknown name."""


class DataError(UserError):
    """The data source cannot give what the config asks for."""


class WorkdirError(UserError):
    """The workdir holds state that does not fit the config."""


class CorruptFileError(WorkdirError):
    """A file diffgen wrote cannot be read (cut short, emptied, overwritten): the message
    names the file and what to do."""


class NonFiniteError(UserError):
    """A sampler returned NaN or inf: the model (checkpoint) being analysed has diverged.
    Bad input to the analysis, so one line and exit status 2; no report section is written."""


class TrainingDiverged(Exception):
    """The loss became non-finite; the last good checkpoint is kept."""


def require(ok, message):
    """Raises ConfigError(message) unless ok: the form of every config value check."""
    if not ok:
        raise ConfigError(message)
