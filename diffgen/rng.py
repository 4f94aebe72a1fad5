"""Named random streams, all derived from the config seed by fold_in.

A train step's key is fold_in(stream(seed, 'train'), step): a resumed run draws exactly
what the uninterrupted run would have drawn.
"""
import jax

STREAMS = {'train': 0, 'init': 1, 'sample': 2, 'analysis': 3, 'data': 4, 'evaluation': 5}


def stream(seed, name):
    """fold_in(key(seed), STREAMS[name])."""
    return jax.random.fold_in(jax.random.key(seed), STREAMS[name])
