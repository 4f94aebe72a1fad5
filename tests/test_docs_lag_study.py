"""The sampler-lag study on the results page (python -m diffgen.docs --study=LABEL=PATH): from
a study.json with the layout studies/sampler_lag.py writes (its path measures made by its own
banded / split_by_endpoint from random values), every number of its three tables on the page
equals study.json's (read back from the page's Markdown tables), the reading's numbers are
study.json's, the provenance is a stamp row, the figure is copied; --render_only renders it
again and --keep=LABEL keeps it when study.json is gone."""
import json
import re
import shutil

import numpy as np
import pytest
from PIL import Image

from diffgen import docs
from diffgen.analysis import lag_study
from diffgen.errors import CorruptFileError, UserError
from studies import sampler_lag as lag

T = 1000
STEPS = (1000, 3000, 5000)
PROVENANCE = {'step': 5000, 'config_digest': 'abcdef0123456789',
              'data_fingerprint': '0011223344556677', 'machine': '2 CPU cores, x86_64, cpu x1'}


def fake_study(seed=0, num_samples=20):
    """A study.json as run_study writes it, its numbers random."""
    rng = np.random.default_rng(seed)
    ratio = lambda: [float(rng.integers(0, num_samples + 1) / num_samples),
                     float(rng.uniform(0.05, 0.4))]
    by_step = {f'{s}/{p}': {f'{m}-{n or T}': ratio() for m, n in lag.SAMPLERS}
               for s in STEPS for p in ('ema', 'raw')}
    paths = {}
    for name, ts in (('ddpm', np.arange(T, 0, -1)),
                     (f'ddim-{lag.DDIM_STEPS}', np.arange(T, 0, -T // lag.DDIM_STEPS))):
        for params in ('ema', 'raw'):
            copies = rng.random(num_samples) < 0.6
            values = lambda: rng.lognormal(-3, 1, (len(ts), num_samples))
            paths[f'{name}/{params}'] = {
                'num_samples': num_samples, 'num_copies': int(copies.sum()),
                'copy_fraction': float(copies.mean()),
                'x0_error': lag.split_by_endpoint(ts, values(), copies),
                'max_weight': lag.split_by_endpoint(ts, rng.random((len(ts), num_samples)),
                                                    copies),
                'forward_distance': {**lag.split_by_endpoint(ts, values(), copies, np.median),
                                     'forward': lag.banded(ts, values(), np.median)}}
    return {'workdir': '/runs/digits/num_train_128_seed_0', 'config': 'config.json',
            'num_train': 128, 'num_samples': num_samples, 'steps': list(STEPS),
            'analysed_step': STEPS[-1], 'bands': [list(b) for b in lag.BANDS],
            'ddim_steps': lag.DDIM_STEPS, 'by_step': by_step, 'paths': paths,
            'switch': {str(t): ratio() for t in lag.SWITCH_TIMES}, 'commit': 'a1b2c3d',
            'provenance': PROVENANCE}


@pytest.fixture
def study(tmp_path):
    """(the study, the path of its study.json with sampler_lag.png beside it)."""
    made = fake_study()
    folder = tmp_path / 'lag'
    folder.mkdir()
    (folder / lag_study.STUDY).write_text(json.dumps(made))
    Image.new('RGB', (4, 3), (0, 90, 200)).save(folder / lag_study.FIGURE)
    return made, folder / lag_study.STUDY


def tables(page):
    """{the line before a Markdown table: its rows as lists of cells (header first)}."""
    found, lines = {}, page.splitlines()
    for i, line in enumerate(lines):
        if line.startswith('| ') and not lines[i - 1].startswith('|'):
            rows = []
            for row in lines[i:]:
                if not row.startswith('|'):
                    break
                if not row.startswith('| ---'):
                    rows.append([c.strip() for c in row.strip('|').split(' | ')])
            found[lines[i - 2]] = rows
    return found


def table_after(page, start):
    return next(rows for caption, rows in tables(page).items() if caption.startswith(start))


def close(cell, value, places):
    """A page's cell (format(value, '.{places}f') or '.3g') holds value."""
    return cell == '–' if value is None else abs(float(cell) - value) <= 0.5001 * 10 ** -places \
        or abs(float(cell) - value) <= 5e-3 * abs(value)


def render(out, study_path, tmp_path, **kwargs):
    readme = tmp_path / 'README.md'
    readme.write_text(f'# x\n\n{docs.README_HEADING}\n\n{docs.BEGIN}\n{docs.END}\n')
    docs.run_command(str(out), readme=str(readme), **kwargs)
    return (out / docs.PAGE).read_text(), docs.readme_block(readme.read_text())


def test_every_number_of_the_tables_is_study_jsons(study, tmp_path):
    made, path = study
    page, _ = render(tmp_path / 'out', path, tmp_path, studies=[f'n128={path}'])
    assert f'## {docs.STUDY_HEADING}' in page and '### n128' in page

    part1 = table_after(page, 'Part 1')
    samplers = list(made['by_step'][f'{STEPS[0]}/ema'])
    assert part1[0] == ['step', 'parameters', *map(lag_study.method_label, samplers)]
    assert len(part1) - 1 == len(made['by_step'])
    for row in part1[1:]:
        values = made['by_step'][f'{row[0]}/{row[1].lower()}']
        for cell, sampler in zip(row[2:], samplers):
            ratio, d1 = cell.split(' / ')
            assert close(ratio, values[sampler][0], 2) and close(d1, values[sampler][1], 3)

    for key, path_summary in made['paths'].items():
        name, _, params = key.partition('/')
        rows = table_after(page, f'Part 2, along {name.upper()} ({params.upper() if params == "ema" else params})')
        assert rows[0][1:] == [f't {lo}–{hi}' for lo, hi in made['bands']]
        expected = [path_summary[m][g] for m, _, _ in lag_study.MEASURES
                    for g, _ in lag_study.GROUPS] + [path_summary['forward_distance']['forward']]
        assert len(rows) - 1 == len(expected)
        for row, values in zip(rows[1:], expected):
            assert all(close(c, v, 3) for c, v in zip(row[1:], values)), (row, values)
        counts = [int(re.search(r'n = (\d+)', row[0]).group(1)) for row in rows[1:4]]
        assert counts == [path_summary['num_samples'], path_summary['num_copies'],
                          path_summary['num_samples'] - path_summary['num_copies']]

    part3 = table_after(page, 'Part 3')
    assert [int(r[0]) for r in part3[1:]] == sorted(map(int, made['switch']), reverse=True)
    for t, ratio, d1 in part3[1:]:
        assert close(ratio, made['switch'][t][0], 2) and close(d1, made['switch'][t][1], 3)


def test_the_provenance_reading_and_figure(study, tmp_path):
    made, path = study
    out = tmp_path / 'out'
    page, block = render(out, path, tmp_path, studies=[f'n128={path}'])
    p = made['provenance']
    assert (f'| study n128 | sampler lag | {made["analysed_step"]} | {p["config_digest"]} | '
            f'{p["data_fingerprint"]} | {p["machine"]} |') in page
    assert f'commit `{made["commit"]}`' in page and f'`{made["workdir"]}`' in page
    assert f'--study=n128={path}' in page
    figure = f'images/results/study-n128/{lag_study.FIGURE}'
    assert f'![sampler lag]({figure})' in page and (out / figure).stat().st_size > 0

    reading = ' '.join(lag_study.reading(made))
    assert reading in page and reading in block
    step = made['analysed_step']
    ddpm = made['by_step'][f'{step}/ema'][f'ddpm-{T}'][0]
    assert f'At step {step} the memorisation ratio is {ddpm:.2f} for DDPM against' in reading
    short = made['by_step'][f'{step}/ema'][f'ddim-{lag.DDIM_STEPS}'][0]
    assert f'lead over DDIM-{lag.DDIM_STEPS} is {ddpm - short:+.2f} (EMA)' in reading
    ddim = made['paths'][f'ddim-{lag.DDIM_STEPS}/ema']
    assert f'{ddim["num_copies"]} of {ddim["num_samples"]} endpoints copy' in reading
    switch = lag_study.switch_points(made)
    assert (f'at t_s = {switch[0][0]} (DDIM alone) gives a memorisation ratio of '
            f'{switch[0][1]:.2f}, at t_s = {switch[-1][0]} {switch[-1][1]:.2f}') in reading


def test_the_half_way_hand_over_is_the_largest_t_s_past_the_midpoint():
    made = fake_study()
    made['switch'] = {'1000': [0.2, 0.1], '500': [0.3, 0.1], '100': [0.55, 0.1],
                      '50': [0.5, 0.1], '10': [0.8, 0.1]}
    assert lag_study.part3_sentence(made).endswith('from the one to the other is 100.')
    made['switch'] = {'1000': [0.5, 0.1], '10': [0.5, 0.1]}
    assert 'half-way' not in lag_study.part3_sentence(made)


def test_render_only_and_keep_hold_the_study(study, tmp_path):
    made, path = study
    out = tmp_path / 'out'
    page, block = render(out, path, tmp_path, studies=[f'n128={path}'])
    assert render(out, path, tmp_path, render_only=True) == (page, block)
    with pytest.raises(UserError, match='--render_only .* drop --study'):
        render(out, path, tmp_path, render_only=True, studies=[f'n128={path}'])
    committed = json.loads((out / docs.SNAPSHOT).read_text())
    shutil.rmtree(path.parent)                                   # the study's files are gone
    kept, _ = render(out, path, tmp_path, keep=['n128'])
    assert f'kept as the snapshot of commit `{committed["commit"]}` read it' in kept
    assert kept.split(f'## {docs.STUDY_HEADING}')[1].split('\n', 3)[3] == \
        page.split(f'## {docs.STUDY_HEADING}')[1].split('\n', 3)[3].replace(
            f'Read from `{path}`.', f'Read from `{path}`, kept as the snapshot of commit '
            f'`{committed["commit"]}` read it (`--keep=n128`).')
    assert (out / f'images/results/study-n128/{lag_study.FIGURE}').is_file()
    with pytest.raises(UserError, match='both given'):
        render(out, path, tmp_path, keep=['n128'], studies=[f'n128={path}'])


def test_a_missing_or_damaged_study(tmp_path):
    out = tmp_path / 'out'
    page, block = render(out, None, tmp_path, studies=[f'gone={tmp_path / "nothing"}'])
    assert f'`{tmp_path / "nothing"}` does not exist: made by `python studies/sampler_lag.py' \
        in page
    assert '**Sampler lag, gone**: no study.json yet' in block
    (tmp_path / 'bad.json').write_text(json.dumps({'workdir': 'x'}))
    with pytest.raises(CorruptFileError, match='lacks num_samples'):
        render(out, None, tmp_path, studies=[f'bad={tmp_path / "bad.json"}'])
    with pytest.raises(UserError, match='--study=.* is not NAME=PATH'):
        render(out, None, tmp_path, studies=['no label'])


def test_a_study_json_older_than_its_provenance_renders(study, tmp_path):
    made, _ = study
    for key in ('provenance', 'commit', 'num_train'):
        made.pop(key)
    text = '\n'.join(lag_study.markdown(made))
    assert 'commit `not recorded`' in text and 'N = not recorded' in text
    assert lag_study.stamp_row('study x', made)[3:] == ['not recorded'] * 3
