"""What the diffusers importer (model.init_from) refuses, and how: scheduler classes and
forward-process keys that are not diffgen's discrete VP process (diffgen/networks/
diffusers_schedulers.py), malformed values in config.json and scheduler_config.json
(diffgen/networks/diffusers_values.py), the attention head size checked only where there is
attention, and a model directory whose path holds '=' or ','. Each refusal is one line naming
the file, the key and the value: in process a UserError of one line (what diffgen.main prints
as `diffgen: error: ...`, exit 2); through the CLI for a few, with the workdir untouched.
Every model directory is written by diffusers itself (save_pretrained). Needs the import
extra: skipped without PyTorch and diffusers."""
import ast
import inspect
import json
import os
import re
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

torch = pytest.importorskip('torch')
diffusers = pytest.importorskip('diffusers')

from configs import ddpm_cifar10_import, default  # noqa: E402
from diffgen.diffusion.schedules import get_schedule  # noqa: E402
from diffgen.errors import UserError  # noqa: E402
from diffgen.networks import (check_config, diffusers_import,  # noqa: E402
                              diffusers_schedulers, get_network)
from diffgen.training.state import create_train_state  # noqa: E402
from tests.tiny import run_main  # noqa: E402

# a digits-shaped UNet2DModel (8x8, one channel): two levels of 16 and 32 channels, attention
# at the second level (and in the middle block)
TINY_UNET = dict(
    sample_size=8, in_channels=1, out_channels=1, block_out_channels=(16, 32),
    layers_per_block=1, down_block_types=('DownBlock2D', 'AttnDownBlock2D'),
    up_block_types=('AttnUpBlock2D', 'UpBlock2D'), norm_num_groups=8, attention_head_dim=16)
TOLERANCE = 1e-4   # max |eps_diffgen - eps_torch|, float32 (as tests/test_import_diffusers.py)


@pytest.fixture(scope='module')
def tiny_model(tmp_path_factory):
    """(directory, PyTorch model): TINY_UNET with attention_head_dim=32 (one head at the
    32-channel level; 32 does not divide the first level's 16 channels, which have no
    attention) and random weights, saved with the default DDPMScheduler."""
    directory = tmp_path_factory.mktemp('tiny_unet')
    torch.manual_seed(0)
    model = diffusers.UNet2DModel(**{**TINY_UNET, 'attention_head_dim': 32}).eval()
    model.save_pretrained(directory)
    diffusers.DDPMScheduler().save_pretrained(directory)
    return directory, model


def model_dir(source, directory, scheduler=None, config=None, drop=(), scheduler_drop=()):
    """The two JSON files of the model directory `source` (all configuration needs) in
    `directory`: scheduler_config.json replaced by the config diffusers saves for the
    scheduler object `scheduler`, keys of config.json set ({key: value}) or dropped (drop),
    keys of scheduler_config.json dropped (scheduler_drop)."""
    os.makedirs(directory, exist_ok=True)
    unet = json.loads((source / 'config.json').read_text())
    unet.update(config or {})
    for key in drop:
        del unet[key]
    (directory / 'config.json').write_text(json.dumps(unet))
    if scheduler is not None:
        scheduler.save_pretrained(directory)
    else:
        shutil.copy(source / 'scheduler_config.json', directory)
    path = directory / 'scheduler_config.json'
    saved = json.loads(path.read_text())
    for key in scheduler_drop:
        del saved[key]
    path.write_text(json.dumps(saved))
    return directory


def edit_scheduler(directory, **changes):
    path = directory / 'scheduler_config.json'
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def configured(directory, **diffusion):
    """configs/default.py with model.init_from=directory and the diffusion overrides, through
    the model section's validation (diffusers_import.configure and the UNet's own checks)."""
    config = default.get_config()
    config.model.init_from = str(directory)
    for key, value in diffusion.items():
        config.diffusion[key] = value
    check_config(config)
    return config


