"""E4, hybrid sampling (docs/math.md §8): DDIM (η = 0, analysis.sampler_steps steps) from the
same x_T as E1/E2 with a denoiser that switches at t_switch:

    optimum first:  ε*(x, t) for t > t_switch, ε_θ(x, t) for t <= t_switch,
    network first:  ε_θ(x, t) for t > t_switch, ε*(x, t) for t <= t_switch,

for t_switch = round(f T), f in analysis.e4.switch_fractions (0 and T are always included).
A second arm puts the Gaussian denoiser of the training set's mean and covariance
(diffgen/optimum/references.py), which keeps no individual image, in the network's place:

    Gaussian arm:   ε*(x, t) for t > t_switch, ε_G(x, t) for t <= t_switch.

Where the network's curve follows the Gaussian arm's, the curve marks the noise level below
which ε* has settled the copy whatever denoiser finishes, not a property of the network; the
text names the t_switch where the two differ by more than twice their standard error.
Per run: memorisation ratio, exact-copy rate and FD / precision / recall. At the ends the
hybrid is one denoiser alone, so its samples are E1's (ε*) or E2's (ε_θ) DDIM samples; the
largest difference from those, recomputed here, is reported.
"""
from __future__ import annotations

import numpy as np

from diffgen import figures
from diffgen.analysis.experiment import Experiment, register
from diffgen.analysis.experiments import e1_optimum_copies as e1
from diffgen.analysis.experiments import e2_model_novelty as e2
from diffgen.analysis.report import Section, markdown_table, number
from diffgen.diffusion.denoisers import hybrid_denoiser
from diffgen.errors import require

KEY, TITLE = 'e4', 'E4: hybrid sampling locates where the model stops copying'
ORDERS = ('optimum_first', 'network_first')
GAUSSIAN_ARM = 'optimum_then_gaussian'
LABELS = {'optimum_first': 'ε* for t > t_switch, then ε_θ',
          'network_first': 'ε_θ for t > t_switch, then ε*',
          GAUSSIAN_ARM: 'ε* for t > t_switch, then the Gaussian denoiser'}
_SAMPLE_KEY = 31   # ctx.rng fold_in constant of E4 (DDIM with eta = 0 draws no noise)


def switch_times(fractions, T):
    """Sorted unique t_switch = round(f T) with 0 and T added."""
    return sorted({0, T} | {int(round(f * T)) for f in fractions})


def hybrid(ctx, order, t_switch, gaussian=None):
    """The hybrid denoiser of one order (ORDERS, or GAUSSIAN_ARM with the Gaussian denoiser
    given) and t_switch."""
    optimum, network = ctx.optimum(), ctx.network()
    if order == GAUSSIAN_ARM:
        return hybrid_denoiser(optimum, gaussian, t_switch)
    if order == 'optimum_first':
        return hybrid_denoiser(optimum, network, t_switch)
    return hybrid_denoiser(network, optimum, t_switch)


def measure(ctx, cfg):
    """t_switch; per order, ctx.copy_metrics of the hybrid's DDIM samples at each t_switch
    (lists over t_switch); the largest difference of the ends from E1's and E2's samples."""
    T = ctx.schedule.num_timesteps
    times = switch_times(cfg.switch_fractions, T)
    numbers = {'t_switch': times}
    ends = {}
    gaussian = ctx.gaussian()
    for order in (*ORDERS, GAUSSIAN_ARM):
        rows = []
        for t_switch in times:
            x = ctx.sample(hybrid(ctx, order, t_switch, gaussian), 'ddim', key=_SAMPLE_KEY)
            rows.append(ctx.copy_metrics(x)[0])
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
    return numbers


def _figure(ctx, numbers):
    fig, (ax_mem, ax_fd) = figures.subplots(2, width=5.0)
    t = numbers['t_switch']
    for order in (*ORDERS, GAUSSIAN_ARM):
        if order in numbers:
            style = {'linestyle': '--', 'marker': 's'} if order == GAUSSIAN_ARM else {'marker': 'o'}
            ax_mem.plot(t, numbers[order]['memorisation_ratio'], label=LABELS[order], **style)
            ax_fd.plot(t, numbers[order]['fd'], label=LABELS[order], **style)
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


