"""The paper's two large experiments as grids of points for :mod:`atomsnb.runner`.

- :class:`CapacityGridConfig` (paper §5, chapter 3): a TSAE per data size ``|M|`` and capacity ``|D|``
  at one layer; ``R^2`` in the AIP and ``q*`` on the training activations *and* on held-out ones
  (with ``|D| >= |M|`` a dictionary can memorise its data, SPEC §3).
- :class:`LayerStudyConfig` (paper §6, chapter 4): neurons, features and atoms at every layer of
  a model, aggregated into the paper's per-model table.

Each config is a dataclass whose fields are the chapters' papermill parameters; :meth:`points`
turns it into :class:`~atomsnb.runner.GridPoint` s and :meth:`validate` rejects an impossible grid
before any work (an unknown model, a layer out of range, ``|M|`` or ``|D|`` of 0 or larger than
the activations available). The point functions (:func:`capacity_point`, :func:`layer_point`) are
module-level so that process pools and Dask workers can run them; activations come from the shared
activation cache, so a (model, layer, corpus) is collected once per machine.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import pandas as pd
import torch

from .activations import ActivationConfig, collect_activations
from .aip import AIP, MIN_TOKENS_PER_DIM
from .metrics import evaluate_dictionary
from .models import check_model
from .runner import GridPoint
from .sae import train_sae
from .units import UnitSetSpec, compare_unit_sets, default_sae_config

__all__ = ["CapacityGridConfig", "LayerStudyConfig", "capacity_point", "layer_point", "code_version",
           "critical_capacity", "paper_table", "PAPER_ATOMS", "compare_with_paper"]


def code_version() -> str:
    """SHA-256 (12 hex digits) of the package's source: part of every grid point, so results computed by
    other code are never reused from a results store."""
    h = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:12]


def _acts(model: str, layer: int, split: str, n_tokens: int, corpus: str, seed: int, device: str, dtype: str,
          seq_len: int = 128) -> torch.Tensor:
    cfg = ActivationConfig(model=model, layers=(layer,), corpus=corpus, split=split, n_tokens=n_tokens, seq_len=seq_len,
                           seed=seed, device=device, dtype=dtype)
    return collect_activations(cfg, progress=False).acts[layer]


@dataclass
class _Common:
    model: str = "default"
    """Model name, local directory or hub id."""
    corpus: str = "docstrings"
    """Text for activations (``fit`` split for training, ``eval`` split for held-out metrics)."""
    n_fit_tokens: int = 40_000
    """Activations fitting ``S`` (and the pool that training sets are drawn from)."""
    n_eval_tokens: int = 10_000
    """Held-out activations for every metric."""
    n_steps: int = 600
    """SAE training steps per point."""
    batch_size: int = 2048
    """Tokens per SAE step (at most ``|M|``)."""
    seeds: tuple[int, ...] = (0,)
    """Seeds (data order, initialisation)."""
    device: str = "cpu"
    dtype: str = "float32"

    def _params(self, **extra) -> dict:
        return dict(corpus=self.corpus, n_fit_tokens=self.n_fit_tokens, n_eval_tokens=self.n_eval_tokens,
                    n_steps=self.n_steps, batch_size=self.batch_size, device=self.device, dtype=self.dtype,
                    code=code_version(), **extra)

    def _check_common(self, layers: Sequence[int]) -> int:
        n_layers, d_model = check_model(self.model)
        bad = [l for l in layers if not 0 <= int(l) <= n_layers]
        if bad:
            raise ValueError(f"layer(s) {bad} out of range for {self.model!r}: allowed 0..{n_layers}")
        if self.n_fit_tokens < MIN_TOKENS_PER_DIM * d_model:
            raise ValueError(f"n_fit_tokens={self.n_fit_tokens} is below {MIN_TOKENS_PER_DIM} x d_model = "
                             f"{MIN_TOKENS_PER_DIM * d_model} needed to fit S for {self.model!r} (SPEC §1.1)")
        if self.n_eval_tokens < 2 or self.n_steps < 1 or self.batch_size < 1:
            raise ValueError(f"need n_eval_tokens >= 2, n_steps >= 1, batch_size >= 1; got {self.n_eval_tokens}, "
                             f"{self.n_steps}, {self.batch_size}")
        return d_model


@dataclass
class CapacityGridConfig(_Common):
    """The ``|M| x |D|`` capacity grid at one layer (paper §5, chapter 3)."""

    layer: int = 1
    """Residual-stream layer (paper: Gemma2-2B layer 1)."""
    m_values: tuple[int, ...] = (256, 1024, 4096, 16384)
    """Data sizes ``|M|`` (training activations, the first ``|M|`` of the fitting pool)."""
    d_multiples: tuple[float, ...] = (1, 4, 16)
    """Capacities ``|D|`` as multiples of ``d_model`` (paper: steps of ``4H``)."""
    sparsity_coefficient: float = 3e-3
    """TSAE L0 coefficient."""
    n_train_eval: int = 4096
    """Training activations (at most ``|M|``) on which train-set metrics are computed."""

    def validate(self) -> int:
        """Raise for an impossible grid, before any work; return ``d_model``.

        Checks every field's type and range (integers, non-negative finite coefficients, non-empty lists without
        duplicates), the device (exists here), dtype and corpus source, the model and layer, ``|M|`` and ``|D|``,
        ``seq_len`` against the model's positions, and that the corpus holds ``n_fit_tokens`` and
        ``n_eval_tokens`` (tokenised as far as needed).

        Raises:
            TypeError: a field of the wrong type (e.g. ``n_fit_tokens="4e4"``).
            ValueError: a value out of range, naming the field, the value and what is allowed.
            ModelNotFoundError: an unknown model.
        """
        from ._validate import check_data, check_fields

        check_fields(self)
        d_model = self._check_common([self.layer])
        bad_m = [m for m in self.m_values if not 1 <= int(m) <= self.n_fit_tokens]
        if bad_m or not self.m_values:
            raise ValueError(f"|M| values {bad_m or list(self.m_values)} impossible: each must be in 1..n_fit_tokens="
                             f"{self.n_fit_tokens} (the activations available)")
        bad_d = [d for d in self.d_multiples if int(round(d * d_model)) < 1]
        if bad_d or not self.d_multiples:
            raise ValueError(f"|D| multiples {bad_d or list(self.d_multiples)} give a dictionary of size < 1 for "
                             f"d_model={d_model}")
        sizes = [int(round(d * d_model)) for d in self.d_multiples]
        if len(set(sizes)) != len(sizes):
            raise ValueError(f"d_multiples={list(self.d_multiples)} give the dictionary sizes {sizes} for "
                             f"d_model={d_model}: some twice (the same point twice)")
        check_data(self)
        return d_model

    def points(self) -> list[GridPoint]:
        """Every (``|M|``, ``|D|``, seed) point, after :meth:`validate`."""
        d_model = self.validate()
        params = tuple(sorted(self._params(sparsity_coefficient=self.sparsity_coefficient,
                                           n_train_eval=self.n_train_eval, experiment="capacity").items()))
        return [GridPoint(self.model, int(self.layer), int(m), int(round(k * d_model)), int(s), params)
                for m in self.m_values for k in self.d_multiples for s in self.seeds]


def capacity_point(point: GridPoint) -> dict:
    """Train a TSAE with ``|D| = point.n_latents`` on the first ``|M| = point.n_train`` fitting activations and
    evaluate it on those (up to ``n_train_eval``) and on held-out activations (paper §5, SPEC §3-4).

    ``S`` is fitted on the whole fitting pool (``n_fit_tokens``), independent of ``|M|``, as the paper
    estimates ``S`` separately from the SAE's training data.

    Returns:
        ``{"train_r2_aip", "train_q_star", "train_l0", "heldout_r2_aip", "heldout_q_star", "heldout_l0",
        "heldout_explained_variance", "dead_latents", "d_model"}``.
    """
    p = dict(point.params)
    pool = _acts(point.model, point.layer, "fit", p["n_fit_tokens"], p["corpus"], point.seed, p["device"], p["dtype"])
    held = _acts(point.model, point.layer, "eval", p["n_eval_tokens"], p["corpus"], point.seed, p["device"], p["dtype"])
    aip = AIP.fit(pool)
    train = pool[: point.n_train]
    cfg = default_sae_config(pool.shape[1], n_steps=p["n_steps"], batch_size=min(p["batch_size"], point.n_train),
                             seed=point.seed, device=p["device"])
    cfg = replace(cfg, n_latents=point.n_latents, sparsity_coefficient=p["sparsity_coefficient"])
    sae, _ = train_sae(train, aip, cfg, progress=False)
    row: dict = {"d_model": int(pool.shape[1])}
    for split, x in (("train", train[: p["n_train_eval"]]), ("heldout", held)):
        m = evaluate_dictionary(x, sae.encode_raw(x, aip), sae.reconstruct_raw(x, aip), sae.dictionary_raw(aip), aip)
        row.update({f"{split}_r2_aip": m["r2_aip"], f"{split}_q_star": m["q_star"], f"{split}_l0": m["l0"],
                    f"{split}_explained_variance": m["explained_variance"]})
        if split == "heldout":
            row["dead_latents"] = m["dead_latents"]
    return row


def critical_capacity(df: pd.DataFrame, *, value: str = "train_r2_aip", threshold: float = 0.99) -> pd.Series:
    """Smallest ``|D|`` per ``|M|`` at which ``value`` reaches ``threshold`` (NaN if none): the paper's critical capacity."""
    out = {}
    for m, g in df.groupby("n_train"):
        ok = g[g[value] >= threshold]
        out[m] = ok["n_latents"].min() if len(ok) else math.nan
    return pd.Series(out, name=f"critical |D| ({value} >= {threshold})")


