"""Where examples come from: the kinds of config.data.source, each registered in SOURCES
under the name before the colon, with the pools it reads examples from.

  digits        scikit-learn's 8x8 digits, written once as the TFDS dataset `diffgen_digits`
                (ArrayRecord) into the data dir, then read as tfds:diffgen_digits
  tfds:<name>   a TFDS dataset already prepared in the data dir in ArrayRecord format
                (features 'image' and, if present, 'label'); nothing is ever downloaded
  npz:<path>    a user's .npz file with key 'images' and optional key 'labels'
  toy2d:<name>  points of a 2-D toy distribution (diffgen/data/toy2d.py),
                config.data.toy2d_size of them in all
The data dir is config.data.data_dir, else $DIFFGEN_DATA_DIR, else ~/.diffgen/data.

A source gives a pool of training examples and, where it has splits, a pool of held-out
examples. A pool has `name`, `size`, `has_labels`, `labels` (int32 (size,), if it has them)
and `read(indices) -> (examples, labels or None)`, examples transformed (pixels.ImageTransform)
as they are read. TensorFlow and TFDS are imported only when a digits or tfds source is read.
"""
from __future__ import annotations

import functools
import io
import os
import time

import numpy as np
from absl import logging

from diffgen import files
from diffgen.data import digits_tfds, toy2d
from diffgen.data.pixels import ImageTransform, to_uint8
from diffgen.errors import ConfigError, DataError
from diffgen.progress import format_seconds
from diffgen.registry import Registry

SOURCES = Registry('data source')
_READ_BATCH = 1024       # examples per __getitems__ call on a TFDS data source
_PROGRESS_EVERY_S = 5.0  # seconds between progress lines of a long TFDS read
_HALF_LEVEL = 0.5 / 255  # half a pixel level of [0, 1]: float round-off tolerated in npz images
_MAX_LABELS = 65_536     # npz labels lie in 0.._MAX_LABELS - 1 (a class count, not an id)


class Source:
    """One kind of data source; each is registered in SOURCES under its kind.

    A kind defines the static method pools(argument, config, transform) -> (training pool,
    held-out pool or None) of config.data.source = kind:argument; a subclass without it is
    refused when its class is made."""
    argument = ''        # what follows 'kind:' in config.data.source ('': the kind alone)
    has_splits = False   # data.train_split and data.heldout_split name TFDS splits
    has_images = True    # data.center_crop and data.image_size apply (images, not points)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if not callable(getattr(cls, 'pools', None)):
            raise TypeError(f'data source {cls.__name__} must define the static method '
                            'pools(argument, config, transform)')

    @staticmethod
    def check_argument(argument: str, source: str) -> None:
        """Raises ConfigError unless this kind can read `argument` (checked without reading)."""


def source_forms() -> tuple[str, ...]:
    """The forms config.data.source takes, e.g. ('digits', 'tfds:<name>', ...)."""
    return tuple(f'{kind}:{SOURCES[kind].argument}' if SOURCES[kind].argument else kind
                 for kind in SOURCES)


def parse_source(source: str) -> tuple[str, str]:
    """Splits config.data.source into (kind, argument), e.g. ('tfds', 'cifar10'), or raises
    ConfigError naming the valid forms."""
    kind, colon, argument = source.partition(':')
    if kind in SOURCES and (bool(argument) if SOURCES[kind].argument else not colon):
        SOURCES[kind].check_argument(argument, source)
        return kind, argument
    raise ConfigError(f'data.source={source!r} is not one of {", ".join(source_forms())}')


def data_dir(configured: str) -> str:
    """The data dir: configured if non-empty, else $DIFFGEN_DATA_DIR, else ~/.diffgen/data.
    A DataError if it (or a folder on the way to it, on a local disk) is an existing file."""
    path = os.path.expanduser(configured or os.environ.get('DIFFGEN_DATA_DIR')
                              or '~/.diffgen/data')
    if '://' not in path:
        where = os.path.abspath(path)
        while not os.path.lexists(where) and os.path.dirname(where) != where:
            where = os.path.dirname(where)
        if not os.path.isdir(where):
            named = ('data.data_dir' if configured else
                     '$DIFFGEN_DATA_DIR' if os.environ.get('DIFFGEN_DATA_DIR') else 'the data dir')
            raise DataError(f'{named} {path} is not a directory ({where} is a file); name a '
                            'directory (a new one is created)')
    return path


