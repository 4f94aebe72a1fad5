"""The data layer: the digits TFDS dataset, tfds/npz/toy2d sources, subsets, conversions."""
import functools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import sklearn.datasets

from configs import default
from diffgen import data
from diffgen.data import digits_tfds, sources, toy2d
from diffgen.errors import ConfigError, DataError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_config(**data_overrides):
    config = default.get_config()
    config.data.update(data_overrides)
    return config


def rows(images, labels=None):
    """The examples as a sorted list of byte strings (a multiset, order ignored)."""
    flat = images.reshape(images.shape[0], -1)
    if labels is not None:
        flat = np.concatenate([flat, labels[:, None].astype(flat.dtype)], axis=1)
    return sorted(row.tobytes() for row in flat)


@pytest.fixture(scope='module')
def digits_dir(tmp_path_factory):
    """A data dir into which the first load writes diffgen_digits."""
    return str(tmp_path_factory.mktemp('digits_data'))


@pytest.fixture(scope='module')
def sklearn_digits():
    digits = sklearn.datasets.load_digits()
    return np.round(digits.images * 255 / 16).astype(np.uint8)[..., None], digits.target


def test_digits_written_as_array_record_and_read_back_exactly(digits_dir, sklearn_digits):
    ds = data.load(make_config(data_dir=digits_dir, num_heldout=0))
    version_dir = os.path.join(digits_dir, 'diffgen_digits', '1.0.0')
    assert any('.array_record' in name for name in os.listdir(version_dir))
    images, labels = sklearn_digits
    assert ds.train_images.dtype == np.uint8 and ds.train_images.shape == (1797, 8, 8, 1)
    assert ds.train_labels.dtype == np.int32
    assert rows(ds.train_images, ds.train_labels) == rows(images, labels)
    assert ds.heldout_images.shape == (0, 8, 8, 1) and ds.heldout_labels.shape == (0,)
    assert ds.is_image and ds.image_shape == (8, 8, 1)
    np.testing.assert_array_equal(ds.train, ds.train_images.astype(np.float32) / 127.5 - 1)

    import tensorflow_datasets as tfds  # the same records, in sklearn's order
    source = tfds.data_source('diffgen_digits', split='train', data_dir=digits_dir,
                              download=False)
    examples = source.__getitems__(list(range(len(source))))
    np.testing.assert_array_equal(np.stack([e['image'] for e in examples]), images)
    np.testing.assert_array_equal([e['label'] for e in examples], labels)


def test_second_load_does_not_rebuild(digits_dir, monkeypatch):
    data.load(make_config(data_dir=digits_dir))
    files = os.listdir(os.path.join(digits_dir, 'diffgen_digits', '1.0.0'))
    mtimes = {f: os.path.getmtime(os.path.join(digits_dir, 'diffgen_digits', '1.0.0', f))
              for f in files}

    def fail(*args, **kwargs):
        raise AssertionError('rebuilt')
    monkeypatch.setattr(digits_tfds.builder_class(sources.import_tfds()), 'download_and_prepare',
                        fail)
    data.load(make_config(data_dir=digits_dir, num_train=10))
    assert mtimes == {f: os.path.getmtime(os.path.join(digits_dir, 'diffgen_digits', '1.0.0',
                                                       f)) for f in files}


def test_data_dir_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv('DIFFGEN_DATA_DIR', str(tmp_path))
    assert data.data_dir('') == str(tmp_path)
    assert data.data_dir('/elsewhere') == '/elsewhere'
    monkeypatch.delenv('DIFFGEN_DATA_DIR')
    assert data.data_dir('') == os.path.expanduser('~/.diffgen/data')


def test_class_balanced_counts_in_every_prefix(digits_dir):
    ds = data.load(make_config(data_dir=digits_dir, num_train=64, num_heldout=256))
    assert sorted(set(np.bincount(ds.train_labels, minlength=10))) == [6, 7]
    assert sorted(set(np.bincount(ds.heldout_labels, minlength=10))) == [25, 26]
    everything = data.load(make_config(data_dir=digits_dir, num_heldout=256))
    for n in range(1, 400):
        counts = np.bincount(everything.train_labels[:n], minlength=10)
        assert counts.max() - counts.min() <= 1