@dataclass
class LayerStudyConfig(_Common):
    """Neurons, features and atoms at every layer of a model (paper §6, chapter 4)."""

    layers: tuple[int, ...] | None = None
    """Layers to run; ``None`` = ``1..n_layers`` (the paper's "layers 1-26" for Gemma2-2B)."""
    n_train_tokens: int = 40_000
    """``|M|``: SAE training activations per layer (the first of the fitting pool)."""
    capacity: int = 4
    """``|D| = capacity * d_model`` (paper: 4)."""
    atom_coefficient: float = 3e-3
    """TSAE L0 coefficient."""
    feature_coefficient: float = 3e-2
    """Standard-SAE L1 coefficient."""

    def resolved_layers(self) -> list[int]:
        """The layers of the study (all blocks when ``layers`` is ``None``)."""
        n_layers, _ = check_model(self.model)
        return list(range(1, n_layers + 1)) if self.layers is None else [int(l) for l in self.layers]

    def validate(self) -> int:
        """Raise for an impossible study, before any work; return ``d_model``.

        Checks every field's type and range, the device, dtype and corpus source, the model and layers,
        ``|M|`` <= pool, ``seq_len`` against the model's positions, and that the corpus holds ``n_fit_tokens``
        and ``n_eval_tokens``.

        Raises:
            TypeError: a field of the wrong type.
            ValueError: a value out of range, naming the field, the value and what is allowed.
            ModelNotFoundError: an unknown model.
        """
        from ._validate import check_data, check_fields

        check_fields(self)
        d_model = self._check_common(self.resolved_layers())
        if not 1 <= self.n_train_tokens <= self.n_fit_tokens:
            raise ValueError(f"n_train_tokens={self.n_train_tokens} impossible: must be in 1..n_fit_tokens={self.n_fit_tokens}")
        if self.capacity < 1:
            raise ValueError(f"capacity must be >= 1; got {self.capacity}")
        check_data(self)
        return d_model

    def points(self) -> list[GridPoint]:
        """One point per (layer, seed), after :meth:`validate`."""
        d_model = self.validate()
        params = tuple(sorted(self._params(atom_coefficient=self.atom_coefficient,
                                           feature_coefficient=self.feature_coefficient,
                                           experiment="layers").items()))
        return [GridPoint(self.model, l, int(self.n_train_tokens), int(self.capacity * d_model), int(s), params)
                for l in self.resolved_layers() for s in self.seeds]


