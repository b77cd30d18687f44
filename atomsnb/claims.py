"""Claim checks: each chapter records the paper's claim, our number and a verdict.

A chapter calls :func:`record` once per claim it tests. The record is printed (so it shows in
the book and is guarded by nbval) and appended as one JSON line to
``$ATOMSNB_CLAIMS_DIR/<chapter>.jsonl`` when that variable is set (the book build sets it), from
which the reproduction-status page is generated. Claims the paper makes that do not hold on our
model are recorded with the verdict ``"not reproduced"``: a verdict is a finding, not a failure.
Properties our implementation guarantees are checked with plain ``assert`` in the notebook.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = ["Claim", "record", "VERDICTS"]

VERDICTS = ("reproduced", "partly reproduced", "not reproduced", "not run here")


@dataclass(frozen=True)
class Claim:
    """One of the paper's claims as tested in a chapter.

    Attributes:
        chapter: notebook name, e.g. ``"01_representation_shift"``.
        claim_id: short stable id, e.g. ``"shift.aip_recentres"``.
        statement: the paper's claim in our words, with the paper section.
        paper: the paper's number or wording (labelled as the paper's in the book).
        ours: our number(s), formatted.
        model: the model it was tested on.
        verdict: one of :data:`VERDICTS`.
        criterion: the test and its tolerance, in words.
    """

    chapter: str
    claim_id: str
    statement: str
    paper: str
    ours: str
    model: str
    verdict: str
    criterion: str


def record(chapter: str, claim_id: str, *, statement: str, paper: str, ours: str, model: str, verdict: str,
           criterion: str) -> Claim:
    """Print a claim check and append it to ``$ATOMSNB_CLAIMS_DIR/<chapter>.jsonl`` if that is set.

    Raises:
        ValueError: ``verdict`` is not one of :data:`VERDICTS`.
    """
    if verdict not in VERDICTS:
        raise ValueError(f"verdict must be one of {VERDICTS}; got {verdict!r}")
    c = Claim(chapter, claim_id, statement, paper, ours, model, verdict, criterion)
    print(f"[{verdict.upper()}] {statement}\n  paper: {paper}\n  ours ({model}): {ours}\n  criterion: {criterion}")
    out = os.environ.get("ATOMSNB_CLAIMS_DIR")
    if out:
        path = Path(out) / f"{chapter}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as f:
            f.write(json.dumps(asdict(c)) + "\n")
    return c