def _first(times, ratios, condition):
    """(t_switch, ratio) of the smallest t_switch whose ratio meets condition, or None."""
    return next(((ts, r) for ts, r in zip(times, ratios) if condition(r)), None)


def render(numbers, ctx):
    name = _figure(ctx, numbers)
    t = numbers['t_switch']
    arms = [o for o in (*ORDERS, GAUSSIAN_ARM) if o in numbers]
    table = markdown_table(
        ['t_switch', *(f'{LABELS[o]}: memorised' for o in arms),
         *(f'{LABELS[o]}: FD' for o in arms)],
        [[ts, *(number(numbers[o]['memorisation_ratio'][i]) for o in arms),
          *(number(numbers[o]['fd'][i], '.2f') for o in arms)] for i, ts in enumerate(t)])
    diff = numbers['ends_max_abs_diff']
    text = ('DDIM samples from the same x_T as E1/E2 with the denoiser switched at t_switch. '
            f'Memorised: d₁/d₂ < 1/3.\n\n{table}\n\n'
            f'At the ends the hybrid is one denoiser alone: its samples differ from E1\'s '
            f'ε* DDIM samples by at most {diff["optimum"]:.2g} and from E2\'s ε_θ DDIM samples '
            f'by at most {diff["network"]:.2g}.')
    for order, below, condition in (('optimum_first', 'below', lambda r: r < 0.5),
                                    ('network_first', 'at least', lambda r: r >= 0.5)):
        found = _first(t, numbers[order]['memorisation_ratio'], condition)
        text += (f' {LABELS[order]}: the smallest t_switch with a memorisation ratio {below} '
                 + (f'0.5 is {found[0]} ({found[1]:.3f}).' if found else '0.5: none.'))
    summary = ''
    if GAUSSIAN_ARM in numbers:
        compared = gaussian_text(t, numbers, len(ctx.x_T))
        summary = 'Hybrid sampling (ε* first, then another denoiser). ' + compared
        text += ' ' + compared
    return Section(KEY, TITLE, text, numbers, [name], summary=summary)


def gaussian_text(t, numbers, n):
    """Where the network's optimum-first curve differs from the Gaussian arm's: |p_θ − p_G|
    > 2 √(p_θ(1 − p_θ)/n + p_G(1 − p_G)/n) (two binomial standard errors of the difference
    of two ratios over n samples each)."""
    net = np.asarray(numbers['optimum_first']['memorisation_ratio'], np.float64)
    lin = np.asarray(numbers[GAUSSIAN_ARM]['memorisation_ratio'], np.float64)
    se = np.sqrt(net * (1 - net) / n + lin * (1 - lin) / n)
    differs = [(ts, a, b) for ts, a, b, e in zip(t, net, lin, se) if abs(a - b) > 2 * e]
    found = _first(t, lin, lambda r: r < 0.5)
    text = (f'With the Gaussian denoiser in the network\'s place the smallest t_switch with a '
            f'memorisation ratio below 0.5 is ' + (f'{found[0]} ({found[1]:.3f})' if found
                                                   else 'none'))
    if not differs:
        return text + ('; the network\'s curve does not differ from it at any t_switch (by more '
                       'than two standard errors): the curve locates where ε* settles a copy, '
                       'not a property of the network.')
    return text + ('; the network differs from it (by more than two standard errors) at '
                   't_switch = ' + ', '.join(f'{ts} ({a:.3f} against {b:.3f})'
                                             for ts, a, b in differs) +
                   ', and follows it elsewhere.')


def check(config):
    require(all(0.0 <= x <= 1.0 for x in config.analysis.e4.switch_fractions),
            'analysis.e4.switch_fractions must lie in [0, 1]')


register(Experiment(KEY, TITLE, measure, render, check))
