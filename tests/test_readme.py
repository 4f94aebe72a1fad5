"""README.md and every docs/*.md page as written (docs/math.md, and docs/results.md when it
has been generated, included): every ```python block runs (on the embedded digits, in an
empty directory); every module, file, config key, docs/math.md section and relative link a
page names exists (and every module diffgen/__init__.py's Public API names), and so does
every test (tests/<file>.py::<name>); every command
in a ```bash block names config files that load and --config.<key> overrides that exist; and
README.md's Layout diagram lists diffgen's layers in the order of diffgen.LAYERS."""
import functools
import importlib
import os
import re
import shlex
import subprocess
import sys

import pytest

import diffgen
from configs import default, digits
from diffgen import LAYERS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read(page):
    with open(os.path.join(REPO, page), encoding='utf-8') as f:
        return f.read()


# Every page, README.md first; a page added to docs/ is checked without being listed here.
PAGES = {page: read(page) for page in
         ['README.md', *sorted(f'docs/{name}' for name in os.listdir(os.path.join(REPO, 'docs'))
                               if name.endswith('.md'))]}
README = PAGES['README.md']
SECTIONS = tuple(default.get_config().keys())   # data, diffusion, model, ...


def fenced_blocks(text, language):
    """The bodies of a page's ```language blocks, in order."""
    return re.findall(rf'^```{language}\n(.*?)^```$', text, flags=re.M | re.S)


PYTHON_BLOCKS = [(page, index, block) for page, text in PAGES.items()
                 for index, block in enumerate(fenced_blocks(text, 'python'))]


def test_pages_are_all_read():
    assert {'README.md', 'docs/math.md', 'docs/experiments.md', 'docs/performance.md'} <= set(PAGES)


def test_pages_have_python_blocks():
    assert fenced_blocks(README, 'python'), 'README.md has no python block (the Python API)'
    assert len(PYTHON_BLOCKS) >= 2   # the Python API and the experiment plugin


@pytest.fixture(scope='module')
def data_dir(request, tmp_path_factory):
    """The data dir the python blocks share: tests/conftest.py's digits_data_dir (the digits
    already written) where it exists, else one of this module's own."""
    try:
        return request.getfixturevalue('digits_data_dir')
    except pytest.FixtureLookupError:
        return tmp_path_factory.mktemp('readme_data')


@pytest.mark.parametrize('page, index, block', PYTHON_BLOCKS,
                         ids=[f'{page}#{index + 1}' for page, index, _ in PYTHON_BLOCKS])
