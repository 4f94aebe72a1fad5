"""Evaluation during training (diffgen.analysis.evaluation): a model trained on 4 images
long enough to memorise them shows its memorisation ratio rise in eval.csv and TensorBoard."""
import glob
import os

import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.util import tensor_util

from diffgen.analysis.evaluation import Evaluator
from diffgen.training.csv_log import CsvLog, read_csv
from diffgen.training.loop import EVAL_CSV, train_and_evaluate
from tests.tiny import tiny_digits_config


def memorising_config(data_dir, **overrides):
    """4 training images, the digits UNet width (ch 32), no dropout: DDPM samples become
    copies within a few hundred steps (measured: ratio 0.375 at step 250, 1.0 from 500)."""
    config = tiny_digits_config(data_dir, **{
        'data.num_train': 4, 'model.ch': 32, 'optim.learning_rate': 2e-3,
        'optim.warmup_steps': 20, 'optim.ema_decay': 0.99, 'training.num_steps': 600,
        'training.steps_per_call': 10, 'training.log_every': 100,
        'training.checkpoint_every': 300, 'training.eval_every': 100,
        'evaluation.methods': ('ddpm',), 'evaluation.num_samples': 16,
        'evaluation.num_images': 4, **overrides})
    config.analysis.quality.classifier_steps = 50
    return config


@pytest.mark.slow
def test_memorisation_rises_during_training(tmp_path):
    config = memorising_config(tmp_path / 'data')
    workdir = tmp_path / 'run'
    train_and_evaluate(config, str(workdir), make_evaluator=Evaluator)

    rows = read_csv(str(workdir / EVAL_CSV))
    assert [int(r['step']) for r in rows] == [100, 200, 300, 400, 500, 600]
    ratios = [float(r['ddpm/memorisation_ratio']) for r in rows]
    assert ratios[0] < 0.5 and ratios[-1] >= 0.9, ratios
    for r in rows:  # the loss gap is the held-out loss minus the training loss
        np.testing.assert_allclose(float(r['loss_gap']),
                                   float(r['loss_heldout']) - float(r['loss_train']), rtol=1e-6)
    assert float(rows[-1]['loss_train']) < float(rows[-1]['loss_heldout'])

    (events,) = glob.glob(str(workdir / 'events.out.tfevents.*'))
    acc = event_accumulator.EventAccumulator(events, size_guidance={'tensors': 0})
    acc.Reload()
    logged = acc.Tensors('eval/ddpm/memorisation_ratio')
    assert [e.step for e in logged] == [100, 200, 300, 400, 500, 600]
    np.testing.assert_allclose([float(tensor_util.make_ndarray(e.tensor_proto)) for e in logged],
                               ratios, rtol=1e-6)


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
