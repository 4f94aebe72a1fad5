"""The package's layering, read from the source with ast (of diffgen only diffgen/__init__.py
is imported, for LAYERS):

- a module imports only from its own layer and the layers before it in diffgen.LAYERS
  (a module's layer is the first component of its path under diffgen/);
- the module-level imports between diffgen's modules form no cycle;
- imports sit at module level, except heavy optional dependencies imported on first use,
  each with a comment on its line saying why;
- the package's __init__.py imports only diffgen.xla_options (INIT_IMPORTS_ALLOWED);
- diffgen imports nothing from the repository's other top-level directories (configs/,
  tests/, launch/, benchmarks/), except `from configs import default` in validation and in
  training.checkpoints (the defaults of keys an older run's config.json lacks).

Each check is a function of the parsed sources, run on diffgen and on small made-up packages
that break its rule.
"""
import ast
import dataclasses
import os
import subprocess
import sys
import textwrap
import tokenize

import pytest

from diffgen import LAYERS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOCAL_IMPORTS_ALLOWED = ('tensorflow', 'tensorflow_datasets', 'matplotlib', 'torch', 'diffusers',
                         'safetensors')
OUTSIDE = ('configs', 'tests', 'launch', 'benchmarks')
# The package's __init__.py imports only this: XLA_FLAGS must be set before JAX starts, so
# importing any part of diffgen sets them (diffgen/xla_options.py imports os alone).
INIT_IMPORTS_ALLOWED = ('diffgen.xla_options',)
OUTSIDE_ALLOWED = {('diffgen.validation', 'configs.default'),
                   ('diffgen.training.checkpoints', 'configs.default')}


@dataclasses.dataclass
class Module:
    name: str          # diffgen/a/b.py -> 'diffgen.a.b', diffgen/a/__init__.py -> 'diffgen.a'
    path: str          # relative to the directory above the package
    tree: ast.Module
    comments: set      # line numbers that carry a comment

    @property
    def is_package(self):
        return os.path.basename(self.path) == '__init__.py'

    @property
    def layer(self):
        return layer(self.name)


@dataclasses.dataclass
class Import:
    importer: str      # the importing module's dotted name
    target: str        # the imported module's dotted name
    where: str         # 'path:line'
    line: int
    local: bool        # inside a function or class body


def layer(module):
    """'diffgen.a.b' -> 'a'; the package itself -> None."""
    parts = module.split('.')
    return parts[1] if len(parts) > 1 else None


def read_package(package_dir):
    """{dotted name: Module} for every .py file under package_dir."""
    top = os.path.dirname(os.path.abspath(package_dir))
    modules = {}
    for root, dirs, names in os.walk(package_dir):
        dirs[:] = sorted(d for d in dirs if d != '__pycache__')
        for name in sorted(names):
            if not name.endswith('.py'):
                continue
            path = os.path.join(root, name)
            parts = os.path.relpath(path, top)[:-len('.py')].split(os.sep)
            dotted = '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)
            with open(path, 'rb') as f:
                comments = {tok.start[0] for tok in tokenize.tokenize(f.readline)
                            if tok.type == tokenize.COMMENT}
            with open(path, encoding='utf-8') as f:
                tree = ast.parse(f.read(), path)
            modules[dotted] = Module(dotted, os.path.relpath(path, top), tree, comments)
    return modules


