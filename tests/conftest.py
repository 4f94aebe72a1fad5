"""Session-wide test fixtures: one digits data dir for the whole session (the digits written
once as TFDS `diffgen_digits`, the quality classifier of the tiny config trained once into
it), one persistent JAX compilation cache (in-process and for every `python -m diffgen.main`
a test starts), and `unoptimized` for tests that check behaviour rather than numbers.

The session's directory is shared by pytest-xdist's workers (the first to need the digits
or the classifier prepares them, the others wait for it: diffgen.files.shared_lock, as runs
of `launch.sweep --parallel` share a data dir), and by several pytest sessions where
$DIFFGEN_TEST_SESSION_DIR names it (.ci/run's two): nothing is prepared or compiled twice.

A test that changes or damages its data dir, or that tests data preparation or the
classifier cache themselves, makes its own data dir instead of digits_data_dir."""
import contextlib
import os
import pathlib
import shutil
import tempfile

import jax
import pytest

_SESSION = {}
SESSION_DIR_ENV = 'DIFFGEN_TEST_SESSION_DIR'


def pytest_configure(config):
    """Before any test module is imported (and anything is compiled): the session's data dir
    and its compilation cache <data dir>/jax_compilation_cache, the one diffgen.main uses
    for that data dir (training.compile_cache_dir = 'auto', diffgen.modes.init_compile_cache).
    Every compilation is cached (no minimum time or size), here and in the subprocesses,
    which inherit the two settings through the environment."""
    del config
    if SESSION_DIR_ENV in os.environ:      # made by .ci/run, or by the xdist controller
        root, owned = pathlib.Path(os.environ[SESSION_DIR_ENV]), False
    else:   # inherited by the xdist workers, which start after pytest_configure
        root, owned = pathlib.Path(tempfile.mkdtemp(prefix='diffgen_tests_')), True
        os.environ[SESSION_DIR_ENV] = str(root)
    data_dir = root / 'data'
    cache = data_dir / 'jax_compilation_cache'
    cache.mkdir(parents=True, exist_ok=True)
    _SESSION.update(root=root, data_dir=data_dir, owned=owned)
    os.environ['JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS'] = '0'
    os.environ['JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES'] = '0'
    jax.config.update('jax_compilation_cache_dir', str(cache))
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0)
    jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)


def pytest_unconfigure(config):
    del config
    if _SESSION.get('owned'):
        shutil.rmtree(_SESSION['root'], ignore_errors=True)


@pytest.fixture(scope='session')
def digits_data_dir():
    """The session's data dir (a pathlib.Path): `diffgen_digits` written into it once, and
    the quality classifier of the tiny config (tests/tiny.py, whose
    analysis.quality.classifier_steps every test uses) trained once and cached in it
    (diffgen.analysis.quality.classifier_cache_path). Read it; never change it."""
    from diffgen import data
    from diffgen.analysis import quality
    from tests.tiny import tiny_digits_config
    data_dir = _SESSION['data_dir']
    config = tiny_digits_config(data_dir)
    dataset = data.load(config)            # writes diffgen_digits (diffgen.data.digits_tfds)
    quality.feature_extractor(config, dataset)   # trains and caches the classifier
    assert os.path.exists(quality.classifier_cache_path(config, quality.classifier_data(config)))
    return data_dir


@contextlib.contextmanager
def _unoptimized():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv('JAX_DISABLE_MOST_OPTIMIZATIONS', '1')   # for the subprocesses
        before = jax.config.read('jax_disable_most_optimizations')
        jax.config.update('jax_disable_most_optimizations', True)
        try:
            yield
        finally:
            jax.config.update('jax_disable_most_optimizations', before)


@pytest.fixture
def unoptimized():
    """XLA's optimisations off (jax_disable_most_optimizations), in this process and in the
    diffgen.main subprocesses the test starts: tiny models compile several times faster.
    Only for tests that check behaviour (errors, files, resume, signals), where two sides
    compared bit for bit are both computed under it; never for tests of numbers."""
    with _unoptimized():
        yield


@pytest.fixture(scope='module')
def unoptimized_module():
    """unoptimized for a whole module, its module-scoped fixtures included."""
    with _unoptimized():
        yield
