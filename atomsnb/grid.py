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
module-level so that process pools and Dask workers can run them; each reads its activations from the
activation stores of :mod:`atomsnb.store` (one per model, layer, corpus, split and seed, collected once and
shared by every point over a shared filesystem: a point with ``|M|`` reads the first ``|M|`` rows) and scores its unit sets with :func:`atomsnb.evaluation.compare_unit_sets`, as
the chapters do. :func:`capacity_reader_table`, :func:`layer_reader_table` and :func:`compare_with_paper`
give the tables for a reader; :func:`describe_capacity` and :func:`describe_layers` the readings.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, fields, replace
from typing import Mapping, Sequence

import pandas as pd

from ._validate import check_data, check_fields, check_massive_k
from .activations import ActivationConfig
from .aip import MIN_TOKENS_PER_DIM
from .codeprint import code_fingerprint
from .evaluation import compare_unit_sets
from .massive import massive_token_mask
from .metrics import METRIC_LABELS
from .models import DEFAULT_MODEL_NAME, check_model, load_model
from .paper import CAPACITY_R2_THRESHOLD, PAPER_ATOMS, PAPER_MODEL_SIZES
from .pipeline import layer_data
from .runner import GridPoint
from .sae import SAEConfig
from .splice import eval_windows, spliced_scores
from .store import collect_store, fit_aip_from_store
from .units import UnitSetSpec

__all__ = ["CapacityGridConfig", "LayerStudyConfig", "capacity_point", "layer_point", "code_version", "EXACT_FOR_NEURONS",
           "critical_capacity", "paper_table", "compare_with_paper", "capacity_reader_table", "layer_reader_table",
           "layer_topk_reader_table",
           "critical_capacity_table", "paper_reader_table",
           "describe_capacity", "describe_layers", "PAPER_FAMILIES", "TOPK_FAMILIES"]

#: The paper's three unit-set families, the ones a layer point records, in the paper's order
#: (:data:`atomsnb.units.FAMILIES` holds every family, ablation, constructed and external included).
PAPER_FAMILIES = ("neurons", "features", "atoms")
#: The TopK families a layer study adds with ``topk=True`` (Euclidean loss on raw activations; AIP coordinates).
TOPK_FAMILIES = ("topk", "topk-aip")


def _families(df: pd.DataFrame, metric: str = "r2_aip") -> tuple[str, ...]:
    """The paper's families and the TopK families whose ``<family>_<metric>`` columns ``df`` has."""
    return PAPER_FAMILIES + tuple(f for f in TOPK_FAMILIES if f"{f}_{metric}" in df and df[f"{f}_{metric}"].notna().any())


def code_version() -> str:
    """The fingerprint (12 hex digits) of the code a grid point runs: :func:`atomsnb.codeprint.code_fingerprint` of
    :func:`capacity_point` and :func:`layer_point` (their modules' import closure, wherever those modules live, and
    the torch/transformers/safetensors versions). Part of every grid point, so results computed by other code are
    never reused from a results store."""
    return code_fingerprint(capacity_point, layer_point).digest[:12]


@functools.lru_cache(maxsize=1)
def _model(name: str, device: str, dtype: str):
    """One loaded model per process: the points of a grid share it (a worker runs them one after another)."""
    return load_model(name, device=device, dtype=dtype)


def _stores(point: GridPoint):
    """The point's fitting and held-out activation stores (:func:`atomsnb.store.collect_store`), collected once and
    shared by every point of the grid: a point with ``|M|`` reads the store's first ``|M|`` rows."""
    p = dict(point.params)
    lm = _model(point.model, p["device"], p["dtype"])
    out = []
    for split, n in (("fit", p["n_fit_tokens"]), ("eval", p["n_eval_tokens"])):
        cfg = ActivationConfig(model=point.model, layers=(point.layer,), corpus=p["corpus"], split=split, n_tokens=n,
                               seq_len=int(p.get("seq_len", 128)), seed=point.seed, device=p["device"], dtype=p["dtype"])
        out.append(collect_store(cfg, model=lm, store_dtype=p.get("store_dtype", "float32"), progress=False)[point.layer])
    return lm, out[0], out[1]


