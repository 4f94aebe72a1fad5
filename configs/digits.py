"""The embedded default: scikit-learn's 8x8 digits (1797 images), no download.

    --config=configs/digits.py          the default run (minutes on a laptop CPU)
    --config=configs/digits.py:smoke    a reduced run that finishes in under 2 minutes

get_sweep(arg) declares the E6 sweep over the training-set size N (launch/sweep.py).
"""
from configs import default


def get_config(arg=None):
    config = default.get_config()
    config.data.source = 'digits'
    config.data.num_heldout = 256           # held out of the 1797; the rest is the training set

    config.model.ch = 32
    config.model.ch_mult = (1, 2)
    config.model.num_res_blocks = 1
    config.model.attn_resolutions = (4,)
    config.model.dropout = 0.1

    config.optim.learning_rate = 1e-3
    config.optim.warmup_steps = 200
    config.optim.ema_decay = 0.999

    config.training.batch_size = 128
    config.training.num_steps = 5000
    config.training.steps_per_call = 5      # unrolled: XLA:CPU runs conv gradients in loops slowly
    config.training.unroll = True
    config.training.log_every = 250
    config.training.checkpoint_every = 1000
    config.training.sample_every = 2000

    config.sampling.method = 'ddpm'
    config.sampling.num_samples = 100

    if arg == 'smoke':
        config.model.ch = 16
        config.model.num_res_blocks = 1
        config.optim.warmup_steps = 50
        config.optim.ema_decay = 0.99                     # 600 steps: the EMA must forget the init
        config.training.num_steps = 600
        config.training.log_every = 100
        config.training.checkpoint_every = 200
        config.training.sample_every = 0
        config.sampling.method = 'ddim'
        config.sampling.num_steps = 100
        config.sampling.num_samples = 64
        config.analysis.num_samples = 128                 # E1-E4: fewer samples, steps, t_switch
        config.analysis.sampler_steps = 50
        config.analysis.e4_switch_fractions = (0.0, 0.01, 0.05, 0.2, 1.0)
        config.analysis.quality_classifier_steps = 500
    elif arg is not None:
        raise ValueError(f'unknown variant {arg!r} of configs/digits.py; known: smoke')
    return config


SWEEP_NUM_TRAIN = (16, 32, 64, 128, 256, 512, 1024, 1541)   # 1541 = all after 256 held out


def get_sweep(arg=None):
    """The E6 sweep: one run per training-set size N, each reporting only E6 (its own
    memorisation ratio). arg: the Ns as a comma-separated list (e.g. '16,64,256'), default
    SWEEP_NUM_TRAIN. Used as
        python -m launch.sweep --config=configs/digits.py[:variant] --sweep_dir=D [--sweep_arg=...]
    """
    sizes = SWEEP_NUM_TRAIN if arg is None else tuple(int(n) for n in str(arg).split(','))
    return [{'data.num_train': n, 'analysis.experiments': ('e6',)} for n in sizes]
