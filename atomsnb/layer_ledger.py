"""Chapter 4's experiment at the paper's scale, committed: one row per layer in the ledger ``results/layers/``.

The paper's models (Gemma2-2B and -9B, Llama3.1-8B) need a GPU and the model hub, which the book's build has not.
Whoever has them runs one parameter file through this module, ``make layers-ledger PARAMS=params/gemma-2-2b.yaml``
(``python -m atomsnb.layer_ledger -f params/gemma-2-2b.yaml``): every layer of its models through
:func:`atomsnb.grid.layer_point`, the same computation chapter 4 runs in the build, one row per layer with its
provenance (:func:`atomsnb.ledger.provenance`: the code fingerprint of ``layer_point``, the model's content hash,
the corpus, commit, device and wall time), written as each layer finishes, so a killed run resumes. Committing
``results/layers/`` puts the rows into every later build: chapter 4 shows them beside its own (:func:`read_layers`)
and its verdicts on the paper's models say where the numbers come from ("ledger: commit ..., 4.4 h on NVIDIA
H100"); a row whose code, model or corpus has changed since is stale and is not used.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from typing import Sequence

import pandas as pd
import yaml

from .grid import LayerStudyConfig, layer_point, layer_study_configs
from .ledger import Ledger, provenance
from .runner import GridPoint

__all__ = ["STUDY", "refresh_command", "ledger_points", "ledger_layer_point", "read_layers", "main"]

#: The ledger's folder under ``results/``.
STUDY = "layers"


def refresh_command(params: str = "params/<model>.yaml") -> str:
    """The command that computes (or refreshes) the rows of one parameter file."""
    return f"make layers-ledger PARAMS={params}"


def ledger_points(configs: Sequence[LayerStudyConfig]) -> list[GridPoint]:
    """The configs' points (validated) without the code version that keys chapter 4's own results store: a ledger
    row's code is in its provenance, so that a changed code marks the row stale instead of orphaning it."""
    return [replace(p, params=tuple((k, v) for k, v in p.params if k != "code")) for c in configs for p in c.points()]


def ledger_layer_point(point: GridPoint) -> dict:
    """:func:`atomsnb.grid.layer_point` with its ``provenance`` (taken before the work starts)."""
    prov = provenance(layer_point, point)
    return {**layer_point(point), "provenance": prov}


def read_layers(ledger: Ledger | None = None) -> tuple[pd.DataFrame, str | None]:
    """The ledger's current rows (``status == "ok"``, not stale) and where they come from.

    Returns:
        ``(rows, evidence)``: the rows as :func:`atomsnb.grid.paper_table` reads them (empty when there are none) and
        :meth:`atomsnb.ledger.Ledger.evidence` of them (None when there are none).
    """
    ledger = ledger or Ledger(STUDY, refresh=refresh_command())
    rows = ledger.read(errors="warn")
    if rows.empty:
        return rows, None
    current = rows[(rows["status"] == "ok") & ~rows["stale"].astype(bool)]
    return current, (ledger.evidence(current) if len(current) else None)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m atomsnb.layer_ledger -f params/gemma-2-2b.yaml``: run chapter 4's experiment on a parameter file's
    models into the ledger ``results/layers/``, layer by layer (resumable; stale rows are recomputed, rows of
    layers that raised are reported and removed)."""
    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("-f", "--params", required=True, help="chapter 4's parameters (e.g. params/gemma-2-2b.yaml)")
    ap.add_argument("--ledger", default=None, help="ledger root (default: results/ of the repository)")
    ap.add_argument("--backend", default="sequential", choices=("sequential", "processes", "dask"))
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads per layer (default: torch's)")
    ap.add_argument("--dry-run", action="store_true", help="list the layers and what is done; run nothing")
    args = ap.parse_args(argv)
    with open(args.params, encoding="utf-8") as f:
        values = yaml.safe_load(f) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{args.params}: a parameter file must be a mapping of parameter names to values")
    points = ledger_points(layer_study_configs(values))  # every model, layer and size checked before any work
    ledger = Ledger(STUDY, root=args.ledger, refresh=refresh_command(args.params))
    if args.dry_run:  # deletes nothing: says what a run would do with each layer
        plan = ledger.plan([p.key for p in points])
        print(f"layers (dry run): {len(points)} layers of {sorted({p.model for p in points})}: "
              f"{Ledger.describe_plan(plan)}; ledger {ledger.dir.name}/", flush=True)
        for p in points:
            print(f"  {plan[p.key]:6}  {p.model} layer {p.layer} |M|={p.n_train} |D|={p.n_latents} seed={p.seed} "
                  f"key={p.key}")
        return 0
    n_stale = ledger.drop_stale({p.key for p in points})
    print(f"layers: {len(points)} layers of {sorted({p.model for p in points})}; {n_stale} stale rows removed for "
          f"recomputation; ledger {ledger.dir.name}/", flush=True)
    return ledger.run(points, ledger_layer_point, backend=args.backend, max_workers=args.workers, threads=args.threads)


if __name__ == "__main__":
    sys.exit(main())
