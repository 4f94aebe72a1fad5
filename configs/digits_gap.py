"""configs/digits.py trained with the gap objective (docs/math.md §6; our formulation) instead
of L_eps: only the objective settings differ, so the two runs can be compared with
--mode=compare.

    --config=configs/digits_gap.py          the default run
    --config=configs/digits_gap.py:smoke    the reduced run (same variants as digits.py)
"""
from configs import digits


def with_gap_objective(config):
    """The config trained with the gap objective; nothing else changes."""
    config.training.objective = 'gap'
    config.training.gap_max_k = 100         # s = max(t - k, 0), k ~ U{1..100}
    config.training.gap_p_zero = 0.0        # no L_eps term
    config.training.gap_weighting = 'xi'    # ||c eps_theta - xi||^2: target variance 1, not 1/c^2
    return config


def get_config(arg=None):
    return with_gap_objective(digits.get_config(arg))
