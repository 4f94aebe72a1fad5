"""The JAX toolchain around training: EMA warm-up, bfloat16 compute, donation of the train
state, the persistent compilation cache, --verbosity, and the classifier cache on a data dir
that is not a local path."""
import glob
import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from etils import epath
import etils.epath.testing  # noqa: F401 -- epath.testing.mock_epath
from etils.epath import gpath

from diffgen import data, modes, parallel
from diffgen.analysis import quality
from diffgen.errors import ConfigError
from diffgen.training import state as train_state
from diffgen.training import step as train_step
from diffgen.training.loop import build
from diffgen.validation import validate
from tests.tiny import REPO, override_flags, run_main, tiny_digits_config


@pytest.fixture(scope='module')
def data_dir(digits_data_dir):
    return digits_data_dir


def test_ema_warmup_is_the_closed_form():
    steps = np.arange(2000)
    decays = np.asarray(jax.vmap(lambda s: train_state.ema_decay_at(s, 0.99, True))(steps))
    np.testing.assert_allclose(decays, np.minimum(0.99, (1 + steps) / (10 + steps)), rtol=1e-6)
    assert decays[0] == np.float32(0.1) and decays[1999] == np.float32(0.99)
    assert train_state.ema_decay_at(5, 0.99, False) == 0.99
    # three updates from EMA = 0 towards params = 1: 1 - prod_t decay_t
    params = {'w': jnp.ones(3)}
    tx = optax.sgd(0.0)
    state = train_state.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                                   ema_params={'w': jnp.zeros(3)}, opt_state=tx.init(params))
    for _ in range(3):
        state = train_state.apply_gradients(state, {'w': jnp.zeros(3)}, tx, 0.99, True)
    expected = 1 - (1 / 10) * (2 / 11) * (3 / 12)
    np.testing.assert_allclose(state.ema_params['w'], expected, rtol=1e-6)


def test_compute_dtype_is_validated(data_dir):
    with pytest.raises(ConfigError, match='compute_dtype'):
        validate(tiny_digits_config(data_dir, **{'training.compute_dtype': 'float16'}))


def test_bfloat16_compute_and_donation(data_dir):
    """bfloat16: every convolution and matrix product of the network takes bfloat16, the
    parameters, gradients and optimiser state stay float32, and the loss is float32's to
    bfloat16 precision. donate=True: the state passed in is deleted (its buffers reused)."""
    config = tiny_digits_config(data_dir, **{'training.compute_dtype': 'bfloat16',
                                             'training.steps_per_call': 1})
    dataset = data.load(config)
    run = build(config, dataset)
    apply = train_step.compute_apply(run.model, 'bfloat16')
    x = jnp.zeros((2,) + dataset.image_shape)
    jaxpr = jax.make_jaxpr(lambda p: apply(p, x, jnp.ones(2, jnp.int32)))(run.state.params)
    heavy = [e for e in jaxpr.jaxpr.eqns
             if e.primitive.name in ('conv_general_dilated', 'dot_general')]
    assert heavy and all(v.aval.dtype == jnp.bfloat16 for e in heavy for v in e.invars)
    assert jaxpr.out_avals[0].dtype == jnp.float32

    images = parallel.replicate(dataset.train_images, run.mesh)
    losses = {}
    for dtype in ('float32', 'bfloat16'):
        config.training.compute_dtype = dtype
        call = train_step.make_train_call(config, run.model, run.tx, run.schedule, run.mesh,
                                          donate=True)
        start = parallel.replicate(jax.device_get(run.state), run.mesh)
        state, metrics = call(start, images)
        assert all(leaf.is_deleted() for leaf in jax.tree.leaves(start.params))
        assert {leaf.dtype for leaf in jax.tree.leaves((state.params, state.opt_state))
                if jnp.issubdtype(leaf.dtype, jnp.floating)} == {jnp.dtype(jnp.float32)}
        losses[dtype] = np.asarray(metrics['loss'])
    # XLA:CPU may keep bfloat16 intermediates in float32 (xla_allow_excess_precision), so
    # the losses may even coincide there; an accelerator rounds to bfloat16's 8 bits
    np.testing.assert_allclose(losses['bfloat16'], losses['float32'], rtol=0.05)


