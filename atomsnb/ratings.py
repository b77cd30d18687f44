"""Human ratings of monosemanticity, blinded: export a CSV for raters, read the filled CSV back (paper §7).

The paper backs its LLM judge with human checks. :func:`export_for_rating` writes a CSV with one row per
context (the token marked ``[[like this]]``) and an empty ``rating`` column; units are shuffled across
unit sets and the sets are hidden behind labels (``set A``, ``set B``, ...) whose meaning is in a separate
key file, so a rater cannot tell neurons from atoms. Activations are shown relative to the unit's largest
one (raw scales differ between unit sets and would give the set away). A rater fills ``rating`` on any row
of a unit (the first is enough; several ratings of one unit are averaged) with an integer from 1 (no
common pattern) to 5 (one precise pattern). :func:`read_ratings` validates the filled file, un-blinds it
with the key and returns one score per unit in ``[0, 1]``.

The contexts are text from the corpus, so a cell may begin with ``=``, ``+``, ``-``, ``@``, a tab or a carriage
return, which a spreadsheet would run as a formula (CSV injection). As OWASP recommends, such a cell is written
with a leading ``'`` (and so is a cell that begins with ``'`` itself, so that the encoding is exactly reversible);
:func:`read_sheet` and :func:`read_ratings` remove it (:func:`neutralise_cell`, :func:`restore_cell`).
"""

from __future__ import annotations

import csv
import io
import json
import math
import numbers
import os
import string
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from .contexts import UnitContexts
from .io import atomic_write

__all__ = ["export_for_rating", "read_ratings", "read_sheet", "key_path_for", "RatingError", "COLUMNS", "RATING_RANGE",
           "neutralise_cell", "restore_cell"]

COLUMNS = ["item", "set", "context_rank", "context", "relative_activation", "rating"]
#: Allowed ratings (inclusive): 1 = no common pattern ... 5 = one precise pattern.
RATING_RANGE = (1, 5)

INSTRUCTIONS = (
    "Rate each unit (all rows sharing an 'item') once, in the 'rating' column of any of its rows: how well does one "
    "short description explain why the unit fires on the marked [[token]] in (nearly) all of its contexts? "
    "1 = no common pattern, 2 = barely any, 3 = a loose theme or a mix, 4 = one pattern with exceptions, "
    "5 = one precise pattern. Several ratings of one item are averaged; leave the others blank.")


class RatingError(ValueError):
    """A filled rating file that cannot be read: the message names the file, the line and the item."""


#: First characters that make a spreadsheet read a cell as a formula (OWASP, "CSV Injection").
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def neutralise_cell(text: str) -> str:
    """``text`` safe for a spreadsheet: prefixed with ``'`` if it begins with a formula character
    (:data:`FORMULA_START`) or with ``'`` itself (so that :func:`restore_cell` undoes it exactly)."""
    return "'" + text if text.startswith(FORMULA_START + ("'",)) else text


def restore_cell(text: str) -> str:
    """The text :func:`neutralise_cell` was given: one leading ``'`` removed, if there is one."""
    return text[1:] if text.startswith("'") else text


def key_path_for(path: str | os.PathLike) -> Path:
    """The key file that un-blinds ``path``: ``ratings.csv`` -> ``ratings.key.json``."""
    path = Path(path)
    return path.with_name(path.stem + ".key.json")


