"""The embedded default: scikit-learn's 8x8 digits (1797 images), no download.

    --config=configs/digits.py                     the default run (minutes on a laptop CPU)
    --config=configs/digits.py:smoke               a reduced run (a few minutes)
    --config=configs/digits.py:smoke,num_train=64  arguments combine (configs/common.py)
    --config=configs/digits.py:e5                  E5 alone (--mode=analyze on the same workdir)

Arguments: smoke (the reduced run), num_train=N (the training-set size; -1 = all 1541), e5
(only E5: its four models of the run's full length take longer than the rest of the run, so
the default run leaves E5 to this variant; the smoke run keeps it), conv_only (the UNet
without self-attention, model.attn_resolutions=(): the convolution-only network of Kamb &
Ganguli's patch-machine theory).

get_sweep(arg) declares the E6 sweep over the training-set size N (launch/sweep.py).
"""
import ml_collections

from configs import common, default


def get_config(arg=None):
    arg = common.parse_arg(arg, smoke=False, num_train=-1, e5=False, conv_only=False)
    config = default.get_config()
    config.data.source = 'digits'
    config.data.num_heldout = 256           # held out of the 1797; the rest is the training set
    config.data.num_train = arg.num_train

    config.model.ch = 32
    config.model.ch_mult = (1, 2)
    config.model.num_res_blocks = 1
    config.model.attn_resolutions = () if arg.conv_only else (4,)
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
    config.training.keep_period = 1000      # keep these checkpoints for analysis (--step)

    # evaluation during training (eval.csv): DDIM memorisation and FD and the loss gap every
    # 500 steps; Heun's and DDPM's memorisation are off here (every 0) and on in the sweep
    config.evaluation.evals = ml_collections.ConfigDict({
        'ddim': {'type': 'memorisation', 'method': 'ddim', 'sampler_steps': 50, 'every': 500},
        'heun': {'type': 'memorisation', 'method': 'heun', 'sampler_steps': 50, 'every': 0},
        'ddpm': {'type': 'memorisation', 'method': 'ddpm', 'sampler_steps': 0, 'every': 0},
        'quality': {'type': 'fd', 'method': 'ddim', 'sampler_steps': 50, 'every': 500},
        'loss': {'type': 'loss', 'every': 500},
    })

    config.sampling.method = 'ddpm'
    config.sampling.num_samples = 100
    config.analysis.experiments = ('e5',) if arg.e5 else ('e1', 'e2', 'e3', 'e4', 'e8')

    if arg.smoke:
        config.model.ch = 16
        config.model.num_res_blocks = 1
        config.optim.warmup_steps = 50
        config.optim.ema_decay = 0.99                     # 600 steps: the EMA must forget the init
        config.optim.ema_warmup = True                    # ... from the first steps on
        config.training.num_steps = 600
        config.training.log_every = 100
        config.training.checkpoint_every = 200
        config.training.sample_every = 0
        config.sampling.method = 'ddim'
        config.sampling.num_steps = 100
        config.sampling.num_samples = 64
        config.analysis.num_samples = 128                 # E1-E4: fewer samples, steps, t_switch
        config.analysis.sampler_steps = 50
        config.analysis.e4.switch_fractions = (0.0, 0.01, 0.05, 0.2, 1.0)
        config.analysis.quality.classifier_steps = 500
        if not arg.e5:
            config.analysis.experiments = ('e1', 'e2', 'e3', 'e4', 'e5')
    return config


SWEEP_NUM_TRAIN = (16, 32, 64, 128, 256, 512, 1541)   # 1541 = all after 256 held out

# Every sweep run also evaluates all three samplers during training, so that each N has its
# memorisation-against-step curve per sampler (DDPM's 1000 steps on fewer samples, less often).
SWEEP_EVALUATION = {**{f'evaluation.evals.{name}.every': 1000
                       for name in ('ddim', 'heun', 'ddpm', 'quality', 'loss')},
                    'evaluation.num_samples': 100}


def get_sweep(arg=None):
    """The E6 sweep: one run per training-set size N, each reporting E6 (its own
    memorisation ratio) and E8 (which theory explains its network: made while its
    checkpoints are at hand, so that the sweep's record in sweeps/ suffices afterwards) and
    evaluating every sampler during training (eval.csv). arg: the Ns
    as a comma-separated list (e.g. '16,64,256'), default SWEEP_NUM_TRAIN. Used as
        python -m launch.sweep --config=configs/digits.py[:variant] --sweep_dir=D [--sweep_arg=...]
    """
    sizes = SWEEP_NUM_TRAIN if arg is None else tuple(int(n) for n in str(arg).split(','))
    return [{'data.num_train': n, 'analysis.experiments': ('e6', 'e8'), **SWEEP_EVALUATION}
            for n in sizes]
