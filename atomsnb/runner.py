"""Resumable experiment grids: one results row per point, written atomically, on any backend.

A grid is a list of :class:`GridPoint` (model, layer, ``|M|``, ``|D|``, seed, training steps...).
Each point's result is one JSON file in a :class:`ResultsStore` directory, named by the point's
key and written atomically with a checksum, so

- re-running a grid skips the points already done, and a killed run resumes where it stopped;
- a worker killed mid-point leaves no partial row (the rename never happened);
- a point that raised records its error (``status = "error"``) and the others go on;
- a damaged results file is detected on read (:class:`atomsnb.io.CacheCorruptError`), and so is a row
  copied or renamed under another point's name (each row holds its own key and point, checked on read);
  :func:`run_grid` recomputes such a point, warns naming the file, reads back only its own points (other
  files in the store cannot make it fail) and never raises after the work is done.

Backends (:func:`run_grid`): ``"sequential"`` (in-process, default), ``"processes"`` (a local
process pool) and ``"dask"`` (a ``dask.distributed`` ``Client``: a ``LocalCluster`` on one machine,
or a SLURM cluster through ``dask-jobqueue``, see the README). Workers write their own rows, so the
store must be on a filesystem every worker sees.
"""

from __future__ import annotations

import hashlib
import json
import math
import multiprocessing as mp
import numbers
import os
import pickle
import re
import time
import traceback
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import pandas as pd
import torch

from . import __version__
from .io import CacheCorruptError, load_json, save_json
from .paths import shown_path

__all__ = ["GridPoint", "ResultsStore", "ResultsStoreWarning", "run_grid", "execute_point"]

#: Keys of a results row that the runner writes itself; a grid function's metrics may not use them.
RESERVED_ROW_KEYS = ("point", "key", "status", "error", "traceback", "wall_time_s", "worker_pid")
_KEY_NAME = re.compile(r"^[0-9a-f]{16}$")


class ResultsStoreWarning(UserWarning):
    """A file in a results store that is not a valid row (skipped, or its point recomputed): the message names it."""


def _check_int(name: str, value, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"GridPoint {name} must be an integer; got {value!r} ({type(value).__name__})")
    if minimum is not None and value < minimum:
        raise ValueError(f"GridPoint {name} must be >= {minimum}; got {value}")
    return int(value)


