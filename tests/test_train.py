"""Training: exact resume, compile-once, divergence handling, npz sources."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffgen import data, parallel
from diffgen.training import checkpoints as checkpointing
from diffgen.training import step as train_step
from diffgen.diffusion import objectives
from diffgen.errors import TrainingDiverged
from diffgen.training.loop import build, train_and_evaluate
from diffgen.training.step import make_train_call
from tests.tiny import tiny_digits_config


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp('data')


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


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(data_dir, tmp_path, monkeypatch):
    config = tiny_digits_config(data_dir, **{'training.num_steps': 4})
    good = train_and_evaluate(config, tmp_path)

    def poisoned(apply_fn, params, x0, *, rng, schedule, with_terms=False):
        loss, terms = objectives.eps_loss(apply_fn, params, x0, rng=rng, schedule=schedule,
                                          with_terms=True)
        return (loss * jnp.nan, terms) if with_terms else loss * jnp.nan
    monkeypatch.setattr(train_step, 'get_objective', lambda training_config: poisoned)
    with pytest.raises(TrainingDiverged, match='non-finite at step 5.*step 4'):
        train_and_evaluate(tiny_digits_config(data_dir, **{'training.num_steps': 8}), tmp_path)

    manager = checkpointing.make_manager(tmp_path, 3)
    assert manager.all_steps() == [4]
    restored = checkpointing.restore_latest(manager, good)
    assert leaves_equal(restored.params, good.params)


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
