"""Memorisation distances are measured on the float32 training set even when the optimum
stores it in bfloat16 (optimal.storage_dtype): an exact copy of a training image is at d_1 = 0,
not at the bfloat16 rounding of the image (~1e-3 over sqrt(D))."""
import numpy as np
import pytest

from diffgen import data
from diffgen.analysis import metrics
from diffgen.analysis.context import make_context
from diffgen.training.loop import build
from tests.tiny import tiny_digits_config


@pytest.fixture(scope='module')
def ctx(digits_data_dir, tmp_path_factory):
    config = tiny_digits_config(digits_data_dir, **{
        'optimal.storage_dtype': 'bfloat16', 'data.num_heldout': 16,
        'analysis.num_samples': 8, 'analysis.batch_size': 8})
    return make_context(config, str(tmp_path_factory.mktemp('work')),
                        build(config, data.load(config)))


def test_exact_copies_are_at_distance_zero_with_bfloat16_storage(ctx):
    copies = ctx.dataset.train[:6]
    assert ctx.train_rows.rows.dtype != np.float32   # the optimum's copy is bfloat16
    assert ctx.distance_rows.rows.dtype == np.float32
    d1, d2, nearest = metrics.nearest_two(copies, ctx.distance_rows)
    assert np.all(d1 < 1e-6), d1
    assert np.all(d2 > 1e-2)
    np.testing.assert_array_equal(nearest, np.arange(6))
    d1_train, d1_heldout = ctx.novelty_distances(copies)
    assert np.all(d1_train < 1e-6), d1_train
    # what the bfloat16 copy would have said: the test above can fail
    assert np.max(metrics.nearest_two(copies, ctx.train_rows)[0]) > 1e-4