@dataclass(frozen=True)
class GridPoint:
    """One experiment: a model, a layer, a data size ``|M|`` and a dictionary size ``|D|``.

    Attributes:
        model: model name / path / hub id (:func:`atomsnb.models.load_model`).
        layer: residual-stream layer (``>= 0``).
        n_train: ``|M|``, training activations for the dictionary (and for ``S``), ``>= 1``.
        n_latents: ``|D|``, dictionary size, ``>= 1``.
        seed: seed of data order and initialisation.
        params: further settings as ``(name, value)`` pairs (training steps, corpus, ...); a dict is accepted.
            Stored sorted by name, so the order they are given in does not change the point or its key.

    Raises:
        TypeError: a field of the wrong type (a non-integer layer, ``params`` that are not name/value pairs).
        ValueError: a negative layer, ``n_train`` or ``n_latents`` below 1, an empty model name, or a setting
            named twice.
    """

    model: str
    layer: int
    n_train: int
    n_latents: int
    seed: int = 0
    params: tuple[tuple[str, object], ...] = ()

    def __post_init__(self):
        if not isinstance(self.model, str) or not self.model:
            raise TypeError(f"GridPoint model must be a non-empty string; got {self.model!r}")
        for name, minimum in (("layer", 0), ("n_train", 1), ("n_latents", 1), ("seed", None)):
            object.__setattr__(self, name, _check_int(name, getattr(self, name), minimum))
        params = self.params.items() if isinstance(self.params, Mapping) else self.params
        try:
            pairs = [(k, v) for k, v in params]
        except (TypeError, ValueError):
            raise TypeError(f"GridPoint params must be (name, value) pairs or a dict; got {self.params!r}") from None
        names = [k for k, _ in pairs]
        if not all(isinstance(k, str) for k in names):
            raise TypeError(f"GridPoint params names must be strings; got {names!r}")
        twice = sorted({k for k in names if names.count(k) > 1})
        if twice:
            raise ValueError(f"GridPoint params name(s) {twice} given twice")
        object.__setattr__(self, "params", tuple(sorted(pairs)))

    @property
    def key(self) -> str:
        """Stable identifier (SHA-256 of the point's fields, 16 hex digits): the results file name."""
        blob = json.dumps(asdict(self), sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def param(self, name: str, default=None):
        """Value of a setting in :attr:`params`."""
        return dict(self.params).get(name, default)

    def as_dict(self) -> dict:
        """Flat dictionary of the point's fields (params expanded with a ``p_`` prefix)."""
        d = {k: v for k, v in asdict(self).items() if k != "params"}
        d.update({f"p_{k}": v for k, v in self.params})
        return d


def _plain(value: Any, where: str) -> Any:
    """``value`` as plain JSON data: numpy / torch scalars become Python numbers; anything else raises ``TypeError``."""
    if value is None or isinstance(value, (str, bool)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, Mapping):
        return {str(k): _plain(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "item") and hasattr(value, "shape") and math.prod(value.shape) == 1:  # torch / numpy scalar
        return _plain(value.item(), where)
    raise TypeError(f"metric {where} is a {type(value).__name__} ({str(value)[:60]!r}); a grid function must return "
                    "numbers, strings, booleans, None, or lists and dicts of them")


def _metrics(result: Any) -> dict:
    if not isinstance(result, Mapping):
        raise TypeError(f"the grid function returned a {type(result).__name__} ({str(result)[:60]!r}); it must return "
                        "a dict of metrics")
    reserved = sorted(k for k in result if k in RESERVED_ROW_KEYS)
    if reserved:
        raise ValueError(f"the grid function returned reserved key(s) {reserved}: the runner writes "
                         f"{list(RESERVED_ROW_KEYS)} itself; rename those metrics")
    return {str(k): _plain(v, repr(k)) for k, v in result.items()}


@dataclass
class ResultsStore:
    """A directory of one-JSON-file-per-point results.

    Each row is ``<key>.json``, checksummed (:func:`atomsnb.io.save_json` with ``checksum=True``), and holds its
    own key and point: on read, a row whose key is not its file name, or whose point is not the point asked
    for (a file copied or renamed), is not that point's result (:class:`~atomsnb.io.CacheCorruptError`).

    Args:
        root: the directory (created if missing).

    Raises:
        NotADirectoryError: ``root`` exists and is not a directory.
    """

    root: Path
    _checked: set = field(default_factory=set, repr=False)

    def __post_init__(self):
        self.root = Path(self.root)
        if self.root.exists() and not self.root.is_dir():
            raise NotADirectoryError(f"results store {str(self.root)!r} is a file, not a directory; pass a directory")
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, point: GridPoint) -> Path:
        """File of ``point``'s result."""
        return self.root / f"{point.key}.json"

    def has(self, point: GridPoint, *, include_errors: bool = False) -> bool:
        """True if ``point`` has a valid result (errors count only with ``include_errors``)."""
        try:
            row = self.load(point)
        except (FileNotFoundError, CacheCorruptError):
            return False
        return include_errors or row.get("status") == "ok"

    def write(self, point: GridPoint, row: dict) -> Path:
        """Write ``row`` for ``point`` atomically, with a checksum of its content (and the point and key).

        Raises:
            TypeError: a value that is not plain JSON data (numpy and torch scalars are converted).
        """
        body = {**{k: _plain(v, repr(k)) for k, v in row.items()}, "point": _plain(point.as_dict(), "point"),
                "key": point.key}
        return save_json(self.path(point), body, checksum=True)

    def load(self, point: GridPoint) -> dict:
        """Read and verify ``point``'s row.

        Raises:
            FileNotFoundError: no row for ``point``.
            CacheCorruptError: the file is damaged, fails its checksum, or holds another point's row.
        """
        row = self._read(self.path(point))
        expected = json.loads(json.dumps(_plain(point.as_dict(), "point"), default=str))
        if row["point"] != expected:
            raise CacheCorruptError(f"results file {self.path(point)} holds the row of another point "
                                    f"({row['point']}, not {expected}); delete it to re-run that point")
        return row

    @staticmethod
    def _read(path: Path) -> dict:
        try:
            row = load_json(path, checksum=True)
        except IsADirectoryError as exc:
            raise CacheCorruptError(f"{path} is a directory, not a results row") from exc
        if not isinstance(row, dict) or not isinstance(row.get("point"), dict) or "key" not in row:
            raise CacheCorruptError(f"results file {path} is not a results row (no 'key' and 'point'); "
                                    "delete it to re-run that point")
        if row["key"] != path.stem:
            raise CacheCorruptError(f"results file {path} holds the row of point {row['key']}, not of {path.stem} "
                                    "(copied or renamed?); delete it to re-run that point")
        return row

    def read(self, *, errors: str = "raise") -> pd.DataFrame:
        """All rows as a table (point fields flattened into columns).

        Files whose name is not a results row's (``<16 hex digits>.json``), e.g. notes or another tool's output,
        are skipped with a :class:`ResultsStoreWarning` naming them.

        Args:
            errors: what to do with a damaged row (a row's name, but unreadable, failing its checksum or holding
                another point's row): ``"raise"`` (default) raises ``CacheCorruptError``; ``"warn"`` skips it with
                a :class:`ResultsStoreWarning` naming the file; ``"skip"`` skips it silently.

        Raises:
            ValueError: an unknown ``errors``.
            CacheCorruptError: a damaged row, with ``errors="raise"``.
        """
        if errors not in ("raise", "warn", "skip"):
            raise ValueError(f"errors must be 'raise', 'warn' or 'skip'; got {errors!r}")
        rows = []
        for path in sorted(self.root.glob("*.json")):
            if not _KEY_NAME.match(path.stem):
                warnings.warn(f"results store {self.root}: {path.name} is not a results row (rows are "
                              "<16 hex digits>.json); skipped", ResultsStoreWarning, stacklevel=2)
                continue
            try:
                row = self._read(path)
            except CacheCorruptError as exc:
                if errors == "raise":
                    raise
                if errors == "warn":
                    warnings.warn(f"{exc}; skipped", ResultsStoreWarning, stacklevel=2)
                continue
            rows.append(_flat(row))
        return pd.DataFrame(rows)


def _flat(row: dict) -> dict:
    flat = {k: v for k, v in row.items() if k != "point"}
    flat.update(row["point"])
    return flat


def execute_point(fn: Callable[[GridPoint], dict], point: GridPoint, store_root: str, threads: int | None = None) -> str:
    """Run ``fn(point)`` and store its row; on an exception store the error instead. Returns the status.

    ``threads``: torch's CPU thread count while ``fn`` runs (restored after it); ``None`` leaves it alone.

    ``fn`` must return a dict of metrics: numbers (numpy and torch scalars are converted), strings, booleans,
    None, or lists and dicts of them, with no key in :data:`RESERVED_ROW_KEYS`; anything else is recorded as
    the point's error.

    This is the task every backend runs; it is a module-level function so that it pickles.
    """
    store = ResultsStore(Path(store_root))
    t0 = time.time()
    before = torch.get_num_threads()
    try:
        if threads is not None:
            torch.set_num_threads(int(threads))
        row = _metrics(fn(point))
        row.update(status="ok", error=None)
    except Exception as exc:  # a failed point is recorded, the grid goes on
        row = {"status": "error", "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(limit=5)}
    finally:
        if threads is not None:
            torch.set_num_threads(before)
    row.update(wall_time_s=time.time() - t0, worker_pid=os.getpid())
    row.setdefault("versions", _versions())
    store.write(point, row)
    return row["status"]


def _versions() -> dict:
    return {"atomsnb": __version__, "torch": torch.__version__}


def _check_run_args(points: list, fn, backend: str, client, dask_scheduler, max_workers, threads=None) -> None:
    """Refuse a run that cannot work, before any point runs (see :func:`run_grid`)."""
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, numbers.Integral) or threads < 1):
        raise ValueError(f"threads must be None (leave torch's thread count alone) or an integer >= 1; got {threads!r}")
    if backend not in ("sequential", "processes", "dask"):
        raise ValueError(f"unknown backend {backend!r}; use 'sequential', 'processes' or 'dask'")
    bad = [(i, p) for i, p in enumerate(points) if not isinstance(p, GridPoint)]
    if bad:
        i, p = bad[0]
        raise TypeError(f"points[{i}] is a {type(p).__name__} ({str(p)[:60]!r}), not a GridPoint; build the grid with "
                        "grid_points(...) or a config's points()")
    if not callable(fn):
        raise TypeError(f"fn must be a function GridPoint -> dict; got {fn!r} ({type(fn).__name__})")
    if isinstance(max_workers, bool) or not isinstance(max_workers, numbers.Integral) or max_workers < 1:
        raise ValueError(f"max_workers must be an integer >= 1; got {max_workers!r}")
    if backend != "dask" and (client is not None or dask_scheduler):
        what = "client" if client is not None else f"dask_scheduler={dask_scheduler!r}"
        raise ValueError(f"{what} is only used with backend='dask'; got backend={backend!r} (pass backend='dask')")
    if backend == "processes":
        if getattr(fn, "__module__", None) == "__main__":
            raise ValueError(f"fn {getattr(fn, '__qualname__', fn)!r} is defined in __main__ (a notebook or script), "
                             "which spawned worker processes cannot import; define it in a module, or use "
                             "backend='sequential' or 'dask'")
        try:
            pickle.dumps(fn)
        except Exception as exc:  # lambdas, local functions: caught here, not in a worker after the start
            raise ValueError(f"fn {getattr(fn, '__qualname__', fn)!r} cannot be sent to worker processes ({exc}); "
                             "use a module-level function, or backend='sequential' or 'dask'") from None
    keys = [p.key for p in points]
    twice = sorted({k for k in keys if keys.count(k) > 1})
    if twice:
        dup = [p for p in points if p.key in twice][0]
        raise ValueError(f"the grid has duplicate points ({len(keys) - len(set(keys))} repeated), e.g. {dup}")


