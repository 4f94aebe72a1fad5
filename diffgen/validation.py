"""Checks a config before any work starts: unknown keys, wrong types, values out of range,
unknown names. Every problem is a ConfigError with one line naming the key."""
from __future__ import annotations

import ml_collections

from configs import default
from diffgen.analysis.experiment import EXPERIMENTS
from diffgen.analysis import runner  # noqa: F401 -- registers the built-in experiments
from diffgen.errors import ConfigError
from diffgen.networks import NETWORKS
from diffgen.diffusion.objectives import GAP_WEIGHTINGS, OBJECTIVES
from diffgen.diffusion.samplers import METHODS
from diffgen.diffusion.schedules import SCHEDULES

SOURCE_FORMS = ('digits', 'toy2d:<name>', 'tfds:<name>', 'npz:<path>')
STORAGE_DTYPES = ('float32', 'bfloat16')


def _default_config():
    return default.get_config()


def _check_keys(config, reference, prefix=''):
    for key in config.keys():
        name = f'{prefix}{key}'
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


def _require(ok, message):
    if not ok:
        raise ConfigError(message)


def _one_of(name, value, choices):
    _require(value in choices, f'{name}={value!r} is not one of {tuple(choices)}')


def validate(config):
    """Raises ConfigError on the first problem; returns the config unchanged otherwise."""
    _check_keys(config, _default_config())
    d, m, o, t, s = config.data, config.model, config.optim, config.training, config.sampling
    src = d.source
    _require(src == 'digits' or (src.split(':', 1)[0] in ('toy2d', 'tfds', 'npz')
                                 and len(src.split(':', 1)) == 2 and src.split(':', 1)[1]),
             f'data.source={src!r} is not one of the forms {SOURCE_FORMS}')
    _require(d.num_train == -1 or d.num_train >= 1, 'data.num_train must be -1 (all) or >= 1')
    _require(d.num_heldout >= 0, 'data.num_heldout must be >= 0')
    _require(d.toy2d_size >= 2, 'data.toy2d_size must be >= 2')

    f = config.diffusion
    _require(f.num_timesteps >= 1, 'diffusion.num_timesteps must be >= 1')
    _one_of('diffusion.schedule', f.schedule, SCHEDULES)
    _require(0 < f.beta_start <= f.beta_end < 1,
             'diffusion needs 0 < beta_start <= beta_end < 1')

    _one_of('model.name', m.name, NETWORKS)
    _require(m.ch >= 1 and m.num_res_blocks >= 0 and m.num_groups >= 1,
             'model.ch, model.num_groups must be >= 1 and model.num_res_blocks >= 0')
    _require(len(m.ch_mult) >= 1 and all(isinstance(c, int) and c >= 1 for c in m.ch_mult),
             'model.ch_mult must be a non-empty tuple of positive integers')
    _require(0.0 <= m.dropout < 1.0, 'model.dropout must be in [0, 1)')
    _require(m.mlp_hidden >= 2 and m.mlp_depth >= 0, 'model.mlp_hidden >= 2, mlp_depth >= 0')

    _require(o.learning_rate > 0, 'optim.learning_rate must be > 0')
    _require(o.warmup_steps >= 0 and o.grad_clip >= 0, 'optim.warmup_steps, grad_clip >= 0')
    _require(0.0 <= o.ema_decay < 1.0, 'optim.ema_decay must be in [0, 1)')
    _require(0 <= o.beta1 < 1 and 0 <= o.beta2 < 1 and o.eps > 0, 'optim betas in [0,1), eps > 0')

    _one_of('training.objective', t.objective, OBJECTIVES)
    _require(t.gap_max_k >= 1, 'training.gap_max_k must be >= 1')
    _require(0.0 <= t.gap_p_zero <= 1.0, 'training.gap_p_zero must be in [0, 1]')
    _one_of('training.gap_weighting', t.gap_weighting, GAP_WEIGHTINGS)
    _require(t.batch_size >= 1, 'training.batch_size must be >= 1')
    _require(t.num_steps >= 1 and t.steps_per_call >= 1, 'training.num_steps, steps_per_call >= 1')
    _require(t.keep_checkpoints >= 1, 'training.keep_checkpoints must be >= 1')
    for key in ('num_steps', 'log_every', 'checkpoint_every', 'sample_every'):
        value = t[key]
        _require(value >= 0 and value % t.steps_per_call == 0,
                 f'training.{key}={value} must be a multiple of '
                 f'training.steps_per_call={t.steps_per_call}')
    _require(t.log_every >= 1 and t.checkpoint_every >= 1,
             'training.log_every and checkpoint_every must be >= 1')

    _one_of('sampling.method', s.method, METHODS)
    _require(0 <= s.num_steps <= f.num_timesteps,
             f'sampling.num_steps must be in 0..{f.num_timesteps} (0 = default)')
    _require(s.method != 'ddpm' or s.num_steps in (0, f.num_timesteps),
             'sampling.method=ddpm runs all T steps; use ddim for fewer')
    _require(0.0 <= s.eta <= 1.0, 'sampling.eta must be in [0, 1]')
    _require(s.num_samples >= 1 and s.batch_size >= 1, 'sampling.num_samples, batch_size >= 1')

    for key in config.analysis.experiments:
        _one_of('analysis.experiments entry', key, EXPERIMENTS)
    _require(config.analysis.num_samples >= 2 and config.analysis.batch_size >= 1,
             'analysis.num_samples >= 2 and analysis.batch_size >= 1')
    _require(1 <= config.analysis.sampler_steps <= f.num_timesteps,
             f'analysis.sampler_steps must be in 1..{f.num_timesteps}')
    an = config.analysis
    _require(all(0.0 <= x <= 1.0 for x in an.e4_switch_fractions),
             'analysis.e4_switch_fractions must lie in [0, 1]')
    _require(an.quality_classifier_steps >= 1 and an.quality_k >= 1,
             'analysis.quality_classifier_steps and quality_k must be >= 1')
    _require(an.e5_num_steps >= 0, 'analysis.e5_num_steps must be >= 0 (0 = num_steps // 5)')
    _require(0.0 < an.e6_threshold <= 1.0, 'analysis.e6_threshold must be in (0, 1]')
    _require(all(n >= 1 and n % t.steps_per_call == 0 for n in an.e7_train_steps),
             f'analysis.e7_train_steps must be positive multiples of '
             f'training.steps_per_call={t.steps_per_call}')
    _require(an.e7_num_sets >= 2 and an.e7_validation_num_sets >= 2 and an.e7_num_train >= 1
             and an.e7_num_samples >= 2 and an.e7_knn_k >= 1 and an.e7_num_bootstrap >= 1,
             'analysis.e7_* sizes out of range (K >= 2, N >= 1, M >= 2, k >= 1)')

    _require(config.optimal.chunk_size >= 1, 'optimal.chunk_size must be >= 1')
    _one_of('optimal.storage_dtype', config.optimal.storage_dtype, STORAGE_DTYPES)
    return config
