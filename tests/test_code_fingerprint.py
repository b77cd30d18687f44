"""The code fingerprint (atomsnb.codeprint) and the cache keys built on it: the activation store, the per-call
activation cache, the SAE cache and the grid rows.

Edits are made to a copy of the package in ``tmp_path``; the keys are computed by the real key functions, whose
``code_fingerprint`` is pointed at the copy (``root=``), or, end to end, by the copy itself in a subprocess."""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

import atomsnb
import atomsnb.activations as act
import atomsnb.codeprint as cp
import atomsnb.grid as grid
import atomsnb.store as store
import atomsnb.sae_cache as sae_cache
from atomsnb.codeprint import code_fingerprint
from atomsnb.sae import SAEConfig, train_sae

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


def keys(monkeypatch, root=None) -> dict[str, str]:
    """The four cache keys as the real key functions compute them, with the code read from ``root``."""
    if root is not None:
        pointed = functools.partial(code_fingerprint, root=root)
        for mod in (store, act, sae_cache, grid):
            monkeypatch.setattr(mod, "code_fingerprint", pointed)
    lm = SimpleNamespace(fingerprint="weights", dtype=torch.float32, device="cpu")
    cfg = SimpleNamespace(split="eval", seed=0, seq_len=16, drop_bos=True, batch_size=4, n_tokens=40)
    corpus = SimpleNamespace(source="docstrings", fingerprint=lambda split: "corpus")
    return {"store": json.dumps(store.collection_key(lm, cfg, 1, "float32", corpus, "corpus"), sort_keys=True),
            "activations": act._cache_key(lm, cfg, corpus, [1]),
            "sae": sae_cache._sae_cache_key(torch.ones(8, 4), None, SAEConfig(n_latents=8)),
            "grid": grid.code_version()}


# ------------------------------------------------------------------------------------------------- the inputs
def test_inputs_are_the_import_closure_with_code_hashes():
    """Every module that importing the entry loads (a fresh interpreter's sys.modules: the independent reference)
    is an input, with the SHA-256 of its code; in-function imports are followed too (store -> activations)."""
    out = subprocess.run([sys.executable, "-c", "import sys, atomsnb.activations; "
                          "print(' '.join(m for m in sys.modules if m.startswith('atomsnb')))"],
                         capture_output=True, text=True, check=True, cwd=PKG.parent)
    loaded = set(out.stdout.split())
    fp = code_fingerprint(act.collect_activations)
    assert loaded <= set(fp.modules) and "atomsnb.models" in loaded
    for name, digest in fp.modules.items():
        rel = name.split(".")[1:] or ["__init__"]
        path = PKG.joinpath(*rel).with_suffix(".py")
        assert path.is_file() and len(digest) == 64 and int(digest, 16) >= 0, name
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


# ------------------------------------------------------------------------------------- editing changes keys
def test_editing_tokenizer_prefix_changes_the_store_and_activation_keys_end_to_end(copy):
    """The copy computes its own keys (it is first on sys.path): an edit to architecture.tokenizer_prefix, which the
    capture code calls but which lives in another module, gives new store and activation-cache keys."""
    script = ("import json, sys, torch; from types import SimpleNamespace as N\n"
              "import atomsnb, atomsnb.store as s, atomsnb.activations as a\n"
              f"assert atomsnb.__file__ == {str(copy / '__init__.py')!r}, atomsnb.__file__\n"
              "lm = N(fingerprint='w', dtype=torch.float32, device='cpu')\n"
              "cfg = N(split='eval', seed=0, seq_len=16, drop_bos=True, batch_size=4, n_tokens=40)\n"
              "c = N(source='docstrings', fingerprint=lambda split: 'c')\n"
              "print(json.dumps([s.collection_key(lm, cfg, 1, 'float32', c, 'c'), a._cache_key(lm, cfg, c, [1])]))\n")
    env = {**os.environ, "PYTHONPATH": str(copy.parent)}

    def run():
        out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                             cwd=copy.parent)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    before = run()
    edit_function(copy / "architecture.py", "tokenizer_prefix")
    after = run()
    assert after[0] != before[0] and after[1] != before[1]


ON_THE_CAPTURE_PATH = [("architecture.py", "tokenizer_prefix"), ("architecture.py", "decoder_layers"),
                       ("models.py", "load_model"),
                       ("corpus.py", "documents"), ("activations.py", "token_windows"),
                       ("activations.py", "capture_residual_stream"), ("io.py", "save_tensors")]


@pytest.mark.parametrize("file,function", ON_THE_CAPTURE_PATH + [("store.py", "_windows_streaming")])
def test_editing_the_capture_path_changes_the_store_key(copy, monkeypatch, file, function):
    before = keys(monkeypatch, copy)
    edit_function(copy / file, function)
    after = keys(monkeypatch, copy)
    assert after["store"] != before["store"]
    assert after["grid"] != before["grid"]  # a grid point collects its stores with this code
    if file != "store.py":  # the per-call cache does not run the store's code
        assert after["activations"] != before["activations"]
    else:
        assert after["activations"] == before["activations"]


@pytest.mark.parametrize("file,function", [("sae.py", "train_sae"), ("aip.py", "check_finite"),
                                           ("store.py", "ShuffledBatches.__iter__")])