def refusal(directory, **diffusion):
    """The one-line message of the UserError configured(directory) raises."""
    with pytest.raises(UserError) as caught:
        configured(directory, **diffusion)
    message = str(caught.value)
    assert '\n' not in message and message
    return message


def test_defaults_are_diffusers_own():
    """The defaults the importer fills in for a missing key are those of the installed
    diffusers' classes (inspect.signature of __init__), not guesses: the scheduler classes'
    forward-process keys and UNet2DModel's keys."""
    for name, defaults in diffusers_schedulers.DEFAULTS.items():
        parameters = inspect.signature(getattr(diffusers, name).__init__).parameters
        theirs = {k: parameters[k].default for k in diffusers_schedulers.PROCESS_KEYS
                  if k in parameters}
        assert defaults == theirs, name
    parameters = inspect.signature(diffusers.UNet2DModel.__init__).parameters
    assert diffusers_import.UNET_DEFAULTS == {k: p.default for k, p in parameters.items()
                                              if k != 'self'}


# (scheduler diffusers saves, config.diffusion overrides, the refusal's key=value)
REFUSED_SCHEDULERS = {
    'edm-euler': (lambda: diffusers.EDMEulerScheduler(), {},
                  "_class_name='EDMEulerScheduler'"),
    'score-sde-ve-T1000': (lambda: diffusers.ScoreSdeVeScheduler(num_train_timesteps=1000), {},
                           "_class_name='ScoreSdeVeScheduler'"),
    # the T = 2000 of ScoreSdeVe's default with the run's T set to match: still refused
    'score-sde-ve-T2000': (lambda: diffusers.ScoreSdeVeScheduler(), {'num_timesteps': 2000},
                           "_class_name='ScoreSdeVeScheduler'"),
    'flow-matching': (lambda: diffusers.FlowMatchEulerDiscreteScheduler(), {},
                      "_class_name='FlowMatchEulerDiscreteScheduler'"),
    'v-prediction': (lambda: diffusers.DDPMScheduler(prediction_type='v_prediction'), {},
                     "prediction_type='v_prediction'"),
    'x0-prediction': (lambda: diffusers.DDIMScheduler(prediction_type='sample'), {},
                      "prediction_type='sample'"),
    'scaled-linear': (lambda: diffusers.DDPMScheduler(beta_schedule='scaled_linear'), {},
                      "beta_schedule='scaled_linear'"),
    'trained-betas': (lambda: diffusers.DDPMScheduler(
        trained_betas=np.linspace(1e-4, 0.02, 1000).tolist()), {}, 'trained_betas=[0.0001, '),
    'zero-snr': (lambda: diffusers.DDPMScheduler(rescale_betas_zero_snr=True), {},
                 'rescale_betas_zero_snr=True'),
    'learned-variance': (lambda: diffusers.DDPMScheduler(variance_type='learned_range'), {},
                         "variance_type='learned_range'"),
    'continuous-time': (lambda: diffusers.EulerDiscreteScheduler(timestep_type='continuous'),
                        {}, "timestep_type='continuous'"),
    'flow-sigmas': (lambda: diffusers.UniPCMultistepScheduler(use_flow_sigmas=True), {},
                    'use_flow_sigmas=True'),
    'other-T': (lambda: diffusers.DDPMScheduler(num_train_timesteps=500), {},
                'num_train_timesteps=500 but diffusion.num_timesteps=1000'),
    'cosine-vs-linear': (lambda: diffusers.DDPMScheduler(beta_schedule='squaredcos_cap_v2'),
                         {}, "beta_schedule='squaredcos_cap_v2' but diffusion.schedule="
                             "'linear'"),
    # Heun's saved range is the k-diffusion one (0.00085 to 0.012), not diffgen's
    'heun-range': (lambda: diffusers.HeunDiscreteScheduler(), {},
                   'beta_start=0.00085 but diffusion.beta_start=0.0001'),
}


