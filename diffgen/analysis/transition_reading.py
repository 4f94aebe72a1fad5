"""The sweep's transition from copying to creating as Markdown: the tables and the reading of a
transition.json (format 2) that diffgen/analysis/transition.py writes. Every number is read
from it; each sentence of the reading is a comparison of those numbers with the rule that
makes it stated beside it:

  - rates by N: per criterion (ratio d_1/d_2 < 1/3, distance d_1 < δ) and sampler, the rate
    at the last evaluated step pooled over the seeds of N, its 95 % bootstrap interval (over
    models and samples with several seeds, over one model's samples with one), and the EMM
    N* (the fitted logistic's crossing of τ) with its interval;
  - whether the transition survives the N-independent criterion: a sampler goes from copying
    to creating under d_1 < δ when its interval at the smallest N lies at or above τ and its
    interval at the largest N at or below 1 − τ;
  - the calibration (the criteria on the data alone, copies.sweep_calibration): the rate
    each flags noisy copies of training images and held-out images at each N;
  - whether the rate still moves at the end of training (still_moving): the change of the
    mean over seeds between the last two evaluated steps s_1 < s_2 every seed has,
        Δ = p̄(s_2) − p̄(s_1),  SE(Δ)² = (1/R²) Σ_s [p_s(s_1)(1 − p_s(s_1)) + p_s(s_2)(1 − p_s(s_2))] / n,
    'rises' when Δ > 2 SE, 'falls' when Δ < −2 SE, else 'no clear change' (R seeds of n samples
    each; the two evaluations share x_T, which correlates them positively, so treating them
    as independent overstates SE: the rule claims a rise only where it is clear).
"""
from __future__ import annotations

import math

from diffgen.analysis import report, transition

CRITERIA = (('ratio', 'ratio criterion'), ('distance', 'distance criterion, the same at every N'))
Z = 2.0   # still_moving: a change beyond Z standard errors
STILL = 'no clear change'


def _n(value, spec='.2f'):
    return report.number(value, spec)


def _interval(rate, low, high):
    return f'{_n(rate)} [{_n(low)}, {_n(high)}]'


def rule(data, criterion):
    """The criterion's rule as transition.json states it ('d1/d2 < 1/3')."""
    return (data.get('criteria') or {}).get(criterion, {}).get('rule', criterion)


def samplers(data, criterion):
    """[(sampler, series)] of the samplers that have the criterion, in the file's order."""
    return [(m, per[criterion]) for m, per in (data.get('samplers') or {}).items()
            if isinstance(per, dict) and criterion in per and per[criterion].get('num_train')]


def sizes(data):
    """Every N of the file's series, ascending."""
    return sorted({n for c, _ in CRITERIA for _, s in samplers(data, c) for n in s['num_train']})


def crossing_text(c):
    """'62 [51, 75]' of a crossing as transition.py writes it (its 'text' without 'N* = ');
    'no fit' for None."""
    if not c:
        return transition.crossing_text(None).removeprefix('N* ')
    text = c.get('text', '')
    return text[len('N* = '):] if text.startswith('N* = ') else text.removeprefix('N* ')


def rate_table(data, criterion):
    """Markdown: a row per sampler, a column per N with the pooled rate and its interval, the
    EMM N* last; a first row with the seeds (models) per N."""
    series = samplers(data, criterion)
    ns = sizes(data)
    seeds = {}
    for _, s in series:
        for n, k in zip(s['num_train'], s['num_seeds']):
            seeds[n] = max(seeds.get(n, 0), k)
    rows = [['seeds (models)', *(str(seeds.get(n, '–')) for n in ns), '']]
    for m, s in series:
        at = {n: _interval(r, lo, hi) for n, r, lo, hi in zip(s['num_train'], s['rate'],
                                                              s['low'], s['high'])}
        rows.append([m, *(at.get(n, '–') for n in ns), crossing_text(s.get('crossing'))])
    return report.markdown_table(['sampler', *(f'N = {n}' for n in ns), 'EMM N* [95 %]'], rows)


