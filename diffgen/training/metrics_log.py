"""What a run shows in TensorBoard, through clu.metric_writers (the writer of process 0
writes event files into the workdir; the other processes' writers only log):

    loss, grad_norm            the mean loss of the steps since the last write, the last
                               step's gradient norm (before clipping)
    learning_rate              optax's rate of the next update, learning_rate_at(step)
    loss_by_t/<lo>-<hi>        the mean per-example loss of those steps' examples whose t
                               lies in lo..hi (training.loss_bands equal bands of 1..T)
    steps_per_sec              the rate of the progress line of the same step (the steps
                               alone since the previous log step: diffgen.progress)
    samples                    each sample grid the run writes, its PNG's pixels
    eval/<name>/<metric>       the evaluators of config.evaluation.evals, at their steps
    report/<experiment>/<key>  each report section's numbers, at the checkpoint's step
    hparams                    the config, flattened (write_hparams), once per run

and the jax.profiler traces of training.profile_steps (the profile plugin's plugins/profile;
diffgen.training.profiling).
"""
from __future__ import annotations

import io

import flax.traverse_util
import jax
import numpy as np
from clu import metric_writers
from PIL import Image

from diffgen import files
from diffgen.training.state import learning_rate_at


def make_writer(workdir):
    """clu's default writer: TensorBoard event files in workdir from process 0, logging only
    from the others."""
    return metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)


def hparams(config):
    """The config as write_hparams takes it: {'section.key': bool, int, float or str}
    (sequences as their text)."""
    flat = flax.traverse_util.flatten_dict(config.copy_and_resolve_references().to_dict(),
                                           sep='.')
    return {name: value if isinstance(value, (bool, int, float, str))
            else str(tuple(value) if isinstance(value, list) else value)
            for name, value in flat.items()}


def band_tags(bands, num_timesteps):
    """The tags loss_by_t/<lo>-<hi> of the bands of step.loss_band (t = lo..hi, 1-based)."""
    edges = [b * num_timesteps // bands for b in range(bands + 1)]
    width = len(str(num_timesteps))
    return [f'loss_by_t/{edges[b] + 1:0{width}d}-{edges[b + 1]:0{width}d}' for b in range(bands)]


def train_scalars(metrics, losses, step, config, num_timesteps):
    """The scalars of a log step from the train calls' metrics since the last one (a list of
    step.make_train_call's metrics, fetched to the host; losses: their per-step losses, as
    the loop has already gathered them): loss, grad_norm, learning_rate and the loss per band
    of t (a band no example fell in is left out)."""
    scalars = {'loss': float(losses.mean()),
               'grad_norm': float(np.asarray(metrics[-1]['grad_norm'])[-1]),
               'learning_rate': learning_rate_at(config.optim, step)}
    if config.training.loss_bands:
        sums = sum(np.asarray(m['band_sum'], np.float64).sum(0) for m in metrics)
        counts = sum(np.asarray(m['band_count'], np.float64).sum(0) for m in metrics)
        for tag, total, count in zip(band_tags(config.training.loss_bands, num_timesteps),
                                     sums, counts):
            if count:
                scalars[tag] = float(total / count)
    return scalars


def png_pixels(path):
    """The pixels of a PNG file (H, W, C) uint8, C = 3 or 4 as stored (gray as RGB)."""
    with Image.open(io.BytesIO(files.open_file(path, 'rb').read())) as image:
        if image.mode not in ('RGB', 'RGBA'):
            image = image.convert('RGBA' if 'A' in image.mode else 'RGB')
        return np.asarray(image)


def write_png(writer, step, tag, path):
    """The PNG at path as the image `tag` of step."""
    writer.write_images(step, {tag: png_pixels(path)[None]})


def report_scalars(sections):
    """{'report/<key>/<name>': number} of every int and float among the sections' numbers
    (a nested dict's as <name>/<sub>; the provenance left out)."""
    scalars = {}
    for section in sections:
        numbers = {k: v for k, v in section.numbers.items() if k != 'provenance'}
        for path, value in flax.traverse_util.flatten_dict(numbers).items():
            if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
                scalars['/'.join(('report', section.key, *map(str, path)))] = float(value)
    return scalars


def write_report(workdir, step, sections):
    """The sections' numbers (report_scalars) at step, into the workdir's TensorBoard."""
    writer = make_writer(workdir)
    writer.write_scalars(step, report_scalars(sections))
    writer.close()
