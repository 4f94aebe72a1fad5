"""The generalisation report: what the experiments share (context), the measurements
(metrics, quality, mutual information), the experiment plugins and the report writer."""
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
    for method in e.methods:
        require(method in METHODS, f'evaluation.methods entry {method!r} is not one of {METHODS}')
    require(1 <= e.sampler_steps <= T, f'evaluation.sampler_steps must be in 1..{T}')
    require(e.num_samples >= 2 and e.num_images >= 1,
            'evaluation.num_samples must be >= 2 and evaluation.num_images >= 1')
    for key in a.experiments:
        if EXPERIMENTS[key].check is not None:
            EXPERIMENTS[key].check(config)
