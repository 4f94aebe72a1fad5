"""configs/cifar10.py trained with the gap objective (docs/math.md §6; our formulation) instead
of L_eps: only the objective settings differ, so the two runs can be compared with
--mode=compare."""
from configs import cifar10
from configs.digits_gap import with_gap_objective


def get_config(arg=None):
    return with_gap_objective(cifar10.get_config(arg))
