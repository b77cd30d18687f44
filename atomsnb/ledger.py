"""The results ledger: rows of long studies committed to the repository, each with its provenance.

A study that takes hours (e.g. :mod:`atomsnb.scaling`) cannot run in every build of the book. Its rows are committed
under ``results/<study>/`` instead, one JSON file per grid point, written atomically and checksummed by
:class:`atomsnb.runner.ResultsStore` (a killed run resumes point by point; a damaged or renamed file is detected on
read). Each row carries its **provenance** (:func:`provenance`), recorded by the point function when it runs:

- ``entry``, ``code`` and ``code_scope``: the point function (``module:name``) and the fingerprint of the code it can
  run, :func:`row_code` (``code_scope`` ``"functions"``: :func:`atomsnb.codereach.reach_fingerprint`, the
  functions and classes it reaches and what its modules run on import, with the torch/transformers/safetensors
  versions; the model conversion, pinned by ``model_sha256``, is not followed: :data:`PINNED`), so that an edit of
  code the point never runs stales no row. A row without ``code_scope`` was labelled by module
  (:func:`atomsnb.codeprint.code_fingerprint` of the entry: its modules' whole import closure) and is checked that
  way; :meth:`Ledger.narrow_code` moves such rows to the function scope while their code is the current code;
- ``model_sha256``: the SHA-256 of the model's weights, config and tokenizer as its card records them
  (:func:`model_hash`), which pins the converted model;
- ``corpus`` and ``corpus_fingerprint``: the corpus source and :meth:`atomsnb.corpus.Corpus.fingerprint` of all of it;
- ``atomsnb`` (version), ``git_commit`` (and ``git_dirty``: the package had uncommitted changes), ``device``,
  ``cpu_cores``, ``threads`` (torch's), ``date`` (UTC); the runner adds ``wall_time_s``. The parameters are the
  row's grid point. No absolute path is written (:func:`check_no_absolute_paths`).

Reading (:meth:`Ledger.read`) marks a row ``stale`` when the code, the model or the corpus it was computed from is no
longer the current one (with the reason and the command that refreshes it): a stale row is never used silently.
:meth:`Ledger.evidence` gives the line a reader (and the reproduction-status page) sees about where numbers come
from: "computed in this build" or "ledger: commit abc1234, 3.2 h on 2 CPU cores".
"""

from __future__ import annotations

import functools
import hashlib
import json
import importlib
import os
import platform
import re
import subprocess
import sys
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping

import pandas as pd
import torch

from . import __version__
from .codeprint import code_fingerprint
from .codereach import SCOPE, reach_fingerprint
from .corpus import Corpus
from .io import CacheCorruptError, save_json
from .fingerprints import directory_fingerprint
from .models import REGISTERED_MODELS, ModelNotFoundError, canonical_name, model_card, resolve_model_path
from .runner import GridPoint, ResultsStore, ResultsStoreWarning, run_grid

__all__ = ["Ledger", "provenance", "model_hash", "corpus_fingerprint", "git_commit", "check_no_absolute_paths",
           "LEDGER_DIR", "ledger_root", "repository_root", "PROVENANCE_KEYS", "PINNED", "row_code",
           "THIS_BUILD"]

#: Where ledgers live, relative to the repository root: ``results/`` (committed, unlike ``build/``); resolved by
#: :func:`ledger_root` (a name, not a path, so that no machine path is recorded in the docs or a row).
LEDGER_DIR = "results"


def repository_root() -> Path:
    """The repository the package is in (the parent of ``atomsnb/``)."""
    return Path(__file__).resolve().parent.parent


def ledger_root() -> Path:
    """The ledgers' directory, :data:`LEDGER_DIR` of :func:`repository_root`."""
    return repository_root() / LEDGER_DIR
#: The provenance every ledger row carries (:func:`provenance`).
PROVENANCE_KEYS = ("entry", "code", "model", "model_sha256", "corpus", "corpus_fingerprint", "atomsnb", "git_commit",
                   "git_dirty", "device", "cpu_cores", "threads", "date", "platform")
#: The evidence line of numbers computed while the book was built.
THIS_BUILD = "computed in this build"
#: The provenance that decides whether a row is current (the rest is the record of where and when).
_DECIDING = (("code", "the code its point function runs changed"), ("model_sha256", "the model (its card) changed"),
             ("corpus_fingerprint", "the corpus changed"))