def _missing_row(point: GridPoint, why: str) -> dict:
    return {"key": point.key, "status": "missing", "error": why, **point.as_dict()}




def run_grid(points: Iterable[GridPoint], fn: Callable[[GridPoint], dict], store: ResultsStore | str | os.PathLike, *,
             backend: str = "sequential", client=None, dask_scheduler: str | None = None, max_workers: int = 2,
             retry_errors: bool = False, progress: bool = True, threads: int | None = None) -> pd.DataFrame:
    """Run every point of a grid not yet in ``store`` and return the grid's rows as a table.

    A stored row that is damaged (or another point's, copied under this point's name) is recomputed, with a
    :class:`ResultsStoreWarning` naming the file. Other files in the store (other grids' rows, notes) are not
    read. After the work, nothing raises: a point whose row cannot be read back gets a row with
    ``status = "missing"`` and a warning naming the file.

    Args:
        points: the grid (any iterable of :class:`GridPoint`; a generator is read once).
        fn: ``GridPoint -> dict`` of metrics (module-level, so that it pickles for processes and Dask); see
            :func:`execute_point` for what it may return.
        store: a :class:`ResultsStore` or its directory.
        backend: ``"sequential"`` (in-process), ``"processes"`` (``ProcessPoolExecutor`` with
            ``max_workers`` spawned workers) or ``"dask"`` (a ``dask.distributed.Client``).
        client: the Dask client for ``backend="dask"``; if ``None``, one is made by :func:`dask_client`
            (connected to ``dask_scheduler``, or a ``LocalCluster`` of ``max_workers`` processes) and closed after.
        dask_scheduler: address of a running Dask scheduler (e.g. a SLURM cluster's), for ``backend="dask"``.
        max_workers: processes for ``backend="processes"`` or for a new ``LocalCluster`` (``>= 1``).
        retry_errors: also re-run points whose stored row is an error.
        progress: print one line per finished point.
        threads: torch CPU threads each point runs with, in whichever process runs it (set around the point and
            restored after it; ``None`` leaves every process's own setting). One thread per point is bit-reproducible
            and suits several workers sharing a machine.

    Returns:
        The rows of ``points``, one per point in the grid's order, read back from the store (the store may hold
        other grids' rows too; they are not returned).

    Raises:
        ValueError: an unknown backend, duplicate points, ``max_workers < 1``, ``threads`` not None or >= 1, a Dask ``client`` or
            ``dask_scheduler`` without ``backend="dask"``, or (``backend="processes"``) an ``fn`` that worker
            processes cannot import.
        TypeError: a point that is not a :class:`GridPoint`, or an ``fn`` that is not callable.
        NotADirectoryError: ``store`` is a file.
    """
    points = list(points)
    _check_run_args(points, fn, backend, client, dask_scheduler, max_workers, threads)
    store = store if isinstance(store, ResultsStore) else ResultsStore(Path(store))
    todo = []
    for p in points:
        try:
            row = store.load(p)
        except FileNotFoundError:
            todo.append(p)
            continue
        except CacheCorruptError as exc:
            warnings.warn(f"{exc}. Recomputing that point now", ResultsStoreWarning, stacklevel=2)
            todo.append(p)
            continue
        if row.get("status") != "ok" and (retry_errors or row.get("status") != "error"):
            todo.append(p)
    if progress:
        print(f"grid: {len(points)} points, {len(points) - len(todo)} already in {shown_path(store.root)}, {len(todo)} to run "
              f"({backend})", flush=True)
    root = str(store.root)

    def report(point, status):
        if progress:
            print(f"  {status:5s} layer={point.layer} |M|={point.n_train} |D|={point.n_latents} seed={point.seed}", flush=True)

    if backend == "sequential":
        for p in todo:
            report(p, execute_point(fn, p, root, threads))
    elif backend == "processes":
        with ProcessPoolExecutor(max_workers=max_workers, mp_context=mp.get_context("spawn")) as pool:
            for p, status in zip(todo, pool.map(execute_point, [fn] * len(todo), todo, [root] * len(todo),
                                                      [threads] * len(todo))):
                report(p, status)
    else:  # dask
        from dask.distributed import as_completed

        own = client is None
        client = dask_client(dask_scheduler, n_workers=max_workers) if own else client
        try:
            futures = {client.submit(execute_point, fn, p, root, threads, pure=False): p for p in todo}
            for fut in as_completed(futures):
                report(futures[fut], fut.result())
        finally:
            if own:
                client.close()
    rows = []
    for p in points:  # only this grid's rows: nothing else in the store can make this fail
        try:
            rows.append(_flat(store.load(p)))
        except (FileNotFoundError, CacheCorruptError, OSError) as exc:
            why = f"no results row at {store.path(p)} after the run" if isinstance(exc, FileNotFoundError) else str(exc)
            warnings.warn(f"{why}; reported with status 'missing' (re-run the grid to compute it)", ResultsStoreWarning,
                          stacklevel=2)
            rows.append(_missing_row(p, why))
    return pd.DataFrame(rows)


