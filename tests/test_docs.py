"""The docs point at things that exist: every relative link of README.md and
docs/*.md resolves, and every code name they cite exists. The README stays
short (at most :data:`README_LINES` lines) and points at docs/README.md,
whose numbered reading order lists every other page of docs/ once; the
backbone's docstring names every option of the default method's config;
benchmarks/ holds results, not code.

The rules, read from the markdown text (nothing is imported):

* a link ``[text](target)`` or ``![alt](target)`` whose target is not a
  URL (``scheme://``, ``mailto:``) nor only an anchor (``#...``) must
  name an existing file or folder, relative to the document (its
  ``#anchor`` left out);
* inline code (single backticks) is a citation when it is

  - a dotted name starting with ``mmseg_pm.``: its longest prefix that is
    a module of the repository must exist, and at most two further names
    must be defined in it (a top-level function, class, assignment or
    import; the second one inside that class), with an optional ``()``;
  - a path of the repository: starting with one of its top-level folders
    (``mmseg_pm/``, ``tools/``, ``configs/``, ``tests/``, ``docs/``,
    ``benchmarks/``) with no placeholder in it (``*``, ``<``, ``{``,
    ``...``, upper-case ``NAME``-like parts, spaces): the file or folder
    must exist (a ``:line`` or ``::test`` tail is left out);
  - a bare call ``name()`` (no dots): ``name`` must be a function or class
    defined somewhere in ``mmseg_pm/`` or ``tools/``, unless it is one of
    the outside names in :data:`OUTSIDE` (mmseg's, mmengine's, torch's,
    Python's);

  anything else in backticks (commands, values, config keys, names of
  other libraries with dots) is not checked. Fenced code blocks are left
  out.
"""
import ast
import re
from functools import lru_cache
from pathlib import Path

import pytest

from tests.helpers import module_path

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / 'README.md'] + sorted((ROOT / 'docs').glob('*.md'))
TOP = ('mmseg_pm/', 'tools/', 'configs/', 'tests/', 'docs/', 'benchmarks/')
# functions of other libraries the docs call by their bare name
OUTSIDE = {'inference_model', 'init_model', 'print', 'len', 'range',
           'open', 'isinstance', 'super', 'dict', 'list', 'state_dict'}

LINK = re.compile(r'!?\[[^\]]*\]\(([^)\s]+)(?:\s+"[^"]*")?\)')
CODE = re.compile(r'(?<!`)`([^`\n]+)`(?!`)')


def prose(path: Path) -> str:
    """The document without its fenced code blocks."""
    out, fenced = [], False
    for line in path.read_text().splitlines():
        if line.lstrip().startswith('```'):
            fenced = not fenced
            continue
        out.append('' if fenced else line)
    return '\n'.join(out)


def links(path: Path):
    for target in LINK.findall(prose(path)):
        if re.match(r'^[a-z][a-z0-9+.-]*:', target) or target.startswith('#'):
            continue
        yield target


@pytest.mark.parametrize('doc', DOCS, ids=lambda p: p.name)
def test_every_relative_link_resolves(doc):
    broken = [t for t in links(doc)
              if not (doc.parent / t.split('#')[0]).exists()]
    assert not broken, f'{doc.relative_to(ROOT)}: {broken}'


# ------------------------------------------------------------- code names


@lru_cache(maxsize=None)
def defined(path: Path) -> dict:
    """Top-level name -> names defined in its body (classes) or ()."""
    names = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names[node.name] = ()
        elif isinstance(node, ast.ClassDef):
            inner = set()
            for item in node.body:
                if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef,
                                     ast.ClassDef)):
                    inner.add(item.name)
                elif isinstance(item, (ast.Assign, ast.AnnAssign)):
                    targets = item.targets if isinstance(item, ast.Assign) \
                        else [item.target]
                    inner.update(t.id for t in targets
                                 if isinstance(t, ast.Name))
            names[node.name] = tuple(inner)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) \
                else [node.target]
            for t in targets:
                for n in ast.walk(t):
                    if isinstance(n, ast.Name):
                        names[n.id] = ()
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                names[(alias.asname or alias.name).split('.')[0]] = ()
    return names


