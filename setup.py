"""diffgen: train diffusion models, compute the exact optimum of their objective, measure
how much their samples depend on the training set."""
from setuptools import find_packages, setup

# PyTorch and diffusers: for importing published checkpoints and for benchmarks/bench_peer.py
DIFFUSERS = ['torch>=2.4', 'diffusers>=0.42.1', 'safetensors>=0.8.0']

setup(
    name='diffgen',
    version='0.1.0',
    description='Generalisation of diffusion models: trained vs. empirical-optimal denoisers',
    packages=find_packages(include=['diffgen', 'diffgen.*', 'configs', 'launch']),
    python_requires='>=3.10',
    # Lower bounds are the versions the test suite was run with.
    install_requires=[
        'jax>=0.10.2',
        'flax>=0.12.8',
        'optax>=0.2.8',
        'orbax-checkpoint>=0.12.8',
        'tensorflow-datasets>=4.9.10',
        'tensorflow-cpu>=2.21.0',
        'tensorboard>=2.21.0',
        'ml-collections>=1.1.0',
        'clu>=0.0.12',
        'scikit-learn>=1.9.1',
        'matplotlib>=3.11.2',
        'numpy>=2.4',
        'absl-py>=2.5.1',
        'array_record>=0.8.6',
        'etils[epath]>=1.15.0',
        'importlib_resources>=7.1.0',
        'pillow>=13.0.0',
    ],
    extras_require={
        # pytest-xdist: the README's test command runs one worker per core (-n auto),
        # each test file on one worker (--dist loadfile: its module fixtures made once)
        'test': ['pytest>=9.0', 'pytest-xdist>=3.5'],
        # config.model.init_from: published diffusers checkpoints (safetensors is read without
        # PyTorch; torch and diffusers for .bin weights and for tests/test_import_diffusers.py)
        'import': DIFFUSERS,
        # benchmarks/bench_peer.py: diffgen against diffusers + PyTorch on the same network
        'peer': DIFFUSERS,
    },
)