@SOURCES.register('digits')
class DigitsSource(Source):
    """scikit-learn's digits, prepared as `diffgen_digits` in the data dir on first use."""
    has_splits = True

    @staticmethod
    def pools(argument, config, transform):
        tfds, root = import_tfds(), data_dir(config.data.data_dir)
        digits_tfds.prepare(tfds, root)
        return _split_pools(tfds, digits_tfds.NAME, config.data, root=root, transform=transform)


@SOURCES.register('tfds')
class TfdsSource(Source):
    """A TFDS dataset prepared in the data dir (ArrayRecord)."""
    argument = '<name>'
    has_splits = True

    @staticmethod
    def pools(argument, config, transform):
        tfds, root = import_tfds(), data_dir(config.data.data_dir)
        return _split_pools(tfds, argument, config.data, root=root, transform=transform)


@SOURCES.register('npz')
class NpzSource(Source):
    """A user's .npz file (see npz_pool)."""
    argument = '<path>'

    @staticmethod
    def pools(argument, config, transform):
        return npz_pool(argument, transform), None


@SOURCES.register('toy2d')
class Toy2dSource(Source):
    """config.data.toy2d_size points of toy2d.DISTRIBUTIONS[name], drawn from config.seed."""
    argument = '<name>'
    has_images = False

    @staticmethod
    def check_argument(argument, source):
        if argument not in toy2d.DISTRIBUTIONS:
            raise ConfigError(f'data.source={source!r}: unknown toy2d distribution; known: '
                              f'{", ".join(toy2d.DISTRIBUTIONS)}')

    @staticmethod
    def pools(argument, config, transform):
        points = toy2d.sample(argument, config.data.toy2d_size, config.seed)
        return ArrayPool(f'toy2d:{argument}', points, None, transform=transform), None


class ArrayPool:
    """Examples already in memory (npz, toy2d)."""

    def __init__(self, name: str, examples: np.ndarray, labels: np.ndarray | None, *,
                 transform: ImageTransform):
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