def test_python_block_runs(page, index, block, data_dir, tmp_path):
    """Each block, as written, in a fresh interpreter started in an empty directory."""
    env = dict(os.environ, DIFFGEN_DATA_DIR=str(data_dir),
               PYTHONPATH=os.pathsep.join([REPO, *filter(None, [os.environ.get('PYTHONPATH')])]))
    result = subprocess.run([sys.executable, '-c', block], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, (
        f'{page} python block {index + 1} failed:\n{block}\n'
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

print('\\n'.join(name for name in sys.argv[1:] if not resolves(name)))
"""
MODULE = r'(?<![\w/])diffgen(?:\.\w+)+'
CONFIG_KEY = (rf'(?:(?<=config\.)|(?<![\w./]))((?:{"|".join(SECTIONS)})(?:\.[a-z_]\w*)+)'
              r'(?![\w(])')


def named_modules(text):
    return set(re.findall(MODULE, text))


def is_key(config, key):
    node = config
    for name in key.split('.'):
        if not hasattr(node, 'keys') or name not in node:
            return False
        node = node[name]
    return True


def keys_not_in_default(text):
    """The config keys text names that neither configs/default.py nor configs/digits.py
    (the sweep's config, whose evaluation.evals results.csv lists) has."""
    configs = (default.get_config(), digits.get_config())
    return {key for key in re.findall(CONFIG_KEY, text)
            if not any(is_key(config, key) for config in configs)}


@functools.lru_cache(maxsize=None)
def unresolved():
    """The dotted names no page can stand behind, found in one subprocess (diffgen.main defines
    flags): each diffgen.x.y a page or diffgen's Public API docstring names, and diffgen.<k>
    for each section.key that is no config key (a page may name a function by its short
    name, as docs/math.md does `data.to_float`)."""
    names = named_modules(diffgen.__doc__)
    for text in PAGES.values():
        names |= named_modules(text) | {f'diffgen.{k}' for k in keys_not_in_default(text)}
    out = subprocess.run([sys.executable, '-c', RESOLVE, *sorted(names)], cwd=REPO, check=True,
                         capture_output=True, text=True).stdout
    return frozenset(out.split())


def test_named_modules_exist():
    """Each diffgen.x.y that a page or diffgen's Public API docstring names imports."""
    everything = ''.join(PAGES.values())
    assert {'diffgen.optimum.optimal', 'diffgen.main', 'diffgen.LAYERS'} <= named_modules(
        everything)
    missing = {page: sorted(named_modules(text) & unresolved()) for page, text in PAGES.items()}
    missing['diffgen/__init__.py'] = sorted(named_modules(diffgen.__doc__) & unresolved())
    missing = {where: names for where, names in missing.items() if names}
    assert not missing, f'modules or functions that do not exist, by page: {missing}'


@pytest.mark.parametrize('page', PAGES)
def test_named_files_exist(page):
    paths = set(re.findall(r'(?<![\w/.])((?:configs|diffgen|tests|benchmarks|launch|studies|docs)'
                           r'/[\w./]*\w)', PAGES[page]))
    missing = sorted(p for p in paths if not os.path.exists(os.path.join(REPO, p)))
    assert not missing, f'{page} names files that do not exist: {missing}'


@pytest.mark.parametrize('page', PAGES)
def test_named_tests_exist(page):
    """Each tests/<file>.py::<name> a page names (the robustness table's rows) is a test
    defined in that file."""
    missing = sorted(f'{path}::{name}' for path, name in
                     re.findall(r'\b(tests/[\w/]+\.py)::(\w+)', PAGES[page])
                     if not os.path.exists(os.path.join(REPO, path))
                     or not re.search(rf'^def {name}\(', read(path), flags=re.M))
    assert not missing, f'{page} names tests that do not exist: {missing}'


def slug(heading):
    """GitHub's anchor of a Markdown heading."""
    return re.sub(r'[^\w\- ]', '', heading.strip().lower()).replace(' ', '-')


@pytest.mark.parametrize('page', PAGES)
def test_relative_links_resolve(page):
    """[text](path#anchor): the file exists (relative to the page) and has that heading."""
    broken = []
    for target in re.findall(r'\]\(([^)\s]+)\)', PAGES[page]):
        if re.match(r'[a-z]+:', target):
            continue   # https:, mailto:
        path, _, anchor = target.partition('#')
        path = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
        if not os.path.exists(os.path.join(REPO, path)):
            broken.append(target)
        elif anchor and path.endswith('.md'):
            headings = re.findall(r'^#+ (.*)$', read(path), flags=re.M)
            if anchor not in {slug(h) for h in headings}:
                broken.append(target)
    assert not broken, f'{page} links to files or headings that do not exist: {broken}'


def test_config_keys_are_named():
    keys = set()
    for text in PAGES.values():
        keys |= set(re.findall(CONFIG_KEY, text))
    assert {'analysis.plugins', 'training.gap_weighting', 'evaluation.evals'} <= keys


@pytest.mark.parametrize('page', PAGES)
def test_named_config_keys_exist(page):
    missing = sorted(key for key in keys_not_in_default(PAGES[page])
                     if f'diffgen.{key}' in unresolved())
    assert not missing, f'{page} names config keys that configs/default.py lacks: {missing}'


MATH_SECTIONS = set(re.findall(r'^## (\d+)\. ', PAGES['docs/math.md'], flags=re.M))


@pytest.mark.parametrize('page', PAGES)
def test_cited_math_sections_exist(page):
    cited = set(re.findall(r'§(\d+)', PAGES[page]))
    if page == 'README.md':
        assert cited, 'README.md cites no docs/math.md section'
    assert cited <= MATH_SECTIONS, (f'{page} cites docs/math.md sections '
                                    f'{sorted(cited - MATH_SECTIONS)}, which do not exist')


def commands(text):
    """The commands of a page's ```bash blocks, continuation lines joined, as argument lists
    (comments dropped)."""
    found = []
    for block in fenced_blocks(text, 'bash'):
        for line in block.replace('\\\n', ' ').splitlines():
            words = shlex.split(line, comments=True)
            if words:
                found.append(words)
    return found


# Commands that take --config=FILE[:arg]: diffgen.main (directly, or through launch/local.sh
# or launch/tpu_pod.sh), the sweep and the studies.
TAKES_CONFIG = re.compile(r'python -m (?:diffgen\.main|launch\.sweep)\b|'
                          r'launch/(?:local|tpu_pod)\.sh\b|studies/\w+\.py\b')
CONFIG_COMMANDS = {page: [words for words in commands(text) if TAKES_CONFIG.search(' '.join(words))]
                   for page, text in PAGES.items()}


def test_pages_show_diffgen_main_commands():
    assert any('diffgen.main' in words for words in CONFIG_COMMANDS['README.md']), (
        'README.md shows no python -m diffgen.main command')


@pytest.mark.parametrize('page', PAGES)
def test_bash_commands_name_existing_configs_and_keys(page):
    """Every command in a bash block that runs diffgen.main (directly, or through
    launch/local.sh or launch/tpu_pod.sh), a sweep or a study: its --config=FILE[:arg] file exists and its
    get_config(arg) returns a config, and every --config.<key>=value names a key of that
    config (every key of configs/default.py, plus what the file adds, such as evaluators)."""
    problems = []
    for words in CONFIG_COMMANDS[page]:
        command = ' '.join(words)
        files = [w.split('=', 1)[1] for w in words if w.startswith('--config=')]
        keys = [w[len('--config.'):].split('=', 1)[0] for w in words if w.startswith('--config.')]
        if not files:
            problems.append(f'{command}: no --config=FILE')
        config = default.get_config()
        for spec in files:
            path, _, arg = spec.partition(':')
            if not path.endswith('.py') or not os.path.exists(os.path.join(REPO, path)):
                problems.append(f'{command}: {path} does not exist')
                continue
            try:
                module = importlib.import_module(path[:-len('.py')].replace('/', '.'))
                config = module.get_config(arg or None)
            except Exception as e:   # noqa: BLE001 -- any failure is the finding
                problems.append(f'{command}: {spec} does not load: {e!r}')
        problems += [f'{command}: --config.{key} is no config key' for key in keys
                     if not is_key(config, key)]
    assert not problems, f'{page}:\n' + '\n'.join(problems)