def _layer_data(point: GridPoint):
    """The point's activations and AIP (:func:`atomsnb.pipeline.layer_data` through the activation store)."""
    p = dict(point.params)
    return layer_data(point.model, point.layer, p["corpus"], p["n_fit_tokens"], p["n_eval_tokens"], point.seed,
                      p["device"], p["dtype"], lm=_model(point.model, p["device"], p["dtype"]),
                      seq_len=int(p.get("seq_len", 128)), massive_k=p.get("massive_k"), store=True,
                      store_dtype=p.get("store_dtype", "float32"))


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
    seq_len: int = 128
    """Tokens per window of text, position 0 included (and dropped)."""
    store_dtype: str = "float32"
    """Storage dtype of the activation stores the points read (``"bfloat16"`` halves the disk at paper scale)."""
    device: str = "cpu"
    dtype: str = "float32"

    def _params(self, **extra) -> dict:
        return dict(corpus=self.corpus, n_fit_tokens=self.n_fit_tokens, n_eval_tokens=self.n_eval_tokens,
                    n_steps=self.n_steps, batch_size=self.batch_size, seq_len=self.seq_len,
                    store_dtype=self.store_dtype, device=self.device, dtype=self.dtype, code=code_version(), **extra)

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
    l0_coefficient: float = 3e-3
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
        params = tuple(sorted(self._params(l0_coefficient=self.l0_coefficient,
                                           n_train_eval=self.n_train_eval, experiment="capacity").items()))
        return [GridPoint(self.model, int(self.layer), int(m), int(round(k * d_model)), int(s), params)
                for m in self.m_values for k in self.d_multiples for s in self.seeds]


def massive_tokens(point: GridPoint, k: float) -> tuple[int, int]:
    """How many of a grid point's fitting activations are massive (norm above ``k`` times the median,
    :func:`atomsnb.massive.massive_token_mask`): ``(n_massive, n_fit_tokens)``. The capacity grid streams every
    token of its store, so chapter 3 reports this count instead of excluding them."""
    p = dict(point.params)
    _, fit, _ = _stores(point)
    x = fit.read(0, p["n_fit_tokens"]).float()
    return int(massive_token_mask(x, k).sum()), int(x.shape[0])


def capacity_point(point: GridPoint) -> dict:
    """Train a TSAE with ``|D| = point.n_latents`` on the first ``|M| = point.n_train`` fitting activations and
    evaluate it on those (up to ``n_train_eval``) and on held-out activations (paper §5, SPEC §3-4).

    ``S`` is fitted on the whole fitting pool (``n_fit_tokens``), independent of ``|M|``, as the paper
    estimates ``S`` separately from the SAE's training data. Every point reads the same two activation stores
    (:mod:`atomsnb.store`): ``S`` by streaming the fitting store (cached in it, so the grid fits it once), the TSAE by
    streaming its first ``|M|`` rows (memory independent of ``|M|``: the paper's 1.9B activations fit through the
    same code), and the held-out rows in memory. The TSAE goes through :func:`atomsnb.evaluation.compare_unit_sets`, like
    every other unit set of the book.

    Returns:
        ``{"train_r2_aip", "train_q_star", "train_l0", "train_explained_variance", "heldout_r2_aip",
        "heldout_q_star", "heldout_l0", "heldout_explained_variance", "frac_dead", "n_dead", "d_model"}``
        (``frac_dead`` / ``n_dead`` on held-out activations).
    """
    p = dict(point.params)
    lm, fit, held = _stores(point)
    aip = fit_aip_from_store(fit, p["n_fit_tokens"], cache=True)
    cfg = SAEConfig.for_model(lm.d_model, n_steps=p["n_steps"], batch_size=min(p["batch_size"], point.n_train),
                             seed=point.seed, device=p["device"])
    cfg = replace(cfg, n_latents=point.n_latents)
    res = compare_unit_sets(fit, held.read(0, p["n_eval_tokens"]).float(), aip,
                            [UnitSetSpec.atoms(p["l0_coefficient"], "atoms")], cfg, n_train=point.n_train,
                            n_train_eval=min(p["n_train_eval"], point.n_train), progress=False)
    row: dict = {"d_model": lm.d_model}
    for _, r in res.table.iterrows():
        split = "heldout" if r["split"] == "held-out" else "train"
        row.update({f"{split}_{k}": float(r[k]) for k in ("r2_aip", "q_star", "l0", "explained_variance")})
        if split == "heldout":
            row.update(frac_dead=float(r["frac_dead"]), n_dead=int(r["n_dead"]))
    return row


