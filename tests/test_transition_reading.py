"""diffgen.analysis.transition_reading: the transition's tables and reading from a
transition.json made by transition.summarise on a simulated sweep (three seeds per N, both
criteria, known rates), every number on the page read back and checked against the file;
the end-of-training change against its standard error computed here in float64; the
survival rule on a sampler that holds and one that does not; the calibration table."""
import re

import numpy as np
import pytest

from diffgen.analysis import transition
from diffgen.analysis import transition_reading as reading
from diffgen.training.csv_log import CsvLog

SIZES, SEEDS, N = (16, 64, 256, 1024), (0, 1, 2), 100
# final rates per (sampler, criterion, N, seed); the step-1000 rate is each final minus RISE
FINAL = {
    ('ddim', 'ratio'): {16: (0.98, 0.97, 1.0), 64: (0.7, 0.8, 0.75), 256: (0.1, 0.05, 0.1),
                        1024: (0.0, 0.0, 0.01)},
    ('ddim', 'distance'): {16: (1.0, 0.99, 1.0), 64: (0.9, 0.85, 0.95), 256: (0.3, 0.2, 0.25),
                           1024: (0.02, 0.0, 0.01)},
    # heun under the distance criterion never falls below 0.5: no transition there
    ('heun', 'ratio'): {16: (0.95, 0.97, 0.96), 64: (0.6, 0.7, 0.65), 256: (0.05, 0.05, 0.1),
                        1024: (0.0, 0.0, 0.0)},
    ('heun', 'distance'): {16: (0.99, 1.0, 1.0), 64: (0.95, 0.9, 0.9), 256: (0.8, 0.85, 0.8),
                           1024: (0.6, 0.55, 0.6)},
}
RISE = {16: 0.0, 64: 0.3, 256: 0.02, 1024: 0.0}
COLUMNS = {'ratio': 'memorisation_ratio', 'distance': 'near_copy_rate'}
CALIBRATION = [
    {'num_train': n, 'seeds': list(SEEDS), 'threshold': 0.1234, 'num_copies': max(n, 256),
     'num_heldout': 64, 'heldout': {'ratio': h, 'distance': 0.01},
     'noisy': [{'sigma': 0.1, 'ratio': r, 'distance': 0.95},
               {'sigma': 0.2, 'ratio': r / 2, 'distance': 0.4}]}
    for n, h, r in ((16, 0.2, 0.9), (64, 0.1, 0.5), (256, 0.05, 0.2), (1024, 0.03, 0.1))]


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp('sweep')
    runs = []
    for seed_index, seed in enumerate(SEEDS):
        for n in SIZES:
            name = f'num_train_{n}_seed_{seed}'
            runs.append((name, n, seed))
            log = CsvLog(str(root / name / 'eval.csv'), resume_step=0)
            for step in (1000, 2000):
                log.append(step, {
                    f'{m}/{COLUMNS[c]}': max(f[n][seed_index] - (RISE[n] if step == 1000
                                                                 else 0.0), 0.0)
                    for (m, c), f in FINAL.items()})
    return transition.summarise(str(root), runs, N, num_boot=300, calibration=CALIBRATION)


def test_every_rate_interval_and_crossing_on_the_page_is_the_files(data):
    page = '\n'.join(reading.markdown(data))
    for criterion in ('ratio', 'distance'):
        for sampler in ('ddim', 'heun'):
            s = data['samplers'][sampler][criterion]
            np.testing.assert_allclose(s['rate'], [np.mean(FINAL[sampler, criterion][n])
                                                   for n in SIZES], atol=1e-12)
            cells = [f'{r:.2f} [{lo:.2f}, {hi:.2f}]'
                     for r, lo, hi in zip(s['rate'], s['low'], s['high'])]
            crossing = s['crossing']['text'].removeprefix('N* = ').removeprefix('N* ')
            row = f'| {sampler} | ' + ' | '.join(cells) + f' | {crossing} |'
            assert row in page
            assert f'{sampler} {crossing}' in reading.crossing_sentence(data)
    assert '| seeds (models) | 3 | 3 | 3 | 3 |  |' in page
    assert 'over models (3 seeds) and samples' in reading.crossing_sentence(data)
    assert f'{np.sqrt(2 / 3):.2f} at R = 3' in page   # the plug-in variance's (R − 1)/R