def test_unbalanced_subsets_follow_the_class_frequencies(digits_dir):
    ds = data.load(make_config(data_dir=digits_dir, num_train=64, class_balanced=False))
    counts = np.bincount(ds.train_labels, minlength=10)
    assert counts.sum() == 64 and counts.max() - counts.min() > 1


def test_heldout_and_train_partition_the_split(digits_dir, sklearn_digits):
    ds = data.load(make_config(data_dir=digits_dir, num_heldout=300))
    assert ds.train_images.shape[0] == 1797 - 300 and ds.heldout_images.shape[0] == 300
    both = np.concatenate([ds.train_images, ds.heldout_images])
    both_labels = np.concatenate([ds.train_labels, ds.heldout_labels])
    assert rows(both, both_labels) == rows(*sklearn_digits)


def test_training_sets_are_nested_and_seeded(digits_dir):
    small = data.load(make_config(data_dir=digits_dir, num_train=100))
    full = data.load(make_config(data_dir=digits_dir))
    np.testing.assert_array_equal(small.train_images, full.train_images[:100])
    np.testing.assert_array_equal(small.heldout_images, full.heldout_images)
    other = make_config(data_dir=digits_dir, num_train=100)
    other.seed = 1
    assert not np.array_equal(data.load(other).train_images, small.train_images)


def test_num_train_too_large_is_one_line_data_error(digits_dir):
    with pytest.raises(DataError, match='num_train=1600.*1541') as info:
        data.load(make_config(data_dir=digits_dir, num_train=1600))
    assert '\n' not in str(info.value)
    with pytest.raises(DataError, match='num_heldout=2000.*1797'):
        data.load(make_config(data_dir=digits_dir, num_heldout=2000))


def test_unknown_split_is_data_error(digits_dir):
    with pytest.raises(DataError, match="'test'.*train"):
        data.load(make_config(data_dir=digits_dir, heldout_split='test'))


def test_center_crop_and_resize(digits_dir):
    ds = data.load(make_config(data_dir=digits_dir, center_crop=6, image_size=12,
                               num_heldout=10, num_train=20))
    assert ds.train_images.shape == (20, 12, 12, 1) and ds.heldout_images.shape == (10, 12, 12, 1)
    cropped = data.load(make_config(data_dir=digits_dir, center_crop=6, num_train=20))
    plain = data.load(make_config(data_dir=digits_dir, num_train=20))
    np.testing.assert_array_equal(cropped.train_images, plain.train_images[:, 1:7, 1:7])
    with pytest.raises(DataError, match='center_crop=9'):
        data.load(make_config(data_dir=digits_dir, center_crop=9))


# --- tfds:<name>, with a tiny dataset written by a builder defined here ----------------------

@functools.cache
def tiny_builder_class():
    """A TFDS builder `diffgen_test_tiny`: 'train' of 30 and 'test' of 12 RGB 4x4 images;
    example i (over both splits) is the constant image 5i with label i % 3."""
    tfds = sources.import_tfds()

    class DiffgenTestTiny(tfds.core.GeneratorBasedBuilder):
        """Tiny test dataset."""
        VERSION = tfds.core.Version('1.0.0')

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                'image': tfds.features.Image(shape=(4, 4, 3)),
                'label': tfds.features.ClassLabel(num_classes=3)}))

        def _split_generators(self, dl_manager):
            del dl_manager  # nothing to download
            return {'train': self._generate_examples(range(30)),
                    'test': self._generate_examples(range(30, 42))}

        def _generate_examples(self, indices):
            for i in indices:
                yield i, {'image': np.full((4, 4, 3), 5 * i, np.uint8), 'label': i % 3}

    return DiffgenTestTiny


