"""The scaling study: is the gap between our TSAEs and the paper's ``R^2`` and ``q*`` near 1 a matter of scale?

The book's dictionaries train on tens of thousands of activations; the paper's on up to 1.9B (paper §5). This study
measures, per model and layer, how the held-out ``R^2`` in the AIP and ``q*`` of a TSAE grow with the training data
``|M|`` and extrapolates them with a fitted power law (:func:`fit_power_law`):

- **data scaling**: ``|D| = 4H``, ``|M|`` over >= 2.5 decades (default ``2^14..2^23`` tokens at layer 1, ``2^11..2^19``
  at the middle layer), every point trained **until its held-out R^2 stops improving** (:func:`stopped_improving`);
- **capacity and seeds** at the largest ``|M|``: ``|D|`` in ``{H, 4H, 16H}`` and a second seed;
- **the L0-coefficient sweep** over >= 1.5 decades at the smallest and the largest ``|M|``: the held-out
  ``(R^2, q*)`` frontier and its distance from the paper's ``(0.999, 0.997)``.

:class:`ScalingStudyConfig` (its fields are chapter 7's papermill parameters) turns the study into
:class:`~atomsnb.runner.GridPoint` s; :func:`scaling_point` (module-level, for every backend of
:func:`atomsnb.runner.run_grid`) computes one and returns a row with its provenance (:mod:`atomsnb.ledger`);
``python -m atomsnb.scaling -f params/scaling.yaml`` (``make scaling``) runs the full study into the ledger
``results/scaling/``, resumable point by point. The readings (:func:`describe_fit`, :func:`describe_scaling`) choose
every number-dependent word from the numbers.

**Training, the stopping rule and the code fingerprint** are :mod:`atomsnb.scaling_train`'s: every row is computed by
:func:`atomsnb.scaling_train.train_point`, whose module imports only the code the computation runs, so that editing
this module (the configuration, the fits, the words) leaves the committed rows current.

**What the full study runs** (``params/scaling.yaml``): data scaling on every model and layer; the capacity, seed and
L0-coefficient sweeps only where ``sweep_models`` and ``sweep_layers`` say (the issue's fallback when the full study
does not fit 6 hours on 2 cores: SmolLM2, layer 1). Points run in order of what a reader needs first: data scaling at
the first layer of every model, then the sweeps (the L0 frontier, the seeds, then capacity, whose largest ``|D|`` costs
most), then data scaling at the other layers; ascending ``|M|`` within each.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import sys
import tempfile
from dataclasses import dataclass, fields
from pathlib import Path
from types import SimpleNamespace
from typing import Sequence

import numpy as np
import pandas as pd
import yaml
from scipy.optimize import minimize_scalar

from ._validate import check_data
from .activations import token_windows
from .aip import MIN_TOKENS_PER_DIM
from .corpus import Corpus
from .export import export_saelens, zip_export
from .io import CacheCorruptError
from .ledger import Ledger, ledger_root, provenance, repository_root
from .metrics import METRIC_LABELS
from .models import check_model, resolve_model_path
from .paper import PAPER_ATOMS
from .runner import GridPoint
from .scaling_train import stopped_improving, train_point
from .wording import share

__all__ = ["ScalingStudyConfig", "scaling_point", "stopped_improving", "PowerLawFit", "fit_power_law",
           "describe_fit", "fit_table", "describe_scaling", "data_table", "capacity_table", "frontier_table",
           "learning_curves", "PAPER_TARGET", "REACH", "describe_frontier_shift", "FULL_STUDY", "StudyReading", "study_reading", "DICTIONARIES", "dictionary_downloads", "main"]

#: The paper's held-out (R^2, q*) of TSAE atoms that the frontier is measured against (Gemma2-2B, paper §6).
PAPER_TARGET = (round(PAPER_ATOMS[0]["r2_aip"], 3), round(PAPER_ATOMS[0]["q_star"], 3))
#: The value whose ``|M|`` a fit is asked for ("the fit reaches 0.99 at ...").
REACH = 0.99


@dataclass
class ScalingStudyConfig:
    """The scaling study (chapter 7's parameters; ``params/scaling.yaml`` is the full study)."""

    models: tuple[str, ...] = ("smollm2-135m", "gemma3-270m")
    """Models (registered names)."""
    layers: tuple = (1, "middle")
    """Residual-stream layers; ``"middle"`` is block ``n_layers // 2`` of each model."""
    m_values: tuple[tuple[int, ...], ...] = ((2**14, 2**15, 2**17, 2**19, 2**21, 2**23),
                                             (2**11, 2**13, 2**15, 2**17, 2**19))
    """Data sizes ``|M|`` (training tokens), one list per entry of ``layers``; the largest is the fitting pool (``S``
    is fitted on all of it, every point trains on its first ``|M|`` rows)."""
    corpus: str = "docstrings"
    """Text for activations (``fit_split``: training and ``S``; ``eval``: held-out). The full study uses the largest
    offline corpus (``params/scaling.yaml``: ``python-source``, its ``train`` split); ``docstrings`` holds about
    256k ``fit`` tokens."""
    fit_split: str = "fit"
    """Corpus split of the training pool (and ``S``): ``"fit"``, or ``"train"`` (80 % of a corpus: the only split of the
    site corpora holding ``2^23`` tokens; it is the *default model's* training text, never seen by the real LLMs, so
    for them it is held out like the others). Held-out activations always come from ``"eval"``."""
    base_multiple: float = 4
    """``|D|`` of the data-scaling points, in multiples of ``d_model`` (paper: 4H)."""
    d_multiples: tuple[float, ...] = (1, 4, 16)
    """``|D|`` multiples at the largest ``|M|`` (capacity)."""
    seeds: tuple[int, ...] = (0, 1)
    """Seeds at the largest ``|M|`` and base ``|D|`` (initialisation and data order; the activations are the same);
    every other point runs the first."""
    l0_coefficient: float = 3e-3
    """TSAE L0 coefficient of the data-scaling points."""
    l0_sweep: tuple[float, ...] = (1e-3, 3e-3, 1e-2, 3e-2)
    """L0 coefficients at the smallest and the largest ``|M|`` (the frontier)."""
    n_eval_tokens: int = 32768
    """Held-out activations: the first half for the learning curves and the stopping rule, the second for the
    reported numbers."""
    n_train_eval: int = 8192
    """Training activations (at most ``|M|``) on which training-set metrics are computed."""
    batch_size: int = 4096
    """Tokens per step (at most ``|M|``)."""
    max_steps: int = 4096
    """Step cap per point (4096 steps of 4096 tokens: two epochs of ``2^23``)."""
    eval_every: int = 100
    """Steps between evaluations of the learning curve."""
    patience: int = 5
    """Evaluations of the stopping rule's window."""
    tol: float = 1e-3
    """Smallest improvement of held-out ``R^2`` that counts."""
    warmup_steps: int = 200
    """Steps over which the L0 coefficient rises from 0 (no stop before them)."""
    lr: float = 3e-3
    """Adam's learning rate (constant)."""
    n_splice_tokens: int = 2048
    """Held-out tokens (``eval`` split) on which every point's TSAE is spliced into the model for ``ce_loss_score``
    and ``kl_div_score`` (0: not spliced)."""
    sweep_models: tuple[str, ...] | None = None
    """Models that get the capacity, seed and L0-coefficient sweeps (None: every model)."""
    sweep_layers: tuple | None = None
    """Entries of ``layers`` (``1``, ``"middle"``) at which the sweeps run (None: every layer)."""
    export_largest: bool = False
    """Write the dictionary of the data-scaling point at the largest ``|M|`` of every model and layer as a SAELens
    zip with its model card into the ledger (``results/scaling/dictionaries/``), for the book's downloads."""
    seq_len: int = 128
    store_dtype: str = "bfloat16"
    """Storage dtype of the activation stores (bfloat16: 2^23 tokens of SmolLM2 take 9.7 GB)."""
    device: str = "cpu"
    dtype: str = "float32"

    @classmethod
    def from_mapping(cls, values: dict) -> "ScalingStudyConfig":
        """The config of a chapter's (or a parameter file's) values: lists become tuples, keys that are not fields
        (``threads``, ``backend``, ...) are ignored."""
        names = {f.name for f in fields(cls)}
        conv = {k: (tuple(tuple(x) for x in v) if k == "m_values" else tuple(v) if isinstance(v, list) else v)
                for k, v in values.items() if k in names}
        return cls(**conv)

    # ------------------------------------------------------------------------------------------------- validation
    def _layer_list(self, n_layers: int) -> list[int]:
        return [n_layers // 2 if l == "middle" else int(l) for l in self.layers]

    def validate(self, *, check_corpus: bool = True) -> dict[str, tuple[int, int]]:
        """Raise for an impossible study, before any work; return ``{model: (n_layers, d_model)}``.

        Checks every field's type and range, the models and layers, ``|M|`` against ``S``'s need of
        ``20 x d_model`` tokens, and (``check_corpus``) that the corpus holds the largest ``|M|`` (``fit_split``) and
        ``n_eval_tokens`` (``eval`` split) for every model's tokenizer (tokenised only as far as needed: minutes for
        ``2^23`` tokens; a reader of the ledger lists the points with ``check_corpus=False``).

        Raises:
            TypeError: a field of the wrong type.
            ValueError: a value out of range, naming the field, the value and what is allowed; a corpus too small.
            ModelNotFoundError: an unknown model.
        """
        def ints(name, values, minimum=1):
            vals = list(values)
            if not vals or any(isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum
                               for v in vals):
                raise ValueError(f"{name}={values!r} is not allowed: a non-empty list of integers >= {minimum}")
            if len(set(vals)) != len(vals):
                raise ValueError(f"{name}={values!r} names a value twice")
            return vals

        def pos(name, values):
            vals = list(values)
            if not vals or any(isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0
                               for v in vals) or len(set(vals)) != len(vals):
                raise ValueError(f"{name}={values!r} is not allowed: a non-empty list of distinct finite numbers > 0")
            return vals

        if isinstance(self.models, str) or not self.models:
            raise TypeError(f"models={self.models!r} is not allowed: a non-empty list of model names")
        if not self.layers or any(not (l == "middle" or (isinstance(l, int) and not isinstance(l, bool) and l >= 0))
                                  for l in self.layers):
            raise ValueError(f"layers={self.layers!r} is not allowed: a non-empty list of integers >= 0 or 'middle'")
        if len(self.m_values) != len(self.layers):
            raise ValueError(f"m_values has {len(self.m_values)} lists for {len(self.layers)} layers "
                             f"{list(self.layers)}: give one list of |M| per layer")
        for i, ms in enumerate(self.m_values):
            ints(f"m_values[{i}]", ms)
        ints("seeds", self.seeds, 0)
        pos("d_multiples", self.d_multiples), pos("l0_sweep", self.l0_sweep)
        for name in ("base_multiple", "l0_coefficient", "tol", "lr"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v <= 0:
                raise ValueError(f"{name}={v!r} is not allowed: a finite number > 0")
        for name, minimum in (("n_eval_tokens", 1), ("n_train_eval", 1), ("batch_size", 1), ("max_steps", 1),
                              ("eval_every", 1), ("patience", 1), ("seq_len", 2), ("warmup_steps", 0)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
                raise ValueError(f"{name}={v!r} is not allowed: an integer >= {minimum}")
        if self.n_eval_tokens < 4:
            raise ValueError(f"n_eval_tokens={self.n_eval_tokens} is not allowed: >= 4 (two halves of >= 2)")
        for name, allowed, what in (("sweep_models", self.models, "models"), ("sweep_layers", self.layers, "layers")):
            v = getattr(self, name)
            if v is not None and (isinstance(v, str) or not v or any(x not in allowed for x in v)):
                raise ValueError(f"{name}={v!r} is not allowed: None or a non-empty list of entries of {what} "
                                 f"{list(allowed)}")
        if not isinstance(self.export_largest, bool):
            raise ValueError(f"export_largest={self.export_largest!r} is not allowed: true or false")
        if isinstance(self.n_splice_tokens, bool) or not isinstance(self.n_splice_tokens, (int, np.integer)) \
                or self.n_splice_tokens < 0:
            raise ValueError(f"n_splice_tokens={self.n_splice_tokens!r} is not allowed: an integer >= 0")
        if self.max_steps < self.eval_every:
            raise ValueError(f"max_steps={self.max_steps} < eval_every={self.eval_every}: no evaluation would run")
        if not isinstance(self.corpus, str) or not self.corpus:
            raise TypeError(f"corpus={self.corpus!r} is not allowed: a corpus source name")
        if self.fit_split not in ("fit", "train"):
            raise ValueError(f"fit_split={self.fit_split!r} is not allowed: 'fit' or 'train' ('eval' is the held-out "
                             "split)")
        shapes = {}
        for model in self.models:
            n_layers, d_model = check_model(model)
            layers = self._layer_list(n_layers)
            bad = [l for l in layers if not 0 <= l <= n_layers]
            if bad:
                raise ValueError(f"layer(s) {bad} out of range for {model!r}: allowed 0..{n_layers} or 'middle'")
            if len(set(layers)) != len(layers):
                raise ValueError(f"layers {list(self.layers)} resolve to {layers} for {model!r}: a layer twice")
            for ms in self.m_values:
                if max(ms) < MIN_TOKENS_PER_DIM * d_model:
                    raise ValueError(f"the largest |M| {max(ms)} is below {MIN_TOKENS_PER_DIM} x d_model = "
                                     f"{MIN_TOKENS_PER_DIM * d_model} needed to fit S for {model!r} (SPEC §1.1)")
            sizes = [int(round(k * d_model)) for k in (*self.d_multiples, self.base_multiple)]
            if min(sizes) < 1:
                raise ValueError(f"a |D| multiple gives fewer than 1 latent for d_model={d_model}")
            shapes[model] = (n_layers, d_model)
            if check_corpus:
                self._check_corpus(model)
        return shapes

    def _check_corpus(self, model: str) -> None:
        """The corpus holds the largest pool (``fit_split``) and the held-out tokens for ``model``'s tokenizer."""
        from transformers import AutoTokenizer  # heavy; only when the corpus is checked

        check_data(SimpleNamespace(model=model, corpus=self.corpus, seq_len=self.seq_len, seeds=(0,),
                                   n_eval_tokens=self.n_eval_tokens))  # seq_len and the held-out split
        n = max(max(ms) for ms in self.m_values)
        try:
            token_windows(AutoTokenizer.from_pretrained(resolve_model_path(model)), Corpus(self.corpus),
                          self.fit_split, n_tokens=n, seq_len=self.seq_len, seed=0)
        except ValueError as exc:
            raise ValueError(f"the largest |M| {n} of m_values: {exc}") from None

    # ------------------------------------------------------------------------------------------------- the points
    def _shared(self) -> dict:
        keep = ("corpus", "fit_split", "n_eval_tokens", "n_train_eval", "batch_size", "max_steps", "eval_every",
                "patience", "tol", "warmup_steps", "lr", "n_splice_tokens", "seq_len", "store_dtype", "device", "dtype")
        return {k: getattr(self, k) for k in keep} | {"experiment": "scaling"}

    def points(self, *, check_corpus: bool = True) -> list[GridPoint]:
        """Every point of the study (data scaling, capacity, seeds, sweep; each once), after :meth:`validate`, in the
        order they run (module docstring): data scaling at the first entry of ``layers`` for every model, then the
        sweeps (``sweep_models`` x ``sweep_layers``), then data scaling at the other layers."""
        shapes = self.validate(check_corpus=check_corpus)
        groups: dict[int, list[GridPoint]] = {0: [], 1: [], 2: []}
        seen = set()
        for model, (n_layers, d_model) in shapes.items():
            for i, (entry, layer, ms) in enumerate(zip(self.layers, self._layer_list(n_layers), self.m_values)):
                ms = sorted(int(m) for m in ms)
                base = int(round(self.base_multiple * d_model))
                shared = self._shared() | {"n_fit_tokens": ms[-1]}
                todo = [(0 if i == 0 else 2, m, base, self.seeds[0], self.l0_coefficient) for m in ms]
                if (self.sweep_models is None or model in self.sweep_models) and \
                        (self.sweep_layers is None or entry in self.sweep_layers):
                    # the frontier first, then the seeds, then capacity (the largest |D| costs most)
                    todo += [(1, m, base, self.seeds[0], float(c)) for m in (ms[0], ms[-1]) for c in self.l0_sweep]
                    todo += [(1, ms[-1], base, s, self.l0_coefficient) for s in self.seeds]
                    todo += [(1, ms[-1], int(round(k * d_model)), self.seeds[0], self.l0_coefficient)
                             for k in sorted(self.d_multiples)]
                for g, m, d, s, c in todo:
                    own = {"l0_coefficient": float(c)}
                    if self.export_largest and (m, d, s, c) == (ms[-1], base, self.seeds[0], self.l0_coefficient):
                        own["export_dictionary"] = True
                    p = GridPoint(model, layer, m, d, int(s), tuple(sorted((shared | own).items())))
                    if p.key not in seen:
                        seen.add(p.key)
                        groups[g].append(p)
        return groups[0] + groups[1] + groups[2]

    def part(self, df: pd.DataFrame, which: str) -> pd.DataFrame:
        """The rows of one part of the study: ``"data"`` (base ``|D|``, first seed, the L0 coefficient, every ``|M|``),
        ``"capacity"`` (largest ``|M|`` per model and layer, first seed), ``"seeds"`` (largest ``|M|``, base ``|D|``)
        or ``"sweep"`` (base ``|D|``, first seed, smallest and largest ``|M|``).

        Raises:
            ValueError: an unknown part, or rows without the study's columns.
        """
        need = ["model", "layer", "n_train", "n_latents", "seed", "p_l0_coefficient", "d_model"]
        missing = [c for c in need if c not in df]
        if missing:
            raise ValueError(f"the rows lack {missing}; they must be scaling_point rows")
        if which not in ("data", "capacity", "seeds", "sweep"):
            raise ValueError(f"part {which!r} is unknown: 'data', 'capacity', 'seeds' or 'sweep'")
        base = (df["n_latents"] == (self.base_multiple * df["d_model"]).round().astype(int))
        first, coef = df["seed"] == self.seeds[0], np.isclose(df["p_l0_coefficient"], self.l0_coefficient)
        if "p_n_fit_tokens" in df:  # the study's own largest and smallest |M| (a ledger may hold only some rows)
            pool = df["p_n_fit_tokens"].astype(int)
            low = {max(ms): min(ms) for ms in self.m_values}
            largest, smallest = df["n_train"] == pool, df["n_train"] == pool.map(low).fillna(-1)
        else:
            g = df.groupby(["model", "layer"])["n_train"]
            largest, smallest = df["n_train"] == g.transform("max"), df["n_train"] == g.transform("min")
        mask = {"data": base & first & coef, "capacity": largest & first & coef, "seeds": largest & base & coef,
                "sweep": base & first & (largest | smallest)}[which]
        return df[mask].sort_values(["model", "layer", "n_train", "n_latents", "seed", "p_l0_coefficient"])


# ---------------------------------------------------------------------------------------------------- the point
#: The ledger's folder of dictionaries offered as downloads (relative to the ledger root, ``results/``).
DICTIONARIES = "scaling/dictionaries"


def scaling_point(point: GridPoint) -> dict:
    """One row of the study: :func:`atomsnb.scaling_train.train_point` (a TSAE trained until its held-out ``R^2``
    stops improving, then evaluated) with its ``provenance`` (:func:`atomsnb.ledger.provenance` of ``train_point``,
    taken before the work starts, so the row names the code that was loaded when it ran).

    A point with ``export_dictionary`` in its params (``export_largest``) also writes its dictionary as a SAELens zip
    with a model card (:func:`atomsnb.export.zip_export`) to ``<ledger root>/scaling/dictionaries/`` and records its
    name and SHA-256 in the row (``download``, ``download_sha256``), so a reader of the ledger checks the file.

    Returns:
        The columns of :func:`~atomsnb.scaling_train.train_point` and ``provenance`` (and the download's columns).
    """
    prov = provenance(train_point, point)
    row, units = train_point(point, return_units=True)
    if point.param("export_dictionary", False):
        row.update(_export_dictionary(point, units, row))
    return {**row, "provenance": prov}


def _export_dictionary(point: GridPoint, units, row: dict) -> dict:
    """Write one point's dictionary as a SAELens zip with its model card; returns the row's download columns."""
    name = f"{point.model}-layer{point.layer}-M{point.n_train}-D{point.n_latents}"
    out = ledger_root() / DICTIONARIES
    with tempfile.TemporaryDirectory(prefix=".export-", dir=ledger_root()) as work:
        folder = export_saelens(units, Path(work) / name, layer=point.layer, model_name=point.model)
        path = zip_export(folder, out / f"{name}.zip", corpus=f"{point.param('corpus')} ({point.param('fit_split')} "
                          "split)", n_tokens=point.n_train, n_steps=max(1, int(row["steps"])),
                          coefficients={"l0_coefficient": float(point.param("l0_coefficient"))},
                          metrics={k: float(row[f"heldout_{k}"]) for k in ("r2_aip", "q_star", "l0",
                                                                              "explained_variance")},
                          overwrite=True)
    return {"download": path.name, "download_sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def dictionary_downloads(rows: pd.DataFrame, *, ledger: Ledger | None = None) -> dict[str, Path]:
    """The ledger's dictionary zips of the current rows that carry one, each checked against the SHA-256 its row
    recorded.

    Returns:
        ``{row key: zip path}``.

    Raises:
        CacheCorruptError: a zip is missing or its bytes differ from what its row recorded (it would offer a
            dictionary other than the one measured).
    """
    base = (ledger.dir.parent if ledger is not None else ledger_root()) / DICTIONARIES
    out = {}
    if "download" not in rows:
        return out
    for _, r in rows.iterrows():
        if not isinstance(r.get("download"), str) or bool(r.get("stale", False)):
            continue
        path = base / r["download"]
        if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != r["download_sha256"]:
            raise CacheCorruptError(f"{path.name}: missing or not the file its ledger row {r['key']} recorded "
                                    f"(sha256 {r['download_sha256'][:12]}...); rerun `make scaling` for that point")
        out[r["key"]] = path
    return out


# ---------------------------------------------------------------------------------------------------- the fits
@dataclass(frozen=True)
class PowerLawFit:
    """``y = a |M|^(-alpha) + c`` fitted by least squares (:func:`fit_power_law`); ``y = 1 - R^2`` (or ``1 - q*``).

    Attributes:
        a, alpha, c: the fitted parameters (``a, c >= 0``; ``alpha`` in ``[0.01, 3]``).
        ci: 95 % bootstrap intervals ``{"a", "alpha", "c", "ceiling", "m_reach"}`` (``m_reach`` may be ``inf``).
        m_reach: the ``|M|`` where the fitted value ``1 - y`` reaches :data:`REACH` (``inf``: not within the fit).
        m_min, m_max: the range of ``|M|`` fitted.
        n_points: points fitted.
        rmse: root-mean-square residual.
    """

    a: float
    alpha: float
    c: float
    ci: dict
    m_reach: float
    m_min: float
    m_max: float
    n_points: int
    rmse: float

    @property
    def ceiling(self) -> float:
        """``1 - c``: the value the fit levels off at as ``|M| -> inf``."""
        return 1.0 - self.c

    def predict(self, m) -> np.ndarray:
        """The fitted ``1 - y`` (e.g. ``R^2``) at ``m``."""
        return 1.0 - (self.a * np.asarray(m, float) ** (-self.alpha) + self.c)


_ALPHAS = np.geomspace(0.01, 3.0, 300)


def _solve_profile(z: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(a, c, sse)`` per row of ``z`` (``[n_alpha, n]``, ``z = (m / m_min)^-alpha``): the least squares
    ``y ~ a z + c`` with ``a, c >= 0``, solved exactly per row. With two unknowns the constrained optimum is the
    unconstrained one if feasible, else the best on a boundary (``a = 0``: ``c = mean(y)``; ``c = 0``:
    ``a = z.y / z.z``), each clipped at 0; ties go to the first of those three, in that order."""
    zm, ym = z.mean(1), y.mean()
    zc = z - zm[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        a_u = (zc @ (y - ym)) / (zc * zc).sum(1)
    c_u = ym - a_u * zm
    a_0 = np.zeros_like(zm)
    c_0 = np.full_like(zm, max(float(ym), 0.0))
    a_1 = np.maximum((z @ y) / (z * z).sum(1), 0.0)
    c_1 = np.zeros_like(zm)
    a = np.stack([a_u, a_0, a_1])  # [3 candidates, n_alpha]
    c = np.stack([c_u, c_0, c_1])
    sse = ((a[..., None] * z[None] + c[..., None] - y) ** 2).sum(-1)
    sse[0, ~((a_u >= 0) & (c_u >= 0) & np.isfinite(sse[0]))] = np.inf
    best = np.argmin(sse, 0)
    cols = np.arange(z.shape[0])
    return a[best, cols], c[best, cols], sse[best, cols]


def _fit_once(m: np.ndarray, y: np.ndarray, z_grid: np.ndarray | None = None) -> tuple[float, float, float, float]:
    """``(a, alpha, c, sse)``: the profile least squares over ``alpha`` with ``a, c >= 0`` solved exactly per alpha
    (:func:`_solve_profile`, on the grid :data:`_ALPHAS` at once; ``z_grid`` is that grid's ``z``, reused across
    bootstrap refits), refined by a bounded scalar search."""
    z0 = m / m.min()
    if z_grid is None:
        z_grid = z0[None, :] ** (-_ALPHAS[:, None])

    def sse_at(alpha: float) -> float:
        return float(_solve_profile(z0[None, :] ** (-alpha), y)[2][0])

    sse = _solve_profile(z_grid, y)[2]
    i = int(np.argmin(sse))
    lo, hi = _ALPHAS[max(i - 1, 0)], _ALPHAS[min(i + 1, len(_ALPHAS) - 1)]
    res = minimize_scalar(sse_at, bounds=(lo, hi), method="bounded", options={"xatol": 1e-6})
    alpha = float(res.x) if res.fun <= sse[i] else float(_ALPHAS[i])
    ar, c, s = (float(v[0]) for v in _solve_profile(z0[None, :] ** (-alpha), y))
    return ar * m.min() ** alpha, alpha, c, s  # a in |M| units: a_ref z^-alpha = a m^-alpha


def _m_reach(a: float, alpha: float, c: float, reach: float) -> float:
    gap = (1 - reach) - c
    if gap <= 0 or a <= 0:
        return math.inf
    return float((a / gap) ** (1 / alpha))


def fit_power_law(m: Sequence[float], y: Sequence[float], *, n_boot: int = 1000, seed: int = 0, level: float = 0.95,
                  reach: float = REACH) -> PowerLawFit:
    """Fit ``y = a m^(-alpha) + c`` (``y = 1 - R^2`` against ``|M|``) by least squares, with residual-bootstrap
    intervals (``n_boot`` refits of the fitted curve plus resampled residuals, inflated by ``sqrt(n / (n - 3))`` for
    the three fitted parameters; percentile intervals at ``level``).

    Args:
        m: data sizes (> 0), at least 4 distinct.
        y: ``1 - R^2`` (or ``1 - q*``) at each, finite.
        n_boot, seed: bootstrap refits and their seed (deterministic).
        level: the intervals' level.
        reach: the value of ``1 - y`` whose ``|M|`` is reported (:data:`REACH`).

    Raises:
        ValueError: fewer than 4 distinct ``m``, lengths that differ, non-positive ``m`` or non-finite values.
    """
    m, y = np.asarray(m, float), np.asarray(y, float)
    if m.shape != y.shape or m.ndim != 1:
        raise ValueError(f"m and y must be 1-D of the same length; got shapes {m.shape} and {y.shape}")
    if not (np.isfinite(m).all() and np.isfinite(y).all()) or (m <= 0).any():
        raise ValueError(f"m must be finite and > 0 and y finite; got m={m.tolist()}, y={y.tolist()}")
    if len(np.unique(m)) < 4:
        raise ValueError(f"a power law with a floor has 3 parameters: need at least 4 distinct |M|; got {np.unique(m)}")
    if not 0 < level < 1 or n_boot < 0:
        raise ValueError(f"level must be in (0, 1) and n_boot >= 0; got {level}, {n_boot}")
    order = np.lexsort((y, m))  # the bootstrap resamples residuals by position: fit the same rows the same way
    m, y = m[order], y[order]  # whatever order a table gives them in
    z_grid = (m / m.min())[None, :] ** (-_ALPHAS[:, None])
    a, alpha, c, sse = _fit_once(m, y, z_grid)
    fitted = a * m ** (-alpha) + c
    resid = (y - fitted) * math.sqrt(len(m) / (len(m) - 3))  # residuals of a 3-parameter fit are too small by this
    rng = np.random.default_rng(seed)
    boot = []
    for _ in range(n_boot):
        yb = fitted + rng.choice(resid, size=len(resid), replace=True)
        ab, alb, cb, _ = _fit_once(m, yb, z_grid)
        boot.append((ab, alb, cb, 1 - cb, _m_reach(ab, alb, cb, reach)))
    q = ((1 - level) / 2, (1 + level) / 2)
    ci = {}
    if boot:
        arr = np.array(boot)
        for j, name in enumerate(("a", "alpha", "c", "ceiling", "m_reach")):
            lo, hi = np.quantile(arr[:, j], q, method="nearest")
            ci[name] = (float(lo), float(hi))
    return PowerLawFit(float(a), float(alpha), float(c), ci, _m_reach(a, alpha, c, reach), float(m.min()),
                       float(m.max()), len(m), float(math.sqrt(sse / len(m))))


def _tokens(n: float) -> str:
    if not math.isfinite(n):
        return "never"
    if n >= 1e15:  # a million times the paper's 1.9B activations: the unit would hide how absurd it is
        return f"{n:.1e}"
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            v = n / scale
            return f"{v:.2g}{unit}" if v < 100 else f"{v:.0f}{unit}"  # 524K, not 5.2e+02K
    return f"{n:.0f}"


def describe_fit(fit: PowerLawFit, what: str = "held-out R²", *, reach: float = REACH) -> str:
    """One sentence reading a fit, every number-dependent word chosen from the numbers: whether the fitted ceiling
    ``1 - c`` (with its interval) lies below ``reach``, and if not, the ``|M|`` at which the fit reaches it."""
    lo, hi = fit.ci.get("ceiling", (fit.ceiling, fit.ceiling))
    span = f"{_tokens(fit.m_min)}-{_tokens(fit.m_max)} tokens"
    rate = f"{what} rises as |M|^-{fit.alpha:.2g} over {span}"
    if hi < reach:
        return (f"{what} levels off at {fit.ceiling:.3f} (95 % CI {lo:.3f}-{hi:.3f}), below {reach:g} "
                f"(the fit's floor c = {fit.c:.3f} > {1 - reach:.2g}): {reach:g} is not within the fit, so on these "
                "data more activations alone do not close the gap.")
    mlo, mhi = fit.ci.get("m_reach", (fit.m_reach, fit.m_reach))
    if lo >= reach or fit.c <= 1 - reach:
        where = (f"the fit reaches {reach:g} at about {_tokens(fit.m_reach)} tokens (95 % CI {_tokens(mlo)} to "
                 f"{_tokens(mhi)})" if math.isfinite(fit.m_reach) else f"the fit's ceiling is {fit.ceiling:.3f}")
        beyond = fit.m_reach > fit.m_max
        return (f"{rate}; {where}" + (", beyond the data fitted: an extrapolation." if beyond else ".")
                + (f" The ceiling's interval reaches down to {lo:.3f}, so the data do not rule out a floor below "
                   f"{reach:g}." if lo < reach else ""))
    return (f"{rate}; the fitted ceiling is {fit.ceiling:.3f} with a 95 % CI of {lo:.3f}-{hi:.3f}, on both sides of "
            f"{reach:g}: these data cannot tell whether more activations reach {reach:g}.")


def fit_table(data: pd.DataFrame, *, n_boot: int = 1000, seed: int = 0) -> tuple[pd.DataFrame, dict]:
    """Fits of ``1 - R^2`` and ``1 - q*`` (held-out) against ``|M|`` per model and layer (the data-scaling rows).

    Returns:
        ``(table, fits)``: one row per (model, layer, metric) with ``alpha``, ``ceiling`` and its interval,
        ``|M| at 0.99`` and its interval, ``points`` and the ``reading`` (:func:`describe_fit`); ``fits`` maps
        ``(model, layer, metric)`` to the :class:`PowerLawFit`. Groups with fewer than 4 ``|M|`` get a row saying so.
    """
    rows, fits = [], {}
    for (model, layer), g in data.groupby(["model", "layer"], sort=True):
        for metric in ("r2_aip", "q_star"):
            label = f"held-out {METRIC_LABELS[metric]}"
            base = {"model": model, "layer": int(layer), "metric": label, "points": len(g)}
            if g["n_train"].nunique() < 4:
                rows.append(base | {"reading": f"{g['n_train'].nunique()} data sizes: too few to fit 3 parameters"})
                continue
            f = fit_power_law(g["n_train"], 1 - g[f"heldout_{metric}"], n_boot=n_boot, seed=seed)
            fits[(model, int(layer), metric)] = f
            rows.append(base | {"alpha": round(f.alpha, 3), "ceiling 1 - c": round(f.ceiling, 4),
                                "ceiling 95 % CI": f"{f.ci['ceiling'][0]:.4f}-{f.ci['ceiling'][1]:.4f}",
                                f"|M| at {REACH:g}": _tokens(f.m_reach),
                                f"|M| at {REACH:g}, 95 % CI": f"{_tokens(f.ci['m_reach'][0])}-{_tokens(f.ci['m_reach'][1])}",
                                "reading": describe_fit(f, label)})
    return pd.DataFrame(rows), fits


# ---------------------------------------------------------------------------------------------------- tables
def data_table(data: pd.DataFrame) -> pd.DataFrame:
    """The data-scaling rows for a reader: index (model, layer, ``|M|``); held-out and training ``R^2``, ``q*``, L0,
    explained variance, ``ce_loss_score`` (when the rows were spliced), steps, epochs, converged."""
    cols = {"R² (AIP), held-out": data["heldout_r2_aip"].round(4), "R² (AIP), train": data["train_r2_aip"].round(4),
            "q*, held-out": data["heldout_q_star"].round(4), "L0, held-out": data["heldout_l0"].round(1),
            "explained variance, held-out": data["heldout_explained_variance"].round(4), "steps": data["steps"],
            "epochs": data["epochs"].round(2), "converged": data["converged"].map({True: "yes", False: "NO"})}
    if "ce_loss_score" in data and data["ce_loss_score"].notna().any():  # rows spliced (n_splice_tokens > 0)
        cols = {**dict(list(cols.items())[:5]), "ce_loss_score": data["ce_loss_score"].round(3), **dict(list(cols.items())[5:])}
    out = pd.DataFrame(cols)
    out.index = pd.MultiIndex.from_frame(data[["model", "layer", "n_train"]].rename(columns={"n_train": "|M|"}))
    return out


def capacity_table(rows: pd.DataFrame) -> pd.DataFrame:
    """Capacity and seed rows at the largest ``|M|``: index (model, layer, ``|D|``, seed); held-out ``R^2``, ``q*``,
    L0, converged."""
    out = pd.DataFrame({"R² (AIP), held-out": rows["heldout_r2_aip"].round(4),
                        "q*, held-out": rows["heldout_q_star"].round(4), "L0, held-out": rows["heldout_l0"].round(1),
                        "converged": rows["converged"].map({True: "yes", False: "NO"})})
    out.index = pd.MultiIndex.from_frame(rows[["model", "layer", "n_train", "n_latents", "seed"]].rename(
        columns={"n_train": "|M|", "n_latents": "|D|"}))
    return out.sort_index()


def frontier_table(sweep: pd.DataFrame, target: tuple[float, float] = PAPER_TARGET) -> pd.DataFrame:
    """The L0 sweep: index (model, layer, ``|M|``, L0 coefficient); held-out ``R^2``, ``q*``, L0 and the distance
    ``sqrt((R^2_paper - R^2)^2 + (q*_paper - q*)^2)`` from the paper's point ``target``."""
    dist = np.hypot(target[0] - sweep["heldout_r2_aip"], target[1] - sweep["heldout_q_star"])
    out = pd.DataFrame({"R² (AIP), held-out": sweep["heldout_r2_aip"].round(4),
                        "q*, held-out": sweep["heldout_q_star"].round(4), "L0, held-out": sweep["heldout_l0"].round(1),
                        f"distance from the paper's {target}": dist.round(4)})
    out.index = pd.MultiIndex.from_frame(sweep[["model", "layer", "n_train", "p_l0_coefficient"]].rename(
        columns={"n_train": "|M|", "p_l0_coefficient": "L0 coefficient"}))
    return out.sort_index()


def learning_curves(rows: pd.DataFrame) -> pd.DataFrame:
    """Long table of the learning curves: ``model, layer, n_train, n_latents, seed, l0_coefficient, step, tokens,
    r2`` (validation-half held-out ``R^2``)."""
    out = []
    for _, r in rows.iterrows():
        for s, t, v in zip(r["curve_steps"], r["curve_tokens"], r["curve_r2"]):
            out.append({"model": r["model"], "layer": r["layer"], "n_train": r["n_train"], "n_latents": r["n_latents"],
                        "seed": r["seed"], "l0_coefficient": r["p_l0_coefficient"], "step": s, "tokens": t, "r2": v})
    return pd.DataFrame(out)


def describe_frontier_shift(sweep: pd.DataFrame) -> list[str]:
    """Does scale move the L0 frontier, or only a point along it? Per model and layer, the sweep's points at the
    smallest and the largest ``|M|`` are paired by coefficient: where the largest-``|M|`` point has both a higher
    held-out ``R^2`` and a higher ``q*`` it dominates its pair. Every pair dominated: the frontier moves outward;
    none: scale moves points along it; some: in part. One line per model and layer with at least one pair, every
    word chosen from the numbers.
    """
    lines = []
    for (model, layer), g in sweep.groupby(["model", "layer"], sort=True):
        lo, hi = g[g["n_train"] == g["n_train"].min()], g[g["n_train"] == g["n_train"].max()]
        pairs = lo.merge(hi, on="p_l0_coefficient", suffixes=("_s", "_l"))
        if len(pairs) < 2 or g["n_train"].nunique() < 2:  # one coefficient is a point, not a frontier
            continue
        dr = pairs["heldout_r2_aip_l"] - pairs["heldout_r2_aip_s"]
        dq = pairs["heldout_q_star_l"] - pairs["heldout_q_star_s"]
        n_dom, n = int(((dr > 0) & (dq > 0)).sum()), len(pairs)
        how = ("the whole frontier moves outward" if n_dom == n else
               "scale moves points along the frontier, not the frontier" if n_dom == 0 else
               "the frontier moves outward in part")
        lines.append(f"{model}, layer {int(layer)}: from |M| = {_tokens(lo['n_train'].iloc[0])} to "
                     f"{_tokens(hi['n_train'].iloc[0])} tokens, at {share(n_dom, n, 'L0 coefficient')} both held-out "
                     f"R² and q* rise (R² by {dr.min():+.3f} to {dr.max():+.3f}, q* by {dq.min():+.3f} to {dq.max():+.3f}): {how}.")
    return lines


def describe_scaling(config: ScalingStudyConfig, df: pd.DataFrame, fits: dict,
                     target: tuple[float, float] = PAPER_TARGET) -> list[str]:
    """The readings of a study's rows, one line per finding, every number-dependent word chosen from the numbers:
    the fits (:func:`describe_fit`), how many points converged, the seed spread, the best capacity and the frontier's
    closest point to the paper's."""
    lines = []
    for (model, layer, metric), f in fits.items():
        lines.append(f"{model}, layer {layer}: " + describe_fit(f, f"held-out {METRIC_LABELS[metric]}"))
    n_conv, n = int(df["converged"].sum()), len(df)
    lines.append(f"{n_conv} of {n} points converged (held-out R² improved by at most the tolerance over the last "
                 f"evaluations)" + ("." if n_conv == n else f"; the other {n - n_conv} hit their step cap still "
                                    "rising, so their numbers are lower bounds."))
    seeds = config.part(df, "seeds")
    for (model, layer), g in seeds.groupby(["model", "layer"]):
        if len(g) > 1:
            lines.append(f"{model}, layer {layer}: across {len(g)} seeds at |M| = {int(g['n_train'].iloc[0])}, held-out "
                         f"R² spans {g['heldout_r2_aip'].max() - g['heldout_r2_aip'].min():.4f} and q* "
                         f"{g['heldout_q_star'].max() - g['heldout_q_star'].min():.4f}.")
    cap = config.part(df, "capacity")
    for (model, layer), g in cap.groupby(["model", "layer"]):
        best = g.loc[g["heldout_r2_aip"].idxmax()]
        lines.append(f"{model}, layer {layer}: at |M| = {int(best['n_train'])}, the best held-out R² of |D| in "
                     f"{sorted(g['n_latents'].astype(int).tolist())} is {best['heldout_r2_aip']:.4f} at |D| = "
                     f"{int(best['n_latents'])} (q* {best['heldout_q_star']:.4f}).")
    sweep = config.part(df, "sweep")
    lines += describe_frontier_shift(sweep)
    if len(sweep):
        d = np.hypot(target[0] - sweep["heldout_r2_aip"], target[1] - sweep["heldout_q_star"])
        b = sweep.loc[d.idxmin()]
        lines.append(f"Closest point of the L0 frontier to the paper's {target}: {b['model']}, layer {int(b['layer'])}, "
                     f"|M| = {int(b['n_train'])}, L0 coefficient {b['p_l0_coefficient']:g}: held-out R² "
                     f"{b['heldout_r2_aip']:.4f}, q* {b['heldout_q_star']:.4f} (distance {d.min():.4f}).")
    return lines


# ---------------------------------------------------------------------------------------------------- for other chapters
#: The full study's parameter file, relative to the repository root (``make scaling``).
FULL_STUDY = "params/scaling.yaml"


@dataclass(frozen=True)
class StudyReading:
    """What the committed full study says, for the verdicts of other chapters (:func:`study_reading`)."""

    sentence: str
    """One or more sentences computed from the ledger's current rows (or saying that there are none)."""
    evidence: str | None
    """:meth:`atomsnb.ledger.Ledger.evidence` of the rows read; None when the ledger holds no row of the study."""
    n_points: int
    """Points of the full study."""
    n_current: int
    """Of them, rows in the ledger that are current (not stale)."""


def _range_words(g: pd.DataFrame, col: str, label: str) -> str:
    lo, hi = g.iloc[0], g.iloc[-1]
    return f"{label} {lo[col]:.3f} at {_tokens(lo['n_train'])} to {hi[col]:.3f} at {_tokens(hi['n_train'])} tokens"


def study_reading(params: str = FULL_STUDY, *, ledger: Ledger | None = None, n_boot: int = 1000) -> StudyReading:
    """The full scaling study's result in words, for the "atoms near 1" verdicts of chapters 2 and 4 and the status
    page: per model and layer of the ledger's current data-scaling rows, held-out ``R^2`` and ``q*`` at the smallest
    and the largest ``|M|``, how many points converged, and the fitted ceiling of each (:func:`fit_table`, the same
    fits chapter 7 shows) where there are at least 4 data sizes. Every word is chosen from the rows.

    Args:
        params: the full study's parameter file, relative to the repository root (or absolute).
        ledger: the ledger to read (default ``Ledger("scaling")``, the committed ``results/scaling/``).
        n_boot: bootstrap refits of each fit (chapter 7 uses the same default, so the intervals agree).

    Raises:
        FileNotFoundError: no such parameter file. ValueError: as :func:`config_from_yaml`.
    """
    path = repository_root() / params  # an absolute params stays itself
    if not path.is_file():
        raise FileNotFoundError(f"the full study's parameter file {params!r} does not exist (expected under "
                                f"{repository_root().name}/)")
    config = config_from_yaml(str(path))
    ledger = ledger or Ledger("scaling")
    wanted = {p.key for p in config.points(check_corpus=False)}
    rows = ledger.read(errors="warn")
    rows = rows[rows["key"].isin(wanted) & (rows["status"] == "ok")] if len(rows) else rows
    current = rows[~rows["stale"].astype(bool)] if len(rows) else rows
    evidence = ledger.evidence(rows) if len(rows) else None
    n = len(wanted)
    if current.empty:
        why = (f"all {len(rows)} of its ledger rows are stale (refresh: {ledger.refresh})" if len(rows) else
               f"none of its {n} points is in the ledger (command: {ledger.refresh})")
        return StudyReading(f"The scaling study (chapter 7) has no current result: {why}.", evidence, n, 0)
    data = config.part(current, "data")
    _, fits = fit_table(data, n_boot=n_boot)
    parts = []
    for (model, layer), g in data.sort_values("n_train").groupby(["model", "layer"], sort=True):
        words = (f"{model} layer {int(layer)}: held-out {_range_words(g, 'heldout_r2_aip', 'R²')}, "
                 f"{_range_words(g, 'heldout_q_star', 'q*')}"
                 f" ({share(int(g['converged'].sum()), len(g), 'point')} converged)")
        for metric, label in (("r2_aip", "R²"), ("q_star", "q*")):
            f = fits.get((model, int(layer), metric))
            if f is not None:
                lo, hi = f.ci.get("ceiling", (f.ceiling, f.ceiling))
                words += (f"; fitted {label} ceiling {f.ceiling:.3f} (95 % CI {lo:.3f}-{hi:.3f}), "
                          + ("below" if hi < REACH else "above" if lo >= REACH else "on both sides of")
                          + f" {REACH:g}")
        parts.append(words)
    done = f"{len(current)} of its {n} points" if len(current) < n else f"all {n} points"
    return StudyReading(f"The scaling study (chapter 7; {done}, {evidence}): " + "; ".join(parts) + ".",
                        evidence, n, len(current))


# ---------------------------------------------------------------------------------------------------- the command
def config_from_yaml(path: str) -> ScalingStudyConfig:
    """A :class:`ScalingStudyConfig` from a parameter file (:meth:`ScalingStudyConfig.from_mapping`).

    Raises:
        ValueError: the file is not a mapping.
    """
    with open(path, encoding="utf-8") as f:
        values = yaml.safe_load(f) or {}
    if not isinstance(values, dict):
        raise ValueError(f"{path}: a parameter file must be a mapping of parameter names to values")
    return ScalingStudyConfig.from_mapping(values)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m atomsnb.scaling -f params/scaling.yaml``: run the study into its ledger, point by point (resumable;
    stale rows are recomputed, rows of points that raised are reported and removed)."""
    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("-f", "--params", required=True, help="the study's parameter file (params/scaling.yaml)")
    ap.add_argument("--ledger", default=None, help="ledger root (default: results/ of the repository)")
    ap.add_argument("--backend", default="sequential", choices=("sequential", "processes", "dask"))
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None, help="torch threads per point (default: torch's)")
    ap.add_argument("--dry-run", action="store_true",
                    help="list the points and what is done; run nothing (the corpus is not checked)")
    args = ap.parse_args(argv)
    config = config_from_yaml(args.params)
    points = config.points(check_corpus=not args.dry_run)
    ledger = Ledger("scaling", root=args.ledger)
    if args.dry_run:  # deletes nothing: says what a run would do with each point
        plan = ledger.plan([p.key for p in points])
        print(f"scaling (dry run): {len(points)} points: {Ledger.describe_plan(plan)}; ledger {ledger.dir.name}/",
              flush=True)
        for p in points:
            print(f"  {plan[p.key]:6}  {p.model} layer {p.layer} |M|={p.n_train} |D|={p.n_latents} seed={p.seed} "
                  f"l0={p.param('l0_coefficient'):g} key={p.key}")
        return 0
    n_stale = ledger.drop_stale({p.key for p in points})  # recomputed below
    print(f"scaling: {len(points)} points; {n_stale} stale rows removed for recomputation; ledger "
          f"{ledger.dir.name}/", flush=True)
    return ledger.run(points, scaling_point, backend=args.backend, max_workers=args.workers, threads=args.threads)


if __name__ == "__main__":
    sys.exit(main())
