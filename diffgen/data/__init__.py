"""The in-memory data set: training and held-out examples chosen from a source by config.

Sources (config.data.source):
  digits        scikit-learn's 8x8 digits, written once as the TFDS dataset
                `diffgen_digits` (ArrayRecord) into the data dir, then read as tfds:diffgen_digits
  tfds:<name>   a TFDS dataset already prepared in the data dir in ArrayRecord format
                (features 'image' and, if present, 'label'); nothing is ever downloaded
  npz:<path>    a user's .npz file with key 'images' and optional key 'labels'
  toy2d:<name>  points of a 2-D toy distribution (diffgen/toy2d.py), config.data.toy2d_size
                of them in all
The data dir is config.data.data_dir, else $DIFFGEN_DATA_DIR, else ~/.diffgen/data.
Images are centre-cropped to config.data.center_crop and resized to config.data.image_size
(each if non-zero) as they are read.

Subsets, drawn with numpy RNGs seeded from config.seed: the held-out set (num_heldout
examples) comes from config.data.heldout_split or, if that is '', is carved out of the
training split first; the training set is num_train of the examples that remain (-1: all).
With labels and config.data.class_balanced, class counts are as equal as possible. Each
set is in the order it was drawn, so train_images[:n] is the training set that
num_train=n would give (the same held-out set is kept out of it).

TensorFlow and TFDS are imported only when a digits or tfds source is loaded.
"""
from __future__ import annotations

import dataclasses
import functools
import io
import os
import time

import numpy as np

from diffgen import files
from diffgen.data import toy2d
from diffgen.errors import ConfigError, DataError, require
from diffgen.progress import format_seconds

SOURCE_FORMS = ('digits', 'tfds:<name>', 'npz:<path>', 'toy2d:<name>')
_SUBSET_STREAM = 0x5EB5  # separates the subset-choice random streams from the others
_READ_BATCH = 1024       # examples per __getitems__ call on a TFDS data source
_PROGRESS_EVERY_S = 5.0  # seconds between progress lines of a long TFDS read


def to_float(x):
    """Pixels to model space: uint8 (any integer dtype) x -> x / 127.5 - 1 in float32;
    floating x (toy2d points, already model space) -> x as float32. Works on numpy arrays
    and on jax arrays inside jit."""
    if np.issubdtype(x.dtype, np.integer):
        return x.astype(np.float32) / 127.5 - 1.0
    return x.astype(np.float32)


def to_uint8(x) -> np.ndarray:
    """Model space to pixels, the inverse of to_float: round((x + 1) * 127.5) clipped to
    0..255, as a numpy uint8 array."""
    pixels = np.rint((np.asarray(x, np.float32) + 1.0) * 127.5)
    return np.clip(pixels, 0, 255).astype(np.uint8)


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


def parse_source(source: str) -> tuple[str, str]:
    """Splits config.data.source into (kind, argument), e.g. ('tfds', 'cifar10'), or raises
    ConfigError naming the valid forms."""
    kind, _, arg = source.partition(':')
    if source == 'digits':
        return 'digits', ''
    if kind in ('tfds', 'npz') and arg:
        return kind, arg
    if kind == 'toy2d' and arg:
        if arg not in toy2d.DISTRIBUTIONS:
            raise ConfigError(f'data.source={source!r}: unknown toy2d distribution; known: '
                              f'{", ".join(toy2d.DISTRIBUTIONS)}')
        return kind, arg
    raise ConfigError(f'data.source={source!r} is not one of {", ".join(SOURCE_FORMS)}')


def check_config(config):
    """The data section's values (config validation; nothing is read)."""
    d = config.data
    parse_source(d.source)
    require(d.num_train == -1 or d.num_train >= 1, 'data.num_train must be -1 (all) or >= 1')
    require(d.num_heldout >= 0, 'data.num_heldout must be >= 0')
    require(d.toy2d_size >= 2, 'data.toy2d_size must be >= 2')


def data_dir(configured: str) -> str:
    """The data dir: configured if non-empty, else $DIFFGEN_DATA_DIR, else ~/.diffgen/data."""
    path = configured or os.environ.get('DIFFGEN_DATA_DIR') or '~/.diffgen/data'
    return os.path.expanduser(path)


