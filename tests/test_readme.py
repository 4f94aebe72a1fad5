"""README.md as written: every ```python block runs (on the embedded digits, data dir in a
temporary directory), every module, file, config key and docs/math.md section it names
exists (and every module diffgen/__init__.py's Public API names), and its Layout diagram
lists diffgen's layers in the order of diffgen.LAYERS."""
import os
import re
import subprocess
import sys

import pytest

import diffgen
from configs import default
from diffgen import LAYERS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
with open(os.path.join(REPO, 'README.md'), encoding='utf-8') as f:
    README = f.read()

SECTIONS = tuple(default.get_config().keys())   # data, diffusion, model, ...


def fenced_blocks(language):
    """The bodies of the README's ```language blocks, in order."""
    return re.findall(rf'^```{language}\n(.*?)^```$', README, flags=re.M | re.S)


PYTHON_BLOCKS = fenced_blocks('python')


def test_readme_has_python_blocks():
    assert len(PYTHON_BLOCKS) >= 2   # the Python API and the experiment plugin


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
    return tmp_path_factory.mktemp('readme_data')


@pytest.mark.parametrize('index', range(len(PYTHON_BLOCKS)))
def test_python_block_runs(index, data_dir, tmp_path):
    """Each block, as written, in a fresh interpreter started in an empty directory."""
    env = dict(os.environ, DIFFGEN_DATA_DIR=str(data_dir),
               PYTHONPATH=os.pathsep.join([REPO, *filter(None, [os.environ.get('PYTHONPATH')])]))
    result = subprocess.run([sys.executable, '-c', PYTHON_BLOCKS[index]], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (
        f'README.md python block {index + 1} failed:\n{PYTHON_BLOCKS[index]}\n'
        f'{result.stdout[-3000:]}\n{result.stderr[-3000:]}')


def test_layout_draws_the_layers_in_order():
    layout = README[README.index('## Layout'):]
    diagram = re.search(r'^```\n(.*?)^```$', layout, flags=re.M | re.S).group(1)
    drawn = re.findall(r'^  (\w+)(?:\.py|/) ', diagram, flags=re.M)
    assert drawn[::-1] == list(LAYERS), (
        f'README.md\'s Layout lists {drawn[::-1]} (lowest first), diffgen.LAYERS is {LAYERS}')


RESOLVE = """
import importlib, sys

def resolves(dotted):  # a module, or an attribute of one (diffgen.a.b.function)
    parts = dotted.split('.')
    for n in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module('.'.join(parts[:n]))
        except ModuleNotFoundError:
            continue
        for name in parts[n:]:
            if not hasattr(obj, name):
                return False
            obj = getattr(obj, name)
        return True
    return False

print([name for name in sys.argv[1:] if not resolves(name)])
"""


def test_named_modules_exist():
    """Each diffgen.x.y that the README or diffgen's Public API docstring names imports (in a
    subprocess: diffgen.main defines flags)."""
    pattern = r'(?<![\w/])diffgen(?:\.\w+)+'
    names = sorted(set(re.findall(pattern, README)) | set(re.findall(pattern, diffgen.__doc__)))
    assert {'diffgen.optimum.optimal', 'diffgen.main', 'diffgen.data.load'} <= set(names)
    missing = subprocess.run([sys.executable, '-c', RESOLVE, *names], cwd=REPO, check=True,
                             capture_output=True, text=True).stdout.strip()
    assert missing == '[]', f'README.md or diffgen/__init__.py names modules or functions ' \
                            f'that do not exist: {missing}'


def test_named_files_exist():
    paths = sorted(set(re.findall(r'(?<![\w/.])((?:configs|diffgen|tests|benchmarks|launch|docs)'
                                  r'/[\w./]*\w)', README)))
    assert 'diffgen/diffusion/samplers.py' in paths
    missing = [p for p in paths if not os.path.exists(os.path.join(REPO, p))]
    assert not missing, f'README.md names files that do not exist: {missing}'


def test_named_config_keys_exist():
    config = default.get_config()
    pattern = (rf'(?:(?<=config\.)|(?<![\w./]))((?:{"|".join(SECTIONS)})(?:\.[a-z_]\w*)+)'
               r'(?![\w(])')
    keys = sorted(set(re.findall(pattern, README)))
    assert 'analysis.plugins' in keys and 'training.gap_weighting' in keys
    missing = []
    for key in keys:
        node = config
        for name in key.split('.'):
            if not hasattr(node, 'keys') or name not in node:
                missing.append(key)
                break
            node = node[name]
    assert not missing, f'README.md names config keys that configs/default.py lacks: {missing}'


def test_cited_math_sections_exist():
    with open(os.path.join(REPO, 'docs', 'math.md'), encoding='utf-8') as f:
        sections = set(re.findall(r'^## (\d+)\. ', f.read(), flags=re.M))
    cited = set(re.findall(r'§(\d+)', README))
    assert cited, 'README.md cites no docs/math.md section'
    assert cited <= sections, (f'README.md cites docs/math.md sections '
                              f'{sorted(cited - sections)}, which do not exist')