def test_survival_holds_for_a_falling_sampler_and_not_for_one_that_stays_high(data):
    sentence = reading.survival_sentence(data)
    assert 'the transition holds for ddim, does not hold for heun' in sentence
    heun = data['samplers']['heun']['distance']
    assert heun['low'][-1] > 0.1   # the rule's premise: heun stays above 1 − τ at N = 1024
    assert 'not shown for heun' in reading.summary(data)
    ddim = data['samplers']['ddim']['distance']
    assert ddim['low'][0] >= 0.9 and ddim['high'][-1] <= 0.1


def test_the_change_over_the_last_two_steps_against_its_standard_error(data):
    """The change of the mean over seeds and its SE recomputed here: a rise of 0.3 at N = 64
    is far beyond 2 SE; 0.02 at N = 256 is within it; none at N = 16."""
    for (sampler, criterion), finals in FINAL.items():
        moves = {x['num_train']: x for x in dict(reading.movement(data, criterion))[sampler]}
        for n in SIZES:
            last = np.array(finals[n], np.float64)
            first = np.maximum(last - RISE[n], 0.0)
            change = last.mean() - first.mean()
            se = np.sqrt(np.sum(first * (1 - first) + last * (1 - last)) / N) / len(SEEDS)
            x = moves[n]
            assert x['steps'] == (1000, 2000)
            assert x['change'] == pytest.approx(change, abs=1e-12)
            assert x['se'] == pytest.approx(se, rel=1e-12)
            assert x['verdict'] == ('rises' if change > 2 * se else reading.STILL)
    assert dict(reading.movement(data, 'ratio'))['ddim'][1]['verdict'] == 'rises'
    assert dict(reading.movement(data, 'ratio'))['ddim'][2]['verdict'] == reading.STILL
    sentence = reading.movement_sentence(data)
    assert 'ddim at N = 64 (0.45 → 0.75 from step 1000)' in sentence
    assert 'At the last evaluated step (2000)' in sentence
    table = reading.movement_table(data)
    x = dict(reading.movement(data, 'ratio'))['ddim']
    assert (f'| ddim, ratio | +0.00 ± {x[0]["se"]:.2f} | +0.30 ± {x[1]["se"]:.2f} rises | '
            f'+0.02 ± {x[2]["se"]:.2f} |') in table


def test_a_falling_rate_and_one_seed_per_n():
    curve = {'num_train': 32, 'steps': [1, 2],
             'seeds': [{'seed': 0, 'steps': [1, 2], 'rate': [0.9, 0.5]}]}
    x = reading.still_moving(curve, 100)
    se = np.sqrt((0.9 * 0.1 + 0.5 * 0.5) / 100)
    assert x['verdict'] == 'falls' and x['se'] == pytest.approx(se)
    assert reading.still_moving({**curve, 'steps': [2]}, 100) is None
    # a diverged seed (NaN) is left out; with no finite seed there is no verdict
    nan = {'seed': 1, 'steps': [1, 2], 'rate': [0.5, float('nan')]}
    assert reading.still_moving({**curve, 'seeds': curve['seeds'] + [nan]}, 100) == x
    assert reading.still_moving({**curve, 'seeds': [nan]}, 100) is None


def test_the_calibration_table_and_sentence(data):
    table = reading.calibration_table(data)
    assert table.splitlines()[0] == ('| N | seeds | held-out: ratio | held-out: distance | '
                                     'copy σ=0.1: ratio | copy σ=0.1: distance | '
                                     'copy σ=0.2: ratio | copy σ=0.2: distance |')
    assert '| 64 | 3 | 0.10 | 0.01 | 0.50 | 0.95 | 0.25 | 0.40 |' in table
    sentence = reading.calibration_sentence(data)
    # the middle σ (0.2) of the two: ratio 0.45 at N = 16, 0.05 at N = 1024
    assert 'σ = 0.2 is flagged by the ratio criterion at rate 0.45 at N = 16 and 0.05 at N = 1024' \
        in sentence
    assert reading.calibration_table({**data, 'calibration': []}) is None


