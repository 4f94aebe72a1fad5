"""Typed reads of the values in the JSON files a diffusers model directory holds (config.json,
scheduler_config.json): JSON gives any type for any key, so each value the importer uses is
checked here before it is computed with. A wrong type or range is a ConfigError of one line
naming the file, the key and the value (never a TypeError or ZeroDivisionError later)."""
from __future__ import annotations

import math

from diffgen.errors import ConfigError

MAX_SHOWN = 60   # characters of a value's repr in a message


def show(value):
    """repr(value), cut to MAX_SHOWN characters (a list of 1000 betas stays one short line)."""
    text = repr(value)
    return text if len(text) <= MAX_SHOWN else text[:MAX_SHOWN - 3] + '...'


def fail(where, key, value, needs):
    """The ConfigError for key=value in the file `where`: `needs` says what is required."""
    raise ConfigError(f'{where}: {key}={show(value)}: {needs}')


def is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def integer(where, key, value, minimum):
    """value, an integer >= minimum (JSON true/false are not integers)."""
    if not is_int(value) or value < minimum:
        fail(where, key, value, f'must be an integer >= {minimum}')
    return value


def number(where, key, value, *, positive=False):
    """value as a finite float (an integer or float; > 0 if positive)."""
    if (not (is_int(value) or isinstance(value, float)) or not math.isfinite(value)
            or (positive and value <= 0)):
        fail(where, key, value, 'must be a finite number' + (' > 0' if positive else ''))
    return float(value)


def boolean(where, key, value):
    """value, true or false (not a string or number: "false" would read as true)."""
    if not isinstance(value, bool):
        fail(where, key, value, 'must be true or false')
    return value


def string(where, key, value):
    if not isinstance(value, str):
        fail(where, key, value, 'must be a string')
    return value


def integers(where, key, value, minimum):
    """value as a non-empty tuple of integers >= minimum (a JSON list, or a default's tuple)."""
    if (not isinstance(value, (list, tuple)) or not value
            or not all(is_int(v) and v >= minimum for v in value)):
        fail(where, key, value, f'must be a non-empty list of integers >= {minimum}')
    return tuple(value)


def strings(where, key, value):
    """value as a tuple of strings (a JSON list, or a default's tuple)."""
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        fail(where, key, value, 'must be a list of strings')
    return tuple(value)
