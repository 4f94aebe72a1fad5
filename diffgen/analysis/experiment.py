"""The experiment plugin: one section of the report, registered under its key.

An experiment module defines

    measure(ctx, cfg) -> numbers     the measurements (JSON-able), with cfg its own settings
                                     (config.analysis.<key>, empty if it has none)
    render(numbers, ctx) -> Section  the section: text and tables generated from the numbers,
                                     figures written into ctx.report_dir
    check(config)                    optional: raises ConfigError on bad settings, run by
                                     config validation before any work starts

and registers them with `register(Experiment('e8', 'E8: title', measure, render, check))`.
diffgen/analysis/experiments/__init__.py imports the built-in ones; a config names further
plugin modules in `analysis.plugins` (imported before validation).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import ml_collections

from diffgen.registry import Registry

EXPERIMENTS = Registry('experiment')


@dataclasses.dataclass(frozen=True)
class Experiment:
    key: str                       # its key in config.analysis.experiments and report.json
    title: str                     # heading in report.md
    measure: Callable              # (ctx, cfg) -> numbers
    render: Callable               # (numbers, ctx) -> report.Section
    check: Callable | None = None  # (config) -> None, raises ConfigError

    def settings(self, config):
        """config.analysis.<key> (an empty ConfigDict if the experiment has no settings)."""
        a = config.analysis
        return a[self.key] if self.key in a else ml_collections.ConfigDict()

    def run(self, ctx):
        """measure, then render: the report Section of this experiment on ctx."""
        return self.render(self.measure(ctx, self.settings(ctx.config)), ctx)


def register(experiment: Experiment) -> Experiment:
    """Registers experiment under experiment.key; returns it."""
    return EXPERIMENTS.register(experiment.key)(experiment)