def resolve(modules, importer, node):
    """The modules an Import/ImportFrom node of module importer brings in (dotted names).
    `from p import x` names the submodule p.x if there is one, else the module p."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ''
    if node.level:  # relative: the importer's package, less level - 1 trailing components
        package = importer if modules[importer].is_package else importer.rpartition('.')[0]
        parts = package.split('.')
        package = '.'.join(parts[:len(parts) - node.level + 1])
        base = f'{package}.{base}' if base else package
    return [f'{base}.{alias.name}'
            if f'{base}.{alias.name}' in modules or base.split('.')[0] in OUTSIDE else base
            for alias in node.names]


def imports(modules):
    """Every Import of every module, in source order."""
    found = []
    for module in modules.values():
        def visit(node, local):
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.Import, ast.ImportFrom)):
                    found.extend(Import(module.name, target, f'{module.path}:{child.lineno}',
                                        child.lineno, local)
                                 for target in resolve(modules, module.name, child))
                visit(child, local or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                         ast.ClassDef, ast.Lambda)))
        visit(module.tree, False)
    return found


def internal(imp, modules):
    """Whether imp imports a module of the package itself."""
    return imp.target.split('.')[0] == imp.importer.split('.')[0]


def missing_layers(modules, layers):
    """Layers with a module but not in layers, and layers in layers with no module."""
    present = {m.layer for m in modules.values() if m.layer}
    return sorted(present - set(layers)), sorted(set(layers) - present)


def layer_violations(modules, layers):
    """'file:line: ...' for every import of a higher layer (or of the package itself)."""
    out = []
    for imp in imports(modules):
        if not internal(imp, modules):
            continue
        own, other = layer(imp.importer), layer(imp.target)
        if own is None and imp.target not in INIT_IMPORTS_ALLOWED:
            out.append(f'{imp.where}: the package\'s __init__.py imports {imp.target}; it must '
                       f'import nothing of its own')
        elif own is None:
            continue
        elif other is None:
            out.append(f'{imp.where}: {imp.importer} imports the package itself; import the '
                       f'module it needs')
        elif own in layers and other in layers and layers.index(other) > layers.index(own):
            out.append(f'{imp.where}: {imp.importer} (layer {own!r}) imports {imp.target} from '
                       f'the higher layer {other!r}')
    return out


def find_cycle(graph):
    """One cycle of the directed graph {node: [(successor, where), ...]} as the list of its
    edges (node, where node imports the next node), or None."""
    state = {}  # node -> 'open' while on the depth-first path, 'done' after

    def walk(node, path):  # path: the edges that led to node
        state[node] = 'open'
        for successor, where in graph.get(node, ()):
            if state.get(successor) == 'open':
                above = [n for n, _ in path]
                start = above.index(successor) if successor in above else len(path)
                return [*path[start:], (node, where)]
            if successor not in state:
                cycle = walk(successor, [*path, (node, where)])
                if cycle:
                    return cycle
        state[node] = 'done'
        return None

    for node in graph:
        if node not in state:
            cycle = walk(node, [])
            if cycle:
                return cycle
    return None


def import_cycle(modules):
    """'file:line: a imports b' for each edge of one cycle of module-level imports ([] if none)."""
    graph = {name: [] for name in modules}
    for imp in imports(modules):
        if internal(imp, modules) and not imp.local and imp.target != imp.importer:
            graph[imp.importer].append((imp.target, imp.where))
    cycle = find_cycle(graph) or []
    return [f'{where}: {node} imports {successor}'
            for (node, where), (successor, _) in zip(cycle, cycle[1:] + cycle[:1])]


def local_import_violations(modules):
    """'file:line: ...' for every import inside a function or class body, except a commented
    import of a heavy optional dependency."""
    out = []
    for imp in imports(modules):
        if not imp.local:
            continue
        if imp.target.split('.')[0] not in LOCAL_IMPORTS_ALLOWED:
            out.append(f'{imp.where}: {imp.target} is imported inside a function or class; '
                       f'move it to the module\'s top (only {LOCAL_IMPORTS_ALLOWED} may wait)')
        elif imp.line not in modules[imp.importer].comments:
            out.append(f'{imp.where}: {imp.target} is imported inside a function without a '
                       f'comment on its line saying why')
    return out


def outside_violations(modules):
    """'file:line: ...' for every import of configs/, tests/, launch/ or benchmarks/ (except
    OUTSIDE_ALLOWED)."""
    return [f'{imp.where}: {imp.importer} imports {imp.target}' for imp in imports(modules)
            if imp.target.split('.')[0] in OUTSIDE
            and (imp.importer, imp.target) not in OUTSIDE_ALLOWED]


DIFFGEN = read_package(os.path.join(REPO, 'diffgen'))


def test_every_layer_is_declared_once_and_has_a_module():
    assert len(set(LAYERS)) == len(LAYERS), f'diffgen.LAYERS names a layer twice: {LAYERS}'
    undeclared, empty = missing_layers(DIFFGEN, LAYERS)
    assert not undeclared, f'diffgen/ has layers missing from diffgen.LAYERS: {undeclared}'
    assert not empty, f'diffgen.LAYERS names layers with no module: {empty}'


def test_modules_import_only_their_own_or_lower_layers():
    violations = layer_violations(DIFFGEN, LAYERS)
    assert not violations, 'imports against diffgen.LAYERS:\n' + '\n'.join(violations)


def test_no_import_cycles():
    cycle = import_cycle(DIFFGEN)
    assert not cycle, 'import cycle:\n' + '\n'.join(cycle)


def test_imports_are_at_module_level_except_commented_heavy_optional_ones():
    violations = local_import_violations(DIFFGEN)
    assert not violations, 'function-local imports:\n' + '\n'.join(violations)


def test_diffgen_imports_nothing_from_the_rest_of_the_repository():
    violations = outside_violations(DIFFGEN)
    assert not violations, 'diffgen imports from outside the package:\n' + '\n'.join(violations)


def test_reading_layers_imports_nothing_heavy():
    code = ('import sys, diffgen; print(sorted(m for m in sys.modules if m.split(".")[0] in '
            '("jax", "numpy", "flax", "tensorflow") or m.startswith("diffgen.")))')
    out = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == str(list(INIT_IMPORTS_ALLOWED)), f'import diffgen loads {out}'


# The checks on made-up packages that break their rules.

def make_package(tmp_path, sources):
    """Writes {relative path: source} under tmp_path/pkg and parses it."""
    for rel, source in {'__init__.py': '', **sources}.items():
        path = tmp_path / 'pkg' / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(source))
    return read_package(str(tmp_path / 'pkg'))


def test_layer_check_names_the_upward_import(tmp_path):
    modules = make_package(tmp_path, {
        'low.py': 'import os\n\nfrom pkg import high\n',
        'high.py': 'from pkg.low import thing\n',
        'sub/__init__.py': 'from . import inner\nfrom ..low import thing\n',
        'sub/inner.py': 'from .. import high\n',
    })
    assert missing_layers(modules, ('low', 'high')) == (['sub'], [])
    assert missing_layers(modules, ('low', 'high', 'sub', 'gone')) == ([], ['gone'])
    assert layer_violations(modules, ('low', 'sub', 'high')) == [
        "pkg/low.py:3: pkg.low (layer 'low') imports pkg.high from the higher layer 'high'",
        "pkg/sub/inner.py:1: pkg.sub.inner (layer 'sub') imports pkg.high from the higher "
        "layer 'high'"]
    assert layer_violations(modules, ('low', 'high', 'sub')) == [
        "pkg/low.py:3: pkg.low (layer 'low') imports pkg.high from the higher layer 'high'"]
    assert layer_violations(modules, ('sub', 'low', 'high')) == [
        "pkg/low.py:3: pkg.low (layer 'low') imports pkg.high from the higher layer 'high'",
        "pkg/sub/__init__.py:2: pkg.sub (layer 'sub') imports pkg.low from the higher layer 'low'",
        "pkg/sub/inner.py:1: pkg.sub.inner (layer 'sub') imports pkg.high from the higher "
        "layer 'high'"]


def test_cycle_check_names_every_edge(tmp_path):
    modules = make_package(tmp_path, {
        'a.py': 'import pkg.b\n',
        'b.py': 'x = 1\nfrom pkg.c import y\n',
        'c.py': 'from pkg import a\n\n\ndef f():\n    from pkg import b  # local: not an edge\n',
    })
    assert import_cycle(modules) == ['pkg/a.py:1: pkg.a imports pkg.b',
                                     'pkg/b.py:2: pkg.b imports pkg.c',
                                     'pkg/c.py:1: pkg.c imports pkg.a']
    modules = make_package(tmp_path, {'c.py': 'import os\n'})
    assert import_cycle(modules) == []


def test_local_import_check(tmp_path):
    modules = make_package(tmp_path, {'m.py': '''\
        import json


        def f():
            import matplotlib  # heavy, optional until a figure is drawn
            import torch
            from PIL import Image  # not heavy enough
            return json, matplotlib, torch, Image


        class C:
            import os
        '''})
    assert local_import_violations(modules) == [
        'pkg/m.py:6: torch is imported inside a function without a comment on its line saying why',
        f'pkg/m.py:7: PIL is imported inside a function or class; move it to the module\'s top '
        f'(only {LOCAL_IMPORTS_ALLOWED} may wait)',
        f'pkg/m.py:12: os is imported inside a function or class; move it to the module\'s top '
        f'(only {LOCAL_IMPORTS_ALLOWED} may wait)']


def test_outside_check(tmp_path):
    modules = make_package(tmp_path, {'m.py': 'from configs import digits\nimport tests.tiny\n'})
    assert outside_violations(modules) == ['pkg/m.py:1: pkg.m imports configs.digits',
                                           'pkg/m.py:2: pkg.m imports tests.tiny']


@pytest.mark.parametrize('graph, has_cycle', [
    ({'a': [('b', 'a.py:1')], 'b': [('c', 'b.py:1')], 'c': []}, False),
    ({'a': [('b', 'a.py:1')], 'b': [('c', 'b.py:1')], 'c': [('a', 'c.py:1')]}, True),
    ({'a': [('a', 'a.py:1')]}, True),
    ({'a': [('b', 'a.py:1'), ('c', 'a.py:2')], 'b': [('c', 'b.py:1')], 'c': []}, False),
    ({'a': [('b', 'a.py:1')], 'b': [('c', 'b.py:1')], 'c': [('b', 'c.py:1')]}, True),
])
def test_find_cycle(graph, has_cycle):
    cycle = find_cycle(graph)
    assert (cycle is not None) == has_cycle
    if cycle:  # consecutive edges: each node imports the next, the last the first
        nodes = [node for node, _ in cycle]
        for node, successor in zip(nodes, nodes[1:] + nodes[:1]):
            assert successor in [s for s, _ in graph[node]]
