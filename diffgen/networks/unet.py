"""A DDPM-style UNet (Ho et al. 2020) in Flax Linen: eps_theta(x, t).

Sinusoidal embedding of t -> 2-layer MLP; per resolution `num_res_blocks` residual blocks
(GroupNorm, swish, conv, time-embedding bias, dropout, conv) with self-attention at the
chosen resolutions; downsampling by strided conv, upsampling by nearest-neighbour + conv;
skip connections concatenated on the way up. The network knows nothing of schedules.

The options after `num_groups` let it reproduce the published DDPM networks (diffusers'
UNet2DModel, diffgen/networks/diffusers_import.py): the time index it embeds (time_offset),
the embedding's frequencies and order (time_freq_shift, time_flip), the padding of the
strided convolutions (downsample_pad), the attention heads (attn_head_dim) and the GroupNorm
epsilon (norm_eps). Their defaults are diffgen's own network.
"""
from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from diffgen.errors import ConfigError
from diffgen.networks.registry import NETWORKS

# downsample_pad -> the padding of the stride-2 3x3 convolutions on an even side:
# 'same' pads one row/column after (XLA's SAME; diffusers downsample_padding=0, the DDPM
# release), 'both' one before and one after (diffusers downsample_padding=1).
DOWNSAMPLE_PADDINGS = {'same': 'SAME', 'both': ((1, 1), (1, 1))}


