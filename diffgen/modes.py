"""What each --mode does, as functions of (config, workdir)."""
from __future__ import annotations

import os

import jax

from diffgen import checkpointing, data, files
from diffgen.errors import WorkdirError
from diffgen.train import build, check_model_fits_data, sample_and_save, train_and_evaluate


def train(config, workdir):
    """Trains (resuming), then writes a sample grid of the final EMA model."""
    state = train_and_evaluate(config, workdir)
    if int(state.step) == config.training.num_steps:
        sample(config, workdir)
    return state


def restore_trained(config, workdir):
    """(dataset, schedule, model, state) from the workdir's latest checkpoint."""
    if not checkpointing.has_checkpoint(workdir):
        raise WorkdirError(f'no checkpoint in {workdir}; run --mode=train first')
    checkpointing.check_compatible(workdir, config)
    dataset = data.load(config)
    check_model_fits_data(config, dataset)
    schedule, model, _, mesh, state = build(config, dataset)
    manager = checkpointing.make_manager(workdir, config.training.keep_checkpoints)
    state = checkpointing.restore_latest(manager, state)
    return dataset, schedule, model, mesh, state


def sample(config, workdir):
    """Draws config.sampling.num_samples samples; writes samples/final.png and samples.npz."""
    dataset, schedule, model, mesh, state = restore_trained(config, workdir)
    params = state.ema_params if config.sampling.use_ema else state.params
    path = os.path.join(workdir, 'samples', f'step_{int(state.step):08d}_final.png')
    samples = sample_and_save(config, model, params, schedule, dataset, path, mesh)
    if jax.process_index() == 0:
        files.save_npz(os.path.join(workdir, 'samples', 'samples.npz'), samples=samples,
                 step=int(state.step))
        print(f'wrote {len(samples)} samples ({config.sampling.method}) to {path}', flush=True)
    return samples


def analyze(config, workdir):
    """Runs config.analysis.experiments on the trained model; writes DIR/report/."""
    from diffgen import analysis
    dataset, schedule, model, mesh, state = restore_trained(config, workdir)
    params = state.ema_params if config.sampling.use_ema else state.params
    ctx = analysis.make_context(config, workdir, dataset, schedule, model, params, mesh)
    return analysis.run_experiments(ctx, list(config.analysis.experiments))


def all_(config, workdir):
    """Trains (resuming), samples, then analyses."""
    state = train(config, workdir)
    if int(state.step) == config.training.num_steps:
        analyze(config, workdir)
    return state


def compare(config, workdir, other_workdir=None):
    """Compares DIR's model with --other_workdir's (diffgen.compare); writes DIR/report/compare/."""
    from absl import flags
    from diffgen import compare as comparison
    if other_workdir is None and 'other_workdir' in flags.FLAGS:
        other_workdir = flags.FLAGS.other_workdir
    return comparison.compare(config, workdir, other_workdir)


MODES = {'train': train, 'sample': sample, 'analyze': analyze, 'all': all_, 'compare': compare}
