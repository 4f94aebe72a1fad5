"""A DDPM-style UNet (Ho et al. 2020) in Flax Linen: eps_theta(x, t).

Sinusoidal embedding of t -> 2-layer MLP; per resolution `num_res_blocks` residual blocks
(GroupNorm, swish, conv, time-embedding bias, dropout, conv) with self-attention at the
chosen resolutions; downsampling by strided conv, upsampling by nearest-neighbour + conv;
skip connections concatenated on the way up. The network knows nothing of schedules.
"""
from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from diffgen.networks.registry import NETWORKS


def timestep_embedding(t, dim, max_period=10_000.0):
    """emb(t) = [sin(t w_k), cos(t w_k)], w_k = max_period^(-k/(dim/2)), k = 0..dim/2-1."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = t.astype(jnp.float32)[:, None] * freqs[None]
    return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


def group_norm(channels, num_groups):
    """GroupNorm with the largest group count <= num_groups that divides `channels`."""
    g = min(num_groups, channels)
    while channels % g:
        g -= 1
    return nn.GroupNorm(num_groups=g)


class ResBlock(nn.Module):
    out_ch: int
    dropout: float
    num_groups: int

    @nn.compact
    def __call__(self, x, temb, train):
        h = nn.swish(group_norm(x.shape[-1], self.num_groups)(x))
        h = nn.Conv(self.out_ch, (3, 3))(h)
        h = h + nn.Dense(self.out_ch)(nn.swish(temb))[:, None, None, :]
        h = nn.swish(group_norm(self.out_ch, self.num_groups)(h))
        h = nn.Dropout(self.dropout, deterministic=not train)(h)
        h = nn.Conv(self.out_ch, (3, 3), kernel_init=nn.initializers.zeros)(h)
        if x.shape[-1] != self.out_ch:
            x = nn.Dense(self.out_ch)(x)
        return x + h


class AttnBlock(nn.Module):
    num_groups: int

    @nn.compact
    def __call__(self, x):
        b, hgt, wid, c = x.shape
        h = group_norm(c, self.num_groups)(x).reshape(b, hgt * wid, c)
        h = nn.SelfAttention(num_heads=1, qkv_features=c, out_features=c,
                             out_kernel_init=nn.initializers.zeros)(h)
        return x + h.reshape(b, hgt, wid, c)


class UNet(nn.Module):
    """eps_theta(x, t) for x of shape (B, H, W, C) and integer t of shape (B,)."""
    ch: int = 64
    ch_mult: Sequence[int] = (1, 2)
    num_res_blocks: int = 2
    attn_resolutions: Sequence[int] = (4,)
    dropout: float = 0.1
    num_groups: int = 32

    @nn.compact
    def __call__(self, x, t, train=False):
        res_block = lambda ch: ResBlock(ch, self.dropout, self.num_groups)
        temb = timestep_embedding(t, self.ch)
        temb = nn.Dense(4 * self.ch)(temb)
        temb = nn.Dense(4 * self.ch)(nn.swish(temb))

        h = nn.Conv(self.ch, (3, 3))(x)
        skips = [h]
        for level, mult in enumerate(self.ch_mult):
            for _ in range(self.num_res_blocks):
                h = res_block(self.ch * mult)(h, temb, train)
                if h.shape[1] in self.attn_resolutions:
                    h = AttnBlock(self.num_groups)(h)
                skips.append(h)
            if level != len(self.ch_mult) - 1:
                h = nn.Conv(h.shape[-1], (3, 3), strides=(2, 2))(h)
                skips.append(h)

        h = res_block(h.shape[-1])(h, temb, train)
        h = AttnBlock(self.num_groups)(h)
        h = res_block(h.shape[-1])(h, temb, train)

        for level, mult in reversed(list(enumerate(self.ch_mult))):
            for _ in range(self.num_res_blocks + 1):
                h = res_block(self.ch * mult)(jnp.concatenate([h, skips.pop()], -1), temb, train)
                if h.shape[1] in self.attn_resolutions:
                    h = AttnBlock(self.num_groups)(h)
            if level != 0:
                b, hgt, wid, c = h.shape
                h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)
                h = nn.Conv(c, (3, 3))(h)

        h = nn.swish(group_norm(h.shape[-1], self.num_groups)(h))
        return nn.Conv(x.shape[-1], (3, 3), kernel_init=nn.initializers.zeros)(h)


@NETWORKS.register('unet')
def build_unet(model_config):
    """UNet from config.model: ch, ch_mult, num_res_blocks, attn_resolutions, dropout,
    num_groups."""
    m = model_config
    return UNet(ch=m.ch, ch_mult=tuple(m.ch_mult), num_res_blocks=m.num_res_blocks,
                attn_resolutions=tuple(m.attn_resolutions), dropout=m.dropout,
                num_groups=m.num_groups)
