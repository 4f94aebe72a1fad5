"""The diffusion process: schedules, conversions between parametrisations, training
objectives, denoisers and samplers (docs/math.md §1, §2, §5, §6). Knows nothing of networks."""
from diffgen.diffusion.objectives import GAP_WEIGHTINGS, OBJECTIVES
from diffgen.diffusion.samplers import sampler_steps
from diffgen.diffusion.schedules import SCHEDULES
from diffgen.errors import require


def check_config(config):
    """The diffusion and sampling sections and training.objective's options."""
    f, s, t = config.diffusion, config.sampling, config.training
    require(f.num_timesteps >= 1, 'diffusion.num_timesteps must be >= 1')
    SCHEDULES.check('diffusion.schedule', f.schedule)
    require(0 < f.beta_start <= f.beta_end < 1,
            'diffusion needs 0 < beta_start <= beta_end < 1')
    OBJECTIVES.check('training.objective', t.objective)
    require(t.gap_max_k >= 1, 'training.gap_max_k must be >= 1')
    require(0.0 <= t.gap_p_zero <= 1.0, 'training.gap_p_zero must be in [0, 1]')
    require(t.gap_weighting in GAP_WEIGHTINGS,
            f'training.gap_weighting={t.gap_weighting!r} is not one of {GAP_WEIGHTINGS}')
    sampler_steps(s.method, s.num_steps, s.eta, num_timesteps=f.num_timesteps)
    require(s.num_samples >= 1 and s.batch_size >= 1, 'sampling.num_samples, batch_size >= 1')