def test_editing_the_training_code_changes_the_sae_key(copy, monkeypatch, file, function):
    before = keys(monkeypatch, copy)
    edit_function(copy / file, function.rpartition(".")[2])
    assert keys(monkeypatch, copy)["sae"] != before["sae"]


@pytest.mark.parametrize("file", ["units.py", "grid.py", "paper.py", "plots.py", "judges.py", "synthetic.py"])
def test_editing_code_outside_the_closures_changes_no_store_sae_or_activation_key(copy, monkeypatch, file):
    before = keys(monkeypatch, copy)
    (copy / file).write_text((copy / file).read_text() + "\n_edited = True\n")
    after = keys(monkeypatch, copy)
    assert {k: after[k] for k in ("store", "activations", "sae")} == {k: before[k] for k in ("store", "activations",
                                                                                            "sae")}


def test_metrics_enters_the_sae_key_only_through_an_import(copy, monkeypatch):
    """sae.py imports metrics (for construct_tsae, the theorem's construction): so an edit to metrics.py changes the
    SAE key. The closure is exactly the imports: without that one line, it does not."""
    before = keys(monkeypatch, copy)["sae"]
    (copy / "metrics.py").write_text((copy / "metrics.py").read_text() + "\n_edited = True\n")
    assert keys(monkeypatch, copy)["sae"] != before
    sae = copy / "sae.py"
    text = sae.read_text()
    assert text.count("\nfrom .metrics import coherence\n") == 1
    sae.write_text(text.replace("\nfrom .metrics import coherence\n", "\ncoherence = None\n"))
    assert "atomsnb.metrics" not in code_fingerprint(train_sae, root=copy).modules
    without = keys(monkeypatch, copy)["sae"]
    (copy / "metrics.py").write_text((copy / "metrics.py").read_text() + "\n_edited_again = True\n")
    assert keys(monkeypatch, copy)["sae"] == without


# --------------------------------------------------------------------------------------- moving a module
def test_moving_a_module_into_a_subpackage_keeps_it_covered(copy, monkeypatch):
    """aip.py moved to sub/aip.py, imports fixed: the input list names it at its new place, the modules whose files
    were not touched keep their hashes, and editing the moved module still changes every key."""
    before = code_fingerprint(grid.capacity_point, root=copy).modules
    (copy / "sub").mkdir()
    (copy / "sub" / "__init__.py").write_text("")
    moved = (copy / "aip.py").read_text()
    assert moved.count("from .io import") == 1
    (copy / "aip.py").unlink()
    (copy / "sub" / "aip.py").write_text(moved.replace("from .io import", "from ..io import"))
    rewritten = set()
    for f in copy.glob("*.py"):
        text = f.read_text()
        if "from .aip import" in text:
            f.write_text(text.replace("from .aip import", "from .sub.aip import"))
            rewritten.add(f"atomsnb.{f.stem}")
    assert {"atomsnb.store", "atomsnb.sae", "atomsnb.activations", "atomsnb.massive"} <= rewritten
    after = code_fingerprint(grid.capacity_point, root=copy).modules
    assert set(after) == (set(before) - {"atomsnb.aip"}) | {"atomsnb.sub", "atomsnb.sub.aip"}
    untouched = set(after) & set(before) - rewritten
    assert len(untouched) > 5 and all(after[m] == before[m] for m in untouched)
    k1 = keys(monkeypatch, copy)
    edit_function(copy / "sub" / "aip.py", "check_finite")
    k2 = keys(monkeypatch, copy)
    assert all(k2[k] != k1[k] for k in k1), (k1, k2)


# -------------------------------------------------------------------------------------- library versions
@pytest.mark.parametrize("library", ["torch", "transformers", "safetensors"])
def test_another_library_version_changes_every_key(monkeypatch, library):
    before = keys(monkeypatch)
    real = cp.library_versions()
    monkeypatch.setattr(cp, "library_versions", lambda: {**real, library: real[library] + ".other"})
    after = keys(monkeypatch)
    assert all(after[k] != before[k] for k in before), (before, after)


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


def test_documentation_comments_and_layout_change_no_fingerprint_but_a_statement_does(copy):
    """The digest follows the code that runs: docstrings (module, function, class, attribute), comments and line
    breaks are not code; a changed constant or an added statement is."""
    before = code_fingerprint(grid.capacity_point, root=copy)
    path = copy / "metrics.py"
    src = path.read_text()
    tree = ast.parse(src)
    fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and ast.get_docstring(n))
    doc = ast.get_docstring(fn, clean=False)
    edited = src.replace(doc, doc + " Edited docs.", 1)
    edited = edited.replace("\n\n", "\n\n# a comment\n\n", 1) + "\n\n# trailing comment\n"
    assert edited != src
    path.write_text(edited)
    assert code_fingerprint(grid.capacity_point, root=copy).digest == before.digest
    edit_function(path, fn.name)
    after = code_fingerprint(grid.capacity_point, root=copy)
    assert after.digest != before.digest and after.modules["atomsnb.metrics"] != before.modules["atomsnb.metrics"]
    assert {m for m in after.modules if after.modules[m] != before.modules[m]} == {"atomsnb.metrics"}
