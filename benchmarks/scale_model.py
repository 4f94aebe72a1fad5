"""The time model to scale: the work of training and of E1–E4 counted from the config, and
its wall time on a machine as a roofline bound (plain arithmetic, no JAX).

Work. A pass of q queries over a training set of N rows of dimension D:

    ε* (optimum.optimal, the chunked online softmax)   flops 4 q N D
        (two GEMMs: the logits x Yᵀ, 2 q N D, and the weighted sum w Y, 2 q N D; the
        exp / max / rescale are O(q N), left out)
    nearest neighbours (copy metrics, analysis.metrics)  flops 2 q N D   (x Yᵀ alone)

Both stream the set once per batch of `batch` queries (analysis.batch_size: every query of
a batch is served by one pass), so bytes = ceil(q / batch) · 4 N D (float32 rows). A
network evaluation costs the forward flops and bytes XLA's cost analysis counts for one
image, times the evaluations. With S = analysis.num_samples, K = analysis.sampler_steps, T
timesteps, H held-out images and t_1 > … > t_K the DDIM grid (samplers.step_pairs):

    E1  ε* with DDIM, Heun and DDPM        ε*: S (K + (2K − 1) + T)       kNN: 3 S
    E2  ε_θ with the same three            net: S (K + (2K − 1) + T)
        kNN: 3 S against the N training rows, 3 S against H training and H held-out rows,
        the held-out references (H queries over N + H rows, N training images over H):
                                           kNN in N-row queries: 3 S + 6 S H / N + 2 H + H² / N
    E3  trajectories (ε* and its posterior's stats are two passes: optimal_eps and
        optimal_stats each reduce the set; one if XLA merged them) and forward points of
        the H training and H held-out images, each with ε_θ and the two baselines:
                                           ε*: 2 S K + 6 H K              net: S K + 2 H K
    E4  three arms, each a DDIM run per t_switch (ε* on the steps t > t_switch for
        optimum-first and the Gaussian arm, t ≤ t_switch for network-first), plus ε* and
        ε_θ alone:                         ε*: S Σ_s (2 #{t_k > s} + #{t_k ≤ s}) + S K
                                           net: S Σ_s #{t_k > s} + S K    kNN: 3 S · #s
    E1 also pays once the copy threshold δ (analysis.copies): every one of the N + H source
    images against the others, a kNN pass of N + H queries over N + H rows.

Training: steps × one train step's Work at the config's batch (its flops from XLA's cost
analysis; its bytes as step_work below estimates them: the flops over the
flops per byte of one more example, plus the parameters' and optimiser's traffic per
parameter, both from the compiled CIFAR-10 step at two batches).

Time. On P devices of peak F flop/s and memory bandwidth W byte/s each, with the work split
evenly (the training set sharded by rows, the batch by examples; the cross-device combine
and the gradient all-reduce left out):

    time = max(flops / (P · F · e), bytes / (P · W))

where e is the efficiency of the computation: its measured flop rate on the benchmark's
machine over that machine's GEMM peak (the best float32 1024² matmul), assumed to carry
over to the accelerator (benchmarks/bench_scale.py measures it).
"""
from __future__ import annotations

import dataclasses
import math

FLOAT32 = 4   # bytes
# whose measured UNet (bench_scale's train entries) stands for each data set's network
NETWORK = {'CIFAR-10': 'cifar10', 'ImageNet-64': 'celeba64'}


@dataclasses.dataclass(frozen=True)
class Hardware:
    name: str
    devices: int
    peak_flops: float      # per device, flop/s, at the precision the engine's matmuls run
    bandwidth: float       # per device, byte/s
    precision: str         # which peak that is
    source: str            # the vendor's page


HARDWARE = (
    Hardware('8× NVIDIA A100 80GB SXM', 8, 156e12, 2.039e12,
             'TF32 tensor core (dense), 19.5 TFLOP/s in plain FP32',
             'https://www.nvidia.com/en-us/data-center/a100/'),
    Hardware('8× NVIDIA H100 SXM', 8, 494.7e12, 3.35e12,
             'TF32 tensor core (dense; 989 with sparsity), 67 TFLOP/s in plain FP32',
             'https://www.nvidia.com/en-us/data-center/h100/'),
    Hardware('TPU v4-8 (4 chips)', 4, 275e12, 1.2e12,
             'bf16 MXU per chip (float32 matmuls at default precision run as bf16 passes)',
             'https://cloud.google.com/tpu/docs/v4'),
)


@dataclasses.dataclass(frozen=True)
class Dataset:
    name: str
    num_train: int         # N
    image_shape: tuple
    num_heldout: int       # H

    @property
    def dim(self):
        return math.prod(self.image_shape)


@dataclasses.dataclass(frozen=True)
class Work:
    flops: float = 0.0
    bytes: float = 0.0

    def __add__(self, other):
        return Work(self.flops + other.flops, self.bytes + other.bytes)

    def __mul__(self, k):
        return Work(self.flops * k, self.bytes * k)


def passes(queries, batch):
    """Passes over the set that `queries` queries in batches of `batch` make."""
    return math.ceil(queries / batch) if queries else 0


def eps_work(queries, num_rows, dim, batch):
    """ε* of `queries` queries over num_rows rows of dim: 4 q N D flops, one float32 read of
    the rows per batch."""
    return Work(4.0 * queries * num_rows * dim, passes(queries, batch) * FLOAT32 * num_rows * dim)


