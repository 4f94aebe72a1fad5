"""E4, hybrid sampling (docs/math.md §8): DDIM (η = 0, analysis.sampler_steps steps) from the
same x_T as E1/E2 with a denoiser that switches at t_switch:

    optimum first:  ε*(x, t) for t > t_switch, ε_θ(x, t) for t <= t_switch,
    network first:  ε_θ(x, t) for t > t_switch, ε*(x, t) for t <= t_switch,

for t_switch = round(f T), f in analysis.e4_switch_fractions (0 and T are always included).
Per run: memorisation ratio, exact-copy rate and FD / precision / recall. At the ends the
hybrid is one denoiser alone, so its samples are E1's (ε*) or E2's (ε_θ) DDIM samples; the
largest difference from those, recomputed here, is reported.
"""
from __future__ import annotations

import numpy as np

from diffgen.diffusion.denoisers import hybrid_denoiser
from diffgen.errors import ConfigError
from diffgen.analysis.experiments import e1_optimum_copies as e1
from diffgen.analysis.experiments import e2_model_novelty as e2
from diffgen import figures
from diffgen.analysis.experiment import Experiment, register
from diffgen.errors import require
from diffgen.analysis.report import Section

ORDERS = ('optimum_first', 'network_first')
LABELS = {'optimum_first': 'ε* for t > t_switch, then ε_θ',
          'network_first': 'ε_θ for t > t_switch, then ε*'}
_SAMPLE_KEY = 31   # ctx.rng fold_in constant of E4 (DDIM with eta = 0 draws no noise)


def switch_times(fractions, T):
    """Sorted unique t_switch = round(f T) with 0 and T added."""
    if any(not 0.0 <= f <= 1.0 for f in fractions):
        raise ConfigError(f'analysis.e4_switch_fractions must lie in [0, 1], got {fractions}')
    return sorted({0, T} | {int(round(f * T)) for f in fractions})


def hybrid(ctx, order, t_switch):
    """The hybrid denoiser of one order (ORDERS) and t_switch."""
    optimum, network = ctx.optimum(), ctx.network()
    if order == 'optimum_first':
        return hybrid_denoiser(optimum, network, t_switch)
    return hybrid_denoiser(network, optimum, t_switch)


def run(ctx):
    T = ctx.schedule.num_timesteps
    times = switch_times(ctx.config.analysis.e4_switch_fractions, T)
    numbers = {'t_switch': times}
    ends = {}
    for order in ORDERS:
        rows = []
        for t_switch in times:
            x = ctx.sample(hybrid(ctx, order, t_switch), 'ddim', key=_SAMPLE_KEY)
            rows.append(e1.measure(x, ctx)[0])
            if t_switch in (0, T):
                ends[(order, t_switch)] = x
        numbers[order] = {k: [r[k] for r in rows] for k in rows[0]}
    # The ends: eps* alone (optimum first at 0, network first at T) is E1's DDIM, the network
    # alone is E2's.
    alone = {'optimum': ctx.sample(ctx.optimum(), 'ddim', key=e1.SAMPLE_KEYS['ddim']),
             'network': ctx.sample(ctx.network(), 'ddim', key=e2.SAMPLE_KEYS['ddim'])}
    pairs = {'optimum': [('optimum_first', 0), ('network_first', T)],
             'network': [('optimum_first', T), ('network_first', 0)]}
    numbers['ends_max_abs_diff'] = {
        who: max(float(np.max(np.abs(ends[end] - alone[who]))) for end in pairs[who])
        for who in alone}
    name = _figure(ctx, numbers)
    return Section('e4', 'E4: hybrid sampling locates where the model stops copying',
                   _markdown(ctx, numbers), numbers, [name])


def _figure(ctx, numbers):
    fig, (ax_mem, ax_fd) = figures.subplots(2, width=5.0)
    t = numbers['t_switch']
    for order in ORDERS:
        ax_mem.plot(t, numbers[order]['memorisation_ratio'], marker='o', label=LABELS[order])
        ax_fd.plot(t, numbers[order]['fd'], marker='o', label=LABELS[order])
    ax_mem.set_ylim(-0.02, 1.02)
    ax_mem.set_ylabel('memorisation ratio (d₁/d₂ < 1/3)')
    ax_fd.set_ylabel('FD to held-out images (classifier features) ↓')
    for ax in (ax_mem, ax_fd):
        ax.set_xscale('symlog', linthresh=max(1, min(v for v in t if v > 0)))
        ax.set_xlim(0, t[-1] * 1.3)
        ax.set_xticks(t, [str(v) for v in t])
        ax.minorticks_off()
        ax.set_xlabel('t_switch (symmetric log scale)')
        ax.legend(fontsize=8, loc='center right' if ax is ax_mem else 'best')
    ax_mem.set_title('memorisation')
    ax_fd.set_title('sample quality')
    name = 'e4_hybrid.png'
    figures.save(fig, ctx.figure_path(name),
               f'E4: hybrid DDIM ({ctx.config.analysis.sampler_steps} steps), same x_T')
    return name


def _markdown(ctx, numbers):
    t = numbers['t_switch']
    head = ('| t_switch | ' + ' | '.join(f'{LABELS[o]}: memorised' for o in ORDERS) +
            ' | ' + ' | '.join(f'{LABELS[o]}: FD' for o in ORDERS) + ' |')
    lines = [head, '| ---: |' + ' ---: |' * 4]
    for i, ts in enumerate(t):
        lines.append(f'| {ts} | ' + ' | '.join(
            f'{numbers[o]["memorisation_ratio"][i]:.3f}' for o in ORDERS) + ' | ' + ' | '.join(
            f'{numbers[o]["fd"][i]:.2f}' for o in ORDERS) + ' |')
    diff = numbers['ends_max_abs_diff']
    text = ('DDIM samples from the same x_T as E1/E2 with the denoiser switched at t_switch. '
            'Memorised: d₁/d₂ < 1/3.\n\n' + '\n'.join(lines) + '\n\n'
            f'At the ends the hybrid is one denoiser alone: its samples differ from E1\'s '
            f'ε* DDIM samples by at most {diff["optimum"]:.2g} and from E2\'s ε_θ DDIM samples '
            f'by at most {diff["network"]:.2g}.')
    first = [ts for ts, r in zip(t, numbers['optimum_first']['memorisation_ratio']) if r < 0.5]
    last = [ts for ts, r in zip(t, numbers['network_first']['memorisation_ratio']) if r >= 0.5]
    if first and last:
        text += (f' Handing over to the network at t_switch = {first[0]} (ε* above) is enough '
                 f'for most samples to be new, and ε* below t_switch = {last[0]} (the network '
                 f'above) for most to be copies')
        text += (': whether a sample is a copy is decided in the last, small-t steps.'
                 if max(first[0], last[0]) <= t[-1] // 10 else '.')
    return text


def check(config):
    require(all(0.0 <= x <= 1.0 for x in config.analysis.e4_switch_fractions),
            'analysis.e4_switch_fractions must lie in [0, 1]')


register(Experiment('e4', 'E4: hybrid sampling locates where the model stops copying', measure=lambda ctx, cfg: run(ctx),
                    render=lambda section, ctx: section, check=check))  # TRANSITIONAL