def critical_capacity(df: pd.DataFrame, *, value: str = "train_r2_aip",
                      threshold: float = CAPACITY_R2_THRESHOLD) -> pd.Series:
    """Smallest ``|D|`` per ``|M|`` at which ``value`` reaches ``threshold`` (NaN if none): the paper's critical
    capacity (paper §5; default threshold :data:`atomsnb.paper.CAPACITY_R2_THRESHOLD`).

    Args:
        df: capacity-grid rows with ``n_train``, ``n_latents`` and ``value``.

    Returns:
        A Series indexed by ``|M|`` (ascending).

    Raises:
        ValueError: a missing column or a threshold that is not finite.
    """
    missing = [c for c in ("n_train", "n_latents", value) if c not in df]
    if missing:
        raise ValueError(f"the capacity-grid table lacks {missing}")
    if not math.isfinite(threshold):
        raise ValueError(f"threshold must be finite; got {threshold}")
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
    l0_coefficient: float = 3e-3
    """TSAE L0 coefficient."""
    l1_coefficient: float = 3e-2
    """Standard-SAE L1 coefficient."""
    massive_k: float | None = 20.0
    """Leave out tokens whose norm exceeds ``massive_k`` times the median (chapter 1); None keeps every token."""
    n_splice_tokens: int = 0
    """Held-out tokens for the spliced-in scores of every unit set (:mod:`atomsnb.splice`); 0 skips them."""
    topk: bool = False
    """Also train the TopK family at each layer, Euclidean and in AIP coordinates, with ``k`` = the atoms' held-out L0
    there, rounded (the same sparsity as the atoms)."""

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
        check_fields(self)
        d_model = self._check_common(self.resolved_layers())
        if not 1 <= self.n_train_tokens <= self.n_fit_tokens:
            raise ValueError(f"n_train_tokens={self.n_train_tokens} impossible: must be in 1..n_fit_tokens={self.n_fit_tokens}")
        if self.capacity < 1:
            raise ValueError(f"capacity must be >= 1; got {self.capacity}")
        if isinstance(self.n_splice_tokens, bool) or not isinstance(self.n_splice_tokens, int) or self.n_splice_tokens < 0:
            raise ValueError(f"n_splice_tokens={self.n_splice_tokens!r} is not allowed: an integer >= 0 (0 skips the "
                             "spliced-in scores)")
        check_massive_k(self.massive_k)
        if not isinstance(self.topk, bool):
            raise TypeError(f"topk={self.topk!r} is not allowed: True or False")
        check_data(self)
        return d_model

    def points(self) -> list[GridPoint]:
        """One point per (layer, seed), after :meth:`validate`."""
        d_model = self.validate()
        extra = {"topk": True} if self.topk else {}  # absent when False: earlier results keep their keys
        params = tuple(sorted(self._params(l0_coefficient=self.l0_coefficient,
                                           l1_coefficient=self.l1_coefficient, massive_k=self.massive_k,
                                           n_splice_tokens=self.n_splice_tokens,
                                           experiment="layers", **extra).items()))
        return [GridPoint(self.model, l, int(self.n_train_tokens), int(self.capacity * d_model), int(s), params)
                for l in self.resolved_layers() for s in self.seeds]


