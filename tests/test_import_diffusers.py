"""Published diffusers UNet2DModel checkpoints as diffgen networks (model.init_from,
diffgen/networks/diffusers_import.py): eps parity with PyTorch on the exact configuration of
google/ddpm-cifar10-32, on the ddpm-church-256 layout at reduced width and on diffusers'
defaults; diffusers' timestep 0 is diffgen's t = 1; safetensors read without PyTorch; a
UNet2DModel trained in PyTorch on the digits, analysed (E2 = PyTorch's DDIM from the same x_T;
E5-E7 skipped), sampled and fine-tuned; one-line errors, exit 2 from diffgen.main. Needs the
import extra (pip install -e '.[import]'): skipped without PyTorch and diffusers."""
import json
import os
import shutil
import sys
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

torch = pytest.importorskip('torch')
diffusers = pytest.importorskip('diffusers')
safetensors_numpy = pytest.importorskip('safetensors.numpy')

from configs import cifar10, ddpm_cifar10_import, default  # noqa: E402
from diffgen import data, files, modes  # noqa: E402
from diffgen.analysis.context import make_context  # noqa: E402
from diffgen.analysis.experiment import EXPERIMENTS  # noqa: E402
from diffgen.diffusion.samplers import step_pairs  # noqa: E402
from diffgen.diffusion.schedules import get_schedule  # noqa: E402
from diffgen.errors import ConfigError  # noqa: E402
from diffgen.networks import check_config, diffusers_import, get_network  # noqa: E402
from diffgen.training.loop import build, restore_trained, train_and_evaluate  # noqa: E402
from diffgen.validation import validate  # noqa: E402
from tests.tiny import override_flags, run_main, tiny_digits_config  # noqa: E402

# google/ddpm-cifar10-32's config.json (the DDPM release's CIFAR-10 network, 35.7 M parameters)
DDPM_CIFAR10_32 = dict(
    sample_size=32, in_channels=3, out_channels=3, block_out_channels=(128, 256, 256, 256),
    layers_per_block=2, down_block_types=('DownBlock2D', 'AttnDownBlock2D', 'DownBlock2D',
                                          'DownBlock2D'),
    up_block_types=('UpBlock2D', 'UpBlock2D', 'AttnUpBlock2D', 'UpBlock2D'),
    attention_head_dim=None, downsample_padding=0, flip_sin_to_cos=False, freq_shift=1,
    norm_eps=1e-6, norm_num_groups=32, mid_block_scale_factor=1, act_fn='silu',
    center_input_sample=False, time_embedding_type='positional')
DDPM_CIFAR10_32_PARAMETERS = 35_746_307
# google/ddpm-church-256's layout (six levels, attention at 16x16 of 256) at a quarter of its
# width, on 64x64 images (attention at 4x4)
DDPM_CHURCH_LAYOUT_64 = dict(
    DDPM_CIFAR10_32, sample_size=64, block_out_channels=(32, 32, 64, 64, 128, 128),
    down_block_types=('DownBlock2D',) * 4 + ('AttnDownBlock2D', 'DownBlock2D'),
    up_block_types=('UpBlock2D', 'AttnUpBlock2D') + ('UpBlock2D',) * 4)
# diffusers' own defaults (what its training scripts save): [cos, sin] embedding without
# frequency shift, symmetric down-sampling padding, 8 channels per attention head
DIFFUSERS_DEFAULTS_16 = dict(
    sample_size=16, in_channels=3, out_channels=3, block_out_channels=(32, 64),
    layers_per_block=1, down_block_types=('AttnDownBlock2D', 'DownBlock2D'),
    up_block_types=('UpBlock2D', 'AttnUpBlock2D'), norm_num_groups=8)
# the digits model trained in PyTorch below (diffusers' defaults, one attention level)
DIGITS_UNET = dict(
    sample_size=8, in_channels=1, out_channels=1, block_out_channels=(16, 32),
    layers_per_block=1, down_block_types=('DownBlock2D', 'AttnDownBlock2D'),
    up_block_types=('AttnUpBlock2D', 'UpBlock2D'), norm_num_groups=8, attention_head_dim=16)
