"""The public surface: ``mmseg_pm.apis`` exports what a user calls, at most
:data:`MAX_PUBLIC` names, and every name of ``mmseg_pm.apis`` and of
``mmseg_pm.utils`` (the shared pieces under every floor) has one import
path.

One path means: a function, class or constant defined in a module under
``mmseg_pm.apis`` or ``mmseg_pm.utils`` is imported from the module that
defines it, except the names of ``mmseg_pm.apis.__all__``, which are
imported from ``mmseg_pm.apis`` (their defining modules import them from
each other inside the package). No other module re-exports such a name:
no import of it through a third module, no third module listing it in its
``__all__``. Read from the source with :mod:`ast`: the package, tools/,
tests/ and the Python blocks of README.md and docs/*.md.
"""
import ast
import inspect
import re
from functools import lru_cache
from pathlib import Path

import mmseg_pm.apis as apis
from mmseg_pm.utils.errors import UsageError
from tests.helpers import ROOT, module_path

MAX_PUBLIC = 20
# the floors whose names get one path each
SHARED = ('mmseg_pm.apis', 'mmseg_pm.utils')
PYTHON_BLOCK = re.compile(r'^```python\n(.*?)^```', re.M | re.S)


def package_of(name: str, is_package: bool) -> str:
    return name if is_package else name.rpartition('.')[0]


def imports_from(source: str, importer: str, is_package: bool,
                 top_level: bool = False):
    """(module, name, asname) of every ``from module import name`` of
    mmseg_pm in ``source`` (relative imports resolved against the module
    ``importer``); imported submodules are left out."""
    tree = ast.parse(source)
    nodes = tree.body if top_level else ast.walk(tree)
    for node in nodes:
        if not isinstance(node, ast.ImportFrom):
            continue
        module = node.module or ''
        if node.level:
            anchor = package_of(importer, is_package).split('.')
            anchor = anchor[:len(anchor) - node.level + 1]
            module = '.'.join(anchor + ([module] if module else []))
        if module.split('.')[0] != 'mmseg_pm':
            continue
        for alias in node.names:
            if module_path(f'{module}.{alias.name}') is None:
                yield module, alias.name, alias.asname or alias.name


@lru_cache(maxsize=None)
def origin(module: str, name: str) -> str:
    """The module that defines ``name`` as ``module`` sees it: ``module``
    itself unless a top-level import of ``module`` binds it."""
    path = module_path(module)
    if path is None:
        return module
    for source_module, imported, bound in imports_from(
            path.read_text(), module, path.name == '__init__.py',
            top_level=True):
        if bound == name:
            return origin(source_module, imported)
    return module


def is_shared(module: str) -> bool:
    return any(module == s or module.startswith(s + '.') for s in SHARED)


def second_paths(source: str, importer: str, is_package: bool = False,
                 origin=origin):
    """The imports of ``source`` that take a name of the shared floors by
    another path than its one path (``origin(module, name)``: the module
    that defines what ``module`` binds to ``name``)."""
    inside_apis = importer == 'mmseg_pm.apis' or \
        importer.startswith('mmseg_pm.apis.')
    for module, name, _ in imports_from(source, importer, is_package):
        defined_in = origin(module, name)
        if name in apis.__all__ and defined_in.startswith('mmseg_pm.apis.'):
            # outside the package its one path; inside, its definition
            one_path = defined_in if inside_apis else 'mmseg_pm.apis'
        elif is_shared(defined_in):
            one_path = defined_in
        else:
            continue
        if module != one_path:
            yield f'{name} from {module} (its one path: {one_path})'


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix('').parts)
    if parts[-1] == '__init__':
        parts.pop()
    return '.'.join(parts)


def import_statements(block: str) -> str:
    """A docs block as Python: the block, or where it is a fragment (a
    config with ``...``) its import statements alone."""
    try:
        ast.parse(block)
        return block
    except SyntaxError:
        pass
    kept, depth = [], 0
    for line in block.splitlines():
        if depth or line.lstrip().startswith(('from ', 'import ')):
            kept.append(line.strip() if not depth else line)
            depth += line.count('(') - line.count(')')
    return '\n'.join(kept) + '\n'


def python_sources():
    """(label, source, importer, is_package) of every place code is
    written: the package, tools/, tests/, README.md's and docs' blocks."""
    for folder in ('mmseg_pm', 'tools', 'tests'):
        for path in sorted((ROOT / folder).rglob('*.py')):
            yield (str(path.relative_to(ROOT)), path.read_text(),
                   module_name(path), path.name == '__init__.py')
    for doc in [ROOT / 'README.md'] + sorted((ROOT / 'docs').glob('*.md')):
        for i, block in enumerate(PYTHON_BLOCK.findall(doc.read_text())):
            yield (f'{doc.relative_to(ROOT)} block {i + 1}',
                   import_statements(block), '', False)


