"""Progress lines for long work: step, rate, ETA; printed by process 0 only (a pod would
show each line once per host)."""
from __future__ import annotations

import contextlib
import time

import jax


def format_seconds(seconds):
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f'{h}h{m:02d}m{s:02d}s' if h else f'{m}m{s:02d}s' if m else f'{s}s'


class Progress:
    """Reports `what step/total, rate, ETA` (measured since the first report).

    Time passed to exclude() (other work between steps: evaluation, sample grids) is left
    out of the rate, which is then that of the steps alone, and reported as a share of the
    time; the ETA comes from the whole time, so it counts that work too."""

    def __init__(self, what, total, start=0, *, unit='steps'):
        self.what, self.total, self.start, self.unit = what, total, start, unit
        self.t0 = None
        self.excluded = 0.0
        self.last_done = start

    def exclude(self, seconds):
        """Leaves `seconds` (spent on other work since the first report) out of the rate."""
        if self.t0 is not None:
            self.excluded += seconds

    @contextlib.contextmanager
    def other_work(self):
        """The time of the `with` block is other work: exclude() it from the rate."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.exclude(time.perf_counter() - started)

    def report(self, done, extra=''):
        now = time.perf_counter()
        if self.t0 is None:  # the first call includes compilation; rate starts here
            self.t0, self.start = now, done
            rate_text, eta_text = 'compiling done', ''
        else:
            elapsed = max(now - self.t0, 1e-9)
            rate = (done - self.start) / max(elapsed - self.excluded, 1e-9)
            overall = (done - self.start) / elapsed
            rate_text = f'{rate:.3g} {self.unit}/s'
            eta_text = f'  ETA {format_seconds((self.total - done) / max(overall, 1e-9))}'
            if self.excluded:
                eta_text += f'  (other work {100 * self.excluded / elapsed:.0f} % of the time)'
        line = f'{self.what} {done}/{self.total}  {rate_text}{eta_text}{extra}'
        if jax.process_index() == 0:
            print(line, flush=True)
        self.last_done = done
