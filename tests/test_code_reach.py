"""The function-scope code fingerprint (atomsnb.codereach), the ledger's: what it follows, checked against what a real
point runs (a profiler's record of every call, the independent reference), and on a small package built for each
rule; edits of code a point never runs change nothing, edits of code it runs change the digest."""

from __future__ import annotations

import shutil
import sys
import textwrap
import threading
from pathlib import Path

import pytest

import atomsnb
import atomsnb.codeprint as cp
from atomsnb.codeprint import code_fingerprint
from atomsnb.codereach import reach_fingerprint, reach_reasons
from atomsnb.ledger import PINNED, row_code
from tiny_models import save_tiny

PKG = Path(atomsnb.__file__).resolve().parent


@pytest.fixture(autouse=True)
def settled(monkeypatch):
    """Files written by a test count as settled at once (every edit below changes a file's size)."""
    monkeypatch.setattr(cp, "RACY_SECONDS", 0.0)


def _module_of(filename: str) -> str | None:
    path = Path(filename).resolve()
    if not path.is_relative_to(PKG) or path.suffix != ".py":
        return None
    parts = path.relative_to(PKG).with_suffix("").parts
    return ".".join(("atomsnb", *parts[:-1], *([] if parts[-1] == "__init__" else [parts[-1]])))


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    save_tiny("llama", root / "tiny")
    return root


def test_every_function_a_real_point_runs_is_an_input(tiny_dir, monkeypatch, one_thread):
    """A profiler records every call of package code while a real scaling point collects its stores, trains and
    evaluates (tiny model): each function or class called is an input of the point's fingerprint."""
    import atomsnb.scaling_train as st
    from atomsnb.scaling import ScalingStudyConfig
    from atomsnb.scaling_train import train_point

    monkeypatch.chdir(tiny_dir)
    st._model.cache_clear()  # a model named "tiny" that another test module loaded from its own directory
    cfg = ScalingStudyConfig(models=("tiny",), layers=(1,), m_values=((640, 800),), d_multiples=(4,), seeds=(0,),
                             l0_sweep=(3e-3,), n_eval_tokens=400, n_train_eval=200, batch_size=128, max_steps=20,
                             eval_every=10, patience=2, warmup_steps=10, store_dtype="float32", n_splice_tokens=256)
    point = cfg.points()[0]
    called: set[tuple[str, str]] = set()

    def profile(frame, event, arg):
        if event == "call":
            mod = _module_of(frame.f_code.co_filename)
            if mod is not None:
                called.add((mod, frame.f_code.co_qualname.split(".")[0]))
        return profile

    threading.setprofile(profile)
    sys.setprofile(profile)
    try:
        row = train_point(point)
    finally:
        sys.setprofile(None)
        threading.setprofile(None)
        st._model.cache_clear()
    assert row["steps"] >= 10
    inputs = set(reach_fingerprint("atomsnb.scaling_train:train_point", pinned=PINNED).modules)  # the ledger's
    missing = sorted(f"{m}:{n}" for m, n in called if f"{m}:{n}" not in inputs and not n.startswith("<"))
    assert len(called) > 100 and not missing, missing
    # and it is narrower than the module scope: functions of loaded modules that the point never runs
    assert "atomsnb.activations:_save" not in inputs and ("atomsnb.activations", "_save") not in called


# --------------------------------------------------------------------------------- the rules, on a small package
FILES = {
    "__init__.py": "",
    "base.py": """
        CONST = 3
        REGISTRY = {}

        def register(f):
            REGISTRY[f.__name__] = f
            return f

        def helper():
            '''A docstring.'''
            return CONST

        def helper2():
            return 2

        def unused():
            return 1

        def late():
            return 0

        class Thing:
            def method(self):
                return helper2()
        """,
    "plugins.py": """
        from .base import register

        @register
        def plugin():
            return 5

        def not_registered():
            return 6
        """,
    "dyn.py": """
        def a():
            return 1

        def b():
            return 2
        """,
    "inner.py": """
        def deep():
            return 4

        def shallow():
            return 5
        """,
    "typing_only.py": """
        class T:
            pass
        """,
    "main.py": """
        from typing import TYPE_CHECKING

        from . import base, dyn, plugins
        from .base import Thing, helper as h

        if TYPE_CHECKING:
            from .typing_only import T

        __all__ = ["entry"]


        def entry(x=base.CONST):
            from .inner import deep

            return h() + deep() + getattr(dyn, "a")() + Thing().method() + x


        def other():
            return base.late()


        if __name__ == "__main__":
            other()
        """,
}


@pytest.fixture
def pkg(tmp_path):
    root = tmp_path / "atomsnb"
    root.mkdir()
    for name, text in FILES.items():
        (root / name).write_text(textwrap.dedent(text))
    return root


def _digest(root) -> str:
    return reach_fingerprint("atomsnb.main:entry", root=root).digest


