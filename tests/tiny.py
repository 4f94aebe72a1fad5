"""Small configs that compile and train in seconds, and a helper to run diffgen.main."""
import os
import subprocess
import sys

from configs import digits

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY_OVERRIDES = {
    'model.ch': 8, 'model.num_res_blocks': 1, 'model.attn_resolutions': (), 'model.dropout': 0.0,
    'training.batch_size': 16, 'training.num_steps': 8, 'training.steps_per_call': 2,
    'training.log_every': 2, 'training.checkpoint_every': 4, 'training.sample_every': 0,
    'optim.warmup_steps': 2, 'sampling.method': 'ddim', 'sampling.num_steps': 5,
    'sampling.num_samples': 8, 'data.num_heldout': 16,
    # the quality classifier of every test (tests/conftest.py trains it once per session)
    'analysis.quality.classifier_steps': 20,
    # no evaluation during --mode=train (its classifier takes minutes): every evaluator off
    **{f'evaluation.evals.{name}.every': 0 for name in digits.get_config().evaluation.evals},
}


def set_keys(tree, values):
    """Sets each dotted key of values ({'section.key': value}, any depth, e.g.
    'analysis.e4.switch_fractions') in tree (a ConfigDict, or a dict read from config.json)."""
    for key, value in values.items():
        *sections, name = key.split('.')
        node = tree
        for section in sections:
            node = node[section]
        node[name] = value
    return tree


def tiny_digits_config(data_dir, **overrides):
    """configs/digits.py with TINY_OVERRIDES and overrides (set_keys), reading its data from
    data_dir."""
    config = set_keys(digits.get_config(), {**TINY_OVERRIDES, **overrides})
    config.data.data_dir = str(data_dir)
    return config


def override_flags(data_dir, **overrides):
    """The same tiny config as --config.section.key=value flags for diffgen.main."""
    flags = [f'--config.{k}={v}' for k, v in {**TINY_OVERRIDES, **overrides}.items()
             if not isinstance(v, tuple)]
    flags.append('--config.model.attn_resolutions=()')
    return flags + [f'--config.data.data_dir={data_dir}']


def run_main(*args, timeout=300, **popen):
    """Runs `python -m diffgen.main ARGS` from the repository root."""
    env = dict(os.environ, PYTHONUNBUFFERED='1')
    return subprocess.run([sys.executable, '-m', 'diffgen.main', *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout, **popen)
