"""An experiment plugin that waits, for tests/test_faults.py: a signal sent while it runs
lands in the middle of the analysis. Named as --config.analysis.plugins="('tests.pause_experiment',)"
and listed as 'pause'; it waits $DIFFGEN_TEST_PAUSE seconds (default 0)."""
import os
import time

from diffgen.analysis.experiment import Experiment, register
from diffgen.analysis.report import Section

KEY, TITLE = 'pause', 'Pause: a wait, then the number of samples'
STARTED = 'pause: started'  # printed when the wait begins


def measure(ctx, cfg):
    del cfg  # no settings
    print(STARTED, flush=True)
    time.sleep(float(os.environ.get('DIFFGEN_TEST_PAUSE', '0')))
    return {'num_samples': len(ctx.x_T)}


def render(numbers, ctx):
    del ctx
    return Section(KEY, TITLE, f'{numbers["num_samples"]} samples.', numbers)


register(Experiment(KEY, TITLE, measure, render))
