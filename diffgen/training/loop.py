"""The training loop: data -> state -> jitted train calls -> metrics, checkpoints, samples.

`train_and_evaluate(config, workdir)` resumes from the newest restorable checkpoint in the
workdir (training.checkpoints: same config keys and training set, else WorkdirError).
Checkpoints are written every `checkpoint_every` steps, at the end, and on SIGTERM or SIGINT
(preemption); a non-finite loss, parameter or optimiser state stops the run with one line
(TrainingDiverged) without saving the diverged state; a failed save stops it at the next
train call, the checkpoints before it kept.
"""
from __future__ import annotations

import dataclasses
import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from clu import metric_writers

from diffgen import data, parallel
from diffgen.data.fingerprint import data_fingerprint
from diffgen.training import checkpoints as checkpointing
from diffgen import figures
from diffgen.diffusion import samplers
from diffgen.diffusion.denoisers import network_denoiser
from diffgen.errors import ConfigError, TrainingDiverged, WorkdirError
from diffgen.networks import diffusers_import, get_network
from diffgen.progress import Progress
from diffgen.rng import stream
from diffgen.diffusion.schedules import get_schedule
from diffgen.training.state import TrainState, create_train_state, make_optimizer, sampling_params
from diffgen.training import metrics_log
from diffgen.training.csv_log import CsvWriter
from diffgen.training.profiling import StepProfiler
from diffgen.training.step import make_train_call

EVAL_CSV = 'eval.csv'  # the evaluations during training, one row per evaluated step


class Preemption:
    """Turns SIGTERM and SIGINT into a flag the loop checks after each train call (with
    several processes, a signal to any one of them stops all of them at the same step)."""
    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested = False
        self.name = 'SIGTERM'   # the signal received (a signal to another process: SIGTERM)
        self._previous = {}

    def __enter__(self):
        def handler(signum, frame):
            del frame
            self.requested = True
            self.name = signal.Signals(signum).name
        try:
            self._previous = {s: signal.signal(s, handler) for s in self.SIGNALS}
        except ValueError:  # not the main thread: no handler
            self._previous = {}
        return self

    def __exit__(self, *exc):
        for s, previous in self._previous.items():
            signal.signal(s, previous)


def check_model_fits_data(config, dataset):
    if dataset.is_image and config.model.name != 'unet':
        raise ConfigError(f'model.name={config.model.name!r} cannot take images; use unet')
    if not dataset.is_image and config.model.name == 'unet':
        raise ConfigError(f'{config.data.source} holds points, not images; use model.name=mlp')
    if dataset.is_image:
        height, width = dataset.image_shape[:2]
        levels = len(config.model.ch_mult) - 1
        if height % (2 ** levels) or width % (2 ** levels):
            raise ConfigError(f'{height}x{width} images of {config.data.source} cannot be '
                              f'halved {levels} times (model.ch_mult='
                              f'{tuple(config.model.ch_mult)}): height and width must be '
                              f'multiples of {2 ** levels}')


@dataclasses.dataclass
class Run:
    """What a run is made of: its data, forward process, network, optimiser, mesh and (a
    fresh or restored, replicated) train state."""
    dataset: data.Dataset
    schedule: object
    model: object
    tx: object
    mesh: object
    state: TrainState

    def params(self, use_ema):
        """The EMA or raw parameters (training.state.sampling_params)."""
        return sampling_params(self.state, use_ema)


def build(config, dataset):
    """A Run with a fresh train state: schedule, network, optimiser on the device mesh."""
    schedule = get_schedule(config)
    model = get_network(config.model)
    tx = make_optimizer(config.optim)
    mesh = parallel.get_mesh()
    if config.training.batch_size % mesh.devices.size:
        raise ConfigError(f'training.batch_size={config.training.batch_size} does not split '
                          f'over {mesh.devices.size} devices')
    state = create_train_state(model, tx, stream(config.seed, 'init'),
                               dataset.image_shape)
    if config.model.init_from:  # a published model's weights, raw and EMA (diffusers_import)
        params = diffusers_import.load_params(config.model.init_from, model, state.params,
                                              dataset.image_shape)
        state = state.replace(params=params, ema_params=jax.tree.map(np.copy, params))
    return Run(dataset, schedule, model, tx, mesh, parallel.replicate(state, mesh))


def training_set_fingerprint(dataset):
    """diffgen.data.fingerprint of the training set, or None where this process holds only
    its own rows of it (several processes: the check is then left out)."""
    whole = dataset.num_train in (None, len(dataset.train_images))
    return data_fingerprint(dataset.train_images) if whole else None


