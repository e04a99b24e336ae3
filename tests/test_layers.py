"""Imports point down: no module of mmseg_pm imports one of a higher floor.

Read from the source with :mod:`ast` (nothing is imported), every import
counted, also those inside functions (a lazy import is still a
dependency). The floors are those of docs/architecture.md ("The floors"):
a module may import anything of its own package and of the floors below.
"""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / 'mmseg_pm'

# the first name under mmseg_pm -> its floor (docs/architecture.md)
FLOORS = {
    '': 0, 'utils': 0, 'config_scope': 0,
    'compression': 1,
    'engine': 2,
    'models': 3,
    'datasets': 4, 'converters': 4, 'export': 4,
    'apis': 5,
    'visualization': 6, 'benchmark': 6, 'study': 6,
    'demo': 7,
    'cli': 8,
}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix('').parts)
    if parts[-1] == '__init__':
        parts.pop()
    return '.'.join(parts)


def is_module(dotted: str) -> bool:
    path = PACKAGE.parent.joinpath(*dotted.split('.'))
    return path.with_suffix('.py').is_file() or \
        (path / '__init__.py').is_file()


def imports_in(source: str, name: str, is_package: bool):
    """Dotted names of the modules that the module ``name`` (its source
    given) imports, anywhere in it, relative imports resolved."""
    package = name if is_package else name.rpartition('.')[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level:
                anchor = package.split('.')
                anchor = anchor[:len(anchor) - node.level + 1]
                base = '.'.join(anchor + ([base] if base else []))
            for alias in node.names:  # ``from a import b``: b may be a module
                full = f'{base}.{alias.name}'
                yield full if is_module(full) else base


def project_imports():
    """(importer, imported) for every import of an mmseg_pm module."""
    for path in sorted(PACKAGE.rglob('*.py')):
        name = module_name(path)
        for imported in imports_in(path.read_text(), name,
                                   path.name == '__init__.py'):
            if imported.split('.')[0] == 'mmseg_pm':
                yield name, imported


def top(dotted: str) -> str:
    parts = dotted.split('.')
    return parts[1] if len(parts) > 1 else ''


def upward_imports():
    return {(a, b) for a, b in project_imports()
            if FLOORS[top(b)] > FLOORS[top(a)]}


def package_circles():
    """Pairs of packages of the same floor that import each other."""
    edges = {(top(a), top(b)) for a, b in project_imports()
             if top(a) != top(b)}
    return {tuple(sorted(e)) for e in edges if e[::-1] in edges}


def test_every_package_has_a_floor():
    tops = {p.stem for p in PACKAGE.iterdir()
            if (p.is_dir() and (p / '__init__.py').is_file())
            or (p.suffix == '.py' and p.stem != '__init__')}
    assert tops <= set(FLOORS), \
        f'give {sorted(tops - set(FLOORS))} a floor here and in ' \
        'docs/architecture.md'


def test_no_import_points_up():
    upward = sorted(upward_imports())
    assert not upward, 'imports of a higher floor:\n' + '\n'.join(
        f'  {a} imports {b}' for a, b in upward)


def test_no_packages_import_each_other():
    circles = sorted(package_circles())
    assert not circles, f'packages that import each other: {circles}'


def test_the_reader_sees_lazy_and_relative_imports():
    """An oracle for the reader itself: imports inside a function, relative
    ones and ``from package import module`` are all found."""
    source = ('import torch\n'
              'def f():\n'
              '    from ..apis import inference, init_segmentor\n'
              '    import mmseg_pm.cli.prune\n'
              '    from .backbones.pm_vit import token_grid\n')
    found = list(imports_in(source, 'mmseg_pm.models.checkpoint', False))
    assert found == ['torch', 'mmseg_pm.apis.inference', 'mmseg_pm.apis',
                     'mmseg_pm.cli.prune',
                     'mmseg_pm.models.backbones.pm_vit']
    assert {top(m) for m in found[1:]} == {'apis', 'cli', 'models'}


def import_graph() -> dict:
    """Module -> the mmseg_pm modules it imports (itself left out)."""
    graph = {}
    for a, b in project_imports():
        if a != b:
            graph.setdefault(a, set()).add(b)
    return graph


def circles(graph: dict) -> list:
    """The import circles of ``graph``: every strongly connected set of
    more than one module (Tarjan's algorithm, iterative), sorted."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                members = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    members.append(member)
                    if member == node:
                        break
                if len(members) > 1:
                    found.append(sorted(members))
    return sorted(found)


def test_no_import_circle_between_modules():
    """Module by module (lazy imports counted): a module never needs,
    through any chain, a module that needs it."""
    found = circles(import_graph())
    assert not found, 'modules that import each other:\n' + '\n'.join(
        '  ' + ', '.join(c) for c in found)


def test_the_circle_finder_finds_circles():
    """An oracle for :func:`circles`: a three-module circle reached from
    outside, a two-module one, and a chain that is none."""
    graph = {'a': {'b'}, 'b': {'c'}, 'c': {'a', 'd'}, 'd': set(),
             'e': {'f'}, 'f': {'e'}, 'g': {'a'}}
    assert circles(graph) == [['a', 'b', 'c'], ['e', 'f']]
    assert circles({'a': {'b'}, 'b': {'c'}}) == []


def method_modules() -> set:
    from mmseg_pm.compression.registry import method_specs
    return {spec.config.__module__ for spec in method_specs()}


def test_shared_compression_modules_import_no_method():
    """Inside compression/, the shared pieces (registry, config checks,
    ops, unit, search, ...) are a floor below the methods: only the
    package's ``__init__`` (which registers them) and the methods
    themselves import a method module."""
    methods = method_modules()
    assert 'mmseg_pm.compression.merge' in methods
    upward = sorted(
        (a, b) for a, b in project_imports()
        if b in methods and a.startswith('mmseg_pm.compression.')
        and a not in methods)
    assert not upward, 'shared modules that import a method:\n' + '\n'.join(
        f'  {a} imports {b}' for a, b in upward)
