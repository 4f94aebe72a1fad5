"""A diverged model: its non-finite samples stop the analysis with one line (exit status 2,
diffgen.errors.NonFiniteError) and no report section, instead of counting as "not memorised"."""
import json
import shutil

import jax
import jax.numpy as jnp
import pytest

from diffgen.training import checkpoints as checkpointing
from diffgen.training.loop import restore_trained, train_and_evaluate
from tests.test_main import assert_one_line_error
from tests.tiny import override_flags, run_main, tiny_digits_config

# behaviour, not numbers (runs compared bit for bit are computed alike): XLA's
# optimisations off, here and in the diffgen.main runs started (tests/conftest.py)
pytestmark = pytest.mark.usefixtures('unoptimized_module')

SETTINGS = {'diffusion.num_timesteps': 100,
            'analysis.num_samples': 8, 'analysis.batch_size': 8, 'analysis.sampler_steps': 5}


@pytest.fixture(scope='module')
def data_dir(digits_data_dir):
    return digits_data_dir


def poison_latest_checkpoint(config, workdir):
    """Rewrites the newest checkpoint with every raw and EMA parameter NaN."""
    run = restore_trained(config, str(workdir))
    nan = lambda tree: jax.tree.map(lambda p: jnp.full_like(p, jnp.nan), tree)
    state = run.state.replace(params=nan(run.state.params), ema_params=nan(run.state.ema_params))
    step = int(state.step)
    shutil.rmtree(f'{checkpointing.checkpoint_dir(str(workdir))}/{step}')
    manager = checkpointing.make_manager(str(workdir), keep=2)
    checkpointing.save(manager, state, force=True)
    checkpointing.wait(manager, step)
    return step


def test_nan_model_stops_analysis_with_one_line_and_no_section(data_dir, tmp_path):
    config = tiny_digits_config(data_dir, **SETTINGS)
    workdir = tmp_path / 'work'
    train_and_evaluate(config, str(workdir))
    step = poison_latest_checkpoint(config, workdir)
    result = run_main('--config=configs/digits.py', f'--workdir={workdir}', '--mode=analyze',
                      "--config.analysis.experiments=('e2',)",
                      *override_flags(data_dir, **SETTINGS))
    assert_one_line_error(result, 'ddim sampler: 8 of 8 samples are non-finite', '--step')
    report = workdir / 'report' / 'report.json'
    assert not report.exists() or 'e2' not in json.loads(report.read_text())
    assert step == config.training.num_steps
