"""The network registry: config.model.name -> a Flax Linen module eps_theta(x, t, train)."""
from diffgen.errors import ConfigError, require
from diffgen.networks.mlp import MLP
from diffgen.networks.unet import UNet

NETWORKS = ('unet', 'mlp')


def get_network(model_config):
    """Builds the network named by config.model.name from the rest of config.model."""
    m = model_config
    if m.name == 'unet':
        return UNet(ch=m.ch, ch_mult=tuple(m.ch_mult), num_res_blocks=m.num_res_blocks,
                    attn_resolutions=tuple(m.attn_resolutions), dropout=m.dropout,
                    num_groups=m.num_groups)
    if m.name == 'mlp':
        return MLP(hidden=m.mlp_hidden, depth=m.mlp_depth, dropout=m.dropout)
    raise ConfigError(f'unknown network {m.name!r}; choose one of {NETWORKS}')


def check_config(config):
    """The model section."""
    m = config.model
    require(m.name in NETWORKS, f'model.name={m.name!r} is not one of {NETWORKS}')
    require(m.ch >= 1 and m.num_res_blocks >= 0 and m.num_groups >= 1,
            'model.ch, model.num_groups must be >= 1 and model.num_res_blocks >= 0')
    require(len(m.ch_mult) >= 1 and all(isinstance(c, int) and c >= 1 for c in m.ch_mult),
            'model.ch_mult must be a non-empty tuple of positive integers')
    require(0.0 <= m.dropout < 1.0, 'model.dropout must be in [0, 1)')
    require(m.mlp_hidden >= 2 and m.mlp_depth >= 0, 'model.mlp_hidden >= 2, mlp_depth >= 0')
