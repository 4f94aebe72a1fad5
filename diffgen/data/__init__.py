"""The data layer: training and held-out examples, in memory, chosen from a source by config.

    sources.py      the kinds of config.data.source (SOURCES: digits, tfds:<name>, npz:<path>,
                    toy2d:<name>) and the pools they read examples from
    dataset.py      Dataset and load(config): the held-out and training subsets drawn
    pixels.py       uint8 pixels <-> model space [-1, 1]; the centre crop and resize
    toy2d.py        the 2-D toy distributions of toy2d:<name>
    digits_tfds.py  scikit-learn's digits as the TFDS dataset diffgen_digits

    from diffgen import data
    ds = data.load(config)   # ds.train, ds.heldout: float32 in [-1, 1]
"""
from diffgen.data.dataset import Dataset, load
from diffgen.data.pixels import to_float, to_uint8
from diffgen.data.sources import SOURCES, data_dir, parse_source, source_forms
from diffgen.errors import require

__all__ = ['SOURCES', 'Dataset', 'check_config', 'data_dir', 'load', 'parse_source',
           'source_forms', 'to_float', 'to_uint8']


def check_config(config):
    """The data section's values (config validation; nothing is read)."""
    d = config.data
    source = SOURCES[parse_source(d.source)[0]]
    require(d.num_train == -1 or d.num_train >= 1, 'data.num_train must be -1 (all) or >= 1')
    require(d.num_heldout >= 0, 'data.num_heldout must be >= 0')
    require(d.toy2d_size >= 2, 'data.toy2d_size must be >= 2')
    require(d.center_crop >= 0 and d.image_size >= 0,
            'data.center_crop and data.image_size must be >= 0 (0 = as stored)')
    require(source.has_splits or not d.heldout_split,
            f'data.heldout_split={d.heldout_split!r}: only TFDS sources have splits, not '
            f'{d.source!r}')
    require(source.has_images or not (d.center_crop or d.image_size),
            f'data.center_crop and data.image_size apply to images, not to the points of '
            f'{d.source!r}')