def _axis(name: str, values, *, integer: bool = True) -> list:
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        hint = f" (wrap it: [{values!r}])" if isinstance(values, (str, int, float)) else ""
        raise TypeError(f"grid_points {name} must be a list of values; got {values!r}{hint}")
    out = list(values)
    if not out:
        raise ValueError(f"grid_points {name} is empty: the grid would have no points")
    if integer:
        bad = [v for v in out if isinstance(v, bool) or not isinstance(v, numbers.Integral)]
        if bad:
            raise TypeError(f"grid_points {name} must be integers; got {bad} (a value like 1.7 would be truncated)")
        out = [int(v) for v in out]
    return out


def grid_points(models: Iterable[str], layers: Iterable[int], n_train: Iterable[int], n_latents: Iterable[int],
                seeds: Iterable[int] = (0,), **params) -> list[GridPoint]:
    """The Cartesian product of the given values as :class:`GridPoint` s (``params`` shared by all).

    Raises:
        TypeError: an axis that is not a list (a bare string or number), or a non-integer layer, size or seed.
        ValueError: an empty axis, or an invalid point (see :class:`GridPoint`).
    """
    models = _axis("models", models, integer=False)
    layers, n_train, n_latents, seeds = (_axis(n, v) for n, v in (("layers", layers), ("n_train", n_train),
                                                                  ("n_latents", n_latents), ("seeds", seeds)))
    frozen = tuple(sorted(params.items()))
    return [GridPoint(m, l, nm, nd, s, frozen)
            for m in models for l in layers for nm in n_train for nd in n_latents for s in seeds]


