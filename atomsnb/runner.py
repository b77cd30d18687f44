"""Resumable experiment grids: one results row per point, written atomically, on any backend.

A grid is a list of :class:`GridPoint` (model, layer, ``|M|``, ``|D|``, seed, training steps...).
Each point's result is one JSON file in a :class:`ResultsStore` directory, named by the point's
key and written atomically with a checksum, so

- re-running a grid skips the points already done, and a killed run resumes where it stopped;
- a worker killed mid-point leaves no partial row (the rename never happened);
- a point that raised records its error (``status = "error"``) and the others go on;
- a damaged results file is detected on read (:class:`atomsnb.io.CacheCorruptError`).

Backends (:func:`run_grid`): ``"sequential"`` (in-process, default), ``"processes"`` (a local
process pool) and ``"dask"`` (a ``dask.distributed`` ``Client``: a ``LocalCluster`` on one machine,
or a SLURM cluster through ``dask-jobqueue``, see the README). Workers write their own rows, so the
store must be on a filesystem every worker sees.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import pandas as pd

from .io import CacheCorruptError, save_json

__all__ = ["GridPoint", "ResultsStore", "run_grid", "execute_point"]


@dataclass(frozen=True)
class GridPoint:
    """One experiment: a model, a layer, a data size ``|M|`` and a dictionary size ``|D|``.

    Attributes:
        model: model name / path / hub id (:func:`atomsnb.models.load_model`).
        layer: residual-stream layer.
        n_train: ``|M|``, training activations for the dictionary (and for ``S``).
        n_latents: ``|D|``, dictionary size.
        seed: seed of data order and initialisation.
        params: further settings as sorted ``(name, value)`` pairs (training steps, corpus, ...).
    """

    model: str
    layer: int
    n_train: int
    n_latents: int
    seed: int = 0
    params: tuple[tuple[str, object], ...] = ()

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


@dataclass
class ResultsStore:
    """A directory of one-JSON-file-per-point results.

    Args:
        root: the directory (created if missing).
    """

    root: Path
    _checked: set = field(default_factory=set, repr=False)

    def __post_init__(self):
        self.root = Path(self.root)
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
        """Write ``row`` for ``point`` atomically, with a checksum of its content."""
        body = {"point": point.as_dict(), "key": point.key, **row}
        payload = json.dumps(body, sort_keys=True, default=str)
        return save_json(self.path(point), {"sha256": hashlib.sha256(payload.encode()).hexdigest(), "row": json.loads(payload)})

    def load(self, point: GridPoint) -> dict:
        """Read and verify ``point``'s row (raises ``FileNotFoundError`` or ``CacheCorruptError``)."""
        return self._read(self.path(point))

    @staticmethod
    def _read(path: Path) -> dict:
        try:
            obj = json.loads(path.read_text())
            row = obj["row"]
            payload = json.dumps(row, sort_keys=True, default=str)
            ok = hashlib.sha256(payload.encode()).hexdigest() == obj["sha256"]
        except FileNotFoundError:
            raise
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise CacheCorruptError(f"results file {path} is damaged ({exc}); delete it to re-run that point") from exc
        if not ok:
            raise CacheCorruptError(f"results file {path} fails its checksum; delete it to re-run that point")
        return row

    def read(self, *, errors: str = "raise") -> pd.DataFrame:
        """All rows as a table (point fields flattened into columns).

        Args:
            errors: ``"raise"`` (default) raises ``CacheCorruptError`` on a damaged file; ``"skip"`` leaves it out.
        """
        rows = []
        for path in sorted(self.root.glob("*.json")):
            try:
                row = self._read(path)
            except CacheCorruptError:
                if errors == "raise":
                    raise
                continue
            flat = {k: v for k, v in row.items() if k != "point"}
            flat.update(row["point"])
            rows.append(flat)
        return pd.DataFrame(rows)


