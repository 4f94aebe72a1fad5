"""Training never saves a non-finite state (diffgen.training.loop): a learning rate that
overflows the parameters in the first update stops --mode=train with one line naming the
quantity and the step (exit status 1) and saves nothing; parameters that become non-finite
while the loss is still finite, or a non-finite loss, stop the run before the save, the
latest restorable checkpoint being the last finite one."""
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffgen.diffusion import objectives
from diffgen.errors import TrainingDiverged
from diffgen.training import checkpoints as checkpointing
from diffgen.training import loop
from diffgen.training import step as train_step
from tests.tiny import override_flags, run_main, tiny_digits_config

# behaviour, not numbers (runs compared bit for bit are computed alike): XLA's
# optimisations off, here and in the diffgen.main runs started (tests/conftest.py)
pytestmark = pytest.mark.usefixtures('unoptimized_module')

EVERY_STEP = {'training.steps_per_call': 1, 'training.log_every': 1,
              'training.checkpoint_every': 1}


@pytest.fixture(scope='module')
def data_dir(digits_data_dir):
    return digits_data_dir


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


@pytest.fixture(scope='module')
def good(data_dir, tmp_path_factory):
    """(workdir, state) of two good steps, a checkpoint after each."""
    workdir = tmp_path_factory.mktemp('good') / 'work'
    state = loop.train_and_evaluate(tiny_digits_config(data_dir, **EVERY_STEP,
                                                       **{'training.num_steps': 2}), workdir)
    return workdir, state


def nan_loss(monkeypatch):
    """Every loss NaN (its terms finite): the next train call's loss is non-finite."""
    def poisoned(apply_fn, params, x0, *, rng, schedule, with_terms=False):
        loss, terms = objectives.eps_loss(apply_fn, params, x0, rng=rng, schedule=schedule,
                                          with_terms=True)
        return (loss * jnp.nan, terms) if with_terms else loss * jnp.nan
    monkeypatch.setattr(train_step, 'get_objective', lambda training_config: poisoned)


def inf_parameters(monkeypatch):
    """Each train call's update leaves the loss finite and the parameters NaN / inf."""
    make_train_call = loop.make_train_call

    def overflowing(*args, **kwargs):
        train_call = make_train_call(*args, **kwargs)

        def call(state, train_set):
            state, metrics = train_call(state, train_set)
            inf = lambda tree: jax.tree.map(lambda p: p * jnp.inf, tree)
            return state.replace(params=inf(state.params)), metrics
        return call
    monkeypatch.setattr(loop, 'make_train_call', overflowing)


@pytest.mark.parametrize('poison,message', [
    (nan_loss, 'loss became non-finite at step 3; training stopped, the last good '
               'checkpoint (step 2) is kept'),
    (inf_parameters, 'parameters became non-finite by step 3; training stopped, the last '
                     'good checkpoint (step 2) is kept'),
])
def test_a_non_finite_step_is_not_saved_and_the_last_good_checkpoint_stays(
        good, data_dir, tmp_path, monkeypatch, poison, message):
    """Two good steps (checkpoints 1, 2), then a train call whose loss is NaN, or whose
    update leaves the loss finite and the parameters NaN / inf: stopped at step 3 before
    its save."""
    workdir = shutil.copytree(good[0], tmp_path / 'work')
    poison(monkeypatch)
    with pytest.raises(TrainingDiverged) as error:
        loop.train_and_evaluate(tiny_digits_config(data_dir, **EVERY_STEP,
                                                   **{'training.num_steps': 4}), workdir)
    assert str(error.value) == message
    manager = checkpointing.make_manager(workdir, 3)
    assert max(manager.all_steps()) == 2
    restored = checkpointing.restore_latest(manager, good[1])
    assert int(restored.step) == 2 and all_finite(restored)
    assert all(np.array_equal(np.asarray(a), np.asarray(b))
               for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(good[1])))
