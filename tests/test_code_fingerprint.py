"""The code fingerprint (atomsnb.codeprint). Edits are made to a copy of the package in ``tmp_path``."""

from __future__ import annotations

import ast
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import atomsnb
import atomsnb.activations as act
import atomsnb.codeprint as cp
import atomsnb.store as store
from atomsnb.codeprint import code_fingerprint

PKG = Path(atomsnb.__file__).parent


@pytest.fixture
def copy(tmp_path, monkeypatch):
    """A copy of the package's source (file times kept, as ``cp -p`` would). Its files count as settled at once (the
    copy is new; every edit below changes a file's size, so the stat check sees it)."""
    monkeypatch.setattr(cp, "RACY_SECONDS", 0.0)
    dst = tmp_path / "atomsnb"
    shutil.copytree(PKG, dst, ignore=shutil.ignore_patterns("__pycache__"))
    return dst


def edit_function(path: Path, name: str) -> None:
    """Add a statement to the body of function (or method) ``name`` in ``path``: a change of behaviour's size."""
    src = path.read_text()
    nodes = [n for n in ast.walk(ast.parse(src)) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
             and n.name == name]
    assert len(nodes) == 1, f"{name} in {path}: {len(nodes)} definitions"
    last = nodes[0].body[-1]
    lines = src.splitlines(keepends=True)
    lines.insert(last.lineno - 1, " " * last.col_offset + "_edited = True  # noqa\n")
    path.write_text("".join(lines))


# ------------------------------------------------------------------------------------------------- the inputs
def test_inputs_are_the_import_closure_with_file_hashes():
    """Every module that importing the entry loads (a fresh interpreter's sys.modules: the independent reference)
    is an input, with the SHA-256 of its file; in-function imports are followed too (store -> activations)."""
    out = subprocess.run([sys.executable, "-c", "import sys, atomsnb.activations; "
                          "print(' '.join(m for m in sys.modules if m.startswith('atomsnb')))"],
                         capture_output=True, text=True, check=True, cwd=PKG.parent)
    loaded = set(out.stdout.split())
    fp = code_fingerprint(act.collect_activations)
    assert loaded <= set(fp.modules) and "atomsnb.models" in loaded
    for name, digest in fp.modules.items():
        rel = name.split(".")[1:] or ["__init__"]
        path = PKG.joinpath(*rel).with_suffix(".py")
        assert digest == hashlib.sha256(path.read_bytes()).hexdigest(), name
    assert "atomsnb.store" not in fp.modules and "atomsnb.sae" not in fp.modules  # narrow: nothing it never imports
    assert "atomsnb.activations" in code_fingerprint(store._collect).modules  # imported inside functions only
    assert len(fp.digest) == 64 and fp.digest == code_fingerprint("atomsnb.activations").digest


def test_libraries_are_the_installed_versions():
    import safetensors
    import transformers

    assert cp.library_versions() == {"torch": torch.__version__, "transformers": transformers.__version__,
                                     "safetensors": safetensors.__version__}
    assert code_fingerprint(act).libraries == cp.library_versions()


def test_type_checking_imports_are_left_out_and_function_imports_followed(copy):
    aip = copy / "aip.py"
    aip.write_text(aip.read_text() + "\nfrom typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import plots\n")
    assert "atomsnb.plots" not in code_fingerprint("atomsnb.aip", root=copy).modules
    aip.write_text(aip.read_text() + "\n\ndef _late():\n    from .plots import __name__ as _n\n    return _n\n")
    assert "atomsnb.plots" in code_fingerprint("atomsnb.aip", root=copy).modules


# ---------------------------------------------------------------------------------------------- caching
@pytest.fixture
def counted(monkeypatch):
    """The calls to the closure walk; files count as settled at once (no racy-timestamp wait)."""
    calls = []
    real = cp._compute
    monkeypatch.setattr(cp, "_compute", lambda *a: calls.append(a) or real(*a))
    monkeypatch.setattr(cp, "RACY_SECONDS", 0.0)
    return calls


def test_remembered_per_process_until_a_file_changes(copy, counted):
    first = code_fingerprint("atomsnb.store", root=copy)
    assert code_fingerprint("atomsnb.store", root=copy) == first and len(counted) == 1
    edit_function(copy / "corpus.py", "documents")
    second = code_fingerprint("atomsnb.store", root=copy)
    assert len(counted) == 2 and second.digest != first.digest
    assert second.modules["atomsnb.corpus"] != first.modules["atomsnb.corpus"]
    assert {m: h for m, h in second.modules.items() if m != "atomsnb.corpus"} == \
        {m: h for m, h in first.modules.items() if m != "atomsnb.corpus"}


def test_recent_files_are_not_remembered(copy, monkeypatch, counted):
    monkeypatch.setattr(cp, "RACY_SECONDS", 3600.0)  # every file counts as just written
    code_fingerprint("atomsnb.aip", root=copy)
    code_fingerprint("atomsnb.aip", root=copy)
    assert len(counted) == 2


def test_a_new_module_file_is_seen(copy, counted):
    """``from . import newmod`` names a package attribute until newmod.py exists; adding the file (which changes no
    file of the closure, only its directory) puts it into the closure."""
    aip = copy / "aip.py"
    aip.write_text(aip.read_text() + "\n\ndef _f():\n    from . import newmod\n    return newmod\n")
    first = code_fingerprint("atomsnb.aip", root=copy)
    assert "atomsnb.newmod" not in first.modules
    (copy / "newmod.py").write_text("X = 1\n")
    second = code_fingerprint("atomsnb.aip", root=copy)
    assert len(counted) == 2 and set(second.modules) == set(first.modules) | {"atomsnb.newmod"}
    assert second.digest != first.digest


# ---------------------------------------------------------------------------------------------- bad input
def test_bad_input_is_named(tmp_path):
    with pytest.raises(ValueError, match="at least one entry"):
        code_fingerprint()
    with pytest.raises(ValueError, match=r"module 'json', outside package 'atomsnb'"):
        code_fingerprint(json.dumps)
    with pytest.raises(TypeError, match="got 3 of type int"):
        code_fingerprint(3)
    with pytest.raises(ValueError, match=r"root '.*nowhere' is not a package directory"):
        code_fingerprint("atomsnb.aip", root=tmp_path / "nowhere")
    with pytest.raises(ModuleNotFoundError, match=r"module 'atomsnb\.no_such', named by an entry, has no source"):
        code_fingerprint("atomsnb.no_such")


def test_an_import_of_a_missing_module_names_the_importing_file(copy):
    aip = copy / "aip.py"
    aip.write_text(aip.read_text() + "\n\ndef _f():\n    from .gone import x\n    return x\n")
    with pytest.raises(ModuleNotFoundError, match=r"module 'atomsnb\.gone', named by an import in .*aip\.py, has no"):
        code_fingerprint("atomsnb.activations", root=copy)