def knn_work(queries, num_rows, dim, batch):
    """Nearest neighbours of `queries` queries: 2 q N D flops, one read per batch."""
    return Work(2.0 * queries * num_rows * dim, passes(queries, batch) * FLOAT32 * num_rows * dim)


def net_work(evals, forward):
    """`evals` network evaluations of one image each, forward = Work of one."""
    return forward * evals


@dataclasses.dataclass(frozen=True)
class Analysis:
    """The analysis settings the counts use (config.analysis, config.diffusion)."""
    num_samples: int       # S
    sampler_steps: int     # K
    num_timesteps: int     # T
    batch_size: int        # queries per pass over the set
    grid: tuple            # t_1 > ... > t_K: the DDIM steps' t (samplers.step_pairs[:, 0])
    switch_times: tuple    # E4's t_switch values


def counts(a: Analysis, dataset: Dataset):
    """{experiment: {'eps': ε* query evaluations, 'net': network evaluations, 'knn': kNN
    queries against the N training rows, 'knn_self': queries of the δ pass}} (the module
    docstring's table)."""
    S, K, T, H, N = a.num_samples, a.sampler_steps, a.num_timesteps, dataset.num_heldout, \
        dataset.num_train
    samplers = K + (2 * K - 1) + T                 # DDIM, Heun, DDPM evaluations per sample
    above = [sum(t > s for t in a.grid) for s in a.switch_times]
    return {
        'e1': {'eps': S * samplers, 'net': 0, 'knn': 3 * S, 'knn_self': N + H},
        'e2': {'eps': 0, 'net': S * samplers, 'knn': 3 * S + 6 * S * H / N + 2 * H + H * H / N, 'knn_self': 0},
        'e3': {'eps': 2 * S * K + 6 * H * K, 'net': S * K + 2 * H * K, 'knn': 0, 'knn_self': 0},
        'e4': {'eps': S * sum(2 * n + (K - n) for n in above) + S * K,
               'net': S * sum(above) + S * K, 'knn': 3 * S * len(a.switch_times),
               'knn_self': 0},
    }


def experiment_work(count, dataset: Dataset, batch, forward: Work):
    """{'eps': Work, 'net': Work, 'knn': Work} of one experiment's counts."""
    n, d = dataset.num_train, dataset.dim
    m = n + dataset.num_heldout
    return {'eps': eps_work(count['eps'], n, d, batch),
            'net': net_work(count['net'], forward),
            'knn': knn_work(count['knn'], n, d, batch) + knn_work(count['knn_self'], m, d, batch)}


def roofline_seconds(work: Work, hardware: Hardware, efficiency):
    """max(flops / (P F e), bytes / (P W)): the module docstring's bound."""
    compute = work.flops / (hardware.devices * hardware.peak_flops * efficiency)
    memory = work.bytes / (hardware.devices * hardware.bandwidth)
    return max(compute, memory)


def predict(works, hardware: Hardware, efficiency):
    """Seconds of a dict of Work by kind ('eps', 'net', 'knn', 'train'), each at its kind's
    efficiency (efficiency[kind]), summed."""
    return sum(roofline_seconds(w, hardware, efficiency[kind]) for kind, w in works.items())


def training_work(steps, step: Work):
    """steps × one train step's Work."""
    return step * steps


# ------------------------------------------------ from bench_scale.py's measurements

def efficiencies(inputs):
    """{'fast' | 'slow': {kind: efficiency}}: ε* and kNN at the engine's D = 3072 rate, the
    network and training at the CIFAR-10 train step's, each over the GEMM peak."""
    lo_peak, hi_peak = inputs['gemm_gflops']
    eps, train = inputs['eps']['D=3072']['gflops'], inputs['train']['cifar10']['gflops']
    out = {}
    for end, rate, peak in (('fast', 1, lo_peak), ('slow', 0, hi_peak)):
        e = min(1.0, eps[rate] / peak)
        t = min(1.0, train[rate] / peak)
        out[end] = {'eps': e, 'knn': e, 'net': t, 'train': t}
    return out


def intensity(inputs):
    """(flops per byte of one more example, bytes per parameter of the rest) of the compiled
    CIFAR-10 train step here (XLA's cost analysis at two batches): a step's bytes are its
    flops over the first plus the parameters times the second (their and the optimiser's
    traffic, independent of the batch)."""
    c = inputs['train']['cifar10']
    per_example = c['flops_per_step'] / c['batch'] / c['bytes_per_example']
    fixed = c['bytes_per_step'] - c['batch'] * c['bytes_per_example']
    return per_example, max(fixed, 0.0) / c['num_params']


def forward_work(inputs, dataset):
    """Work of one forward of one image by the dataset's UNet (in a batch: the parameters'
    reads shared, left out)."""
    flops = inputs['train'][NETWORK[dataset.name]]['forward_flops_per_image']
    return Work(flops, flops / intensity(inputs)[0])


def step_work(inputs, dataset):
    """Work of one train step at the config's batch by the dataset's UNet."""
    c = inputs['train'][NETWORK[dataset.name]]
    per_example, per_param = intensity(inputs)
    flops = c['config_flops_per_step']
    return Work(flops, flops / per_example + per_param * c['num_params'])
