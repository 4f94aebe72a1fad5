"""E5 (disjoint-half reproducibility), E6 (EMM) and E7 (I(z; S) on toy2d): their metrics
against hand computations, the halves, and E7 end to end on a tiny ensemble."""
import json
import os

import numpy as np
import pytest

from configs import digits, toy2d
from diffgen import data
from diffgen.analysis import report
from diffgen.analysis.context import make_context
from diffgen.analysis.experiment import EXPERIMENTS
from diffgen.analysis.experiments import e5_reproducibility as e5
from diffgen.analysis.experiments import e6_emm as e6
from diffgen.errors import ConfigError
from diffgen.training.loop import build
from diffgen.validation import validate
from tests.tiny import tiny_digits_config


def test_cosine_similarity_hand_computed():
    u = np.array([[1.0, 0.0], [1.0, 2.0]])
    v = np.array([[1.0, 1.0], [-2.0, 1.0]])
    np.testing.assert_allclose(e5.cosine_similarity(u, v), [1 / np.sqrt(2), 0.0], atol=1e-12)
    # Centred on (0, -1): u - centre = (1, 1), v - centre = (1, 2).
    centre = np.array([0.0, -1.0])
    np.testing.assert_allclose(e5.cosine_similarity(u[:1], v[:1], centre),
                               [(1 * 1 + 1 * 2) / (np.sqrt(2) * np.sqrt(5))], atol=1e-12)


def test_split_halves_are_disjoint_and_equal():
    images = np.arange(7 * 4, dtype=np.uint8).reshape(7, 2, 2, 1)
    labels = np.arange(7)
    (a, la), (b, lb) = e5.split_halves(images, labels)
    assert len(a) == len(b) == 3 and la.tolist() == [0, 1, 2] and lb.tolist() == [3, 4, 5]
    assert not set(map(bytes, a)) & set(map(bytes, b))
    assert e5.split_halves(images, None)[1][1] is None


def test_num_steps_rule():
    config = digits.get_config()                      # 5000 steps, 5 per call
    assert e5.num_steps(config.analysis.e5, config.training) == 5000  # the run's length
    config.training.num_steps = 600                   # the default follows (FieldReference)
    assert e5.num_steps(config.analysis.e5, config.training) == 600
    config.analysis.e5.num_steps = 333
    assert e5.num_steps(config.analysis.e5, config.training) == 335  # whole calls of 5
    config.analysis.e5.num_steps = 0
    assert e5.num_steps(config.analysis.e5, config.training) == 5    # at least one call


def test_half_config_loads_exactly_the_half(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (10, 8, 8, 1), dtype=np.uint8)
    path = str(tmp_path / 'half_a.npz')
    e5._write_npz(path, images, np.arange(10) % 3)
    run = digits.get_config('smoke')
    config = validate(e5.half_config(run, path, 100, seed=7))
    assert config.training.num_steps == 100 and config.seed == 7
    assert (config.optim.ema_decay, config.optim.ema_warmup) == (0.99, True)   # the run's EMA
    assert config.optim.ema_decay == run.optim.ema_decay
    ds = data.load(config)
    assert len(ds.heldout_images) == 0
    assert sorted(map(bytes, ds.train_images)) == sorted(map(bytes, images))


def test_e5_models_have_distinct_seeds():
    """A, B, A' and B' each get their own seed; A and A' share half A, B and B' half B."""
    assert len({offset for _, _, offset in e5.MODELS}) == len(e5.MODELS)
    assert [h for _, h, _ in e5.MODELS] == [0, 1, 0, 1] and 0 not in [o for *_, o in e5.MODELS]
    assert e5.HALF_MODELS == tuple(tuple(m for m, h, _ in e5.MODELS if h == half)
                                   for half in (0, 1))


