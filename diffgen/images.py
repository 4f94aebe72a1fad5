"""Pictures of samples: image grids (PNG) and, for 2-D points, scatter plots."""
from __future__ import annotations

import io
import math

import numpy as np

from diffgen import files


def grid(images, ncols=None, pad=1):
    """Tiles images (N, H, W, C) in [-1, 1] into one uint8 array (rows*(H+pad), ..., C)."""
    images = np.clip((np.asarray(images, np.float32) + 1.0) * 127.5, 0, 255).round()
    n, h, w, c = images.shape
    ncols = ncols or int(math.ceil(math.sqrt(n)))
    nrows = int(math.ceil(n / ncols))
    out = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad, c), 255, np.uint8)
    for i, img in enumerate(images):
        r, col = divmod(i, ncols)
        out[pad + r * (h + pad):pad + r * (h + pad) + h,
            pad + col * (w + pad):pad + col * (w + pad) + w] = img
    return out


def save_grid(images, path, ncols=None, min_size=512):
    """Writes a PNG grid of images in [-1, 1], upscaled (nearest) to at least min_size px."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    tiled = grid(images, ncols)
    scale = max(1, min_size // max(tiled.shape[:2]))
    tiled = tiled.repeat(scale, axis=0).repeat(scale, axis=1)
    buffer = io.BytesIO()
    if tiled.shape[-1] == 1:
        plt.imsave(buffer, tiled[..., 0], cmap='gray', vmin=0, vmax=255, format='png')
    else:
        plt.imsave(buffer, tiled, format='png')
    files.write_bytes(path, buffer.getvalue())
    return path


def save_scatter(points, path, reference=None, title=None):
    """Writes a PNG scatter plot of 2-D points (and the training points, if given)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 5))
    if reference is not None:
        ax.scatter(reference[:, 0], reference[:, 1], s=4, c='tab:gray', alpha=0.5,
                   label='training set')
    ax.scatter(points[:, 0], points[:, 1], s=4, c='tab:blue', label='samples')
    ax.set_aspect('equal')
    ax.legend(loc='upper right')
    if title:
        ax.set_title(title)
    files.save_figure(fig, path, dpi=100, bbox_inches='tight')
    plt.close(fig)
    return path


def save_samples(samples, path, reference=None, title=None):
    """A grid for images (N, H, W, C), a scatter plot for points (N, 2)."""
    if samples.ndim == 4:
        return save_grid(samples, path)
    return save_scatter(samples[:, :2], path, reference, title)