def layer_point(point: GridPoint) -> dict:
    """Neurons, features (ReLU + L1, Euclidean) and atoms (TSAE) at one layer, evaluated on held-out activations;
    with ``topk`` in the point's params also TopK SAEs (families ``topk``, Euclidean, and ``topk-aip``) at
    ``k = round(atoms' held-out L0)``, reported as ``topk_k``.

    With ``n_splice_tokens > 0`` every unit set is also spliced into the model (:func:`atomsnb.splice.spliced_scores`
    on that many held-out tokens; massive tokens, left out of the data, stay clean there too).

    Returns:
        ``{"<family>_<metric>": value}`` for family in neurons/features/atoms and metric in
        ``r2_aip, explained_variance, q_star, l0, frac_dead`` (and ``ce_loss_score, kl_div_score`` when spliced),
        plus ``train_<family>_r2_aip``, ``train_<family>_q_star``, ``d_model``, ``n_parameters``, ``n_massive``
        (fitting and held-out tokens left out) and ``condition_number``.
    """
    p = dict(point.params)
    data = _layer_data(point)
    cfg = replace(SAEConfig.for_model(data.d_model, n_steps=p["n_steps"], batch_size=p["batch_size"], seed=point.seed,
                                     device=p["device"]), n_latents=point.n_latents)
    specs = [UnitSetSpec.neurons(), UnitSetSpec.features(p["l1_coefficient"], "features"),
             UnitSetSpec.atoms(p["l0_coefficient"], "atoms")]
    res = compare_unit_sets(data.fit[: point.n_train], data.eval, data.aip, specs, cfg,
                            n_train_eval=min(4096, point.n_train), progress=False)
    extra: dict = {}
    if p.get("topk", False):
        held = res.table[res.table["split"] == "held-out"].set_index("family")
        k = min(point.n_latents, max(1, int(round(float(held.loc["atoms", "l0"])))))
        res = res.extend(compare_unit_sets(data.fit[: point.n_train], data.eval, data.aip,
                                           [UnitSetSpec.topk(k, name="topk"), UnitSetSpec.topk(k, whiten=True, name="topk-aip")],
                                           cfg, n_train_eval=min(4096, point.n_train), progress=False))
        extra["topk_k"] = k
    row: dict = {**extra, "d_model": data.d_model, "condition_number": data.aip.condition_number,
                 "n_parameters": int(sum(t.numel() for t in data.lm.model.parameters())),
                 "n_massive": int(sum(data.n_excluded))}
    for _, r in res.table.iterrows():
        if r["split"] == "held-out":
            row.update({f"{r['family']}_{k}": float(r[k]) for k in ("r2_aip", "explained_variance", "q_star", "l0",
                                                                     "frac_dead")})
        else:
            row.update({f"train_{r['family']}_{k}": float(r[k]) for k in ("r2_aip", "q_star")})
    if p.get("n_splice_tokens", 0):
        windows = eval_windows(data.lm, corpus=p["corpus"], n_tokens=p["n_splice_tokens"],
                               seq_len=int(p.get("seq_len", 128)), seed=point.seed)
        limit = None if data.massive_k is None else data.massive_k * float(data.fit.double().norm(dim=1).median())
        scores = spliced_scores(data.lm, res.units, windows, point.layer, keep_clean_above=limit, progress=False)
        for name, sc in scores.items():
            row.update({f"{res.units[name].family}_{k}": float(getattr(sc, k)) for k in ("ce_loss_score", "kl_div_score")})
    return row


def layer_study_configs(params: Mapping) -> list[LayerStudyConfig]:
    """Chapter 4's parameters (or a parameter file's, e.g. ``params/gemma-2-2b.yaml``) as one
    :class:`LayerStudyConfig` per model: ``models``, ``layers`` (None, or one list or None per model) and any field of
    :class:`LayerStudyConfig`; a field the mapping leaves out keeps the config's default, other keys (``threads``,
    ``backend``, ...) are ignored. Not validated here (:meth:`LayerStudyConfig.points` validates).

    Raises:
        ValueError: ``models`` is not a non-empty list, or ``layers`` does not hold one entry per model.
    """
    models, layers = params.get("models"), params.get("layers")
    if isinstance(models, str) or not isinstance(models, (list, tuple)) or not models:
        raise ValueError(f"models={models!r} is not allowed: a non-empty list of model names, directories or hub ids")
    if layers is not None and len(layers) != len(models):
        raise ValueError(f"layers must hold one list (or None) per model: {len(models)} models, {len(layers)} lists")
    names = {f.name for f in fields(LayerStudyConfig)} - {"model", "layers"}
    conv = {k: tuple(v) if isinstance(v, list) else v for k, v in params.items() if k in names}
    return [LayerStudyConfig(model=m, layers=None if ls is None else tuple(ls), **conv)
            for m, ls in zip(models, layers if layers is not None else [None] * len(models))]