def test_compile_cache_dir(data_dir):
    config = tiny_digits_config(data_dir)
    assert modes.compile_cache_dir(config) == os.path.join(str(data_dir), 'jax_compilation_cache')
    config.training.compile_cache_dir = ''
    assert modes.compile_cache_dir(config) is None
    config.training.compile_cache_dir = 'gs://bucket/cache'
    assert modes.compile_cache_dir(config) == 'gs://bucket/cache'


def info_sources(stderr):
    """The source files of the absl INFO lines in stderr (`I1202 12:00:00.0 123 file.py:42] ...`)."""
    return set(re.findall(r'^I\d{4} [\d:.]+ +\d+ ([\w.]+\.py):\d+\]', stderr, flags=re.M))


def test_main_fills_the_compile_cache_and_honours_verbosity(data_dir, tmp_path, unoptimized):
    """Without --verbosity diffgen's own INFO messages show and other libraries' do not
    (which libraries log what at INFO is theirs: test_verbosity_decides_... checks the
    filter diffgen sets). Progress lines go to stdout."""
    cache = tmp_path / 'cache'
    args = ['--config=configs/digits.py', '--mode=train']
    flags = override_flags(data_dir, **{'training.num_steps': 4,
                                        'training.compile_cache_dir': cache})
    quiet = run_main(*args, f'--workdir={tmp_path}/quiet', *flags, timeout=600)
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    assert os.listdir(cache)                       # the train call at least
    assert 'train step 4/4' in quiet.stdout and 'train step' not in quiet.stderr
    diffgen_files = {os.path.basename(p) for p in glob.glob(os.path.join(REPO, 'diffgen', '**', '*.py'),
                                                            recursive=True)}
    shown = info_sources(quiet.stderr)
    assert shown and shown <= diffgen_files, shown   # e.g. modes.py's 'sampling 8 samples'


# diffgen.main.set_up_logging as diffgen.main calls it, in a process of its own (diffgen.main's
# flags cannot be defined in the test process beside launch.sweep's): absl's handler with
# and without --verbosity, asked whether it passes a record of diffgen's and of a library's.
VERBOSITY = '''
import logging as std_logging, os, sys
from absl import logging
from diffgen import main
handler = logging.get_absl_handler()
def passes(level, path):
    record = std_logging.LogRecord('any', level, path, 1, 'a message', None, None)
    return all(f.filter(record) for f in handler.filters)
ours = os.path.join(main.DIFFGEN_DIR, 'modes.py')
theirs = os.path.join(os.path.dirname(std_logging.__file__), 'orbax', 'checkpoint', 'x.py')
main.set_up_logging(explicit_verbosity=True)             # --verbosity=0
assert passes(std_logging.INFO, theirs) and passes(std_logging.INFO, ours)
main.set_up_logging(explicit_verbosity=False)            # no --verbosity
assert logging.get_verbosity() == logging.INFO
assert passes(std_logging.INFO, ours) and passes(std_logging.WARNING, theirs)
assert not passes(std_logging.INFO, theirs)
main.set_up_logging(explicit_verbosity=False)            # called twice: one filter
assert sum(isinstance(f, main.DiffgenMessages) for f in handler.filters) == 1
print('verbosity ok')
'''