#: Functions a row's code fingerprint does not follow, because another provenance key pins what they produce
#: (:func:`atomsnb.codereach.reach_fingerprint`, ``pinned``): the packaged model's conversion returns a directory
#: whose files it has checked against the model card, and ``model_sha256`` is the hash of those files as the card
#: records them. A change to the conversion that changes the files stales the rows through ``model_sha256``; one
#: that does not (a check, a message) stales none.
PINNED = ("atomsnb.packaged:ensure_packaged_model",)


def row_code(entry: Callable) -> str:
    """The ``code`` of a row computed now by ``entry``: :func:`atomsnb.codereach.reach_fingerprint` of it (16 hex
    digits), not following :data:`PINNED`."""
    return reach_fingerprint(entry, pinned=PINNED).digest[:16]


#: An absolute path of this machine inside a string: ``/`` then a name then ``/`` (two components at least: a
#: POSIX directory such as ``/check/x``, ``/home/u/x``), one component at a string's end (``/corpus.txt``,
#: ``file:/c.txt``), a home path (``~/x``) or a Windows drive (``C:\\x``), each at the start or after a space, quote,
#: ``=``, ``(`` or ``:``
#: (``file:/x/y``). Any directory is caught, not a list of usual ones: CI's checkout lives in ``/check``. A hub id
#: (``org/name``), a URL (``https://h/p``: ``//``) and ``tokens/s`` are no paths.
_ABSOLUTE = re.compile(r"(^|[\s'\"=(:])(/[^\s/'\"]+/|~/|[A-Za-z]:\\)|(^|[\s'\"=(:])/[^\s/'\"]+$")


def check_no_absolute_paths(obj: Any, where: str = "row") -> None:
    """Raise if ``obj`` (a row: dicts, lists, strings, numbers) holds a string that looks like an absolute path of this
    machine (any ``/dir/...``, ``~/...``, ``C:\\...``; see ``_ABSOLUTE``): a committed row must not.

    Raises:
        ValueError: naming where the path is and the path.
    """
    if isinstance(obj, str):
        if _ABSOLUTE.search(obj):
            raise ValueError(f"{where} holds an absolute path ({obj[:120]!r}); a ledger row is committed to the "
                             "repository and must not name this machine's directories (pass a corpus or model name)")
    elif isinstance(obj, dict):
        for k, v in obj.items():
            check_no_absolute_paths(v, f"{where}[{k!r}]")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            check_no_absolute_paths(v, f"{where}[{i}]")


#: The files of a converted model whose bytes determine its activations: weights, architecture, tokenizer.
#: (``tokenizer_config.json`` is left out: transformers writes the loading flags of the converting session into it.)
MODEL_CONTENT_FILES = ("model.safetensors", "config.json", "tokenizer.json")


def model_hash(model: str) -> str:
    """SHA-256 (64 hex digits) of what determines a model's activations.

    A registered model: from its verified model card (:func:`atomsnb.models.model_card`), the SHA-256 of
    :data:`MODEL_CONTENT_FILES` as the card records them (a packaged model), or the card's ``weights_sha256`` (the
    docstring GPT-2); not the card file's own bytes, since a card also records the conversion's wall time, so two
    conversions of the same GGUF on two machines agree here. Any other model (a local directory, or a hub id read
    from the local Hugging Face cache, as the paper's models are on a GPU machine):
    :func:`atomsnb.fingerprints.directory_fingerprint` of its directory (weights, config and tokenizer files).

    Raises:
        ModelNotFoundError: a registered model without its card, a local path that is no model directory, or a hub id
            that is not in the local Hugging Face cache.
    """
    if canonical_name(model) not in REGISTERED_MODELS:
        path = resolve_model_path(model, verbose=False)
        if not Path(path).is_dir():  # a hub id: the snapshot transformers loaded it from
            from huggingface_hub import snapshot_download  # optional; only for hub ids
            from huggingface_hub.errors import LocalEntryNotFoundError

            try:
                path = snapshot_download(path, local_files_only=True)
            except LocalEntryNotFoundError as exc:
                raise ModelNotFoundError(f"hub model {model!r} is not in the local Hugging Face cache, so its "
                                         f"weights cannot be hashed for the ledger: load it once first") from exc
        return directory_fingerprint(path)
    card = model_card(model)  # verifies a packaged card before its contents are trusted
    files = card.get("files") or {}
    content = {f: files[f] for f in MODEL_CONTENT_FILES if f in files} or {"weights": card.get("weights_sha256")}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


