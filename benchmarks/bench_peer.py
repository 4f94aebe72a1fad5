"""diffgen against what a user would pick instead: diffusers + PyTorch, the same network.

    pip install -e '.[peer]'
    python benchmarks/bench_peer.py [digits|cifar10 ...] [--profile]   (default: digits)

For each config, a diffusers UNet2DModel of the config's shape is built with PyTorch's
initialisation and saved; diffgen imports it (model.init_from), so both sides compute the
same network from the same weights with the same parameter count (both printed, and the
largest |eps difference| on one batch, which float32 round-off bounds). Then, side by side
in this process, on the CPU threads both libraries see:

  train   Adam steps/s at the config's batch (the config's clip, warm-up, EMA and dropout on
          both sides): diffgen's jitted train call against a PyTorch eager step.
  sample  DDIM-100 images/s from the same x_T: diffgen's jitted sampler against
          diffusers' DDIMScheduler driving the PyTorch network under torch.no_grad.

Each figure is the best of interleaved repeats; printed as diffgen / PyTorch ratios (> 1:
diffgen is faster). --profile adds where the time goes op by op on both sides: PyTorch's
profiler table and, for diffgen, XLA's own trace of the compiled ops (jax.profiler), each
summed over ops of one kind, and the minimal reproduction of the op that XLA:CPU runs slower
than PyTorch here (group_norm_repro: GroupNorm + swish).

diffgen leaves only single matrix products to XLA:CPU's YNNPACK fusions
(diffgen/xla_options.py); run this with DIFFGEN_XLA_DEFAULTS=0 to see XLA's defaults.
"""
from __future__ import annotations

import argparse
import collections
import glob
import os
import pathlib
import sys
import tempfile
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
os.environ.setdefault('DIFFGEN_DATA_DIR', os.path.join(tempfile.gettempdir(), 'diffgen_data'))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

try:
    import diffusers  # noqa: E402
    import torch  # noqa: E402
except ImportError as e:  # pragma: no cover
    sys.exit(f'bench_peer needs PyTorch and diffusers: pip install -e \'.[peer]\' ({e})')

from configs import cifar10, digits  # noqa: E402
from diffgen import parallel  # noqa: E402
from diffgen.data import Dataset  # noqa: E402
from diffgen.diffusion import samplers  # noqa: E402
from diffgen.diffusion.denoisers import network_denoiser  # noqa: E402
from diffgen.networks import check_config  # noqa: E402
from diffgen.training.loop import build  # noqa: E402
from diffgen.training.step import make_train_call  # noqa: E402
from benchmarks.timing import best_of, time_train_calls  # noqa: E402

# (config, images per side, batch, sampled images, repeats): the CIFAR-10 network is 35.7 M
# parameters, so on a CPU it is timed on smaller batches.
CASES = {'digits': (digits.get_config, 8, 1, None, 256, 3),
         'cifar10': (cifar10.get_config, 32, 3, 8, 8, 2)}
# Train-call layout on the CPU: configs/cifar10.py runs 100 steps per call in a lax.scan (for
# accelerators); on XLA:CPU a convolution's weight gradient inside a loop is far slower
# (benchmarks/bench_train_step.py), so here it runs as the digits config does on a CPU, a few
# steps unrolled, and is timed over CPU_TRAIN_STEPS steps.
CPU_TRAIN_LAYOUT = {'cifar10': {'steps_per_call': 1, 'unroll': True}}
CPU_TRAIN_STEPS = 3
SAMPLE_STEPS = 100


