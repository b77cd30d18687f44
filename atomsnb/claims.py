"""Claim records: each chapter records the verdicts that :mod:`atomsnb.paper` computed from its numbers.

The paper's claims, their numbers and the criteria that decide a verdict live in :mod:`atomsnb.paper`;
a check there takes our numbers and returns a :class:`Verdict`, whose every word that depends on a
number was chosen from that number. A chapter prints nothing of its own about a claim: it passes the
verdict to :func:`record`, which prints it (so it shows in the book and is guarded by nbval) and
appends it as one JSON line to ``$ATOMSNB_CLAIMS_DIR/<chapter>.jsonl`` when that variable is set (the
book build sets it). ``tools/status_page.py`` turns those lines into the reproduction-status page.

A claim that does not hold on our model is recorded with the verdict ``"not reproduced"``: a verdict
is a finding, not a failure. Properties our implementation guarantees are checked with plain
``assert`` in the notebook instead.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Verdict", "record", "VERDICTS", "RECORD_FIELDS", "OPTIONAL_FIELDS"]

#: The verdicts a claim can get, strongest first.
VERDICTS = ("reproduced", "partly reproduced", "not reproduced", "not run here")
#: Fields every JSON claim record carries (``tools/status_page.py`` refuses a record without one).
RECORD_FIELDS = ("chapter", "claim_id", "statement", "paper", "ours", "model", "verdict", "criterion")
#: Fields a record may carry in addition: the paper's section, the reading of our numbers, the command that runs it,
#: and where our numbers come from (absent: computed in this build; else e.g. a ledger's line, :mod:`atomsnb.ledger`).
OPTIONAL_FIELDS = ("section", "interpretation", "command", "evidence")


@dataclass(frozen=True)
class Verdict:
    """One of the paper's claims, judged on our numbers (what a check of :mod:`atomsnb.paper` returns).

    Attributes:
        chapter: notebook name that tests the claim, e.g. ``"01_representation_shift"``.
        claim_id: short stable id, unique across the book, e.g. ``"shift.aip_recentres"``.
        statement: the paper's claim in our words.
        section: the paper's section, e.g. ``"§3"``.
        paper: the paper's number(s) or wording (labelled as the paper's in the book).
        verdict: one of :data:`VERDICTS`.
        ours: our number(s), formatted.
        criterion: the rule that decided the verdict, in words, with its thresholds.
        interpretation: the sentence(s) reading our numbers; every number-dependent word was chosen by a
            conditional on the number.
        model: what ours was computed on (model, layer(s), budget).
        command: for ``"not run here"``: the command that would run it.
        evidence: where ``ours`` comes from when it was not computed in this build (the line of
            :meth:`atomsnb.ledger.Ledger.evidence`, e.g. ``"ledger: commit abc1234, 3.2 h on 2 CPU cores"``); None: in
            this build.
        values: the numbers the verdict was decided on (for tests and for anyone re-deciding it).
    """

    chapter: str
    claim_id: str
    statement: str
    section: str
    paper: str
    verdict: str
    ours: str
    criterion: str
    interpretation: str
    model: str
    command: str | None = None
    evidence: str | None = None
    values: dict = field(default_factory=dict, compare=False)

    def __post_init__(self):
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}; got {self.verdict!r}")
        for name in ("chapter", "claim_id", "statement", "paper", "ours", "criterion", "model"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name).strip():
                raise ValueError(f"claim {self.claim_id!r}: {name} must be a non-empty string; got {getattr(self, name)!r}")
        if self.verdict == "not run here" and not self.command:
            raise ValueError(f"claim {self.claim_id!r} is 'not run here': give the command that would run it")

    def as_record(self) -> dict:
        """The JSON claim record (:data:`RECORD_FIELDS` plus the non-empty :data:`OPTIONAL_FIELDS`)."""
        rec = {f: getattr(self, f) for f in RECORD_FIELDS}
        rec.update({f: getattr(self, f) for f in OPTIONAL_FIELDS if getattr(self, f)})
        return rec

    def __str__(self) -> str:
        lines = [f"[{self.verdict.upper()}] {self.statement} (paper {self.section})",
                 f"  paper: {self.paper}",
                 f"  ours ({self.model}): {self.ours}",
                 f"  criterion: {self.criterion}"]
        if self.interpretation:
            lines.append(f"  reading: {self.interpretation}")
        if self.evidence:
            lines.append(f"  evidence: {self.evidence}")
        if self.command:
            lines.append(f"  to run it: {self.command}")
        return "\n".join(lines)


def _jsonable(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def record(verdict: Verdict) -> Verdict:
    """Print a verdict and append it to ``$ATOMSNB_CLAIMS_DIR/<chapter>.jsonl`` if that variable is set.

    Args:
        verdict: a :class:`Verdict` from a check of :mod:`atomsnb.paper`.

    Returns:
        The same verdict (so that a chapter can keep it).

    Raises:
        TypeError: ``verdict`` is not a :class:`Verdict` (free text is not accepted: a chapter records only
            what a check computed).
    """
    if not isinstance(verdict, Verdict):
        raise TypeError(f"record() takes the Verdict a check of atomsnb.paper returns; got {type(verdict).__name__}")
    print(verdict)
    out = os.environ.get("ATOMSNB_CLAIMS_DIR")
    if out:
        path = Path(out) / f"{verdict.chapter}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        rec = {k: _jsonable(v) for k, v in verdict.as_record().items()}
        with path.open("a") as f:
            f.write(json.dumps(rec) + "\n")
    return verdict
