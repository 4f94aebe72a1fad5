"""Progress lines for long work: step, rate, ETA; printed by process 0 only (a pod would
show each line once per host)."""
from __future__ import annotations

import time

import jax


def format_seconds(seconds):
    seconds = int(max(seconds, 0))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f'{h}h{m:02d}m{s:02d}s' if h else f'{m}m{s:02d}s' if m else f'{s}s'


class Progress:
    """Reports `what step/total, rate, ETA` (rate measured since the first report)."""

    def __init__(self, what, total, start=0, *, unit='steps'):
        self.what, self.total, self.start, self.unit = what, total, start, unit
        self.t0 = None
        self.last_done = start

    def report(self, done, extra=''):
        now = time.perf_counter()
        if self.t0 is None:  # the first call includes compilation; rate starts here
            self.t0, self.start = now, done
            rate_text, eta_text = 'compiling done', ''
        else:
            rate = (done - self.start) / max(now - self.t0, 1e-9)
            rate_text = f'{rate:.1f} {self.unit}/s'
            eta_text = f'  ETA {format_seconds((self.total - done) / max(rate, 1e-9))}'
        line = f'{self.what} {done}/{self.total}  {rate_text}{eta_text}{extra}'
        if jax.process_index() == 0:
            print(line, flush=True)
        self.last_done = done