@pytest.mark.parametrize('case', list(REFUSED_SCHEDULERS))
def test_scheduler_that_is_not_the_runs_process_is_refused(case, tiny_model, tmp_path):
    make, diffusion, named = REFUSED_SCHEDULERS[case]
    directory = model_dir(tiny_model[0], tmp_path / 'model', scheduler=make())
    message = refusal(directory, **diffusion)
    assert message.startswith(f"{directory / 'scheduler_config.json'}: {named}"), message


HINT = re.compile(r'set --config\.diffusion\.(\w+)=(\S+?)\)')


def follow_hints(directory):
    """configured(directory), with each --config.diffusion setting a refusal suggests applied
    until it is accepted: (the accepted config or None, the messages of the refusals)."""
    diffusion, messages = {}, []
    for _ in range(len(diffusers_schedulers.COMPARED) + 1):
        try:
            return configured(directory, **diffusion), messages
        except UserError as e:
            messages.append(str(e))
            hint = HINT.search(str(e))
            if hint is None:
                return None, messages
            diffusion[hint.group(1)] = ast.literal_eval(hint.group(2))
    raise AssertionError(f'hints without end: {messages}')


@pytest.mark.parametrize('make', [
    lambda: diffusers.HeunDiscreteScheduler(),
    lambda: diffusers.DDPMScheduler(beta_schedule='squaredcos_cap_v2', num_train_timesteps=50),
    lambda: diffusers.DDIMScheduler(num_train_timesteps=200, beta_start=2e-4, beta_end=0.03),
], ids=['heun', 'ddpm-cosine-T50', 'ddim-other-range'])
def test_following_the_hints_gives_the_models_process(make, tiny_model, tmp_path):
    """A VP scheduler with another schedule: its refusals' hints, followed, end in an
    accepted run whose forward process is the model's: diffusers' alphas_cumprod of the
    saved scheduler is diffgen's alphas_bar[1:] (float32 round-off: T factors, relative
    error about T * 2**-24 < 1e-4)."""
    scheduler = make()
    directory = model_dir(tiny_model[0], tmp_path / 'model', scheduler=scheduler)
    config, messages = follow_hints(directory)
    assert config is not None and messages, messages
    ours = np.asarray(get_schedule(config).alphas_bar, np.float64)[1:]
    np.testing.assert_allclose(scheduler.alphas_cumprod.double().numpy(), ours, rtol=1e-4)


@pytest.mark.parametrize('make', [lambda: diffusers.ScoreSdeVeScheduler(),
                                  lambda: diffusers.ScoreSdeVeScheduler(num_train_timesteps=1000),
                                  lambda: diffusers.EDMEulerScheduler()],
                         ids=['score-sde-ve-T2000', 'score-sde-ve-T1000', 'edm-euler'])
def test_no_hint_accepts_a_sigma_based_scheduler(make, tiny_model, tmp_path):
    """A sigma-based or VE scheduler is refused by its class with no hint to follow, also
    with the run's T set to the scheduler's own (the T = 2000 of ScoreSdeVe's default) or the
    cosine schedule."""
    scheduler = make()
    directory = model_dir(tiny_model[0], tmp_path / 'model', scheduler=scheduler)
    for diffusion in ({}, {'num_timesteps': scheduler.config.num_train_timesteps},
                      {'schedule': 'cosine'}):
        message = refusal(directory, **diffusion)
        assert '_class_name=' in message and '--config.' not in message


