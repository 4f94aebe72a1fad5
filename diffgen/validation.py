"""Checks a config before any work starts: unknown keys, wrong types, values out of range,
unknown names. Every problem is a ConfigError with one line naming the key."""
from __future__ import annotations

import ml_collections

from configs import default
from diffgen import analysis, data, diffusion, networks, optimum, training
from diffgen.analysis import runner
from diffgen.errors import ConfigError


def _default_config():
    return default.get_config()


def _check_keys(config, reference, prefix=''):
    for key in config.keys():
        name = f'{prefix}{key}'
        if name in default.NAMED_SECTIONS:
            if not isinstance(config[key], ml_collections.ConfigDict):
                raise ConfigError(f'config key {name!r} must be a section, got {config[key]!r}')
            continue
        if key not in reference:
            raise ConfigError(f'unknown config key {name!r}')
        value, ref = config[key], reference[key]
        if isinstance(ref, ml_collections.ConfigDict):
            if not isinstance(value, ml_collections.ConfigDict):
                raise ConfigError(f'config key {name!r} must be a section, got {value!r}')
            _check_keys(value, ref, name + '.')
        elif isinstance(ref, (tuple, list)):
            if not isinstance(value, (tuple, list)):
                raise ConfigError(f'config key {name!r} must be a tuple, got {value!r}')
        elif isinstance(ref, bool):
            if not isinstance(value, bool):
                raise ConfigError(f'config key {name!r} must be True or False, got {value!r}')
        elif isinstance(ref, (int, float)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f'config key {name!r} must be a number, got {value!r}')
            if isinstance(ref, int) and not isinstance(value, int):
                raise ConfigError(f'config key {name!r} must be an integer, got {value!r}')
        elif isinstance(ref, str) and not isinstance(value, str):
            raise ConfigError(f'config key {name!r} must be a string, got {value!r}')


def validate(config):
    """Raises ConfigError on the first problem; returns the config unchanged otherwise.

    First every key and type against configs/default.py, then each layer's own value
    checks, which live beside the code that uses the values."""
    runner.import_plugins(config)  # a config's own experiment modules register first
    _check_keys(config, _default_config())
    for check in (data.check_config, diffusion.check_config, networks.check_config,
                  training.check_config, optimum.check_config, analysis.check_config):
        check(config)
    return config
