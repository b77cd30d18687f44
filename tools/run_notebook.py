"""Execute one chapter: jupytext source -> .ipynb -> papermill -> executed notebook for the book.

    python tools/run_notebook.py notebooks/01_representation_shift.py book/chapters/01_representation_shift.ipynb \
        [-p NAME VALUE ...] [-f params.yaml]

Parameters given with ``-p`` (YAML-parsed values, as papermill's ``-y``) or a YAML file override the
notebook's ``parameters`` cell. The executed notebook is written atomically: if execution fails, the
previous output (if any) stays and no half-executed notebook appears under the final name. The cell
papermill injects is tagged ``remove-cell`` so the book does not show it; the chapter's claim records
(``$ATOMSNB_CLAIMS_DIR/<name>.jsonl``) are reset before the run.

Right after the chapter's title cell, a Markdown cell tagged ``rerun-box`` is inserted: an admonition with the
command that re-runs this chapter on another model (with the chapter's own parameter names, read from its
``parameters`` cell), a table of every parameter, and download links to the jupytext source and the executed
notebook. ``--rerun-box-only`` (re)writes that cell into an already executed notebook without executing it.
"""

from __future__ import annotations

import argparse
import ast
import os
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


def chapter_parameters(src: Path | nbformat.NotebookNode) -> list[Parameter]:
    """The parameters of a chapter (jupytext source or notebook), in order, read from its ``parameters`` cell."""
    nb = jupytext.read(src) if isinstance(src, (str, Path)) else src
    for cell in nb.cells:
        if cell.cell_type == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            lines = cell.source.splitlines()
            out = []
            for node in ast.parse(cell.source).body:
                if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                    rest = lines[node.end_lineno - 1][node.end_col_offset:]
                    comment = rest.split("#", 1)[1].strip() if "#" in rest else ""
                    out.append(Parameter(node.targets[0].id, ast.get_source_segment(cell.source, node.value), comment))
            return out
    return []


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


def rerun_box(src: Path, dst: Path, params: list[Parameter]) -> str:
    """Markdown (MyST) of the re-run box of chapter ``src`` executed to ``dst``."""
    src, dst = Path(src).resolve(), Path(dst).resolve()
    stem = src.stem
    rel_src = src.relative_to(REPO).as_posix() if src.is_relative_to(REPO) else src.as_posix()
    link_src = os.path.relpath(src, dst.parent)
    link_rerun = os.path.relpath(REPO / "book" / "rerun", dst.parent)
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
        f"Download: {{download}}`the jupytext source ({src.name}) <{link_src}>` | "
        f"{{download}}`the executed notebook ({dst.name}) <{dst.name}>`. "
        f"Models, hardware and every chapter's parameters: {{doc}}`{link_rerun}`.",
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


def run(src: Path, dst: Path, parameters: dict, kernel: str = KERNEL) -> float:
    nb = jupytext.read(src)
    nb.metadata["kernelspec"] = {"name": kernel, "display_name": kernel, "language": "python"}
    work = Path(os.environ.get("ATOMSNB_BUILD", "build")) / "nb"
    work.mkdir(parents=True, exist_ok=True)
    converted = work / f"{src.stem}.ipynb"
    nbformat.write(nb, converted)
    claims_dir = os.environ.get("ATOMSNB_CLAIMS_DIR")
    if claims_dir:
        (Path(claims_dir) / f"{src.stem}.jsonl").unlink(missing_ok=True)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.stem}.", suffix=".ipynb", dir=dst.parent)
    os.close(fd)
    t0 = time.time()
    try:
        papermill.execute_notebook(str(converted), tmp, parameters=parameters, kernel_name=kernel,
                                   progress_bar=False, cwd=str(work))
        out = nbformat.read(tmp, as_version=4)
        for cell in out.cells:
            tags = cell.get("metadata", {}).get("tags", [])
            if "injected-parameters" in tags and "remove-cell" not in tags:
                tags.append("remove-cell")
        insert_rerun_box(out, src, dst)
        nbformat.write(out, tmp)
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
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
    if args.rerun_box_only:
        nb = nbformat.read(args.output, as_version=4)
        nbformat.write(insert_rerun_box(nb, args.source, args.output), args.output)
        return 0
    params = yaml.safe_load(args.parameters_file.read_text()) if args.parameters_file else {}
    params.update({k: yaml.safe_load(v) for k, v in args.parameter})
    seconds = run(args.source, args.output, params or {}, kernel=args.kernel)
    print(f"executed {args.source} -> {args.output} in {seconds:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