def test_e5_similarity_intervals_on_hand_built_samples():
    """Samples of four models from 6 x_T: the pair means are the hand-computed cosine means
    (cross over A-B, A-B', A'-B, A'-B'; seed over A-A', B-B'), each interval holds its mean,
    and where the models of each half disagree the two-way interval is the wider."""
    rng = np.random.default_rng(0)
    base = rng.normal(size=(6, 5))
    samples = {m: base + s * rng.normal(size=(6, 5))
               for m, s in (('A', 0.2), ("A'", 1.5), ('B', 0.2), ("B'", 1.5))}
    cross, same = e5.pair_similarities(samples, 0.0)
    cos = lambda x, y: e5.cosine_similarity(samples[x], samples[y])
    np.testing.assert_allclose(cross.mean(), np.mean(
        [cos(x, y) for x in ('A', "A'") for y in ('B', "B'")]), atol=1e-12)
    optimum = cos('A', 'B') - 0.5
    iv = e5.similarity_intervals(cross, same, optimum, np.random.default_rng(1), 500)
    assert iv['seed']['mean'] == pytest.approx(
        np.mean([cos('A', "A'"), cos('B', "B'")]), abs=1e-12)
    assert iv['cross_minus_seed']['mean'] == pytest.approx(
        iv['cross']['mean'] - iv['seed']['mean'], abs=1e-12)
    for m in iv.values():
        assert m['low'] <= m['mean'] <= m['high'] and m['low_xT'] <= m['mean'] <= m['high_xT']
    assert (iv['cross']['high'] - iv['cross']['low']
            > iv['cross']['high_xT'] - iv['cross']['low_xT'])


def test_mean_interval_hand_computed():
    # x = 1, 2, 3, 4: mean 2.5, s = sqrt(5/3), half-width 1.96 s / 2.
    m = e5.mean_interval([1.0, 2.0, 3.0, 4.0])
    half = 1.959963984540054 * np.sqrt(5 / 3) / 2   # the standard normal's 97.5 % quantile
    assert m == pytest.approx({'mean': 2.5, 'low': 2.5 - half, 'high': 2.5 + half})


def test_regime_rule():
    iv = lambda low, high: {'low': low, 'high': high}
    above, around, below = iv(0.1, 0.2), iv(-0.05, 0.05), iv(-0.2, -0.1)
    assert e5.regime(around, above, around) == 'undetermined'   # controls do not separate
    assert e5.regime(below, around, above) == 'memorising'      # cross ≈ optimum's
    assert e5.regime(around, above, above) == 'generalising'    # cross ≈ seed ≫ optimum's
    assert e5.regime(above, above, above) == 'generalising'
    assert e5.regime(below, above, above) == 'intermediate'


def test_effective_model_memorisation_hand_computed():
    assert e6.effective_model_memorisation([16, 32, 64, 128], [1.0, 0.95, 0.5, 0.1]) == 32
    # Not monotone: the largest N that reaches the threshold counts.
    assert e6.effective_model_memorisation([16, 32, 64, 128], [1.0, 0.5, 0.9, 0.1]) == 64
    assert e6.effective_model_memorisation([16, 32], [0.2, 0.1]) is None


def test_sweep_summary_reads_results(tmp_path):
    rows = [{'run': 'b', 'e6.num_train': '64', 'e6.memorisation_ratio': '0.25'},
            {'run': 'a', 'e6.num_train': '16', 'e6.memorisation_ratio': '0.95'},
            {'run': 'failed', 'e6.num_train': '', 'e6.memorisation_ratio': ''}]
    num_train, ratios, emm = e6.write_sweep_summary(str(tmp_path), rows, 0.9)
    assert num_train.tolist() == [16, 64] and ratios.tolist() == [0.95, 0.25] and emm == 16
    assert os.path.exists(tmp_path / e6.FIGURE)
    assert e6.write_sweep_summary(str(tmp_path), rows[2:], 0.9) is None