def npz_pool(path: str, transform: ImageTransform) -> ArrayPool:
    """The examples of a user's .npz file.

    Key 'images': uint8 (N, H, W) or (N, H, W, C) (a missing C becomes 1), N, H, W, C > 0;
    other integer dtypes with values in 0..255; or finite floats, whose range is decided from
    their minimum m (a pixel level is 1/255 of [0, 1]):
      m >= -0.5/255       [0, 1]: x * 255, rounded (and clipped: round-off around 0 and 1)
      m <= -0.5           [-1, 1]: to_uint8 (some pixel lies in the darker quarter)
      otherwise           ambiguous (too negative for round-off, too little for [-1, 1]):
                          a DataError asking for uint8 pixels.
    Optional key 'labels': integers in 0.._MAX_LABELS - 1 of shape (N,). A file cut short or
    damaged, or holding anything else (another shape, dtype or range), is a DataError naming
    it.
    """
    if not files.exists(path):
        raise DataError(f'npz file not found: {path}')
    try:
        with files.open_file(path, 'rb') as f:  # local or gs:// (E5 writes its halves there)
            archive = np.load(io.BytesIO(f.read()), allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise DataError(f'{path} is a single array, not an .npz archive with key "images"')
        with archive:
            if 'images' not in archive.files:
                raise DataError(f'{path} has no key "images" (keys: '
                                f'{", ".join(archive.files)})')
            images = archive['images']
            labels = archive['labels'] if 'labels' in archive.files else None
    except files.NPZ_ERRORS as e:
        raise DataError(f'cannot read {path} as .npz (cut short or damaged?): {e}') from e
    images = _npz_images(images, path)
    if labels is not None:
        if labels.shape != images.shape[:1] or not np.issubdtype(labels.dtype, np.integer):
            raise DataError(f'{path}: "labels" must be integers of shape ({images.shape[0]},), '
                            f'not {labels.dtype} {labels.shape}')
        if labels.min() < 0 or labels.max() >= _MAX_LABELS:
            raise DataError(f'{path}: "labels" must lie in 0..{_MAX_LABELS - 1}, found '
                            f'{labels.min()}..{labels.max()}')
        labels = labels.astype(np.int32)
    return ArrayPool(f'npz:{path}', images, labels, transform=transform)


def _npz_images(images: np.ndarray, path: str) -> np.ndarray:
    """The 'images' array of an .npz file as uint8 (N, H, W, C); see npz_pool."""
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or 0 in images.shape:
        raise DataError(f'{path}: "images" must be (N, H, W) or (N, H, W, C) with N, H, W, C '
                        f'> 0, not {images.shape}')
    if images.dtype == np.uint8:
        return images
    if np.issubdtype(images.dtype, np.integer):
        if images.min() < 0 or images.max() > 255:
            raise DataError(f'{path}: integer "images" must lie in 0..255, found '
                            f'{images.min()}..{images.max()}')
        return images.astype(np.uint8)
    if np.issubdtype(images.dtype, np.floating):
        return _float_pixels(images, path)
    raise DataError(f'{path}: "images" must be uint8, integers or floats, not {images.dtype}')


def _float_pixels(images: np.ndarray, path: str) -> np.ndarray:
    """Float images as uint8, their range [0, 1] or [-1, 1] decided by npz_pool's rule."""
    if not np.isfinite(images).all():
        raise DataError(f'{path}: float "images" must be finite')
    low, high = float(images.min()), float(images.max())
    if low >= -_HALF_LEVEL and high <= 1 + _HALF_LEVEL:
        return np.clip(np.rint(images.astype(np.float32) * 255), 0, 255).astype(np.uint8)
    if low <= -0.5 and low >= -1 - 2 * _HALF_LEVEL and high <= 1 + 2 * _HALF_LEVEL:
        return to_uint8(images)
    if -0.5 < low < -_HALF_LEVEL and high <= 1 + _HALF_LEVEL:
        raise DataError(f'{path}: float "images" range over {low:.4g}..{high:.4g}: neither '
                        f'[0, 1] (values below -0.5/255, more than round-off) nor clearly '
                        f'[-1, 1] (no value <= -0.5); save them as uint8 pixels 0..255')
    raise DataError(f'{path}: float "images" must lie in [0, 1] or [-1, 1], found '
                    f'{low:.4g}..{high:.4g}')


def _split_pools(tfds, name: str, data_config, *, root: str, transform: ImageTransform):
    """(pool of data.train_split, pool of data.heldout_split or None) of a TFDS dataset."""
    d = data_config
    train_pool = TfdsPool(tfds, name, d.train_split, root=root, transform=transform)
    heldout_pool = (TfdsPool(tfds, name, d.heldout_split, root=root, transform=transform)
                    if d.heldout_split else None)
    return train_pool, heldout_pool


class TfdsPool:
    """One split of a TFDS dataset prepared in ArrayRecord format, read by random access."""

    def __init__(self, tfds, name: str, split: str, *, root: str, transform: ImageTransform):
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
                logging.info('reading %s of %s: %d/%d  %.0f/s  ETA %s', what, self.name, done,
                             indices.size, rate, format_seconds((indices.size - done) / rate))


def import_tfds():
    """tensorflow_datasets, imported with TensorFlow's start-up log lines silenced and with
    TensorFlow kept off GPUs (it only encodes and decodes images here; JAX owns the GPUs)."""
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
    os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')
    import tensorflow as tf  # heavy and optional: only the digits and tfds sources need it
    import tensorflow_datasets as tfds  # heavy and optional, as tensorflow
    try:
        tf.config.set_visible_devices([], 'GPU')
    except RuntimeError:  # TensorFlow's devices were initialised before: leave them
        pass
    return tfds
