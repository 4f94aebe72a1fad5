"""The results pages (diffgen.docs): made from fixture runs written here by hand (a report with
its provenance, texts and summaries, eval.csv, a sweep dir), results.md holds every section
text and number of the files, the stamp (commit, config digest, data fingerprint, step,
machine), figures that resolve from the page; it is the same on a rerun and changes with the
files; a missing run or file is named with the command that makes it; bad input is one line
and exit status 2. The command writes the snapshot results.json, and render(snapshot) gives
back results.md and README.md's generated block exactly (summaries linked to their sections,
the sweep's transition); the committed docs/results.json renders to the committed
docs/results.md and README.md block, so a number edited by hand in either fails. Also: the
provenance's machine is recorded but not compared, so a report older than it still merges;
an older sections.json without summaries still reads."""
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from PIL import Image

from diffgen import docs
from diffgen.analysis import report, transition
from diffgen.errors import CorruptFileError, UserError, WorkdirError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROVENANCE = {'step': 800, 'config_digest': '0123456789abcdef',
              'data_fingerprint': 'fedcba9876543210', 'machine': '2 CPU cores, x86_64, cpu x1'}
OLD_PROVENANCE = {'step': 40, 'config_digest': '1111222233334444',
                  'data_fingerprint': '5555666677778888'}   # a report without machine
SECTIONS = {
    'e1': ('E1: the optimum copies', 'The optimum copies 0.984 of its samples (d1/d2 < 1/3).',
           {'copy_rate': 0.984}, ['e1_nearest.png']),
    'e3': ('E3: the gap', '| t | gap |\n| --- | ---: |\n| 10 | 0.0421 |\n| 500 | 0.0037 |',
           {'gap': [0.0421, 0.0037]}, []),
    'e6': ('E6: effective model memorisation', 'This run (N = 64): memorisation ratio 0.734.',
           {'memorisation_ratio': 0.734}, ['emm.png']),
}
SUMMARIES = {'e1': 'The optimum copies 0.984 of its samples.',
             'e6': 'At N = 64, 0.734 of the samples are memorised.'}
EVAL_CSV = ('step,ddim/memorisation_ratio,ddim/exact_copy_rate,loss/gap\n'
            '200,0.8125,0.25,0.0731\n400,0.6875,0.125,\n600,0.5625,0.0625,0.0412\n')
RESULTS_CSV = ('run,seconds,data.num_train,e6.num_train,e6.memorisation_ratio,'
               'e6.provenance.step,e6.provenance.config_digest\n'
               'num_train_16,31.5,16,16,0.9375,300,aaaa\n'
               'num_train_64,48.25,64,64,0.4063,300,bbbb\n')


