"""The diffusion process: schedules, conversions between parametrisations, training
objectives, denoisers and samplers (docs/math.md §1, §2, §5, §6). Knows nothing of networks."""
from diffgen.diffusion.objectives import GAP_WEIGHTINGS, OBJECTIVES
from diffgen.diffusion.samplers import METHODS
from diffgen.diffusion.schedules import SCHEDULES
from diffgen.errors import require


def _one_of(name, value, choices):
    require(value in choices, f'{name}={value!r} is not one of {tuple(choices)}')


def check_config(config):
    """The diffusion and sampling sections and training.objective's options."""
    f, s, t = config.diffusion, config.sampling, config.training
    require(f.num_timesteps >= 1, 'diffusion.num_timesteps must be >= 1')
    _one_of('diffusion.schedule', f.schedule, SCHEDULES)
    require(0 < f.beta_start <= f.beta_end < 1,
            'diffusion needs 0 < beta_start <= beta_end < 1')
    _one_of('training.objective', t.objective, OBJECTIVES)
    require(t.gap_max_k >= 1, 'training.gap_max_k must be >= 1')
    require(0.0 <= t.gap_p_zero <= 1.0, 'training.gap_p_zero must be in [0, 1]')
    _one_of('training.gap_weighting', t.gap_weighting, GAP_WEIGHTINGS)
    _one_of('sampling.method', s.method, METHODS)
    require(0 <= s.num_steps <= f.num_timesteps,
            f'sampling.num_steps must be in 0..{f.num_timesteps} (0 = default)')
    require(s.method != 'ddpm' or s.num_steps in (0, f.num_timesteps),
            'sampling.method=ddpm runs all T steps; use ddim for fewer')
    require(0.0 <= s.eta <= 1.0, 'sampling.eta must be in [0, 1]')
    require(s.num_samples >= 1 and s.batch_size >= 1, 'sampling.num_samples, batch_size >= 1')