def load(config, train_rows=None) -> Dataset:
    """The data set that config.data (and config.seed) describe.

    train_rows, a function num_train -> (start, stop), reads only training examples
    [start, min(stop, num_train)) (one host's part of a sharded training set); the subsets
    drawn, and the held-out set, are the same whatever it is.
    """
    cfg = config.data
    kind, arg = parse_source(cfg.source)
    if cfg.num_train == 0 or cfg.num_train < -1:
        raise ConfigError(f'data.num_train={cfg.num_train}: must be positive or -1 (all)')
    if cfg.num_heldout < 0:
        raise ConfigError(f'data.num_heldout={cfg.num_heldout}: must be >= 0')
    if cfg.center_crop < 0 or cfg.image_size < 0:
        raise ConfigError('data.center_crop and data.image_size must be >= 0 (0 = as stored)')
    transform = _ImageTransform(cfg.center_crop, cfg.image_size)
    if kind in ('digits', 'tfds'):
        root = data_dir(cfg.data_dir)
        tfds = _import_tfds()
        name = arg
        if kind == 'digits':
            from diffgen.data import digits_tfds
            digits_tfds.prepare(root)
            name = digits_tfds.NAME
        train_pool = _TfdsPool(tfds, name, cfg.train_split, root, transform)
        heldout_pool = (_TfdsPool(tfds, name, cfg.heldout_split, root, transform)
                        if cfg.heldout_split else None)
    else:
        if cfg.heldout_split:
            raise ConfigError(f'data.heldout_split={cfg.heldout_split!r}: only TFDS sources '
                              f'have splits, not {cfg.source!r}')
        heldout_pool = None
        if kind == 'npz':
            train_pool = _npz_pool(arg, transform)
        else:
            if transform.active:
                raise ConfigError(f'data.center_crop and data.image_size apply to images, '
                                  f'not to the points of {cfg.source!r}')
            train_pool = _ArrayPool(cfg.source, toy2d.sample(arg, cfg.toy2d_size, config.seed),
                                    None, transform)
    return _draw_subsets(train_pool, heldout_pool, cfg, config.seed, train_rows)


def _draw_subsets(train_pool, heldout_pool, cfg, seed: int, train_rows=None) -> Dataset:
    """Draws the held-out then the training set (see the module docstring) and reads them."""
    heldout_rng = np.random.default_rng([seed, _SUBSET_STREAM, 0])
    train_rng = np.random.default_rng([seed, _SUBSET_STREAM, 1])
    balanced = cfg.class_balanced
    remaining = np.arange(train_pool.size)
    if heldout_pool is None:
        heldout_pool = train_pool
        if cfg.num_heldout > train_pool.size:
            raise DataError(f'data.num_heldout={cfg.num_heldout} but {train_pool.name} has '
                            f'only {train_pool.size} examples')
        heldout_idx, remaining = _draw(train_pool, remaining, cfg.num_heldout, heldout_rng,
                                       balanced)
    else:
        if cfg.num_heldout > heldout_pool.size:
            raise DataError(f'data.num_heldout={cfg.num_heldout} but {heldout_pool.name} has '
                            f'only {heldout_pool.size} examples')
        heldout_idx, _ = _draw(heldout_pool, np.arange(heldout_pool.size), cfg.num_heldout,
                               heldout_rng, balanced)
    num_train = remaining.size if cfg.num_train == -1 else cfg.num_train
    if num_train > remaining.size:
        raise DataError(f'data.num_train={num_train} but only {remaining.size} examples of '
                        f'{train_pool.name} remain after {heldout_idx.size} held out')
    train_idx, _ = _draw(train_pool, remaining, num_train, train_rng, balanced)
    start, stop = train_rows(num_train) if train_rows else (0, num_train)
    start = min(start, num_train)
    train_images, train_labels = train_pool.read(train_idx[start:stop])
    heldout_images, heldout_labels = heldout_pool.read(heldout_idx)
    return Dataset(train_images, heldout_images, train_labels, heldout_labels, start,
                   num_train)


def _draw(pool, candidates: np.ndarray, num: int, rng: np.random.Generator, balanced: bool):
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