def execute_point(fn: Callable[[GridPoint], dict], point: GridPoint, store_root: str) -> str:
    """Run ``fn(point)`` and store its row; on an exception store the error instead. Returns the status.

    This is the task every backend runs; it is a module-level function so that it pickles.
    """
    store = ResultsStore(Path(store_root))
    t0 = time.time()
    try:
        row = dict(fn(point))
        row.update(status="ok", error=None)
    except Exception as exc:  # a failed point is recorded, the grid goes on
        row = {"status": "error", "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(limit=5)}
    row.update(wall_time_s=time.time() - t0, worker_pid=os.getpid())
    row.setdefault("versions", _versions())
    store.write(point, row)
    return row["status"]


def _versions() -> dict:
    import torch

    from . import __version__

    return {"atomsnb": __version__, "torch": torch.__version__}


def run_grid(points: Sequence[GridPoint], fn: Callable[[GridPoint], dict], store: ResultsStore | str | os.PathLike, *,
             backend: str = "sequential", client=None, dask_scheduler: str | None = None, max_workers: int = 2,
             retry_errors: bool = False, progress: bool = True) -> pd.DataFrame:
    """Run every point of a grid not yet in ``store`` and return the grid's rows as a table.

    Args:
        points: the grid.
        fn: ``GridPoint -> dict`` of metrics (module-level, so that it pickles for processes and Dask).
        store: a :class:`ResultsStore` or its directory.
        backend: ``"sequential"`` (in-process), ``"processes"`` (``ProcessPoolExecutor`` with
            ``max_workers`` spawned workers) or ``"dask"`` (a ``dask.distributed.Client``).
        client: the Dask client for ``backend="dask"``; if ``None``, one is made by :func:`dask_client`
            (connected to ``dask_scheduler``, or a ``LocalCluster`` of ``max_workers`` processes) and closed after.
        dask_scheduler: address of a running Dask scheduler (e.g. a SLURM cluster's), for ``backend="dask"``.
        max_workers: processes for ``backend="processes"`` or for a new ``LocalCluster``.
        retry_errors: also re-run points whose stored row is an error.
        progress: print one line per finished point.

    Returns:
        The rows of ``points`` (the store may hold other grids' rows too), read back from the store.

    Raises:
        ValueError: an unknown backend or duplicate points.
    """
    if backend not in ("sequential", "processes", "dask"):
        raise ValueError(f"unknown backend {backend!r}; use 'sequential', 'processes' or 'dask'")
    store = store if isinstance(store, ResultsStore) else ResultsStore(Path(store))
    keys = [p.key for p in points]
    if len(set(keys)) != len(keys):
        raise ValueError("the grid has duplicate points")
    todo = [p for p in points if not store.has(p, include_errors=not retry_errors)]
    if progress:
        print(f"grid: {len(points)} points, {len(points) - len(todo)} already in {store.root}, {len(todo)} to run "
              f"({backend})", flush=True)
    root = str(store.root)

    def report(point, status):
        if progress:
            print(f"  {status:5s} layer={point.layer} |M|={point.n_train} |D|={point.n_latents} seed={point.seed}", flush=True)

    if backend == "sequential":
        for p in todo:
            report(p, execute_point(fn, p, root))
    elif backend == "processes":
        import multiprocessing as mp

        with ProcessPoolExecutor(max_workers=max_workers, mp_context=mp.get_context("spawn")) as pool:
            for p, status in zip(todo, pool.map(execute_point, [fn] * len(todo), todo, [root] * len(todo))):
                report(p, status)
    elif backend == "dask":
        from dask.distributed import as_completed

        own = client is None
        client = dask_client(dask_scheduler, n_workers=max_workers) if own else client
        try:
            futures = {client.submit(execute_point, fn, p, root, pure=False): p for p in todo}
            for fut in as_completed(futures):
                report(futures[fut], fut.result())
        finally:
            if own:
                client.close()
    else:
        raise ValueError(f"unknown backend {backend!r}; use 'sequential', 'processes' or 'dask'")
    df = store.read()
    return df[df["key"].isin(keys)].reset_index(drop=True) if len(df) else df


def grid_points(models: Iterable[str], layers: Iterable[int], n_train: Iterable[int], n_latents: Iterable[int],
                seeds: Iterable[int] = (0,), **params) -> list[GridPoint]:
    """The Cartesian product of the given values as :class:`GridPoint` s (``params`` shared by all)."""
    frozen = tuple(sorted(params.items()))
    return [GridPoint(m, int(l), int(nm), int(nd), int(s), frozen)
            for m in models for l in layers for nm in n_train for nd in n_latents for s in seeds]


__all__.append("grid_points")


def dask_client(scheduler: str | None = None, *, n_workers: int = 2, threads_per_worker: int = 1):
    """A ``dask.distributed.Client``: connected to ``scheduler`` (e.g. ``"tcp://host:8786"``, or a SLURM cluster's
    scheduler started with ``dask-jobqueue``), or to a new ``LocalCluster`` of ``n_workers`` processes on loopback."""
    from dask.distributed import Client, LocalCluster

    if scheduler:
        return Client(scheduler)
    cluster = LocalCluster(n_workers=n_workers, threads_per_worker=threads_per_worker, processes=True,
                           host="127.0.0.1", dashboard_address=None)
    return Client(cluster)


__all__.append("dask_client")


def results_dir(name: str, override: str | None = None) -> Path:
    """Where a chapter keeps its results store: ``override`` if given, else ``$ATOMSNB_BUILD/results/<name>``
    (``build/results/<name>`` by default)."""
    return Path(override) if override else Path(os.environ.get("ATOMSNB_BUILD", "build")) / "results" / name


__all__.append("results_dir")
