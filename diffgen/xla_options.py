"""XLA options diffgen sets before JAX starts its backends (imported by diffgen/__init__.py).

XLA:CPU hands convolutions, elementwise and reduction fusions and matrix products to YNNPACK
by default. On the digits UNet the YNNPACK fusions other than single matrix products run
slower than XLA's own kernels: with only those products left to YNNPACK
(--xla_cpu_experimental_ynn_fusion_type=individual_dot) the digits train call ran at 8.98
steps/s and DDIM sampling at 242 images/s, against 6.28 and 137 with XLA's defaults, on this
project's 2-core x86 machine. Turning YNNPACK off altogether is as fast for the
UNet (9.08, 246) but not for the empirical optimum's large matrix products: the engine at the
CIFAR-10 shape took 202 ms with YNNPACK's products and 319-993 ms without (see docs/performance.md,
"XLA options"). The option only changes how XLA:CPU compiles; results agree within float32
round-off, and GPU and TPU compilation ignores it.

It is appended to XLA_FLAGS unless XLA_FLAGS already names the option (the user's choice
stands), DIFFGEN_XLA_DEFAULTS=0, or the installed jaxlib is not one it was measured with
(TESTED_JAXLIB): the flag is experimental, and XLA aborts on a flag it does not know. XLA reads XLA_FLAGS when its first backend starts, so the
option takes effect where diffgen is imported before the first JAX computation (diffgen.main,
launch/, tests and benchmarks all do).
"""
from __future__ import annotations

import importlib.metadata
import os

CPU_OPTIONS = ('--xla_cpu_experimental_ynn_fusion_type=individual_dot',)
TESTED_JAXLIB = ('0.10.',)   # version prefixes of the jaxlib releases that know CPU_OPTIONS


def jaxlib_version():
    """The installed jaxlib's version ('' if none), read without importing it."""
    try:
        return importlib.metadata.version('jaxlib')
    except importlib.metadata.PackageNotFoundError:
        return ''


def apply(environ=os.environ, version=None):
    """Appends each of CPU_OPTIONS whose flag XLA_FLAGS does not name already (where jaxlib
    `version`, default the installed one, is among TESTED_JAXLIB); returns the options added."""
    if environ.get('DIFFGEN_XLA_DEFAULTS', '1') == '0':
        return ()
    if not (version if version is not None else jaxlib_version()).startswith(TESTED_JAXLIB):
        return ()
    flags = environ.get('XLA_FLAGS', '')
    added = tuple(o for o in CPU_OPTIONS if o.split('=')[0] not in flags)
    if added:
        environ['XLA_FLAGS'] = ' '.join([flags, *added]).strip()
    return added