@functools.lru_cache(maxsize=8)
def corpus_fingerprint(source: str) -> str:
    """:meth:`atomsnb.corpus.Corpus.fingerprint` of every split of ``source`` (16 hex digits; memoised per process);
    ``"hub-stream"`` for a streamed Hugging Face dataset (``hf:`` sources, as the activation store keys them: its
    text is not downloaded whole, so only its name, which the row records as ``corpus``, identifies it)."""
    if str(source).startswith("hf:"):
        return "hub-stream"
    return Corpus(source).fingerprint()


def git_commit() -> tuple[str | None, bool]:
    """``(commit, dirty)`` of the repository the package is in: the 12-digit commit and whether ``atomsnb/`` has
    uncommitted changes; ``(None, False)`` outside a git checkout (an installed wheel)."""
    root = repository_root()
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                              text=True, timeout=30, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--", "atomsnb"], capture_output=True,
                               text=True, timeout=30, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None, False
    return head or None, bool(dirty)


def _entry_name(entry: Callable) -> str:
    name = f"{getattr(entry, '__module__', '')}:{getattr(entry, '__qualname__', '')}"
    if not name.startswith("atomsnb.") or "<" in name:
        raise ValueError(f"a ledger's point function must be a module-level function of atomsnb; got {name!r}")
    return name


def _resolve_entry(name: str) -> Callable:
    module, _, qual = name.partition(":")
    obj = importlib.import_module(module)
    for part in qual.split("."):
        obj = getattr(obj, part)
    return obj


