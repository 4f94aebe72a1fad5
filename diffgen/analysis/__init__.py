"""The generalisation report: what the experiments share (context), the measurements
(metrics, quality, mutual information), the experiment plugins and the report writer."""
from diffgen.analysis.experiment import EXPERIMENTS
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
    require(a.quality_classifier_steps >= 1 and a.quality_k >= 1,
            'analysis.quality_classifier_steps and quality_k must be >= 1')
    for key in a.experiments:
        if EXPERIMENTS[key].check is not None:
            EXPERIMENTS[key].check(config)
