"""Published diffusers UNet2DModel checkpoints (google/ddpm-cifar10-32 and the other DDPM
models, and those trained with diffusers since) as diffgen's UNet: config.model.init_from.

init_from is a diffusers model directory (config.json + diffusion_pytorch_model.safetensors,
or .bin, + scheduler_config.json) or a saved pipeline (unet/ and scheduler/ inside it).

  configure(config)    sets config.model's UNet keys from config.json, so that
                       diffgen.networks.unet.UNet is the published network; checks that the
                       scheduler_config.json's forward process is config.diffusion's
                       (diffusers_schedulers.check_schedule). Run by config validation
                       (diffgen.networks.check_config). Every malformed value of either
                       file is one line naming the file and the key (diffusers_values).
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
import os

import numpy as np

from diffgen import files
from diffgen.errors import ConfigError
from diffgen.networks import diffusers_schedulers
from diffgen.networks import diffusers_values as values

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
    path = os.path.join(directory, CONFIG)
    raw = files.read_json(path, remedy=REMEDY)
    if '_class_name' not in raw:
        raise ConfigError(f'{path}: no _class_name: not a saved diffusers model')
    if raw['_class_name'] != 'UNet2DModel':
        values.fail(path, '_class_name', raw['_class_name'], 'diffgen imports UNet2DModel only')
    unknown = sorted(k for k in raw if not k.startswith('_') and k not in UNET_DEFAULTS)
    if unknown:
        raise ConfigError(f'{path}: keys diffgen cannot interpret: {unknown} (not '
                          'UNet2DModel keys)')
    return directory, {**UNET_DEFAULTS, **raw}


def unet_options(unet, where='config.json'):
    """The config.model values of diffgen's UNet that compute the UNet2DModel `unet` (its
    config.json, defaults filled in); ConfigError (no prefix) naming the key for a malformed
    value (diffusers_values) and for what diffgen's UNet cannot express.

    The constraints are the network's own, each where the network uses it: norm_num_groups
    divides every level's channels (every level has GroupNorms); attention_head_dim divides
    the channels of the levels with attention and of the middle block (which always has it),
    as diffusers' heads = channels // attention_head_dim; freq_shift < block_out_channels[0]
    // 2, the half-width of the sinusoidal time embedding whose frequencies are
    exp(-log(10000) k / (half - freq_shift))."""
    def fail(message):
        raise ConfigError(f'{where}: {message}; diffgen\'s UNet cannot express this network')
    for key, value in FIXED.items():
        if unet[key] != value:
            fail(f'{key}={values.show(unet[key])} (diffgen has {value!r} only)')
    channels = values.integers(where, 'block_out_channels', unet['block_out_channels'], 1)
    groups = values.integer(where, 'norm_num_groups', unet['norm_num_groups'], 1)
    layers = values.integer(where, 'layers_per_block', unet['layers_per_block'], 1)
    eps = values.number(where, 'norm_eps', unet['norm_eps'], positive=True)
    flip = values.boolean(where, 'flip_sin_to_cos', unet['flip_sin_to_cos'])
    in_channels = values.integer(where, 'in_channels', unet['in_channels'], 1)
    out_channels = values.integer(where, 'out_channels', unet['out_channels'], 1)
    down = list(values.strings(where, 'down_block_types', unet['down_block_types']))
    up = list(values.strings(where, 'up_block_types', unet['up_block_types']))
    ch = channels[0]
    if len(down) != len(channels) or len(up) != len(channels):
        fail(f'{len(channels)} block_out_channels but {len(down)} down and {len(up)} up blocks')
    for key, types, kinds in (('down_block_types', down, DOWN_BLOCKS),
                              ('up_block_types', up, UP_BLOCKS)):
        for kind in types:
            if kind not in kinds:
                fail(f'{key} has {kind!r} (diffgen has {sorted(kinds)})')
    attention = [DOWN_BLOCKS[kind] for kind in down]
    if attention != [UP_BLOCKS[kind] for kind in reversed(up)]:
        fail(f'attention in down blocks {down} but up blocks {up} (diffgen has attention '
             'at the same resolutions on both paths)')
    if any(c % ch for c in channels):
        fail(f'block_out_channels={list(channels)} are not multiples of the first')
    if any(c % groups for c in channels):
        fail(f'norm_num_groups={groups} does not divide block_out_channels={list(channels)}')
    if unet['attn_norm_num_groups'] is not None and unet['attn_norm_num_groups'] != groups:
        fail(f'attn_norm_num_groups={values.show(unet["attn_norm_num_groups"])} differs from '
             f'norm_num_groups={groups}')
    if unet['time_embedding_dim'] is not None and unet['time_embedding_dim'] != 4 * ch:
        fail(f'time_embedding_dim={values.show(unet["time_embedding_dim"])} (diffgen has '
             f'4 * {ch})')
    pad = unet['downsample_padding']
    if not values.is_int(pad) or pad not in DOWNSAMPLE_PADS:
        fail(f'downsample_padding={values.show(pad)} (diffgen has 0 or 1)')
    if in_channels != out_channels:
        fail(f'in_channels={in_channels} != out_channels={out_channels}')
    head_dim = unet['attention_head_dim']
    if head_dim is not None:
        head_dim = values.integer(where, 'attention_head_dim', head_dim, 1)
        used = sorted({c for c, a in zip(channels, attention) if a} | {channels[-1]})
        if any(c % head_dim for c in used):
            fail(f'attention_head_dim={head_dim} does not divide the channels {used} of the '
                 'levels with attention (and of the middle block)')
    shift = unet['freq_shift']
    if isinstance(shift, float) and shift.is_integer():
        shift = int(shift)
    if not values.is_int(shift) or not 0 <= shift < ch // 2:
        values.fail(where, 'freq_shift', unet['freq_shift'],
                    f'must be an integer in [0, block_out_channels[0] // 2 = {ch // 2})')
    size = image_size(unet, where)
    if size % 2 ** (len(channels) - 1):
        values.fail(where, 'sample_size', size, f'must halve {len(channels) - 1} times (one '
                    'down-sampling per level but the last)')
    return {
        'name': 'unet', 'ch': ch, 'ch_mult': tuple(c // ch for c in channels),
        'num_res_blocks': layers,
        'attn_resolutions': tuple(size // 2 ** i for i, a in enumerate(attention) if a),
        'num_groups': groups, 'norm_eps': eps,
        'attn_head_dim': head_dim or 0, 'downsample_pad': DOWNSAMPLE_PADS[pad],
        'time_offset': TIME_OFFSET, 'time_freq_shift': shift, 'time_flip': flip,
    }


def image_size(unet, where='config.json'):
    """The side of the square images the UNet2DModel was built for (sample_size)."""
    size = unet['sample_size']
    if isinstance(size, (list, tuple)) and size and all(values.is_int(s) for s in size):
        if len(set(size)) != 1:
            raise ConfigError(f'{where}: sample_size={list(size)}; diffgen takes square images')
        size = size[0]
    if not values.is_int(size) or size < 1:
        values.fail(where, 'sample_size', size, 'diffgen needs the image side, a positive '
                    'integer (it places attention by resolution)')
    return size


def scheduler_config(init_from, directory):
    """(path, the parsed scheduler_config.json) beside config.json, or in the pipeline's
    scheduler/ (init_from a pipeline, or its unet/)."""
    candidates = [os.path.join(directory, SCHEDULER_CONFIG),
                  os.path.join(init_from, 'scheduler', SCHEDULER_CONFIG)]
    if os.path.basename(os.path.normpath(directory)) == 'unet':
        candidates.append(os.path.join(os.path.dirname(os.path.normpath(directory)),
                                       'scheduler', SCHEDULER_CONFIG))
    for path in candidates:
        if files.exists(path):
            return path, files.read_json(path, remedy=REMEDY)
    raise _error(init_from, f'no {SCHEDULER_CONFIG} (nor scheduler/{SCHEDULER_CONFIG}): the '
                 'schedule the model was trained with is unknown; write one with '
                 'diffusers.DDPMScheduler(...).save_pretrained(DIR)')


def configure(config):
    """Sets config.model's UNet keys from model.init_from's config.json and checks its
    schedule against config.diffusion (ConfigError naming the file and key otherwise)."""
    init_from = config.model.init_from
    directory, unet = read_unet_config(init_from)
    for key, value in unet_options(unet, os.path.join(directory, CONFIG)).items():
        config.model[key] = value
    path, scheduler = scheduler_config(init_from, directory)
    diffusers_schedulers.check_schedule(scheduler, config.diffusion, path)


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
    where = os.path.join(directory, CONFIG)
    side = image_size(unet, where)
    channels = values.integer(where, 'in_channels', unet['in_channels'], 1)
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
