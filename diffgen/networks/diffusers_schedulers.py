"""Whether a diffusers model's scheduler_config.json describes the run's forward process
(config.diffusion): check_schedule.

diffgen runs one forward process, the discrete VP (DDPM) one: x_t = a_t x_0 + sigma_t eps,
alphas_bar_t = prod_{s <= t} (1 - beta_s) from T betas (linear from beta_start to beta_end, or
the cosine schedule), and a network that predicts eps at the integer step t. scheduler_config
.json names the diffusers scheduler class the model was trained and sampled with (_class_name)
and that class's settings. The classes of DEFAULTS all build alphas_cumprod from the same
betas, so for them the forward process is fixed by these keys (where the class has them):

  num_train_timesteps     T                                 = diffusion.num_timesteps
  beta_schedule           linear | squaredcos_cap_v2        = diffusion.schedule (linear | cosine)
  beta_start, beta_end    the linear schedule's range       = diffusion.beta_start, beta_end
                          (ignored by squaredcos_cap_v2, as by diffgen's cosine)
  trained_betas           null: diffgen computes its betas from the schedule
  prediction_type         epsilon: diffgen's networks predict eps (not v, not x_0)
  rescale_betas_zero_snr  false: true rescales the betas to zero terminal SNR
  timestep_type           discrete: continuous feeds the network 0.25 log sigma, not t
  use_flow_sigmas         false: true is a flow-matching process, not VP
  variance_type           not learned / learned_range: the network would predict its variance

Every other key (timestep_spacing, steps_offset, set_alpha_to_one, clip_sample,
thresholding, Karras or exponential sigmas, solver orders, ...) chooses how diffusers samples
from this process at inference; diffgen samples with its own config.sampling and does not
read them. Any class not in DEFAULTS (EDMEulerScheduler, ScoreSdeVeScheduler and the other
sigma-based or VE schedulers, flow matching, consistency models, ...) is refused by its name
first, whatever its other keys say: no change of config.diffusion can make such a model
accepted.

A key the file lacks is read by diffusers as its class's default, DEFAULTS (diffusers 0.42's
__init__ defaults; tests/test_import_schedulers.py checks them against the installed
diffusers). A missing key is accepted only where that default is the run's value; otherwise
the message names the key, the class's default and the run's value.
"""
from __future__ import annotations

import math

from diffgen.errors import ConfigError
from diffgen.networks import diffusers_values as values

_VP = {'num_train_timesteps': 1000, 'beta_schedule': 'linear', 'beta_start': 0.0001,
       'beta_end': 0.02, 'trained_betas': None, 'prediction_type': 'epsilon'}
_KARRAS = {**_VP, 'beta_start': 0.00085, 'beta_end': 0.012}   # the k-diffusion ports
# class -> {forward-process key: diffusers' default}, for the discrete VP schedulers.
DEFAULTS = {
    'DDPMScheduler': {**_VP, 'rescale_betas_zero_snr': False, 'variance_type': 'fixed_small'},
    'DDPMParallelScheduler': {**_VP, 'rescale_betas_zero_snr': False,
                              'variance_type': 'fixed_small'},
    'DDIMScheduler': {**_VP, 'rescale_betas_zero_snr': False},
    'DDIMParallelScheduler': {**_VP, 'rescale_betas_zero_snr': False},
    'PNDMScheduler': dict(_VP),
    'DPMSolverMultistepScheduler': {**_VP, 'rescale_betas_zero_snr': False,
                                    'use_flow_sigmas': False, 'variance_type': None},
    'DPMSolverSinglestepScheduler': {**_VP, 'use_flow_sigmas': False, 'variance_type': None},
    'DEISMultistepScheduler': {**_VP, 'use_flow_sigmas': False},
    'UniPCMultistepScheduler': {**_VP, 'rescale_betas_zero_snr': False,
                                'use_flow_sigmas': False},
    'EulerDiscreteScheduler': {**_VP, 'rescale_betas_zero_snr': False,
                               'timestep_type': 'discrete'},
    'EulerAncestralDiscreteScheduler': {**_VP, 'rescale_betas_zero_snr': False},
    'LMSDiscreteScheduler': dict(_VP),
    'HeunDiscreteScheduler': dict(_KARRAS),
    'KDPM2DiscreteScheduler': dict(_KARRAS),
    'KDPM2AncestralDiscreteScheduler': dict(_KARRAS),
}
PROCESS_KEYS = ('prediction_type', 'trained_betas', 'rescale_betas_zero_snr', 'timestep_type',
                'use_flow_sigmas', 'variance_type', 'beta_schedule', 'num_train_timesteps',
                'beta_start', 'beta_end')   # the order of the checks