def test_what_is_reached_and_why(pkg):
    why = reach_reasons("atomsnb.main:entry", root=pkg)
    assert set(why) == {"atomsnb.main:entry", "atomsnb.base:helper", "atomsnb.base:Thing", "atomsnb.base:helper2",
                        "atomsnb.inner:deep", "atomsnb.dyn:a", "atomsnb.dyn:b", "atomsnb.plugins:plugin",
                        "atomsnb.base:register"}
    assert why["atomsnb.base:helper2"] == "atomsnb.base.Thing"  # a method of a reached class
    assert "the module as a value" in why["atomsnb.dyn:b"]  # getattr(dyn, ...): all of dyn
    assert why["atomsnb.plugins:plugin"] == "a package decorator in atomsnb.plugins"
    inputs = set(reach_fingerprint("atomsnb.main:entry", root=pkg).modules)
    assert {"atomsnb", "atomsnb.main", "atomsnb.base", "atomsnb.dyn", "atomsnb.inner", "atomsnb.plugins"} <= inputs
    assert "atomsnb.typing_only" not in inputs  # imported under TYPE_CHECKING only


@pytest.mark.parametrize("file,old,new,changes", [
    ("base.py", "return 1\n", "return 10\n", False),  # unused: never reached
    ("base.py", "return 0\n", "return 9\n", False),  # late: only under the main guard
    ("inner.py", "return 5\n", "return 50\n", False),  # shallow: its module is loaded, it is not reached
    ("plugins.py", "return 6\n", "return 60\n", False),  # not registered
    ("base.py", "'''A docstring.'''", "'''Another docstring, longer.'''", False),
    ("base.py", "CONST = 3\n", "CONST = 3  # a comment\n", False),
    ("base.py", "def unused():", "def helper3():\n    return 3\n\ndef unused():", False),  # a new function
    ("main.py", "from .base import Thing, helper as h\n",
     "from .base import Thing, helper as h\nfrom .base import unused\n", False),  # a new import, not used
    ("main.py", '__all__ = ["entry"]', '__all__ = ["entry", "other"]', False),
    ("base.py", "return 2\n", "return 20\n", True),  # helper2: through a reached class's method
    ("base.py", "CONST = 3\n", "CONST = 4\n", True),  # a module-level statement
    ("inner.py", "return 4\n", "return 40\n", True),  # deep: imported inside the entry
    ("dyn.py", "return 2\n", "return 20\n", True),  # b: the module is used as a value
    ("plugins.py", "return 5\n", "return 50\n", True),  # registered by a package decorator
    ("main.py", "helper as h", "helper2 as h", True),  # a name the entry uses, bound to another function
    ("base.py", "REGISTRY[f.__name__] = f", "REGISTRY[f.__qualname__] = f", True),
])
def test_an_edit_changes_the_digest_exactly_when_reached_code_changes(pkg, file, old, new, changes):
    before = _digest(pkg)
    text = (pkg / file).read_text()
    assert old in text
    (pkg / file).write_text(text.replace(old, new, 1))
    assert (_digest(pkg) != before) == changes


def test_dynamic_lookups_take_the_whole_module(pkg):
    (pkg / "inner.py").write_text((pkg / "inner.py").read_text() + "\n\ndef table():\n    return globals()\n")
    (pkg / "main.py").write_text((pkg / "main.py").read_text().replace("from .inner import deep",
                                                                       "from .inner import deep, table"))
    assert "atomsnb.inner:shallow" not in reach_reasons("atomsnb.main:entry", root=pkg)  # table is not used yet
    (pkg / "main.py").write_text((pkg / "main.py").read_text().replace("return h()", "return table() and h()"))
    assert "globals" in reach_reasons("atomsnb.main:entry", root=pkg)["atomsnb.inner:shallow"]


def test_bad_entries_are_refused_before_any_work(pkg):
    with pytest.raises(ValueError, match="at least one entry"):
        reach_fingerprint()
    with pytest.raises(ValueError, match="outside package"):
        reach_fingerprint(shutil.copy)
    with pytest.raises(TypeError, match="got 3 of type int"):
        reach_fingerprint(3)
    with pytest.raises(ValueError, match="not a module-level function"):
        reach_fingerprint(_local())
    with pytest.raises(KeyError, match="defines no top-level function or class 'nothing'"):
        reach_fingerprint("atomsnb.main:nothing", root=pkg)
    with pytest.raises(ModuleNotFoundError, match="atomsnb.nosuch"):
        reach_fingerprint("atomsnb.nosuch:f", root=pkg)
    (pkg / "star.py").write_text("from .base import *\n\ndef f():\n    return helper()\n")
    with pytest.raises(ValueError, match=r"'from atomsnb.base import \*' cannot be followed"):
        reach_fingerprint("atomsnb.star:f", root=pkg)
    with pytest.raises(ValueError, match="not a package directory"):
        reach_fingerprint("atomsnb.main:entry", root=pkg / "base.py")


