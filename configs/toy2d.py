"""Low-dimensional mixtures (for the mutual-information estimates): an MLP on 2-D points.

    --config=configs/toy2d.py                       8 Gaussians on a circle
    --config=configs/toy2d.py:<name>                another toy2d mixture (diffgen/data/toy2d.py)
    --config=configs/toy2d.py:distribution=<name>   the same, named (configs/common.py)
"""
from configs import common, default


def get_config(arg=None):
    arg = common.parse_arg(arg, distribution='gmm8')
    config = default.get_config()
    config.data.source = f'toy2d:{arg.distribution}'
    config.data.toy2d_size = 4096
    config.data.num_train = 1024
    config.data.num_heldout = 1024

    config.model.name = 'mlp'
    config.model.mlp_hidden = 128
    config.model.mlp_depth = 3
    config.model.dropout = 0.0

    config.optim.learning_rate = 1e-3
    config.optim.warmup_steps = 100
    config.optim.ema_decay = 0.995
    config.optim.ema_warmup = True          # short runs (E7 from 200 steps): no init left in the EMA

    config.training.batch_size = 256
    config.training.num_steps = 4000
    config.training.steps_per_call = 100
    config.training.log_every = 500
    config.training.checkpoint_every = 1000
    config.training.sample_every = 0

    config.sampling.method = 'ddim'
    config.sampling.num_steps = 100
    config.sampling.num_samples = 1024
    config.sampling.batch_size = 1024

    # The report of a toy2d run is E7, the direct estimate of I(z; S) (see configs/default.py
    # for its analysis.e7 keys); E1-E6 are image experiments.
    config.analysis.experiments = ('e7',)
    return config
