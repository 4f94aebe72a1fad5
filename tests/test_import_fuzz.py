"""Fuzzing the two files a user hands the diffusers importer (model.init_from): config.json
and scheduler_config.json of a tiny model diffusers saved, with seeded random corruptions
(cut short, bytes changed, a key's value replaced by a value of another JSON type or range, a
key dropped, a key added, another scheduler class). Each case must end in one of two ways:

- refused: diffgen's UserError with a one-line message naming a corrupted file (what
  diffgen.main prints as one `diffgen: error:` line, exit 2; one case goes through the CLI
  to show it);
- accepted: and then what was accepted is right. diffusers itself, loading the accepted
  scheduler_config.json, has diffgen's forward process (its alphas_cumprod is diffgen's
  alphas_bar[1:] within float32 round-off, eps prediction); and where diffusers can build the
  accepted config.json's UNet2DModel, diffgen's network has its parameter count.

Never a traceback. In the slow suite (python -m pytest -m slow): CASES cases in-process."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip('torch')
diffusers = pytest.importorskip('diffusers')

from configs import default  # noqa: E402
from diffgen.diffusion.schedules import get_schedule  # noqa: E402
from diffgen.errors import UserError  # noqa: E402
from diffgen.networks import check_config, get_network  # noqa: E402
from tests.fuzzing import mutate_object  # noqa: E402
from tests.tiny import run_main  # noqa: E402

CASES = 400
SEED = 0
# the digits-shaped UNet2DModel of tests/test_import_faults.py
TINY_UNET = dict(
    sample_size=8, in_channels=1, out_channels=1, block_out_channels=(16, 32),
    layers_per_block=1, down_block_types=('DownBlock2D', 'AttnDownBlock2D'),
    up_block_types=('AttnUpBlock2D', 'UpBlock2D'), norm_num_groups=8, attention_head_dim=16)
FILES = ('config.json', 'scheduler_config.json')
# values of every JSON type and of ranges that matter (zero, negative, huge, not finite)
VALUES = [None, True, False, 0, -1, 1, 2, 3, 7, 8, 16, 32, 1000, 2000, 0.5, 1e-4, 0.02, -0.5,
          1e308, float('nan'), float('inf'), '', 'x', '0.02', '8', 'linear',
          'squaredcos_cap_v2', 'epsilon', 'v_prediction', 'DownBlock2D', 'AttnDownBlock2D',
          'DDIMScheduler', 'EDMEulerScheduler', 'ScoreSdeVeScheduler', 'HeunDiscreteScheduler',
          'UNet2DModel', [], [8], [8, 8], [16, 32], [32, 16], ['DownBlock2D'], [None], {},
          {'a': 1}]
EXTRA_KEYS = ['sigma_max', 'use_karras_sigmas', 'timestep_type', 'use_flow_sigmas',
              'variance_type', 'rescale_betas_zero_snr', 'attn_norm_num_groups',
              'time_embedding_dim', 'class_embed_type', 'zzz']
# alphas_cumprod of diffusers (float32 betas and cumprod) against diffgen's float64: T = 1000
# products of float32 factors, relative round-off about T * 2**-24 = 6e-5
RTOL = 1e-4


@pytest.fixture(scope='module')
def originals(tmp_path_factory):
    """{file name: its text} of the tiny model diffusers saved (the default DDPMScheduler)."""
    directory = tmp_path_factory.mktemp('tiny_unet')
    diffusers.UNet2DModel(**TINY_UNET).save_config(directory)
    diffusers.DDPMScheduler().save_config(directory)
    return {name: (directory / name).read_text() for name in FILES}


def corrupt(text, rng):
    """text (a JSON object) with one to three random corruptions: a value replaced, a key
    dropped, a key added, then (sometimes) cut short or a byte changed."""
    value = json.loads(text)
    for _ in range(rng.integers(1, 4)):
        mutate_object(value, rng, VALUES, EXTRA_KEYS)
    data = json.dumps(value, indent=2).encode()
    damage = rng.choice(['none', 'none', 'cut', 'byte'])
    if damage == 'cut':
        data = data[:rng.integers(len(data))]
    elif damage == 'byte':
        position = rng.integers(len(data))
        data = data[:position] + bytes([rng.integers(256)]) + data[position + 1:]
    return data


def names_file(message, name):
    if name == 'scheduler_config.json':
        return name in message
    return any(f'{sep}config.json' in message for sep in ('/', ' ', '\\'))


class Oracles:
    """What diffusers itself makes of accepted files, cached (each distinct network is built
    once)."""

    def __init__(self):
        self.networks = {}
        self.unbuildable = 0

    def check_scheduler(self, text, config):
        raw = json.loads(text)
        scheduler = getattr(diffusers, raw['_class_name']).from_config(raw)
        assert scheduler.config.prediction_type == 'epsilon'
        theirs = np.asarray(scheduler.alphas_cumprod, np.float64)
        ours = np.asarray(get_schedule(config).alphas_bar, np.float64)[1:]
        assert theirs.shape == ours.shape
        np.testing.assert_allclose(theirs, ours, rtol=RTOL)

    def check_network(self, text, config):
        m = config.model
        key = tuple(m[k] if not isinstance(m[k], list) else tuple(m[k]) for k in (
            'ch', 'ch_mult', 'num_res_blocks', 'attn_resolutions', 'num_groups',
            'attn_head_dim', 'downsample_pad', 'time_freq_shift', 'time_flip'))
        if key in self.networks:
            return
        raw = json.loads(text)
        try:
            theirs = diffusers.UNet2DModel.from_config(raw)
        except Exception:  # noqa: BLE001 -- diffusers cannot build it: no weights can exist
            self.unbuildable += 1
            self.networks[key] = None
            return
        model = get_network(m)
        side, channels = raw.get('sample_size', 8), raw.get('in_channels', 3)
        side = side[0] if isinstance(side, list) else side
        params = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                                jnp.zeros((1, side, side, channels)),
                                jnp.ones((1,), jnp.int32))
        count = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
        assert count == sum(p.numel() for p in theirs.parameters())
        self.networks[key] = count


@pytest.mark.slow
def test_corrupted_model_files_end_in_a_result_or_one_line(originals, tmp_path):
    rng = np.random.default_rng(SEED)
    oracles = Oracles()
    outcomes = {'accepted': 0, 'refused': 0}
    first_refused = None
    for case in range(CASES):
        directory = tmp_path / f'case{case}'
        os.makedirs(directory)
        targets = [FILES[i] for i in ([0], [1], [0, 1])[rng.integers(3)]]
        texts = {}
        for name in FILES:
            data = (corrupt(originals[name], rng) if name in targets
                    else originals[name].encode())
            (directory / name).write_bytes(data)
            texts[name] = data
        config = default.get_config()
        config.model.init_from = str(directory)
        what = f'case {case}: {targets} = {texts}'
        try:
            check_config(config)
        except UserError as e:
            message = str(e)
            assert message and '\n' not in message, what
            assert any(names_file(message, name) for name in targets), (what, message)
            outcomes['refused'] += 1
            first_refused = first_refused or (directory, message)
            continue
        except Exception as e:  # noqa: BLE001 -- the failure this test exists to find
            pytest.fail(f'{what}: {type(e).__name__}: {e}')
        outcomes['accepted'] += 1
        oracles.check_scheduler(texts['scheduler_config.json'].decode(), config)
        oracles.check_network(texts['config.json'].decode(), config)
    # both outcomes occur, so the oracles and the messages were both exercised
    assert outcomes['accepted'] >= 10 and outcomes['refused'] >= CASES // 2, outcomes

    directory, message = first_refused   # the same refusal through the CLI: one line, exit 2
    result = run_main('--config=configs/default.py', f'--workdir={tmp_path / "work"}',
                      '--mode=analyze', f'--config.model.init_from={directory}',
                      f'--config.data.data_dir={tmp_path / "data"}')
    assert result.returncode == 2 and 'Traceback' not in result.stderr, result.stderr
    errors = [l for l in result.stderr.splitlines() if l.startswith('diffgen: error:')]
    assert errors == [f'diffgen: error: {message}'], result.stderr
    assert not os.path.exists(tmp_path / 'work') and not os.path.exists(tmp_path / 'data')