def layer_point(point: GridPoint) -> dict:
    """Neurons, features (ReLU + L1, Euclidean) and atoms (TSAE) at one layer, evaluated on held-out activations.

    Returns:
        ``{"<family>_<metric>": value}`` for family in neurons/features/atoms and metric in
        ``r2_aip, explained_variance, q_star, l0, dead_latents``, plus ``train_<family>_r2_aip`` and
        ``condition_number``.
    """
    p = dict(point.params)
    pool = _acts(point.model, point.layer, "fit", p["n_fit_tokens"], p["corpus"], point.seed, p["device"], p["dtype"])
    held = _acts(point.model, point.layer, "eval", p["n_eval_tokens"], p["corpus"], point.seed, p["device"], p["dtype"])
    aip = AIP.fit(pool)
    d_model = pool.shape[1]
    cfg = replace(default_sae_config(d_model, n_steps=p["n_steps"], batch_size=p["batch_size"], seed=point.seed,
                                     device=p["device"]), n_latents=point.n_latents)
    specs = [UnitSetSpec("neurons", "neurons", "neurons"),
             UnitSetSpec("features", "features", "relu", False, p["feature_coefficient"]),
             UnitSetSpec("atoms", "atoms", "jumprelu", True, p["atom_coefficient"])]
    res = compare_unit_sets(pool[: point.n_train], held, aip, specs, cfg, n_train_eval=min(4096, point.n_train),
                            progress=False)
    row: dict = {"d_model": int(d_model), "condition_number": aip.condition_number}
    for _, r in res.table.iterrows():
        prefix = r["family"] if r["split"] == "held-out" else f"train_{r['family']}"
        keys = ("r2_aip", "explained_variance", "q_star", "l0", "dead_latents") if r["split"] == "held-out" else ("r2_aip", "q_star")
        row.update({f"{prefix}_{k}": float(r[k]) for k in keys})
    return row


