"""E2's novelty against the whole training set (diffgen.analysis.experiments.e2_model_novelty)
and its references: the bootstrap replicates and the copier's-excess fraction against hand
and brute-force computations, the self-excluded held-out distance against float64, and on
Gaussian data with N ≠ H: fresh draws of the source lie at 0 % of a copier's excess, noisy
copies of training images near 100 %, while closer-to-train alone is far from 1/2 for both
(at N/(N + H) for the fresh draws)."""
import types

import numpy as np
import pytest

from diffgen.analysis import metrics
from diffgen.analysis.experiments import e2_model_novelty as e2
from diffgen.optimum import chunked


def test_novelty_replicates_are_resampled_novelty():
    """Each replicate equals metrics.novelty of the samples its counts draw (np.repeat),
    ties counting one half; counts of ones give the point estimate."""
    rng = np.random.default_rng(0)
    d_train = rng.uniform(size=9).round(1)          # rounding makes ties
    d_heldout = rng.uniform(size=9).round(1)
    counts = metrics.resample_counts(9, 50, rng)
    closer, ratio = metrics.novelty_replicates(d_train, d_heldout, counts)
    for b in (0, 17, 49):
        drawn = np.repeat(np.arange(9), counts[b])
        n = metrics.novelty(d_train[drawn], d_heldout[drawn])
        assert closer[b] == pytest.approx(n['closer_to_train'], abs=1e-12)
        assert ratio[b] == pytest.approx(n['ratio'], rel=1e-12)
    closer, ratio = metrics.novelty_replicates(d_train, d_heldout, np.ones((1, 9)))
    n = metrics.novelty(d_train, d_heldout)
    assert (closer[0], ratio[0]) == pytest.approx((n['closer_to_train'], n['ratio']), rel=1e-12)


def test_excess_fraction_hand_computed():
    np.testing.assert_allclose(metrics.excess_fraction([0.6, 0.8, 1.0], 0.6, 1.0), [0, 0.5, 1])
    # the ratio: held-out 0.8, copier 0; a model at 0.6 has covered a quarter of the way
    assert metrics.excess_fraction(0.6, 0.8, 0.0) == pytest.approx(0.25)
    assert np.isnan(metrics.excess_fraction(0.5, 0.7, 0.7))


def test_nearest_other_distance_leaves_the_self_match_out():
    """Against a float64 brute force over the other images, a duplicated image at distance
    0 (its twin); distances over √D."""
    rng = np.random.default_rng(1)
    images = rng.normal(size=(12, 6)).astype(np.float32)
    images[7] = images[3]
    got = e2.nearest_other_distance(images, chunked.prepare_rows(images, 0, np.float32))
    x = images.astype(np.float64)
    d = np.sqrt(((x[:, None] - x[None]) ** 2).mean(axis=-1))
    np.fill_diagonal(d, np.inf)
    np.testing.assert_allclose(got, d.min(axis=1), atol=1e-5)   # float32 GEMM distances
    assert got[3] < 1e-3 and got[7] < 1e-3


@pytest.fixture(scope='module')
def gaussian_references():
    """A made-up context: N = 450 training and H = 150 held-out images, both drawn from
    N(0, I) in D = 8, and E2's references measured on it."""
    rng = np.random.default_rng(2)
    train = rng.normal(size=(450, 8)).astype(np.float32)
    heldout = rng.normal(size=(150, 8)).astype(np.float32)
    prepare = lambda x: chunked.prepare_rows(x, 0, np.float32)
    ctx = types.SimpleNamespace(dataset=types.SimpleNamespace(train=train, heldout=heldout),
                                distance_rows=prepare(train), heldout_rows=prepare(heldout))
    references, _ = e2.reference_novelty(ctx, np.random.default_rng(3))
    return ctx, references


def _excess(ctx, references, samples, seed):
    distances = (metrics.nearest_distance(samples, ctx.distance_rows),
                 metrics.nearest_distance(samples, ctx.heldout_rows))
    novelty, replicates = e2.novelty_with_intervals(*distances, np.random.default_rng(seed))
    return novelty, e2.excess(novelty, replicates, references, 450 / (450 + 150))


def test_references_place_fresh_draws_at_0_and_copies_at_1(gaussian_references):
    ctx, references = gaussian_references
    copier, heldout = references[e2.COPIER][0], references[e2.HELDOUT][0]
    assert (copier['closer_to_train'], copier['ratio']) == (1.0, 0.0)
    # with N = 3H a fresh draw is nearer the training set with probability N/(N + H - 1)
    # (its own N + H - 1 references exchangeable), not half of the time
    assert heldout['closer_to_train_low'] <= 450 / 599 <= heldout['closer_to_train_high']
    assert heldout['closer_to_train_low'] > 0.6 and heldout['ratio_high'] < 1.0
    for n in (copier, heldout):
        for name in ('closer_to_train', 'ratio'):
            assert n[f'{name}_low'] <= n[name] <= n[f'{name}_high']

    rng = np.random.default_rng(4)
    fresh = rng.normal(size=(400, 8)).astype(np.float32)   # independent of the training set
    novelty, share = _excess(ctx, references, fresh, 5)
    assert novelty['closer_to_train_low'] <= 0.75 <= novelty['closer_to_train_high']  # N/(N+H)
    # |value| measured over the sample seeds 4, 7, 8, 9: at most 0.12 and 0.014 (bootstrap
    # sd about 0.09 and 0.02: closer-to-train's share is the noisier of the two)
    for name, within in (('closer_to_train', 0.2), ('ratio', 0.05)):
        assert share[name]['low'] <= 0.0 <= share[name]['high'], share
        assert abs(share[name]['value']) < within, share
    copies = ctx.dataset.train[rng.integers(0, 450, 400)] + np.float32(0.02) * rng.normal(
        size=(400, 8)).astype(np.float32)                    # near-copies of training images
    _, share = _excess(ctx, references, copies, 6)
    for name in ('closer_to_train', 'ratio'):
        assert share[name]['value'] > 0.9 and share[name]['low'] > 0.8, share