def test_missing_key_takes_the_classes_default_only_where_it_is_the_runs(tiny_model, tmp_path):
    """A key scheduler_config.json lacks is what diffusers reads: that class's default.
    DDPMScheduler without num_train_timesteps, beta_start, beta_end is T = 1000 linear 1e-4
    .. 0.02, diffgen's; HeunDiscreteScheduler without beta_start is 0.00085: refused, naming
    the key and the default. Without _class_name the process is unknown: refused."""
    source = tiny_model[0]
    configured(model_dir(source, tmp_path / 'ddpm', scheduler_drop=(
        'num_train_timesteps', 'beta_start', 'beta_end', 'beta_schedule', 'prediction_type')))
    heun = model_dir(source, tmp_path / 'heun', scheduler=diffusers.HeunDiscreteScheduler(
        beta_start=1e-4, beta_end=0.02), scheduler_drop=('beta_start',))
    message = refusal(heun)
    assert message.startswith(f"{heun / 'scheduler_config.json'}: no beta_start, which "
                              'HeunDiscreteScheduler reads as its default 0.00085, but '
                              'diffusion.beta_start=0.0001'), message
    unnamed = model_dir(source, tmp_path / 'unnamed', scheduler_drop=('_class_name',))
    assert refusal(unnamed).startswith(f"{unnamed / 'scheduler_config.json'}: no _class_name")


@pytest.mark.parametrize('scheduler, diffusion', [
    (lambda: diffusers.DDIMScheduler(clip_sample=False, timestep_spacing='trailing'), {}),
    (lambda: diffusers.PNDMScheduler(skip_prk_steps=True, steps_offset=1), {}),
    (lambda: diffusers.EulerDiscreteScheduler(use_karras_sigmas=True), {}),
    (lambda: diffusers.DPMSolverMultistepScheduler(solver_order=3), {}),
    (lambda: diffusers.DDPMScheduler(beta_schedule='squaredcos_cap_v2'), {'schedule': 'cosine'}),
], ids=['ddim-sampling-settings', 'pndm', 'euler-karras', 'dpm-solver', 'cosine'])
def test_vp_schedulers_with_the_runs_process_are_accepted(scheduler, diffusion, tiny_model,
                                                          tmp_path):
    """Settings of how diffusers samples (clipping, spacing, Karras sigmas, solver) do not
    change the forward process: accepted (configured raises the UserError of a refusal),
    with the run's process left as configured."""
    directory = model_dir(tiny_model[0], tmp_path / 'model', scheduler=scheduler())
    config = configured(directory, **diffusion)
    assert config.model.init_from == str(directory)
    expected = {**default.get_config().diffusion.to_dict(), **diffusion}
    assert config.diffusion.to_dict() == expected


# file -> (key, malformed value, what the message says after 'key=value: ')
MALFORMED = [
    ('scheduler_config.json', 'beta_end', '0.02', 'must be a finite number'),
    ('scheduler_config.json', 'beta_start', None, 'must be a finite number'),
    ('scheduler_config.json', 'beta_end', 1.5, 'must be a number in (0, 1)'),
    ('scheduler_config.json', 'num_train_timesteps', '1000', 'must be an integer >= 1'),
    ('scheduler_config.json', 'num_train_timesteps', 0, 'must be an integer >= 1'),
    ('scheduler_config.json', 'num_train_timesteps', True, 'must be an integer >= 1'),
    ('scheduler_config.json', 'prediction_type', None, 'must be a string'),
    ('scheduler_config.json', 'rescale_betas_zero_snr', 'false', 'must be true or false'),
    ('scheduler_config.json', 'trained_betas', 'none', 'must be null or a list'),
    ('scheduler_config.json', '_class_name', 7, 'not a discrete VP'),
    ('config.json', 'block_out_channels', None, 'must be a non-empty list of integers >= 1'),
    ('config.json', 'block_out_channels', [16, '32'], 'must be a non-empty list of integers'),
    ('config.json', 'block_out_channels', [], 'must be a non-empty list of integers'),
    ('config.json', 'norm_num_groups', 0, 'must be an integer >= 1'),
    ('config.json', 'norm_num_groups', '8', 'must be an integer >= 1'),
    ('config.json', 'layers_per_block', -1, 'must be an integer >= 1'),
    ('config.json', 'norm_eps', 0, 'must be a finite number > 0'),
    ('config.json', 'in_channels', 0, 'must be an integer >= 1'),
    ('config.json', 'flip_sin_to_cos', 'false', 'must be true or false'),
    ('config.json', 'down_block_types', None, 'must be a list of strings'),
    ('config.json', 'up_block_types', [1, 2], 'must be a list of strings'),
    ('config.json', 'attention_head_dim', 0, 'must be an integer >= 1'),
    ('config.json', 'attention_head_dim', '32', 'must be an integer >= 1'),
    ('config.json', 'freq_shift', '0', 'must be an integer in [0, '),
    ('config.json', 'freq_shift', 8, 'must be an integer in [0, block_out_channels[0] // 2 = 8)'),
    ('config.json', 'sample_size', '8', 'diffgen needs the image side'),
    ('config.json', 'sample_size', [[8]], 'diffgen needs the image side'),
    ('config.json', 'sample_size', 7, 'must halve 1 times'),
    ('config.json', 'downsample_padding', [1], "(diffgen has 0 or 1)"),
    ('config.json', '_class_name', 'UNet2DConditionModel', 'diffgen imports UNet2DModel only'),
]


