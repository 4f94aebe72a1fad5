"""The time model (benchmarks/scale_model.py) against a hand count of a tiny case, and
docs/scaling.md's generated block against a fresh rendering of the committed inputs
(benchmarks/scale_docs.py), so that its numbers cannot be edited by hand. No timing here."""
import json

import pytest

from benchmarks import scale_docs
from benchmarks import scale_model as model

# S = 2 samples, K = 2 steps at t = 4, 2, T = 4, 2 queries per pass, t_switch 0, 2, 4;
# N = 3 rows of D = 2, H = 1 held-out image.
TINY = model.Analysis(num_samples=2, sampler_steps=2, num_timesteps=4, batch_size=2,
                      grid=(4, 2), switch_times=(0, 2, 4))
SET = model.Dataset('tiny', 3, (1, 1, 2), 1)


def test_counts_by_hand():
    c = model.counts(TINY, SET)
    # per sample: DDIM 2 + Heun 2·2 − 1 = 3 + DDPM 4 = 9 evaluations
    assert c['e1'] == {'eps': 18, 'net': 0, 'knn': 6, 'knn_self': 4}          # N + H = 4
    assert c['e2']['eps'] == 0 and c['e2']['net'] == 18
    assert c['e2']['knn'] == pytest.approx(6 + 6 * 2 * 1 / 3 + 2 + 1 / 3)
    assert c['e3'] == {'eps': 2 * 2 * 2 + 6 * 1 * 2, 'net': 2 * 2 + 2 * 1 * 2, 'knn': 0,
                       'knn_self': 0}
    # steps above t_switch: 2 (s = 0), 1 (s = 2), 0 (s = 4)
    assert c['e4']['eps'] == 2 * ((2 * 2 + 0) + (2 * 1 + 1) + (0 + 2)) + 2 * 2
    assert c['e4']['net'] == 2 * (2 + 1 + 0) + 2 * 2
    assert c['e4']['knn'] == 3 * 2 * 3


def test_work_and_roofline_by_hand():
    work = model.experiment_work(model.counts(TINY, SET)['e1'], SET, TINY.batch_size,
                                 model.Work(5.0, 7.0))
    # ε*: 4·18·3·2 flops; ceil(18/2) = 9 passes of 4 bytes · 3 · 2
    assert work['eps'] == model.Work(432.0, 216.0)
    # kNN: 6 queries over 3 rows (2·6·3·2 flops, 3 passes of 24 bytes) and 4 over 4 rows
    # (2·4·4·2 flops, 2 passes of 32 bytes)
    assert work['knn'] == model.Work(72.0 + 64.0, 72.0 + 64.0)
    assert work['net'] == model.Work(0.0, 0.0)
    hw = model.Hardware('toy', 2, 100.0, 10.0, '', '')
    # ε*: max(432 / (2·100·0.5), 216 / (2·10)) = 10.8; kNN: max(136 / 200, 136 / 20) = 6.8
    assert model.roofline_seconds(work['eps'], hw, 0.5) == pytest.approx(10.8)
    assert model.predict(work, hw, {'eps': 0.5, 'knn': 1.0, 'net': 1.0}) == pytest.approx(17.6)
    # compute-bound case: 432 flops at 2·100·0.01 = 2 flop/s
    assert model.roofline_seconds(work['eps'], hw, 0.01) == pytest.approx(216.0)
    assert model.training_work(3, model.Work(2.0, 1.0)) == model.Work(6.0, 3.0)


def test_measured_inputs_by_hand():
    cifar = {'flops_per_step': 100.0, 'batch': 2, 'bytes_per_step': 50.0,
             'bytes_per_example': 10.0, 'num_params': 6, 'gflops': [3.0, 6.0],
             'forward_flops_per_image': 20.0, 'config_flops_per_step': 400.0}
    inputs = {'gemm_gflops': [10.0, 20.0], 'eps': {'D=3072': {'gflops': [4.0, 8.0]}},
              'train': {'cifar10': cifar}}
    # 100 / 2 / 10 = 5 flops per byte of an example; (50 − 2·10) / 6 = 5 bytes per parameter
    assert model.intensity(inputs) == (5.0, 5.0)
    cifar10 = model.Dataset('CIFAR-10', 1, (1,), 0)
    assert model.forward_work(inputs, cifar10) == model.Work(20.0, 4.0)
    assert model.step_work(inputs, cifar10) == model.Work(400.0, 400.0 / 5 + 5 * 6)
    # fastest: the best rate over the lowest peak; slowest: the worst over the highest
    assert model.efficiencies(inputs) == {
        'fast': {'eps': 0.8, 'knn': 0.8, 'net': 0.6, 'train': 0.6},
        'slow': {'eps': 0.2, 'knn': 0.2, 'net': 0.15, 'train': 0.15}}


def test_analysis_settings_read_from_the_config():
    a = scale_docs.analysis_settings()
    assert len(a.grid) == a.sampler_steps and list(a.grid) == sorted(a.grid, reverse=True)
    assert a.grid[0] == a.num_timesteps
    assert a.switch_times[0] == 0 and a.switch_times[-1] == a.num_timesteps


def test_docs_block_is_rendered_from_the_committed_inputs():
    block = scale_docs.render(json.loads(scale_docs.INPUTS.read_text()))
    text = scale_docs.DOC.read_text()
    assert text.count(scale_docs.BEGIN) == 1 and text.count(scale_docs.END) == 1
    assert scale_docs.HEADING in text
    start = text.index(scale_docs.BEGIN)
    assert text[start:text.index(scale_docs.END) + len(scale_docs.END)] == block, (
        'docs/scaling.md\'s time model is stale or hand-edited: run '
        'python -m benchmarks.scale_docs')
    assert scale_docs.replace_block(text, block) == text
