"""Words chosen by numbers: the small phrase builders that verdicts and readings share.

Every sentence of the book that interprets a result is produced from that result (the book's standard); these
helpers pick the words ("every", "3 of 5", "reproduced", "0.2-0.5") from the numbers so that the same choice is
made the same way in :mod:`atomsnb.verdicts` and in the chapters' readings (:func:`atomsnb.evaluation.describe`,
:func:`atomsnb.grid.describe_capacity`, ...). Pure functions of their arguments; imports nothing of atomsnb.
"""

from __future__ import annotations

__all__ = ["percent", "share", "agreeing_verb", "three_level", "value_range"]


def percent(v: float, digits: int = 1) -> str:
    """``v`` (a fraction) as a percentage with ``digits`` decimals: ``percent(0.4881) == "48.8%"``."""
    return f"{100 * v:.{digits}f}%"


def share(n: int, total: int, what: str) -> str:
    """'every <what>' / 'the <what>' / 'no <what>' / 'n of N <what>s' (chosen by ``n`` and ``total``)."""
    if n == total:
        return f"every {what}" if total > 1 else f"the {what}"
    if n == 0:
        return f"no {what}"
    return f"{n} of {total} {what}s"


def agreeing_verb(n: int, total: int, singular: str, plural: str) -> str:
    """The verb agreeing with :func:`share`'s subject: plural only for 'n of N things' with ``n > 1``."""
    return plural if 1 < n < total else singular


def three_level(n_ok: int, total: int) -> str:
    return "reproduced" if n_ok == total else "partly reproduced" if n_ok else "not reproduced"


def value_range(values, fmt: str = "{:.1f}") -> str:
    """``"a-b"`` (``"a to b"`` when an end is negative, so that no minus sign reads as a dash), or one number."""
    lo, hi = min(values), max(values)
    a, b = fmt.format(lo), fmt.format(hi)
    return a if a == b else f"{a} to {b}" if lo < 0 or hi < 0 else f"{a}-{b}"
