"""Every picture diffgen draws (matplotlib on the Agg backend, imported on first use so that
the library loads without it): sample grids and scatter plots, and the report's labelled image
rows, histograms and curves, each written as one PNG through diffgen.files."""
from __future__ import annotations

import io
import math

import numpy as np

from diffgen import files


def pyplot():
    """matplotlib.pyplot on the Agg backend (imported here: matplotlib is a heavy import that
    training on a pod does not need until it draws)."""
    import matplotlib  # heavy, optional until a figure is drawn
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt  # heavy, optional until a figure is drawn
    return plt

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
    plt = pyplot()
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
    plt = pyplot()
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


def subplots(ncols=1, width=5.0, height=3.8):
    """(figure, list of ncols axes) on the Agg backend."""
    plt = pyplot()
    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, height), squeeze=False)
    return fig, list(axes[0])


def save(fig, path, title=None):
    """Writes the figure (with an overall title) as a PNG and closes it; returns path."""
    plt = pyplot()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    files.save_figure(fig, path, dpi=110)
    plt.close(fig)
    return path


def image_rows(rows, path, title):
    """One strip of images per row, its label on the left: rows = [(label, (n, H, W, C))]
    in [-1, 1], all with the same n; column j of every row belongs to the same sample."""
    plt = pyplot()
    n = len(rows[0][1])
    fig, axes = plt.subplots(len(rows), 1, figsize=(0.55 * n + 2.2, 0.75 * len(rows) + 0.8),
                             squeeze=False)
    for ax, (label, imgs) in zip(axes[:, 0], rows):
        strip = grid(imgs, ncols=n)
        ax.imshow(strip[..., 0] if strip.shape[-1] == 1 else strip, cmap='gray', vmin=0,
                  vmax=255, interpolation='nearest')
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_ylabel(label, rotation=0, ha='right', va='center', fontsize=9)
    return save(fig, path, title)


def histogram(ax, series, xlabel, log_x=False, floor=1e-4, bins=40, upper_quantile=0.99):
    """Overlaid step histograms of {label: values} on ax (dashed and dotted lines so that equal
    ones stay visible). Outliers beyond 1.5 times the upper_quantile of all values are
    counted in the last bin (the label says so); with log_x values are clipped below at floor
    (exact copies, d = 0, land in the first bin)."""
    values = [np.asarray(v, np.float64) for v in series.values()]
    everything = np.concatenate(values)
    hi = float(everything.max())
    if hi > 1.5 * np.quantile(everything, upper_quantile):
        hi = float(np.quantile(everything, upper_quantile))
    if log_x:
        lo = max(floor, float(everything.min()))
        hi = max(hi, lo * 10)
        edges = np.geomspace(lo, hi, bins + 1)
        ax.set_xscale('log')
    else:
        lo = float(everything.min())
        edges = np.linspace(lo, max(hi, lo + 1e-12), bins + 1)
    for i, (label, v) in enumerate(zip(series, values)):
        ax.hist(np.clip(v, edges[0], edges[-1]), bins=edges, histtype='step',
                linewidth=2.5 - 0.5 * (i % 3), linestyle=('-', '--', ':')[i % 3], label=label)
    if everything.max() > hi:
        xlabel += f'\n({np.mean(everything > hi):.1%} of values above {hi:.3g} in the last bin)'
    ax.set_xlabel(xlabel)
    ax.set_ylabel('samples')
    ax.legend(fontsize=8)