def test_the_survival_details_are_each_samplers_numbers_at_its_ends(data):
    """Each clause 'sampler: rate [low, high] at N = n, ...' of the survival sentence is that
    sampler's distance-criterion numbers at that N (parsed back, not merely present)."""
    sentence = reading.survival_sentence(data)
    clauses = re.findall(r'(\w+): ([\d.]+) \[([\d.]+), ([\d.]+)\] at N = (\d+), '
                         r'([\d.]+) \[([\d.]+), ([\d.]+)\] at N = (\d+)', sentence)
    assert [c[0] for c in clauses] == ['ddim', 'heun']
    for m, *values in clauses:
        s = data['samplers'][m]['distance']
        for (rate, low, high, n) in (values[:4], values[4:]):
            i = s['num_train'].index(int(n))
            assert (rate, low, high) == tuple(f'{s[k][i]:.2f}' for k in ('rate', 'low', 'high'))
        assert (int(values[3]), int(values[7])) == (SIZES[0], SIZES[-1])


def test_the_crossings_are_each_samplers_and_criterions(data):
    sentence = reading.crossing_sentence(data)
    for criterion in ('ratio', 'distance'):
        part = sentence.split(f'under {reading.rule(data, criterion)}, ')[1].split(';')[0]
        for m in ('ddim', 'heun'):
            c = data['samplers'][m][criterion]['crossing']
            assert f'{m} {c["text"].removeprefix("N* = ")}' in part


def _series(num_train, rate, low, high, crossing=None, seeds=1, steps=None):
    return {'num_train': num_train, 'rate': rate, 'low': low, 'high': high,
            'interval_over': ['samples'] * len(num_train), 'num_seeds': [seeds] * len(num_train),
            'final_step': steps or [[100] * seeds] * len(num_train), 'crossing': crossing,
            'curves': []}


def _file(series, threshold=0.9):
    return {'threshold': threshold, 'num_samples': 100,
            'criteria': {c: {'rule': transition.RULES[c]} for c in transition.CRITERIA},
            'samplers': {m: per for m, per in series.items()}}


def test_survival_is_unknown_for_a_missing_bound_and_absent_for_one_n():
    ok = _series([16, 64], [1.0, 0.0], [0.95, 0.0], [1.0, 0.05])
    nan = _series([16, 64], [1.0, 0.0], [float('nan'), 0.0], [1.0, 0.05])
    data = _file({'a': {'distance': ok}, 'b': {'distance': nan}})
    assert reading.survives(ok, 0.9) == reading.HOLDS and reading.survives(nan, 0.9) is None
    assert 'holds for a, cannot be told for b' in reading.survival_sentence(data)
    assert 'not shown for b' in reading.summary(data)
    one = _file({'a': {'distance': _series([16], [1.0], [0.9], [1.0])}})
    assert reading.survives(one['samplers']['a']['distance'], 0.9) is None
    assert reading.survival_sentence(one) is None


def test_survival_straddling_its_bound_is_not_shown_and_wholly_wrong_side_fails():
    """Intervals that straddle τ at the smallest N or 1 − τ at the largest show neither a
    transition nor its absence; one wholly below τ at the smallest N, or wholly above 1 − τ
    at the largest, fails."""
    straddles = _series([16, 64], [0.9, 0.1], [0.85, 0.05], [0.95, 0.15])
    below = _series([16, 64], [0.5, 0.0], [0.4, 0.0], [0.6, 0.05])
    above = _series([16, 64], [1.0, 0.5], [0.95, 0.4], [1.0, 0.6])
    assert reading.survives(straddles, 0.9) == reading.NOT_SHOWN
    assert reading.survives(below, 0.9) == reading.survives(above, 0.9) == reading.FAILS
    sentence = reading.survival_sentence(_file({'a': {'distance': straddles}}))
    assert 'the transition is not shown for a' in sentence and 'no sampler' not in sentence
    assert 'no sampler goes from copying to creating' in reading.survival_sentence(
        _file({'b': {'distance': below}, 'c': {'distance': above}}))
    mixed = reading.survival_sentence(_file({'a': {'distance': straddles},
                                             'b': {'distance': below}}))
    assert 'does not hold for b, is not shown for a' in mixed