def export_for_rating(path: str | os.PathLike, unit_contexts: Mapping[str, Sequence[UnitContexts]], *, seed: int = 0,
                      max_contexts: int | None = None) -> tuple[Path, Path]:
    """Write a blinded rating sheet (CSV) and its key (JSON).

    Args:
        path: the CSV to write (its directory is created); the key goes to :func:`key_path_for` ``(path)``.
        unit_contexts: unit-set name -> the :class:`UnitContexts` to rate.
        seed: seed of the blinding (which label each set gets, and the order of the units).
        max_contexts: at most this many contexts per unit.

    Returns:
        ``(csv_path, key_path)``. Both files are written atomically. Cells that a spreadsheet would run as a
        formula are neutralised (:func:`neutralise_cell`).

    Raises:
        ValueError: no unit sets, more than 26, or ``max_contexts < 1``.
    """
    path = Path(path)
    names = list(unit_contexts)
    if not names:
        raise ValueError("no unit sets to rate: unit_contexts is empty")
    if len(names) > 26:
        raise ValueError(f"at most 26 unit sets can be blinded with letters; got {len(names)}")
    if max_contexts is not None and (isinstance(max_contexts, bool) or not isinstance(max_contexts, numbers.Integral)
                                     or max_contexts < 1):
        raise ValueError(f"max_contexts must be an integer >= 1 or None (all); got {max_contexts!r}")
    rng = np.random.default_rng(seed)
    letters = [f"set {c}" for c in string.ascii_uppercase[:len(names)]]
    label = {name: letters[i] for name, i in zip(names, rng.permutation(len(names)).tolist())}
    units = [(name, u) for name in names for u in unit_contexts[name]]
    order = rng.permutation(len(units)).tolist()
    width = max(3, len(str(len(units))))
    items: dict[str, dict] = {}
    rows = []
    for n, i in enumerate(order):
        name, u = units[i]
        item = f"u{n + 1:0{width}d}"
        items[item] = {"unit set": name, "unit": u.unit}
        ctxs = u.contexts[:max_contexts] if max_contexts is not None else u.contexts
        amax = max((c.activation for c in ctxs), default=0.0)
        for r, c in enumerate(ctxs, start=1):
            rows.append({"item": item, "set": label[name], "context_rank": r,
                         "context": c.marked().replace("\n", " ⏎ "),
                         "relative_activation": f"{c.activation / amax:.2f}" if amax > 0 else "",
                         "rating": ""})
    with atomic_write(path) as tmp:
        with tmp.open("w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS)
            w.writeheader()
            w.writerows({k: neutralise_cell(v) if isinstance(v, str) else v for k, v in r.items()} for r in rows)
    key = key_path_for(path)
    with atomic_write(key) as tmp:
        tmp.write_text(json.dumps({"instructions": INSTRUCTIONS, "rating_range": list(RATING_RANGE),
                                   "sets": {v: k for k, v in label.items()}, "items": items}, indent=2,
                                  ensure_ascii=False) + "\n", encoding="utf-8")
    return path, key


def _open_sheet(path: Path) -> tuple[list[str], list[dict]]:
    """Header and rows of a rating sheet: UTF-8 with or without a byte-order mark, separated by ``,``, ``;`` or tab,
    every cell restored (:func:`restore_cell`)."""
    try:
        text = path.read_bytes().decode("utf-8-sig")  # bytes: a carriage return inside a quoted cell stays one
    except UnicodeDecodeError as exc:
        raise RatingError(f"{path} is not UTF-8 text ({exc.reason} at byte {exc.start}); save it from the spreadsheet "
                          "as 'CSV UTF-8'") from None
    first = text.split("\n", 1)[0]
    delimiter = max(",;\t", key=first.count) if first else ","
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    header = [h.strip() for h in reader.fieldnames or []]
    rows = []
    for raw in reader:
        rows.append({(k or "").strip(): restore_cell(v) if isinstance(v, str) else v for k, v in raw.items()})
    return header, rows


def read_sheet(path: str | os.PathLike) -> pd.DataFrame:
    """The rows of a rating sheet as written (or filled), with neutralised cells restored exactly.

    Returns:
        One row per line of the CSV, the columns of the file (:data:`COLUMNS` for an exported sheet), as strings.

    Raises:
        FileNotFoundError: no such file.
        RatingError: the file is not UTF-8.
    """
    header, rows = _open_sheet(Path(path))
    return pd.DataFrame(rows, columns=header)


def _load_key(key_file: Path) -> dict:
    try:
        key = json.loads(key_file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RatingError(f"key file {key_file} is not valid JSON ({exc}); use the .key.json written by "
                          "export_for_rating") from None
    if not isinstance(key, dict) or not isinstance(key.get("items"), dict) or not isinstance(key.get("sets"), dict):
        raise RatingError(f"key file {key_file} is not a rating key (no 'items' and 'sets'); use the .key.json "
                          "written by export_for_rating")
    return key


def read_ratings(path: str | os.PathLike, key_path: str | os.PathLike | None = None) -> pd.DataFrame:
    """Read a filled rating sheet back into one score per unit.

    The sheet may have been saved by a spreadsheet: UTF-8 with a byte-order mark, ``;`` or tab separators, and
    neutralised cells (:func:`restore_cell`) are read.

    Args:
        path: the CSV written by :func:`export_for_rating`, with ``rating`` filled in.
        key_path: its key (default :func:`key_path_for` ``(path)``).

    Returns:
        One row per rated unit: ``unit set, unit, item, rating`` (mean of its ratings), ``n_ratings`` and
        ``score = (rating - 1) / 4`` in ``[0, 1]``. Units with no rating are left out.

    Raises:
        RatingError: a missing column, an unknown item, a rating that is not a number in 1..5 (the message
            names the line of the CSV, counting the header as line 1, and the item); a sheet whose blinded set
            labels disagree with the key (sheet and key from different exports); a sheet that is not UTF-8; a key
            file that is not a rating key.
        FileNotFoundError: the CSV or its key is missing.
    """
    path = Path(path)
    key_file = Path(key_path or key_path_for(path))
    key = _load_key(key_file)
    lo, hi = key.get("rating_range", RATING_RANGE)
    items = key["items"]
    label_of = {name: label for label, name in key["sets"].items()}
    ratings: dict[str, list[float]] = {}
    header, rows = _open_sheet(path)
    missing = {"item", "rating"} - set(header)
    if missing:
        raise RatingError(f"{path}: missing column(s) {sorted(missing)}; expected {COLUMNS} (found {header})")
    for line, row in enumerate(rows, start=2):
        item = (row.get("item") or "").strip()
        raw = (row.get("rating") or "").strip()
        if not item and not raw and not any((v or "").strip() for v in row.values() if isinstance(v, str)):
            continue  # a blank line a spreadsheet left at the end
        if item not in items:
            raise RatingError(f"{path}, line {line}: unknown item {item!r} (not in the key {key_file})")
        shown = (row.get("set") or "").strip()
        expected = label_of.get(items[item].get("unit set"))
        if shown and expected is not None and shown != expected:
            raise RatingError(f"{path}, line {line}: item {item} is {shown!r} in the sheet but {expected!r} in the key "
                              f"{key_file}: the sheet and the key come from different exports")
        if not raw:
            continue
        try:
            value = float(raw)
        except ValueError:
            raise RatingError(f"{path}, line {line} (item {item}): rating {raw!r} is not a number; "
                              f"use an integer from {lo} to {hi}") from None
        if not (lo <= value <= hi) or math.isnan(value):
            raise RatingError(f"{path}, line {line} (item {item}): rating {raw} is outside {lo}..{hi}")
        ratings.setdefault(item, []).append(value)
    rows = [{"unit set": items[i]["unit set"], "unit": items[i]["unit"], "item": i, "rating": float(np.mean(v)),
             "n_ratings": len(v), "score": (float(np.mean(v)) - lo) / (hi - lo)} for i, v in ratings.items()]
    return pd.DataFrame(rows, columns=["unit set", "unit", "item", "rating", "n_ratings", "score"])
