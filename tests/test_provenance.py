"""Provenance of the report (diffgen.analysis.provenance, report, runner): every section of
report.json names the checkpoint step, the config digest and the training-set fingerprint it
was made from, and a section made from an older checkpoint (--step=S) is never merged into the
report of a newer one: a section the newer analysis runs is recomputed, one it does not run is
dropped from report.json, sections.json and report.md."""
import hashlib
import json
import shutil

import pytest

import tests.toy_experiment  # noqa: F401 -- registers the experiment 'toy'
import tests.pause_experiment  # noqa: F401 -- registers the experiment 'pause'
from diffgen.analysis.context import make_context
from diffgen.analysis.provenance import machine
from diffgen.analysis.runner import run_experiments
from diffgen.training.loop import restore_trained, train_and_evaluate
from tests.tiny import tiny_digits_config

# behaviour, not numbers (runs compared bit for bit are computed alike): XLA's
# optimisations off, here and in the diffgen.main runs started (tests/conftest.py)
pytestmark = pytest.mark.usefixtures('unoptimized_module')

SETTINGS = {'analysis.num_samples': 8, 'analysis.batch_size': 8}


@pytest.fixture(scope='module')
def trained(digits_data_dir, tmp_path_factory):
    """(config, workdir) of the tiny model trained 8 steps: checkpoints 4 and 8."""
    config = tiny_digits_config(digits_data_dir, **SETTINGS)
    workdir = tmp_path_factory.mktemp('trained') / 'work'
    train_and_evaluate(config, workdir)
    return config, workdir


def analyse(config, workdir, keys, step=None):
    """run_experiments on the checkpoint of step (None: the newest), as --mode=analyze
    [--step=S] does; returns (report.json, sections.json, report.md) afterwards."""
    run = restore_trained(config, str(workdir), step)
    run_experiments(make_context(config, str(workdir), run), keys)
    report = workdir / 'report'
    return (json.loads((report / 'report.json').read_text()),
            json.loads((report / 'sections.json').read_text()),
            (report / 'report.md').read_text())


def expected_provenance(config, run, step):
    """The provenance computed here from its definition: SHA-256 (16 hex digits) of the
    config as sorted compact JSON without the analysis keys that only select sections, and of
    the training set's dtype, shape and bytes."""
    tree = config.to_dict()
    tree['analysis'] = {k: v for k, v in tree['analysis'].items()
                        if k not in ('experiments', 'plugins')}
    text = json.dumps(tree, sort_keys=True, default=list, separators=(',', ':'))
    images = run.dataset.train_images
    data = hashlib.sha256(f'{images.dtype} {images.shape}'.encode())
    data.update(images.tobytes())
    return {'step': step, 'config_digest': hashlib.sha256(text.encode()).hexdigest()[:16],
            'data_fingerprint': data.hexdigest()[:16]}


def test_every_section_names_its_checkpoint_config_and_training_set(trained):
    config, workdir = trained
    numbers, _, _ = analyse(config, workdir, ['toy', 'pause'])
    expected = expected_provenance(config, restore_trained(config, str(workdir)), 8)
    assert set(numbers) == {'toy', 'pause'}
    for key in numbers:
        assert numbers[key]['provenance'] == expected | {'machine': machine()}, key


def test_a_section_of_an_older_checkpoint_is_not_merged_into_a_newer_report(
        trained, tmp_path, caplog):
    caplog.set_level('INFO')   # the runner's 'analysis i/n: key ...' are absl INFO messages
    config, trained_dir = trained
    workdir = shutil.copytree(trained_dir, tmp_path / 'work',
                              ignore=shutil.ignore_patterns('report'))
    older, _, _ = analyse(config, workdir, ['toy', 'pause'], step=4)
    assert {older[k]['provenance']['step'] for k in older} == {4}

    caplog.clear()
    newer, texts, markdown = analyse(config, workdir, ['toy'])
    assert 'analysis 1/1: toy ...' in caplog.messages     # recomputed, not kept
    assert set(newer) == {'toy'} and newer['toy']['provenance']['step'] == 8
    assert set(texts) == {'toy'} and '## Pause' not in markdown   # step 4's 'pause' dropped

    caplog.clear()
    both, texts, markdown = analyse(config, workdir, ['toy', 'pause'])
    assert 'analysis 1/2: toy kept' in caplog.text and 'analysis 2/2: pause ...' in caplog.text
    assert {both[k]['provenance']['step'] for k in both} == {8} and set(texts) == set(both)
    assert '## Toy' in markdown and '## Pause' in markdown


def test_sections_analysed_separately_from_one_checkpoint_make_one_report(trained, tmp_path):
    """analysis.experiments only selects sections: E5 run alone (configs/digits.py:e5) and then
    the others from the same checkpoint end in one report."""
    config, trained_dir = trained
    workdir = shutil.copytree(trained_dir, tmp_path / 'work',
                              ignore=shutil.ignore_patterns('report'))
    alone = config.copy_and_resolve_references()
    alone.analysis.experiments = ('pause',)
    first, _, _ = analyse(alone, workdir, ['pause'])
    others = config.copy_and_resolve_references()
    others.analysis.experiments = ('toy',)
    both, texts, markdown = analyse(others, workdir, ['toy'])
    assert set(both) == {'toy', 'pause'} and set(texts) == {'toy', 'pause'}
    assert both['pause'] == first['pause'] and '## Pause' in markdown
    assert both['toy']['provenance'] == first['pause']['provenance']