TIMES = (1, 10, 500, 1000)   # diffgen's t; PyTorch's network is called with t - 1
TOLERANCE = 1e-4             # max |eps_diffgen - eps_torch|, float32


def save_model(directory, unet_config):
    """A UNet2DModel with random (PyTorch-initialised, seed 0) weights and the default
    DDPMScheduler (T = 1000, beta linear from 1e-4 to 0.02), saved."""
    torch.manual_seed(0)
    model = diffusers.UNet2DModel(**unet_config).eval()
    model.save_pretrained(directory)
    diffusers.DDPMScheduler().save_pretrained(directory)
    return model


def imported(directory, image_shape):
    """(diffgen network, its parameters) of the model directory, through config validation's
    configure and the importer."""
    config = default.get_config()
    config.model.init_from = str(directory)
    check_config(config)
    model = get_network(config.model)
    template = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                              jnp.zeros((1,) + image_shape), jnp.ones((1,), jnp.int32))
    return model, diffusers_import.load_params(str(directory), model, template, image_shape)


def torch_eps(model, x, t):
    """PyTorch's eps for NHWC x and diffusers timesteps t (NumPy), as NHWC NumPy."""
    with torch.no_grad():
        out = model(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))),
                    torch.from_numpy(np.asarray(t, np.int64))).sample
    return out.numpy().transpose(0, 2, 3, 1)


@pytest.mark.parametrize('unet_config', [DDPM_CIFAR10_32, DDPM_CHURCH_LAYOUT_64,
                                         DIFFUSERS_DEFAULTS_16],
                         ids=['ddpm-cifar10-32', 'ddpm-church-256-layout-64', 'diffusers-defaults'])
def test_eps_matches_pytorch(unet_config, tmp_path):
    theirs = save_model(tmp_path, unet_config)
    side, channels = unet_config['sample_size'], unet_config['in_channels']
    model, params = imported(tmp_path, (side, side, channels))
    count = sum(p.numel() for p in theirs.parameters())
    assert sum(p.size for p in jax.tree.leaves(params)) == count
    if unet_config is DDPM_CIFAR10_32:
        assert count == DDPM_CIFAR10_32_PARAMETERS
        # configs/cifar10.py's network with the release's time embedding (t - 1, frequency
        # shift 1), GroupNorm epsilon and attention: what configs/ddpm_cifar10_import.py runs
        m = validate(ddpm_cifar10_import.get_config(str(tmp_path))).model
        ours_cifar10 = cifar10.get_config().model
        for key in ('ch', 'ch_mult', 'num_res_blocks', 'attn_resolutions', 'num_groups'):
            assert m[key] == ours_cifar10[key]
        assert (m.time_offset, m.time_freq_shift, m.time_flip, m.downsample_pad,
                m.attn_head_dim, m.norm_eps) == (-1, 1, False, 'same', 0, 1e-6)
    x = np.random.default_rng(0).standard_normal((len(TIMES), side, side, channels),
                                                 dtype=np.float32)
    t = np.array(TIMES)
    ours = np.asarray(jax.jit(model.apply)(params, x, t))
    expected = torch_eps(theirs, x, t - 1)
    assert np.abs(expected).max() > 0.1   # random weights: eps is not near zero
    assert np.abs(ours - expected).max() <= TOLERANCE
    # the index shift matters: PyTorch's network at diffgen's t is another function
    assert np.abs(ours - torch_eps(theirs, x, t)).max() > 10 * TOLERANCE