def png(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new('RGB', (4, 3), (200, 30, 30)).save(path)


def workdir(path, sections=SECTIONS, provenance=PROVENANCE, eval_csv=EVAL_CSV, summaries=None):
    """A workdir as --mode=all leaves it: report/report.json, sections.json (with summaries, or
    without the field as an older one), the figures, eval.csv."""
    (path / 'report').mkdir(parents=True)
    numbers = {k: {**n, 'provenance': provenance} for k, (_, _, n, _) in sections.items()}
    texts = {k: {'title': t, 'markdown': m, 'figures': f} for k, (t, m, _, f) in sections.items()}
    for key, summary in (summaries or {}).items():
        texts[key]['summary'] = summary
    (path / 'report' / 'report.json').write_text(json.dumps(numbers))
    (path / 'report' / 'sections.json').write_text(json.dumps(texts))
    for _, _, _, names in sections.values():
        for name in names:
            png(path / 'report' / name)
    if eval_csv:
        (path / 'eval.csv').write_text(eval_csv)
    return path


def sweep_dir(path):
    """A sweep dir: results.csv, two runs with eval.csv (one with a report), two of its three
    figures."""
    path.mkdir()
    (path / 'results.csv').write_text(RESULTS_CSV)
    workdir(path / 'num_train_16', {'e6': SECTIONS['e6']}, OLD_PROVENANCE,
            'step,ddim/memorisation_ratio\n100,1.0\n300,0.9375\n')
    (path / 'num_train_64').mkdir()
    (path / 'num_train_64' / 'eval.csv').write_text('step,ddim/memorisation_ratio\n300,0.4063\n')
    png(path / 'transition_ratio.png')
    png(path / 'emm.png')
    return path


@pytest.fixture
def runs(tmp_path):
    """(keyword arguments of docs.write_page, out dir): digits and sweep given, toy2d not."""
    out = tmp_path / 'docs'
    return dict(digits=str(workdir(tmp_path / 'digits', summaries={'e1': SUMMARIES['e1']})),
                sweep=str(sweep_dir(tmp_path / 'sweep')),
                others=[('old', str(workdir(tmp_path / 'old', {'e6': SECTIONS['e6']},
                                            OLD_PROVENANCE, None)))]), out


def test_the_page_holds_every_text_number_figure_and_the_stamp(runs):
    kwargs, out = runs
    page = open(docs.write_page(str(out), **kwargs)).read()
    assert page.splitlines()[0] == docs.STAMP
    for title, text, _, _ in SECTIONS.values():
        assert f'### {title}\n\n{text}\n' in page
    assert f'at commit `{docs.commit(str(out))}`' in page
    assert re.search(r'at commit `[0-9a-f]{4,}(\+dirty)?`', page)
    stamp = ('| digits | e1, e3, e6 | 800 | 0123456789abcdef | fedcba9876543210 | '
             '2 CPU cores, x86_64, cpu x1 |')
    assert stamp in page
    assert ('| old | e6 | 40 | 1111222233334444 | 5555666677778888 | machine not recorded |'
            in page)
    assert ('| sweep num_train_16 | e6 | 40 | 1111222233334444 | 5555666677778888 | '
            'machine not recorded |' in page)
    # eval.csv: each column's last value (loss/gap's last at 600), whatever the columns
    for row in ['| ddim/memorisation_ratio | 600 | 0.5625 |', '| ddim/exact_copy_rate | 600 | '
                '0.0625 |', '| loss/gap | 600 | 0.0412 |']:
        assert row in page
    # the sweep: results.csv without its provenance columns, each run's last evaluation
    assert '| run | seconds | data.num_train | e6.num_train | e6.memorisation_ratio |' in page
    assert '| num_train_16 | 31.5 | 16 | 16 | 0.9375 |' in page
    assert '| num_train_64 | 48.25 | 64 | 64 | 0.4063 |' in page
    assert '| num_train_16 | 300 | 0.9375 |' in page and '| num_train_64 | 300 | 0.4063 |' in page
    figures = re.findall(r'!\[[^]]*\]\(([^)]+)\)', page)
    for name in ['digits/e1_nearest.png', 'digits/emm.png', 'digits/eval.png',
                 'sweep/transition_ratio.png', 'sweep/emm.png']:
        assert f'images/results/{name}' in figures
    for relative in figures:
        assert not os.path.isabs(relative) and (out / relative).is_file(), relative
    # what is missing, with the command that makes it
    assert docs.MAKE['toy2d'].format(path='runs/toy2d') in page and '`--toy2d`' in page
    sweep_command = docs.MAKE['sweep'].format(path=kwargs['sweep'])
    assert f'`{kwargs["sweep"]}/transition_curves.png` does not exist: made by `{sweep_command}`' \
        in page
    assert f'`{kwargs["others"][0][1]}/eval.csv` does not exist' in page


def test_the_page_is_the_same_on_a_rerun_and_follows_the_files(runs, tmp_path):
    kwargs, out = runs
    first = open(docs.write_page(str(out), **kwargs)).read()
    assert open(docs.write_page(str(out), **kwargs)).read() == first
    sections = tmp_path / 'digits' / 'report' / 'sections.json'
    sections.write_text(sections.read_text().replace('0.984', '0.977'))
    changed = open(docs.write_page(str(out), **kwargs)).read()
    assert 'copies 0.977 of' in changed and 'copies 0.984 of' not in changed
    csv = tmp_path / 'digits' / 'eval.csv'
    csv.write_text(csv.read_text().replace('0.5625', '0.5312'))
    assert '| ddim/memorisation_ratio | 600 | 0.5312 |' in open(
        docs.write_page(str(out), **kwargs)).read()


def test_no_runs_give_what_is_missing_and_the_commands(tmp_path):
    page = open(docs.write_page(str(tmp_path / 'docs'))).read()
    for name in ('digits', 'toy2d', 'sweep'):
        assert docs.MAKE[name].format(path=docs.DEFAULT_PATH[name]) in page
        assert f'`--{name}={docs.DEFAULT_PATH[name]}`' in page
    missing = open(docs.write_page(str(tmp_path / 'docs'), digits=str(tmp_path / 'nowhere'))).read()
    assert docs.MAKE['digits'].format(path=tmp_path / 'nowhere') in missing


def test_bad_input_is_an_error(tmp_path, runs):
    (tmp_path / 'plain').mkdir()
    with pytest.raises(WorkdirError, match='is not a diffgen workdir'):
        docs.write_page(str(tmp_path / 'out'), digits=str(tmp_path / 'plain'))
    with pytest.raises(WorkdirError, match='is not a sweep dir'):
        docs.write_page(str(tmp_path / 'out'), sweep=str(tmp_path / 'plain'))
    (tmp_path / 'digits' / 'report' / 'report.json').write_text('{"e1": {"copy_rate": 0.9')
    with pytest.raises(CorruptFileError, match='report.json is damaged'):
        docs.write_page(str(tmp_path / 'out'), digits=str(tmp_path / 'digits'))


def run_docs(*args):
    return subprocess.run([sys.executable, '-m', 'diffgen.docs', *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def readme_copy(tmp_path):
    """A copy of README.md (tests never write the real one)."""
    return shutil.copy(os.path.join(REPO, 'README.md'), tmp_path / 'README.md')


def outside_block(text):
    return text.replace(docs.readme_block(text), '')


def test_the_command_writes_the_snapshot_the_page_and_the_readme_block(runs, tmp_path):
    kwargs, out = runs
    readme = readme_copy(tmp_path)
    before = readme.read_text()
    expected = open(docs.write_page(str(out), **kwargs)).read()
    os.remove(out / 'results.md')
    os.remove(out / 'results.json')
    result = run_docs(f'--digits={kwargs["digits"]}', f'--sweep={kwargs["sweep"]}',
                      f'--run=old={kwargs["others"][0][1]}', f'--out={out}', f'--readme={readme}')
    assert result.returncode == 0, result.stderr
    page = (out / 'results.md').read_text()
    assert page == expected
    snapshot = json.loads((out / 'results.json').read_text())
    after = readme.read_text()
    assert outside_block(after) == outside_block(before)   # only the block is rewritten
    assert docs.render(snapshot, 'docs/results.md') == (page, docs.readme_block(after))
    assert SUMMARIES['e1'] in after


def test_the_command_reports_bad_input_in_one_line(runs, tmp_path):
    kwargs, _ = runs
    (tmp_path / 'digits' / 'report' / 'report.json').write_text('[1, 2')
    result = run_docs(f'--digits={kwargs["digits"]}', f'--out={tmp_path / "out2"}', '--readme=')
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith('diffgen: error: ') and 'report.json is damaged' in lines[0]
    assert not (tmp_path / 'out2' / 'results.md').exists()


def test_render_gives_back_the_written_page_and_block(runs, tmp_path):
    """render is a pure function of results.json: the page and README block it gives are the
    ones written, and --render_only (run_command) writes them again without the runs."""
    kwargs, out = runs
    readme = readme_copy(tmp_path)
    page = open(docs.write_page(str(out), **kwargs, readme=str(readme))).read()
    block = docs.readme_block(readme.read_text())
    snapshot = json.loads((out / docs.SNAPSHOT).read_text())
    assert docs.render(snapshot, docs.page_link(str(out), str(readme))) == (page, block)
    assert docs.render(json.loads(json.dumps(snapshot))) == docs.render(snapshot)
    for name in ('digits', 'sweep'):   # the runs are not read again
        shutil.rmtree(kwargs[name])
    os.remove(out / docs.PAGE)
    readme.write_text(readme.read_text().replace(block, f'{docs.BEGIN}\nstale\n{docs.END}'))
    docs.run_command(str(out), readme=str(readme), render_only=True)
    assert (out / docs.PAGE).read_text() == page
    assert docs.readme_block(readme.read_text()) == block
    with pytest.raises(UserError, match='--render_only reads .* drop --digits'):
        docs.run_command(str(out), digits=kwargs['digits'], render_only=True)
    with pytest.raises(UserError, match='results.json does not exist'):
        docs.run_command(str(tmp_path / 'empty'), render_only=True)


def test_the_readme_block_gives_summaries_links_the_transition_and_what_is_missing(runs, tmp_path):
    kwargs, out = runs
    page = open(docs.write_page(str(out), **kwargs)).read()
    block = docs.render(json.loads((out / docs.SNAPSHOT).read_text()))[1]
    lines = block.splitlines()
    assert lines[0] == docs.BEGIN and lines[-1] == docs.END
    headings = {docs.slug(h) for h in re.findall(r'^#+ (.*)$', page, flags=re.M)}
    links = re.findall(r'\]\(docs/results\.md#([^)]+)\)', block)
    assert links and set(links) <= headings
    # a summary, linked to its section; sections without one (e3, e6: an older
    # sections.json's) are not in the block
    title = SECTIONS['e1'][0]
    assert (f'- **digits, {title}**: {SUMMARIES["e1"]} ([more](docs/results.md#'
            f'{docs.slug(title)}))') in lines
    assert 'E3' not in block and 'memorisation ratio 0.734' not in block
    # the run without summaries, the run not given (with its command), the sweep's transition
    # from results.csv (no transition.json)
    assert any(line.startswith('- **old**: no section of its report has a summary')
               for line in lines)
    assert docs.MAKE['toy2d'].format(path='runs/toy2d') in block
    assert ('Memorisation ratio (E6, DDIM) by training-set size N: 16: 0.94, 64: 0.41.'
            in block)
    assert len(lines) <= 12   # short: a newcomer reads the README in minutes
    snapshot = json.loads((out / docs.SNAPSHOT).read_text())
    snapshot['runs'][0]['sections'][0]['summary'] = 'Two\nlines.'
    assert f'**: Two lines. ([more](docs/results.md#{docs.slug(title)}))' in docs.render(
        snapshot)[1]


def test_the_transition_sentence_reads_transition_json_defensively(runs):
    kwargs, out = runs
    data = {'threshold': 0.9, 'points': {'ddim': {
        'num_train': [16, 64], 'ratio': [0.9375, 0.40625], 'low': [0.8, 0.3], 'high': [1, 0.5],
        'emm': {'emm': 16, 'low': None, 'high': 16}}}}
    with open(os.path.join(kwargs['sweep'], docs.TRANSITION_JSON), 'w') as f:
        json.dump(data, f)
    docs.write_page(str(out), **kwargs)
    snapshot = json.loads((out / docs.SNAPSHOT).read_text())
    assert snapshot['sweep']['transition']['data'] == data
    snapshot['sweep']['results']['rows'] = []   # launch.sweep before any run finished
    assert f'`{kwargs["sweep"]}/results.csv` lists no finished run yet.' in docs.render(
        snapshot)[0]
    snapshot = json.loads((out / docs.SNAPSHOT).read_text())
    sentence = docs.transition_sentence(snapshot['sweep'])
    assert sentence == ('Memorisation ratio by training-set size N at the end of training: '
                        'ddim 16: 0.94, 64: 0.41; EMM 16 (interval None..16).')
    assert sentence in docs.render(snapshot)[1]
    # the points at the top level, or an unknown layout (then results.csv's E6 columns)
    assert docs.transition_points(data['points']) == data['points']
    assert docs.transition_points({'points': [1, 2]}) == {}
    snapshot['sweep']['transition']['data'] = {'something': 'else'}
    assert docs.transition_sentence(snapshot['sweep']).startswith('Memorisation ratio (E6, DDIM)')
    snapshot['sweep']['results']['exists'] = False
    snapshot['sweep']['results'].update(columns=[], rows=[])
    assert docs.transition_sentence(snapshot['sweep']) is None
    assert 'no finished run of' in docs.render(snapshot)[1]


def test_a_damaged_transition_json_of_the_current_format_names_it_and_nothing_is_written(
        runs, tmp_path):
    """A transition.json that claims transition.FORMAT but lacks what the reading needs (a
    series without its intervals) is a CorruptFileError naming the file, not a traceback."""
    kwargs, _ = runs
    path = os.path.join(kwargs['sweep'], docs.TRANSITION_JSON)
    with open(path, 'w') as f:
        json.dump({'format': transition.FORMAT, 'threshold': 0.9, 'num_samples': 100,
                   'criteria': {}, 'samplers': {'ddim': {'ratio': {'num_train': [16, 32]}}}}, f)
    out = tmp_path / 'out'
    with pytest.raises(CorruptFileError, match=f'{re.escape(path)} is damaged .*--collect'):
        docs.write_page(str(out), **kwargs)
    assert not (out / 'results.md').exists()


def test_a_readme_without_the_block_is_an_error_and_nothing_is_written(runs, tmp_path):
    kwargs, out = runs
    readme = tmp_path / 'README.md'
    readme.write_text('# a readme\n')
    with pytest.raises(UserError, match='no single generated block'):
        docs.write_page(str(out), **kwargs, readme=str(readme))
    assert not out.exists() and readme.read_text() == '# a readme\n'


def test_figures_of_runs_no_longer_given_are_removed(runs):
    kwargs, out = runs
    docs.write_page(str(out), **kwargs)
    assert (out / docs.IMAGES / 'digits' / 'e1_nearest.png').is_file()
    docs.write_page(str(out), sweep=kwargs['sweep'])
    assert not (out / docs.IMAGES / 'digits').exists() or not any(
        (out / docs.IMAGES / 'digits').iterdir())
    assert (out / docs.IMAGES / 'sweep' / 'emm.png').is_file()


def test_keep_takes_a_runs_part_from_the_committed_snapshot(runs, tmp_path):
    """--keep=digits: digits' sections, figures and stamp rows as the snapshot holds them
    (its workdir gone), marked as kept from that snapshot's commit; the sweep read anew."""
    kwargs, out = runs
    docs.write_page(str(out), **kwargs)
    made = json.loads((out / docs.SNAPSHOT).read_text())
    shutil.rmtree(kwargs['digits'])                                    # the workdir is gone
    page = open(docs.write_page(str(out), sweep=kwargs['sweep'], keep=('digits',))).read()
    kept = json.loads((out / docs.SNAPSHOT).read_text())
    digits = lambda snapshot: next(r for r in snapshot['runs'] if r['name'] == 'digits')
    assert digits(kept) == {**digits(made), 'kept_from': made['commit']}
    assert [r for r in kept['stamp'] if r[0] == 'digits'] == \
        [r for r in made['stamp'] if r[0] == 'digits']
    assert f'kept as the snapshot of commit `{made["commit"]}` read it' in page
    for title, text, _, _ in SECTIONS.values():
        assert f'### {title}\n\n{text}\n' in page
    assert (out / docs.IMAGES / 'digits' / 'e1_nearest.png').is_file()  # its figures stay
    assert '--keep=digits' in kept['command']
    docs.write_page(str(out), sweep=kwargs['sweep'], keep=('digits',))   # kept again
    assert digits(json.loads((out / docs.SNAPSHOT).read_text()))['kept_from'] == made['commit']
    with pytest.raises(UserError, match='--keep=toy2d: .* has no run'):
        docs.write_page(str(out), keep=('toy2d',))
    with pytest.raises(UserError, match='both given'):
        docs.write_page(str(out), digits=str(tmp_path), keep=('digits',))


def test_the_checked_in_page_is_the_generators():
    path = os.path.join(REPO, 'docs', docs.PAGE)
    if not os.path.exists(path):
        pytest.skip('docs/results.md is not checked in yet (python -m diffgen.docs makes it)')
    page = open(path).read()
    assert page.splitlines()[0] == docs.STAMP, 'docs/results.md was not made by diffgen.docs'
    assert re.search(r'^Made by `python -m diffgen\.docs[^`]*` at commit `[^`]+`', page, re.M)


def test_the_checked_in_pages_render_from_the_checked_in_snapshot():
    """docs/results.md and README.md's generated block are render(docs/results.json): a number
    typed into either by hand (or a snapshot edited without rendering) fails here; the fix is
    `python -m diffgen.docs --render_only` (or the full command with the runs)."""
    snapshot = docs.read_snapshot(os.path.join(REPO, 'docs'))
    page, block = docs.render(snapshot)
    with open(os.path.join(REPO, 'docs', docs.PAGE), encoding='utf-8') as f:
        assert f.read() == page, 'docs/results.md differs from render(docs/results.json)'
    with open(os.path.join(REPO, 'README.md'), encoding='utf-8') as f:
        readme = f.read()
    assert docs.README_HEADING in readme
    assert readme.index(docs.README_HEADING) < readme.index(docs.BEGIN)
    assert docs.readme_block(readme) == block, (
        "README.md's generated block differs from render(docs/results.json)")
    for path in docs.figure_paths(snapshot):
        assert os.path.isfile(os.path.join(REPO, 'docs', path)), path


def test_the_machine_is_recorded_not_compared(tmp_path):
    """A section made elsewhere (another machine) or before provenance had a machine is of the
    same report as one made now from the same checkpoint, config and training set."""
    old = report.Section('old', 'Old', 'made before machine',
                         {'x': 1, 'provenance': OLD_PROVENANCE})
    report.write_report([old], str(tmp_path), 'report')
    now = {**OLD_PROVENANCE, 'machine': '8 CPU cores, aarch64, TPU v5 lite x8'}
    assert set(report.finished_sections(str(tmp_path), ['old'], now)) == {'old'}
    report.write_report([report.Section('new', 'New', 'made now', {'provenance': now})],
                        str(tmp_path), 'report')
    numbers = json.loads((tmp_path / 'report.json').read_text())
    assert set(numbers) == {'old', 'new'}
    other = {**now, 'step': 41}
    report.write_report([report.Section('new', 'New', 'later', {'provenance': other})],
                        str(tmp_path), 'report')
    assert set(json.loads((tmp_path / 'report.json').read_text())) == {'new'}


def test_e8_across_sweeps_is_a_table_a_figure_and_a_sentence(tmp_path):
    """--theories=LABEL=SWEEP_DIR: each run's E8 medians by N (the mean over the runs at an
    N), the figure, and the README's sentence naming the best reference at each end."""
    sweep = tmp_path / 'sweep'
    medians = {('a', 16): {'optimum': 0.9, 'gaussian': 0.2}, ('b', 16): {'optimum': 0.7,
               'gaussian': 0.4}, ('c', 256): {'optimum': 0.1, 'gaussian': 0.6}}
    leads = {'a': (0.7, 0.6, 0.8), 'b': (0.3, 0.1, 0.5), 'c': (0.5, -0.1, 0.9)}  # c: not apart
    for (name, n), refs in medians.items():
        (sweep / name / 'report').mkdir(parents=True)
        (sweep / name / 'config.json').write_text(json.dumps({'data': {'num_train': n}}))
        best, over = sorted(refs, key=refs.get, reverse=True)
        difference, low, high = leads[name]
        (sweep / name / 'report' / 'report.json').write_text(json.dumps({'e8': {'r2': {
            r: {'median': m, 'low': m - 0.05, 'high': m + 0.05} for r, m in refs.items()},
            'best': best, 'lead': {'over': over, 'difference': difference, 'low': low,
                                   'high': high}}}))
    out, readme = tmp_path / 'out', readme_copy(tmp_path)
    docs.run_command(str(out), readme=str(readme), theories=[f'conv-only={sweep}'])
    page = (out / 'results.md').read_text()
    assert '| optimum ε* | 0.800 (2 runs) | 0.100 [0.050, 0.150] (1 run) |' in page
    assert (out / 'images' / 'results' / 'sweep' / 'e8_against_n.png').stat().st_size > 0
    block = docs.readme_block(readme.read_text())
    assert ('conv-only: at N = 16 optimum ε* has the highest median r² (0.800), best and '
            'separated from the second in 2 of 2 runs; at N = 256 Gaussian (μ, Σ) has the '
            'highest median r² (0.600) but is not told apart from optimum ε* (+0.5, paired '
            '95% interval [-0.1, +0.9]). For comparison (a citation, not a result), Kamb & '
            'Ganguli report median r² 0.94') in block


def test_e8_across_sweeps_compares_with_the_paper_and_names_the_settings(tmp_path):
    """The README's E8 sentence sets each variant's ELS median at its largest N beside the
    paper's figure for its kind of network (convolution-only: MNIST's 0.94; with attention:
    CIFAR-10's 0.77), with the difference computed from the runs, and says where the
    settings differ, read from the largest-N run's config.json and E8 section."""
    rows = {'conv': ([], {16: 0.99, 512: 0.9}), 'attn': ([8], {16: 0.98, 512: 0.85})}
    theories = []
    for label, (attention, medians) in rows.items():
        sweep = tmp_path / label
        for n, m in medians.items():
            run = sweep / f'num_train_{n}'
            (run / 'report').mkdir(parents=True)
            (run / 'config.json').write_text(json.dumps({
                'data': {'num_train': n, 'source': 'digits', 'image_size': 0},
                'training': {'num_steps': 1234}, 'model': {'attn_resolutions': attention}}))
            (run / 'report' / 'report.json').write_text(json.dumps({'e8': {
                'r2': {'els': {'median': m, 'low': m - 0.01, 'high': m + 0.01}},
                'method': 'ddim', 'sampler_steps': 50, 'num_samples': 64}}))
        theories.append(f'{label}={sweep}')
    out, readme = tmp_path / 'out', readme_copy(tmp_path)
    docs.run_command(str(out), readme=str(readme), theories=theories)
    block = docs.readme_block(readme.read_text())
    assert 'conv at N = 512: ELS 0.900, 0.04 below their 0.94' in block
    assert 'attn at N = 512: ELS 0.850, 0.08 above their 0.77' in block
    assert ('here 8×8 digits images with N ≤ 512 training images, small UNets trained 1234 '
            'steps, ddim-50 samples (64 per run)') in block


def test_the_stamp_is_dirty_only_for_changes_outside_the_pages_it_writes(tmp_path, monkeypatch):
    """commit(): a changed README.md or page (the first line of git's status, whose leading
    status column must survive) is the command's own output, not '+dirty'; another file is."""
    repo = tmp_path / 'repo'
    (repo / 'docs').mkdir(parents=True)
    for name in ('README.md', 'docs/results.md', 'code.py'):
        (repo / name).write_text('a\n')
    git = lambda *a: subprocess.run(['git', '-C', str(repo), *a], check=True,
                                    capture_output=True, text=True).stdout
    git('init', '-q')
    git('add', '.')
    git('-c', 'user.name=t', '-c', 'user.email=t@t', 'commit', '-qm', 'x')
    head = git('rev-parse', '--short', 'HEAD').strip()
    monkeypatch.setattr(docs, 'REPO', str(repo))
    monkeypatch.chdir(repo)
    (repo / 'README.md').write_text('b\n')
    (repo / 'docs' / 'results.md').write_text('b\n')
    assert docs.commit('docs', 'README.md') == head
    (repo / 'code.py').write_text('b\n')
    assert docs.commit('docs', 'README.md') == head + '+dirty'