def _device(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    return device


#: Per process, entry name -> (code fingerprint, git commit, dirty) when its first row was computed: the code loaded.
_LOADED: dict[str, tuple[str, str | None, bool]] = {}


def provenance(entry: Callable, point: GridPoint) -> dict:
    """The provenance of a ledger row computed now by ``entry`` for ``point`` (see the module docstring).

    Args:
        entry: the module-level point function of atomsnb that computes the row.
        point: its grid point (``model``, and the settings ``corpus`` and ``device`` among its params).

    Returns:
        A dict with the keys :data:`PROVENANCE_KEYS` and ``code_scope``.

    Raises:
        ValueError: ``entry`` is not a module-level function of atomsnb, or the point holds an absolute path (a
            corpus given as a file path: a committed row must not name this machine's directories).
        ModelNotFoundError: the model has no card.
        RuntimeError: the code of ``entry`` changed on disk since this process computed its first row (the process
            runs the code it loaded; a row labelled with the new code would be wrong). The commit recorded is the
            one of the first row, for the same reason.
    """
    check_no_absolute_paths({"model": point.model, **dict(point.params)}, "the grid point")
    name, code = _entry_name(entry), row_code(entry)
    loaded = _LOADED.setdefault(name, (code, *git_commit()))  # what this process loaded, at its first row
    if code != loaded[0]:
        raise RuntimeError(f"the code of {name} changed on disk since this process loaded it (fingerprint {loaded[0]} "
                           f"-> {code}): this process still computes with the old code, so its rows would be "
                           "labelled with code that did not compute them; restart the run (it resumes)")
    commit, dirty = loaded[1], loaded[2]
    corpus = str(point.param("corpus", "docstrings"))
    return {"entry": name, "code": code, "code_scope": SCOPE, "model": point.model,
            "model_sha256": model_hash(point.model), "corpus": corpus, "corpus_fingerprint": corpus_fingerprint(corpus),
            "atomsnb": __version__, "git_commit": commit, "git_dirty": dirty,
            "device": _device(str(point.param("device", "cpu"))), "cpu_cores": os.cpu_count(),
            "threads": torch.get_num_threads(), "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "platform": f"{platform.system()} {platform.machine()}"}


class Ledger:
    """The committed rows of one study, ``<root>/<study>/<point key>.json`` (:class:`atomsnb.runner.ResultsStore`).

    Args:
        study: the study's folder name, e.g. ``"scaling"``.
        root: the ledgers' directory (default :func:`ledger_root`, ``results/`` of the repository).
        refresh: the command that recomputes stale or missing rows (shown beside every stale row).

    Raises:
        ValueError: ``study`` is not one folder name.
    """

    def __init__(self, study: str, *, root: str | os.PathLike | None = None, refresh: str = "make scaling"):
        if not isinstance(study, str) or not re.fullmatch(r"[A-Za-z0-9_.-]+", study) or study in (".", ".."):
            raise ValueError(f"ledger study {study!r} is not allowed: one folder name of letters, digits, '_', '-', '.'")
        self.study, self.refresh = study, refresh
        self.dir = Path(root if root is not None else ledger_root()) / study
        self._store: ResultsStore | None = None

    @property
    def store(self) -> ResultsStore:
        """The :class:`ResultsStore` of the rows (the directory is created on first use)."""
        if self._store is None:
            self._store = ResultsStore(self.dir)
        return self._store

    def exists(self) -> bool:
        """Whether the ledger holds any row file."""
        return self.dir.is_dir() and any(self.dir.glob("*.json"))

    @staticmethod
    def current(entry: str, model: str, corpus: str, code_scope: str | None = SCOPE) -> dict:
        """The deciding provenance (``code``, ``model_sha256``, ``corpus_fingerprint``) as it is now; a value that
        cannot be computed here (an entry that no longer exists, a model without a card) is ``None``. ``code_scope``
        is the row's: ``"functions"`` (:func:`~atomsnb.codereach.reach_fingerprint`) or ``None`` (a row labelled by
        module, :func:`~atomsnb.codeprint.code_fingerprint`)."""
        if code_scope not in (SCOPE, None):
            raise ValueError(f"code_scope must be {SCOPE!r} or None (a row labelled by module); got {code_scope!r}")
        out: dict = {}
        try:
            fn = _resolve_entry(entry)
            out["code"] = row_code(fn) if code_scope == SCOPE else code_fingerprint(fn).digest[:16]
        except (ImportError, AttributeError, ValueError):
            out["code"] = None
        try:
            out["model_sha256"] = model_hash(model)
        except Exception:  # noqa: BLE001 - any failure to verify the model means the row cannot be trusted here
            out["model_sha256"] = None
        try:
            out["corpus_fingerprint"] = corpus_fingerprint(corpus)
        except Exception:  # noqa: BLE001 - likewise for a corpus that cannot be read here
            out["corpus_fingerprint"] = None
        return out

    def read(self, *, errors: str = "raise") -> pd.DataFrame:
        """Every row, its provenance checked against the current code, model and corpus.

        Args:
            errors: a damaged row (unreadable, failing its checksum, renamed): ``"raise"`` (default,
                :class:`~atomsnb.io.CacheCorruptError` naming the file) or ``"warn"`` (skipped with a
                :class:`~atomsnb.runner.ResultsStoreWarning` naming it).

        Returns:
            The rows (point fields as columns, ``provenance`` as a dict column) with ``stale`` (bool), ``stale_because``
            (the reasons, "" when current) and ``refresh`` (the command, "" when current); an empty frame (with those
            columns) when the ledger has no row. Rows without provenance are stale.

        Raises:
            ValueError: ``errors`` is neither "raise" nor "warn".
            CacheCorruptError: a damaged row, with ``errors="raise"``.
        """
        if errors not in ("raise", "warn"):
            raise ValueError(f"errors must be 'raise' or 'warn'; got {errors!r}")
        cols = ["stale", "stale_because", "refresh"]
        if not self.exists():
            return pd.DataFrame(columns=["key", "status", "provenance", *cols])
        df = self.store.read(errors=errors)
        if df.empty:
            return pd.DataFrame(columns=["key", "status", "provenance", *cols])
        now: dict = {}
        stale, why = [], []
        for _, r in df.iterrows():
            prov = r.get("provenance")
            if not isinstance(prov, dict) or any(k not in prov for k in PROVENANCE_KEYS):
                stale.append(True), why.append("the row has no (or incomplete) provenance")
                continue
            if prov.get("code_scope") not in (SCOPE, None):
                stale.append(True), why.append(f"the row's code_scope {prov.get('code_scope')!r} is unknown")
                continue
            key = (prov["entry"], prov["model"], prov["corpus"], prov.get("code_scope"))
            if key not in now:
                now[key] = self.current(*key)
            reasons = [what for k, what in _DECIDING if prov.get(k) != now[key][k]]
            stale.append(bool(reasons)), why.append("; ".join(reasons))
        df["stale"], df["stale_because"] = stale, why
        df["refresh"] = [self.refresh if s else "" for s in stale]
        return df

    def evidence(self, df: pd.DataFrame | None = None) -> str:
        """Where the ledger's numbers come from, in one line: ``"ledger: commit abc1234, 3.2 h on 2 CPU cores"``
        (commits, ``+changes`` where the package had uncommitted changes, total wall time of the ``ok`` rows in hours,
        or minutes below 6 minutes, the machines), with ``"N of M rows stale"`` when some are;
        ``"ledger: no rows (command: make scaling)"`` when there are none.

        Args:
            df: the frame of :meth:`read` (read now if None).
        """
        df = self.read() if df is None else df
        ok = df[df["status"] == "ok"] if len(df) else df
        if ok.empty:
            return f"ledger: no rows (command: {self.refresh})"
        provs = [p for p in ok["provenance"] if isinstance(p, dict)]
        commits = sorted({(p.get("git_commit") or "unknown")[:7] + ("+changes" if p.get("git_dirty") else "")
                          for p in provs})
        seconds = float(pd.to_numeric(ok.get("wall_time_s"), errors="coerce").fillna(0).sum())
        spent = f"{seconds / 3600:.1f} h" if seconds >= 360 else f"{max(1, round(seconds / 60))} min"
        where = sorted({f"{p['cpu_cores']} CPU cores" if str(p.get("device", "cpu")).startswith("cpu") else
                        str(p.get("device")) for p in provs})
        line = (f"ledger: commit{'s' if len(commits) > 1 else ''} {', '.join(commits)}, {spent} on "
                f"{' and '.join(where) or 'unknown machines'}")
        n_stale = int(ok["stale"].sum())
        if n_stale:
            line += f"; {n_stale} of {len(ok)} rows stale (refresh: {self.refresh})"
        return line

    @staticmethod
    def reader_table(rows: pd.DataFrame) -> pd.DataFrame:
        """The rows of :meth:`read` for a reader, narrow enough for the book's column: index (model, layer, ``|M|``,
        ``|D|``, seed); the L0 coefficient when the rows have one, minutes of compute, the commit (7 digits), the date
        and ``state`` ("current", or "stale: " and why). The full provenance stays in the rows' files.

        Raises:
            ValueError: ``rows`` lack the point or provenance columns of :meth:`read`.
        """
        need = ["model", "layer", "n_train", "n_latents", "seed", "provenance", "stale", "wall_time_s"]
        missing = [c for c in need if c not in rows]
        if missing:
            raise ValueError(f"the rows lack {missing}: pass the frame of Ledger.read()")
        order = [c for c in ("model", "layer", "n_train", "n_latents", "seed", "p_l0_coefficient") if c in rows]
        rows = rows.sort_values(order, kind="stable")
        prov = [p if isinstance(p, dict) else {} for p in rows["provenance"]]
        out = pd.DataFrame({"minutes": (pd.to_numeric(rows["wall_time_s"], errors="coerce") / 60).round(1).to_numpy(),
                            "commit": [(p.get("git_commit") or "unknown")[:7] for p in prov],
                            "date": [str(p.get("date", ""))[:10] for p in prov],
                            "state": ["stale: " + str(w) if s else "current"
                                      for s, w in zip(rows["stale"].astype(bool), rows.get("stale_because", ""))]})
        if "p_l0_coefficient" in rows:
            out.insert(0, "L0 coefficient", rows["p_l0_coefficient"].to_numpy())
        out.index = pd.MultiIndex.from_frame(rows[["model", "layer", "n_train", "n_latents", "seed"]].rename(
            columns={"n_train": "|M|", "n_latents": "|D|"}))
        return out

    def drop_stale(self, keys) -> int:
        """Delete the stale rows among ``keys`` (the points a run is about to compute), so that the run recomputes
        them; returns how many were deleted. Rows of other points are left alone. (:meth:`plan` deletes nothing.)"""
        stale = [k for k, what in self.plan(keys).items() if what == "stale"]
        for k in sorted(stale):
            (self.dir / f"{k}.json").unlink()
        return len(stale)

    def plan(self, keys) -> dict[str, str]:
        """What a run of the points ``keys`` would do with each, deleting nothing (the dry runs of ``make scaling``
        and ``make layers-ledger``): key -> ``"done"`` (a current row), ``"stale"`` (a row that a run deletes and
        recomputes) or ``"to run"`` (no row)."""
        rows = self.read(errors="warn")
        have = set(rows["key"]) if len(rows) else set()
        stale = set(rows.loc[rows["stale"].astype(bool), "key"]) if len(rows) else set()
        return {k: "stale" if k in stale else "done" if k in have else "to run" for k in keys}

    @staticmethod
    def describe_plan(plan: Mapping[str, str]) -> str:
        """The counts of a :meth:`plan`, in words: ``"30 done, 3 stale (a run recomputes them), 0 to run"``."""
        n = {what: sum(v == what for v in plan.values()) for what in ("done", "stale", "to run")}
        return f"{n['done']} done, {n['stale']} stale (a run recomputes them), {n['to run']} to run"

    def narrow_code(self, *, dry_run: bool = False) -> dict[str, str]:
        """Move the rows labelled by module (provenance without ``code_scope``) onto the function scope.

        A row whose ``code`` equals :func:`~atomsnb.codeprint.code_fingerprint` of its entry now was computed by
        exactly the current code (every module of the import closure, statement for statement, and the same library
        versions), so :func:`~atomsnb.codereach.reach_fingerprint` of the current code is the function-scope
        fingerprint of the code that computed it. Such a row gets that as ``code``, ``code_scope`` ``"functions"``
        and ``code_by_module`` (the module-scope ``code`` it had); its numbers, commit and date are kept, and it is
        rewritten atomically with a new checksum. Any other row is left as it is: a row whose module-scope code is
        not the current one stays stale (only recomputing it makes it current).

        Args:
            dry_run: report what would be done, writing nothing.

        Returns:
            Row key -> ``"narrowed"`` (or ``"to narrow"`` in a dry run), ``"already narrow"``, or
            ``"stale: left as it is"``.

        Raises:
            ValueError: ``dry_run`` is not True or False.
            CacheCorruptError: a damaged row (nothing is written before every row has been read and checked).
        """
        if not isinstance(dry_run, bool):
            raise ValueError(f"dry_run must be True or False; got {dry_run!r}")
        rows = {}
        for path in sorted(self.dir.glob("*.json")) if self.dir.is_dir() else []:
            row = ResultsStore._read(path)
            rows[path] = row
        out: dict[str, str] = {}
        todo = []
        for path, row in rows.items():
            prov = row.get("provenance")
            if not isinstance(prov, dict) or any(k not in prov for k in PROVENANCE_KEYS):
                out[row["key"]] = "stale: left as it is"
            elif prov.get("code_scope") == SCOPE:
                out[row["key"]] = "already narrow"
            else:
                try:
                    entry = _resolve_entry(prov["entry"])
                    same = code_fingerprint(entry).digest[:16] == prov["code"]
                except (ImportError, AttributeError, ValueError):
                    same = False
                if not same:
                    out[row["key"]] = "stale: left as it is"
                    continue
                new = {**prov, "code": row_code(entry), "code_scope": SCOPE,
                       "code_by_module": prov["code"]}
                todo.append((path, {**row, "provenance": new}))
                out[row["key"]] = "to narrow" if dry_run else "narrowed"
        if not dry_run:
            for path, row in todo:
                save_json(path, row, checksum=True)
        return out

    def run(self, points, entry: Callable, *, backend: str = "sequential", max_workers: int = 1,
            threads: int | None = None) -> int:
        """Compute the missing rows of ``points`` with ``entry`` (:func:`atomsnb.runner.run_grid` into this ledger),
        then remove and report the rows of points that raised (the next run retries them) and print the evidence.
        Returns the command's exit status: 1 when a point raised, else 0."""
        run_grid(points, entry, self.store, backend=backend, max_workers=max_workers, threads=threads)
        errors = self.drop_errors()
        for e in errors:
            print(f"  error (row removed; the next run retries it): {e}", file=sys.stderr)
        print(self.evidence(), flush=True)
        return 1 if errors else 0

    def drop_errors(self) -> list[str]:
        """Delete the rows of points that raised (their tracebacks name this machine's paths, and an error is not a
        result): they are recomputed by the next run. Returns the errors, one line per deleted row."""
        out = []
        if not self.exists():
            return out
        for path in sorted(self.dir.glob("*.json")):
            try:
                row = self.store._read(path)
            except CacheCorruptError as exc:
                warnings.warn(f"{exc}; left for the next run to recompute", ResultsStoreWarning, stacklevel=2)
                continue
            if row.get("status") != "ok":
                out.append(f"{path.name}: {row.get('error')}")
                path.unlink()
        return out