def test_bin_weights_old_attention_names_and_pipeline_layout(tmp_path):
    """A saved pipeline (unet/, scheduler/) whose weights are a pickled .bin with the DDPM
    conversions' attention names (query, key, value, proj_attn) imports to the same eps."""
    theirs = save_model(tmp_path / 'unet', DIFFUSERS_DEFAULTS_16)
    os.remove(tmp_path / 'unet' / 'diffusion_pytorch_model.safetensors')
    os.makedirs(tmp_path / 'scheduler')
    shutil.move(tmp_path / 'unet' / 'scheduler_config.json', tmp_path / 'scheduler')
    old = {'to_q': 'query', 'to_k': 'key', 'to_v': 'value', 'to_out.0': 'proj_attn'}
    state = {}
    for key, value in theirs.state_dict().items():
        for new, previous in old.items():
            key = key.replace(f'.{new}.', f'.{previous}.')
        state[key] = value
    assert 'mid_block.attentions.0.proj_attn.weight' in state
    torch.save(state, tmp_path / 'unet' / 'diffusion_pytorch_model.bin')
    model, params = imported(tmp_path, (16, 16, 3))
    x = np.random.default_rng(1).standard_normal((len(TIMES), 16, 16, 3), dtype=np.float32)
    t = np.array(TIMES)
    expected = torch_eps(theirs, x, t - 1)
    assert np.abs(np.asarray(jax.jit(model.apply)(params, x, t)) - expected).max() <= TOLERANCE


def write_json(path, **changes):
    files.write_text(path, json.dumps({**json.loads(files.read_text(path)), **changes}))


@pytest.fixture(scope='module')
def data_dir(digits_data_dir):
    return digits_data_dir


@pytest.fixture(scope='module')
def digits_model(data_dir, tmp_path_factory):
    """(directory, PyTorch model, its scheduler): a UNet2DModel trained 300 Adam steps
    (batch 32) in PyTorch on the digits training set diffgen loads, saved with
    save_pretrained. One PyTorch thread: on two busy cores, more are several times slower."""
    directory = tmp_path_factory.mktemp('digits_unet')
    images = data.load(tiny_digits_config(data_dir)).train_images   # uint8 (N, 8, 8, 1)
    x = torch.from_numpy(images.transpose(0, 3, 1, 2).astype(np.float32) / 127.5 - 1.0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = diffusers.UNet2DModel(**DIGITS_UNET)
    scheduler = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4,
                                        beta_end=0.02, beta_schedule='linear')
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(300):
        x0 = x[torch.randint(len(x), (32,))]
        noise = torch.randn_like(x0)
        t = torch.randint(0, 1000, (32,))
        loss = torch.nn.functional.mse_loss(
            model(scheduler.add_noise(x0, noise, t), t).sample, noise)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    torch.set_num_threads(threads)
    assert np.mean(losses[-50:]) < 0.2   # trained: the loss of eps_hat = 0 is 1
    model.eval().save_pretrained(directory)
    scheduler.save_pretrained(directory)
    return directory, model, scheduler


def digits_config(data_dir, directory, **overrides):
    """The tiny digits config importing the model directory, validated (the UNet keys are
    set from its config.json)."""
    return validate(tiny_digits_config(data_dir, **{
        'model.init_from': str(directory), 'analysis.num_samples': 16,
        'analysis.sampler_steps': 10, 'analysis.quality.classifier_steps': 20,
        **overrides}))


def torch_ddim(model, scheduler, x_T, num_steps):
    """Deterministic DDIM in PyTorch on diffgen's step grid with the scheduler's own
    alphas_cumprod (diffgen's alphas_bar_t = alphas_cumprod[t - 1], alphas_bar_0 = 1):
        x0 = (x - sqrt(1 - ab_t) eps(x, t - 1)) / sqrt(ab_t),
        x <- sqrt(ab_t') x0 + sqrt(1 - ab_t') eps."""
    ab = torch.cat([torch.ones(1, dtype=torch.float64),
                    torch.cumprod(1.0 - scheduler.betas.double(), 0)]).float()
    x = torch.from_numpy(np.ascontiguousarray(x_T.transpose(0, 3, 1, 2)))
    with torch.no_grad():
        for t, t_next in np.asarray(step_pairs(scheduler.config.num_train_timesteps, num_steps)):
            eps = model(x, torch.full((len(x),), int(t) - 1)).sample
            x0 = (x - (1 - ab[t]).sqrt() * eps) / ab[t].sqrt()
            x = ab[t_next].sqrt() * x0 + (1 - ab[t_next]).sqrt() * eps
    return x.numpy().transpose(0, 2, 3, 1)


