"""Pixels and model space: uint8 images <-> float32 in [-1, 1], and the centre crop and
resize applied to images as a source reads them."""
from __future__ import annotations

import numpy as np
from PIL import Image

from diffgen.errors import DataError


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


class ImageTransform:
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
            resized = [Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image)
                       .resize((self.size, self.size), Image.Resampling.BICUBIC)
                       for image in images]
            images = np.stack([np.asarray(image) for image in resized])
            images = images.reshape(images.shape[:3] + (-1,))
        return images
