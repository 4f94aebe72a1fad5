"""docs/math.md §4, 'why the optimum memorises': DDIM (eta = 0) with eps* returns training
images, on the embedded digits at several training-set sizes."""
import jax
import pytest

from diffgen import data
from diffgen.analysis import metrics
from diffgen.diffusion import samplers
from diffgen.optimum.optimal import optimal_denoiser
from diffgen.diffusion.schedules import make_schedule
from tests.tiny import tiny_digits_config


@pytest.fixture(scope='module')
def data_dir(digits_data_dir):
    return digits_data_dir


@pytest.mark.parametrize('num_train', [64, 256, 1797])
def test_ddim_with_optimal_denoiser_copies_the_training_set(data_dir, num_train):
    config = tiny_digits_config(data_dir, **{'data.num_train': num_train, 'data.num_heldout': 0})
    train = data.load(config).train
    schedule = make_schedule('linear', 1000)
    x_T = jax.random.normal(jax.random.key(num_train), (256,) + train.shape[1:])
    samples = samplers.sample(optimal_denoiser(train, schedule, chunk_size=512), x_T,
                              schedule, 'ddim', num_steps=100)
    d1, d2, _ = metrics.nearest_two(samples, train)
    assert metrics.memorisation_ratio(d1, d2) >= 0.99
    assert metrics.exact_copy_rate(d1, 1e-3) > 0.5
