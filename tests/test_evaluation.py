"""Evaluation during training (diffgen.analysis.evaluation): named evaluators, each at its
own steps in eval.csv and TensorBoard; a model trained on 4 images long enough to memorise
them shows its memorisation ratio rise; the progress lines and TensorBoard's steps_per_sec
are one rate."""
import contextlib
import glob
import io
import os
import re

import numpy as np
import ml_collections
import pytest
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.util import tensor_util

from diffgen.analysis.evaluation import Evaluations
from diffgen.errors import ConfigError
from diffgen.training.csv_log import CsvLog, read_csv
from diffgen.training.loop import EVAL_CSV, train_and_evaluate
from diffgen.validation import validate
from tests.tiny import tiny_digits_config


def scalar_events(workdir):
    """{tag: {step: value}} of the scalars in workdir's event file."""
    (events,) = glob.glob(str(workdir / 'events.out.tfevents.*'))
    acc = event_accumulator.EventAccumulator(events, size_guidance={'tensors': 0})
    acc.Reload()
    values = {tag: {e.step: tensor_util.make_ndarray(e.tensor_proto) for e in acc.Tensors(tag)}
              for tag in acc.Tags()['tensors']}
    return {tag: {step: float(v) for step, v in by_step.items()}
            for tag, by_step in values.items() if all(v.ndim == 0 for v in by_step.values())}


def memorising_config(data_dir, **overrides):
    """4 training images, the digits UNet width (ch 32), no dropout: DDPM samples become
    copies within a few hundred steps (measured: ratio 0.375 at step 250, 1.0 from 500)."""
    config = tiny_digits_config(data_dir, **{
        'data.num_train': 4, 'model.ch': 32, 'optim.learning_rate': 2e-3,
        'optim.warmup_steps': 20, 'optim.ema_decay': 0.99, 'training.num_steps': 600,
        'training.steps_per_call': 10, 'training.log_every': 100,
        'training.checkpoint_every': 300, 'evaluation.num_samples': 16,
        'evaluation.num_images': 4, **overrides})
    config.evaluation.evals = ml_collections.ConfigDict({
        'ddpm': {'type': 'memorisation', 'method': 'ddpm', 'sampler_steps': 0, 'every': 100},
        'loss': {'type': 'loss', 'every': 100}})
    config.analysis.quality.classifier_steps = 50
    return config


@pytest.mark.slow
def test_memorisation_rises_during_training(tmp_path):
    config = memorising_config(tmp_path / 'data')
    workdir = tmp_path / 'run'
    train_and_evaluate(config, str(workdir), make_evaluations=Evaluations)

    rows = read_csv(str(workdir / EVAL_CSV))
    assert [int(r['step']) for r in rows] == [100, 200, 300, 400, 500, 600]
    ratios = [float(r['ddpm/memorisation_ratio']) for r in rows]
    assert ratios[0] < 0.5 and ratios[-1] >= 0.9, ratios
    for r in rows:  # the loss gap is the held-out loss minus the training loss
        np.testing.assert_allclose(float(r['loss/gap']),
                                   float(r['loss/heldout']) - float(r['loss/train']), rtol=1e-6)
    assert float(rows[-1]['loss/train']) < float(rows[-1]['loss/heldout'])

    logged = scalar_events(workdir)['eval/ddpm/memorisation_ratio']
    assert sorted(logged) == [100, 200, 300, 400, 500, 600]
    np.testing.assert_allclose([logged[s] for s in sorted(logged)], ratios, rtol=1e-6)


