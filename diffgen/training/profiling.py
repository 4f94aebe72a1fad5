"""jax.profiler traces of training.profile_steps train steps (TensorBoard's profile tab), with
the public jax.profiler API: a trace starts after the first train call (compilation done) and
stops once that many steps have run, or when training stops; every train call runs inside a
StepTraceAnnotation('train', step_num=<its first step>), so the trace viewer shows the steps.
Only process 0 traces; the trace goes to workdir/plugins/profile/<run>/."""
from __future__ import annotations

import jax


class StepProfiler:
    """annotate(step) around each train call; after(step) once the call's steps are done."""

    def __init__(self, workdir, num_steps):
        """num_steps: steps to trace (0 = none), from the end of the run's first call."""
        self.workdir = workdir
        self.num_steps = num_steps if jax.process_index() == 0 else 0
        self.first = None        # the step at which the trace started
        self.running = False

    def annotate(self, step):
        """The StepTraceAnnotation of the train call that starts at step."""
        return jax.profiler.StepTraceAnnotation('train', step_num=step)

    def after(self, step):
        """Starts the trace after the first call; stops it num_steps steps later."""
        if not self.num_steps:
            return
        if self.first is None:
            jax.profiler.start_trace(self.workdir)
            self.first, self.running = step, True
        elif self.running and step - self.first >= self.num_steps:
            self.stop()

    def stop(self):
        """Ends a trace still running (training stopped before num_steps were traced)."""
        if self.running:
            jax.profiler.stop_trace()
            self.running = False