def calibration_table(data):
    """Markdown: a row per N, the rate each criterion flags held-out images and noisy copies
    at each σ; None where transition.json has no calibration."""
    cal = data.get('calibration') or []
    if not cal:
        return None
    sigmas = [x['sigma'] for x in cal[0]['noisy']]
    header = ['N', 'seeds']
    with_heldout = all(c['heldout'] is not None for c in cal)
    if with_heldout:
        header += ['held-out: ratio', 'held-out: distance']
    header += [f'copy σ={s:g}: {r}' for s in sigmas for r in ('ratio', 'distance')]
    rows = []
    for c in cal:
        row = [str(c['num_train']), str(len(c['seeds']))]
        if with_heldout:
            row += [_n(c['heldout']['ratio']), _n(c['heldout']['distance'])]
        noisy = {x['sigma']: x for x in c['noisy']}
        row += [_n(noisy[s][r]) if s in noisy else '–' for s in sigmas
                for r in ('ratio', 'distance')]
        rows.append(row)
    return report.markdown_table(header, rows)


def still_moving(curve, num_samples, z=Z):
    """{'num_train', 'steps': (s_1, s_2), 'rates': (p̄(s_1), p̄(s_2)), 'change', 'se',
    'verdict': 'rises' | 'falls' | 'no clear change'} of one N's step curves (transition.json's
    curves entry) over its last two common steps (module docstring), over the seeds whose
    rates there are finite; None with fewer than two steps or no such seed."""
    steps = curve.get('steps') or []
    if len(steps) < 2:
        return None
    s1, s2 = steps[-2], steps[-1]
    at = []
    for seed in curve['seeds']:
        by_step = dict(zip(seed['steps'], seed['rate']))
        pair = (by_step[s1], by_step[s2])
        if all(math.isfinite(p) for p in pair):   # a diverged seed's NaN is left out
            at.append(pair)
    if not at:
        return None
    r = len(at)
    p1, p2 = sum(a for a, _ in at) / r, sum(b for _, b in at) / r
    var = sum(a * (1 - a) + b * (1 - b) for a, b in at) / num_samples / r ** 2
    se, change = math.sqrt(var), p2 - p1
    verdict = ('rises' if change > z * se and change > 0 else
               'falls' if change < -z * se and change < 0 else STILL)
    return {'num_train': curve['num_train'], 'steps': (s1, s2), 'rates': (p1, p2),
            'change': change, 'se': se, 'verdict': verdict}


def movement(data, criterion):
    """[(sampler, [still_moving() per N])] of the criterion."""
    return [(m, [x for x in (still_moving(c, data['num_samples']) for c in s.get('curves', []))
                 if x is not None]) for m, s in samplers(data, criterion)]


def movement_table(data):
    """Markdown: a row per sampler and criterion, per N the change of the mean rate over the
    last two evaluated steps ('+0.08 rises'); None without step curves."""
    ns = sizes(data)
    rows = []
    for criterion, _ in CRITERIA:
        for m, moves in movement(data, criterion):
            at = {x['num_train']: f'{x["change"]:+.2f} ± {x["se"]:.2f}' + (
                '' if x['verdict'] == STILL else f' {x["verdict"]}') for x in moves}
            if at:
                rows.append([f'{m}, {criterion}', *(at.get(n, '–') for n in ns)])
    if not rows:
        return None
    return report.markdown_table(['sampler, criterion', *(f'N = {n}' for n in ns)], rows)


HOLDS, FAILS, NOT_SHOWN = 'holds', 'fails', 'not shown'


def survives(s, threshold):
    """Whether one sampler's series goes from copying to creating, from its 95 % intervals
    at its smallest N ([l_0, h_0]) and its largest N ([l_1, h_1]):
      'holds' when l_0 ≥ τ and h_1 ≤ 1 − τ (copies at the smallest N, creates at the largest);
      'fails' when h_0 < τ or l_1 > 1 − τ (an interval lies wholly on the wrong side);
      'not shown' otherwise (an interval straddles its bound);
      None when it cannot tell (fewer than two N, or a bound is not a number)."""
    if len(s['num_train']) < 2:
        return None
    bounds = s['low'][0], s['high'][0], s['low'][-1], s['high'][-1]
    if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in bounds):
        return None
    low0, high0, low1, high1 = bounds
    if low0 >= threshold and high1 <= 1 - threshold:
        return HOLDS
    if high0 < threshold or low1 > 1 - threshold:
        return FAILS
    return NOT_SHOWN


