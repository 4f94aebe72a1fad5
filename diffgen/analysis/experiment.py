"""The experiment plugin: one section of the report, registered under its key.

An experiment module defines

    measure(ctx, cfg) -> numbers     the measurements: a dict of numbers, strings, lists,
                                     NumPy arrays and dicts of them, with cfg its own settings
                                     (config.analysis.<key>, empty if it has none); keys
                                     starting with '_' hold what only the figures need
                                     (samples, per-sample distances) and stay out of report.json
    render(numbers, ctx) -> Section  the section: text and tables generated from the numbers
                                     (report.markdown_table, report.number), figures written
                                     into ctx.report_dir
    check(config)                    optional: raises ConfigError on bad settings, run by
                                     config validation before any work starts

and registers them with `register(Experiment('e9', 'E9: title', measure, render, check))`.
diffgen/analysis/experiments/__init__.py imports the built-in ones; a config names further
plugin modules in `analysis.plugins` (imported before validation), e.g.

    --config.analysis.plugins="('mypackage.e9',)" --config.analysis.experiments="('e9',)"

(tests/toy_experiment.py is a small one).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import ml_collections
from absl import logging

from diffgen.analysis.report import Section
from diffgen.registry import Registry

EXPERIMENTS = Registry('experiment')


@dataclasses.dataclass(frozen=True)
class Experiment:
    key: str                       # its key in config.analysis.experiments and report.json
    title: str                     # heading in report.md
    measure: Callable              # (ctx, cfg) -> numbers
    render: Callable               # (numbers, ctx) -> report.Section
    check: Callable | None = None  # (config) -> None, raises ConfigError
    trains: bool = False           # it trains models of its own from scratch: skipped for a
                                   # model imported by config.model.init_from

    def settings(self, config):
        """config.analysis.<key> (an empty ConfigDict if the experiment has no settings)."""
        a = config.analysis
        return a[self.key] if self.key in a else ml_collections.ConfigDict()

    def run(self, ctx):
        """measure, then render: the report Section of this experiment on ctx (for one that
        trains, on an imported model: a Section saying why it was skipped)."""
        if self.trains and ctx.config.model.init_from:
            reason = (f'{self.key} compares the run\'s model with models it trains from scratch, '
                      'but this model is imported (model.init_from), not trained by diffgen')
            logging.info('%s skipped: %s', self.key, reason)
            return Section(self.key, self.title, f'Skipped: {reason}.', {'skipped': reason})
        return self.render(self.measure(ctx, self.settings(ctx.config)), ctx)


def register(experiment: Experiment) -> Experiment:
    """Registers experiment under experiment.key; returns it."""
    return EXPERIMENTS.register(experiment.key)(experiment)