def paper_table(df: pd.DataFrame) -> pd.DataFrame:
    """Aggregate a layer study's rows into the paper's format: ``R^2`` and ``q*`` per unit set averaged over layers.

    Args:
        df: rows of :func:`layer_point` (one per layer, ``status == "ok"``), as read from the results store.

    Returns:
        One row per (model, unit set) with ``layers`` (range), ``R^2`` and ``q*`` (means over layers, fractions)
        and ``n_layers``.
    """
    from .models import DEFAULT_MODEL_NAME

    ok = df[df["status"] == "ok"]
    rows = []
    for model, g in ok.groupby("model", sort=False):
        model = DEFAULT_MODEL_NAME if model == "default" else model
        for fam in ("neurons", "features", "atoms"):
            rows.append({"model": model, "unit set": fam, "layers": f"{g['layer'].min()}-{g['layer'].max()}",
                         "n_layers": int(g["layer"].nunique()), "R^2": g[f"{fam}_r2_aip"].mean(),
                         "q*": g[f"{fam}_q_star"].mean()})
    return pd.DataFrame(rows)


#: The paper's per-model atoms table (paper §6; the paper's numbers, fractions) and the parameter file that runs each.
PAPER_ATOMS = (
    {"model": "google/gemma-2-2b", "layers": "1-26", "R^2": 0.9992, "q*": 0.9974, "params": "params/gemma-2-2b.yaml"},
    {"model": "google/gemma-2-9b", "layers": "1-42", "R^2": 0.9993, "q*": 0.9987, "params": "params/gemma-2-9b.yaml"},
    {"model": "meta-llama/Llama-3.1-8B", "layers": "1-30", "R^2": 0.9985, "q*": 0.9995, "params": "params/llama-3.1-8b.yaml"},
)


def compare_with_paper(ours: pd.DataFrame, paper: Sequence[dict] = PAPER_ATOMS) -> pd.DataFrame:
    """The paper's per-model rows beside ours (atoms, averaged over layers), for chapter 4's table.

    Args:
        ours: the output of :func:`paper_table`.
        paper: the paper's rows (default :data:`PAPER_ATOMS`).

    Returns:
        Rows with ``model``, ``layers``, ``source`` (``"paper"``, ``"ours (this build)"`` or ``"not run here"``),
        ``R^2`` and ``q*`` formatted as percentages, and for rows not run here the ``command`` that would run them.
        Models of ours that the paper did not report follow the paper's rows.
    """
    atoms = ours[ours["unit set"] == "atoms"]
    pct = lambda v: f"{100 * v:.2f}%"  # noqa: E731
    rows = []
    for r in paper:
        rows.append({"model": r["model"], "layers": r["layers"], "source": "paper", "R^2": pct(r["R^2"]), "q*": pct(r["q*"])})
        mine = atoms[atoms["model"] == r["model"]]
        if len(mine):
            rows.append({"model": r["model"], "layers": mine["layers"].iloc[0], "source": "ours (this build)",
                         "R^2": pct(mine["R^2"].iloc[0]), "q*": pct(mine["q*"].iloc[0])})
        else:
            rows.append({"model": r["model"], "layers": r["layers"], "source": "not run here",
                         "command": f"tools/run_notebook.py notebooks/04_per_model_results.py out.ipynb -f {r['params']}"})
    reported = {r["model"] for r in paper}
    for _, r in atoms[~atoms["model"].isin(reported)].iterrows():
        rows.append({"model": r["model"], "layers": r["layers"], "source": "ours (this build)", "R^2": pct(r["R^2"]),
                     "q*": pct(r["q*"])})
    return pd.DataFrame(rows).fillna("")