def unet2d_config(model, side, channels):
    """The diffusers UNet2DModel config whose import (diffusers_import.unet_options) is
    diffgen's UNet of config.model `model` on images side x side x channels."""
    levels = [side // 2 ** i for i in range(len(model.ch_mult))]
    attention = [size in model.attn_resolutions for size in levels]
    return dict(
        sample_size=side, in_channels=channels, out_channels=channels,
        block_out_channels=tuple(model.ch * m for m in model.ch_mult),
        layers_per_block=model.num_res_blocks,
        down_block_types=tuple('AttnDownBlock2D' if a else 'DownBlock2D' for a in attention),
        up_block_types=tuple('AttnUpBlock2D' if a else 'UpBlock2D' for a in reversed(attention)),
        norm_num_groups=model.num_groups, norm_eps=model.norm_eps,
        attention_head_dim=model.attn_head_dim or None, dropout=model.dropout,
        flip_sin_to_cos=False, freq_shift=0, downsample_padding=1)


def make_pair(name, tmp):
    """(config, diffgen Run, PyTorch UNet2DModel, the diffusers DDIM scheduler): the same
    network on both sides, diffgen's imported from the saved PyTorch one."""
    get_config, side, channels, batch, _, _ = CASES[name]
    config = get_config()
    if batch:
        config.training.batch_size = batch
    if jax.default_backend() == 'cpu':
        config.training.update(CPU_TRAIN_LAYOUT.get(name, {}))
    torch.manual_seed(0)
    theirs = diffusers.UNet2DModel(**unet2d_config(config.model, side, channels))
    theirs.save_pretrained(tmp)
    d = config.diffusion
    scheduler = diffusers.DDIMScheduler(num_train_timesteps=d.num_timesteps,
                                        beta_start=d.beta_start, beta_end=d.beta_end,
                                        beta_schedule=d.schedule, clip_sample=False,
                                        set_alpha_to_one=True)
    scheduler.save_pretrained(tmp)
    config.model.init_from = tmp
    check_config(config)  # sets config.model from the saved config.json
    images = np.random.default_rng(0).integers(0, 256, (1024, side, side, channels), np.uint8)
    dataset = Dataset(train_images=images, heldout_images=images[:0], train_labels=None,
                      heldout_labels=None)
    return config, build(config, dataset), theirs, scheduler, images


def count(tree):
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def check_same_network(run, theirs, side, channels):
    """The largest |eps_diffgen - eps_pytorch| on one batch of 8 (same weights)."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((8, side, side, channels)).astype(np.float32)
    t = rng.integers(1, 1001, 8)
    ours = np.asarray(run.model.apply(run.state.params, jnp.asarray(x), jnp.asarray(t)))
    with torch.no_grad():
        ref = theirs.eval()(torch.from_numpy(x.transpose(0, 3, 1, 2)),
                            torch.from_numpy(t - 1)).sample.numpy().transpose(0, 2, 3, 1)
    return float(np.abs(ours - ref).max()), float(np.abs(ref).max())


class TorchTrainer:
    """The PyTorch eager step a diffusers user writes: a batch drawn from the training set,
    t ~ U{1..T}, MSE of eps, backward, global-norm clip, Adam with linear warm-up, EMA."""

    def __init__(self, config, model, images):
        o, d = config.optim, config.diffusion
        self.model = model.train()
        self.images = torch.from_numpy(images.transpose(0, 3, 1, 2).astype(np.float32)
                                       / 127.5 - 1)
        betas = torch.linspace(d.beta_start, d.beta_end, d.num_timesteps, dtype=torch.float64)
        self.alphas_bar = torch.cumprod(1 - betas, 0).float()
        self.batch, self.clip = config.training.batch_size, o.grad_clip
        self.opt = torch.optim.Adam(model.parameters(), lr=o.learning_rate,
                                    betas=(o.beta1, o.beta2), eps=o.eps)
        warmup = max(o.warmup_steps, 1)
        self.lr = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: min(1.0, (s + 1) / warmup))
        self.params = [p for p in model.parameters()]
        self.ema = [p.detach().clone() for p in self.params]
        self.decay = o.ema_decay

    def step(self):
        idx = torch.randint(0, len(self.images), (self.batch,))
        x0 = self.images[idx]
        t = torch.randint(0, len(self.alphas_bar), (self.batch,))
        noise = torch.randn_like(x0)
        a = self.alphas_bar[t].view(-1, 1, 1, 1)
        loss = torch.mean((self.model(a.sqrt() * x0 + (1 - a).sqrt() * noise, t).sample
                           - noise) ** 2)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        self.opt.step()
        self.lr.step()
        with torch.no_grad():
            torch._foreach_lerp_(self.ema, self.params, 1 - self.decay)
        return loss


def torch_ddim(model, scheduler, x_T, num_steps):
    """diffusers' DDIM (eta = 0) loop over the PyTorch network."""
    scheduler.set_timesteps(num_steps)
    x = x_T
    with torch.no_grad():
        for t in scheduler.timesteps:
            x = scheduler.step(model(x, t).sample, t, x).prev_sample
    return x


def bench(name, profile):
    _, side, channels, _, num_samples, repeats = CASES[name]
    with tempfile.TemporaryDirectory() as tmp:
        config, run, theirs, scheduler, images = make_pair(name, tmp)
    ours_n, theirs_n = count(run.state.params), sum(p.numel() for p in theirs.parameters())
    diff, scale = check_same_network(run, theirs, side, channels)
    batch, k = config.training.batch_size, config.training.steps_per_call
    print(f'{name}: {jax.devices()[0].device_kind} ({jax.device_count()} JAX device(s)), '
          f'torch {torch.__version__} on {torch.get_num_threads()} threads')
    print(f'  parameters  diffgen {ours_n:,}  PyTorch {theirs_n:,}  '
          f'max |eps difference| {diff:.2e} (|eps| up to {scale:.2f})')

    # training: diffgen's call runs steps_per_call steps; the PyTorch loop as many
    call = make_train_call(config, run.model, run.tx, run.schedule, run.mesh, donate=True)
    train_set = parallel.replicate(images, run.mesh)
    state = [jax.block_until_ready(call(run.state, train_set))[0]]  # compile
    trainer = TorchTrainer(config, theirs, images)
    trainer.step()
    calls = max(1, 20 // k) if name == 'digits' else max(1, CPU_TRAIN_STEPS // k)

    def diffgen_train():
        seconds, state[0] = time_train_calls(call, state[0], train_set, calls)

    def torch_train():
        for _ in range(calls * k):
            loss = trainer.step()
        loss.item()

    train = best_of(repeats, {'diffgen': diffgen_train, 'pytorch': torch_train})
    rate = {side_: calls * k / s for side_, s in train.items()}
    print(f'  train  (batch {batch}, {calls * k} Adam steps)   diffgen {rate["diffgen"]:7.2f} '
          f'steps/s  PyTorch {rate["pytorch"]:7.2f} steps/s  '
          f'ratio {rate["diffgen"] / rate["pytorch"]:.2f}')

    # sampling: DDIM-100 from the same x_T
    x_T = np.random.default_rng(2).standard_normal((num_samples, side, side, channels),
                                                    dtype=np.float32)
    denoiser = network_denoiser(run.model, state[0].ema_params)  # run.state was donated
    x_jax = jnp.asarray(x_T)
    x_torch = torch.from_numpy(x_T.transpose(0, 3, 1, 2).copy())
    theirs.eval()
    ours_sample = lambda: jax.block_until_ready(
        samplers.sample(denoiser, x_jax, run.schedule, 'ddim', SAMPLE_STEPS))
    theirs_sample = lambda: torch_ddim(theirs, scheduler, x_torch, SAMPLE_STEPS)
    ours_sample()
    sample = best_of(repeats, {'diffgen': ours_sample, 'pytorch': theirs_sample})
    rate = {side_: num_samples / s for side_, s in sample.items()}
    print(f'  sample (DDIM-{SAMPLE_STEPS}, {num_samples} images)  diffgen {rate["diffgen"]:7.3g} '
          f'images/s PyTorch {rate["pytorch"]:7.3g} images/s '
          f'ratio {rate["diffgen"] / rate["pytorch"]:.2f}')
    if profile:
        profile_both(call, state, train_set, trainer, ours_sample, theirs_sample, k)


def torch_profile(fn, label, top=12):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    events = [e for e in prof.key_averages() if not e.key.startswith(('aten::_', 'autograd::'))]
    total = sum(e.self_cpu_time_total for e in events)
    print(f'  PyTorch {label}: self time by op (top {top} of {total / 1e3:.0f} ms)')
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:top]:
        print(f'    {e.key:40} {e.self_cpu_time_total / 1e3:9.1f} ms '
              f'{100 * e.self_cpu_time_total / total:5.1f} %  {e.count:6d} calls')


def xla_profile(fn, label, top=12):
    """XLA:CPU's trace of fn: the time of its compiled ops on all threads, summed by op kind
    (the HLO instruction name without its numeric suffix: conv_general_dilated, dot,
    divide_multiply_fusion (GroupNorm + swish), ...)."""
    with tempfile.TemporaryDirectory() as tmp:
        with jax.profiler.trace(tmp):
            fn()
        path, = glob.glob(os.path.join(tmp, '**', '*.xplane.pb'), recursive=True)
        data = jax.profiler.ProfileData.from_file(path)
    times, calls = collections.Counter(), collections.Counter()
    for plane in data.planes:
        if not plane.name.startswith('/host:CPU'):
            continue
        for line in plane.lines:
            if 'XLA' not in line.name:
                continue
            for event in line.events:
                if event.name.startswith(('ThunkExecutor', 'Thunk', 'PjRt', 'Execute')):
                    continue  # the runtime's spans around the ops
                kind = event.name.split('.')[0]
                times[kind] += event.duration_ns
                calls[kind] += 1
    total = sum(times.values())
    print(f'  diffgen {label}: XLA op time by kind, all threads '
          f'(top {top} of {total / 1e6:.0f} ms)')
    for kind, ns in times.most_common(top):
        print(f'    {kind:40} {ns / 1e6:9.1f} ms {100 * ns / total:5.1f} %  {calls[kind]:6d} calls')


def group_norm_repro(shape=(256, 8, 8, 32), groups=32, repeats=20):
    """The minimal reproduction of the op that holds XLA:CPU back on these networks: GroupNorm
    followed by swish on one activation of DDIM sampling (NHWC for JAX, NCHW for PyTorch), as
    flax.linen.GroupNorm + jax.nn.swish against torch's group_norm + silu: forward, and forward
    and backward (the gradients of Σ c·out for a fixed random c with respect to the input,
    scale and bias: the reductions that dominate XLA's training step)."""
    import flax.linen as nn
    rng = np.random.default_rng(3)
    x, c = (rng.standard_normal(shape, dtype=np.float32) for _ in range(2))
    norm = nn.GroupNorm(num_groups=groups, epsilon=1e-6)
    params = norm.init(jax.random.key(0), x)
    forward = lambda p, x: jax.nn.swish(norm.apply(p, x))
    ours = jax.jit(forward)
    ours_grad = jax.jit(jax.grad(lambda p, x, c: jnp.sum(forward(p, x) * c), argnums=(0, 1)))
    xj, cj = jnp.asarray(x), jnp.asarray(c)
    nchw = lambda a: torch.from_numpy(a.transpose(0, 3, 1, 2).copy())
    xt, ct = nchw(x), nchw(c)
    weight, bias = torch.ones(shape[-1]), torch.zeros(shape[-1])
    theirs = lambda x: torch.nn.functional.silu(
        torch.nn.functional.group_norm(x, groups, weight, bias, 1e-6))
    xt_grad = xt.clone().requires_grad_(True)
    weight.requires_grad_(True)
    bias.requires_grad_(True)

    def theirs_grad():
        for t in (xt_grad, weight, bias):
            t.grad = None
        torch.sum(theirs(xt_grad) * ct).backward()
        return xt_grad.grad

    with torch.no_grad():
        diff = np.abs(np.asarray(ours(params, xj)) - theirs(xt).numpy().transpose(0, 2, 3, 1)).max()
    grad_diff = np.abs(np.asarray(ours_grad(params, xj, cj)[1])
                       - theirs_grad().numpy().transpose(0, 2, 3, 1)).max()
    with torch.no_grad():
        forward_times = best_of(repeats, {
            'diffgen': lambda: jax.block_until_ready(ours(params, xj)),
            'pytorch': lambda: theirs(xt)})
    backward_times = best_of(repeats, {
        'diffgen': lambda: jax.block_until_ready(ours_grad(params, xj, cj)),
        'pytorch': theirs_grad})
    for label, times, d in (('forward', forward_times, diff),
                            ('forward + backward', backward_times, grad_diff)):
        print(f'  GroupNorm({groups}) + swish on {shape}, {label}: JAX '
              f'{times["diffgen"] * 1e6:7.0f} us  PyTorch {times["pytorch"] * 1e6:7.0f} us  '
              f'ratio {times["pytorch"] / times["diffgen"]:.2f}  (max |difference| {d:.1e})')


def profile_both(call, state, train_set, trainer, ours_sample, theirs_sample, k):
    xla_profile(ours_sample, f'DDIM-{SAMPLE_STEPS}')  # first: the train call donates the state
    torch_profile(theirs_sample, f'DDIM-{SAMPLE_STEPS}')
    xla_profile(lambda: jax.block_until_ready(call(state[0], train_set)), f'{k} train steps')
    torch_profile(lambda: [trainer.step() for _ in range(k)][-1].item(), f'{k} train steps')
    group_norm_repro()


if __name__ == '__main__':
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('configs', nargs='*', default=['digits'], choices=sorted(CASES))
    parser.add_argument('--profile', action='store_true')
    args = parser.parse_args()
    for case in args.configs:
        bench(case, args.profile)