class _ImageTransform:
    """Centre crop to a crop x crop square, then resize to size x size (PIL, bicubic with
    antialiasing); a zero skips that step. Applied to uint8 batches (n, H, W, C)."""

    def __init__(self, crop: int, size: int):
        self.crop, self.size = crop, size
        self.active = bool(crop or size)

    def shape(self, shape: tuple[int, ...], name: str) -> tuple[int, ...]:
        """The shape (H', W', C) that images of shape (H, W, C) of source name become."""
        height, width, channels = shape
        if self.crop:
            if self.crop > min(height, width):
                raise DataError(f'data.center_crop={self.crop} is larger than the '
                                f'{height}x{width} images of {name}')
            height = width = self.crop
        if self.size:
            if channels not in (1, 3, 4):
                raise DataError(f'data.image_size: cannot resize the {channels}-channel '
                                f'images of {name} (1, 3 or 4 channels only)')
            height = width = self.size
        return height, width, channels

    def __call__(self, images: np.ndarray) -> np.ndarray:
        if self.crop:
            top = (images.shape[1] - self.crop) // 2
            left = (images.shape[2] - self.crop) // 2
            images = images[:, top:top + self.crop, left:left + self.crop]
        if self.size and images.shape[0]:
            from PIL import Image
            resized = [Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image)
                       .resize((self.size, self.size), Image.Resampling.BICUBIC)
                       for image in images]
            images = np.stack([np.asarray(image) for image in resized])
            images = images.reshape(images.shape[:3] + (-1,))
        return images


class _ArrayPool:
    """Examples already in memory (npz, toy2d)."""

    def __init__(self, name: str, examples: np.ndarray, labels: np.ndarray | None,
                 transform: _ImageTransform):
        self.name = name
        self.size = examples.shape[0]
        self.has_labels = labels is not None
        self.labels = labels
        self._examples = examples
        self._transform = transform
        if transform.active:
            transform.shape(examples.shape[1:], name)

    def read(self, indices: np.ndarray):
        """(examples[indices] transformed, labels[indices] or None)."""
        labels = self.labels[indices] if self.has_labels else None
        return self._transform(self._examples[indices]), labels


