"""Sample quality (diffgen.quality): the Fréchet distance against closed forms, precision /
recall on a constructed case, and the cached classifier's features."""
import os
import types

import numpy as np
import pytest

from diffgen import data
from diffgen.analysis import quality
from tests.tiny import tiny_digits_config


def _rotation(angle):
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s], [s, c]])


def test_frechet_distance_closed_form_non_commuting():
    """Σ1 = I, Σ2 = R diag(4, 9) Rᵀ: Tr(Σ1 + Σ2 − 2 Σ2^{1/2}) = (1−2)² + (1−3)² = 5."""
    R = _rotation(0.3)
    cov2 = R @ np.diag([4.0, 9.0]) @ R.T
    fd = quality.frechet_distance([0.0, 0.0], np.eye(2), [1.0, 2.0], cov2)
    assert fd == pytest.approx(5.0 + 5.0, abs=1e-10)
    assert quality.frechet_distance([1.0, 2.0], cov2, [0.0, 0.0], np.eye(2)) == pytest.approx(
        10.0, abs=1e-10)   # symmetric
    assert quality.frechet_distance([1.0, 2.0], cov2, [1.0, 2.0], cov2) == pytest.approx(
        0.0, abs=1e-10)


def test_frechet_distance_commuting_covariances():
    """Diagonal Σ1, Σ2: FD = ‖μ1 − μ2‖² + Σ_i (√a_i − √b_i)²."""
    a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    fd = quality.frechet_distance(np.zeros(3), np.diag(a), np.ones(3), np.diag(b))
    assert fd == pytest.approx(3.0 + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2), abs=1e-10)


def test_frechet_distance_of_samples_estimates_the_gaussians():
    """From 40000 draws of each Gaussian the plug-in FD is within a few standard errors
    (~ scale / sqrt(n)) of the closed form 10 of the first test."""
    rng = np.random.default_rng(0)
    n = 40000
    R = _rotation(0.3)
    x = rng.normal(size=(n, 2))
    y = np.array([1.0, 2.0]) + rng.normal(size=(n, 2)) @ np.diag([2.0, 3.0]) @ R.T
    assert quality.feature_frechet_distance(x, y) == pytest.approx(10.0, abs=0.3)


def test_precision_recall_constructed_case():
    """Real {0, 1, 2, 3}: with k = 1 every radius is 1; generated {0.5, 10}: 0.5 lies in the
    real manifold, 10 does not (precision 1/2); the generated radii are 9.5, and the ball
    B(0.5, 9.5) holds every real point (recall 1)."""
    real = np.array([[0.0], [1.0], [2.0], [3.0]], np.float32)
    generated = np.array([[0.5], [10.0]], np.float32)
    np.testing.assert_allclose(quality.knn_radii(real, 1), [1, 1, 1, 1])
    assert quality.precision_recall(generated, real, k=1) == (0.5, 1.0)
    # k = 2: radii (2, 1, 1, 2); 2.9 is within 1 of 2 and of 3; -1.5 is 1.5 from 0 (< 2)
    generated = np.array([[2.9], [-1.5], [-2.5]], np.float32)
    np.testing.assert_allclose(quality.knn_radii(real, 2), [2, 1, 1, 2])
    precision, _ = quality.precision_recall(generated, real, k=2)
    assert precision == pytest.approx(2 / 3)


@pytest.fixture(scope='module')
def digits_context(tmp_path_factory):
    config = tiny_digits_config(tmp_path_factory.mktemp('data'), **{
        'data.num_heldout': 128, 'analysis.quality.classifier_steps': 200})
    return types.SimpleNamespace(config=config, dataset=data.load(config))


def test_classifier_is_cached_and_separates_digits_from_noise(digits_context):
    ctx = digits_context
    path = quality.classifier_cache_path(ctx.config, quality.classifier_data(ctx.config))
    real = quality.quality_metrics(ctx.dataset.train[:128], ctx)
    assert os.path.exists(path)
    with np.load(path) as f:
        assert f['accuracy'] > 0.8   # held-out accuracy of the classifier
    quality._EXTRACTORS.clear()      # a new process: the cached file is read back
    assert quality.quality_metrics(ctx.dataset.train[:128], ctx) == real
    noise = np.random.default_rng(0).uniform(-1, 1, (128,) + ctx.dataset.image_shape)
    garbage = quality.quality_metrics(noise.astype(np.float32), ctx)
    assert garbage['fd'] > 5 * real['fd']
    assert garbage['recall'] < real['recall']


def test_one_classifier_for_every_training_set_size(digits_context):
    """The classifier learns from every non-held-out image, so N = 16 and N = all share it
    (and its feature space: Fréchet distances compare across a sweep over N)."""
    small = digits_context.config.copy_and_resolve_references()
    small.data.num_train = 16
    whole = quality.classifier_data(digits_context.config)
    assert len(whole.train_images) == 1797 - 128
    assert (quality.classifier_cache_path(small, quality.classifier_data(small))
            == quality.classifier_cache_path(digits_context.config, whole))
    dataset_16 = data.load(small)
    assert quality.feature_extractor(small, dataset_16) is quality.feature_extractor(
        digits_context.config, digits_context.dataset)