@pytest.mark.slow
def test_analyze_imported_model(digits_model, data_dir, tmp_path, caplog):
    """--mode=analyze on the imported model: E2's DDIM samples are PyTorch's DDIM samples of
    the same network from the same x_T; E5 (it trains) is skipped with a line saying why."""
    directory, theirs, scheduler = digits_model
    config = digits_config(data_dir, directory, **{'analysis.experiments': ('e2', 'e5')})
    assert (config.model.ch, config.model.attn_head_dim, config.model.time_flip) == (16, 16, True)
    caplog.set_level('INFO')   # 'e5 skipped: ...' is an absl INFO message
    sections = {s.key: s for s in modes.analyze(config, str(tmp_path))}
    assert "e5 skipped: e5 compares the run's model with models it trains" in caplog.text
    assert 'imported (model.init_from)' in sections['e5'].numbers['skipped']
    report = json.loads(files.read_text(tmp_path / 'report' / 'report.json'))
    assert report['e5']['skipped'] and 'memorisation_ratio' in report['e2']['ddim']
    assert (f'imported from {directory}, fine-tuned 0 steps'
            in files.read_text(tmp_path / 'report' / 'report.md'))

    x_T = make_context(config, str(tmp_path), restore_trained(config, str(tmp_path))).x_T
    samples = sections['e2'].numbers['_samples']['ddim']
    expected = torch_ddim(theirs, scheduler, x_T, config.analysis.sampler_steps)
    scale = np.abs(expected).max()   # about 20: the briefly trained model leaves [-1, 1]
    assert scale > 0.5
    assert np.abs(samples - expected).max() <= 2e-5 * scale   # float32 round-off (9e-5 here)


@pytest.mark.slow
def test_sample_and_fine_tune_imported_model(digits_model, data_dir, tmp_path):
    """--mode=sample draws from the imported weights (step 0); --mode=train starts from them
    (raw and EMA), and the run then restores its own checkpoint."""
    directory = digits_model[0]
    config = digits_config(data_dir, directory, **{'optim.learning_rate': 1e-7})
    dataset = data.load(config)
    run = build(config, dataset)
    weights = diffusers_import.load_params(str(directory), run.model, run.state.params,
                                           dataset.image_shape)
    for tree in (run.state.params, run.state.ema_params):
        assert all(np.array_equal(a, b) for a, b in
                   zip(jax.tree.leaves(tree), jax.tree.leaves(weights)))

    samples = modes.sample(config, str(tmp_path / 'sampled'))
    stored = files.load_npz(str(tmp_path / 'sampled' / 'samples' / 'samples.npz'))
    assert int(stored['step']) == 0 and np.array_equal(stored['samples'], samples)

    state = train_and_evaluate(config, str(tmp_path / 'tuned'))
    moved = [np.abs(np.asarray(a) - b).max() for a, b in
             zip(jax.tree.leaves(state.params), jax.tree.leaves(weights))]
    assert 0 < max(moved) < 1e-4   # a few steps at a tiny learning rate from the import
    assert int(restore_trained(config, str(tmp_path / 'tuned')).state.step) == 8


@pytest.fixture(scope='module')
def untrained_digits_model(tmp_path_factory):
    """A digits-shaped UNet2DModel with random weights, saved."""
    directory = tmp_path_factory.mktemp('untrained_digits_unet')
    save_model(directory, DIGITS_UNET)
    return directory


def copy_model(source, directory, config=None, scheduler=None, edit_weights=None):
    """A copy of the model directory source with changes to its config.json and
    scheduler_config.json ({key: value}) and its weights (edit_weights({name: array}))."""
    shutil.copytree(source, directory)
    if config:
        write_json(directory / 'config.json', **config)
    if scheduler:
        write_json(directory / 'scheduler_config.json', **scheduler)
    if edit_weights:
        path = str(directory / 'diffusion_pytorch_model.safetensors')
        weights = safetensors_numpy.load_file(path)
        edit_weights(weights)
        safetensors_numpy.save_file(weights, path)
    return directory