def test_e7_end_to_end(tmp_path):
    """E7 on 4 sets x 4 seeds of tiny models: the optimum's samples are copies (I = ∞), the
    trained models' estimates are finite, the validation cases (Gaussian without and with a
    seed dependence, atomic) are reported at both K, figures exist."""
    config = toy2d.get_config()
    config.diffusion.num_timesteps = 100
    config.model.mlp_hidden, config.model.mlp_depth = 32, 1
    config.training.batch_size = 32
    config.training.steps_per_call = 20
    config.training.log_every = 20
    config.analysis.sampler_steps = 20
    config.analysis.num_samples = 8
    e7 = config.analysis.e7
    e7.num_sets, e7.num_train, e7.num_samples = 4, 8, 64
    e7.train_steps, e7.seeds_per_set, e7.validation_num_sets = (20, 40), 4, 8
    e7.validation_atomic_widths = (0.2,)
    validate(config)
    dataset = data.load(config)
    ctx = make_context(config, str(tmp_path), build(config, dataset))
    section = EXPERIMENTS['e7'].run(ctx)
    report.write_report([section], ctx.report_dir, 'test')
    numbers = json.load(open(os.path.join(ctx.report_dir, 'report.json')))['e7']
    assert not any(key.startswith('_') for key in numbers)   # figure data stays out
    assert numbers['optimum']['value'] == 'inf'
    assert 'Î = ∞' in section.markdown
    assert numbers['optimum']['exact_copy_rate'] > 0.5
    assert [t['steps'] for t in numbers['trained']] == [20, 40]
    for t in numbers['trained']:
        assert np.isfinite(t['value']) and t['low'] <= t['value'] <= t['high']
        assert t['corrected_low'] <= t['corrected'] <= t['corrected_high']
        seed = t['seed_only']
        assert seed['low'] <= seed['value'] <= seed['high'] <= np.log(4) + 3 * seed['se']
        assert seed['corrected_low'] <= seed['corrected'] <= seed['corrected_high']
    assert numbers['seeds_per_set'] == 4
    validation = numbers['validation']
    assert [(v['case'], v['num_sets']) for v in validation] == [
        (case, size) for case in ('gaussian, b = 0', 'gaussian, b = 0.177', 'atomic, h = 0.2')
        for size in (4, 8)]                      # b = √(share/N) = √(0.25/8)
    for v in validation:
        assert v['truth'] == pytest.approx(np.log(2.0)) or v['case'].startswith('atomic')
        assert v['seed_truth'] == pytest.approx(
            np.log(4 / 3) if v['case'] == 'gaussian, b = 0.177' else 0.0)
        assert 0 < v['expected_js'] < np.log(v['num_sets'])
        assert v['covered'] == (v['corrected_low'] <= v['truth'] <= v['corrected_high'])
    assert validation[-1]['truth_se'] > 0 and validation[0]['truth_se'] == 0
    assert 'Ĩ(z; ω | S)' in section.markdown and 'E JS_K' in section.markdown
    for name in section.figures:
        assert os.path.exists(os.path.join(ctx.report_dir, name))


def test_e7_rejects_images_and_bad_settings_before_any_work():
    config = digits.get_config()
    config.analysis.experiments = ('e7',)
    with pytest.raises(ConfigError, match='toy2d'):
        validate(config)
    config = toy2d.get_config()
    config.analysis.e7.train_steps = (150,)           # not a multiple of steps_per_call = 100
    with pytest.raises(ConfigError, match='analysis.e7.train_steps'):
        validate(config)
    config = toy2d.get_config()
    config.analysis.e7.seeds_per_set = 1              # the seed cannot be marginalised
    with pytest.raises(ConfigError, match='seeds_per_set'):
        validate(config)
    config = toy2d.get_config()
    config.analysis.e7.validation_seed_share = 1.0    # no seed-free noise left
    with pytest.raises(ConfigError, match='validation_seed_share'):
        validate(config)


def _tiny_e5_context(data_dir, tmp_path, num_samples):
    """A tiny digits run (40 training images) with E5's models trained 4 steps and a
    20-step quality classifier."""
    config = tiny_digits_config(data_dir, **{'data.num_train': 40})
    config.analysis.e5.num_steps = 4
    config.analysis.num_samples = num_samples
    config.analysis.sampler_steps = 5
    config.analysis.quality.classifier_steps = 20
    validate(config)
    dataset = data.load(config)
    return config, make_context(config, str(tmp_path / 'run'), build(config, dataset))