def _local():
    def inner():
        return 0

    inner.__module__ = "atomsnb.main"
    return inner


# ------------------------------------------------------------------------------------------- the real package
@pytest.fixture
def copy(tmp_path):
    dst = tmp_path / "atomsnb"
    shutil.copytree(PKG, dst, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} in {path}: {text.count(old)} times"
    path.write_text(text.replace(old, new))


def test_a_fix_in_code_a_point_never_runs_stales_no_row_of_it(copy):
    """The activation cache's writer (``atomsnb.activations._save``) is never run by a scaling point, which reads a
    store: editing it changes the module-scope fingerprint (every row stale, before) and not the point's."""
    entry = "atomsnb.scaling_train:train_point"
    reach, module = reach_fingerprint(entry, root=copy).digest, code_fingerprint("atomsnb.scaling_train", root=copy).digest
    assert reach == reach_fingerprint(entry).digest  # a copy is fingerprinted as the package it copies
    _edit(copy / "activations.py", "def _save(path, tensors, meta) -> None:\n",
          "def _save(path, tensors, meta) -> None:\n    path = str(path)\n")
    assert code_fingerprint("atomsnb.scaling_train", root=copy).digest != module
    assert reach_fingerprint(entry, root=copy).digest == reach


def _edit_body(path: Path, function: str) -> None:
    """Add a statement to the body of the top-level function ``function`` in ``path`` (its last statement's line)."""
    import ast

    src = path.read_text()
    nodes = [n for n in ast.parse(src).body if isinstance(n, ast.FunctionDef) and n.name == function]
    assert len(nodes) == 1, f"{function} in {path}: {len(nodes)} definitions"
    last = nodes[0].body[-1]
    lines = src.splitlines(keepends=True)
    lines.insert(last.lineno - 1, " " * last.col_offset + "_edited = True  # noqa\n")
    path.write_text("".join(lines))


@pytest.mark.parametrize("file,function", [("sae.py", "train_sae"), ("metrics.py", "r2_aip"),
                                           ("store.py", "fit_aip_from_store"), ("scaling_train.py", "train_point"),
                                           ("io.py", "save_tensors")])
def test_an_edit_of_code_a_point_runs_stales_it(copy, file, function):
    entry = "atomsnb.scaling_train:train_point"
    before = reach_fingerprint(entry, root=copy).digest
    _edit_body(copy / file, function)
    assert reach_fingerprint(entry, root=copy).digest != before


def test_a_pinned_function_is_a_boundary_not_followed(pkg):
    """``pinned``: a function whose product another key pins (the ledger's: the model conversion, by the model's
    hash) is an input by name only; edits of its body, and of what only it uses, change nothing."""
    pins = ("atomsnb.base:Thing",)
    fp = reach_fingerprint("atomsnb.main:entry", root=pkg, pinned=pins)
    assert fp.modules["atomsnb.base:Thing"] == "pinned" and "atomsnb.base:helper2" not in fp.modules
    unpinned = _digest(pkg)
    assert fp.digest != unpinned
    text = (pkg / "base.py").read_text()
    (pkg / "base.py").write_text(text.replace("return 2\n", "return 20\n").replace(
        "return helper2()", "return helper2() + 1"))
    assert reach_fingerprint("atomsnb.main:entry", root=pkg, pinned=pins).digest == fp.digest
    assert _digest(pkg) != unpinned  # unpinned, the same edits count
    with pytest.raises(TypeError, match="collection of 'module:name' strings"):
        reach_fingerprint("atomsnb.main:entry", root=pkg, pinned="atomsnb.base:Thing")
    with pytest.raises(ValueError, match="give 'module:name'"):
        reach_fingerprint("atomsnb.main:entry", root=pkg, pinned=("atomsnb.base",))
    with pytest.raises(KeyError, match="defines no top-level function or class 'Nothing'"):
        reach_fingerprint("atomsnb.main:entry", root=pkg, pinned=("atomsnb.base:Nothing",))


def test_the_model_conversion_is_pinned_by_the_model_hash_and_its_checks_stale_no_row(copy):
    """Loosening or tightening the conversion's own checks changes no converted file; the row's ``model_sha256``
    pins the files, so the row's code does not follow the conversion (``atomsnb.ledger.PINNED``)."""
    entry = "atomsnb.scaling_train:train_point"
    pinned, unpinned = (reach_fingerprint(entry, root=copy, pinned=PINNED).digest,
                        reach_fingerprint(entry, root=copy).digest)
    from atomsnb.scaling_train import train_point

    assert pinned[:16] == row_code(train_point)
    _edit_body(copy / "packaged.py", "_verify_copy")
    assert reach_fingerprint(entry, root=copy).digest != unpinned
    assert reach_fingerprint(entry, root=copy, pinned=PINNED).digest == pinned
