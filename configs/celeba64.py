"""CelebA 64x64 with the DDPM paper's settings (Ho et al. 2020, Appendix B).

Needs `celeb_a` prepared in ArrayRecord format in the data dir (no download at run time).
Images are centre-cropped to 140x140 and resized to 64x64 when loaded.
"""
from configs import cifar10, common


def get_config(arg=None):
    common.parse_arg(arg)  # no arguments: any is an error
    config = cifar10.get_config()
    config.data.source = 'tfds:celeb_a'
    config.data.heldout_split = 'validation'
    config.data.center_crop = 140
    config.data.image_size = 64
    config.model.ch_mult = (1, 1, 2, 2, 4, 4)
    config.model.attn_resolutions = (16,)
    return config