ATTENTION_KEY = 'mid_block.attentions.0.to_k.weight'   # a weight the digits model needs


def test_config_errors_name_the_problem(untrained_digits_model, data_dir, tmp_path):
    source = untrained_digits_model
    with pytest.raises(ConfigError, match='no such directory'):
        digits_config(data_dir, tmp_path / 'absent')
    with pytest.raises(ConfigError, match='holds no config.json'):
        digits_config(data_dir, tmp_path)

    unsupported = copy_model(source, tmp_path / 'unsupported',
                             config={'resnet_time_scale_shift': 'scale_shift'})
    with pytest.raises(ConfigError, match="resnet_time_scale_shift='scale_shift'.*cannot express"):
        digits_config(data_dir, unsupported)
    write_json(unsupported / 'config.json', resnet_time_scale_shift='default',
               up_block_types=['UpBlock2D', 'UpBlock2D'])
    with pytest.raises(ConfigError, match='attention in down blocks'):
        digits_config(data_dir, unsupported)

    other_schedule = copy_model(source, tmp_path / 'other_schedule',
                                scheduler={'beta_end': 0.012})
    with pytest.raises(ConfigError, match=r'beta_end=0.012 but diffusion.beta_end=0.02'):
        digits_config(data_dir, other_schedule)
    assert digits_config(data_dir, other_schedule, **{'diffusion.beta_end': 0.012})
    write_json(other_schedule / 'scheduler_config.json', beta_end=0.02,
               prediction_type='v_prediction')
    with pytest.raises(ConfigError, match="prediction_type='v_prediction': diffgen's networks "
                                          r"predict eps \('epsilon'\) only"):
        digits_config(data_dir, other_schedule)

    incomplete = copy_model(source, tmp_path / 'incomplete',
                            edit_weights=lambda w: w.pop(ATTENTION_KEY))
    with pytest.raises(ConfigError, match=rf"safetensors has no weight '{ATTENTION_KEY}', which "
                                          "the network of config.json needs"):
        imported(incomplete, (8, 8, 1))
    misshapen = copy_model(source, tmp_path / 'misshapen', edit_weights=lambda w: w.update(
        {ATTENTION_KEY: w[ATTENTION_KEY][:, :8].copy()}))
    with pytest.raises(ConfigError, match=r"weight 'mid_block.attentions.0.to_k' has shape "
                                          r"\(32, 8\) .* needs \{'bias': \(2, 16\), "
                                          r"'kernel': \(32, 2, 16\)\}"):
        imported(misshapen, (8, 8, 1))
    surplus = copy_model(source, tmp_path / 'surplus', edit_weights=lambda w: w.update(
        {'extra.weight': w[ATTENTION_KEY]}))
    with pytest.raises(ConfigError, match=r"does not use \(1, e.g. 'extra.weight'\)"):
        imported(surplus, (8, 8, 1))

    cifar_shaped = copy_model(source, tmp_path / 'cifar_shaped',
                              config={'sample_size': 32, 'in_channels': 3, 'out_channels': 3})
    with pytest.raises(ConfigError, match='built for 3-channel 32x32 images; the data are '
                                          '1-channel 8x8'):
        imported(cifar_shaped, (8, 8, 1))


@pytest.mark.parametrize('problem', [
    'wrong directory',
    pytest.param('missing weight', marks=pytest.mark.slow),
    pytest.param('architecture', marks=pytest.mark.slow),
    pytest.param('schedule', marks=pytest.mark.slow)])
