"""--mode=analyze: runs the experiments named in config.analysis.experiments on a Context and
writes the report after each one, so that a crash loses only the experiment in progress. Each
section records the Context's provenance (numbers['provenance']); a rerun keeps the sections
already made with the same provenance and continues with the next unfinished one."""
from __future__ import annotations

import importlib
import time

import jax
from absl import logging

from diffgen.analysis import experiments  # noqa: F401 -- registers the built-in experiments
from diffgen.analysis import report
from diffgen.analysis.experiment import EXPERIMENTS
from diffgen.errors import ConfigError
from diffgen.training import metrics_log


def import_plugins(config):
    """Imports the modules named in config.analysis.plugins: each registers experiments of
    its own (diffgen.analysis.experiment.register), which the config may then list."""
    for module in config.analysis.get('plugins', ()):
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise ConfigError(f'analysis.plugins: cannot import {module!r}: {e}') from e


def run_experiments(ctx, keys):
    """Runs the experiments in order (progress per experiment) and writes the report; the
    sections report.finished_sections finds for ctx.provenance are kept, not run again."""
    finished = report.finished_sections(ctx.report_dir, keys, ctx.provenance)
    sections = []
    for i, key in enumerate(keys):
        if key in finished:
            logging.info('analysis %d/%d: %s kept (made from this checkpoint, config and '
                         'training set)', i + 1, len(keys), key)
            sections.append(finished[key])
            continue
        experiment = EXPERIMENTS[key]
        start = time.perf_counter()
        logging.info('analysis %d/%d: %s ...', i + 1, len(keys), key)
        section = experiment.run(ctx)
        section.numbers['provenance'] = ctx.provenance
        sections.append(section)
        logging.info('analysis %d/%d: %s done in %.0fs', i + 1, len(keys), key,
                     time.perf_counter() - start)
        if jax.process_index() == 0:  # the report so far, so nothing is lost on a crash
            report.write_report(sections, ctx.report_dir, title(ctx))
            metrics_log.write_report(ctx.workdir, ctx.provenance.get('step', 0), [section])
    return sections


def title(ctx):
    c = ctx.config
    model = f'{c.model.name}, {c.training.num_steps} steps'
    if c.model.init_from:  # an imported model, fine-tuned for as many steps as its checkpoint's
        model = (f'{c.model.name} imported from {c.model.init_from}, fine-tuned '
                 f'{ctx.provenance.get("step", 0)} steps')
    return f'diffgen report: {c.data.source}, N = {ctx.dataset.train_images.shape[0]}, {model}'