__all__.append("grid_points")


def dask_client(scheduler: str | None = None, *, n_workers: int = 2, threads_per_worker: int = 1):
    """A ``dask.distributed.Client``: connected to ``scheduler`` (e.g. ``"tcp://host:8786"``, or a SLURM cluster's
    scheduler started with ``dask-jobqueue``), or to a new ``LocalCluster`` of ``n_workers`` processes on loopback."""
    # dask: optional backend, heavy: only when run_grid uses Dask
    from dask.distributed import Client, LocalCluster

    if scheduler:
        return Client(scheduler)
    cluster = LocalCluster(n_workers=n_workers, threads_per_worker=threads_per_worker, processes=True,
                           host="127.0.0.1", dashboard_address=None)
    return Client(cluster)


__all__.append("dask_client")


def results_dir(name: str, override: str | None = None) -> Path:
    """Where a chapter keeps its results store: ``override`` if given, else ``$ATOMSNB_BUILD/results/<name>``
    (``build/results/<name>`` by default).

    Raises:
        ValueError: ``name`` is empty or not a single folder name (``""`` or ``".."`` would mix every chapter's rows).
    """
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name:
        raise ValueError(f"results name {name!r} is not allowed: it must be one folder name, e.g. '03_capacity_grid'")
    return Path(override) if override else Path(os.environ.get("ATOMSNB_BUILD", "build")) / "results" / name


__all__.append("results_dir")
