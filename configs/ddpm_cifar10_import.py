"""A published CIFAR-10 model (google/ddpm-cifar10-32: the DDPM release's network, Ho et al.
2020, converted to diffusers) analysed against the exact optimum of CIFAR-10's 50,000
training images. The model directory is the argument, model_dir=MODEL_DIR:

    hf download google/ddpm-cifar10-32 --local-dir MODEL_DIR   # huggingface_hub >= 1.0
    tfds build cifar10 --data_dir=DATA_DIR --file_format=array_record
    python -m diffgen.main --config=configs/ddpm_cifar10_import.py:model_dir=MODEL_DIR \\
        --config.data.data_dir=DATA_DIR --workdir=WORKDIR --mode=analyze

Everything after `model_dir=` is the path, whatever characters it holds ('=', ',', ':'):
this config has no other argument, so nothing is split off. A bare
`configs/ddpm_cifar10_import.py:MODEL_DIR` is the same path too (the whole argument);
`model_dir=` is the documented form, the one that also reads a directory whose name itself
begins with `model_dir=` right.

configs/cifar10.py's data, forward process (T = 1000, beta linear from 1e-4 to 0.02: the
model's scheduler_config.json must agree) and training settings (--mode=train fine-tunes from
the imported weights); the UNet keys are set from MODEL_DIR/config.json
(diffgen/networks/diffusers_import.py). The report runs E1-E4: E5-E7 train models of their
own and are skipped for an imported model.
"""
from configs import cifar10

ARGUMENT = 'model_dir='


def model_dir_argument(arg):
    """The model directory of the config argument: what follows `model_dir=`, or the whole
    argument, taken verbatim (no split at ',' or '='); ValueError if it is empty."""
    path = (arg or '')[len(ARGUMENT):] if (arg or '').startswith(ARGUMENT) else (arg or '')
    if not path:
        raise ValueError('configs/ddpm_cifar10_import.py needs the model directory: '
                         '--config=configs/ddpm_cifar10_import.py:model_dir=MODEL_DIR')
    return path


def get_config(arg=None):
    model_dir = model_dir_argument(arg)
    config = cifar10.get_config()
    config.model.init_from = model_dir
    config.analysis.experiments = ('e1', 'e2', 'e3', 'e4')
    config.sampling.method = 'ddim'        # --mode=sample: 100 deterministic steps, not 1000
    config.sampling.num_steps = 100
    return config