def restore_trained(config, workdir, step=None):
    """The Run of the workdir's newest restorable checkpoint, or of the kept checkpoint of
    that step (WorkdirError if there is none); with model.init_from and no checkpoint yet,
    the imported model (step 0)."""
    if not checkpointing.has_checkpoint(workdir):
        if config.model.init_from and step is None:  # the imported model as published
            dataset = data.load(config)
            check_model_fits_data(config, dataset)
            return build(config, dataset)
        raise WorkdirError(f'no checkpoint in {workdir}; run --mode=train first')
    dataset = data.load(config)
    checkpointing.check_compatible(workdir, config, training_set_fingerprint(dataset))
    check_model_fits_data(config, dataset)
    run = build(config, dataset)
    manager = checkpointing.make_manager(workdir, config.training.keep_checkpoints,
                                         config.training.keep_period)
    return dataclasses.replace(run, state=checkpointing.restore_latest(manager, run.state, step))


def place_training_set(dataset, mesh):
    """The training images as parallel.PaddedRows over the mesh, from each process's own
    rows (data.load(config, train_rows=...) reads only those; a whole dataset is cut)."""
    start, stop = parallel.process_rows(dataset.num_train, mesh)
    local = dataset.train_images[start - dataset.train_start:stop - dataset.train_start]
    return parallel.shard_process_rows(local, dataset.num_train, mesh)


