"""The fingerprint of the code that determines a result: one key part for every cache of computed results.

A cached result (an activation store, a per-call activation cache, a trained SAE, a grid row) may be reused only
while the code that computed it is unchanged. :func:`code_fingerprint` finds that code from the entry points a
cache names (functions or modules): their modules and, transitively, every module of this package they import
(found with :mod:`ast` in the source files: header imports, imports inside function bodies, relative and absolute,
in subpackages too; ``if TYPE_CHECKING:`` blocks excluded since they never run). It hashes the module names and the
code of those files (their syntax trees without docstrings and comments: editing documentation or layout makes no
cache stale, editing a statement does), plus the versions of ``torch``, ``transformers`` and ``safetensors``. Modules are
located through the package's ``__path__`` by :mod:`importlib`'s own file finder, never by file name, so a module
moved into a subpackage stays covered and a function moved to another module is followed by its ``__module__``.

The granularity is the module: an import anywhere in a module (even in a function the result never calls) puts
the imported module into the closure. An entry point whose results must outlive unrelated edits (the scaling
ledger's :func:`atomsnb.scaling_train.train_point`) lives in a module that imports only what it runs. The digest holds no path, so two checkouts of the same code agree.

Computing it costs one ``stat`` per file after the first call in a process: the result is remembered per entry set
and reused while every file and package directory has the same size, ``mtime_ns``, ``ctime_ns`` and inode (a file
modified or renamed less than :data:`RACY_SECONDS` ago is not remembered, since a same-size edit within the file system's
timestamp granularity would keep its stat).

This module imports nothing but the standard library: every other module may import it.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.machinery
import importlib.metadata
import json
import os
import sys
import threading
import time
import types
from pathlib import Path
from typing import NamedTuple

__all__ = ["CodeFingerprint", "code_fingerprint", "library_versions", "LIBRARIES"]

#: Distributions whose versions enter every code fingerprint (they compute the numbers, and their defaults change).
LIBRARIES = ("torch", "transformers", "safetensors")
#: Files modified this recently are hashed on every call instead of remembered (see the module docstring).
RACY_SECONDS = 2.0

_PACKAGE = __name__.rpartition(".")[0]  # "atomsnb"
_LOCK = threading.Lock()
_CACHE: dict[tuple, tuple[dict, dict[str, str]]] = {}  # (root, entry modules) -> (stats, {module: sha256})
_FILES: dict[tuple[str, str], tuple] = {}  # (path, module) -> (stat, sha256, import statements)


class CodeFingerprint(NamedTuple):
    """The result of :func:`code_fingerprint`."""

    digest: str
    """SHA-256 (64 hex digits) over ``modules`` and ``libraries``."""
    modules: dict[str, str]
    """The inputs: every module of the closure (dotted name) -> SHA-256 of its code (:func:`_code_digest`: the syntax
    tree without docstrings and comments), sorted by name."""
    libraries: dict[str, str]
    """``{distribution: version}`` for :data:`LIBRARIES` (``"not installed"`` when absent)."""


def library_versions() -> dict[str, str]:
    """``{name: version}`` of the installed :data:`LIBRARIES`, read from the distributions' metadata (no import).

    Looked up once per process (the libraries cannot change under a running interpreter that imported them).
    """
    global _VERSIONS
    if _VERSIONS is None:
        out = {}
        for name in LIBRARIES:
            try:
                out[name] = importlib.metadata.version(name)
            except importlib.metadata.PackageNotFoundError:
                out[name] = "not installed"
        _VERSIONS = out
    return dict(_VERSIONS)


_VERSIONS: dict[str, str] | None = None


def _entry_module(entry) -> str:
    if isinstance(entry, types.ModuleType):
        name = entry.__name__
    elif isinstance(entry, str):
        name = entry
    elif callable(entry) and isinstance(getattr(entry, "__module__", None), str):
        name = entry.__module__
    else:
        raise TypeError(f"code_fingerprint entries are modules, functions, classes or dotted module names; got "
                        f"{entry!r} of type {type(entry).__name__}")
    if name != _PACKAGE and not name.startswith(_PACKAGE + "."):
        raise ValueError(f"code_fingerprint entry {entry!r} is in module {name!r}, outside package {_PACKAGE!r}: "
                         f"only {_PACKAGE}'s own modules can be followed")
    return name


def _stat(path: str) -> tuple[int, int, int, int]:
    st = os.stat(path)
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


class _Finder:
    """Locates modules of the package under ``root`` with importlib's file finder (source files only); fresh per
    computation, so it never answers from a directory listing cached before a file moved."""

    def __init__(self, root: tuple[str, ...]):
        self.root = root
        self.dirs: set[str] = set(root)
        self._finders: dict[str, importlib.machinery.FileFinder] = {}
        self._specs: dict[str, importlib.machinery.ModuleSpec | None] = {}

    def spec(self, name: str):
        """The spec of module ``name`` (a dotted name in the package), or None when there is no such module."""
        if name in self._specs:
            return self._specs[name]
        if name == _PACKAGE:
            spec = None
            for d in self.root:
                init = os.path.join(d, "__init__.py")
                if os.path.isfile(init):
                    spec = importlib.machinery.ModuleSpec(name, None, origin=init, is_package=True)
                    spec.submodule_search_locations = list(self.root)
                    break
        else:
            parent = self.spec(name.rpartition(".")[0])
            spec = None
            if parent is not None and parent.submodule_search_locations is not None:
                for d in parent.submodule_search_locations:
                    self.dirs.add(d)
                    finder = self._finders.get(d)
                    if finder is None:
                        finder = self._finders[d] = importlib.machinery.FileFinder(
                            d, (importlib.machinery.SourceFileLoader, importlib.machinery.SOURCE_SUFFIXES))
                    spec = finder.find_spec(name)
                    if spec is not None:
                        break
        self._specs[name] = spec
        return spec


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_statements(tree: ast.AST, module: str, is_package: bool, origin: str) -> list[tuple[str, tuple[str, ...]]]:
    """The package's imports in a module's source (anywhere but under ``if TYPE_CHECKING:``), as absolute
    ``(module, names)``: ``names`` are those of ``from module import names``, which may be submodules."""
    here = module if is_package else module.rpartition(".")[0]
    found: list[tuple[str, tuple[str, ...]]] = []

    def inside(name: str) -> bool:
        return name == _PACKAGE or name.startswith(_PACKAGE + ".")

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend((a.name, ()) for a in node.names if inside(a.name))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = here.split(".")
                if node.level - 1 >= len(parts):
                    raise ImportError(f"{origin}, line {node.lineno}: relative import beyond package {_PACKAGE!r}")
                base = ".".join(parts[:len(parts) - (node.level - 1)])
                base = f"{base}.{node.module}" if node.module else base
            else:
                base = node.module or ""
            if inside(base):
                found.append((base, tuple(a.name for a in node.names if a.name != "*")))
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str) and inside(node.args[0].value)
              and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"):
            found.append((node.args[0].value, ()))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def _code_digest(tree: ast.Module) -> str:
    """SHA-256 of a module's code: its syntax tree without docstrings and comments (``ast.dump``, which holds no line
    numbers), so that documentation, comments and layout change no fingerprint and every statement does. A string
    expression standing alone as a statement (a docstring, an attribute's docstring) only sets ``__doc__`` or
    nothing; it is removed. ``tree`` is modified."""
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list):
            kept = [b for b in body if not (isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant)
                                            and isinstance(b.value.value, str))]
            if len(kept) != len(body):
                node.body = kept or [ast.Pass()]
    return hashlib.sha256(ast.dump(tree).encode()).hexdigest()


def _read(path: str, module: str, is_package: bool) -> tuple[tuple, str, list]:
    """``(stat, sha256, import statements)`` of a module's file, remembered while its stat holds (and it is not
    racy: see the module docstring)."""
    before = _stat(path)
    hit = _FILES.get((path, module))
    if hit is not None and hit[0] == before:
        return hit
    source = Path(path).read_bytes()
    if _stat(path) != before:
        raise RuntimeError(f"code_fingerprint: {path} changed while it was read; call again")
    tree = ast.parse(source, filename=path)
    statements = _import_statements(tree, module, is_package, path)
    out = (before, _code_digest(tree), statements)
    if time.time_ns() - max(before[1], before[2]) >= RACY_SECONDS * 1e9:
        _FILES[(path, module)] = out
    return out


def _compute(root: tuple[str, ...], entries: tuple[str, ...]) -> tuple[dict, dict[str, str], bool]:
    """Walk the import closure of ``entries``; returns (stats of files and dirs, {module: sha256}, rememberable)."""
    finder = _Finder(root)
    modules: dict[str, str] = {}
    stats: dict[str, tuple] = {}
    todo = [(name, "an entry") for name in entries]  # (module, who asked for it)
    seen: set[str] = set()
    while todo:
        name, by = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        if "." in name:  # importing a.b.c runs the packages a and a.b first
            todo.append((name.rpartition(".")[0], f"{name} (its package)"))
        spec = finder.spec(name)
        if spec is None:
            raise ModuleNotFoundError(f"code_fingerprint: module {name!r}, named by {by}, has no source file under "
                                      f"{list(root)}", name=name)
        if spec.origin is None or spec.origin == "namespace":  # a namespace package: no file of its own
            continue
        if not spec.origin.endswith(".py"):
            raise ValueError(f"code_fingerprint: module {name!r} comes from {spec.origin!r}, not a .py source file")
        stats[spec.origin], modules[name], statements = _read(spec.origin, name,
                                                              spec.submodule_search_locations is not None)
        by = f"an import in {spec.origin}"
        for base, names in statements:
            todo.append((base, by))
            # ``from . import activations`` imports a submodule; ``from .models import load_model`` an attribute
            todo.extend((f"{base}.{n}", by) for n in names if finder.spec(f"{base}.{n}") is not None)
    for d in finder.dirs:  # a file added to a package directory can shadow or add a module
        if os.path.isdir(d):
            stats[d] = _stat(d)
    newest = max(max(s[1], s[2]) for s in stats.values())  # modified or renamed
    fresh = time.time_ns() - newest < RACY_SECONDS * 1e9
    return stats, dict(sorted(modules.items())), not fresh


def _still_valid(stats: dict) -> bool:
    try:
        return all(_stat(p) == s for p, s in stats.items())
    except OSError:
        return False


def code_fingerprint(*entries, root: str | os.PathLike | None = None) -> CodeFingerprint:
    """Fingerprint the code that ``entries`` run: their modules' import closure within the package, and the library
    versions: the code part of a cache key, which must name everything that determines the cached bytes.

    Args:
        *entries: at least one module, function, class (its ``__module__`` is used) or dotted module name, all in
            this package.
        root: the package directory to read the modules from (default: the imported package's ``__path__``); a copy
            of the package (tests) is fingerprinted as the package it copies.

    Returns:
        A :class:`CodeFingerprint`: ``digest`` (64 hex digits), ``modules`` (the inputs, dotted name -> file SHA-256)
        and ``libraries``.

    Raises:
        ValueError: no entry; an entry outside the package; ``root`` is not a directory holding ``__init__.py``.
        TypeError: an entry that is none of the allowed kinds.
        ModuleNotFoundError: an entry or an import that has no source file under the root (names both).
        SyntaxError: a module of the closure does not parse.
    """
    if not entries:
        raise ValueError("code_fingerprint needs at least one entry (a module, function, class or module name)")
    names = tuple(sorted({_entry_module(e) for e in entries}))
    if root is None:
        roots = tuple(os.path.abspath(p) for p in sys.modules[_PACKAGE].__path__)
    else:
        r = Path(root).expanduser()
        if not (r / "__init__.py").is_file():
            raise ValueError(f"code_fingerprint root {str(r)!r} is not a package directory (no __init__.py there); "
                             f"give the directory of a copy of {_PACKAGE!r}")
        roots = (str(r.resolve()),)
    key = (roots, names)
    with _LOCK:
        hit = _CACHE.get(key)
    if hit is not None and _still_valid(hit[0]):
        modules = hit[1]
    else:
        stats, modules, rememberable = _compute(roots, names)
        with _LOCK:
            if rememberable:
                _CACHE[key] = (stats, modules)
            else:
                _CACHE.pop(key, None)
    libraries = library_versions()
    blob = json.dumps({"modules": modules, "libraries": libraries}, sort_keys=True)
    return CodeFingerprint(hashlib.sha256(blob.encode()).hexdigest(), dict(modules), libraries)
