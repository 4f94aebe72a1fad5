"""The sampler-lag study's results as Markdown: the tables and the reading of a study.json
that studies/sampler_lag.py writes (docs/experiments.md, "The sampler-lag study"). This is
the one place besides that script that knows study.json's layout:

  workdir, config, num_train, num_samples, steps, analysed_step, bands [[lo, hi], ...],
  ddim_steps, commit, provenance {step, config_digest, data_fingerprint, machine};
  by_step   {'STEP/ema' | 'STEP/raw': {sampler: [memorisation ratio, median d_1]}}   (part 1)
  paths     {'ddpm/ema' | 'ddim-100/raw' | ...: {num_samples, num_copies, copy_fraction,
             x0_error, max_weight: {all, copies, novel: [per band]},
             forward_distance: {all, copies, novel, forward: [per band]}}}         (part 2)
  switch    {'t_s': [memorisation ratio, median d_1]}                             (part 3)

(num_train, commit and provenance are absent from a study.json older than them: rendered as
'not recorded'.) Every number on the section is read from it; the reading's sentences are
comparisons of those numbers, with the rule that makes each one stated beside it.
"""
from __future__ import annotations

from diffgen import files
from diffgen.analysis import report
from diffgen.errors import CorruptFileError

STUDY = 'study.json'
FIGURE = 'sampler_lag.png'   # written beside study.json
REQUIRED = ('workdir', 'num_samples', 'steps', 'analysed_step', 'bands', 'by_step', 'paths',
            'switch')
PARAMS = {'ema': 'EMA', 'raw': 'raw'}
METHODS = {'ddpm': 'DDPM', 'ddim': 'DDIM', 'heun': 'Heun'}
GROUPS = (('all', 'all'), ('copies', 'copy'), ('novel', 'do not copy'))
MEASURES = (('x0_error', 'x₀-error E‖x̂₀^θ − x̂₀*‖²/D', '.3g'),
            ('max_weight', 'max weight of ε*', '.3f'),
            ('forward_distance', 'ν (median)', '.3f'))
REMEDY = 'rerun studies/sampler_lag.py to write it again'


def read(path):
    """study.json at path as stored; CorruptFileError when it is not one (a key of REQUIRED
    missing)."""
    study = files.read_json(path, REMEDY)
    missing = [k for k in REQUIRED if k not in study] if isinstance(study, dict) else REQUIRED
    if missing:
        raise CorruptFileError(f'{path} is no study.json of studies/sampler_lag.py (it lacks '
                               f'{", ".join(missing)}); {REMEDY}')
    return study


def stamp_row(name, study):
    """[run, sections, step, config digest, data fingerprint, machine] of the analysed
    checkpoint, as a report's stamp row."""
    p = study.get('provenance') or {}
    return [name, 'sampler lag', str(study['analysed_step']),
            *(str(p.get(k, 'not recorded')) for k in ('config_digest', 'data_fingerprint',
                                                       'machine'))]


def _pair(value, d1_spec='.3f'):
    """'ratio / median d1' of a [ratio, d1] pair."""
    return f'{report.number(value[0], ".2f")} / {report.number(value[1], d1_spec)}'


def _band(band):
    lo, hi = band
    return f't {lo}–{hi}'


def method_label(name):
    """'ddim-100' -> 'DDIM-100', 'heun-50' -> 'Heun-50'."""
    method, dash, steps = name.partition('-')
    return METHODS.get(method, method) + dash + steps


def _sampler_name(key):
    """'ddim-100/ema' -> 'DDIM-100 (EMA)'."""
    name, _, params = key.partition('/')
    return f'{method_label(name)} ({PARAMS.get(params, params)})'


def part1_table(study):
    """Memorisation ratio / median d_1 per kept step and parameters (rows) and sampler."""
    keys = list(study['by_step'])
    samplers = list(dict.fromkeys(s for k in keys for s in study['by_step'][k]))
    rows = [[k.split('/')[0], PARAMS.get(k.split('/')[1], k.split('/')[1]),
             *(_pair(study['by_step'][k][s]) if s in study['by_step'][k] else '–'
               for s in samplers)] for k in keys]
    return report.markdown_table(['step', 'parameters', *map(method_label, samplers)], rows)