def test_verbosity_decides_whose_info_messages_show():
    """diffgen.main.set_up_logging: without --verbosity, absl's handler passes diffgen's own
    INFO messages and other libraries' from WARNING on; with --verbosity it passes all."""
    result = subprocess.run([sys.executable, '-c', VERBOSITY], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0 and 'verbosity ok' in result.stdout, result.stderr[-3000:]


def test_classifier_cache_on_a_gs_data_dir(data_dir, tmp_path, monkeypatch):
    """With data.data_dir = gs://..., the quality classifier is written there through
    etils.epath (mocked: gs://bucket/ is a local folder) and found by the next run; nothing
    is written into a local folder named 'gs:'."""
    bucket = tmp_path / 'bucket'

    def local(path):
        return os.fspath(path).replace('gs://bucket', str(bucket))

    def redirect(fn, path, *args, **kwargs):
        return fn(local(path), *args, **kwargs)

    def redirect_both(fn, path, dst, *args, **kwargs):
        return fn(local(path), local(dst), *args, **kwargs)

    mocked = dict(exists=redirect, isdir=redirect, listdir=redirect, makedirs=redirect,
                  mkdir=redirect, open=redirect, remove=redirect, stat=redirect, glob=redirect,
                  rmtree=redirect, replace=redirect_both, rename=redirect_both)
    local_config = tiny_digits_config(data_dir, **{'analysis.quality.classifier_steps': 2})
    pool = data.load(local_config)
    config = tiny_digits_config('gs://bucket/data', **{'analysis.quality.classifier_steps': 2})
    monkeypatch.setattr(quality, 'classifier_data', lambda c: pool)
    monkeypatch.chdir(tmp_path)
    # with TensorFlow installed, etils picks its gfile backend for gs:// past the mock
    monkeypatch.setattr(gpath, '_is_tf_installed', lambda: False)
    with epath.testing.mock_epath(**mocked):
        _, first = quality.feature_extractor(config, pool)
        path = quality.classifier_cache_path(config, pool)
        assert path.startswith('gs://bucket/data/diffgen_quality/')
        assert os.path.exists(local(path))
        quality._EXTRACTORS.clear()  # noqa: SLF001 -- a new run: nothing in memory
        monkeypatch.setattr(quality, 'train_classifier', None)  # must not train again
        _, second = quality.feature_extractor(config, pool)
    for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(second)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not (tmp_path / 'gs:').exists()


def test_xla_options_are_appended_unless_the_user_chose():
    from diffgen import xla_options
    env = {}
    assert xla_options.apply(env) == xla_options.CPU_OPTIONS
    assert env['XLA_FLAGS'] == ' '.join(xla_options.CPU_OPTIONS)
    env = {'XLA_FLAGS': '--xla_force_host_platform_device_count=8'}
    xla_options.apply(env)
    assert env['XLA_FLAGS'].split() == ['--xla_force_host_platform_device_count=8',
                                        *xla_options.CPU_OPTIONS]
    mine = '--xla_cpu_experimental_ynn_fusion_type='
    env = {'XLA_FLAGS': mine}
    assert xla_options.apply(env) == () and env['XLA_FLAGS'] == mine  # the user's choice stands
    env = {'DIFFGEN_XLA_DEFAULTS': '0'}
    assert xla_options.apply(env) == () and 'XLA_FLAGS' not in env
    env = {}   # a jaxlib it was not measured with might not know the flag: nothing is set
    assert xla_options.apply(env, version='0.11.0') == () and 'XLA_FLAGS' not in env
    # importing diffgen set them in this process, and this jaxlib accepts them (an unknown
    # flag would have aborted the process at its first computation)
    assert all(o in os.environ['XLA_FLAGS'] for o in xla_options.CPU_OPTIONS)
    assert float(jnp.ones(2).sum()) == 2.0


def test_progress_rate_leaves_other_work_out(capsys, monkeypatch):
    from diffgen import progress
    clock = iter([0.0, 10.0])
    monkeypatch.setattr(progress.time, 'perf_counter', lambda: next(clock))
    p = progress.Progress('train step', 300, 0)
    p.report(100)                      # t = 0: compilation done
    p.exclude(5.0)                     # 5 s of evaluation
    p.report(200)                      # t = 10: 100 steps in 10 - 5 s of training
    line = capsys.readouterr().out.splitlines()[-1]
    # rate 100 / 5 = 20 steps/s; ETA from the whole time: 100 steps at 100/10 = 10 s
    assert line.startswith('train step 200/300  20 steps/s  ETA 10s')
    assert '(other work 50 % of the time)' in line
