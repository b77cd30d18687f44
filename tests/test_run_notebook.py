"""tools/run_notebook.py executing a tiny chapter: clear errors for a missing kernel or a file that is not a notebook,
the partly executed notebook kept when a cell fails, no empty directories left behind, and no absolute machine paths
in what it writes."""

import json
import sys
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))
import run_notebook as RN  # noqa: E402

TINY = '''# %% [markdown]
# # A tiny chapter

# %% tags=["parameters"]
n = 2  # a number

# %%
print("n squared", n * n)

# %%
assert n > 0, f"n={n} must be positive"
print("done")
'''


@pytest.fixture
def tiny(tmp_path, monkeypatch):
    """A two-parameter-free chapter source in tmp_path; the build directory and claims kept inside tmp_path."""
    monkeypatch.setenv("ATOMSNB_BUILD", str(tmp_path / "build"))
    monkeypatch.delenv("ATOMSNB_CLAIMS_DIR", raising=False)
    src = tmp_path / "tiny.py"
    src.write_text(TINY)
    return src


def _main_error(argv) -> str:
    with pytest.raises(SystemExit) as exc:
        RN.main(argv)
    assert exc.value.code not in (0, None)
    return str(exc.value.code)


def test_missing_kernel_is_one_clear_line_and_leaves_no_directories(tiny, tmp_path):
    out = tmp_path / "new" / "deeper" / "tiny.ipynb"
    msg = _main_error([str(tiny), str(out), "-k", "no-such-kernel"])
    assert "kernel 'no-such-kernel' is not installed" in msg and "python3" in msg and "\n" not in msg
    assert not (tmp_path / "new").exists() and not (tmp_path / "build").exists()


def test_missing_default_kernel_says_make_install(tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(RN, "KERNEL", "atomsnb-not-installed")
    msg = _main_error([str(tiny), str(tmp_path / "o.ipynb"), "-k", "atomsnb-not-installed"])
    assert "make install" in msg


def test_source_that_is_not_a_notebook_is_named(tmp_path):
    bad = tmp_path / "chapter.ipynb"
    bad.write_text("not json at all")
    msg = _main_error([str(bad), str(tmp_path / "o.ipynb")])
    assert f"{bad} is not a notebook" in msg and "jupytext" in msg


def test_rerun_box_only_on_a_file_that_is_not_a_notebook_is_named(tiny, tmp_path):
    bad = tmp_path / "executed.ipynb"
    bad.write_text("{ broken")
    msg = _main_error([str(tiny), str(bad), "--rerun-box-only"])
    assert f"{bad} is not a notebook" in msg and "executed notebook" in msg


def test_executed_notebook_holds_no_absolute_paths(tiny, tmp_path):
    out = tmp_path / "book" / "tiny.ipynb"
    assert RN.main([str(tiny), str(out), "-k", "python3", "-p", "n", "3"]) == 0
    text = out.read_text()
    assert "n squared 9" in text
    for path in (str(REPO), str(Path.home()), str(tmp_path), str(tmp_path.resolve())):
        assert path not in text, f"{path} appears in the executed notebook"
    meta = json.loads(text)["metadata"]["papermill"]

    def shown(p: Path) -> str:  # relative to the repository (pytest's --basetemp may lie inside it), else the name
        p = p.resolve()
        return str(p.relative_to(REPO.resolve())) if p.is_relative_to(REPO.resolve()) else p.name

    assert meta["input_path"] == shown(tiny) and meta["output_path"] == shown(out)
    assert sorted(p.name for p in out.parent.iterdir()) == ["tiny.ipynb"], "a temporary file was left behind"


def test_failing_chapter_keeps_its_partly_executed_notebook(tiny, tmp_path):
    out = tmp_path / "book" / "tiny.ipynb"
    msg = _main_error([str(tiny), str(out), "-k", "python3", "-p", "n", "-1"])
    failed = tmp_path / "book" / "tiny.failed.ipynb"
    assert "AssertionError" in msg and "n=-1 must be positive" in msg and str(failed) in msg
    assert not out.exists(), "a failed run must not appear under the final name"
    nb = nbformat.read(failed, as_version=4)
    outputs = "".join(json.dumps(c.get("outputs", [])) for c in nb.cells)
    assert "n squared 1" in outputs, "the cells before the failure are not kept executed"
    assert any("papermill-error-cell-tag" in c.metadata.get("tags", []) for c in nb.cells), "failing cell not marked"
    assert sorted(p.name for p in out.parent.iterdir()) == ["tiny.failed.ipynb"]
    text = failed.read_text()
    for path in (str(REPO), str(tmp_path)):
        assert path not in text

    assert RN.main([str(tiny), str(out), "-k", "python3"]) == 0  # a later success removes the stale failure
    assert sorted(p.name for p in out.parent.iterdir()) == ["tiny.ipynb"]
