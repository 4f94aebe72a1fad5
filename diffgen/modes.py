"""What each --mode does, as functions of (config, workdir)."""
from __future__ import annotations

import os

import jax

from absl import flags

from diffgen import files
from diffgen.analysis import compare as comparison
from diffgen.analysis.context import make_context
from diffgen.analysis.runner import run_experiments
from diffgen.training.loop import restore_trained, sample_and_save, train_and_evaluate


def train(config, workdir):
    """Trains (resuming), then writes a sample grid of the final EMA model."""
    state = train_and_evaluate(config, workdir)
    if int(state.step) == config.training.num_steps:
        sample(config, workdir)
    return state


def sample(config, workdir):
    """Draws config.sampling.num_samples samples; writes samples/final.png and samples.npz."""
    run = restore_trained(config, workdir)
    step = int(run.state.step)
    path = os.path.join(workdir, 'samples', f'step_{step:08d}_final.png')
    samples = sample_and_save(config, run.model, run.params(config.sampling.use_ema),
                              run.schedule, run.dataset, path, run.mesh)
    if jax.process_index() == 0:
        files.save_npz(os.path.join(workdir, 'samples', 'samples.npz'), samples=samples,
                 step=step)
        print(f'wrote {len(samples)} samples ({config.sampling.method}) to {path}', flush=True)
    return samples


def analyze(config, workdir):
    """Runs config.analysis.experiments on the trained model; writes DIR/report/."""
    run = restore_trained(config, workdir)
    ctx = make_context(config, workdir, run)
    return run_experiments(ctx, list(config.analysis.experiments))


def all_(config, workdir):
    """Trains (resuming), samples, then analyses."""
    state = train(config, workdir)
    if int(state.step) == config.training.num_steps:
        analyze(config, workdir)
    return state


def compare(config, workdir, other_workdir=None):
    """Compares DIR's model with --other_workdir's (diffgen.compare); writes DIR/report/compare/."""
    if other_workdir is None and 'other_workdir' in flags.FLAGS:
        other_workdir = flags.FLAGS.other_workdir
    return comparison.compare(config, workdir, other_workdir)


MODES = {'train': train, 'sample': sample, 'analyze': analyze, 'all': all_, 'compare': compare}
