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
    """Reports `what step/total, rate, ETA` lines and returns the rate, which TensorBoard's
    steps_per_sec shares (one number on both).

    rate = steps done since the previous report / (time since then − other work in it):
    time passed to exclude() or spent in other_work() blocks (evaluation, sample grids) is
    timed apart, so the rate is that of the steps alone; the line names that work's share of
    the time since the first report, and the ETA comes from the whole time (steps and other
    work) since the first report. The first report (it follows compilation) starts the
    clocks and has no rate."""

    def __init__(self, what, total, start=0, *, unit='steps'):
        self.what, self.total, self.start, self.unit = what, total, start, unit
        self.t0 = None
        self.excluded = 0.0          # other work since the first report
        self.last = None             # (time, done, excluded) at the previous report
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
        """Prints the line (process 0 only); returns the rate, None at the first report."""
        now = time.perf_counter()
        rate = None
        if self.t0 is None:  # the first call includes compilation; rates start here
            self.t0, self.start = now, done
            rate_text, eta_text = 'compiling done', ''
        else:
            then, done_then, excluded_then = self.last
            busy = max(now - then - (self.excluded - excluded_then), 1e-9)
            rate = (done - done_then) / busy
            elapsed = max(now - self.t0, 1e-9)
            overall = (done - self.start) / elapsed
            rate_text = f'{rate:.3g} {self.unit}/s'
            eta_text = f'  ETA {format_seconds((self.total - done) / max(overall, 1e-9))}'
            if self.excluded:
                eta_text += f'  (other work {100 * self.excluded / elapsed:.0f} % of the time)'
        self.last = (now, done, self.excluded)
        line = f'{self.what} {done}/{self.total}  {rate_text}{eta_text}{extra}'
        if jax.process_index() == 0:
            print(line, flush=True)
        self.last_done = done
        return rate