def _layers_label(layers) -> str:
    """'5', '1-26' for a contiguous run, else the list '8, 15, 23' (an average over a subset says which)."""
    ls = sorted({int(l) for l in layers})
    if len(ls) == 1:
        return str(ls[0])
    return f"{ls[0]}-{ls[-1]}" if ls == list(range(ls[0], ls[-1] + 1)) else ", ".join(map(str, ls))


def paper_table(df: pd.DataFrame) -> pd.DataFrame:
    """Aggregate a layer study's rows into the paper's format: ``R^2`` and ``q*`` per unit set averaged over layers.

    Args:
        df: rows of :func:`layer_point` (one per layer; rows with ``status != "ok"`` are left out), as read from the
            results store.

    Returns:
        One row per (model, unit set) with ``layers`` (range), ``n_layers``, ``r2_aip`` and ``q_star`` (means over
        layers, fractions).

    Raises:
        ValueError: no row with ``status == "ok"``, or a missing metric column.
    """
    ok = df[df["status"] == "ok"]
    if ok.empty:
        raise ValueError("no layer finished (no row with status 'ok'): nothing to aggregate")
    missing = [f"{f}_{k}" for f in PAPER_FAMILIES for k in ("r2_aip", "q_star") if f"{f}_{k}" not in ok]
    if missing:
        raise ValueError(f"the layer rows lack {missing}; they must come from grid.layer_point")
    rows = []
    for model, g in ok.groupby("model", sort=False):
        model = DEFAULT_MODEL_NAME if model == "default" else model
        for fam in _families(g):
            rows.append({"model": model, "unit set": fam, "layers": _layers_label(g["layer"]),
                         "n_layers": int(g["layer"].nunique()), "r2_aip": g[f"{fam}_r2_aip"].mean(),
                         "q_star": g[f"{fam}_q_star"].mean()})
    return pd.DataFrame(rows)


