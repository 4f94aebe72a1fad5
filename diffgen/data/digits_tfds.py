"""scikit-learn's 8x8 handwritten digits as a TFDS dataset, `diffgen_digits`.

The 1797 images (sklearn.datasets.load_digits, grey levels 0..16, bundled with
scikit-learn, no download) are scaled to uint8 by round(v * 255 / 16) and written once,
as ArrayRecord, into the data dir; from then on they are read like any other prepared
TFDS dataset. Example i of the split 'train' is scikit-learn's example i.

TensorFlow Datasets is heavy and optional: the caller imports it (data.sources.import_tfds)
and passes the module in, and the builder class is defined on first use.
"""
import contextlib
import functools
import io
import os

import numpy as np
import sklearn.datasets
from absl import logging

from diffgen import files

NAME = 'diffgen_digits'


def scaled_digits():
    """scikit-learn's digits as (uint8 images (1797, 8, 8, 1), int64 labels (1797,))."""
    digits = sklearn.datasets.load_digits()
    images = np.rint(digits.images * (255 / 16)).astype(np.uint8)[..., None]
    return images, digits.target


@functools.cache
def builder_class(tfds):
    """The TFDS builder of `diffgen_digits`: image (8, 8, 1) uint8, label 0..9, split 'train'.
    Defined once: TFDS registers a builder class under its name when the class is made."""

    class DiffgenDigits(tfds.core.GeneratorBasedBuilder):
        """scikit-learn's 8x8 digits."""
        VERSION = tfds.core.Version('1.0.0')
        RELEASE_NOTES = {'1.0.0': 'sklearn load_digits, grey levels scaled by 255/16.'}

        def _info(self):
            return tfds.core.DatasetInfo(
                builder=self,
                description='scikit-learn load_digits: 1797 8x8 images, grey levels '
                            'round(v * 255 / 16), labels 0..9, in scikit-learn order.',
                features=tfds.features.FeaturesDict({
                    'image': tfds.features.Image(shape=(8, 8, 1)),
                    'label': tfds.features.ClassLabel(num_classes=10),
                }),
                supervised_keys=('image', 'label'),
                disable_shuffling=True,
                homepage='https://scikit-learn.org/stable/datasets/toy_dataset.html',
            )

        def _split_generators(self, dl_manager):
            del dl_manager  # nothing to download
            return {'train': self._generate_examples()}

        def _generate_examples(self):
            images, labels = scaled_digits()
            for i, (image, label) in enumerate(zip(images, labels)):
                yield i, {'image': image, 'label': int(label)}

    return DiffgenDigits


def prepare(tfds, data_dir: str) -> None:
    """Writes `diffgen_digits` as ArrayRecord into data_dir unless it is already there.

    Safe when several runs start on a fresh data dir at once (launch.sweep --parallel): the
    first prepares it holding <data_dir>/.diffgen_digits.lock (files.shared_lock), the others
    wait and then find it prepared. On a bucket (no lock), a run that loses the race to
    rename its copy into place takes the twin that finished first."""
    builder = builder_class(tfds)(data_dir=data_dir)
    # TFDS renames a finished dataset into place: its folder exists once it is prepared.
    if builder.data_path.exists():
        return
    with files.shared_lock(os.path.join(data_dir, f'.{NAME}.lock'), f'preparing {NAME}'):
        if builder.data_path.exists():  # prepared by a run that held the lock before
            return
        logging.info('writing the %s dataset into %s (once)', NAME, data_dir)
        tfds.disable_progress_bar()  # its lines and bars are TFDS's talk, not diffgen's output
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                builder.download_and_prepare(
                    file_format='array_record',
                    download_config=tfds.download.DownloadConfig(try_download_gcs=False))
        except OSError:
            if not builder.data_path.exists():  # not a twin that finished first
                raise
