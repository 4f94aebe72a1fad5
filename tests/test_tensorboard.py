"""What a smoke-size run shows in TensorBoard, read back with TensorFlow's event reader:
each tag at the steps it belongs to, with the run's own numbers (diffgen.training.metrics_log)."""
import glob
import os

import numpy as np
import pytest
import tensorflow as tf
from tensorboard.plugins.hparams import plugin_data_pb2

from diffgen.analysis.report import Section
from diffgen.training import metrics_log
from diffgen.training.loop import train_and_evaluate
from diffgen.training.state import learning_rate
from tests.tiny import tiny_digits_config

NUM_STEPS, LOG_EVERY, SAMPLE_AT = 8, 2, 4


def read_events(workdir):
    """{tag: {step: value}} of every event file in workdir: scalars as floats, images as
    their decoded pixels (H, W, C) uint8, other tensors as their summary metadata."""
    tags = {}
    for path in sorted(glob.glob(os.path.join(workdir, 'events.out.tfevents.*'))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                plugin = value.metadata.plugin_data.plugin_name
                if plugin == 'images':
                    value_out = tf.io.decode_png(tf.make_ndarray(value.tensor)[2]).numpy()
                elif plugin == 'scalars':
                    value_out = float(tf.make_ndarray(value.tensor))
                else:
                    value_out = value.metadata
                tags.setdefault(value.tag, {})[event.step] = value_out
    return tags


@pytest.fixture(scope='module')
def smoke_run(digits_data_dir, tmp_path_factory):
    data_dir = digits_data_dir
    workdir = str(tmp_path_factory.mktemp('work'))
    config = tiny_digits_config(data_dir, **{
        'training.num_steps': NUM_STEPS, 'training.log_every': LOG_EVERY,
        'training.sample_every': SAMPLE_AT, 'training.profile_steps': 2,
        'optim.warmup_steps': 5})
    train_and_evaluate(config, workdir)
    report = Section('e1', 'E1', '', {'memorisation': 0.25, 'fd': {'ddim': 3.5},
                                      'method': 'ddim', 'provenance': {'step': NUM_STEPS}})
    metrics_log.write_report(workdir, NUM_STEPS, [report])
    return config, workdir, read_events(workdir)


def test_scalars_at_every_log_step(smoke_run):
    config, _, tags = smoke_run
    log_steps = list(range(LOG_EVERY, NUM_STEPS + 1, LOG_EVERY))
    schedule = learning_rate(config.optim)
    for tag in ('loss', 'grad_norm', 'learning_rate'):
        assert sorted(tags[tag]) == log_steps, tag
    # the progress line's rate: none at the first log step, which follows compilation
    assert sorted(tags['steps_per_sec']) == log_steps[1:]
    for step in log_steps:
        # the optax schedule at that step (warm-up 5 steps: 0.4, 0.8, then the peak rate)
        assert tags['learning_rate'][step] == np.float32(schedule(step))
        assert tags['grad_norm'][step] > 0 and tags.get('steps_per_sec', {}).get(step, 1) > 0
    assert tags['learning_rate'][8] == np.float32(config.optim.learning_rate)


def test_loss_per_band_of_t(smoke_run):
    _, _, tags = smoke_run
    bands = ['loss_by_t/0001-0250', 'loss_by_t/0251-0500', 'loss_by_t/0501-0750',
             'loss_by_t/0751-1000']
    assert metrics_log.band_tags(4, 1000) == bands
    for step, loss in tags['loss'].items():
        values = [tags[b][step] for b in bands if step in tags[b]]
        assert len(values) >= 3
        # the loss is the mean of the same per-example losses: between the bands' means
        assert min(values) - 1e-6 <= loss <= max(values) + 1e-6


def test_sample_grid_image_is_the_png(smoke_run):
    _, workdir, tags = smoke_run
    assert sorted(tags['samples']) == [SAMPLE_AT]
    png = metrics_log.png_pixels(os.path.join(workdir, 'samples', f'step_{SAMPLE_AT:08d}.png'))
    np.testing.assert_array_equal(tags['samples'][SAMPLE_AT], png)


def test_hparams_report_and_profile(smoke_run):
    config, workdir, tags = smoke_run
    start = plugin_data_pb2.HParamsPluginData.FromString(
        tags['_hparams_/session_start_info'][0].plugin_data.content).session_start_info
    assert start.hparams['training.num_steps'].number_value == NUM_STEPS
    assert start.hparams['model.ch_mult'].string_value == str(tuple(config.model.ch_mult))
    assert tags['report/e1/memorisation'] == {NUM_STEPS: 0.25}
    assert tags['report/e1/fd/ddim'] == {NUM_STEPS: 3.5}
    assert not any(t.startswith('report/e1/provenance') or t == 'report/e1/method' for t in tags)
    assert glob.glob(os.path.join(workdir, 'plugins', 'profile', '*', '*.xplane.pb'))
