"""The time model's inputs (benchmarks/scale_model.py), measured on this machine.

    python -m benchmarks.bench_scale --out=docs/scaling_inputs.json [--repeats=3]

Prints and writes (JSON) each as the best and the worst of `repeats` interleaved timings
(a range: the machine may be shared):
  gemm         this machine's GEMM peak, GFLOP/s (timing.gemm_peak: float32 1024² matmul)
  eps          the ε* engine (optimal.optimal_x0) on B = 64 queries, one chunk of N rows,
               at D = 64 and D = 3072: 4 B N D flops per call, as GFLOP/s and as a share
               of the GEMM peak (the model's efficiency)
  patches      the LS and ELS machines (optimum.patches) on the digits shape of
               bench_patches.py (P = 5, N = 1541 of 8 × 8 × 1, B = 64): 2 B N (P²C + C) Σ n²
               flops per call (bench_patches.speed's count)
  train        the train step of configs/digits.py and configs/cifar10.py at a small batch
               (one step per call, unrolled): seconds per step and the compiled step's
               flops and bytes accessed (XLA's cost analysis; its rate / the GEMM peak: the
               efficiency), and the bytes one more example adds (compiled at twice the
               batch, not run: the parameters' and optimiser's traffic is the rest); the flops of a step
               at the config's own batch and of one network forward of one image from the
               lowered computation's cost analysis (nothing run: flops do not depend on
               fusion, the bytes of an unfused computation would be meaningless);
               configs/celeba64.py's 64 × 64 UNet (the ImageNet-64 stand-in) only so, not
               timed
  sharded      the ε* engine on 1, 2, 4 and 8 simulated CPU devices (a child process with
               XLA_FLAGS=--xla_force_host_platform_device_count=8), the training set
               sharded by rows, N = 8 chunks of 2048 rows, D = 3072: seconds per call and
               pairs·D per second per device. The simulated devices share this machine's
               cores, so this shows the sharded path's overhead, not a speed-up.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import types

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
os.environ.setdefault('DIFFGEN_DATA_DIR', os.path.join(tempfile.gettempdir(), 'diffgen_data'))

SHARDED_DEVICES = (1, 2, 4, 8)
SHARDED_CHUNK, SHARDED_DIM, BATCH = 2048, 3072, 64
EPS_SHAPES = ((64, 65536), (3072, 8192))      # (D, N): one chunk each on CPU
PATCH_BATCH = 64
TRAIN_BATCH = {'digits': 8, 'cifar10': 2, 'celeba64': None}   # None: its cost alone, not timed
IMAGE_SHAPE = {'digits': (8, 8, 1), 'cifar10': (32, 32, 3), 'celeba64': (64, 64, 3)}


def span(times):
    """[best, worst] of a list of seconds."""
    return [min(times), max(times)]


def interleaved(repeats, fns):
    """{name: [seconds of each repeat]}: each fn() timed `repeats` times, interleaved (as
    timing.best_of, keeping every time, for the range)."""
    from benchmarks.timing import best_of
    out = {name: [] for name in fns}
    for _ in range(repeats):
        for name, t in best_of(1, fns).items():
            out[name].append(t)
    return out


def rate_range(flops, times):
    """[lowest, highest] GFLOP/s of `flops` per call over the call times."""
    return [flops / max(times) / 1e9, flops / min(times) / 1e9]


def measure_eps(repeats):
    import jax
    from benchmarks.bench_optimal import engine_x0
    from diffgen.diffusion.schedules import make_schedule
    from diffgen.optimum import chunked
    schedule = make_schedule('linear', 1000)
    calls, flops = {}, {}
    for d, n in EPS_SHAPES:
        y = jax.random.uniform(jax.random.key(0), (n, d), minval=-1.0, maxval=1.0)
        x = jax.random.normal(jax.random.key(1), (BATCH, d))
        t = jax.numpy.full((BATCH,), 500, jax.numpy.int32)
        rows = chunked.prepare_rows(y, n)
        args = (rows, schedule, x, t)
        jax.block_until_ready(engine_x0(*args))
        calls[f'D={d}'] = lambda args=args: jax.block_until_ready(engine_x0(*args))
        flops[f'D={d}'] = {'dim': d, 'num_rows': n, 'batch': BATCH,
                           'flops_per_call': 4.0 * BATCH * n * d}
    times = interleaved(repeats, calls)
    return {k: dict(v, seconds=span(times[k]), gflops=rate_range(v['flops_per_call'], times[k]))
            for k, v in flops.items()}


def measure_patches(repeats):
    import jax
    from benchmarks import bench_patches
    from diffgen.optimum import patches
    train = bench_patches.digits(bench_patches.NUM_TRAIN)
    x = jax.numpy.asarray(bench_patches.queries(train, PATCH_BATCH))
    calls, out = {}, {}
    for name, equivariant in (('LS', False), ('ELS', True)):
        machine = patches.patch_machine(train, bench_patches.SCHEDULE, bench_patches.PATCH,
                                        equivariant=equivariant)
        sum_n2 = sum(p.shape[0] * p.shape[1] ** 2
                     for p in patches.patch_classes(8, 8, bench_patches.PATCH, equivariant))
        out[name] = {'patch_size': bench_patches.PATCH, 'num_rows': bench_patches.NUM_TRAIN,
                     'batch': PATCH_BATCH, 'image_shape': [8, 8, 1],
                     'flops_per_call': 2.0 * PATCH_BATCH * bench_patches.NUM_TRAIN
                     * (bench_patches.PATCH ** 2 + 1) * sum_n2}
        jax.block_until_ready(bench_patches.engine_call(machine, x))
        calls[name] = lambda m=machine: jax.block_until_ready(bench_patches.engine_call(m, x))
    times = interleaved(repeats, calls)
    return {k: dict(v, seconds=span(times[k]), gflops=rate_range(v['flops_per_call'], times[k]))
            for k, v in out.items()}


def cost(lowered_or_compiled):
    """(flops, bytes accessed) of XLA's cost analysis (a dict, or a list of one in older
    JAX)."""
    c = lowered_or_compiled.cost_analysis()
    c = c[0] if isinstance(c, (list, tuple)) else c
    return float(c['flops']), float(c['bytes accessed'])


def train_parts(config, shape, batches):
    """(run, {batch: train call}, {batch: train set}) of config, one step per call, unrolled,
    on random uint8 images (no dataset: the step's cost depends on the shapes alone); one
    train state for every batch."""
    import numpy as np
    from diffgen import parallel
    from diffgen.training.loop import build
    from diffgen.training.step import make_train_call
    config.training.steps_per_call = 1
    config.training.unroll = True
    run = build(config, types.SimpleNamespace(image_shape=shape))
    images = np.random.default_rng(0).integers(0, 256, (16,) + shape, np.uint8)
    train_set = parallel.replicate(images, run.mesh)
    calls = {}
    for batch in batches:
        config.training.batch_size = batch
        calls[batch] = make_train_call(config, run.model, run.tx, run.schedule, run.mesh)
    return run, calls, train_set


def measure_train(name, repeats):
    import jax
    import jax.numpy as jnp
    from benchmarks.timing import time_train_calls
    from configs import celeba64, cifar10, digits
    from diffgen.diffusion.denoisers import network_denoiser
    config = {'digits': digits, 'cifar10': cifar10, 'celeba64': celeba64}[name].get_config()
    full_batch, steps, shape = config.training.batch_size, config.training.num_steps, \
        IMAGE_SHAPE[name]
    batch = TRAIN_BATCH[name]
    run, calls, train_set = train_parts(config, shape,
                                        (full_batch, batch or full_batch, 2 * (batch or 1)))
    full_flops, _ = cost(calls[full_batch].lower(run.state, train_set))
    forward = jax.jit(network_denoiser(run.model, run.state.params)).lower(
        jnp.zeros((1,) + shape), jnp.zeros((1,), jnp.int32))
    fwd_flops, _ = cost(forward)
    out = {'config_batch': full_batch, 'config_steps': steps, 'config_flops_per_step': full_flops,
           'forward_flops_per_image': fwd_flops, 'image_shape': list(shape),
           'num_params': int(sum(x.size for x in jax.tree.leaves(run.state.params)))}
    if batch is None:
        return out
    compiled = calls[batch].lower(run.state, train_set).compile()
    flops, compiled_bytes = cost(compiled)
    _, bytes_2b = cost(calls[2 * batch].lower(run.state, train_set).compile())
    state = jax.block_until_ready(compiled(run.state, train_set))[0]
    times = []
    for _ in range(repeats):
        seconds, state = time_train_calls(compiled, state, train_set, 1)
        times.append(seconds)
    return dict(out, batch=batch, seconds_per_step=span(times), flops_per_step=flops,
                bytes_per_step=compiled_bytes, bytes_per_example=(bytes_2b - compiled_bytes) / batch,
                gflops=rate_range(flops, times))


def sharded_child(repeats):
    """In the child with 8 simulated devices: the engine on meshes of 1, 2, 4, 8 devices."""
    import jax
    from benchmarks.bench_optimal import engine_x0
    from diffgen import parallel
    from diffgen.diffusion.schedules import make_schedule
    from diffgen.optimum import chunked
    assert jax.device_count() == 8, jax.devices()
    schedule = make_schedule('linear', 1000)
    n = 8 * SHARDED_CHUNK
    y = jax.random.uniform(jax.random.key(0), (n, SHARDED_DIM), minval=-1.0, maxval=1.0)
    x = jax.random.normal(jax.random.key(1), (BATCH, SHARDED_DIM))
    t = jax.numpy.full((BATCH,), 500, jax.numpy.int32)
    calls = {}
    for p in SHARDED_DEVICES:
        mesh = parallel.get_mesh(p)
        rows = chunked.prepare_rows(y, SHARDED_CHUNK, mesh=mesh)
        args = (rows, schedule, parallel.replicate(x, mesh), parallel.replicate(t, mesh))
        jax.block_until_ready(engine_x0(*args))
        calls[p] = lambda args=args: jax.block_until_ready(engine_x0(*args))
    times = interleaved(repeats, calls)
    pairs = BATCH * n * SHARDED_DIM
    print(json.dumps({str(p): {'devices': p, 'num_rows': n, 'dim': SHARDED_DIM,
                               'batch': BATCH, 'seconds': span(times[p]),
                               'pairs_dim_per_s_per_device': [pairs / max(times[p]) / p,
                                                              pairs / min(times[p]) / p]}
                      for p in SHARDED_DEVICES}))


def measure_sharded(repeats):
    env = dict(os.environ, XLA_FLAGS=(os.environ.get('XLA_FLAGS', '') +
                                      ' --xla_force_host_platform_device_count=8').strip())
    out = subprocess.run([sys.executable, '-m', 'benchmarks.bench_scale', '--sharded_child',
                          f'--repeats={repeats}'], env=env, capture_output=True, text=True,
                         cwd=pathlib.Path(__file__).resolve().parents[1])
    if out.returncode:
        raise RuntimeError(f'sharded child failed:\n{out.stderr[-3000:]}')
    return json.loads(out.stdout.strip().splitlines()[-1])


def machine():
    import jax
    cpu = platform.processor() or platform.machine()
    try:
        with open('/proc/cpuinfo') as f:
            cpu = next(l.split(':', 1)[1].strip() for l in f if l.startswith('model name'))
    except (OSError, StopIteration):
        pass
    return {'cpu': cpu, 'cores': os.cpu_count(), 'platform': jax.default_backend(),
            'jax': jax.__version__}


def measure(repeats):
    from benchmarks.timing import gemm_peak
    gemm = [gemm_peak() for _ in range(repeats)]
    out = {'machine': machine(), 'repeats': repeats,
           'command': 'python -m benchmarks.bench_scale --out=docs/scaling_inputs.json',
           'gemm_gflops': [min(gemm), max(gemm)]}
    for key, fn in (('eps', measure_eps), ('patches', measure_patches),
                    ('sharded', measure_sharded)):
        out[key] = fn(repeats)
        print(f'{key}: {json.dumps(out[key])}', flush=True)
    out['train'] = {}
    for name in TRAIN_BATCH:
        out['train'][name] = measure_train(name, repeats)
        print(f'train {name}: {json.dumps(out["train"][name])}', flush=True)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', default='', help='write the measurements here (JSON)')
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--sharded_child', action='store_true', help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.sharded_child:
        return sharded_child(args.repeats)
    out = measure(args.repeats)
    print(json.dumps(out, indent=1))
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(out, indent=1) + '\n')
        print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
