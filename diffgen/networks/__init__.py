"""The network registry: config.model.name -> a Flax Linen module eps_theta(x, t, train)."""
from diffgen.errors import ConfigError
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