BETA_SCHEDULES = {'linear': 'linear', 'squaredcos_cap_v2': 'cosine'}   # diffusers -> diffgen
LEARNED_VARIANCES = ('learned', 'learned_range')
# key -> (the value diffgen has, why): keys with one accepted value (or one refused set).
ONLY = {
    'prediction_type': ('epsilon', "diffgen's networks predict eps ('epsilon') only"),
    'trained_betas': (None, 'diffgen computes its betas from beta_schedule; it has no trained '
                            'betas'),
    'rescale_betas_zero_snr': (False, 'diffgen has the betas of beta_schedule only, not '
                                      'rescaled to zero terminal SNR'),
    'timestep_type': ('discrete', "diffgen's networks take the integer step t, not "
                                  "continuous noise levels"),
    'use_flow_sigmas': (False, 'a flow-matching process is not diffgen\'s VP process'),
}
# (key in the file, key of config.diffusion) of the values compared with the run's
COMPARED = {'beta_schedule': 'schedule', 'num_train_timesteps': 'num_timesteps',
            'beta_start': 'beta_start', 'beta_end': 'beta_end'}
REL_TOL = 1e-6   # beta_start, beta_end: equal up to float32 round-off of a decimal in JSON


def _typed(where, key, value):
    """The file's value of a forward-process key, type-checked (one line otherwise)."""
    if key == 'num_train_timesteps':
        return values.integer(where, key, value, 1)
    if key in ('beta_start', 'beta_end'):
        if values.number(where, key, value) <= 0 or value >= 1:
            values.fail(where, key, value, 'must be a number in (0, 1)')
        return float(value)
    if key in ('rescale_betas_zero_snr', 'use_flow_sigmas'):
        return values.boolean(where, key, value)
    if key == 'trained_betas':
        if value is not None and not isinstance(value, list):
            values.fail(where, key, value, 'must be null or a list of numbers')
        return value
    if key == 'variance_type' and value is None:
        return None
    return values.string(where, key, value)


def check_schedule(scheduler, diffusion, where):
    """ConfigError, one line naming the file `where`, the key and its value, unless the
    scheduler config (the parsed scheduler_config.json, as written) is a class of DEFAULTS
    whose forward-process keys (PROCESS_KEYS; defaults for those it lacks) give
    config.diffusion's process."""
    if '_class_name' not in scheduler:
        raise ConfigError(f'{where}: no _class_name: the scheduler (and so the forward '
                          'process) the model was trained with is unknown')
    name = scheduler['_class_name']
    if not isinstance(name, str) or name not in DEFAULTS:
        values.fail(where, '_class_name', name,
                    "not a discrete VP (DDPM) scheduler, diffgen's forward process; diffgen "
                    'imports models of DDPMScheduler, DDIMScheduler, PNDMScheduler and the '
                    'other beta-schedule schedulers only (docs/published_models.md)')
    defaults = DEFAULTS[name]
    process = {}
    for key in PROCESS_KEYS:
        if key in defaults:
            process[key] = (_typed(where, key, scheduler[key]) if key in scheduler
                            else defaults[key])

    def refuse(key, why):
        if key in scheduler:
            values.fail(where, key, scheduler[key], why)
        raise ConfigError(f'{where}: no {key}, which {name} reads as its default '
                          f'{defaults[key]!r}: {why}')

    for key, (only, why) in ONLY.items():
        if key in process and process[key] != only:
            refuse(key, why)
    if process.get('variance_type') in LEARNED_VARIANCES:
        refuse('variance_type', 'the network predicts its variance too; diffgen\'s '
                                'networks predict eps only')
    if process['beta_schedule'] not in BETA_SCHEDULES:
        refuse('beta_schedule', f'diffgen has {sorted(BETA_SCHEDULES)} only')
    process['beta_schedule'] = BETA_SCHEDULES[process['beta_schedule']]
    compared = ['beta_schedule', 'num_train_timesteps']
    if process['beta_schedule'] == 'linear':   # the cosine schedule fixes its own range
        compared += ['beta_start', 'beta_end']
    for key in compared:
        theirs, ours = process[key], diffusion[COMPARED[key]]
        same = (math.isclose(theirs, ours, rel_tol=REL_TOL) if isinstance(ours, float)
                else theirs == ours)
        if same:
            continue
        setting = f'--config.diffusion.{COMPARED[key]}={theirs!r}'
        if key in scheduler:
            raise ConfigError(f'{where}: {key}={scheduler[key]!r} but diffusion.'
                              f'{COMPARED[key]}={ours!r}: the model was trained with another '
                              f'schedule (set {setting})')
        raise ConfigError(f'{where}: no {key}, which {name} reads as its default '
                          f'{defaults[key]!r}, but diffusion.{COMPARED[key]}={ours!r}: write '
                          'the value the model was trained with into the file (or, if it is '
                          f'that default, set {setting})')