@pytest.fixture(scope='module')
def tiny_dir(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('tiny_data'))
    tfds = sources.import_tfds()
    tiny_builder_class()(data_dir=root).download_and_prepare(
        file_format='array_record',
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    return root


def test_tfds_source_reads_train_and_heldout_splits(tiny_dir):
    ds = data.load(make_config(source='tfds:diffgen_test_tiny', data_dir=tiny_dir,
                               heldout_split='test', num_heldout=6, num_train=-1))
    values = ds.train_images[:, 0, 0, 0] // 5
    assert sorted(values) == list(range(30))
    np.testing.assert_array_equal(ds.train_labels, values % 3)
    assert (ds.train_images == ds.train_images[:, :1, :1, :1]).all()
    heldout = ds.heldout_images[:, 0, 0, 0] // 5
    assert set(heldout) <= set(range(30, 42)) and len(set(heldout)) == 6
    np.testing.assert_array_equal(np.bincount(ds.heldout_labels), [2, 2, 2])
    np.testing.assert_array_equal(ds.heldout_labels, heldout % 3)


def test_tfds_dataset_not_prepared_says_how_to_prepare(tmp_path):
    with pytest.raises(DataError, match='tfds build cifar10 .*--file_format=array_record'):
        data.load(make_config(source='tfds:cifar10', data_dir=str(tmp_path)))
    with pytest.raises(DataError, match='no_such_dataset_xyz'):
        data.load(make_config(source='tfds:no_such_dataset_xyz', data_dir=str(tmp_path)))


# --- npz:<path> -------------------------------------------------------------------------------

def test_npz_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (50, 6, 6), dtype=np.uint8)
    labels = np.arange(50) % 5
    path = str(tmp_path / 'mine.npz')
    np.savez(path, images=images, labels=labels)
    ds = data.load(make_config(source=f'npz:{path}', num_heldout=10, num_train=-1))
    assert ds.image_shape == (6, 6, 1) and ds.train_labels.dtype == np.int32
    both = np.concatenate([ds.train_images, ds.heldout_images])[..., 0]
    both_labels = np.concatenate([ds.train_labels, ds.heldout_labels])
    assert rows(both, both_labels) == rows(images, labels)
    np.testing.assert_array_equal(np.bincount(ds.heldout_labels), [2] * 5)

    np.savez(path, images=data.to_float(images)[..., None])  # floats in [-1, 1]
    ds = data.load(make_config(source=f'npz:{path}', num_heldout=0))
    assert ds.train_labels is None and rows(ds.train_images) == rows(images[..., None])
    np.savez(path, images=images[..., None] / 255.0)          # floats in [0, 1]
    ds = data.load(make_config(source=f'npz:{path}', num_heldout=0))
    assert rows(ds.train_images) == rows(images[..., None])


def test_npz_errors(tmp_path):
    missing = str(tmp_path / 'absent.npz')
    with pytest.raises(DataError, match=missing):
        data.load(make_config(source=f'npz:{missing}'))
    path = str(tmp_path / 'bad.npz')
    for arrays, message in [
            (dict(images=np.zeros((4, 8), np.uint8)), 'must be'),
            (dict(images=np.zeros((4, 2, 2), bool)), 'bool'),
            (dict(images=np.full((4, 2, 2), 3.0)), r'\[0, 1\] or \[-1, 1\]'),
            (dict(images=np.full((4, 2, 2), 300)), '0..255'),
            (dict(images=np.zeros((4, 2, 2), np.uint8), labels=np.zeros(3, int)), 'labels'),
            (dict(pixels=np.zeros((4, 2, 2), np.uint8)), 'no key "images"')]:
        np.savez(path, **arrays)
        with pytest.raises(DataError, match=message):
            data.load(make_config(source=f'npz:{path}', num_heldout=0))


# --- toy2d:<name> -----------------------------------------------------------------------------