@pytest.mark.parametrize('file, key, value, says', MALFORMED,
                         ids=[f'{f.split("_")[0].split(".")[0]}-{k}-{v!r}'
                              for f, k, v, _ in MALFORMED])
def test_malformed_value_is_one_line_naming_file_and_key(file, key, value, says, tiny_model,
                                                         tmp_path):
    directory = model_dir(tiny_model[0], tmp_path / 'model')
    path = directory / file
    path.write_text(json.dumps({**json.loads(path.read_text()), key: value}))
    message = refusal(directory)
    shown = repr(value)
    assert message.startswith(f'{path}: '), message
    assert f'{key}={shown}' in message and says in message, message


def test_unknown_config_json_key_names_the_file(tiny_model, tmp_path):
    directory = model_dir(tiny_model[0], tmp_path / 'model', config={'conv_kernel': 5})
    assert refusal(directory) == (f"{directory / 'config.json'}: keys diffgen cannot interpret: "
                                  "['conv_kernel'] (not UNet2DModel keys)")


def test_attention_head_size_is_checked_only_where_there_is_attention(tiny_model, tmp_path):
    """(16, 32) channels, attention (and so heads of attention_head_dim = 32) only at the
    32-channel level and in the middle block: accepted, and diffgen's eps is PyTorch's. The
    same head size with attention at the 16-channel level: refused, naming config.json's
    attention_head_dim, not diffgen's model.attn_head_dim."""
    directory, theirs = tiny_model
    config = configured(directory)
    assert (config.model.attn_head_dim, config.model.attn_resolutions) == (32, (4,))
    model = get_network(config.model)
    template = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 8, 8, 1)),
                              jnp.ones((1,), jnp.int32))
    params = diffusers_import.load_params(str(directory), model, template, (8, 8, 1))
    x = np.random.default_rng(0).standard_normal((3, 8, 8, 1), dtype=np.float32)
    t = np.array([1, 500, 1000])
    with torch.no_grad():
        expected = theirs(torch.from_numpy(x.transpose(0, 3, 1, 2)),
                          torch.from_numpy(t - 1)).sample.numpy().transpose(0, 2, 3, 1)
    assert np.abs(np.asarray(jax.jit(model.apply)(params, x, t)) - expected).max() <= TOLERANCE

    first_level = model_dir(directory, tmp_path / 'first_level', config={
        'down_block_types': ['AttnDownBlock2D', 'DownBlock2D'],
        'up_block_types': ['UpBlock2D', 'AttnUpBlock2D']})
    message = refusal(first_level)
    assert message.startswith(f"{first_level / 'config.json'}: attention_head_dim=32 does not "
                              'divide the channels [16, 32]'), message
    assert 'model.attn_head_dim' not in message


