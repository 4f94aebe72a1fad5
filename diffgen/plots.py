"""Figures of the report (matplotlib, Agg backend): labelled rows of images, histograms and
curves, each written as one PNG."""
from __future__ import annotations


import numpy as np

from diffgen import files, images


def subplots(ncols=1, width=5.0, height=3.8):
    """(figure, list of ncols axes) on the Agg backend."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, height), squeeze=False)
    return fig, list(axes[0])


def save(fig, path, title=None):
    """Writes the figure (with an overall title) as a PNG and closes it; returns path."""
    import matplotlib.pyplot as plt
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    files.save_figure(fig, path, dpi=110)
    plt.close(fig)
    return path


def image_rows(rows, path, title):
    """One strip of images per row, its label on the left: rows = [(label, (n, H, W, C))]
    in [-1, 1], all with the same n; column j of every row belongs to the same sample."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    n = len(rows[0][1])
    fig, axes = plt.subplots(len(rows), 1, figsize=(0.55 * n + 2.2, 0.75 * len(rows) + 0.8),
                             squeeze=False)
    for ax, (label, imgs) in zip(axes[:, 0], rows):
        strip = images.grid(imgs, ncols=n)
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