def part2_table(study, key):
    """One path's x0-error, max weight and ν per band of t (columns), over all samples, the
    endpoints that copy and the others (with their counts), and ν of the forward process."""
    path = study['paths'][key]
    counts = {'all': path['num_samples'], 'copies': path['num_copies'],
              'novel': path['num_samples'] - path['num_copies']}
    rows = []
    for measure, label, spec in MEASURES:
        for group, words in GROUPS:
            rows.append([f'{label}, endpoints that {words} (n = {counts[group]})'
                         if group != 'all' else f'{label}, all (n = {counts[group]})',
                         *(report.number(v, spec) for v in path[measure][group])])
    rows.append(['ν (median) of forward-process states a_t y + σ_t ε',
                 *(report.number(v, '.3f') for v in path['forward_distance']['forward'])])
    return report.markdown_table(['measure', *map(_band, study['bands'])], rows)


def switch_points(study):
    """[(t_s, ratio, median d_1)] of part 3, t_s descending (t_s = T: DDIM alone)."""
    return sorted(((int(t), v[0], v[1]) for t, v in study['switch'].items()), reverse=True)


def part3_table(study):
    return report.markdown_table(
        ['hand-over t_s', 'memorisation ratio', 'median d₁'],
        [[t, report.number(r, '.2f'), report.number(d, '.3f')] for t, r, d in
         switch_points(study)])


def _ratio(study, params, sampler):
    """Part 1's memorisation ratio of sampler at the analysed step (None if not run)."""
    row = study['by_step'].get(f'{study["analysed_step"]}/{params}') or {}
    return row[sampler][0] if sampler in row else None


def part1_sentence(study):
    """The memorisation ratio of every sampler at the analysed step with the EMA and the raw
    parameters, DDPM's lead over the short DDIM with each (the EMA's lag), and how much of
    the EMA lead the long DDIM closes (the step count)."""
    step, short = study['analysed_step'], f'ddim-{study.get("ddim_steps", 100)}'
    row = study['by_step'].get(f'{step}/ema') or {}
    ddpm = next((s for s in row if s.startswith('ddpm')), None)
    others = [s for s in row if s != ddpm]
    if ddpm is None or not others:
        return None
    params = [p for p in PARAMS if f'{step}/{p}' in study['by_step']]
    said = lambda p: (f'{report.number(_ratio(study, p, ddpm), ".2f")} for DDPM against '
                      + ', '.join(f'{method_label(s)} {report.number(_ratio(study, p, s), ".2f")}'
                                  for s in others) + f' with the {PARAMS[p]} parameters')
    text = f'At step {step} the memorisation ratio is ' + '; '.join(map(said, params))
    if short not in row:
        return text + '.'
    leads = {p: _ratio(study, p, ddpm) - _ratio(study, p, short) for p in params}
    text += (f'. DDPM\'s lead over {method_label(short)} is '
             + ' and '.join(f'{leads[p]:+.2f} ({PARAMS[p]})' for p in params))
    long = next((s for s in others if s.startswith('ddim-') and s != short), None)
    if long and leads['ema'] > 0:
        closed = (_ratio(study, 'ema', long) - _ratio(study, 'ema', short)) / leads['ema']
        text += f'; {method_label(long)} closes {closed:.0%} of the EMA lead'
    return text + '.'


