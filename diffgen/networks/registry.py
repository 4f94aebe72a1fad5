"""NETWORKS: config.model.name -> a builder (config.model) -> Flax Linen module eps_theta.
Each network module registers its builder beside the module it builds."""
from diffgen.registry import Registry

NETWORKS = Registry('network')


def get_network(model_config):
    """The network config.model.name names, built from the rest of config.model."""
    return NETWORKS[model_config.name](model_config)