def survival(data):
    """[(sampler, series, survives())] of the distance criterion's series with two N or more."""
    return [(m, s, survives(s, data['threshold'])) for m, s in samplers(data, 'distance')
            if len(s['num_train']) >= 2]


def seed_counts(data):
    """The seeds per N over the N that have several (R > 1), ascending, each once."""
    return sorted({k for c, _ in CRITERIA for _, s in samplers(data, c)
                   for k in s.get('num_seeds', []) if isinstance(k, int) and k > 1})


def seeds_text(data):
    """'2–3 seeds' (the range of seeds over the N that have several), '' where none has."""
    counts = seed_counts(data)
    if not counts:
        return ''
    low, high = counts[0], counts[-1]   # seed_counts is ascending
    return f'{low} seeds' if low == high else f'{low}–{high} seeds'


def few_seeds_note(data):
    """With R seeds the bootstrap's between-model variance is the plug-in one, (R − 1)/R of
    the unbiased (docs/math.md §7): the note saying so for each R > 1 of the file (None
    where no N has several seeds)."""
    counts = seed_counts(data)
    if not counts:
        return None
    return (f'With R seeds per N the bootstrap over models draws R of R, so the between-model '
            f'part of an interval is √((R − 1)/R) as wide as the seeds\' spread warrants ('
            + ', '.join(f'{math.sqrt((r - 1) / r):.2f} at R = {r}' for r in counts)
            + '): these intervals are too narrow where the seeds disagree.')


def interval_basis(data):
    """What the intervals cover: 'models and samples', 'the samples of one model per N', or
    both where the seeds per N differ."""
    over = {o for c, _ in CRITERIA for _, s in samplers(data, c)
            for o in s.get('interval_over', [])}
    seeds = seeds_text(data)
    models = f'models ({seeds}) and samples' if seeds else 'models and samples'
    return (models if over == {'models and samples'} else
            'the samples of one model per N' if over == {'samples'} else
            f'{models} where N has several seeds, one model\'s samples where it has one')


def crossing_sentence(data):
    """The EMM per criterion and sampler, with the interval's meaning."""
    parts = []
    for criterion, _ in CRITERIA:
        series = samplers(data, criterion)
        if series:
            parts.append(f'under {rule(data, criterion)}, ' + ', '.join(
                f'{m} {crossing_text(s.get("crossing"))}' for m, s in series))
    if not parts:
        return None
    return (f'The EMM N* (where the logistic fitted in log N crosses τ = '
            f'{_n(data["threshold"], "g")}; 95 % bootstrap over {interval_basis(data)}): '
            + '; '.join(parts) + '.')


def survival_sentence(data):
    """Whether the transition survives the N-independent criterion, per sampler."""
    series = survival(data)
    if not series:
        return None
    t = data['threshold']
    held, failed, open_, unknown = ([m for m, _, v in series if v == want]
                                    for want in (HOLDS, FAILS, NOT_SHOWN, None))
    detail = '; '.join(f'{m}: {_interval(s["rate"][0], s["low"][0], s["high"][0])} at N = '
                       f'{s["num_train"][0]}, {_interval(s["rate"][-1], s["low"][-1], s["high"][-1])} '
                       f'at N = {s["num_train"][-1]}' for m, s, _ in series)
    rule_text = (f'(rule: the 95 % interval, over {interval_basis(data)}, at the smallest N at '
                 f'or above τ = {_n(t, "g")} and at the largest N at or below {_n(1 - t, "g")}; '
                 'it does not hold where an interval lies wholly on the wrong side, and is not '
                 'shown where one straddles its bound)')
    criterion = f'the N-independent criterion {rule(data, "distance")}'
    if held and not (failed or open_ or unknown):
        head = (f'The transition from copying to creating survives {criterion} for every '
                'sampler')
    elif failed and not (held or open_ or unknown):
        head = f'Under {criterion} no sampler goes from copying to creating'
    else:
        said = [f'holds for {", ".join(held)}' if held else '',
                f'does not hold for {", ".join(failed)}' if failed else '',
                f'is not shown for {", ".join(open_)}' if open_ else '',
                f'cannot be told for {", ".join(unknown)} (a bound is missing)' if unknown
                else '']
        head = f'Under {criterion} the transition ' + ', '.join(x for x in said if x)
    return f'{head} {rule_text}: {detail}.'


