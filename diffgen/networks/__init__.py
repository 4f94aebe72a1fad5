"""The networks eps_theta(x, t, train) as Flax Linen modules, by config.model.name (NETWORKS).
They know nothing of schedules or losses."""
from diffgen.errors import require
from diffgen.networks import mlp, unet  # noqa: F401  (each registers its builder in NETWORKS)
from diffgen.networks.registry import NETWORKS, get_network

__all__ = ['NETWORKS', 'check_config', 'get_network']


def check_config(config):
    """The model section."""
    m = config.model
    NETWORKS.check('model.name', m.name)
    require(m.ch >= 1 and m.num_res_blocks >= 0 and m.num_groups >= 1,
            'model.ch, model.num_groups must be >= 1 and model.num_res_blocks >= 0')
    require(len(m.ch_mult) >= 1 and all(isinstance(c, int) and c >= 1 for c in m.ch_mult),
            'model.ch_mult must be a non-empty tuple of positive integers')
    require(0.0 <= m.dropout < 1.0, 'model.dropout must be in [0, 1)')
    require(m.mlp_hidden >= 2 and m.mlp_depth >= 0, 'model.mlp_hidden >= 2, mlp_depth >= 0')