def test_problem_is_one_line_exit_2(problem, untrained_digits_model, data_dir, tmp_path):
    """python -m diffgen.main --mode=analyze with a faulty model.init_from: one line naming
    the problem, exit status 2 (one subprocess each; the missing weight is found when the
    weights are loaded, the others by config validation)."""
    directory, source = tmp_path / 'model', untrained_digits_model
    if problem == 'wrong directory':
        expected = f'model.init_from={directory}: no such directory'
    elif problem == 'missing weight':
        copy_model(source, directory, edit_weights=lambda w: w.pop(ATTENTION_KEY))
        expected = (f'model.init_from={directory}: diffusion_pytorch_model.safetensors has no '
                    f'weight {ATTENTION_KEY!r}, which the network of config.json needs')
    elif problem == 'architecture':
        copy_model(source, directory, config={'resnet_time_scale_shift': 'scale_shift'})
        expected = (f"{directory / 'config.json'}: resnet_time_scale_shift='scale_shift' "
                    "(diffgen has 'default' only); diffgen's UNet cannot express this network")
    else:
        copy_model(source, directory, scheduler={'beta_end': 0.012})
        expected = (f"{directory / 'scheduler_config.json'}: beta_end=0.012 but "
                    'diffusion.beta_end=0.02: the model was trained with another schedule '
                    '(set --config.diffusion.beta_end=0.012)')
    result = run_main('--config=configs/digits.py', f'--workdir={tmp_path / "work"}',
                      '--mode=analyze', f'--config.model.init_from={directory}',
                      *override_flags(data_dir))
    assert result.returncode == 2, result.stderr
    assert 'Traceback' not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == f'diffgen: error: {expected}'


def test_safetensors_are_read_without_pytorch(untrained_digits_model, tmp_path, monkeypatch):
    """With `import torch` failing, safetensors weights import (the same arrays, in Flax
    layouts); .bin weights are one line saying what to install."""
    theirs = diffusers.UNet2DModel.from_pretrained(untrained_digits_model)
    state = {k: v.numpy() for k, v in theirs.state_dict().items()}
    pickled = copy_model(untrained_digits_model, tmp_path / 'pickled')
    torch.save(theirs.state_dict(), pickled / 'diffusion_pytorch_model.bin')
    os.remove(pickled / 'diffusion_pytorch_model.safetensors')
    monkeypatch.setitem(sys.modules, 'torch', None)   # `import torch` raises ImportError

    _, params = imported(untrained_digits_model, (8, 8, 1))
    p = params['params']
    assert np.array_equal(p['Conv_0']['kernel'], state['conv_in.weight'].transpose(2, 3, 1, 0))
    assert np.array_equal(p['Dense_0']['kernel'], state['time_embedding.linear_1.weight'].T)
    with pytest.raises(ConfigError, match=r"reading diffusion_pytorch_model.bin needs torch: "
                                          r"pip install -e '.\[import\]'"):
        imported(pickled, (8, 8, 1))


def test_diffusers_timestep_0_is_diffgen_t_1():
    """diffusers' alphas_cumprod[t_d] (t_d = 0..T-1) is diffgen's alphas_bar at t = t_d + 1
    (alphas_bar_0 = 1): the importer's time_offset = -1."""
    ours = np.asarray(get_schedule(default.get_config()).alphas_bar, np.float64)
    theirs = diffusers.DDPMScheduler().alphas_cumprod.double().numpy()
    assert diffusers_import.TIME_OFFSET == -1 and ours[0] == 1.0
    np.testing.assert_allclose(ours[1:], theirs, rtol=1e-4)   # float32 cumprod in diffusers
    assert np.abs(ours[:-1] / theirs - 1).max() > 1e-3         # unshifted, they differ


@pytest.mark.parametrize('key', ['e5', 'e6', 'e7'])
def test_experiments_that_train_are_skipped_for_an_imported_model(key, caplog):
    """E5-E7 train models of their own from scratch: on an imported model each is a report
    section saying why it was skipped, with nothing measured."""
    ctx = types.SimpleNamespace(config=ml_collections.ConfigDict(
        {'model': {'init_from': 'models/ddpm-cifar10-32'}}))
    caplog.set_level('INFO')
    section = EXPERIMENTS[key].run(ctx)
    reason = (f"{key} compares the run's model with models it trains from scratch, but this "
              'model is imported (model.init_from), not trained by diffgen')
    assert caplog.messages == [f'{key} skipped: {reason}']   # an absl INFO message
    assert section.key == key and section.numbers == {'skipped': reason}