def test_apis_exports_at_most_20_names_of_its_own_floor():
    names = apis.__all__
    assert len(names) <= MAX_PUBLIC, f'{len(names)} names: {names}'
    assert len(set(names)) == len(names), 'a name listed twice'
    for name in names:
        obj = getattr(apis, name)  # each resolves
        assert inspect.isfunction(obj) or inspect.isclass(obj), name
        # defined on this floor: apis exports no name of a lower one
        assert obj.__module__.startswith('mmseg_pm.apis.'), \
            f'{name} is defined in {obj.__module__}'


def test_apis_holds_its_exports_and_its_modules_only():
    """Nothing else is importable from ``mmseg_pm.apis`` itself (a stray
    re-export such as ``UsageError`` or ``write_atomic`` would be)."""
    extra = sorted(name for name, value in vars(apis).items()
                   if not name.startswith('_')
                   and not inspect.ismodule(value)
                   and name not in apis.__all__)
    assert not extra, f'mmseg_pm.apis binds {extra} outside __all__'


def test_usage_error_has_one_import_path():
    assert UsageError.__module__ == 'mmseg_pm.utils.errors'
    assert not hasattr(apis, 'UsageError')
    assert module_path('mmseg_pm.apis.errors') is None


def test_every_shared_name_is_imported_by_its_one_path():
    found = []
    for label, source, importer, is_package in python_sources():
        found += [f'{label}: {line}' for line in
                  second_paths(source, importer, is_package)]
    assert not found, 'names imported by a second path:\n' + '\n'.join(
        f'  {line}' for line in found)


def listed_exports(source: str):
    """The names of a module's top-level ``__all__``."""
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == '__all__'
                for t in node.targets):
            return [item.value for item in node.value.elts]
    return []


def test_no_module_lists_a_shared_name_it_does_not_define():
    """``__all__`` of a module declares its exports: one listing a name of
    the shared floors that it only imports would be a second path."""
    found = []
    for path in sorted((ROOT / 'mmseg_pm').rglob('*.py')):
        name = module_name(path)
        for exported in listed_exports(path.read_text()):
            defined_in = origin(name, exported)
            if defined_in != name and is_shared(defined_in) and \
                    name != 'mmseg_pm.apis':
                found.append(f'{name} lists {exported} of {defined_in}')
    assert not found, '\n'.join(found)


def test_origin_follows_imports_to_the_definition():
    assert origin('mmseg_pm.apis', 'init_segmentor') == \
        'mmseg_pm.apis.inference'
    assert origin('mmseg_pm.apis.inference', 'init_segmentor') == \
        'mmseg_pm.apis.inference'
    assert origin('mmseg_pm.apis.inference', 'UsageError') == \
        'mmseg_pm.utils.errors'
    assert listed_exports('x = 1\n__all__ = ["a", "b"]\n') == ['a', 'b']
    fragment = ('backbone=dict(type=1, ..., x=dict(a=1))\n'
                '    from mmseg_pm.apis import (crop_flops,\n'
                '                               train)\n')
    assert import_statements(fragment) == (
        'from mmseg_pm.apis import (crop_flops,\n'
        '                               train)\n')


def test_the_path_check_sees_second_paths():
    """An oracle for the checker itself: a re-exported name, an apis name
    taken from its defining module, a relative import and an import inside
    a function are found; the one paths and other floors' names are not."""
    defined = {('mmseg_pm.study', 'compression_for'): 'mmseg_pm.apis.knobs',
               ('mmseg_pm.utils', 'count_flops'): 'mmseg_pm.utils.flops',
               ('mmseg_pm.compression', 'PMConfig'):
               'mmseg_pm.compression.config'}

    def fake_origin(module, name):
        return defined.get((module, name), origin(module, name))

    source = ('from mmseg_pm.apis import init_segmentor, inference\n'
              'from mmseg_pm.apis.inference import crop_flops, crop_size\n'
              'from mmseg_pm.utils.errors import UsageError\n'
              'from mmseg_pm.study import compression_for\n'
              'from mmseg_pm.compression import PMConfig\n'
              'def f():\n'
              '    from ..utils import count_flops\n')
    assert sorted(second_paths(source, 'mmseg_pm.demo.example',
                               origin=fake_origin)) == [
        'compression_for from mmseg_pm.study '
        '(its one path: mmseg_pm.apis.knobs)',
        'count_flops from mmseg_pm.utils '
        '(its one path: mmseg_pm.utils.flops)',
        'crop_flops from mmseg_pm.apis.inference '
        '(its one path: mmseg_pm.apis)',
    ]
    # inside apis a public name comes from the module that defines it
    assert list(second_paths('from .inference import crop_flops\n',
                             'mmseg_pm.apis.prune')) == []
    assert list(second_paths('from . import crop_flops\n',
                             'mmseg_pm.apis.prune')) == [
        'crop_flops from mmseg_pm.apis '
        '(its one path: mmseg_pm.apis.inference)']
