"""Training: the train state, the jitted train step, the loop with its Orbax checkpoints,
and vmapped ensembles of small models."""
from diffgen.errors import require
from diffgen.training.step import COMPUTE_DTYPES


def check_config(config):
    """The optim and training sections (the objective's options: diffgen.diffusion)."""
    o, t = config.optim, config.training
    require(o.learning_rate > 0, 'optim.learning_rate must be > 0')
    require(o.warmup_steps >= 0 and o.grad_clip >= 0, 'optim.warmup_steps, grad_clip >= 0')
    require(0.0 <= o.ema_decay < 1.0, 'optim.ema_decay must be in [0, 1)')
    require(0 <= o.beta1 < 1 and 0 <= o.beta2 < 1 and o.eps > 0, 'optim betas in [0,1), eps > 0')
    require(t.batch_size >= 1, 'training.batch_size must be >= 1')
    require(t.num_steps >= 1 and t.steps_per_call >= 1, 'training.num_steps, steps_per_call >= 1')
    require(t.keep_checkpoints >= 1, 'training.keep_checkpoints must be >= 1')
    require(t.keep_period >= 0, 'training.keep_period must be >= 0 (0 = none)')
    for key in ('num_steps', 'log_every', 'checkpoint_every', 'sample_every'):
        value = t[key]
        require(value >= 0 and value % t.steps_per_call == 0,
                f'training.{key}={value} must be a multiple of '
                f'training.steps_per_call={t.steps_per_call}')
    require(t.log_every >= 1 and t.checkpoint_every >= 1,
            'training.log_every and checkpoint_every must be >= 1')
    require(t.loss_bands >= 0 and t.profile_steps >= 0,
            'training.loss_bands and profile_steps must be >= 0 (0 = none)')
    require(t.compute_dtype in COMPUTE_DTYPES,
            f'training.compute_dtype={t.compute_dtype!r} is not one of {tuple(COMPUTE_DTYPES)}')
