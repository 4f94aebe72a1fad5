"""What each --mode does, as functions of (config, workdir, options): options carries the
flags that only some modes read (--step, --other_workdir). run(mode, ...) runs one holding
the workdir lock (diffgen.files.workdir_lock), so that a second run on a workdir stops at
once instead of interleaving its checkpoints and reports with the first one's."""
from __future__ import annotations

import contextlib
import dataclasses
import os

import jax
from absl import logging

from diffgen import files
from diffgen.data import data_dir
from diffgen.analysis import compare as comparison
from diffgen.analysis.context import make_context
from diffgen.analysis.evaluation import Evaluations
from diffgen.analysis.runner import run_experiments
from diffgen.training import metrics_log
from diffgen.training.loop import restore_trained, sample_and_save, train_and_evaluate


@dataclasses.dataclass(frozen=True)
class Options:
    step: int | None = None            # --step: the kept checkpoint to sample or analyse
    other_workdir: str | None = None   # --other_workdir: the second model of compare


def train(config, workdir, options=Options()):
    """Trains (resuming), then writes a sample grid of the final EMA model."""
    state = train_and_evaluate(config, workdir, make_evaluations=Evaluations)
    if int(state.step) == config.training.num_steps:
        sample(config, workdir, options)
    return state


def sample(config, workdir, options=Options()):
    """Draws config.sampling.num_samples samples; writes samples/final.png and samples.npz."""
    run = restore_trained(config, workdir, options.step)
    step = int(run.state.step)
    path = os.path.join(workdir, 'samples', f'step_{step:08d}_final.png')
    logging.info('sampling %d samples (%s) from step %d ...', config.sampling.num_samples,
                 config.sampling.method, step)
    writer = metrics_log.make_writer(workdir)  # the grid as TensorBoard's 'samples' of step
    samples = sample_and_save(config, run.model, run.params(config.sampling.use_ema),
                              run.schedule, run.dataset, path, run.mesh, writer, step)
    writer.close()
    if jax.process_index() == 0:
        files.save_npz(os.path.join(workdir, 'samples', 'samples.npz'), samples=samples,
                 step=step)
        logging.info('wrote %d samples (%s) to %s', len(samples), config.sampling.method, path)
    return samples


def analyze(config, workdir, options=Options()):
    """Runs config.analysis.experiments on the trained model; writes DIR/report/."""
    run = restore_trained(config, workdir, options.step)
    ctx = make_context(config, workdir, run)
    return run_experiments(ctx, list(config.analysis.experiments))


def all_(config, workdir, options=Options()):
    """Trains (resuming), samples, then analyses (a training stopped early by a signal
    says that the analysis did not run)."""
    state = train(config, workdir, options)
    if int(state.step) == config.training.num_steps:
        analyze(config, workdir, options)
    else:
        logging.info('analysis not run: training stopped at step %d of %d; rerun the same '
                     'command to continue', int(state.step), config.training.num_steps)
    return state


def compare(config, workdir, options=Options()):
    """Compares DIR's model with --other_workdir's (diffgen.analysis.compare); writes
    DIR/report/compare/."""
    return comparison.compare(config, workdir, options.other_workdir)


MODES = {'train': train, 'sample': sample, 'analyze': analyze, 'all': all_, 'compare': compare}


def compile_cache_dir(config):
    """The persistent compilation cache's directory of training.compile_cache_dir: 'auto' =
    <data dir>/jax_compilation_cache (data.data_dir, $DIFFGEN_DATA_DIR or ~/.diffgen/data; a
    gs:// data dir works too), '' = none (None)."""
    configured = config.training.compile_cache_dir
    if configured != 'auto':
        return configured or None
    return os.path.join(data_dir(config.data.data_dir), 'jax_compilation_cache')


def init_compile_cache(config):
    """Turns on JAX's persistent compilation cache (compile_cache_dir), so that a rerun or
    the next run of a sweep loads the train call, samplers and k-NN instead of compiling
    them (every compilation of >= 1 s, jax_persistent_cache_min_compile_time_secs)."""
    path = compile_cache_dir(config)
    if path:
        jax.config.update('jax_compilation_cache_dir', path)


def run(mode, config, workdir, options=Options()):
    """MODES[mode](config, workdir, options) holding the workdir lock (process 0 takes it
    for all processes); WorkdirError naming the holder if another run has it."""
    lock = files.workdir_lock(workdir) if jax.process_index() == 0 else contextlib.nullcontext()
    with lock:
        return MODES[mode](config, workdir, options)
