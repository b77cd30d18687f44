"""Writes the book's API reference (book/api.md) from the package's stages (atomsnb.stages.STAGES).

    .venv/bin/python tools/api_page.py            # rewrite book/api.md
    .venv/bin/python tools/api_page.py --check    # exit 1 if book/api.md is not what this writes

The page lists every public module under its stage, in the order of an experiment, with the module's first
docstring line; autodoc renders each module's docstrings in the book build. tests/test_book_pages.py checks that the
committed page is what this script writes, so a new module or a moved one cannot be left out.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import atomsnb  # noqa: E402
import atomsnb.stages  # noqa: E402

PAGE = REPO / "book" / "api.md"
INTRO = """(api)=
# API reference

The package `atomsnb` holds all the logic the chapters run; the notebooks only call it. This page is generated
from the package's docstrings in the book build (Sphinx `autodoc`, Google-style docstrings through `napoleon`).
Shapes are written as `[n_tokens, d_model]`; paper sections as §N and the project's math reference as SPEC §N.

The modules come in stages, in the order of an experiment: from text and models, through activations and the
AIP, dictionaries and their evaluation, to the verdicts. A module imports only modules of its own or an earlier
stage (checked by `tests/test_structure.py`), so reading this page from the top follows the flow of the book.
"""


def render() -> str:
    """The page's text (markdown with `{eval-rst}` automodule blocks), from :data:`atomsnb.stages.STAGES`."""
    parts = [INTRO]
    for i, (stage, modules) in enumerate(atomsnb.stages.STAGES, start=1):
        public = [m for m in modules if not m.startswith("_")]
        parts.append(f"## {i}. {stage}\n")
        for m in public:
            first = (importlib.import_module(f"atomsnb.{m}").__doc__ or "").strip().splitlines()[0]
            parts.append(f"### `atomsnb.{m}`\n\n{first}\n\n```{{eval-rst}}\n.. automodule:: atomsnb.{m}\n   :members:\n```\n")
    return "\n".join(parts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if book/api.md differs from what would be written")
    args = ap.parse_args(argv)
    text = render()
    if args.check:
        if PAGE.read_text(encoding="utf-8") != text:
            print(f"{PAGE.relative_to(REPO)} is stale: run .venv/bin/python tools/api_page.py", file=sys.stderr)
            return 1
        return 0
    PAGE.write_text(text, encoding="utf-8")
    print(f"wrote {PAGE.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