def test_diffgens_unet_checks_the_head_size_at_its_attention_levels():
    """The same rule for diffgen's own UNet (model.attn_head_dim): validation checks the
    middle block's channels (it always has attention); the levels with attention depend on
    the image side and are checked before the network is initialised (create_train_state),
    as one ConfigError."""
    config = default.get_config()
    config.model.update(ch=16, ch_mult=(1, 2), num_res_blocks=1, num_groups=8,
                        attn_head_dim=32, attn_resolutions=(4,))
    check_config(config)
    state = jax.eval_shape(lambda: create_train_state(      # shapes only: no init's work
        get_network(config.model), optax.sgd(0.1), jax.random.PRNGKey(0), (8, 8, 1)))
    assert state.params['params']['AttnBlock_0']['SelfAttention_0']['query']['kernel'].shape \
        == (32, 1, 32)          # attention at 4x4 (and the middle): one head of 32 channels
    config.model.attn_resolutions = (8,)   # and at 8x8, of 16 channels: refused before init
    with pytest.raises(UserError, match=r'^model.attn_head_dim=32 does not divide the 16 '
                                        r'channels of the attention at resolution 8x8$'):
        create_train_state(get_network(config.model), optax.sgd(0.1), jax.random.PRNGKey(0),
                           (8, 8, 1))


def workdir_snapshot(workdir):
    return {p: open(os.path.join(workdir, p), 'rb').read() for p in sorted(os.listdir(workdir))}


def cli_refusal(tmp_path, *args):
    """python -m diffgen.main ARGS --workdir=W --mode=analyze with W holding an earlier run's
    file: (exit status, the one `diffgen: error:` line); W and the data dir are untouched."""
    workdir, data_dir = tmp_path / 'work', tmp_path / 'data'
    os.makedirs(workdir)
    os.makedirs(data_dir)
    (workdir / 'config.json').write_text('{"an earlier run": true}')
    before = workdir_snapshot(workdir)
    result = run_main(*args, f'--workdir={workdir}', '--mode=analyze',
                      f'--config.data.data_dir={data_dir}')
    assert 'Traceback' not in result.stderr, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith('diffgen: error:')]
    assert len(errors) == 1 and result.stderr.strip().splitlines()[-1] == errors[0], \
        result.stderr
    assert workdir_snapshot(workdir) == before and not os.listdir(data_dir)
    return result.returncode, errors[0][len('diffgen: error: '):]


def test_cli_model_dir_with_equals_and_comma_and_an_edm_scheduler(tiny_model, tmp_path):
    """configs/ddpm_cifar10_import.py:model_dir=PATH takes PATH whole ('=' and ','); the
    model's EDMEulerScheduler is one line and exit 2, the workdir untouched."""
    directory = model_dir(tiny_model[0], tmp_path / 'ddpm=cifar,10',
                          scheduler=diffusers.EDMEulerScheduler())
    for arg in (f'model_dir={directory}', str(directory)):   # named, or the whole argument
        assert ddpm_cifar10_import.get_config(arg).model.init_from == str(directory)
    with pytest.raises(ValueError, match='needs the model directory'):
        ddpm_cifar10_import.get_config('model_dir=')
    status, line = cli_refusal(tmp_path, f'--config=configs/ddpm_cifar10_import.py:model_dir='
                                         f'{directory}')
    assert status == 2
    assert line.startswith(f"{directory / 'scheduler_config.json'}: "
                           "_class_name='EDMEulerScheduler': not a discrete VP"), line


@pytest.mark.slow
def test_cli_score_sde_ve_with_its_T(tiny_model, tmp_path):
    """ScoreSdeVeScheduler with --config.diffusion.num_timesteps=2000 (its T, what the
    refusal of its T suggested before): refused by class, exit 2, the workdir untouched."""
    ve = model_dir(tiny_model[0], tmp_path / 've', scheduler=diffusers.ScoreSdeVeScheduler())
    status, line = cli_refusal(tmp_path, '--config=configs/digits.py',
                               f'--config.model.init_from={ve}',
                               '--config.diffusion.num_timesteps=2000')
    assert status == 2 and line.startswith(
        f"{ve / 'scheduler_config.json'}: _class_name='ScoreSdeVeScheduler'"), line
