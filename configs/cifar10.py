"""CIFAR-10 32x32 with the DDPM paper's settings (Ho et al. 2020, Appendix B).

Needs the dataset prepared in ArrayRecord format in the data dir (no download at run time):
    tfds build cifar10 --data_dir=DIR --file_format=array_record
"""
from configs import common, default


def get_config(arg=None):
    common.parse_arg(arg)  # no arguments: any is an error
    config = default.get_config()
    config.data.source = 'tfds:cifar10'
    config.data.train_split = 'train'
    config.data.heldout_split = 'test'
    config.data.num_heldout = 10_000
    config.data.random_flip = True

    config.model.name = 'unet'
    config.model.ch = 128
    config.model.ch_mult = (1, 2, 2, 2)
    config.model.num_res_blocks = 2
    config.model.attn_resolutions = (16,)
    config.model.dropout = 0.1

    config.diffusion.num_timesteps = 1000
    config.diffusion.schedule = 'linear'
    config.diffusion.beta_start = 1e-4
    config.diffusion.beta_end = 0.02

    config.optim.learning_rate = 2e-4
    config.optim.warmup_steps = 5000
    config.optim.grad_clip = 1.0
    config.optim.ema_decay = 0.9999

    config.training.batch_size = 128
    config.training.num_steps = 800_000
    config.training.steps_per_call = 100
    config.training.log_every = 1000
    config.training.checkpoint_every = 10_000
    config.training.sample_every = 50_000

    config.sampling.method = 'ddpm'
    config.sampling.num_samples = 64
    config.sampling.batch_size = 64
    return config