@pytest.fixture(scope='module')
def two_period_run(unoptimized_module, digits_data_dir, tmp_path_factory):
    """A tiny run of 12 steps, 2 per call, a progress line every 2 steps, with two
    evaluators: the loss every 2 steps, DDIM memorisation every 4 (neither needs the quality
    classifier). Returns (workdir, the progress lines it printed). Its tests check steps,
    files and that two records of one number agree: XLA's optimisations off."""
    root = tmp_path_factory.mktemp('two_periods')
    config = tiny_digits_config(digits_data_dir, **{
        'training.num_steps': 12, 'training.log_every': 2, 'training.checkpoint_every': 12,
        'evaluation.num_samples': 8, 'evaluation.num_images': 8})
    config.evaluation.evals = ml_collections.ConfigDict({
        'loss': {'type': 'loss', 'every': 2},
        'ddim': {'type': 'memorisation', 'method': 'ddim', 'sampler_steps': 3, 'every': 4}})
    validate(config)
    workdir = root / 'run'
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        train_and_evaluate(config, str(workdir), make_evaluations=Evaluations)
    return workdir, printed.getvalue().splitlines()


def test_two_evaluators_write_at_their_own_steps(two_period_run):
    workdir, _ = two_period_run
    rows = {int(r['step']): r for r in read_csv(str(workdir / EVAL_CSV))}
    assert sorted(rows) == [2, 4, 6, 8, 10, 12]
    loss_columns = ('loss/train', 'loss/heldout', 'loss/gap')
    ddim_columns = ('ddim/memorisation_ratio', 'ddim/exact_copy_rate', 'ddim/novelty_ratio')
    for step, row in rows.items():
        assert all(row[c] != '' for c in loss_columns), (step, row)
        assert all((row[c] != '') == (step % 4 == 0) for c in ddim_columns), (step, row)
    events = scalar_events(workdir)
    for column in loss_columns + ddim_columns:
        steps = [s for s in rows if rows[s][column] != '']
        assert sorted(events[f'eval/{column}']) == steps, column
        np.testing.assert_allclose([events[f'eval/{column}'][s] for s in steps],
                                   [float(rows[s][column]) for s in steps], rtol=1e-6)


def test_console_and_tensorboard_report_one_rate(two_period_run):
    """Every progress line after the first (which follows compilation) prints the rate that
    TensorBoard's steps_per_sec holds at that step, to the line's 3 significant digits."""
    workdir, lines = two_period_run
    printed = {int(m.group(1)): float(m.group(2)) for m in
               (re.match(r'train step (\d+)/12  ([0-9.e+]+) steps/s', l) for l in lines) if m}
    assert sorted(printed) == [4, 6, 8, 10, 12], lines
    logged = scalar_events(workdir)['steps_per_sec']
    assert sorted(logged) == sorted(printed)
    for step, rate in printed.items():
        assert float(f'{logged[step]:.3g}') == rate, (step, logged[step], rate)


@pytest.mark.parametrize('entry,fragment', [
    ({'type': 'loss', 'every': 3}, 'multiple of training.steps_per_call'),
    ({'type': 'nope', 'every': 2}, 'nope'),
    ({'type': 'memorisation', 'every': 2, 'method': 'euler'}, 'euler'),
    ({'type': 'memorisation', 'every': 2, 'steps': 5}, 'steps'),
    ({'type': 'loss'}, 'every'),
])
def test_a_bad_evaluator_is_one_config_error(tmp_path, entry, fragment):
    config = tiny_digits_config(tmp_path)
    config.evaluation.evals = ml_collections.ConfigDict({'bad': entry})
    with pytest.raises(ConfigError, match=fragment):
        validate(config)


def test_eval_log_resumes_without_the_rows_it_will_recompute(tmp_path):
    path = str(tmp_path / EVAL_CSV)
    log = CsvLog(path, resume_step=0)
    for step in (10, 20, 30):
        log.append(step, {'a': step / 10, 'b': -step})
    resumed = CsvLog(path, resume_step=20)      # a run restored from the step-20 checkpoint
    resumed.append(30, {'a': 3.5, 'b': -30})
    rows = read_csv(path)
    assert [(int(r['step']), float(r['a'])) for r in rows] == [(10, 1.0), (20, 2.0), (30, 3.5)]
    assert not [f for f in os.listdir(tmp_path) if f != EVAL_CSV]   # no temporary files left
