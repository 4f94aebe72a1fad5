"""The generalisation report: what the experiments share (context), the measurements
(metrics, quality, mutual information), the experiment plugins and the report writer."""
from diffgen.analysis.evaluation import COMMON_OPTIONS, EVALUATORS
from diffgen.analysis.experiment import EXPERIMENTS
from diffgen.diffusion.samplers import METHODS
from diffgen.errors import require


def check_config(config):
    """The analysis section's shared keys, then each listed experiment's own check."""
    a, T = config.analysis, config.diffusion.num_timesteps
    for key in a.experiments:
        require(key in EXPERIMENTS,
                f'analysis.experiments entry={key!r} is not one of {EXPERIMENTS.names()}')
    require(a.num_samples >= 2 and a.batch_size >= 1,
            'analysis.num_samples >= 2 and analysis.batch_size >= 1')
    require(1 <= a.sampler_steps <= T, f'analysis.sampler_steps must be in 1..{T}')
    require(a.quality.classifier_steps >= 1 and a.quality.k >= 1,
            'analysis.quality.classifier_steps and analysis.quality.k must be >= 1')
    e = config.evaluation
    require(e.num_samples >= 2 and e.num_images >= 1,
            'evaluation.num_samples must be >= 2 and evaluation.num_images >= 1')
    for name, entry in e.evals.items():
        check_evaluator(f'evaluation.evals.{name}', entry, config)
    for key in a.experiments:
        if EXPERIMENTS[key].check is not None:
            EXPERIMENTS[key].check(config)


def check_evaluator(key, entry, config):
    """One entry of evaluation.evals: a section with a registered type, a period that is a
    multiple of training.steps_per_call (0 = off) and only that type's options, each of its
    default's type; a sampler and a step count in range where the type takes them."""
    require(hasattr(entry, 'keys'), f'{key} must be a section {{type, every, ...}}, got {entry!r}')
    require('type' in entry and 'every' in entry, f'{key} needs a type and an every')
    EVALUATORS.check(f'{key}.type', entry.type)
    every, per_call = entry.every, config.training.steps_per_call
    require(isinstance(every, int) and not isinstance(every, bool) and every >= 0
            and every % per_call == 0,
            f'{key}.every={every!r} must be a multiple of training.steps_per_call={per_call} '
            '(0 = off)')
    defaults = EVALUATORS[entry.type].options
    for option, value in entry.items():
        if option in COMMON_OPTIONS:
            continue
        require(option in defaults, f'{key}.{option} is not an option of the {entry.type!r} '
                f'evaluator; its options are {tuple(defaults)}')
        default = defaults[option]
        require(type(value) is type(default), f'{key}.{option}={value!r} must be of the type '
                f'of its default {default!r}')
    options = {**defaults, **entry}
    if 'method' in options:
        require(options['method'] in METHODS,
                f'{key}.method={options["method"]!r} is not one of {METHODS}')
    if 'sampler_steps' in options and options.get('method') != 'ddpm':
        T = config.diffusion.num_timesteps
        require(1 <= options['sampler_steps'] <= T, f'{key}.sampler_steps must be in 1..{T}')
    for count in ('t_strata', 'eps_per_image'):
        if count in options:
            require(options[count] >= 1, f'{key}.{count}={options[count]!r} must be at least 1')
