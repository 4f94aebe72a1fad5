"""The exact optimum of the training objective and what shares its engine: the chunked
online-softmax core, the empirical-optimal denoiser ε*, exact k-nearest neighbours and the
gap-bank optimum (docs/math.md §3, §6). Knows nothing of training."""
from diffgen.errors import require

STORAGE_DTYPES = ('float32', 'bfloat16')


def check_config(config):
    """The optimal section."""
    o = config.optimal
    require(o.chunk_size >= 0,
            'optimal.chunk_size must be >= 0 (0: the engine\'s default for the device kind)')
    require(o.storage_dtype in STORAGE_DTYPES,
            f'optimal.storage_dtype={o.storage_dtype!r} is not one of {STORAGE_DTYPES}')
