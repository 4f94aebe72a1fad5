"""Sample quality: Fréchet distance and precision/recall of generated against real examples,
in the feature space of a small classifier trained on the training set (so that "novel" can
be told from "garbage").

Features φ: the penultimate layer (after ReLU) of a small CNN trained to classify the
source's images by label (all that are not held out, whatever the run's training-set size),
cached in the data dir (keyed by source, size and a hash of the images and labels); toy2d points are their own features. Without labels there is no
classifier and the metrics are NaN.

Fréchet distance between Gaussians fitted to the two feature sets (Heusel et al. 2017):
    FD = ‖μ_g − μ_r‖² + Tr(Σ_g + Σ_r − 2 (Σ_r^{1/2} Σ_g Σ_r^{1/2})^{1/2}),
the trace of the matrix square root taken as Σ √λ_i of the symmetric PSD matrix
Σ_r^{1/2} Σ_g Σ_r^{1/2} (eigenvalues, float64; equal to Tr (Σ_g Σ_r)^{1/2}).

Precision and recall (Kynkäänniemi et al. 2019): with r_k(u) the distance of u to its k-th
nearest neighbour in its own set (itself excluded), the manifold of a set U is ∪_u B(u, r_k(u));
    precision = fraction of generated features inside the real manifold,
    recall    = fraction of real features inside the generated manifold.
"""
from __future__ import annotations

import functools
import hashlib
import inspect
import json
import os

import flax.linen as nn
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from diffgen import data, files
from diffgen.optimum.neighbors import knn
from diffgen.training.step import repeat

CLASSIFIER_BATCH = 128
CLASSIFIER_LR = 1e-3
FEATURES = 64


class Classifier(nn.Module):
    """Three 3×3 convolutions (the last two of stride 2), global average pooling, a hidden
    dense layer of FEATURES units (the features φ) and the class logits."""
    num_classes: int

    @nn.compact
    def __call__(self, x, features_only=False):
        for width, stride in ((16, 1), (32, 2), (64, 2)):
            x = nn.relu(nn.Conv(width, (3, 3), strides=stride)(x))
        h = nn.relu(nn.Dense(FEATURES)(x.mean(axis=(1, 2))))
        return h if features_only else nn.Dense(self.num_classes)(h)


def train_classifier(images, labels, num_classes, num_steps, rng, steps_per_call=10,
                     unroll=False):
    """Adam on the cross-entropy, batches of CLASSIFIER_BATCH drawn with replacement by
    fold_in(batch_rng, step); jitted calls of steps_per_call steps (a lax.scan, or unrolled:
    XLA:CPU runs conv gradients inside loops slowly, see diffgen.train_step). images float32
    (N, H, W, C) in [-1, 1]; num_steps is rounded up to a multiple of steps_per_call."""
    model = Classifier(num_classes)
    init_rng, batch_rng = jax.random.split(rng)
    params = model.init(init_rng, images[:1])
    tx = optax.adam(CLASSIFIER_LR)
    images, labels = jnp.asarray(images), jnp.asarray(labels)

    def loss_fn(p, idx):
        logits = model.apply(p, images[idx])
        return optax.softmax_cross_entropy_with_integer_labels(logits, labels[idx]).mean()

    @jax.jit
    def call(carry, first_step):
        def step(carry, _):
            p, opt_state, i = carry
            idx = jax.random.randint(jax.random.fold_in(batch_rng, i), (CLASSIFIER_BATCH,), 0,
                                     images.shape[0])
            updates, opt_state = tx.update(jax.grad(loss_fn)(p, idx), opt_state, p)
            return (optax.apply_updates(p, updates), opt_state, i + 1), None
        p, opt_state = carry
        p, opt_state, _ = repeat(step, (p, opt_state, first_step), steps_per_call, unroll)[0]
        return p, opt_state

    carry = (params, tx.init(params))
    for first in range(0, num_steps, steps_per_call):
        carry = call(carry, first)
    return model, carry[0]