def calibration_sentence(data):
    """What the criteria flag on the data alone at the smallest and the largest N."""
    cal = data.get('calibration') or []
    if len(cal) < 1 or not cal[0].get('noisy'):
        return None
    first, last = cal[0], cal[-1]
    sigma = first['noisy'][len(first['noisy']) // 2]['sigma']
    pick = lambda c, r: next((x[r] for x in c.get('noisy', []) if x['sigma'] == sigma), None)
    text = (f'On the data alone (no model), a training image plus noise of RMS σ = {sigma:g} '
            f'is flagged by the ratio criterion at rate {_n(pick(first, "ratio"))} at N = '
            f'{first["num_train"]} and {_n(pick(last, "ratio"))} at N = {last["num_train"]}, '
            f'by the distance criterion at {_n(pick(first, "distance"))} and '
            f'{_n(pick(last, "distance"))}')
    if first.get('heldout') is not None and last.get('heldout') is not None:
        text += (f'; held-out images (new draws of the source) are flagged at '
                 f'{_n(first["heldout"]["ratio"])} and {_n(last["heldout"]["ratio"])} (ratio), '
                 f'{_n(first["heldout"]["distance"])} and {_n(last["heldout"]["distance"])} '
                 f'(distance)')
    return text + '.'


def steps_sentence(data):
    """Where the seeds of one N ended at different steps (an unfinished or shorter run among
    them): their pooled rate mixes training lengths. None where every final step is one."""
    mixed = {}
    for criterion, _ in CRITERIA:
        for _, s in samplers(data, criterion):
            for n, steps in zip(s['num_train'], s.get('final_step', [])):
                if len(set(steps)) > 1:
                    mixed[n] = sorted(set(steps))
    if not mixed:
        return None
    return ('The seeds of ' + '; '.join(f'N = {n} end at steps {", ".join(map(str, st))}'
                                        for n, st in sorted(mixed.items()))
            + ': their pooled rate mixes training lengths.')


def _moving(data):
    """({criterion: {sampler: [still_moving() that rise or fall]}}, the last steps seen,
    how many (sampler, criterion, N) were compared)."""
    moving, last_steps, compared = {}, set(), 0
    for criterion, _ in CRITERIA:
        for m, moves in movement(data, criterion):
            last_steps.update(x['steps'][1] for x in moves)
            compared += len(moves)
            changed = [x for x in moves if x['verdict'] != STILL]
            if changed:
                moving.setdefault(criterion, {})[m] = changed
    return moving, sorted(last_steps), compared


def near_crossing(s, num_train):
    """Whether num_train lies within the swept sizes that bracket the series' N* interval:
    from the largest swept N at or below its low end to the smallest at or above its high
    end, a bound outside the range (None, flagged '< smallest N' / '> largest N') taken as
    the range's end; for separated counts the two sizes [N_a, N_b] (an end None: the
    range's). False for no crossing or degenerate counts."""
    c = s.get('crossing')
    if not c or c.get('degenerate'):
        return False
    swept = s['num_train']
    ends = {transition.BELOW: swept[0], transition.ABOVE: swept[-1]}
    if c.get('separated') and c['position'].get('n_star') == transition.SEPARATED:
        low, high = c['separated']
    else:
        low, high = c.get('low'), c.get('high')
    if low is None:
        low = ends.get(c['position'].get('low'), swept[0])
    if high is None:
        high = ends.get(c['position'].get('high'), swept[-1])
    below = max([n for n in swept if n <= low], default=swept[0])
    above = min([n for n in swept if n >= high], default=swept[-1])
    return below <= num_train <= above


def movement_sentence(data):
    """Where the rate still rises or falls at the end of training, per criterion and
    sampler; what that means for N*."""
    moving, last_steps, compared = _moving(data)
    if not last_steps:
        return None
    at = ', '.join(str(s) for s in last_steps)
    rule_text = (f'(rule: the mean over seeds changes by more than {Z:g} standard errors '
                 f'between the last two evaluations; {compared} comparison{"s" * (compared != 1)}, '
                 'of which at most about 1 in 20 would show a change by chance where there is '
                 'none)')
    if not moving:
        return (f'No change beyond {Z:g} standard errors was detected between the last two '
                f'evaluated steps (up to {at}) {rule_text}.')
    parts = []
    for criterion, per in moving.items():
        parts.append(f'{criterion} criterion: ' + '; '.join(
            f'{m} at N = ' + ', '.join(
                f'{x["num_train"]} ({_n(x["rates"][0])} → {_n(x["rates"][1])} from step '
                f'{x["steps"][0]})' for x in xs) for m, xs in per.items()))
    text = (f'At the last evaluated step ({at}) the rate still moves {rule_text}: '
            + '. '.join(parts) + f'. At the other N compared no change beyond {Z:g} '
            'standard errors was detected.')
    near = sorted({f'{m} ({criterion})' for criterion, per in moving.items()
                   for m, xs in per.items() if any(near_crossing(
                       dict(samplers(data, criterion))[m], x['num_train']) for x in xs)})
    if near:
        text += (f' For {", ".join(near)} a swept N next to N* still moves: its N* is the '
                 f'crossing at step {at}, not that of a model trained until its rates settle.')
    return text


def summary(data):
    """The transition in a few sentences (README.md): the EMM per criterion and sampler,
    whether the transition survives the N-independent criterion (and over what its
    intervals are), the N whose rate still moves at the end of training."""
    parts = [crossing_sentence(data)]
    series = survival(data)
    if series:
        failed = [m for m, _, v in series if v != HOLDS]
        parts.append(f'The transition survives the N-independent criterion for every sampler '
                     f'(intervals over {interval_basis(data)}).' if not failed else
                     f'Under the N-independent criterion it is not shown for '
                     f'{", ".join(failed)}.')
    parts.append(steps_sentence(data))
    moving, last_steps, _ = _moving(data)
    if moving:
        sizes_moving = sorted({x['num_train'] for per in moving.values() for xs in per.values()
                               for x in xs})
        parts.append(f'At the last step ({", ".join(map(str, last_steps))}) the rate still '
                     f'rises or falls at N = {", ".join(map(str, sizes_moving))} for at least '
                     'one sampler and criterion.')
    return ' '.join(p for p in parts if p)


def reading(data):
    """The reading's sentences, in order (those the file has numbers for)."""
    return [s for s in (crossing_sentence(data), survival_sentence(data),
                        calibration_sentence(data), steps_sentence(data),
                        movement_sentence(data)) if s]


def markdown(data):
    """The transition's Markdown lines: the reading, the rate table per criterion, the
    calibration table, the end-of-training movement table."""
    lines = [' '.join(reading(data)), '']
    for criterion, title in CRITERIA:
        if samplers(data, criterion):
            lines += [f'Rate flagged at the last evaluated step, {title} '
                      f'({rule(data, criterion)}), mean over seeds [95 % bootstrap], of '
                      f'{data["num_samples"]} samples per model:', '',
                      rate_table(data, criterion), '']
    note = few_seeds_note(data)
    if note:
        lines += [note, '']
    table = calibration_table(data)
    if table:
        cal = data['calibration']
        lines += [f'Calibration on the data alone (δ = {_n(cal[0]["threshold"], ".4f")}; '
                  f'{min(c["num_copies"] for c in cal)}–{max(c["num_copies"] for c in cal)} '
                  f'noisy copies per σ; mean over the seeds\' training sets):', '', table, '']
    table = movement_table(data)
    if table:
        lines += ['Change of the mean rate over the last two evaluated steps (± its standard '
                  'error; "rises" or "falls" beyond 2 standard errors):', '', table, '']
    return lines