@jax.jit
def _all_finite(tree):
    """True iff no floating-point leaf of tree holds a NaN or inf."""
    leaves = [jnp.isfinite(x).all() for x in jax.tree.leaves(tree)
              if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.stack(leaves).all() if leaves else jnp.bool_(True)


def non_finite_part(state):
    """The first of 'parameters', 'EMA parameters', 'optimiser state' of a TrainState that
    holds a NaN or inf, or None if all are finite (the loss of a step is computed before its
    update, so a finite loss does not make the updated state finite)."""
    parts = {'parameters': state.params, 'EMA parameters': state.ema_params,
             'optimiser state': state.opt_state}
    return next((name for name, tree in parts.items() if not _all_finite(tree)), None)


def diverged(what, manager, saving):
    """TrainingDiverged saying what became non-finite and which checkpoint is the last good
    one, once the save in progress (of step saving) has finished."""
    checkpointing.wait(manager, saving)
    latest = manager.latest_step()
    kept = (f'the last good checkpoint (step {latest}) is kept' if latest is not None else
            'no checkpoint was saved')
    return TrainingDiverged(f'{what}; training stopped, {kept}')


def sample_and_save(config, model, params, schedule, dataset, path, mesh, writer=None,
                    step=None):
    """Draws config.sampling.num_samples samples from x_T fixed by the seed; writes a PNG
    (and, given a clu writer, its pixels as the TensorBoard image 'samples' of step).
    The batch is sharded over the whole mesh; every process gets all the samples."""
    rng = stream(config.seed, 'sample')
    x_T = samplers.initial_noise(rng, config.sampling.num_samples, dataset.image_shape,
                                 batch_size=config.sampling.batch_size)
    samples = samplers.generate(network_denoiser(model, params), x_T, schedule,
                                sampling_config=config.sampling,
                                rng=jax.random.fold_in(rng, 1), mesh=mesh)
    if jax.process_index() == 0:
        figures.save_samples(samples, path, reference=None if dataset.is_image else dataset.train)
        if writer is not None:
            metrics_log.write_png(writer, step, 'samples', path)
    return samples


def make_writer(workdir, resume_step):
    """The run's clu writer: TensorBoard's (metrics_log.make_writer) and, on process 0, the
    CsvWriter of workdir/eval.csv (the eval/ scalars) beside it."""
    writers = [metrics_log.make_writer(workdir)]
    if jax.process_index() == 0:
        writers.append(CsvWriter(os.path.join(workdir, EVAL_CSV), resume_step=resume_step))
    return metric_writers.MultiWriter(writers)


def train_and_evaluate(config, workdir, make_evaluations=None):
    """Trains config.training.num_steps steps in workdir, resuming from its checkpoints.

    make_evaluations(config, run), if given, returns the run's evaluators
    (diffgen.analysis.evaluation.Evaluations): due(step, last) names those to run at a step
    (each has its own period), evaluations(params, names) -> {'<name>/<metric>': number}
    measures them with the sampling parameters (EMA or raw); the numbers go to TensorBoard
    as eval/<name>/<metric> and to workdir/eval.csv, through one clu writer.

    Progress lines (process 0) and TensorBoard's steps_per_sec are one rate: the steps alone
    since the previous log step, evaluation and sample grids timed apart (Progress)."""
    mesh = parallel.get_mesh()
    dataset = data.load(config, train_rows=lambda n: parallel.process_rows(n, mesh))
    check_model_fits_data(config, dataset)
    fingerprint = training_set_fingerprint(dataset)
    checkpointing.check_compatible(workdir, config, fingerprint)
    run = build(config, dataset)
    schedule, model, tx, mesh, state = run.schedule, run.model, run.tx, run.mesh, run.state

    manager = checkpointing.make_manager(workdir, config.training.keep_checkpoints,
                                         config.training.keep_period)
    restored = checkpointing.restore_latest(manager, state, set_aside=True)
    if restored is not None:
        state = restored
        if int(state.step) > config.training.num_steps:
            raise WorkdirError(
                f'training.num_steps={config.training.num_steps} is below the step '
                f'{int(state.step)} of the checkpoint in {checkpointing.checkpoint_dir(workdir)}:'
                f' nothing to train; set training.num_steps >= {int(state.step)}, or use '
                '--mode=sample / analyze (--step=S for an earlier kept checkpoint)')
        logging.info('resumed from step %d in %s', int(state.step),
                     checkpointing.checkpoint_dir(workdir))
    checkpointing.write_config(workdir, config, fingerprint)
    train_set = place_training_set(dataset, mesh)
    train_call = make_train_call(config, model, tx, schedule, mesh, donate=True)

    t = config.training
    step = int(state.step)
    writer = make_writer(workdir, step)
    if step == 0:
        writer.write_hparams(metrics_log.hparams(config))
    profiler = StepProfiler(workdir, t.profile_steps)
    evaluations = make_evaluations(config, run) if make_evaluations else None
    progress = Progress('train step', t.num_steps, step)
    pending = []  # per-call metrics still on the device: fetched only at boundaries
    saving = None  # the step of the last save started
    with Preemption() as preemption:
        while step < t.num_steps:
            with profiler.annotate(step):
                state, metrics = train_call(state, train_set)  # the old state's buffers donated
            step += t.steps_per_call
            pending.append(metrics)
            profiler.after(step)
            saving = checkpointing.check_saved(manager, saving)  # a failed save stops it here
            at_log = step % t.log_every == 0 or step == t.num_steps
            at_save = step % t.checkpoint_every == 0 or step == t.num_steps
            due = evaluations.due(step, step == t.num_steps) if evaluations else []
            boundary = at_log or at_save or bool(due)
            if boundary:  # processes agree on preemption at boundaries only
                preemption.requested = parallel.any_process(preemption.requested)
            if not (boundary or preemption.requested):
                continue
            losses = np.concatenate([np.asarray(m['loss']) for m in pending])
            if not np.all(np.isfinite(losses)):
                bad = step - len(losses) + int(np.argmin(np.isfinite(losses))) + 1
                raise diverged(f'loss became non-finite at step {bad}', manager, saving)
            broken = non_finite_part(state)  # checked before anything is saved or evaluated
            if broken:
                raise diverged(f'{broken} became non-finite by step {step}', manager, saving)
            if at_log:
                scalars = metrics_log.train_scalars(pending, losses, step, config,
                                                    schedule.num_timesteps)
                rate = progress.report(step, f'  loss {losses.mean():.4f}')
                if rate is not None:
                    scalars['steps_per_sec'] = rate
                writer.write_scalars(step, scalars)
                pending = []
            if due:
                with progress.other_work():
                    numbers = evaluations(sampling_params(state, config.sampling.use_ema), due)
                writer.write_scalars(step, {f'eval/{k}': v for k, v in numbers.items()})
                logging.info('eval step %d: %s', step,
                             '  '.join(f'{k} {v:.4g}' for k, v in numbers.items()))
            if at_save or preemption.requested:
                saving = checkpointing.save(manager, state, saving, force=preemption.requested)
            if preemption.requested:
                checkpointing.wait(manager, saving)
                logging.warning('%s: saved step %d and stopped; rerun the same command to '
                                'resume', preemption.name, step)
                profiler.stop()
                writer.close()
                return state
            if t.sample_every and step % t.sample_every == 0 and step != t.num_steps:
                with progress.other_work():
                    sample_and_save(config, model,
                                    sampling_params(state, config.sampling.use_ema), schedule,
                                    dataset,
                                    os.path.join(workdir, 'samples', f'step_{step:08d}.png'),
                                    mesh, writer=writer, step=step)
    checkpointing.wait(manager, saving)
    profiler.stop()
    writer.flush()
    writer.close()
    return state
