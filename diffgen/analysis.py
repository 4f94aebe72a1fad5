"""--mode=analyze: restores the trained model and runs the report's experiments on it.

Every experiment is a function `run(ctx: Context) -> report.Section` in diffgen/experiments;
the Context holds what they share, prepared once: the data, the schedule, the trained network
(EMA parameters), the training and held-out sets as chunked rows for the empirical-optimum /
nearest-neighbour engine, and one fixed batch of initial noise x_T so that every sampler and
denoiser is compared sample by sample.
"""
from __future__ import annotations

import dataclasses
import importlib
import os
import time

import jax
import numpy as np

from diffgen import chunked, report, sampling
from diffgen.denoisers import network_denoiser
from diffgen.optimal import optimal_denoiser
from diffgen.rng import stream

# key -> module in diffgen.experiments with run(ctx) -> Section
EXPERIMENTS = {
    'e1': 'e1_optimum_copies',
    'e2': 'e2_model_novelty',
    'e3': 'e3_gap',
    'e4': 'e4_hybrid',
    'e5': 'e5_reproducibility',
    'e6': 'e6_emm',
    'e7': 'e7_mutual_information',
}


@dataclasses.dataclass
class Context:
    config: object            # the run's ConfigDict
    workdir: str
    report_dir: str
    dataset: object           # diffgen.data.Dataset
    schedule: object
    model: object             # the Flax module
    params: object            # EMA parameters (or raw, per config.sampling.use_ema)
    mesh: object
    train_rows: chunked.Rows      # the training set, prepared once (sharded on the mesh)
    heldout_rows: chunked.Rows | None
    x_T: np.ndarray           # (analysis.num_samples, ...) initial noise shared by all samplers
    rng: jax.Array            # the analysis stream (x_T used fold_in 0): fold_in a distinct
                              # constant >= 1 per use

    def network(self, params=None):
        """The trained network as a denoiser (x, t) -> eps_theta."""
        return network_denoiser(self.model, self.params if params is None else params)

    def optimum(self):
        """The empirical-optimal denoiser eps* of the training set."""
        return optimal_denoiser(self.train_rows, self.schedule)

    def sample(self, denoiser, method, x_T=None, num_steps=None, eta=0.0, key=0):
        """Samples (NumPy) from x_T (default: ctx.x_T) with any denoiser and sampler."""
        s = self.config.sampling.copy_and_resolve_references()
        s.method = method
        s.num_steps = 0 if method == 'ddpm' else (num_steps or self.config.analysis.sampler_steps)
        s.eta = eta
        return sampling.generate(denoiser, self.schedule, self.x_T if x_T is None else x_T, s,
                                 jax.random.fold_in(self.rng, key), self.mesh,
                                 self.config.analysis.batch_size)

    def figure_path(self, name):
        return os.path.join(self.report_dir, name)


def make_context(config, workdir, dataset, schedule, model, params, mesh):
    a, o = config.analysis, config.optimal
    prepare = lambda x: chunked.prepare_rows(x, o.chunk_size, o.storage_dtype, mesh)
    heldout = dataset.heldout
    rng = stream(config.seed, 'analysis')
    x_T = sampling.initial_noise(jax.random.fold_in(rng, 0), a.num_samples,
                                 dataset.image_shape, a.batch_size)
    return Context(config, workdir, report.report_dir(workdir), dataset, schedule, model,
                   params, mesh, prepare(dataset.train),
                   prepare(heldout) if len(heldout) else None, x_T, rng)


def run_experiments(ctx, keys):
    """Runs the experiments in order (progress per experiment) and writes the report."""
    sections = []
    for i, key in enumerate(keys):
        module = importlib.import_module(f'diffgen.experiments.{EXPERIMENTS[key]}')
        start = time.perf_counter()
        print(f'analysis {i + 1}/{len(keys)}: {key} ...', flush=True)
        sections.append(module.run(ctx))
        print(f'analysis {i + 1}/{len(keys)}: {key} done in {time.perf_counter() - start:.0f}s',
              flush=True)
        if jax.process_index() == 0:  # the report so far, so nothing is lost on a crash
            report.write_report(sections, ctx.report_dir, _title(ctx))
    return sections


def _title(ctx):
    c = ctx.config
    return (f'diffgen report: {c.data.source}, N = {ctx.dataset.train_images.shape[0]}, '
            f'{c.model.name}, {c.training.num_steps} steps')
