"""Training never saves a non-finite state (diffgen.training.loop): a learning rate that
overflows the parameters in the first update stops --mode=train with one line naming the
quantity and the step (exit status 1) and saves nothing; parameters that become non-finite
while the loss is still finite stop the run before the save, the latest restorable
checkpoint being the last finite one."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffgen.errors import TrainingDiverged
from diffgen.training import checkpoints as checkpointing
from diffgen.training import loop
from tests.tiny import override_flags, run_main, tiny_digits_config

EVERY_STEP = {'training.steps_per_call': 1, 'training.log_every': 1,
              'training.checkpoint_every': 1}


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp('data')


def all_finite(tree):
    return all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(tree)
               if np.issubdtype(np.asarray(x).dtype, np.inexact))


def test_overflowing_learning_rate_is_one_line_exit_1_and_saves_nothing(data_dir, tmp_path):
    """optim.learning_rate = 1e39 is inf in float32: the first update makes the parameters
    NaN / inf while the loss of step 1 (computed before it) is finite."""
    workdir = tmp_path / 'work'
    result = run_main('--config=configs/digits.py', f'--workdir={workdir}', '--mode=train',
                      *override_flags(data_dir, **EVERY_STEP, **{
                          'training.num_steps': 2, 'optim.learning_rate': 1e39,
                          'optim.warmup_steps': 0}))
    assert result.returncode == 1, result.stderr[-3000:]
    lines = [l for l in result.stderr.splitlines() if l.startswith('diffgen: ')]
    assert lines == ['diffgen: error: parameters became non-finite by step 1; training '
                     'stopped, no checkpoint was saved'], result.stderr[-3000:]
    assert 'Traceback' not in result.stderr
    assert not checkpointing.has_checkpoint(str(workdir))


def test_non_finite_parameters_with_a_finite_loss_are_not_saved(data_dir, tmp_path,
                                                                  monkeypatch):
    """Two good steps (checkpoints 1, 2), then a train call whose update leaves the loss
    finite and the parameters NaN / inf: stopped at step 3 before its save."""
    good = loop.train_and_evaluate(tiny_digits_config(data_dir, **EVERY_STEP,
                                                      **{'training.num_steps': 2}), tmp_path)
    make_train_call = loop.make_train_call

    def overflowing(*args, **kwargs):
        train_call = make_train_call(*args, **kwargs)

        def call(state, train_set):
            state, metrics = train_call(state, train_set)
            inf = lambda tree: jax.tree.map(lambda p: p * jnp.inf, tree)
            return state.replace(params=inf(state.params)), metrics
        return call
    monkeypatch.setattr(loop, 'make_train_call', overflowing)
    with pytest.raises(TrainingDiverged) as error:
        loop.train_and_evaluate(tiny_digits_config(data_dir, **EVERY_STEP,
                                                   **{'training.num_steps': 4}), tmp_path)
    assert str(error.value) == ('parameters became non-finite by step 3; training stopped, '
                                'the last good checkpoint (step 2) is kept')
    manager = checkpointing.make_manager(tmp_path, 3)
    assert max(manager.all_steps()) == 2
    restored = checkpointing.restore_latest(manager, good)
    assert int(restored.step) == 2 and all_finite(restored)
    assert all(np.array_equal(np.asarray(a), np.asarray(b))
               for a, b in zip(jax.tree.leaves(restored.params), jax.tree.leaves(good.params)))