@pytest.mark.slow
def test_e5_end_to_end(digits_data_dir, tmp_path):
    """E5 on a tiny digits config: four models trained in W/e5/half_{a,b}_seed{s} with
    seeds s + 1 .. s + 4 on disjoint npz halves, similarities in [-1, 1] with their two-way
    and x_T-only intervals, a regime, per-model quality, and a rerun resumes instead of
    retraining."""
    config, ctx = _tiny_e5_context(digits_data_dir, tmp_path, 8)
    workdir = tmp_path / 'run'
    section = EXPERIMENTS['e5'].run(ctx)
    n = report.reported(section.numbers)
    assert n['half_size'] == 20 and n['num_steps'] == 4 and n['num_samples'] == 8
    for key in ('cross_similarity', 'seed_similarity', 'optimum_similarity'):
        assert -1.0 <= n[key]['low'] <= n[key]['mean'] <= n[key]['high']
        assert n[key]['low_xT'] <= n[key]['mean'] <= n[key]['high_xT']
        assert n[key]['mean'] <= 1.0 + 1e-9
    assert n['cross_similarity']['mean'] == pytest.approx(
        np.mean([n['pairs'][p] for p in ('A–B', "A–B'", "A'–B", "A'–B'")]))
    assert n['seed_similarity']['mean'] == pytest.approx(
        np.mean([n['pairs'][p] for p in ("A–A'", "B–B'")]))
    assert n['ema_decay'] == config.optim.ema_decay
    assert n['regime'] in ('undetermined', 'memorising', 'generalising', 'intermediate')
    assert f'Regime: {n["regime"]}' in section.markdown
    assert list(n['models']) == ['A', 'B', "A'", "B'", 'ε*_A', 'ε*_B']
    assert [n['models'][m]['seed'] for m in ('A', 'B', "A'", "B'")] == [
        config.seed + 1, config.seed + 2, config.seed + 3, config.seed + 4]
    assert all(np.isfinite(m['fd']) and 0 <= m['precision'] <= 1 for m in n['models'].values())
    assert n['models']['ε*_A']['exact_copy_rate'] > 0.5     # the optimum copies its half
    halves = [data.load(e5.half_config(config, str(workdir / 'e5' / f'half_{h}.npz'), 4, 0))
              for h in e5.HALVES]
    assert not set(map(bytes, halves[0].train_images)) & set(map(bytes, halves[1].train_images))
    for name, offset in (('a', 1), ('b', 2), ('a', 3), ('b', 4)):
        seed = config.seed + offset
        assert (workdir / 'e5' / f'half_{name}_seed{seed}' / 'checkpoints' / '4').is_dir()
    assert report.reported(EXPERIMENTS['e5'].run(ctx).numbers) == n


@pytest.mark.slow
def test_e5_identical_halves_seed_control_equals_cross_half(digits_data_dir, tmp_path,
                                                           monkeypatch):
    """Acceptance (issue 10): with both halves the same data, cross pairs and same-half pairs
    are all two seeds on one set, so the seed-only control lies within the cross-half figure's
    interval and the paired difference's interval contains 0; the halves' optima coincide."""
    monkeypatch.setattr(e5, 'split_halves',
                        lambda images, labels: [(images[:20], labels[:20])] * 2)
    _, ctx = _tiny_e5_context(digits_data_dir, tmp_path, 64)
    n = EXPERIMENTS['e5'].run(ctx).numbers
    cross, seed = n['cross_similarity'], n['seed_similarity']
    assert cross['low'] <= seed['mean'] <= cross['high']
    assert n['cross_minus_seed']['low'] <= 0.0 <= n['cross_minus_seed']['high']
    assert n['optimum_similarity']['mean'] == pytest.approx(1.0, abs=1e-6)
    assert n['regime'] == 'undetermined'    # the seed control is not above the optima's 1