def test_near_crossing_brackets_the_interval_and_reads_the_flags():
    sizes = [16, 32, 64, 128, 256]
    inside = {'n_star': 50.0, 'low': 40.0, 'high': 70.0, 'separated': None, 'degenerate': None,
              'position': {'n_star': 'inside', 'low': 'inside', 'high': 'inside'}}
    s = _series(sizes, [0] * 5, [0] * 5, [0] * 5, inside)
    assert [reading.near_crossing(s, n) for n in sizes] == [False, True, True, True, False]
    below = {**inside, 'n_star': None, 'low': None, 'high': 20.0,
             'position': {'n_star': transition.BELOW, 'low': transition.BELOW,
                          'high': 'inside'}}
    s = _series(sizes, [0] * 5, [0] * 5, [0] * 5, below)
    assert [reading.near_crossing(s, n) for n in sizes] == [True, True, False, False, False]
    separated = {**inside, 'n_star': None, 'low': 16.0, 'high': 256.0, 'separated': [32, 64],
                 'position': {'n_star': transition.SEPARATED, 'low': 'inside',
                              'high': 'inside'}}
    s = _series(sizes, [0] * 5, [0] * 5, [0] * 5, separated)
    assert [reading.near_crossing(s, n) for n in sizes] == [False, True, True, False, False]
    for c in (None, {**inside, 'degenerate': 'all 0'}):
        assert not reading.near_crossing(_series(sizes, [0] * 5, [0] * 5, [0] * 5, c), 32)


def test_seeds_at_different_final_steps_are_named():
    s = _series([16, 64], [1.0, 0.2], [0.9, 0.1], [1.0, 0.3], seeds=2,
                steps=[[100, 100], [60, 100]])
    data = _file({'a': {'ratio': s}})
    assert reading.steps_sentence(data) == ('The seeds of N = 64 end at steps 60, 100: their '
                                            'pooled rate mixes training lengths.')
    assert reading.steps_sentence(data) in reading.summary(data)
    s['final_step'] = [[100, 100], [100, 100]]
    assert reading.steps_sentence(data) is None


def test_no_change_detected_is_said_as_such():
    curve = {'num_train': 16, 'steps': [1, 2],
             'seeds': [{'seed': 0, 'steps': [1, 2], 'rate': [0.5, 0.52]}]}
    s = {**_series([16, 64], [0.5, 0.1], [0.4, 0.0], [0.6, 0.2]), 'curves': [curve]}
    sentence = reading.movement_sentence(_file({'a': {'ratio': s}}))
    assert sentence.startswith('No change beyond 2 standard errors was detected between the '
                               'last two evaluated steps (up to 2)')
    assert '1 comparison, of which' in sentence


def test_every_number_of_the_reading_is_in_the_file(data):
    """No number in the reading's sentences that the file does not hold (rates, bounds,
    crossings, steps, N, τ), formatted as the page formats them."""
    held = set()
    for per in data['samplers'].values():
        for s in per.values():
            for key in ('rate', 'low', 'high'):
                held |= {f'{v:.2f}' for v in s[key]}
            held |= set(re.findall(r'\d+(?:\.\d+)?', s['crossing']['text']))
            for curve in s['curves']:
                for seed_curve in curve['seeds']:
                    held |= {str(v) for v in seed_curve['steps']}
                held |= {f'{v:.2f}' for v in curve['mean']}
    compared = sum(len(s['curves']) for per in data['samplers'].values() for s in per.values())
    held |= {str(n) for n in SIZES} | {'0.9', '0.1', '2', '95', '1', '3', '20', str(compared)}
    for c in CALIBRATION:
        held |= {f'{v:.2f}' for v in (c['heldout']['ratio'], c['heldout']['distance'])}
        held |= {f'{x[r]:.2f}' for x in c['noisy'] for r in ('ratio', 'distance')}
        held |= {f'{x["sigma"]:g}' for x in c['noisy']}
    for sentence in reading.reading(data):
        for number in re.findall(r'(?<![\w.])\d+(?:\.\d+)?', sentence):
            assert number in held, (number, sentence)