def dotted_exists(name: str) -> bool:
    parts = name.removesuffix('()').split('.')
    for cut in range(len(parts), 0, -1):
        path = module_path('.'.join(parts[:cut]))
        if path is None:
            continue
        rest = parts[cut:]
        if not rest:
            return True
        if len(rest) > 2 or rest[0] not in defined(path):
            return module_path('.'.join(parts[:cut + 1])) is not None
        return len(rest) == 1 or rest[1] in defined(path)[rest[0]]
    return False


@lru_cache(maxsize=None)
def project_functions() -> frozenset:
    names = set()
    for root in ('mmseg_pm', 'tools'):
        for path in (ROOT / root).rglob('*.py'):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef,
                                     ast.ClassDef)):
                    names.add(node.name)
    return frozenset(names)


def is_repo_path(text: str) -> bool:
    if not text.startswith(TOP):
        return False
    if re.search(r'[*<>{}\s]|\.\.\.|\b[A-Z][A-Z_]{2,}\b', text):
        return False
    return True


def missing_names(doc: Path) -> list:
    missing = []
    for code in CODE.findall(prose(doc)):
        code = code.strip()
        if re.fullmatch(r'mmseg_pm(\.\w+)+(\(\))?', code):
            if not dotted_exists(code):
                missing.append(code)
        elif is_repo_path(code):
            path = re.split(r'::|:(?=\d)', code)[0].rstrip('/')
            if not (ROOT / path).exists():
                missing.append(code)
        elif re.fullmatch(r'[A-Za-z_]\w*\(\)', code):
            name = code[:-2]
            if name not in project_functions() and name not in OUTSIDE:
                missing.append(code)
    return missing


@pytest.mark.parametrize('doc', DOCS, ids=lambda p: p.name)
def test_every_cited_code_name_exists(doc):
    missing = missing_names(doc)
    assert not missing, f'{doc.relative_to(ROOT)}: {missing}'


# --------------------------------------------------------- docs as a whole
README_LINES = 180
READING_ORDER = re.compile(r'^\d+\. \[`?([\w.]+\.md)`?\]\(\1\)', re.M)


def test_the_readme_is_short_and_points_at_the_reading_order():
    readme = (ROOT / 'README.md').read_text()
    assert len(readme.splitlines()) <= README_LINES
    assert 'docs/README.md' in links(ROOT / 'README.md')


def test_the_reading_order_lists_every_docs_page_once():
    listed = READING_ORDER.findall((ROOT / 'docs' / 'README.md').read_text())
    pages = sorted(p.name for p in (ROOT / 'docs').glob('*.md')
                   if p.name != 'README.md')
    assert len(listed) == len(set(listed)), listed
    assert sorted(listed) == pages


def test_the_backbone_docstring_names_every_option_of_the_default_method():
    """PMVisionTransformer's ``compression`` argument: every field of the
    default method's config class (``units`` is written ``layers`` or
    ``spans``)."""
    import dataclasses

    from mmseg_pm.compression import PMConfig
    from mmseg_pm.models import PMVisionTransformer

    doc = PMVisionTransformer.__doc__
    options = [f.name for f in dataclasses.fields(PMConfig)
               if f.name != 'units'] + ['layers', 'spans']
    assert [o for o in options if f'{o}=' not in doc
            and f'``{o}``' not in doc] == []


def test_benchmarks_hold_results_not_code():
    """Results are data: a script that made some belongs to a tool (or to
    git history), not next to them."""
    assert sorted(p.relative_to(ROOT).as_posix()
                  for p in (ROOT / 'benchmarks').rglob('*.py')) == []