def accuracy(model, params, images, labels):
    """The fraction of images whose largest logit is their label."""
    logits = model.apply(params, jnp.asarray(images))
    return float(np.mean(np.asarray(jnp.argmax(logits, axis=-1)) == np.asarray(labels)))


def classifier_data(config):
    """The examples the classifier learns from: every example of the source that is not
    held out (the training set at data.num_train = -1). It is the same for every
    training-set size N, so the features, and hence Fréchet distances and precision / recall,
    compare across a sweep over N; the held-out set is the same as the run's."""
    whole = config.copy_and_resolve_references()
    whole.data.num_train = -1
    return data.load(whole)


def classifier_cache_path(config, pool):
    """<data dir>/diffgen_quality/<source>_<N>x<shape>_<steps>steps_<hash>.npz for the
    classifier of the examples pool.train_images (classifier_data): the hash covers the
    images, the labels and the classifier's definition, so an edited architecture is not
    loaded from a stale cache. The data dir may be any path diffgen.files reads (gs://...)."""
    digest = hashlib.sha1(pool.train_images.tobytes())
    digest.update(inspect.getsource(Classifier).encode())
    digest.update(f'{FEATURES} {CLASSIFIER_LR} {CLASSIFIER_BATCH}'.encode())
    digest.update(np.asarray(pool.train_labels).tobytes())
    source = ''.join(c if c.isalnum() else '_' for c in config.data.source)
    size = 'x'.join(str(n) for n in pool.train_images.shape)
    name = (f'{source}_{size}_{config.analysis.quality.classifier_steps}steps_'
            f'{digest.hexdigest()[:12]}.npz')
    return os.path.join(data.data_dir(config.data.data_dir), 'diffgen_quality', name)


_EXTRACTORS = {}  # (data section but num_train, steps) -> (model, params): one per process


def feature_extractor(config, dataset):
    """The cached classifier (model, params) of the source's non-held-out examples
    (classifier_data); trained (fixed key 0) and written to the cache on first use, by one
    run at a time (files.shared_lock: runs started at once wait, then read it). None where
    the examples have no labels."""
    if dataset.train_labels is None:
        return None
    source = {k: v for k, v in config.data.to_dict().items() if k != 'num_train'}
    key = (json.dumps(source, sort_keys=True, default=list),
           config.analysis.quality.classifier_steps)
    if key in _EXTRACTORS:
        return _EXTRACTORS[key]
    pool = classifier_data(config)
    path = classifier_cache_path(config, pool)
    num_classes = int(pool.train_labels.max()) + 1
    model, params = Classifier(num_classes), None
    if not files.exists(path):
        # runs started at once on a fresh data dir take turns: one trains, the others read
        with files.shared_lock(f'{path}.lock', 'training the quality classifier'):
            if not files.exists(path):
                model, params = _train_and_cache(config, pool, num_classes, path)
    if params is None:
        stored = files.load_npz(path)
        params = flax.traverse_util.unflatten_dict(
            {tuple(k.split('/')): jnp.asarray(v) for k, v in stored.items() if k != 'accuracy'})
    _EXTRACTORS[key] = (model, params)
    return model, params


def _train_and_cache(config, pool, num_classes, path):
    """(model, params) of the classifier trained on pool (fixed key 0), written to path."""
    t = config.training
    model, params = train_classifier(pool.train, pool.train_labels, num_classes,
                                     config.analysis.quality.classifier_steps,
                                     jax.random.key(0), t.steps_per_call, t.unroll)
    flat = {'/'.join(k): np.asarray(v)
            for k, v in flax.traverse_util.flatten_dict(params).items()}
    if len(pool.heldout_images) and pool.heldout_labels is not None:
        flat['accuracy'] = accuracy(model, params, pool.heldout, pool.heldout_labels)
        logging.info('quality classifier (%d images): held-out accuracy %.3f',
                     len(pool.train_images), flat['accuracy'])
    files.save_npz(path, **flat)  # atomic: concurrent runs never read a partial file
    return model, params


