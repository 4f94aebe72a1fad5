"""Published diffusers UNet2DModel checkpoints (google/ddpm-cifar10-32 and the other DDPM
models, and those trained with diffusers since) as diffgen's UNet: config.model.init_from.

init_from is a diffusers model directory (config.json + diffusion_pytorch_model.safetensors,
or .bin, + scheduler_config.json) or a saved pipeline (unet/ and scheduler/ inside it).

  configure(config)    sets config.model's UNet keys from config.json, so that
                       diffgen.networks.unet.UNet is the published network; checks that the
                       scheduler_config.json's schedule is config.diffusion's. Run by
                       config validation (diffgen.networks.check_config).
  load_params(...)     the weights as diffgen parameters (training.loop.build puts them into
                       the fresh train state, raw and EMA).

Time index. A diffusers network is trained on timesteps t_d = 0..T-1 with
alphas_cumprod[t_d] = prod_{s <= t_d} (1 - beta_s), which is diffgen's alphas_bar at
t = t_d + 1 (diffgen's t = 1..T, alphas_bar_0 = 1): the imported UNet has time_offset = -1,
so that eps_theta(x, t) = UNet2DModel(x, t - 1).

The names: diffusers' module path -> diffgen's Flax path, in the order in which
UNet.__call__ creates its modules (name_map). Layouts: a torch conv weight (out, in, kh, kw)
is a Flax kernel (kh, kw, in, out); a linear weight (out, in) is (in, out); the 1x1-conv
shortcut (out, in, 1, 1) is a Dense kernel (in, out); attention q/k/v (heads*d, c) is
(c, heads, d), its output projection (c, heads*d) is (heads, d, c). Safetensors are read
through the safetensors package's NumPy API (no PyTorch); a .bin needs PyTorch.
"""
from __future__ import annotations

import collections
import io
import math
import os

import numpy as np

from diffgen import files
from diffgen.errors import ConfigError

CONFIG = 'config.json'
SCHEDULER_CONFIG = 'scheduler_config.json'
WEIGHTS = ('diffusion_pytorch_model.safetensors', 'diffusion_pytorch_model.bin')
REMEDY = 'download the model again'
TIME_OFFSET = -1   # diffgen's t = diffusers' timestep + 1

# UNet2DModel's defaults (diffusers 0.42), for the keys an older config.json lacks. Two do not
# change the network a checkpoint computes: dropout (the run's model.dropout applies when
# fine-tuning) and num_train_timesteps (read by learned time embeddings only).
UNET_DEFAULTS = {
    'sample_size': None, 'in_channels': 3, 'out_channels': 3, 'center_input_sample': False,
    'time_embedding_type': 'positional', 'time_embedding_dim': None, 'freq_shift': 0,
    'flip_sin_to_cos': True,
    'down_block_types': ('DownBlock2D', 'AttnDownBlock2D', 'AttnDownBlock2D', 'AttnDownBlock2D'),
    'mid_block_type': 'UNetMidBlock2D',
    'up_block_types': ('AttnUpBlock2D', 'AttnUpBlock2D', 'AttnUpBlock2D', 'UpBlock2D'),
    'block_out_channels': (224, 448, 672, 896), 'layers_per_block': 2,
    'mid_block_scale_factor': 1, 'downsample_padding': 1, 'downsample_type': 'conv',
    'upsample_type': 'conv', 'dropout': 0.0, 'act_fn': 'silu', 'attention_head_dim': 8,
    'norm_num_groups': 32, 'attn_norm_num_groups': None, 'norm_eps': 1e-5,
    'resnet_time_scale_shift': 'default', 'add_attention': True, 'class_embed_type': None,
    'num_class_embeds': None, 'num_train_timesteps': None,
}
# Keys diffgen's UNet has no option for: only this value can be imported.
FIXED = {
    'center_input_sample': False, 'time_embedding_type': 'positional',
    'mid_block_type': 'UNetMidBlock2D', 'mid_block_scale_factor': 1,
    'downsample_type': 'conv', 'upsample_type': 'conv', 'act_fn': 'silu',
    'resnet_time_scale_shift': 'default', 'add_attention': True, 'class_embed_type': None,
    'num_class_embeds': None,
}
DOWN_BLOCKS = {'DownBlock2D': False, 'AttnDownBlock2D': True}   # type -> has attention
UP_BLOCKS = {'UpBlock2D': False, 'AttnUpBlock2D': True}
DOWNSAMPLE_PADS = {0: 'same', 1: 'both'}   # downsample_padding -> model.downsample_pad