def compare_with_paper(ours: pd.DataFrame, paper: Sequence[dict] = PAPER_ATOMS, *,
                       sizes: dict[str, int] | None = None, ledger: pd.DataFrame | None = None,
                       evidence: str | None = None) -> pd.DataFrame:
    """The paper's per-model rows beside ours (atoms, averaged over layers): chapter 4's table, for a reader.

    Args:
        ours: the output of :func:`paper_table`.
        paper: the paper's rows (default :data:`atomsnb.paper.PAPER_ATOMS`).
        sizes: our models' parameter counts, shown in a ``parameters`` column beside the paper's models' nominal
            sizes (:data:`atomsnb.paper.PAPER_MODEL_SIZES`), so the size difference is in the table.
        ledger: :func:`paper_table` of the committed rows of :mod:`atomsnb.layer_ledger` (the paper's models run
            elsewhere), used for a paper model this build did not run; ``evidence`` says where they come from.

    Returns:
        Rows with ``model``, ``layers``, ``source`` (``"paper"``, ``"ours (this build)"``, ``"ours (<evidence>)"`` or
        ``"not run here"``), ``R² (AIP)`` and ``q*`` formatted as percentages, and for rows not run here the
        ``command`` that computes them into the ledger. Models of ours that the paper did not report follow the
        paper's rows.

    Raises:
        ValueError: ``ledger`` without ``evidence``.
    """
    if ledger is not None and not evidence:
        raise ValueError("ledger rows need their evidence (Ledger.evidence): the table must say where they come from")
    atoms = ours[ours["unit set"] == "atoms"]
    committed = ledger[ledger["unit set"] == "atoms"] if ledger is not None else atoms.iloc[:0]
    pct = lambda v: f"{100 * v:.2f}%"  # noqa: E731
    r2, q = METRIC_LABELS["r2_aip"], METRIC_LABELS["q_star"]
    sizes = sizes or {}
    human = lambda n: f"{n / 1e9:.1f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"  # noqa: E731
    rows = []
    for r in paper:
        rows.append({"model": r["model"], "parameters": PAPER_MODEL_SIZES.get(r["model"], ""), "layers": r["layers"],
                     "source": "paper", r2: pct(r["r2_aip"]), q: pct(r["q_star"])})
        mine, source = atoms[atoms["model"] == r["model"]], "ours (this build)"
        if mine.empty:
            mine, source = committed[committed["model"] == r["model"]], f"ours ({evidence})"
        if len(mine):
            rows.append({"model": r["model"], "parameters": PAPER_MODEL_SIZES.get(r["model"], ""),
                         "layers": mine["layers"].iloc[0], "source": source,
                         r2: pct(mine["r2_aip"].iloc[0]), q: pct(mine["q_star"].iloc[0])})
        else:
            rows.append({"model": r["model"], "parameters": PAPER_MODEL_SIZES.get(r["model"], ""),
                         "layers": r["layers"], "source": "not run here",
                         "command": f"make layers-ledger PARAMS={r['params']}"})
    reported = {r["model"] for r in paper}
    for _, r in atoms[~atoms["model"].isin(reported)].iterrows():
        rows.append({"model": r["model"], "parameters": human(sizes[r["model"]]) if r["model"] in sizes else "",
                     "layers": r["layers"], "source": "ours (this build)", r2: pct(r["r2_aip"]), q: pct(r["q_star"])})
    return pd.DataFrame(rows).fillna("")


# ---------------------------------------------------------------------------------------------------------------------
# Tables and readings for a reader
# ---------------------------------------------------------------------------------------------------------------------
def capacity_reader_table(df: pd.DataFrame) -> pd.DataFrame:
    """Chapter 3's grid for a reader: one row per ``(|M|, |D|)``, training and held-out metrics side by side.

    Args:
        df: capacity-grid rows (``n_train``, ``n_latents``, ``train_/heldout_`` ``r2_aip``, ``q_star``, ``l0``).

    Returns:
        Index ``(|M| (training activations), |D| (latents))``; columns ``R² (AIP), train``, ``R² (AIP), held-out``,
        ``q*, train``, ``q*, held-out`` (3 decimals), ``L0 (latents/token), train``, ``L0 (latents/token), held-out``
        (1 decimal).
    """
    cols = {}
    for metric, digits in (("r2_aip", 3), ("q_star", 3), ("l0", 1)):
        for split, label in (("train", "train"), ("heldout", "held-out")):
            cols[f"{METRIC_LABELS[metric]}, {label}"] = df[f"{split}_{metric}"].round(digits).to_numpy()
    idx = pd.MultiIndex.from_arrays([df["n_train"].to_numpy(), df["n_latents"].to_numpy()],
                                    names=["|M| (training activations)", "|D| (latents)"])
    return pd.DataFrame(cols, index=idx).sort_index()


def critical_capacity_table(df: pd.DataFrame, *, threshold: float = CAPACITY_R2_THRESHOLD) -> pd.DataFrame:
    """The critical ``|D|`` per ``|M|`` on training and on held-out activations, for a reader.

    Returns:
        Index ``|M| (training activations)``; columns ``critical |D|, train`` and ``critical |D|, held-out``
        (nullable integers: ``<NA>`` where no ``|D|`` of the grid reaches ``R² >= threshold``).
    """
    out = pd.DataFrame({"critical |D|, train": critical_capacity(df, value="train_r2_aip", threshold=threshold),
                        "critical |D|, held-out": critical_capacity(df, value="heldout_r2_aip", threshold=threshold)})
    out.index.name = "|M| (training activations)"
    return out.astype("Int64")