def _npz_pool(path: str, transform: _ImageTransform) -> _ArrayPool:
    """The examples of a user's .npz file.

    Key 'images': uint8 (N, H, W) or (N, H, W, C) (a missing C becomes 1); other integer
    dtypes with values in 0..255; or floats, read as [0, 1] (x * 255, rounded) when no value
    is negative and as [-1, 1] (to_uint8) otherwise. Optional key 'labels': integers (N,).
    """
    if not files.exists(path):
        raise DataError(f'npz file not found: {path}')
    try:
        with files.open_file(path, 'rb') as f:  # local or gs:// (E5 writes its halves there)
            archive = np.load(io.BytesIO(f.read()), allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DataError(f'cannot read {path} as .npz: {e}') from e
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise DataError(f'{path} is a single array, not an .npz archive with key "images"')
    with archive:
        if 'images' not in archive.files:
            raise DataError(f'{path} has no key "images" (keys: {", ".join(archive.files)})')
        images = _npz_images(archive['images'], path)
        labels = archive['labels'] if 'labels' in archive.files else None
    if labels is not None:
        if labels.shape != images.shape[:1] or not np.issubdtype(labels.dtype, np.integer):
            raise DataError(f'{path}: "labels" must be integers of shape ({images.shape[0]},), '
                            f'not {labels.dtype} {labels.shape}')
        labels = labels.astype(np.int32)
    return _ArrayPool(f'npz:{path}', images, labels, transform)


def _npz_images(images: np.ndarray, path: str) -> np.ndarray:
    """The 'images' array of an .npz file as uint8 (N, H, W, C); see _npz_pool."""
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[0] == 0:
        raise DataError(f'{path}: "images" must be (N, H, W) or (N, H, W, C) with N > 0, '
                        f'not {images.shape}')
    if images.dtype == np.uint8:
        return images
    if np.issubdtype(images.dtype, np.integer):
        if images.min() < 0 or images.max() > 255:
            raise DataError(f'{path}: integer "images" must lie in 0..255, found '
                            f'{images.min()}..{images.max()}')
        return images.astype(np.uint8)
    if np.issubdtype(images.dtype, np.floating):
        if not np.isfinite(images).all() or images.min() < -1 or images.max() > 1:
            raise DataError(f'{path}: float "images" must be finite and lie in [0, 1] or '
                            f'[-1, 1], found {images.min()}..{images.max()}')
        if images.min() >= 0:
            return np.rint(images.astype(np.float32) * 255).astype(np.uint8)
        return to_uint8(images)
    raise DataError(f'{path}: "images" must be uint8, integers or floats, not {images.dtype}')


class _TfdsPool:
    """One split of a TFDS dataset prepared in ArrayRecord format, read by random access."""

    def __init__(self, tfds, name: str, split: str, root: str, transform: _ImageTransform):
        self.name = f'tfds:{name}[{split}]'
        self._tfds = tfds
        self._args = dict(name=name, split=split, data_dir=root, download=False)
        try:
            builder = tfds.builder(name, data_dir=root)
        except tfds.core.registered.DatasetNotFoundError as e:
            raise DataError(f'TFDS dataset {name!r} is neither known to TFDS nor present in '
                            f'{root}') from e
        prepare = (f'prepare it on a machine with internet with `tfds build {name} '
                   f'--data_dir={root} --file_format=array_record` (or copy it there)')
        # TFDS renames a finished dataset into place: its folder exists once it is prepared.
        if not builder.data_path.exists():
            raise DataError(f'TFDS dataset {name!r} is not prepared in {root}: {prepare}')
        if tfds.core.FileFormat.ARRAY_RECORD not in builder.info.available_file_formats():
            raise DataError(f'TFDS dataset {name!r} in {root} is not in ArrayRecord format: '
                            f'{prepare}')
        features = builder.info.features
        if 'image' not in features:
            raise DataError(f'TFDS dataset {name!r} has no "image" feature (features: '
                            f'{", ".join(features)})')
        image = features['image']
        if None in image.shape or image.np_dtype != np.uint8:
            raise DataError(f'TFDS dataset {name!r}: images must be uint8 of one fixed shape, '
                            f'not {image.np_dtype.__name__} {image.shape}')
        self.image_shape = transform.shape(tuple(image.shape), self.name)
        self._transform = transform
        self.has_labels = 'label' in features
        try:
            self._source = tfds.data_source(**self._args)
        except ValueError as e:  # an unknown split or a malformed split spec
            raise DataError(f'TFDS dataset {name!r}: split {split!r} is not available '
                            f'(splits: {", ".join(builder.info.splits)}): {e}') from e
        self.size = len(self._source)

    @functools.cached_property
    def labels(self) -> np.ndarray:
        """Every label of the split, int32 (read once, images left undecoded)."""
        source = self._tfds.data_source(
            **self._args, decoders={'image': self._tfds.decode.SkipDecoding()})
        labels = np.empty(self.size, np.int32)
        for chunk, examples in self._read_chunks(source, np.arange(self.size), 'labels'):
            labels[chunk] = [example['label'] for example in examples]
        return labels

    def read(self, indices: np.ndarray):
        """(uint8 images (n, H, W, C), int32 labels (n,) or None) of the examples at indices,
        read in index order in batches, transformed and placed in the order given."""
        images = np.empty((indices.size,) + self.image_shape, np.uint8)
        labels = np.empty(indices.size, np.int32) if self.has_labels else None
        by_index = np.argsort(indices, kind='stable')
        for chunk, examples in self._read_chunks(self._source, indices[by_index], 'images'):
            places = by_index[chunk]
            images[places] = self._transform(np.stack([ex['image'] for ex in examples]))
            if self.has_labels:
                labels[places] = [example['label'] for example in examples]
        return images, labels

    def _read_chunks(self, source, indices: np.ndarray, what: str):
        """Yields (slice of positions in indices, examples there) in batches, printing progress
        every few seconds."""
        start = last_log = time.monotonic()
        for begin in range(0, indices.size, _READ_BATCH):
            chunk = slice(begin, min(begin + _READ_BATCH, indices.size))
            yield chunk, source.__getitems__(indices[chunk].tolist())
            now = time.monotonic()
            if now - last_log >= _PROGRESS_EVERY_S:
                last_log = now
                done = chunk.stop
                rate = done / (now - start)
                print(f'reading {what} of {self.name}: {done}/{indices.size}  {rate:.0f}/s  '
                      f'ETA {format_seconds((indices.size - done) / rate)}', flush=True)


def _import_tfds():
    """tensorflow_datasets, imported with TensorFlow's start-up log lines silenced and with
    TensorFlow kept off GPUs (it only encodes and decodes images here; JAX owns the GPUs)."""
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
    os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
    import tensorflow as tf
    import tensorflow_datasets as tfds
    try:
        tf.config.set_visible_devices([], 'GPU')
    except RuntimeError:  # TensorFlow's devices were initialised before: leave them
        pass
    return tfds