# DDPMScheduler's (and DDIM's, PNDM's ...) defaults, and its beta schedules diffgen has.
SCHEDULER_DEFAULTS = {'num_train_timesteps': 1000, 'beta_start': 0.0001, 'beta_end': 0.02,
                      'beta_schedule': 'linear', 'trained_betas': None,
                      'prediction_type': 'epsilon', 'rescale_betas_zero_snr': False}
BETA_SCHEDULES = {'linear': 'linear', 'squaredcos_cap_v2': 'cosine'}
# Old checkpoints (the DDPM conversions) name the attention projections differently.
OLD_ATTENTION_NAMES = {'query': 'to_q', 'key': 'to_k', 'value': 'to_v', 'proj_attn': 'to_out.0'}


def _error(directory, message):
    return ConfigError(f'model.init_from={directory}: {message}')


def model_dir(init_from):
    """The directory of the UNet's config.json: init_from, or init_from/unet (a pipeline)."""
    if not files.exists(init_from):
        raise _error(init_from, 'no such directory')
    for path in (init_from, os.path.join(init_from, 'unet')):
        if files.exists(os.path.join(path, CONFIG)):
            return path
    raise _error(init_from, f'holds no {CONFIG} (nor unet/{CONFIG}): not a diffusers model '
                 'directory')


def read_unet_config(init_from):
    """(directory, config.json with UNet2DModel's defaults filled in); ConfigError unless it
    describes a UNet2DModel."""
    directory = model_dir(init_from)
    raw = files.read_json(os.path.join(directory, CONFIG), remedy=REMEDY)
    if raw.get('_class_name') != 'UNet2DModel':
        raise _error(init_from, f'{CONFIG} describes a {raw.get("_class_name")}; diffgen '
                     'imports UNet2DModel only')
    unknown = sorted(k for k in raw if not k.startswith('_') and k not in UNET_DEFAULTS)
    if unknown:
        raise _error(init_from, f'{CONFIG} has keys diffgen cannot interpret: {unknown}')
    return directory, {**UNET_DEFAULTS, **raw}


