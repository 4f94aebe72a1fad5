"""configs/cifar10.py trained with the gap objective (DESIGN.md §1; our formulation) instead
of L_eps: only the objective settings differ, so the two runs can be compared with
--mode=compare."""
from configs import cifar10


def get_config(arg=None):
    config = cifar10.get_config(arg)
    config.training.objective = 'gap'
    config.training.gap_max_k = 100         # s = max(t - k, 0), k ~ U{1..100}
    config.training.gap_p_zero = 0.0        # no L_eps term
    config.training.gap_weighting = 'xi'    # ||c eps_theta - xi||^2: target variance 1, not 1/c^2
    return config
