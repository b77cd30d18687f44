"""Generate the book's reproduction-status page from the chapters' claim records.

    python tools/status_page.py [--claims-dir DIR] [--notebooks notebooks] [--out book/status.md]

Every chapter records the verdicts that :mod:`atomsnb.verdicts` computed from its numbers with
:func:`atomsnb.claims.record`, as JSON lines in ``$ATOMSNB_CLAIMS_DIR/<chapter>.jsonl`` while it executes.
This script reads them and writes one Markdown page: a count of verdicts, then one table per chapter
(verdict first; the claim with its paper section, criterion and where it is tested; the paper's number
beside ours, the model ours ran on and the reading of our numbers). Nothing on the page is typed by hand.

The script refuses to write a page that could be stale or incomplete: it exits non-zero with a message
naming the chapter if a notebook in ``notebooks/`` that tests a claim (one named by ``atomsnb.paper.CLAIMS``) has no
claims file (or an empty one), if a claims file is older than its notebook source, or if a record is malformed. A
chapter that tests no claim (the atom browser) and recorded none is left off the page.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections import Counter
from pathlib import Path

import jupytext
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from run_notebook import chapter_parameters  # noqa: E402

from atomsnb.paper import CLAIMS  # noqa: E402

#: Chapters that test a claim of the paper (atomsnb.paper.CLAIMS names each claim's chapter): these must have records.
#: A chapter named by no claim (the atom browser, a tool for reading units) is left off the page when it has none.
CLAIM_CHAPTERS = frozenset(c.chapter for c in CLAIMS.values())

VERDICTS = ("reproduced", "partly reproduced", "not reproduced", "not run here")
FIELDS = ("chapter", "claim_id", "statement", "paper", "ours", "model", "verdict", "criterion")
OPTIONAL = ("section", "interpretation", "command", "evidence")  # atomsnb.claims.OPTIONAL_FIELDS
_MD_SPECIAL = set("\\`*_{}[]<>|$#!")


class StatusError(RuntimeError):
    """The claim records cannot produce a trustworthy page."""


def md(text: str) -> str:
    """Escape text for a Markdown table cell (no markup, no pipes, one line)."""
    out = "".join("\\" + c if c in _MD_SPECIAL else c for c in str(text))
    return " ".join(out.split())


def chapter_title(src: Path) -> str:
    """The first level-1 heading of a jupytext chapter source."""
    for cell in jupytext.read(src).cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("# "):
                    return line[2:].strip()
    return src.stem


def load_claims(notebooks: Path, claims_dir: Path) -> list[tuple[Path, list[dict]]]:
    """Claim records per chapter, in chapter order; raises :class:`StatusError` if any chapter lacks them."""
    sources = sorted(notebooks.glob("*.py"))
    if not sources:
        raise StatusError(f"no chapter sources in {notebooks}/")
    problems, chapters = [], []
    for src in sources:
        path = claims_dir / f"{src.stem}.jsonl"
        if src.stem not in CLAIM_CHAPTERS and (not path.is_file() or not path.read_text().strip()):
            continue  # tests no claim of the paper, and recorded none
        if not path.is_file():
            problems.append(f"{src}: no claims file {path} (execute the chapter: rm -f book/chapters/{src.stem}.ipynb && make book)")
            continue
        if path.stat().st_mtime < src.stat().st_mtime:
            problems.append(f"{src}: claims file {path} is older than the source (re-execute the chapter: rm -f book/chapters/{src.stem}.ipynb && make book)")
            continue
        records = []
        for i, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                problems.append(f"{path}:{i}: not JSON ({e})")
                continue
            missing = [f for f in FIELDS if f not in rec] if isinstance(rec, dict) else list(FIELDS)
            bad = [f for f in (*FIELDS, *OPTIONAL) if isinstance(rec, dict) and f in rec and not isinstance(rec[f], str)]
            if missing:
                problems.append(f"{path}:{i}: missing fields {missing}")
            elif bad:
                problems.append(f"{path}:{i}: fields {bad} are not text")
            elif rec["verdict"] not in VERDICTS:
                problems.append(f"{path}:{i}: verdict {rec['verdict']!r} is not one of {VERDICTS}")
            elif rec["chapter"] != src.stem:
                problems.append(f"{path}:{i}: record of chapter {rec['chapter']!r} in the file of {src.stem!r}")
            elif any(r["claim_id"] == rec["claim_id"] for r in records):
                problems.append(f"{path}:{i}: claim {rec['claim_id']!r} recorded twice (the chapter ran twice into one "
                                f"file; re-execute it: rm -f book/chapters/{src.stem}.ipynb && make book)")
            else:
                records.append(rec)
        if not records and not any(p.startswith(str(path)) for p in problems):
            problems.append(f"{src}: claims file {path} has no records (did the chapter run to the end?)")
        chapters.append((src, records))
    if problems:
        raise StatusError("cannot generate the reproduction-status page:\n  " + "\n  ".join(problems))
    return chapters


def model_rerun_command(src: Path, model: str, params_dir: Path) -> str | None:
    """The command that would run ``src`` on ``model``: a parameter file in ``params_dir`` whose ``model`` is it
    and whose keys are all parameters of the chapter, else ``-p model``; None if the chapter has no ``model``."""
    names = {p.name for p in chapter_parameters(src)}
    if "model" not in names:
        return None
    out = f"out/{src.stem}_{model.split('/')[-1]}.ipynb"
    for f in sorted(params_dir.glob("*.yaml")):
        values = yaml.safe_load(f.read_text()) or {}
        if values.get("model") == model and set(values) <= names:
            return f".venv/bin/python tools/run_notebook.py {src.as_posix()} {out} -f {f.as_posix()}"
    extra = " -p device cuda" if "device" in names else ""
    return f".venv/bin/python tools/run_notebook.py {src.as_posix()} {out} -p model {model}{extra}"


def render(chapters: list[tuple[Path, list[dict]]], params_dir: Path) -> str:
    counts = Counter(r["verdict"] for _, recs in chapters for r in recs)
    total = sum(counts.values())
    lines = [
        "(status)=",
        "# Reproduction status",
        "",
        "This page is generated in the build from the chapters' outputs: each chapter records its claim checks "
        "while it executes (`atomsnb.claims.record`), and `tools/status_page.py` turns those records into the "
        "tables below. Nothing here is typed by hand; the numbers are those of the build that produced this page unless a "
        "row's evidence names a ledger. "
        "Numbers in the column *paper's number* are **the paper's**, quoted from the section named in the claim; "
        "numbers in the column *ours* are ours, on the model named in the row; its *evidence* says where they come "
        "from: computed in this build, or committed rows of a long study (`results/`, `atomsnb.ledger`) with their "
        "commit and compute.",
        "",
        f"**{total} claim checks in {len(chapters)} chapters:** "
        + ", ".join(f"{counts.get(v, 0)} *{v}*" for v in VERDICTS) + ".",
        "",
        "| verdict | claims |",
        "|---|---|",
        *(f"| *{v}* | {counts.get(v, 0)} |" for v in VERDICTS),
        "",
    ]
    for src, recs in chapters:
        title = chapter_title(src)
        doc = f"chapters/{src.stem}"
        lines += [f"## {{doc}}`{md(title)} <{doc}>`", ""]
        lines += ["| verdict | claim | paper's number | ours |", "|---|---|---|---|"]
        not_run = []
        for r in recs:
            section = f" (paper {md(r['section'])})" if r.get("section") else ""
            reading = f"<br><small>reading: {md(r['interpretation'])}</small>" if r.get("interpretation") else ""
            source = r.get("evidence") or ("not run in this build" if r["verdict"] == "not run here" else
                                           "computed in this build")
            reading += f"<br><small>evidence: {md(source)}</small>"
            lines.append(
                f"| **{r['verdict']}** "
                f"| {md(r['statement'])}{section}<br><small>criterion: {md(r['criterion'])}; tested in "
                f"{{doc}}`chapter {src.stem[:2]} <{doc}>` (`{r['claim_id']}`)</small> "
                f"| {md(r['paper'])} | {md(r['ours'])}<br><small>on {md(r['model'])}</small>{reading} |"
            )
            if r["verdict"] == "not run here":
                not_run.append(r)
        lines.append("")
        for r in not_run:
            cmd = r.get("command") or model_rerun_command(src, r["model"], params_dir)
            if cmd:
                lines += [f"`{r['claim_id']}` was not run in this build; the command that runs it:", "",
                          "```bash", cmd, "```", ""]
    return "\n".join(lines).rstrip() + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--claims-dir", type=Path, default=Path(os.environ.get("ATOMSNB_CLAIMS_DIR", "build/claims")))
    ap.add_argument("--notebooks", type=Path, default=Path("notebooks"))
    ap.add_argument("--params", type=Path, default=Path("params"))
    ap.add_argument("--out", type=Path, default=Path("book/status.md"))
    args = ap.parse_args(argv)
    try:
        chapters = load_claims(args.notebooks, args.claims_dir)
    except StatusError as e:
        print(f"status_page: error: {e}", file=sys.stderr)
        return 1
    text = render(chapters, args.params)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".md.tmp")
    tmp.write_text(text)
    os.replace(tmp, args.out)
    n = sum(len(r) for _, r in chapters)
    print(f"status_page: {n} claims from {len(chapters)} chapters -> {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
