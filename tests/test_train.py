"""Training: exact resume, compile-once, npz sources (divergence: tests/test_divergence.py)."""
import jax
import numpy as np
import pytest

from diffgen import data, parallel
from diffgen.training import checkpoints as checkpointing
from diffgen.training.loop import build, train_and_evaluate
from diffgen.training.step import make_train_call
from tests.tiny import tiny_digits_config

# behaviour, not numbers (runs compared bit for bit are computed alike): XLA's
# optimisations off, here and in the diffgen.main runs started (tests/conftest.py)
pytestmark = pytest.mark.usefixtures('unoptimized_module')


@pytest.fixture(scope='module')
def data_dir(digits_data_dir):
    return digits_data_dir


def leaves_equal(a, b):
    return all(np.array_equal(np.asarray(x), np.asarray(y))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_resume_gives_identical_parameters(data_dir, tmp_path):
    """N steps straight == N/2 steps, a restart from the checkpoint, N/2 more steps."""
    straight = train_and_evaluate(tiny_digits_config(data_dir, **{'training.num_steps': 8}),
                                  tmp_path / 'straight')
    half = train_and_evaluate(tiny_digits_config(data_dir, **{'training.num_steps': 4}),
                              tmp_path / 'resumed')
    assert int(half.step) == 4
    resumed = train_and_evaluate(tiny_digits_config(data_dir, **{'training.num_steps': 8}),
                                 tmp_path / 'resumed')
    assert int(resumed.step) == int(straight.step) == 8
    assert leaves_equal(straight.params, resumed.params)
    assert leaves_equal(straight.ema_params, resumed.ema_params)
    assert leaves_equal(straight.opt_state, resumed.opt_state)
    assert not leaves_equal(half.params, resumed.params)


def test_train_call_compiles_once(data_dir):
    config = tiny_digits_config(data_dir)
    dataset = data.load(config)
    run = build(config, dataset)
    schedule, model, tx, mesh, state = run.schedule, run.model, run.tx, run.mesh, run.state
    train_call = make_train_call(config, model, tx, schedule, mesh)
    images = parallel.replicate(dataset.train_images, mesh)
    for _ in range(3):
        state, metrics = train_call(state, images)
    assert int(state.step) == 3 * config.training.steps_per_call
    assert np.all(np.isfinite(np.asarray(metrics['loss'])))
    assert train_call._cache_size() == 1


def test_npz_source_trains(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(64, 8, 8, 1), dtype=np.uint8)
    path = tmp_path / 'mine.npz'
    np.savez(path, images=images)
    config = tiny_digits_config(tmp_path, **{'data.source': f'npz:{path}',
                                             'training.num_steps': 4})
    state = train_and_evaluate(config, tmp_path / 'work')
    assert int(state.step) == 4
    assert checkpointing.make_manager(tmp_path / 'work', 3).latest_step() == 4
