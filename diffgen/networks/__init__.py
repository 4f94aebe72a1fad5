"""The networks eps_theta(x, t, train) as Flax Linen modules, by config.model.name (NETWORKS).
They know nothing of schedules or losses. diffusers_import reads published diffusers
UNet2DModel checkpoints into the UNet (config.model.init_from)."""
from diffgen.errors import require
from diffgen.networks import diffusers_import
from diffgen.networks import mlp, unet  # noqa: F401  (each registers its builder in NETWORKS)
from diffgen.networks.registry import NETWORKS, get_network

__all__ = ['NETWORKS', 'check_config', 'diffusers_import', 'get_network']


def check_config(config):
    """The model section. With model.init_from, the UNet keys are first set from the
    imported model's config.json and its schedule checked (diffusers_import.configure)."""
    m = config.model
    if m.init_from:
        diffusers_import.configure(config)
    NETWORKS.check('model.name', m.name)
    require(m.ch >= 1 and m.num_res_blocks >= 0 and m.num_groups >= 1,
            'model.ch, model.num_groups must be >= 1 and model.num_res_blocks >= 0')
    require(len(m.ch_mult) >= 1 and all(isinstance(c, int) and c >= 1 for c in m.ch_mult),
            'model.ch_mult must be a non-empty tuple of positive integers')
    require(0.0 <= m.dropout < 1.0, 'model.dropout must be in [0, 1)')
    require(m.mlp_hidden >= 2 and m.mlp_depth >= 0, 'model.mlp_hidden >= 2, mlp_depth >= 0')
    require(m.norm_eps > 0, 'model.norm_eps must be > 0')
    require(m.downsample_pad in unet.DOWNSAMPLE_PADDINGS,
            f'model.downsample_pad={m.downsample_pad!r} is not one of '
            f'{tuple(unet.DOWNSAMPLE_PADDINGS)}')
    require(m.time_offset >= -1, 'model.time_offset must be >= -1 (t + time_offset >= 0)')
    require(0 <= m.time_freq_shift < m.ch // 2, 'model.time_freq_shift must be in [0, ch/2)')
    # attention heads: the middle block (always with attention) is checked here; the levels
    # with attention depend on the image side: unet.check_attention_heads, before init
    require(m.attn_head_dim >= 0 and m.ch * m.ch_mult[-1] % max(m.attn_head_dim, 1) == 0,
            'model.attn_head_dim must be 0 or divide the channels of the levels with '
            'attention (model.ch * model.ch_mult[-1] in the middle block)')
