"""The in-memory data set: training and held-out examples drawn from a source by config.

Subsets, drawn with numpy RNGs seeded from config.seed: the held-out set (num_heldout
examples) comes from config.data.heldout_split or, if that is '', is carved out of the
training split first; the training set is num_train of the examples that remain (-1: all).
With labels and config.data.class_balanced, class counts are as equal as possible. Each
set is in the order it was drawn, so train_images[:n] is the training set that
num_train=n would give (the same held-out set is kept out of it). Images are centre-cropped
to config.data.center_crop and resized to config.data.image_size (each if non-zero) as
they are read.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from diffgen.data.pixels import ImageTransform, to_float
from diffgen.data.sources import SOURCES, parse_source
from diffgen.errors import DataError

_SUBSET_STREAM = 0x5EB5  # separates the subset-choice random streams from the others


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """Training and held-out examples, in memory.

    Images are uint8 (N, H, W, C); toy2d points are float32 (N, D). Labels are int32 (N,)
    where the source has them, else None. A host's part of a training set sharded over
    several hosts (load's train_rows) holds training examples [train_start, train_start +
    len(train_images)) of num_train.
    """
    train_images: np.ndarray
    heldout_images: np.ndarray
    train_labels: np.ndarray | None
    heldout_labels: np.ndarray | None
    train_start: int = 0
    num_train: int | None = None   # None: all of them, len(train_images)

    @property
    def train(self) -> np.ndarray:
        """The training set in model space: a new float32 array, to_float(train_images)."""
        return to_float(self.train_images)

    @property
    def heldout(self) -> np.ndarray:
        """The held-out set in model space: a new float32 array, to_float(heldout_images)."""
        return to_float(self.heldout_images)

    @property
    def is_image(self) -> bool:
        """Whether the examples are uint8 images (not toy2d points)."""
        return self.train_images.dtype == np.uint8

    @property
    def image_shape(self) -> tuple[int, ...]:
        """Shape of one example, e.g. (8, 8, 1) or (2,)."""
        return self.train_images.shape[1:]


def load(config, train_rows=None) -> Dataset:
    """The data set that config.data (and config.seed) describe.

    The config's values are those diffgen.data.check_config accepts (diffgen.validation
    checks them before any work); what only reading can tell (a missing file, too few
    examples) is a DataError here. train_rows, a function num_train -> (start, stop), reads
    only training examples [start, min(stop, num_train)) (one host's part of a sharded
    training set); the subsets drawn, and the held-out set, are the same whatever it is.
    """
    d = config.data
    kind, argument = parse_source(d.source)
    transform = ImageTransform(d.center_crop, d.image_size)
    train_pool, heldout_pool = SOURCES[kind].pools(argument, config, transform)
    return _draw_subsets(train_pool, heldout_pool, d, seed=config.seed, train_rows=train_rows)


def source_images(config, max_images=65_536) -> np.ndarray:
    """The images of the whole source in model space (float32): its training pool and, where
    the source has its own held-out split, that pool too, whatever data.num_train and
    config.seed are; where there are more than max_images, a fixed random subset of
    max_images of them (drawn with a constant seed: the same for every run of the source)."""
    d = config.data
    kind, argument = parse_source(d.source)
    train_pool, heldout_pool = SOURCES[kind].pools(argument, config,
                                                   ImageTransform(d.center_crop, d.image_size))
    pools = [p for p in (train_pool, heldout_pool) if p is not None]
    total = sum(p.size for p in pools)
    chosen = np.arange(total)
    if total > max_images:
        chosen = np.sort(np.random.default_rng([_SUBSET_STREAM, 2]).choice(
            total, max_images, replace=False))
    parts, offset = [], 0
    for pool in pools:
        mine = chosen[(chosen >= offset) & (chosen < offset + pool.size)] - offset
        if mine.size:
            parts.append(to_float(pool.read(mine)[0]))
        offset += pool.size
    return np.concatenate(parts)


def _draw_subsets(train_pool, heldout_pool, data_config, *, seed: int,
                  train_rows=None) -> Dataset:
    """Draws the held-out then the training set (see the module docstring) and reads them."""
    d = data_config
    heldout_rng = np.random.default_rng([seed, _SUBSET_STREAM, 0])
    train_rng = np.random.default_rng([seed, _SUBSET_STREAM, 1])
    balanced = d.class_balanced
    remaining = np.arange(train_pool.size)
    if heldout_pool is None:
        heldout_pool = train_pool
        if d.num_heldout > train_pool.size:
            raise DataError(f'data.num_heldout={d.num_heldout} but {train_pool.name} has '
                            f'only {train_pool.size} examples')
        heldout_idx, remaining = _draw(train_pool, remaining, d.num_heldout, rng=heldout_rng,
                                       balanced=balanced)
    else:
        if d.num_heldout > heldout_pool.size:
            raise DataError(f'data.num_heldout={d.num_heldout} but {heldout_pool.name} has '
                            f'only {heldout_pool.size} examples')
        heldout_idx, _ = _draw(heldout_pool, np.arange(heldout_pool.size), d.num_heldout,
                               rng=heldout_rng, balanced=balanced)
    num_train = remaining.size if d.num_train == -1 else d.num_train
    if num_train == 0:   # data.num_train = -1 and no example is left to train on
        raise DataError(f'no examples of {train_pool.name} remain to train on' + (
            f' after data.num_heldout={d.num_heldout} held out of its {train_pool.size}; '
            'lower data.num_heldout' if heldout_pool is train_pool and d.num_heldout else ''))
    if num_train > remaining.size:
        raise DataError(f'data.num_train={num_train} but only {remaining.size} examples of '
                        f'{train_pool.name} remain after {heldout_idx.size} held out')
    train_idx, _ = _draw(train_pool, remaining, num_train, rng=train_rng, balanced=balanced)
    start, stop = train_rows(num_train) if train_rows else (0, num_train)
    start = min(start, num_train)
    train_images, train_labels = train_pool.read(train_idx[start:stop])
    heldout_images, heldout_labels = heldout_pool.read(heldout_idx)
    return Dataset(train_images, heldout_images, train_labels, heldout_labels, start,
                   num_train)


def _draw(pool, candidates: np.ndarray, num: int, *, rng: np.random.Generator,
          balanced: bool):
    """(num indices drawn from candidates, the candidates left), class-balanced when asked
    and the pool has labels."""
    labels = pool.labels[candidates] if balanced and pool.has_labels else None
    order = candidates[_random_order(candidates.size, labels, rng)]
    return order[:num], order[num:]


def _random_order(num: int, labels: np.ndarray | None, rng: np.random.Generator):
    """A random permutation of range(num). With labels, every prefix of it is class-balanced:
    examples are taken round-robin over the classes (in a random class order), a class
    dropping out when it is used up, so prefix class counts differ by at most one except
    for exhausted classes."""
    order = rng.permutation(num)
    if labels is None:
        return order
    _, class_of = np.unique(labels[order], return_inverse=True)
    by_class = np.argsort(class_of, kind='stable')
    sorted_classes = class_of[by_class]
    rank_in_class = np.empty(num, np.int64)
    rank_in_class[by_class] = np.arange(num) - np.searchsorted(sorted_classes, sorted_classes)
    class_priority = rng.permutation(class_of.max(initial=-1) + 1)[class_of]
    return order[np.lexsort((class_priority, rank_in_class))]