def unet_options(unet, where='config.json'):
    """The config.model values of diffgen's UNet that compute the UNet2DModel `unet` (its
    config.json, defaults filled in); ConfigError (no prefix) for what it cannot express."""
    def fail(message):
        raise ConfigError(f'{where}: {message}; diffgen\'s UNet cannot express this network')
    for key, value in FIXED.items():
        if unet[key] != value:
            fail(f'{key}={unet[key]!r} (diffgen has {value!r} only)')
    channels = tuple(unet['block_out_channels'])
    ch, groups = channels[0], unet['norm_num_groups']
    down, up = list(unet['down_block_types']), list(unet['up_block_types'])
    if len(down) != len(channels) or len(up) != len(channels):
        fail(f'{len(channels)} block_out_channels but {len(down)} down and {len(up)} up blocks')
    for types, kinds in ((down, DOWN_BLOCKS), (up, UP_BLOCKS)):
        for kind in types:
            if kind not in kinds:
                fail(f'block type {kind!r} (diffgen has {sorted(kinds)})')
    attention = [DOWN_BLOCKS[kind] for kind in down]
    if attention != [UP_BLOCKS[kind] for kind in reversed(up)]:
        fail(f'attention in down blocks {down} but up blocks {up} (diffgen has attention '
             'at the same resolutions on both paths)')
    if any(c % ch for c in channels):
        fail(f'block_out_channels={list(channels)} are not multiples of the first')
    if any(c % groups for c in channels):
        fail(f'norm_num_groups={groups} does not divide block_out_channels={list(channels)}')
    if unet['attn_norm_num_groups'] not in (None, groups):
        fail(f'attn_norm_num_groups={unet["attn_norm_num_groups"]} differs from '
             f'norm_num_groups={groups}')
    if unet['time_embedding_dim'] not in (None, 4 * ch):
        fail(f'time_embedding_dim={unet["time_embedding_dim"]} (diffgen has 4 * {ch})')
    if unet['downsample_padding'] not in DOWNSAMPLE_PADS:
        fail(f'downsample_padding={unet["downsample_padding"]} (diffgen has 0 or 1)')
    if unet['in_channels'] != unet['out_channels']:
        fail(f'in_channels={unet["in_channels"]} != out_channels={unet["out_channels"]}')
    head_dim = unet['attention_head_dim'] or 0
    if head_dim and any(c % head_dim for c, a in zip(channels, attention + [True]) if a):
        fail(f'attention_head_dim={head_dim} does not divide the attention blocks\' channels')
    if float(unet['freq_shift']) != int(unet['freq_shift']):
        fail(f'freq_shift={unet["freq_shift"]} (diffgen has integers)')
    size = image_size(unet, where)
    return {
        'name': 'unet', 'ch': ch, 'ch_mult': tuple(c // ch for c in channels),
        'num_res_blocks': unet['layers_per_block'],
        'attn_resolutions': tuple(size // 2 ** i for i, a in enumerate(attention) if a),
        'num_groups': groups, 'norm_eps': float(unet['norm_eps']),
        'attn_head_dim': head_dim, 'downsample_pad': DOWNSAMPLE_PADS[unet['downsample_padding']],
        'time_offset': TIME_OFFSET, 'time_freq_shift': int(unet['freq_shift']),
        'time_flip': bool(unet['flip_sin_to_cos']),
    }


def image_size(unet, where='config.json'):
    """The side of the square images the UNet2DModel was built for (sample_size)."""
    size = unet['sample_size']
    if isinstance(size, (list, tuple)):
        if len(set(size)) != 1:
            raise ConfigError(f'{where}: sample_size={list(size)}; diffgen takes square images')
        size = size[0]
    if not isinstance(size, int):
        raise ConfigError(f'{where}: sample_size={size!r}; diffgen needs the image side (it '
                          'places attention by resolution)')
    return size


def scheduler_config(init_from, directory):
    """scheduler_config.json beside config.json, or in the pipeline's scheduler/ (init_from
    a pipeline, or its unet/), with the scheduler's defaults filled in."""
    candidates = [os.path.join(directory, SCHEDULER_CONFIG),
                  os.path.join(init_from, 'scheduler', SCHEDULER_CONFIG)]
    if os.path.basename(os.path.normpath(directory)) == 'unet':
        candidates.append(os.path.join(os.path.dirname(os.path.normpath(directory)),
                                       'scheduler', SCHEDULER_CONFIG))
    for path in candidates:
        if files.exists(path):
            return path, {**SCHEDULER_DEFAULTS, **files.read_json(path, remedy=REMEDY)}
    raise _error(init_from, f'no {SCHEDULER_CONFIG} (nor scheduler/{SCHEDULER_CONFIG}): the '
                 'schedule the model was trained with is unknown; write one with '
                 'diffusers.DDPMScheduler(...).save_pretrained(DIR)')


def check_schedule(scheduler, diffusion, where=SCHEDULER_CONFIG):
    """ConfigError unless the scheduler config's forward process (beta_schedule,
    num_train_timesteps, beta_start, beta_end; prediction of eps) is config.diffusion's."""
    for key in ('trained_betas', 'rescale_betas_zero_snr', 'prediction_type'):
        if scheduler[key] != SCHEDULER_DEFAULTS[key]:
            raise ConfigError(f'{where}: {key}={scheduler[key]!r}; diffgen has '
                              f'{SCHEDULER_DEFAULTS[key]!r} only')
    name = BETA_SCHEDULES.get(scheduler['beta_schedule'])
    if name is None:
        raise ConfigError(f'{where}: beta_schedule={scheduler["beta_schedule"]!r}; diffgen has '
                          f'{sorted(BETA_SCHEDULES)} only')
    pairs = [('beta_schedule', name, diffusion.schedule, 'schedule'),
             ('num_train_timesteps', scheduler['num_train_timesteps'],
              diffusion.num_timesteps, 'num_timesteps')]
    if name == 'linear':  # the cosine schedule fixes its own range
        pairs += [('beta_start', scheduler['beta_start'], diffusion.beta_start, 'beta_start'),
                  ('beta_end', scheduler['beta_end'], diffusion.beta_end, 'beta_end')]
    for key, theirs, ours, our_key in pairs:
        same = (math.isclose(theirs, ours, rel_tol=1e-6) if isinstance(ours, float)
                else theirs == ours)
        if not same:
            raise ConfigError(f'{where}: {key}={scheduler[key]!r} but diffusion.{our_key}='
                              f'{ours!r}: the model was trained with another schedule (set '
                              f'--config.diffusion.{our_key}={theirs!r})')


def configure(config):
    """Sets config.model's UNet keys from model.init_from's config.json and checks its
    schedule against config.diffusion (ConfigError naming the file and key otherwise)."""
    init_from = config.model.init_from
    directory, unet = read_unet_config(init_from)
    for key, value in unet_options(unet, os.path.join(directory, CONFIG)).items():
        config.model[key] = value
    path, scheduler = scheduler_config(init_from, directory)
    check_schedule(scheduler, config.diffusion, path)


def name_map(model, image_side):
    """{Flax module path (tuple): (diffusers module name, kind)} of UNet `model` on images of
    side image_side, in UNet.__call__'s order (Flax numbers a module's children of one type
    in the order it creates them); kind says how the weights convert (CONVERSIONS)."""
    names, counts = {}, collections.Counter()

    def child(flax_type):
        counts[flax_type] += 1
        return f'{flax_type}_{counts[flax_type] - 1}'

    def layer(flax_type, torch_name, kind):
        names[(child(flax_type),)] = (torch_name, kind)

    def res_block(torch_name):
        path = child('ResBlock')
        for sub, (kind, flax_name) in RES_BLOCK.items():
            names[(path, flax_name)] = (f'{torch_name}.{sub}', kind)

    def attn_block(torch_name):
        path = child('AttnBlock')
        names[(path, 'GroupNorm_0')] = (f'{torch_name}.group_norm', 'norm')
        for sub, flax_name in ATTENTION.items():
            names[(path, 'SelfAttention_0', flax_name)] = (f'{torch_name}.{sub}', flax_name)

    layer('Dense', 'time_embedding.linear_1', 'linear')
    layer('Dense', 'time_embedding.linear_2', 'linear')
    layer('Conv', 'conv_in', 'conv')
    levels = len(model.ch_mult)
    for level in range(levels):
        for j in range(model.num_res_blocks):
            res_block(f'down_blocks.{level}.resnets.{j}')
            if image_side // 2 ** level in model.attn_resolutions:
                attn_block(f'down_blocks.{level}.attentions.{j}')
        if level != levels - 1:
            layer('Conv', f'down_blocks.{level}.downsamplers.0.conv', 'conv')
    res_block('mid_block.resnets.0')
    attn_block('mid_block.attentions.0')
    res_block('mid_block.resnets.1')
    for k, level in enumerate(reversed(range(levels))):
        for j in range(model.num_res_blocks + 1):
            res_block(f'up_blocks.{k}.resnets.{j}')
            if image_side // 2 ** level in model.attn_resolutions:
                attn_block(f'up_blocks.{k}.attentions.{j}')
        if level != 0:
            layer('Conv', f'up_blocks.{k}.upsamplers.0.conv', 'conv')
    layer('GroupNorm', 'conv_norm_out', 'norm')
    layer('Conv', 'conv_out', 'conv')
    return names


# ResBlock's submodules: diffusers name -> (kind, Flax name). The shortcut exists where the
# block changes the channel count.
RES_BLOCK = {'norm1': ('norm', 'GroupNorm_0'), 'conv1': ('conv', 'Conv_0'),
             'time_emb_proj': ('linear', 'Dense_0'), 'norm2': ('norm', 'GroupNorm_1'),
             'conv2': ('conv', 'Conv_1'), 'conv_shortcut': ('shortcut', 'Dense_1')}
# The attention projections: diffusers name -> Flax name (= kind) in nn.SelfAttention.
ATTENTION = {'to_q': 'query', 'to_k': 'key', 'to_v': 'value', 'to_out.0': 'out'}


# kind -> (torch weight, torch bias, the Flax parameters' shapes) -> {Flax name: array}; the
# shapes fix the attention heads.
CONVERSIONS = {
    'norm': lambda w, b, shapes: {'scale': w, 'bias': b},
    'conv': lambda w, b, shapes: {'kernel': w.transpose(2, 3, 1, 0), 'bias': b},
    'linear': lambda w, b, shapes: {'kernel': w.T, 'bias': b},
    'shortcut': lambda w, b, shapes: {'kernel': w[:, :, 0, 0].T, 'bias': b},
    **{kind: lambda w, b, shapes: {'kernel': w.T.reshape(shapes['kernel']),
                                   'bias': b.reshape(shapes['bias'])}
       for kind in ('query', 'key', 'value')},
    'out': lambda w, b, shapes: {'kernel': w.T.reshape(shapes['kernel']), 'bias': b},
}


def read_weights(init_from, directory):
    """{diffusers parameter name: float32 array} of the model directory's weights file."""
    for name in WEIGHTS:
        path = os.path.join(directory, name)
        if files.exists(path):
            break
    else:
        raise _error(init_from, f'holds neither {WEIGHTS[0]} nor {WEIGHTS[1]}')
    with files.open_file(path, 'rb') as f:
        data = f.read()
    try:
        if path.endswith('.safetensors'):
            from safetensors.numpy import load  # optional (the import extra); no PyTorch
            weights = load(data)
        else:
            import torch  # optional (the import extra): .bin is a pickled torch state dict
            state = torch.load(io.BytesIO(data), map_location='cpu', weights_only=True)
            weights = {k: v.float().numpy() for k, v in state.items()}
    except ImportError as e:
        raise _error(init_from, f'reading {name} needs {e.name}: pip install -e \'.[import]\'')
    except Exception as e:  # noqa: BLE001 -- a damaged or foreign file, said in one line
        raise _error(init_from, f'cannot read {name}: {type(e).__name__}: {e}') from e
    renamed = {}
    for key, value in weights.items():
        module, _, param = key.rpartition('.')
        prefix, _, last = module.rpartition('.')
        if last in OLD_ATTENTION_NAMES and '.attentions.' in f'.{module}':
            key = f'{prefix}.{OLD_ATTENTION_NAMES[last]}.{param}'
        renamed[key] = np.asarray(value, np.float32)
    return path, renamed


def load_params(init_from, model, template, image_shape):
    """The parameters of `model` (a diffgen UNet configured by configure) from
    model.init_from's weights, as {'params': ...} with the structure and shapes of
    `template` (its freshly initialised parameters) as NumPy float32 arrays. ConfigError
    naming the file and weight for a missing, surplus or misshapen weight, and if the
    model was built for other images than image_shape (H, W, C)."""
    directory, unet = read_unet_config(init_from)
    side, channels = image_size(unet), unet['in_channels']
    if tuple(image_shape) != (side, side, channels):
        raise _error(init_from, f'the network was built for {channels}-channel {side}x{side} '
                     f'images; the data are {image_shape[2]}-channel '
                     f'{image_shape[0]}x{image_shape[1]}')
    path, weights = read_weights(init_from, directory)
    params = {}
    for flax_path, (torch_name, kind) in name_map(model, side).items():
        node = template['params']
        for part in flax_path:
            node = node.get(part, {})
        if not node and kind == 'shortcut':
            continue  # no shortcut in this block: its weight, if any, is surplus
        shapes = {k: tuple(node[k].shape) for k in sorted(node)}
        missing = [f'{torch_name}.{p}' for p in ('weight', 'bias')
                   if f'{torch_name}.{p}' not in weights]
        if missing:
            raise _error(init_from, f'{os.path.basename(path)} has no weight {missing[0]!r}, '
                         f'which the network of {CONFIG} needs')
        weight, bias = weights.pop(f'{torch_name}.weight'), weights.pop(f'{torch_name}.bias')
        try:
            converted = CONVERSIONS[kind](weight, bias, shapes)
        except ValueError:  # a reshape of the attention weights: their sizes differ
            converted = {}
        if sorted(converted) != sorted(shapes) or any(
                converted[name].shape != shapes[name] for name in shapes):
            raise _error(init_from, f'weight {torch_name!r} has shape {weight.shape} (bias '
                         f'{bias.shape}); the network of {CONFIG} needs {shapes}')
        target = params
        for part in flax_path:
            target = target.setdefault(part, {})
        target.update(converted)
    if weights:
        surplus = sorted(weights)
        raise _error(init_from, f'{os.path.basename(path)} holds weights the network of '
                     f'{CONFIG} does not use ({len(surplus)}, e.g. {surplus[0]!r})')
    return {'params': params}
