"""The code a result's computation can reach, function by function: the results ledger's code fingerprint.

:func:`atomsnb.codeprint.code_fingerprint` keys the caches by whole modules: any statement edited anywhere in a
module of the import closure changes the key. That is right for a cache, which is recomputed in seconds, and too
coarse for a ledger row, which took an hour: a fix in a function the row never ran would make every row stale.
:func:`reach_fingerprint` hashes only what the entry functions can run (issue 15: "the code a row's computation
actually runs, not whole modules"), found statically with :mod:`ast`. Every rule errs towards including code:

- A module is **loaded** when an entry lives in it or included code imports it (a module-level import of a loaded
  module, an import inside a reached function, ``importlib.import_module`` with a constant name); loading ``a.b`` loads
  ``a``. What a loaded module runs when it is imported is always an input, and the names it uses are followed: its
  top-level statements other than ``def`` and ``class`` (constants, registries, imports), and the import-time parts
  of its definitions (decorators, default values, class bases and class-level statements; annotations too unless
  the module has ``from __future__ import annotations``).
- A top-level function or class of the package is **reached** when an entry names it, or included code uses its
  name: directly, through an import (also inside a function, also a re-export), through a module attribute
  (``activations.capture_residual_stream``), as a decorator, base class, default value or annotation. A class is
  included whole (its instances' methods are called by attribute, which static analysis cannot tie to a class).
- A function or class decorated by a package function is reached whenever its module is loaded (the decorator may
  register it where it is looked up by name).
- A module used as a value (``getattr(module, name)``, passed as an argument), a module imported by
  ``importlib.import_module`` or ``__import__`` with a constant name, and the module of reached code that calls
  ``globals()``, ``vars()``, ``eval``, ``exec`` or ``sys.modules`` have all their functions and classes reached. (A computed module
  name is not followed: the package imports its own modules with import statements, ``tests/test_structure.py``.)
- A module's header imports from the package count by what reached code uses: the names it looks up and what they
  are bound to (``"M imports"``), and the modules they load (each an input). Adding ``from .io import f`` for an
  unreached function stales nothing; rebinding a name reached code uses does. Other imports (the standard library,
  torch) stay among the module's statements.
- The statements that build ``__all__`` are left out of a module's statements (``__all__`` only names what
  ``import *`` takes, and the reach refuses ``import *`` of the package), unless reached code reads ``M.__all__`` or
  uses the module as a value.
- ``if TYPE_CHECKING:`` blocks, and a module's ``if __name__ == "__main__":`` block, are not followed (they never
  run when the module is imported); they are hashed with their module's statements.

What it cannot see: package code reached only through an object built outside the reached code (a caller's argument
whose class is neither named nor annotated in it). A ledger entry takes a plain grid point (annotated, so its class
is reached). Documentation, comments and layout change no input (docstrings are removed by the same code as in
:func:`atomsnb.codeprint.code_fingerprint`); the library versions (:data:`atomsnb.codeprint.LIBRARIES`) are inputs.

The result is remembered per entry set while every file read has the same stat (as in :mod:`atomsnb.codeprint`).
This module is imported by the ledger only, never by code a ledger entry runs, so changing it stales no row's
module-scope record (see :meth:`atomsnb.ledger.Ledger.narrow_code`).
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import sys
import threading
import time
import types
from pathlib import Path

from . import codeprint as _cp
from .codeprint import CodeFingerprint

__all__ = ["reach_fingerprint", "reach_reasons", "SCOPE"]

#: The name of this fingerprint's scheme, recorded beside a ledger row's ``code`` (``code_scope``).
SCOPE = "functions"

_PACKAGE = _cp.__name__.rpartition(".")[0]  # "atomsnb"
_DYNAMIC = frozenset({"globals", "vars", "eval", "exec"})
_LOCK = threading.Lock()
_CACHE: dict[tuple, tuple[dict, dict[str, str]]] = {}  # (roots, entries) -> (stats, inputs)
_INFOS: dict[tuple[str, str], tuple] = {}  # (path, module) -> (stat, _Info)


def _inside(name: str) -> bool:
    return name == _PACKAGE or name.startswith(_PACKAGE + ".")


class _Info:
    """One module's parsed source: its top-level functions and classes by name, its other top-level statements,
    the names its top-level imports bind, and the digests of both kinds of code."""

    def __init__(self, name: str, is_package: bool, tree: ast.Module, origin: str):
        self.name, self.is_package, self.origin = name, is_package, origin
        _cp._code_digest(tree)  # removes the docstrings in place, exactly as the module-scope fingerprint does
        self.defs: dict[str, list[ast.stmt]] = {}
        self.top: list[ast.stmt] = []
        self.exports: list[ast.stmt] = []  # the statements that build __all__
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                self.defs.setdefault(node.name, []).append(node)
            elif _builds_all(node):
                self.exports.append(node)
            elif not _imports_package_only(node):  # the package's imports count by the names reached code uses
                self.top.append(node)
        lazy = any(isinstance(n, ast.ImportFrom) and n.module == "__future__" and any(a.name == "annotations"
                                                                                      for a in n.names)
                   for n in tree.body)
        self.import_time = [part for nodes in self.defs.values() for n in nodes for part in _import_time(n, lazy)]
        self.top_digest = _digest([*self.top, *self.import_time])
        self.exports_digest = _digest(self.exports)
        self.def_digests = {n: _digest(nodes) for n, nodes in self.defs.items()}
        self.bindings = _bindings([n for n in tree.body if not isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                                          ast.ClassDef))], self)


def _import_time(node: ast.stmt, lazy_annotations: bool) -> list[ast.AST]:
    """The parts of a function or class definition that run when its module is imported, not when it is called:
    decorators, default values, annotations (unless ``from __future__ import annotations``), and a class's bases,
    keywords and body statements (its methods' import-time parts, not their bodies)."""
    out: list[ast.AST] = list(node.decorator_list)
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        a = node.args
        out += [d for d in [*a.defaults, *a.kw_defaults] if d is not None]
        if not lazy_annotations:
            out += [x.annotation for x in [*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg]
                    if x is not None and x.annotation is not None]
            out += [node.returns] if node.returns is not None else []
    elif isinstance(node, ast.ClassDef):
        out += [*node.bases, *(k.value for k in node.keywords)]
        for child in node.body:
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                out += _import_time(child, lazy_annotations)
            else:
                out.append(child)
    return out


def _imports_package_only(node: ast.stmt) -> bool:
    """An import statement that imports only from this package (``from .io import save_tensors``)."""
    if isinstance(node, ast.ImportFrom):
        return bool(node.level) or _inside(node.module or "")
    return isinstance(node, ast.Import) and all(_inside(a.name) for a in node.names)


def _builds_all(node: ast.stmt) -> bool:
    """``__all__ = [...]``, ``__all__ += [...]``, ``__all__.append(...)`` or ``__all__.extend(...)``."""
    if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        return all(isinstance(t, ast.Name) and t.id == "__all__" for t in targets)
    if isinstance(node, ast.Expr) and isinstance(node.value, ast.Call):
        f = node.value.func
        return (isinstance(f, ast.Attribute) and f.attr in ("append", "extend") and isinstance(f.value, ast.Name)
                and f.value.id == "__all__")
    return False


def _digest(nodes: list[ast.stmt]) -> str:
    return hashlib.sha256("\n".join(ast.dump(n) for n in nodes).encode()).hexdigest()


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and _cp._is_type_checking(node.test)


def _is_main_guard(node: ast.AST) -> bool:
    """``if __name__ == "__main__":`` (its body runs when the module is a script, never when it is imported)."""
    t = getattr(node, "test", None) if isinstance(node, ast.If) else None
    return (isinstance(t, ast.Compare) and isinstance(t.left, ast.Name) and t.left.id == "__name__"
            and len(t.ops) == 1 and isinstance(t.ops[0], ast.Eq) and isinstance(t.comparators[0], ast.Constant)
            and t.comparators[0].value == "__main__")


def _walk(nodes):
    """Every node under ``nodes``, without the bodies of ``if TYPE_CHECKING:`` (their ``else`` is kept)."""
    stack = list(reversed(list(nodes)))
    while stack:
        node = stack.pop()
        yield node
        if _is_type_checking(node):
            stack.extend(reversed(node.orelse))
            continue
        stack.extend(reversed(list(ast.iter_child_nodes(node))))


def _import_base(node: ast.ImportFrom, info: _Info) -> str:
    if not node.level:
        return node.module or ""
    here = info.name if info.is_package else info.name.rpartition(".")[0]
    parts = here.split(".")
    if node.level - 1 >= len(parts):
        raise ImportError(f"{info.origin}, line {node.lineno}: relative import beyond package {_PACKAGE!r}")
    base = ".".join(parts[:len(parts) - (node.level - 1)])
    return f"{base}.{node.module}" if node.module else base


def _bindings(nodes, info: _Info) -> dict[str, tuple]:
    """Names bound by the package's imports among ``nodes`` (any depth): ``("module", M)`` or ``("attr", M, a)``;
    ``("load", M)`` entries (key ``"\\0M"``) record every module such a statement loads."""
    out: dict[str, tuple] = {}
    for node in _walk(nodes):
        if isinstance(node, ast.Import):
            for a in node.names:
                if _inside(a.name):
                    out[f"\0{a.name}"] = ("load", a.name)
                    if a.asname:
                        out[a.asname] = ("module", a.name)
                    else:
                        out[a.name.partition(".")[0]] = ("module", a.name.partition(".")[0])
        elif isinstance(node, ast.ImportFrom):
            base = _import_base(node, info)
            if _inside(base):
                out[f"\0{base}"] = ("load", base)
                for a in node.names:
                    if a.name == "*":
                        raise ValueError(f"{info.origin}, line {node.lineno}: 'from {base} import *' cannot be "
                                         "followed name by name; import the names")
                    out[a.asname or a.name] = ("attr", base, a.name)
    return out


class _Reach:
    """One computation: the loaded modules, the reached definitions, the files read."""

    def __init__(self, roots: tuple[str, ...], pinned: frozenset[str] = frozenset()):
        self.pinned = pinned
        self.pinned_met: set[str] = set()
        self.finder = _cp._Finder(roots)
        self.roots = roots
        self.infos: dict[str, _Info] = {}
        self.stats: dict[str, tuple] = {}
        self.reached: set[tuple[str, str]] = set()
        self.whole: set[str] = set()
        self.todo: list[tuple] = []
        self.why: dict[tuple[str, str], str] = {}  # (module, name) -> the code that first used it
        self.all_read: set[str] = set()  # modules whose __all__ reached code reads
        self.used: dict[str, set[tuple]] = {}  # module -> (name, target) of its header imports that included code uses

    # ------------------------------------------------------------------------------------------------ modules
    def info(self, name: str, by: str) -> _Info:
        """Load module ``name`` (and its packages): its statements become inputs and are followed."""
        if name in self.infos:
            return self.infos[name]
        if "." in name:
            self.info(name.rpartition(".")[0], f"{name} (its package)")
        spec = self.finder.spec(name)
        if spec is None:
            raise ModuleNotFoundError(f"reach_fingerprint: module {name!r}, named by {by}, has no source file under "
                                      f"{list(self.roots)}", name=name)
        if spec.origin is None or spec.origin == "namespace":
            info = _Info(name, True, ast.Module(body=[], type_ignores=[]), "namespace")
        elif not spec.origin.endswith(".py"):
            raise ValueError(f"reach_fingerprint: module {name!r} comes from {spec.origin!r}, not a .py source file")
        else:
            info = self._parse(spec.origin, name, spec.submodule_search_locations is not None)
        self.infos[name] = info
        self.todo.append(("top", name))
        return info

    def _parse(self, path: str, name: str, is_package: bool) -> _Info:
        before = _cp._stat(path)
        hit = _INFOS.get((path, name))
        if hit is not None and hit[0] == before:
            self.stats[path] = before
            return hit[1]
        source = Path(path).read_bytes()
        if _cp._stat(path) != before:
            raise RuntimeError(f"reach_fingerprint: {path} changed while it was read; call again")
        info = _Info(name, is_package, ast.parse(source, filename=path), path)
        if time.time_ns() - max(before[1], before[2]) >= _cp.RACY_SECONDS * 1e9:
            _INFOS[(path, name)] = (before, info)
        self.stats[path] = before
        return info

    def is_module(self, name: str) -> bool:
        return _inside(name) and self.finder.spec(name) is not None

    # ------------------------------------------------------------------------------------------------ names
    def resolve(self, target: tuple, by: str, depth: int = 0) -> tuple:
        """A binding's target as ``("module", M)``, ``("def", M, name)`` or ``("value", M, name)`` (a module-level
        variable, or a name the module does not define: its statements are inputs either way)."""
        if target[0] == "module":
            self.info(target[1], by)
            return target
        _, mod, attr = target
        if self.is_module(f"{mod}.{attr}"):
            self.info(f"{mod}.{attr}", by)
            return ("module", f"{mod}.{attr}")
        info = self.info(mod, by)
        if attr == "__all__":
            self.all_read.add(mod)
        if attr in info.defs:
            return ("def", mod, attr)
        if attr in info.bindings and depth < 32:  # a re-export
            return self.resolve(info.bindings[attr], f"{mod} (re-exporting {attr})", depth + 1)
        return ("value", mod, attr)

    def use(self, target: tuple | None, by: str) -> None:
        if target is None:
            return
        if target[0] == "def":
            self.reach(target[1], target[2], by)
        elif target[0] == "module":
            self.reach_whole(target[1], f"{by} (the module as a value)")

    def reach(self, mod: str, name: str, by: str) -> None:
        if f"{mod}:{name}" in self.pinned:  # its product is pinned by another key: not followed
            self.pinned_met.add(f"{mod}:{name}")
            return
        if (mod, name) not in self.reached:
            self.reached.add((mod, name))
            self.why[(mod, name)] = by
            self.todo.append(("def", mod, name))

    def reach_whole(self, mod: str, by: str) -> None:
        if mod not in self.whole:
            self.whole.add(mod)
            info = self.info(mod, by)
            for name in info.defs:
                self.reach(mod, name, f"{by}: all of {mod}")

    # ------------------------------------------------------------------------------------------------ code
    def follow(self, info: _Info, nodes: list[ast.stmt], where: str, *, top: bool = False) -> None:
        """Follow every name ``nodes`` use (code of module ``info``; ``top``: its top-level statements), with the
        imports inside them bound and loaded."""
        own = info.bindings if top else _bindings(nodes, info)
        for k, t in own.items():
            if k.startswith("\0"):
                self.info(t[1], f"an import in {where}")
            elif t[0] == "attr" and self.is_module(f"{t[1]}.{t[2]}"):  # from . import store: a submodule
                self.info(f"{t[1]}.{t[2]}", f"an import in {where}")
        names = {k: v for k, v in {**info.bindings, **own}.items() if not k.startswith("\0")}

        def lookup(name: str) -> tuple | None:
            if name in names:
                if name not in own or top:
                    self.used.setdefault(info.name, set()).add((name, names[name]))
                return self.resolve(names[name], where)
            if name in info.defs:
                return ("def", info.name, name)
            return None

        stack = list(nodes)
        while stack:
            node = stack.pop()
            if _is_type_checking(node) or (top and _is_main_guard(node)):
                stack.extend(node.orelse)
                continue
            if (isinstance(node, ast.Attribute) and node.attr == "modules" and isinstance(node.value, ast.Name)
                    and node.value.id == "sys"):  # sys.modules[...]: any loaded module, this one included
                self.reach_whole(info.name, f"{where} (uses sys.modules)")
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
                chain, cur = [], node
                while isinstance(cur, ast.Attribute):
                    chain.append(cur.attr)
                    cur = cur.value
                t = lookup(cur.id) if isinstance(cur, ast.Name) else None
                if t is not None and t[0] == "module":  # module.attr...: the attribute, not the whole module
                    for attr in reversed(chain):
                        t = self.resolve(("attr", t[1], attr), where)
                        if t[0] != "module":
                            break
                    self.use(t, where)
                    continue
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
                self.use(lookup(node.id), where)
            elif isinstance(node, ast.Call):
                func = node.func
                fname = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
                if fname in _DYNAMIC and isinstance(func, ast.Name):  # the builtins, not model.eval()
                    self.reach_whole(info.name, f"{where} (calls {fname})")
                elif (fname in ("import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant)
                      and isinstance(node.args[0].value, str) and _inside(node.args[0].value)):
                    self.reach_whole(node.args[0].value, f"{where} ({fname})")
            stack.extend(ast.iter_child_nodes(node))

    def run(self) -> None:
        while self.todo:
            item = self.todo.pop()
            if item[0] == "top":
                info = self.infos[item[1]]
                self.follow(info, [*info.top, *info.import_time], f"module {item[1]}", top=True)
                for name, nodes in info.defs.items():  # registered by a package decorator: reachable by lookup
                    if any(self._package_decorator(info, d) for n in nodes for d in getattr(n, "decorator_list", [])):
                        self.reach(info.name, name, f"a package decorator in {info.name}")
            else:
                _, mod, name = item
                info = self.info(mod, f"the use of {mod}.{name}")
                self.follow(info, info.defs[name], f"{mod}.{name}")

    def _package_decorator(self, info: _Info, node: ast.expr) -> bool:
        while isinstance(node, ast.Call):
            node = node.func
        chain = []
        while isinstance(node, ast.Attribute):
            chain.append(node.attr)
            node = node.value
        if not isinstance(node, ast.Name):
            return False
        if node.id in info.defs:
            return True
        t = info.bindings.get(node.id)
        if t is None:
            return False
        t = self.resolve(t, f"a decorator in {info.name}")
        for attr in reversed(chain):
            if t[0] != "module":
                break
            t = self.resolve(("attr", t[1], attr), f"a decorator in {info.name}")
        return t[0] in ("def", "value")


def _entry(entry) -> tuple[str, str | None]:
    """``(module, top-level name or None for a whole module)`` of an entry."""
    if isinstance(entry, types.ModuleType):
        mod, name = entry.__name__, None
    elif isinstance(entry, str):
        mod, _, name = entry.partition(":")
        name = name.split(".")[0] or None
    elif callable(entry) and isinstance(getattr(entry, "__module__", None), str):
        qual = getattr(entry, "__qualname__", "")
        if not qual or "<" in qual:
            raise ValueError(f"reach_fingerprint entry {entry!r} is not a module-level function or class (qualified "
                             f"name {qual!r}); pass one, or its module")
        mod, name = entry.__module__, qual.split(".")[0]
    else:
        raise TypeError(f"reach_fingerprint entries are functions, classes, modules or 'module:name' strings; got "
                        f"{entry!r} of type {type(entry).__name__}")
    if not _inside(mod):
        raise ValueError(f"reach_fingerprint entry {entry!r} is in module {mod!r}, outside package {_PACKAGE!r}: only "
                         f"{_PACKAGE}'s own code can be followed")
    return mod, name


def _roots(root) -> tuple[str, ...]:
    if root is None:
        return tuple(os.path.abspath(p) for p in sys.modules[_PACKAGE].__path__)
    r = Path(root).expanduser()
    if not (r / "__init__.py").is_file():
        raise ValueError(f"reach_fingerprint root {str(r)!r} is not a package directory (no __init__.py there)")
    return (str(r.resolve()),)


def _compute(roots: tuple[str, ...], wanted: tuple[tuple[str, str | None], ...],
             pinned: frozenset[str] = frozenset()) -> _Reach:
    reach = _Reach(roots, pinned)
    for name in sorted(pinned):
        mod, _, top = name.partition(":")
        if not _inside(mod) or not top or "." in top:
            raise ValueError(f"reach_fingerprint pinned={name!r}: give 'module:name' of a top-level function or class "
                             f"of {_PACKAGE}")
        if top not in reach.info(mod, "pinned").defs:
            raise KeyError(f"reach_fingerprint pinned={name!r}: {mod} defines no top-level function or class {top!r}")
    for mod, name in wanted:
        info = reach.info(mod, "an entry")
        if name is None:
            reach.reach_whole(mod, "an entry")
        elif name not in info.defs:
            raise KeyError(f"reach_fingerprint entry {mod}:{name}: {mod} defines no top-level function or class "
                           f"{name!r}")
        else:
            reach.reach(mod, name, "an entry")
    reach.run()
    return reach


def _wanted(entries) -> tuple[tuple[str, str | None], ...]:
    if not entries:
        raise ValueError("reach_fingerprint needs at least one entry (a function, class, module or 'module:name')")
    return tuple(sorted({_entry(e) for e in entries}, key=lambda t: (t[0], t[1] or "")))


def _pinned(pinned) -> frozenset[str]:
    if isinstance(pinned, str) or not all(isinstance(p, str) for p in pinned):
        raise TypeError(f"pinned must be a collection of 'module:name' strings; got {pinned!r}")
    return frozenset(pinned)


def reach_fingerprint(*entries, root: str | os.PathLike | None = None, pinned=()) -> CodeFingerprint:
    """Fingerprint the code that ``entries`` can run, function by function (see the module docstring for the rules).

    Args:
        *entries: at least one module-level function or class, module, or ``"module:name"`` string, in this package
            (a module means all its functions and classes).
        root: the package directory to read the code from (default: the imported package's ``__path__``).
        pinned: ``"module:name"`` of functions whose product another key pins (the ledger's: the packaged model's
            conversion, :func:`atomsnb.packaged.ensure_packaged_model`, whose files the row's ``model_sha256``
            pins, each checked against its card when the function returns). They are not followed: each that is used
            is an input ``"pinned"``, so the boundary is part of the digest, and their code is not.

    Returns:
        A :class:`~atomsnb.codeprint.CodeFingerprint`: ``digest`` (64 hex digits, over the inputs, the library versions
        and :data:`SCOPE`, so it never equals a module-scope digest), ``modules`` (the inputs: ``"M"`` -> SHA-256 of
        loaded module M's top-level statements, ``"M:name"`` -> SHA-256 of a reached function or class, ``"M.__all__"``
        -> of the statements building ``__all__`` where they count, ``"M imports"`` -> of the header imports' names that
        code reached in M uses, with their targets; sorted) and
        ``libraries``.

    Raises:
        ValueError: no entry; an entry outside the package or not at module level; a pinned name that is not
            ``"module:name"`` of the package; ``root`` is not a package directory; a ``from ... import *`` of the
            package in the code followed.
        TypeError: an entry of another kind.
        ModuleNotFoundError: an entry or an import with no source file under the root.
        KeyError: an entry or a pinned name names a function or class its module does not define at top level.
        TypeError: ``pinned`` is not a collection of strings.
        SyntaxError: a module followed does not parse.
    """
    wanted, roots, pins = _wanted(entries), _roots(root), _pinned(pinned)
    key = (roots, wanted, pins)
    with _LOCK:
        hit = _CACHE.get(key)
    if hit is not None and _cp._still_valid(hit[0]):
        inputs = hit[1]
    else:
        reach = _compute(roots, wanted, pins)
        inputs = {m: i.top_digest for m, i in reach.infos.items()}
        inputs.update({name: "pinned" for name in reach.pinned_met})
        inputs.update({f"{m}:{n}": reach.infos[m].def_digests[n] for m, n in reach.reached})
        inputs.update({f"{m}.__all__": reach.infos[m].exports_digest for m in reach.all_read | reach.whole})
        inputs.update({f"{m} imports": hashlib.sha256(json.dumps(sorted(u)).encode()).hexdigest()
                       for m, u in reach.used.items()})
        inputs = dict(sorted(inputs.items()))
        stats = dict(reach.stats)
        for d in reach.finder.dirs:
            if os.path.isdir(d):
                stats[d] = _cp._stat(d)
        newest = max(max(s[1], s[2]) for s in stats.values())
        with _LOCK:
            if time.time_ns() - newest >= _cp.RACY_SECONDS * 1e9:
                _CACHE[key] = (stats, inputs)
            else:
                _CACHE.pop(key, None)
    libraries = _cp.library_versions()
    blob = json.dumps({"scope": SCOPE, "inputs": inputs, "libraries": libraries}, sort_keys=True)
    return CodeFingerprint(hashlib.sha256(blob.encode()).hexdigest(), dict(inputs), libraries)


def reach_reasons(*entries, root: str | os.PathLike | None = None, pinned=()) -> dict[str, str]:
    """Why each function and class of ``reach_fingerprint(*entries)`` is an input.

    Returns:
        ``{"module:name": the code that first used it}``, sorted: ``"an entry"``, ``"atomsnb.store.ActivationStore"``
        (a function or class), ``"module atomsnb.store"`` (a module's import-time code), or a reason ending in
        ``": all of M"`` (a module used as a value, a dynamic lookup). Not remembered.

    Same arguments and errors as :func:`reach_fingerprint`. To see why an edit made a ledger row stale, or why it
    did not.
    """
    reach = _compute(_roots(root), _wanted(entries), _pinned(pinned))
    return {f"{m}:{n}": reach.why[(m, n)] for m, n in sorted(reach.reached)}