def timestep_embedding(t, dim, max_period=10_000.0, *, freq_shift=0, flip=False):
    """emb(t) = [sin(t w_k), cos(t w_k)], w_k = max_period^(-k/(dim/2 - freq_shift)),
    k = 0..dim/2-1; flip: [cos(t w_k), sin(t w_k)] (diffusers' flip_sin_to_cos; the DDPM
    release has freq_shift = 1, flip = False)."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32)
                    / (half - freq_shift))
    args = t.astype(jnp.float32)[:, None] * freqs[None]
    parts = [jnp.cos(args), jnp.sin(args)] if flip else [jnp.sin(args), jnp.cos(args)]
    return jnp.concatenate(parts, axis=-1)


def group_norm(channels, num_groups, epsilon=1e-6):
    """GroupNorm with the largest group count <= num_groups that divides `channels`;
    y = (x - mean) / sqrt(var + epsilon) * scale + bias per group."""
    g = min(num_groups, channels)
    while channels % g:
        g -= 1
    return nn.GroupNorm(num_groups=g, epsilon=epsilon)


class ResBlock(nn.Module):
    out_ch: int
    dropout: float
    num_groups: int
    norm_eps: float = 1e-6

    @nn.compact
    def __call__(self, x, temb, train):
        norm = lambda c: group_norm(c, self.num_groups, self.norm_eps)
        h = nn.swish(norm(x.shape[-1])(x))
        h = nn.Conv(self.out_ch, (3, 3))(h)
        h = h + nn.Dense(self.out_ch)(nn.swish(temb))[:, None, None, :]
        h = nn.swish(norm(self.out_ch)(h))
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = nn.Conv(self.out_ch, (3, 3), kernel_init=nn.initializers.zeros)(h)
        if x.shape[-1] != self.out_ch:
            x = nn.Dense(self.out_ch)(x)  # the 1x1-convolution shortcut
        return x + h


class AttnBlock(nn.Module):
    """x + Attention(GroupNorm(x)) over the H*W positions, with c / head_dim heads of
    head_dim channels (head_dim = 0: one head of all c channels)."""
    num_groups: int
    norm_eps: float = 1e-6
    head_dim: int = 0

    @nn.compact
    def __call__(self, x):
        b, hgt, wid, c = x.shape
        h = group_norm(c, self.num_groups, self.norm_eps)(x).reshape(b, hgt * wid, c)
        h = nn.SelfAttention(num_heads=c // self.head_dim if self.head_dim else 1,
                             qkv_features=c, out_features=c,
                             out_kernel_init=nn.initializers.zeros)(h)
        return x + h.reshape(b, hgt, wid, c)


class UNet(nn.Module):
    """eps_theta(x, t) for x of shape (B, H, W, C) and integer t of shape (B,); the time
    embedding is of t + time_offset."""
    ch: int = 64
    ch_mult: Sequence[int] = (1, 2)
    num_res_blocks: int = 2
    attn_resolutions: Sequence[int] = (4,)
    dropout: float = 0.1
    num_groups: int = 32
    time_offset: int = 0
    time_freq_shift: int = 0
    time_flip: bool = False
    downsample_pad: str = 'same'
    attn_head_dim: int = 0
    norm_eps: float = 1e-6

    @nn.compact
    def __call__(self, x, t, train=False):
        res_block = lambda ch: ResBlock(ch, self.dropout, self.num_groups, self.norm_eps)
        attn_block = lambda: AttnBlock(self.num_groups, self.norm_eps, self.attn_head_dim)
        temb = timestep_embedding(t + self.time_offset, self.ch,
                                  freq_shift=self.time_freq_shift, flip=self.time_flip)
        temb = nn.Dense(4 * self.ch)(temb)
        temb = nn.Dense(4 * self.ch)(nn.swish(temb))

        h = nn.Conv(self.ch, (3, 3))(x)
        skips = [h]
        for level, mult in enumerate(self.ch_mult):
            for _ in range(self.num_res_blocks):
                h = res_block(self.ch * mult)(h, temb, train)
                if h.shape[1] in self.attn_resolutions:
                    h = attn_block()(h)
                skips.append(h)
            if level != len(self.ch_mult) - 1:
                h = nn.Conv(h.shape[-1], (3, 3), strides=(2, 2),
                            padding=DOWNSAMPLE_PADDINGS[self.downsample_pad])(h)
                skips.append(h)

        h = res_block(h.shape[-1])(h, temb, train)
        h = attn_block()(h)
        h = res_block(h.shape[-1])(h, temb, train)

        for level, mult in reversed(list(enumerate(self.ch_mult))):
            for _ in range(self.num_res_blocks + 1):
                h = res_block(self.ch * mult)(jnp.concatenate([h, skips.pop()], -1), temb, train)
                if h.shape[1] in self.attn_resolutions:
                    h = attn_block()(h)
            if level != 0:
                b, hgt, wid, c = h.shape
                h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)
                h = nn.Conv(c, (3, 3))(h)

        h = nn.swish(group_norm(h.shape[-1], self.num_groups, self.norm_eps)(h))
        return nn.Conv(x.shape[-1], (3, 3), kernel_init=nn.initializers.zeros)(h)


def check_attention_heads(unet, image_shape):
    """ConfigError unless unet.attn_head_dim divides the channels of every attention block of
    the UNet `unet` on images of image_shape (H, W, C): ch * ch_mult[level] at the levels
    whose side H / 2**level is in attn_resolutions, and at the last level (the middle block
    always has attention). Which levels have attention depends on the image side, known only
    with the data: training.state.create_train_state calls it before init (an error raised
    inside the traced init would carry JAX's traceback note, not be one line)."""
    if not unet.attn_head_dim:
        return
    last = len(unet.ch_mult) - 1
    for level, mult in enumerate(unet.ch_mult):
        side, channels = image_shape[0] // 2 ** level, unet.ch * mult
        if channels % unet.attn_head_dim and (side in unet.attn_resolutions or level == last):
            where = (f'resolution {side}x{side}' if side in unet.attn_resolutions
                     else 'the middle block')
            raise ConfigError(f'model.attn_head_dim={unet.attn_head_dim} does not divide the '
                              f'{channels} channels of the attention at {where}')


@NETWORKS.register('unet')
def build_unet(model_config):
    """UNet from config.model: ch, ch_mult, num_res_blocks, attn_resolutions, dropout,
    num_groups, time_offset, time_freq_shift, time_flip, downsample_pad, attn_head_dim,
    norm_eps."""
    m = model_config
    return UNet(ch=m.ch, ch_mult=tuple(m.ch_mult), num_res_blocks=m.num_res_blocks,
                attn_resolutions=tuple(m.attn_resolutions), dropout=m.dropout,
                num_groups=m.num_groups, time_offset=m.time_offset,
                time_freq_shift=m.time_freq_shift, time_flip=m.time_flip,
                downsample_pad=m.downsample_pad, attn_head_dim=m.attn_head_dim,
                norm_eps=m.norm_eps)