def features(examples, config, dataset, batch_size=1024):
    """φ(examples) (B, FEATURES) float32 NumPy of images clipped to [-1, 1] (the range they
    are saved in); toy2d points are their own features; None without a classifier."""
    examples = np.asarray(examples, np.float32)
    if not dataset.is_image:
        return examples.reshape(len(examples), -1)
    examples = np.clip(examples, -1.0, 1.0)
    extractor = feature_extractor(config, dataset)
    if extractor is None:
        return None
    model, params = extractor
    return np.concatenate([np.asarray(_penultimate(model, params, examples[i:i + batch_size]))
                           for i in range(0, len(examples), batch_size)])


@functools.partial(jax.jit, static_argnums=0)
def _penultimate(model, params, x):
    return model.apply(params, x, features_only=True)


def _sqrtm_psd(m):
    """The symmetric square root of a symmetric PSD matrix (eigenvalues clipped at 0)."""
    w, v = np.linalg.eigh(m)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1, cov1, mu2, cov2):
    """FD = ‖μ1 − μ2‖² + Tr(Σ1 + Σ2 − 2 (Σ2^{1/2} Σ1 Σ2^{1/2})^{1/2}), float64."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
    root2 = _sqrtm_psd(cov2)
    middle = root2 @ cov1 @ root2
    cross = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0.0, None)))
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(cov1) + np.trace(cov2) - 2.0 * cross)


def feature_frechet_distance(feats1, feats2):
    """FD between Gaussians with the two sets' means and covariances (ddof = 1)."""
    f1, f2 = np.asarray(feats1, np.float64), np.asarray(feats2, np.float64)
    return frechet_distance(f1.mean(0), np.cov(f1, rowvar=False), f2.mean(0),
                            np.cov(f2, rowvar=False))


def knn_radii(feats, k):
    """r_k(u): the distance of each u to its k-th nearest neighbour in feats, u excluded
    (the k+1 nearest include u itself at distance 0)."""
    distances, _ = knn(feats, feats, k + 1)
    return np.asarray(distances, np.float64)[:, k]


def _inside_manifold(queries, points, radii, block=1024):
    """Whether each query lies in ∪_i B(points_i, radii_i): min_i ‖q − p_i‖ − r_i <= 0."""
    points = np.asarray(points, np.float64)
    sq_points = np.sum(points ** 2, axis=1)
    inside = []
    for start in range(0, len(queries), block):
        q = np.asarray(queries[start:start + block], np.float64)
        sq = np.sum(q ** 2, axis=1)[:, None] - 2.0 * q @ points.T + sq_points[None, :]
        inside.append(np.any(np.sqrt(np.clip(sq, 0.0, None)) <= radii[None, :], axis=1))
    return np.concatenate(inside)


def precision_recall(generated, real, k=3):
    """(precision, recall) of generated against real features with k-NN manifolds."""
    precision = np.mean(_inside_manifold(generated, real, knn_radii(real, k)))
    recall = np.mean(_inside_manifold(real, generated, knn_radii(generated, k)))
    return float(precision), float(recall)


def feature_quality(generated, real, k=3):
    """{'fd', 'precision', 'recall'} of two feature sets (B, F)."""
    precision, recall = precision_recall(generated, real, k)
    return {'fd': feature_frechet_distance(generated, real), 'precision': precision,
            'recall': recall}


def real_reference(ctx):
    """The real examples samples are compared with: the held-out set, else the training set."""
    return ctx.dataset.heldout if len(ctx.dataset.heldout_images) else ctx.dataset.train


def quality_metrics(samples, ctx):
    """{'fd', 'precision', 'recall'} of samples against the held-out set (the training set if
    there is none) in classifier features; NaN where there is no classifier."""
    config, dataset = ctx.config, ctx.dataset
    generated = features(samples, config, dataset)
    if generated is None:
        return {'fd': float('nan'), 'precision': float('nan'), 'recall': float('nan')}
    real = features(real_reference(ctx), config, dataset)
    return feature_quality(generated, real, config.analysis.quality.k)