def part2_sentence(study):
    """Along the short DDIM's path (EMA): how many endpoints copy, in how many bands of t the
    endpoints that do not copy have the larger x0-error (and the two in the lowest band where
    both groups have one), and the median ν of its, DDPM's and forward-process states in the
    lowest band."""
    key, ddpm = f'ddim-{study.get("ddim_steps", 100)}/ema', 'ddpm/ema'
    path = study['paths'].get(key)
    if not path:
        return None
    error = path['x0_error']
    both = [(band, c, n) for band, c, n in zip(study['bands'], error['copies'], error['novel'])
            if c is not None and n is not None]
    text = (f'Along {_sampler_name(key)}\'s path at step {study["analysed_step"]}, '
            f'{path["num_copies"]} of {path["num_samples"]} endpoints copy')
    if both:
        band, c, n = both[0]
        text += (f'; the mean x₀-error of those that do not copy is the larger in '
                 f'{sum(n > c for _, c, n in both)} of {len(both)} bands of t (at {_band(band)}: '
                 f'{report.number(n, ".3g")} against {report.number(c, ".3g")})')
    nu = path['forward_distance']
    text += (f'; at {_band(study["bands"][0])} the median ν of its states is '
             f'{report.number(nu["all"][0], ".3f")}')
    if ddpm in study['paths']:
        text += (f', of DDPM\'s '
                 f'{report.number(study["paths"][ddpm]["forward_distance"]["all"][0], ".3f")}')
    return text + f', of forward-process states {report.number(nu["forward"][0], ".3f")}.'


def part3_sentence(study):
    """The memorisation ratio with DDIM from t_s = T (DDIM alone) and from the smallest t_s,
    and the largest t_s at which at least half of that difference is made up."""
    points = switch_points(study)
    if len(points) < 2:
        return None
    (t_hi, alone, _), (t_lo, late, _) = points[0], points[-1]
    text = (f'Handing DDPM\'s state to DDIM at t_s = {t_hi} (DDIM alone) gives a memorisation '
            f'ratio of {report.number(alone, ".2f")}, at t_s = {t_lo} '
            f'{report.number(late, ".2f")}')
    if late != alone:
        half = (alone + late) / 2
        reached = [t for t, r, _ in points if (r - half) * (late - alone) >= 0]
        text += (f'; the largest t_s whose ratio is at least half-way from the one to the '
                 f'other is {reached[0]}')
    return text + '.'


def reading(study):
    """The section's sentences (2-4), each a comparison of study.json's numbers."""
    said = [s for s in (part1_sentence(study), part2_sentence(study), part3_sentence(study))
            if s]
    return said + [f'One run (N = {study.get("num_train", "not recorded")}), one seed, '
                   f'{study["num_samples"]} samples per ratio: a ratio moves by 1/'
                   f'{study["num_samples"]} per sample.']


def markdown(study, figure=None):
    """The section's Markdown lines (no heading): provenance, reading, the three tables and
    the figure (figure: its path relative to the page; None: none)."""
    p = study.get('provenance') or {}
    lines = [f'From the run `{study["workdir"]}` (N = {study.get("num_train", "not recorded")}, '
             f'config {study.get("config", "not recorded")}, config digest '
             f'{p.get("config_digest", "not recorded")}), kept steps '
             f'{", ".join(map(str, study["steps"]))}, parts 2 and 3 at step '
             f'{study["analysed_step"]}, {study["num_samples"]} samples per sampler from the '
             f'evaluation\'s x_T, made by studies/sampler_lag.py at commit '
             f'`{study.get("commit", "not recorded")}`.', '',
             ' '.join(reading(study)), '']
    if study['by_step']:
        lines += ['Part 1, memorisation ratio / median d₁ per kept step and parameters:', '',
                  part1_table(study), '']
    for key in study['paths']:
        path = study['paths'][key]
        lines += [f'Part 2, along {_sampler_name(key)}\'s own path at step '
                  f'{study["analysed_step"]} ({path["num_copies"]} of {path["num_samples"]} '
                  'endpoints copy, d₁/d₂ < 1/3), per band of t: the mean x₀-error, the mean '
                  'largest posterior weight of ε*, and the median forward distance ν = '
                  'min_i ‖x_t − a_t y_i‖ / (σ_t √D):', '', part2_table(study, key), '']
    if study['switch']:
        lines += [f'Part 3, DDPM down to t_s, then DDIM-{study.get("ddim_steps", 100)} from '
                  f'exactly t_s (EMA, step {study["analysed_step"]}):', '',
                  part3_table(study), '']
    if figure:
        lines += [f'![sampler lag]({figure})', '']
    return lines