def paper_reader_table(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`paper_table` for a reader: index (model, unit set); ``layers``, ``R² (AIP)`` and ``q*`` (3 decimals)."""
    out = table.set_index(["model", "unit set"])
    return pd.DataFrame({"layers": out["layers"], METRIC_LABELS["r2_aip"]: out["r2_aip"].round(3),
                         METRIC_LABELS["q_star"]: out["q_star"].round(3)})


#: The neurons' metrics that the identity reconstruction makes exactly 1 (:func:`layer_reader_table` leaves them out
#: when they are).
EXACT_FOR_NEURONS = ("r2_aip", "ce_loss_score")


def _layer_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The ok rows of :func:`layer_point`, sorted and indexed by ``layer`` (``(model, layer)`` for several models)."""
    ok = df[df["status"] == "ok"] if "status" in df else df
    index = ["model", "layer"] if "model" in ok and ok["model"].nunique() > 1 else ["layer"]
    return ok.sort_values(index, kind="stable").set_index(index)


def layer_reader_table(df: pd.DataFrame) -> pd.DataFrame:
    """Chapter 4's per-layer results for a reader: held-out ``R²`` (AIP) and ``q*`` per family of the paper's table
    (neurons, features, atoms), and the atoms' L0. The TopK families are in :func:`layer_topk_reader_table`, so that
    each table fits the book's column.

    Args:
        df: :func:`layer_point` rows (``layer``, ``<family>_r2_aip``, ``<family>_q_star``, ``atoms_l0``,
            ``status``, optionally ``model`` and ``<family>_ce_loss_score``).

    Returns:
        Index ``layer`` (``(model, layer)`` for several models); columns a two-level header (metric, family), 3
        decimals (``ce_loss_score`` when the rows have it); L0 with 1 decimal. The neurons' ``R²`` and
        ``ce_loss_score`` are left out when every one of them is 1.000, as the identity makes them (so that the table
        fits the book's column); any other value is shown.
    """
    ok = _layer_rows(df)
    metrics = ["r2_aip", "q_star"] + [m for m in ("ce_loss_score",) if f"atoms_{m}" in ok]
    cols = {(METRIC_LABELS.get(m, m), fam): ok[f"{fam}_{m}"].round(3) for m in metrics for fam in PAPER_FAMILIES
            if not (fam == "neurons" and m in EXACT_FOR_NEURONS and (ok[f"{fam}_{m}"].round(3) == 1).all())}
    cols[(METRIC_LABELS["l0"], "atoms")] = ok["atoms_l0"].round(1)
    return pd.DataFrame(cols)


def layer_topk_reader_table(df: pd.DataFrame) -> pd.DataFrame | None:
    """The TopK families of chapter 4 beside the atoms, per layer: held-out ``R²`` (AIP), ``q*`` (and
    ``ce_loss_score``) of the atoms and of each TopK flavour, and the ``k`` they were trained at (the atoms' L0).

    Returns:
        Index as :func:`layer_reader_table`; columns (metric, family), 3 decimals; ``TopK k``. None when the rows
        have no TopK family (``LayerStudyConfig.topk`` off).
    """
    ok = _layer_rows(df)
    fams = [f for f in _families(ok) if f not in PAPER_FAMILIES]
    if not fams:
        return None
    metrics = ["r2_aip", "q_star"] + [m for m in ("ce_loss_score",) if f"atoms_{m}" in ok]
    cols = {(METRIC_LABELS.get(m, m), fam): ok[f"{fam}_{m}"].round(3) for m in metrics for fam in ("atoms", *fams)
            if f"{fam}_{m}" in ok}
    cols[(METRIC_LABELS["k"], "topk")] = ok["topk_k"]
    return pd.DataFrame(cols)


def describe_capacity(df: pd.DataFrame, *, threshold: float = CAPACITY_R2_THRESHOLD) -> list[str]:
    """Chapter 3's memorisation reading: does each ``|M|``'s jump (training ``R^2 >= threshold``) survive on held-out
    activations? Every verdict word is chosen from the numbers (not a claim of the paper: SPEC §3's caveat).

    Args:
        df: capacity-grid rows (``n_train``, ``n_latents``, ``train_r2_aip``, ``heldout_r2_aip``).
        threshold: the ``R^2`` that counts as "about 1".

    Returns:
        One line per ``|M|``, a summary line and the best held-out point.
    """
    crit = critical_capacity(df, value="train_r2_aip", threshold=threshold)
    lines, survived, tested = [], 0, 0
    for m, d in crit.items():
        if pd.isna(d):
            lines.append(f"|M| = {m}: no |D| in the grid reaches training R² >= {threshold:g}.")
            continue
        row = df[(df["n_train"] == m) & (df["n_latents"] == d)].iloc[0]
        ok = row["heldout_r2_aip"] >= threshold
        survived, tested = survived + ok, tested + 1
        lines.append(f"|M| = {m}: at |D| = {int(d)}, training R² = {row['train_r2_aip']:.3f}, held-out R² = "
                     f"{row['heldout_r2_aip']:.3f}: the jump {'survives' if ok else 'does NOT survive (memorisation)'}.")
    if tested:
        lines.append("Every jump survives on held-out text: the dictionaries learn structure that transfers."
                     if survived == tested else
                     "No jump survives on held-out text: on this grid the jump is memorisation." if survived == 0 else
                     f"{survived} of {tested} jumps survive on held-out text; the others are memorisation.")
    best = df.loc[df["heldout_r2_aip"].idxmax()]
    lines.append(f"Best held-out R² in the grid: {best['heldout_r2_aip']:.3f} at |M| = {int(best['n_train'])}, "
                 f"|D| = {int(best['n_latents'])}.")
    return lines


def describe_layers(df: pd.DataFrame) -> list[str]:
    """Chapter 4's ordering sentences, one per model: at how many layers atoms are more stable than features, the mean
    ``R²`` of the three families and, when the rows have them, their mean ``ce_loss_score`` and the TopK families'
    mean ``R²``, ``q*`` and at how many layers the atoms are more stable (from :func:`layer_point` rows)."""
    ok = df[df["status"] == "ok"] if "status" in df else df
    if ok.empty:
        raise ValueError("no layer finished (no row with status 'ok')")
    groups = ok.groupby("model", sort=False) if "model" in ok else [("the model", ok)]
    lines = []
    for model, g in groups:
        higher = int((g["atoms_q_star"] > g["features_q_star"]).sum())
        n = len(g)
        where = ("at every layer" if higher == n else "at no layer" if higher == 0 else f"at {higher} of {n} layers")
        line = (f"{model}: atoms are more stable than features (higher held-out q*) {where}; mean R² in the AIP: atoms "
                f"{g['atoms_r2_aip'].mean():.3f}, features {g['features_r2_aip'].mean():.3g}, neurons "
                f"{g['neurons_r2_aip'].mean():.3f}")
        if "atoms_ce_loss_score" in g:
            better = "atoms" if g["atoms_ce_loss_score"].mean() > g["features_ce_loss_score"].mean() else "features"
            line += (f"; spliced into the model, mean ce_loss_score: atoms {g['atoms_ce_loss_score'].mean():.3f}, "
                     f"features {g['features_ce_loss_score'].mean():.3f} ({better} leave the model's next-token loss "
                     "closer to clean)")
        for fam, label in (("topk", "TopK (Euclidean)"), ("topk-aip", "TopK (AIP)")):
            if f"{fam}_q_star" in g and g[f"{fam}_q_star"].notna().any():
                above = int((g["atoms_q_star"] > g[f"{fam}_q_star"]).sum())
                line += (f"; at the atoms' L0, {label} has mean R² {g[f'{fam}_r2_aip'].mean():.3f} and q* "
                         f"{g[f'{fam}_q_star'].mean():.3f}, and the atoms are more stable than it "
                         + ("at every layer" if above == n else "at no layer" if above == 0 else f"at {above} of {n} layers"))
        lines.append(line + ".")
    return lines