@pytest.mark.parametrize('name', sorted(toy2d.DISTRIBUTIONS))
def test_toy2d_shapes_and_determinism(name):
    config = make_config(source=f'toy2d:{name}', toy2d_size=1000, num_heldout=200,
                         num_train=500)
    ds = data.load(config)
    assert ds.train_images.shape == (500, 2) and ds.heldout_images.shape == (200, 2)
    assert ds.train_images.dtype == np.float32 and not ds.is_image and ds.image_shape == (2,)
    assert ds.train_labels is None
    np.testing.assert_array_equal(ds.train, ds.train_images)
    np.testing.assert_array_equal(data.load(config).train_images, ds.train_images)
    config.seed = 1
    assert not np.array_equal(data.load(config).train_images, ds.train_images)
    assert np.abs(ds.train_images).max() < 5


def test_toy2d_distributions_have_their_support():
    points = toy2d.sample('gmm8', 4000, seed=0)
    np.testing.assert_allclose(np.linalg.norm(points, axis=1), 2.0, atol=0.5)
    np.testing.assert_allclose(points.mean(0), 0.0, atol=0.1)
    cells = np.floor(toy2d.sample('checkerboard', 4000, seed=0)).astype(int) + 2
    assert ((cells >= 0) & (cells < 4)).all() and (cells.sum(1) % 2 == 0).all()
    gaussian = toy2d.sample('gaussian', 20000, seed=0)
    np.testing.assert_allclose(np.cov(gaussian.T), np.eye(2), atol=0.05)


def test_toy2d_and_npz_do_not_import_tensorflow(tmp_path):
    path = str(tmp_path / 'x.npz')
    np.savez(path, images=np.zeros((4, 2, 2), np.uint8))
    script = ('import sys\nfrom configs import default\nfrom diffgen import data\n'
              'c = default.get_config(); c.data.num_heldout = 0\n'
              "c.data.source = 'toy2d:gmm8'; data.load(c)\n"
              f"c.data.source = 'npz:{path}'; data.load(c)\n"
              "assert 'tensorflow' not in sys.modules, 'tensorflow imported'\n")
    subprocess.run([sys.executable, '-c', script], cwd=REPO, check=True)


# --- sources and conversions ------------------------------------------------------------------

@pytest.mark.parametrize('source', ['mnist', 'tfds:', 'toy2d:spiral', 'npz:', 'digits:x'])
def test_unknown_source_is_config_error(source):
    with pytest.raises(ConfigError, match='digits|gmm8'):
        data.load(make_config(source=source))


def test_config_checks_follow_the_source_kind():
    data.check_config(make_config(source='digits', heldout_split='test', image_size=16))
    with pytest.raises(ConfigError, match='heldout_split'):
        data.check_config(make_config(source='toy2d:gmm8', heldout_split='test'))
    with pytest.raises(ConfigError, match='image_size apply to images'):
        data.check_config(make_config(source='toy2d:gmm8', image_size=16))


def test_source_forms_come_from_the_registry():
    assert data.source_forms() == ('digits', 'tfds:<name>', 'npz:<path>', 'toy2d:<name>')
    assert data.parse_source('tfds:cifar10') == ('tfds', 'cifar10')
    assert data.parse_source('npz:a:b.npz') == ('npz', 'a:b.npz')


def test_to_float_to_uint8_round_trip():
    pixels = np.arange(256, dtype=np.uint8)
    x = data.to_float(pixels)
    assert x.dtype == np.float32 and x[0] == -1 and x[-1] == 1
    np.testing.assert_array_equal(data.to_uint8(x), pixels)
    jitted = jax.jit(data.to_float)(jnp.asarray(pixels))
    np.testing.assert_allclose(np.asarray(jitted), x, atol=1e-6)
    np.testing.assert_array_equal(data.to_uint8(jitted), pixels)
    np.testing.assert_array_equal(data.to_uint8(np.array([-3.0, -1.0, 0.0, 1.0, 3.0])),
                                  [0, 0, 128, 255, 255])


def test_a_source_kind_without_pools_is_refused():
    from diffgen.data import sources
    with pytest.raises(TypeError, match='must define the static method pools'):
        class NoPools(sources.Source):  # noqa: F841
            argument = '<name>'
