"""Execute one chapter: jupytext source -> .ipynb -> papermill -> executed notebook for the book.

    python tools/run_notebook.py notebooks/01_representation_shift.py book/chapters/01_representation_shift.ipynb \
        [-p NAME VALUE ...] [-f params.yaml]

Parameters given with ``-p`` (YAML-parsed values, as papermill's ``-y``) or a YAML file override the
notebook's ``parameters`` cell. The executed notebook is written atomically: if execution fails, the
previous output (if any) stays and no half-executed notebook appears under the final name. The cell
papermill injects is tagged ``remove-cell`` so the book does not show it; the chapter's claim records
(``$ATOMSNB_CLAIMS_DIR/<name>.jsonl``) are reset before the run.
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
                    line = lines[node.lineno - 1]
                    comment = line.split("#", 1)[1].strip() if "#" in line[node.value.end_col_offset:] else ""
                    out.append(Parameter(node.targets[0].id, ast.get_source_segment(cell.source, node.value), comment))
            return out
    return []


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
    args = ap.parse_args(argv)
    params = yaml.safe_load(args.parameters_file.read_text()) if args.parameters_file else {}
    params.update({k: yaml.safe_load(v) for k, v in args.parameter})
    seconds = run(args.source, args.output, params or {}, kernel=args.kernel)
    print(f"executed {args.source} -> {args.output} in {seconds:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
