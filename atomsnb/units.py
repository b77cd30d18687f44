"""Neurons, features and atoms as candidate units: one interface, trained and evaluated the same way (paper §4-6).

A *unit set* is a dictionary with an encoder. Whatever it is (the neurons, the features of a standard
SAE, the atoms of a TSAE, the theorem's constructed TSAE, an SAE given by external weights), it
presents the same three things in raw activation coordinates, the :class:`UnitSet` protocol:

- ``codes(x)``: ``[n_tokens, n_latents]`` float64 codes of activations ``x`` ``[n_tokens, d_model]``;
- ``reconstruct(x)``: ``[n_tokens, d_model]`` float64 reconstructions;
- ``dictionary``: ``[d_model, n_latents]`` float64 atoms as columns,

plus ``name``, ``family``, ``d_model`` and ``n_latents``. :func:`evaluate_unit_set` scores any unit set
with every metric of :mod:`atomsnb.metrics`; :func:`compare_unit_sets` trains the SAE unit sets of
:class:`UnitSetSpec` s on one set of activations (and takes ready unit sets as they are), and scores
them all on held-out activations and on (a sample of) the training activations, the latter to expose
memorisation (SPEC §3). :func:`layer_data` is the one prologue every experiment shares: activations
of one layer for fitting ``S`` and training, held-out activations, and the fitted AIP.

Implementations here: :class:`Neurons` (identity dictionary, the activations as dense codes) and
:class:`SAEUnits` (any :class:`~atomsnb.sae.SparseAutoencoder`: trained JumpReLU/ReLU SAEs, the
constructed TSAE ``construct_tsae(...).sae``, ``SparseAutoencoder.from_weights(...)``).
"""

from __future__ import annotations

import math
import numbers
import time
from dataclasses import dataclass, field, replace
from typing import Protocol, Sequence, runtime_checkable

import pandas as pd
import torch

from .aip import AIP
from .codeprint import code_fingerprint
from .metrics import METRIC_LABELS, QStarResult, evaluate_dictionary
from .sae import SAEConfig, SparseAutoencoder, train_sae

__all__ = ["UnitSet", "FAMILIES", "Neurons", "SAEUnits", "UnitSetSpec", "default_unit_sets", "train_sae_cached",
           "evaluate_unit_set", "compare_unit_sets", "UnitSetResults", "LayerData", "layer_data", "reader_table",
           "train_vs_heldout_table", "describe", "SPLITS", "is_unit_set"]

#: The families a unit set can belong to (the row groups of the book's tables).
FAMILIES = ("neurons", "features", "atoms", "ablation", "constructed", "external")
#: The evaluation splits of :func:`compare_unit_sets`.
SPLITS = ("held-out", "train")


# ---------------------------------------------------------------------------------------------------------------------
# The interface
# ---------------------------------------------------------------------------------------------------------------------
@runtime_checkable
class UnitSet(Protocol):
    """What every unit set presents, in raw activation coordinates (paper §4, SPEC §4)."""

    name: str
    """Row label in tables, e.g. ``"atoms (TSAE, L0 coefficient 0.003)"``."""
    family: str
    """One of :data:`FAMILIES`."""
    d_model: int
    """Width ``H`` of the activations it reads."""
    n_latents: int
    """Number of units ``|D|``."""

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``[n, d_model]`` raw (any float dtype, CPU) -> ``[n, n_latents]`` float64."""
        ...

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``[n, d_model]`` -> ``[n, d_model]`` float64, raw coordinates."""
        ...

    @property
    def dictionary(self) -> torch.Tensor:
        """``[d_model, n_latents]`` float64, atoms as columns, raw coordinates."""
        ...


_UNIT_SET_MEMBERS = ("name", "family", "d_model", "n_latents", "codes", "reconstruct", "dictionary")


def is_unit_set(obj) -> bool:
    """Whether ``obj`` presents every member of :class:`UnitSet`.

    Looked up statically (``inspect.getattr_static``), so that a ``dictionary`` property is not computed (on
    Python 3.11 ``isinstance(obj, UnitSet)`` would evaluate it: seconds for a large whitened SAE).
    """
    import inspect

    sentinel = object()
    return all(inspect.getattr_static(obj, m, sentinel) is not sentinel for m in _UNIT_SET_MEMBERS)


def _check_name_family(name, family) -> None:
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"a unit set needs a non-empty name; got {name!r}")
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}; got {family!r}")


def _check_x(x, d_model: int, who: str) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.dim() != 2 or x.shape[1] != d_model:
        raise ValueError(f"{who} reads activations [n_tokens, d_model={d_model}]; got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{who} reads floating-point activations; got dtype {x.dtype}")
    if not bool(torch.isfinite(x).all()):
        n_bad = int((~torch.isfinite(x)).any(dim=1).sum())
        raise ValueError(f"{who}: the activations have NaN or inf in {n_bad} of {x.shape[0]} rows")
    return x


class Neurons:
    """The neurons as units (paper §4): ``D = I``, codes = the activations, exact reconstruction (SPEC §4).

    Args:
        d_model: width ``H`` of the activations.
        name: row label (default ``"neurons"``).

    Raises:
        ValueError: ``d_model < 1`` or an empty name.
    """

    family = "neurons"

    def __init__(self, d_model: int, *, name: str = "neurons"):
        if isinstance(d_model, bool) or int(d_model) != d_model or d_model < 1:
            raise ValueError(f"d_model must be an integer >= 1; got {d_model!r}")
        _check_name_family(name, "neurons")
        self.d_model = self.n_latents = int(d_model)
        self.name = name

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """The activations themselves, ``[n, d_model]`` float64."""
        return _check_x(x, self.d_model, self.name).to(torch.float64)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The activations themselves (exact), ``[n, d_model]`` float64."""
        return _check_x(x, self.d_model, self.name).to(torch.float64)

    @property
    def dictionary(self) -> torch.Tensor:
        """The identity ``[d_model, d_model]`` float64."""
        return torch.eye(self.d_model, dtype=torch.float64)

    def __repr__(self) -> str:
        return f"Neurons(d_model={self.d_model}, name={self.name!r})"


class SAEUnits:
    """The latents of a :class:`~atomsnb.sae.SparseAutoencoder` as units, in raw coordinates (paper §4-6).

    Works for trained JumpReLU TSAEs and ReLU SAEs (whitened ones need the AIP they were trained with:
    their inputs are ``W m / c``), for the theorem's constructed TSAE (``construct_tsae(D, aip, tau).sae``,
    raw coordinates, no AIP needed) and for an SAE given by external weights
    (``SparseAutoencoder.from_weights(...)``). Codes are scaled so that
    ``reconstruct(x) = codes(x) @ dictionary.T + bias`` (:meth:`SparseAutoencoder.encode_raw`).

    Args:
        sae: the SAE.
        aip: the AIP it was trained with (required when ``sae.whitened``; unused otherwise).
        name: row label.
        family: one of :data:`FAMILIES`.
        l0_coefficient, l1_coefficient: the sparsity coefficient it was trained with, for tables (NaN: not
            applicable or unknown).

    Raises:
        TypeError: ``sae`` is not a :class:`SparseAutoencoder`, or ``aip`` is not an :class:`AIP`.
        ValueError: a whitened SAE without its AIP, an AIP of another width, an empty name or an unknown family.
    """

    def __init__(self, sae: SparseAutoencoder, aip: AIP | None = None, *, name: str, family: str,
                 l0_coefficient: float = math.nan, l1_coefficient: float = math.nan):
        if not isinstance(sae, SparseAutoencoder):
            raise TypeError(f"sae must be an atomsnb.sae.SparseAutoencoder; got {type(sae).__name__}")
        _check_name_family(name, family)
        if aip is not None and not isinstance(aip, AIP):
            raise TypeError(f"aip must be an atomsnb.aip.AIP or None; got {type(aip).__name__}")
        if sae.whitened and aip is None:
            raise ValueError(f"{name!r}: this SAE works in whitened coordinates; pass the AIP it was trained with")
        if aip is not None and aip.d_model != sae.d_in:
            raise ValueError(f"{name!r}: the AIP has d_model={aip.d_model} but the SAE reads d_model={sae.d_in}")
        self.sae, self.aip, self.name, self.family = sae, aip, name, family
        self.d_model, self.n_latents = int(sae.d_in), int(sae.n_latents)
        self.l0_coefficient, self.l1_coefficient = float(l0_coefficient), float(l1_coefficient)

    def _aip(self) -> AIP | None:
        return self.aip if self.sae.whitened else None

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """Codes ``[n, n_latents]`` float64 of raw activations ``x`` ``[n, d_model]``."""
        return self.sae.encode_raw(_check_x(x, self.d_model, self.name), self._aip())

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstructions ``[n, d_model]`` float64 in raw coordinates."""
        return self.sae.reconstruct_raw(_check_x(x, self.d_model, self.name), self._aip())

    @property
    def dictionary(self) -> torch.Tensor:
        """The atoms ``[d_model, n_latents]`` float64 in raw coordinates (``W^{-1} D~`` for a whitened SAE)."""
        return self.sae.dictionary_raw(self._aip())

    def __repr__(self) -> str:
        return (f"SAEUnits({self.sae.kind}, d_model={self.d_model}, n_latents={self.n_latents}, name={self.name!r}, "
                f"family={self.family!r})")


def evaluate_unit_set(units: UnitSet, x: torch.Tensor, aip: AIP, *, estimator: str = "pairwise",
                      return_q_star: bool = False):
    """Every metric of paper §4 for one unit set on activations ``x`` (SPEC §3-4).

    Args:
        units: any :class:`UnitSet`.
        x: activations ``[n_tokens, d_model]``, raw coordinates (held out from training for held-out numbers).
        aip: the fitted AIP (``S`` from data disjoint from ``x`` for held-out numbers).
        estimator: the ``q*`` estimator, ``"pairwise"`` (P, default), ``"support"`` or ``"joint"`` (SPEC §4).
        return_q_star: also return the :class:`~atomsnb.metrics.QStarResult` (its curves, for plots).

    Returns:
        ``{"r2_aip", "explained_variance", "r2_per_dim", "r2_uncentred", "q_star", "l0", "frac_dead",
        "n_dead", "n_latents", "n_alive"}`` (fractions, counts, ``l0`` in latents per token); with
        ``return_q_star`` the tuple ``(that dict, QStarResult)``.

    Raises:
        TypeError: ``units`` does not present the :class:`UnitSet` interface, or ``aip`` is not an AIP.
        ValueError: widths disagree, NaN/inf activations, or a unit set that returns arrays of the wrong shape.
    """
    if not is_unit_set(units):
        raise TypeError(f"units must present the UnitSet interface (name, family, d_model, n_latents, codes, "
                        f"reconstruct, dictionary); got {type(units).__name__}")
    if not isinstance(aip, AIP):
        raise TypeError(f"aip must be a fitted atomsnb.aip.AIP; got {type(aip).__name__}")
    if aip.d_model != units.d_model:
        raise ValueError(f"{units.name!r} reads d_model={units.d_model} but the AIP was fitted on d_model={aip.d_model}")
    x = _check_x(x, units.d_model, units.name)
    codes, x_hat, D = units.codes(x), units.reconstruct(x), units.dictionary
    for what, t, shape in (("codes", codes, (x.shape[0], units.n_latents)), ("reconstruct", x_hat, tuple(x.shape)),
                           ("dictionary", D, (units.d_model, units.n_latents))):
        if tuple(t.shape) != shape:
            raise ValueError(f"{units.name!r}.{what} has shape {tuple(t.shape)}; the UnitSet contract asks {shape}")
    return evaluate_dictionary(x, codes, x_hat, D, aip, estimator=estimator, return_q_star=return_q_star)


# ---------------------------------------------------------------------------------------------------------------------
# Specs of unit sets to train
# ---------------------------------------------------------------------------------------------------------------------
def _coef(name: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        raise ValueError(f"{name} must be a finite number >= 0; got {v!r}")
    return float(v)


@dataclass(frozen=True)
class UnitSetSpec:
    """One unit set to train (or the neurons) in :func:`compare_unit_sets`.

    Prefer the constructors :meth:`neurons`, :meth:`features`, :meth:`atoms` and :meth:`ablation`.

    Attributes:
        name: row label, e.g. ``"atoms (TSAE, L0 coefficient 0.003)"``.
        family: one of :data:`FAMILIES` (what the paper's tables call it).
        kind: ``"neurons"``, ``"relu"`` (ReLU + L1) or ``"jumprelu"`` (TSAE).
        whiten: train in whitened AIP coordinates (True for the TSAE, False for the standard SAE).
        l0_coefficient: the L0 coefficient of a ``"jumprelu"`` SAE (required there; stored as NaN otherwise).
        l1_coefficient: the L1 coefficient of a ``"relu"`` SAE (required there; stored as NaN otherwise).

    Raises:
        ValueError: an unknown kind or family, a coefficient that does not belong to the kind, or one that is
            missing, negative or not finite.
    """

    name: str
    family: str
    kind: str
    whiten: bool = True
    l0_coefficient: float | None = None
    l1_coefficient: float | None = None

    def __post_init__(self):
        _check_name_family(self.name, self.family)
        if self.kind not in ("neurons", "relu", "jumprelu"):
            raise ValueError(f"unknown unit-set kind {self.kind!r}; use 'neurons', 'relu' or 'jumprelu'")
        takes = {"jumprelu": "l0_coefficient", "relu": "l1_coefficient", "neurons": None}[self.kind]
        for name in ("l0_coefficient", "l1_coefficient"):
            v = getattr(self, name)
            if name == takes:
                if v is None:
                    raise ValueError(f"{self.name!r}: a {self.kind!r} SAE takes an {name}; none given")
                object.__setattr__(self, name, _coef(name, v))
            else:
                if v is not None and not (isinstance(v, float) and math.isnan(v)):
                    raise ValueError(f"{self.name!r}: a {self.kind!r} unit set takes no {name}; got {v!r}")
                object.__setattr__(self, name, math.nan)

    @classmethod
    def neurons(cls, name: str = "neurons") -> "UnitSetSpec":
        """The neurons (nothing to train)."""
        return cls(name, "neurons", "neurons", whiten=False)

    @classmethod
    def features(cls, l1_coefficient: float, name: str | None = None) -> "UnitSetSpec":
        """A standard SAE: ReLU + L1, Euclidean loss on raw activations (paper §4)."""
        return cls(name or f"features (ReLU+L1, L1 coefficient {l1_coefficient:g})", "features", "relu", False,
                   l1_coefficient=l1_coefficient)

    @classmethod
    def atoms(cls, l0_coefficient: float, name: str | None = None) -> "UnitSetSpec":
        """A TSAE: JumpReLU + L0, trained in whitened AIP coordinates (paper §6, SPEC §6)."""
        return cls(name or f"atoms (TSAE, L0 coefficient {l0_coefficient:g})", "atoms", "jumprelu", True,
                   l0_coefficient=l0_coefficient)

    @classmethod
    def ablation(cls, l1_coefficient: float, name: str | None = None) -> "UnitSetSpec":
        """The ablation "ReLU + L1 in whitened AIP coordinates": the AIP without the threshold."""
        return cls(name or f"ablation: ReLU+L1 in AIP coordinates, L1 coefficient {l1_coefficient:g}", "ablation",
                   "relu", True, l1_coefficient=l1_coefficient)


#: Bump when what :func:`train_sae_cached` stores changes (the code's own hash is part of the key too).
SAE_CACHE_VERSION = 1


def _sae_cache_key(train_acts, aip: AIP | None, config: SAEConfig, n_tokens: int | None = None) -> str:
    import hashlib
    import json

    from .io import tensor_digest
    from .sae import load_sae, save_sae

    # the code that trains, saves and loads (their modules' import closure and the library versions): other code
    # never shares a cached SAE
    code = code_fingerprint(train_sae, save_sae, load_sae).digest
    parts = {"version": SAE_CACHE_VERSION, "code": code, "config": config.to_dict(),
             "threads": torch.get_num_threads(),
             "data": (tensor_digest({"acts": train_acts}) if isinstance(train_acts, torch.Tensor)
                      else [train_acts.fingerprint(), int(train_acts.n_tokens if n_tokens is None else n_tokens)]),
             "aip": None if aip is None else [tensor_digest({"sum": aip._sum}), aip.n_tokens, aip.ridge, aip.pinv]}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def train_sae_cached(train_acts, aip: AIP | None, config: SAEConfig, *, n_tokens: int | None = None, cache: bool = True,
                     progress: bool = True) -> tuple[SparseAutoencoder, pd.DataFrame, bool]:
    """:func:`atomsnb.sae.train_sae` with a cache of trained SAEs (paper §6, SPEC §6).

    The cache (``$ATOMSNB_CACHE/saes/<key>``) is keyed by everything that determines the trained weights: the
    training activations' bytes (a store's key and the prefix used), the AIP's accumulated second moment, the full :class:`SAEConfig`, the torch thread
    count, and the code that trains (:func:`atomsnb.codeprint.code_fingerprint` of :func:`atomsnb.sae.train_sae`,
    ``save_sae`` and ``load_sae``: their modules' import closure, and the torch/transformers/safetensors versions). So a chapter that
    trains the SAE another chapter trained (chapter 5 reuses chapter 2's) loads it instead, and any change to the
    data, the settings or the code trains afresh. Entries are written atomically and checksummed; a damaged one is
    reported and retrained.

    Args:
        train_acts: ``[n_tokens, d_model]`` raw activations, or an :class:`atomsnb.store.ActivationStore`.
        aip: the fitted AIP (required when ``config.whiten``).
        config: the :class:`SAEConfig`.
        n_tokens: train on the first ``n_tokens`` rows only (default all; ``|M|`` for grid points sharing a store).
        cache: False trains without reading or writing the cache.
        progress: show the trainer's progress bar.

    Returns:
        ``(sae, history, from_cache)``.

    Raises:
        ValueError: as :func:`atomsnb.sae.train_sae`.
    """
    import warnings

    from .io import CacheCorruptError, load_json, save_json
    from .paths import cache_dir
    from .sae import load_sae, save_sae

    if not cache:
        sae, hist = train_sae(train_acts, aip, config, n_tokens=n_tokens, progress=progress)
        return sae, hist, False
    folder = cache_dir("saes") / _sae_cache_key(train_acts, aip, config, n_tokens)
    try:
        sae = load_sae(folder / "sae.safetensors")
        saved = load_json(folder / "history.json", checksum=True)
        hist = pd.DataFrame(saved["data"], columns=saved["columns"])
        return sae, hist, True
    except FileNotFoundError:
        pass
    except (CacheCorruptError, KeyError, ValueError) as exc:
        warnings.warn(f"cached SAE in {folder} is damaged ({exc}); training it again", UserWarning, stacklevel=2)
    sae, hist = train_sae(train_acts, aip, config, n_tokens=n_tokens, progress=progress)
    save_json(folder / "history.json", {"columns": list(hist.columns), "data": hist.to_dict(orient="list")},
              checksum=True)
    save_sae(sae, folder / "sae.safetensors")
    return sae, hist, False


def _sae_config(spec: UnitSetSpec, config: SAEConfig) -> SAEConfig:
    """The base config with the spec's kind, coordinates and coefficient (the one place that maps them)."""
    coefficient = spec.l0_coefficient if spec.kind == "jumprelu" else spec.l1_coefficient
    return config.with_kind(spec.kind, coefficient, whiten=spec.whiten)


def default_unit_sets(l0_coefficients: Sequence[float] = (1e-3, 3e-3, 1e-2),
                      l1_coefficients: Sequence[float] = (1e-2, 3e-2, 1e-1),
                      ablation_l1_coefficient: float | None = 0.1) -> list[UnitSetSpec]:
    """Neurons, the standard-SAE features at each L1 coefficient, the TSAE atoms at each L0 coefficient, and
    (unless ``ablation_l1_coefficient`` is None) the ablation "ReLU + L1 in whitened coordinates"."""
    specs = [UnitSetSpec.neurons()]
    specs += [UnitSetSpec.features(c) for c in l1_coefficients]
    specs += [UnitSetSpec.atoms(c) for c in l0_coefficients]
    if ablation_l1_coefficient is not None:
        specs.append(UnitSetSpec.ablation(ablation_l1_coefficient))
    return specs


# ---------------------------------------------------------------------------------------------------------------------
# Comparing unit sets
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class UnitSetResults:
    """What :func:`compare_unit_sets` returns.

    Attributes:
        table: one row per unit set and split (:data:`SPLITS`: ``"held-out"``, ``"train"``) with ``unit set``,
            ``family``, ``l0_coefficient``, ``l1_coefficient`` (NaN where not applicable), ``split``, the metrics
            of :func:`evaluate_unit_set` and ``train_seconds`` (NaN for unit sets given ready).
        q_star_curves: unit-set name -> :class:`QStarResult` on held-out activations (for plots).
        units: unit-set name -> the :class:`UnitSet` (trained ones are :class:`SAEUnits`).
        histories: unit-set name -> the training history of :func:`~atomsnb.sae.train_sae` (trained sets only).
        cached: the trained sets that were loaded from the cache of :func:`train_sae_cached` instead of trained now.
    """

    table: pd.DataFrame
    q_star_curves: dict[str, QStarResult]
    units: dict[str, UnitSet]
    histories: dict[str, pd.DataFrame] = field(default_factory=dict)
    cached: list[str] = field(default_factory=list)

    @property
    def saes(self) -> dict[str, SparseAutoencoder]:
        """Unit-set name -> trained :class:`SparseAutoencoder` (the trained sets only)."""
        return {n: u.sae for n, u in self.units.items() if n in self.histories}

    def summary(self) -> str:
        """One sentence: how many SAEs were trained, in what time, and how many unit sets were evaluated."""
        trained = list(self.histories)
        held = self.table[self.table["split"] == "held-out"]
        n_eval = len(held)
        once = self.table.drop_duplicates("unit set")
        secs = float(once.loc[~once["unit set"].isin(self.cached), "train_seconds"].sum(skipna=True))
        fresh = [n for n in trained if n not in self.cached]
        if not trained:
            first = "trained no SAE"
        elif not fresh:
            first = (f"loaded {len(trained)} SAE{'s' if len(trained) > 1 else ''} ({', '.join(trained)}) from the cache "
                     "of SAEs trained earlier on the same activations with the same settings and code")
        else:
            first = (f"trained {len(fresh)} SAE{'s' if len(fresh) > 1 else ''} ({', '.join(fresh)}) in {secs:.0f} s"
                     + (f" and loaded {len(self.cached)} from the cache ({', '.join(self.cached)})" if self.cached
                        else ""))
        return f"{first}; evaluated {n_eval} unit set{'s' if n_eval != 1 else ''} on held-out activations"


def compare_unit_sets(train_acts: torch.Tensor, eval_acts: torch.Tensor, aip: AIP,
                      specs: Sequence[UnitSetSpec | UnitSet], config: SAEConfig | None = None, *,
                      n_train_eval: int = 10_000, estimator: str = "pairwise", progress: bool = True,
                      cache: bool = True, n_train: int | None = None) -> UnitSetResults:
    """Train every SAE unit set on ``train_acts``; evaluate all on held-out and on training activations.

    Args:
        train_acts: ``[n_train, d_model]`` activations for SAE training (the paper's ``M``), or an
            :class:`atomsnb.store.ActivationStore` streamed by the trainer (paper scale: memory independent of ``|M|``).
        eval_acts: ``[n_eval, d_model]`` held-out activations (disjoint text).
        aip: the AIP fitted on training activations (SPEC §1).
        specs: :class:`UnitSetSpec` s to train (:func:`default_unit_sets`), and/or ready :class:`UnitSet` s
            (a constructed TSAE, an external SAE, ...) evaluated as they are.
        config: base :class:`SAEConfig` (:meth:`SAEConfig.for_model`); the kind, coordinates and coefficient
            come from each spec. Needed only when some spec must be trained.
        n_train_eval: training activations (the first ones) also evaluated, to expose memorisation (0: none).
        estimator: the ``q*`` estimator (SPEC §4).
        progress: show the trainer's progress bar.
        cache: reuse an SAE trained before on the same data with the same settings and code
            (:func:`train_sae_cached`), and store the ones trained now.
        n_train: with a store as ``train_acts``, train on its first ``n_train`` rows (``|M|``; default all of it).

    Returns:
        :class:`UnitSetResults`.

    Raises:
        ValueError: no spec, duplicated names, widths that disagree, a negative ``n_train_eval``, or a spec to train
            without a ``config``.
        TypeError: a spec that is neither a :class:`UnitSetSpec` nor a :class:`UnitSet`.
    """
    if not specs:
        raise ValueError("no unit set to compare: give at least one spec")
    for s in specs:
        if not (isinstance(s, UnitSetSpec) or is_unit_set(s)):
            raise TypeError(f"a spec must be a UnitSetSpec or a UnitSet; got {type(s).__name__}")
    names = [s.name for s in specs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"unit-set names must be unique (they label the table rows); duplicated: {dup}")
    if any(isinstance(s, UnitSetSpec) and s.kind != "neurons" for s in specs) and config is None:
        raise ValueError("some specs must be trained: pass the base SAEConfig (e.g. SAEConfig.for_model(d_model))")
    n_train_eval = _positive_int("n_train_eval", n_train_eval, 0)
    d_model = aip.d_model
    from .store import ActivationStore

    if isinstance(train_acts, ActivationStore):
        n_avail = train_acts.n_tokens if n_train is None else _positive_int("n_train", n_train)
        if n_avail > train_acts.n_tokens or train_acts.d_model != d_model:
            raise ValueError(f"n_train={n_train} and d_model={train_acts.d_model} of the store must be at most "
                             f"{train_acts.n_tokens} and equal to the AIP's {d_model}")
        train_first = train_acts.read(0, min(int(n_train_eval), n_avail)) if n_train_eval else None
    else:
        if n_train is not None:
            raise ValueError("n_train is for a store as training source; slice an in-memory tensor instead")
        train_acts = _check_x(train_acts, d_model, "the training activations")
        n_avail, train_first = None, train_acts[: int(n_train_eval)]
    eval_acts = _check_x(eval_acts, d_model, "the held-out activations")
    splits = [("held-out", eval_acts)] + ([("train", train_first)] if n_train_eval else [])
    rows, curves, units, histories, cached = [], {}, {}, {}, []
    for spec in specs:
        t0 = time.perf_counter()
        if isinstance(spec, UnitSetSpec):
            if spec.kind == "neurons":
                u, seconds = Neurons(d_model, name=spec.name), math.nan
            else:
                sae, hist, from_cache = train_sae_cached(train_acts, aip, _sae_config(spec, config), n_tokens=n_avail,
                                                         cache=cache, progress=progress)
                if from_cache:
                    cached.append(spec.name)
                u = SAEUnits(sae, aip, name=spec.name, family=spec.family, l0_coefficient=spec.l0_coefficient,
                             l1_coefficient=spec.l1_coefficient)
                histories[spec.name], seconds = hist, time.perf_counter() - t0
        else:
            u, seconds = spec, math.nan
        if u.d_model != d_model:
            raise ValueError(f"{u.name!r} reads d_model={u.d_model} but the activations have d_model={d_model}")
        units[u.name] = u
        for split, x in splits:
            metrics, qs = evaluate_unit_set(u, x, aip, estimator=estimator, return_q_star=True)
            if split == "held-out":
                curves[u.name] = qs
            rows.append({"unit set": u.name, "family": u.family,
                         "l0_coefficient": float(getattr(u, "l0_coefficient", math.nan)),
                         "l1_coefficient": float(getattr(u, "l1_coefficient", math.nan)),
                         "split": split, **metrics, "train_seconds": seconds})
    return UnitSetResults(pd.DataFrame(rows), curves, units, histories, cached)


# ---------------------------------------------------------------------------------------------------------------------
# The shared prologue: activations of one layer and the AIP
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class LayerData:
    """Activations of one layer for an experiment, and the AIP fitted on the fitting split.

    Attributes:
        fit: ``[n_fit_tokens, d_model]`` float32 activations of the ``"fit"`` split: ``S`` is fitted on them and
            SAEs train on (the first ones of) them.
        eval: ``[n_eval_tokens, d_model]`` float32 held-out activations (the ``"eval"`` split, disjoint text).
        aip: the :class:`AIP` fitted on ``fit``.
        lm: the loaded model (:class:`atomsnb.models.LoadedModel`).
        layer: the residual-stream layer.
        fit_activations, eval_activations: the :class:`atomsnb.activations.Activations` (token ids, windows,
            positions: what contexts need), with every collected token, massive ones included.
        fit_rows, eval_rows: ``[n]`` int64 rows of ``fit_activations`` / ``eval_activations`` that ``fit`` / ``eval``
            hold (all rows unless massive tokens were excluded).
        massive_k: the criterion used to exclude massive tokens (:func:`atomsnb.massive.massive_token_mask`), or None.
        fit_store, eval_store: the :class:`atomsnb.store.ActivationStore` s the activations were read from
            (``store=True``; then ``fit_activations`` / ``eval_activations`` are None).
        n_collected: activations collected per split, ``(fit, eval)``, before any exclusion.
    """

    fit: torch.Tensor
    eval: torch.Tensor
    aip: AIP
    lm: object
    layer: int
    fit_activations: object = None
    eval_activations: object = None
    fit_rows: torch.Tensor | None = None
    eval_rows: torch.Tensor | None = None
    massive_k: float | None = None
    fit_store: object = None
    eval_store: object = None
    n_collected: tuple[int, int] = (0, 0)

    @property
    def n_excluded(self) -> tuple[int, int]:
        """Massive tokens left out of ``(fit, eval)``."""
        return (self.n_collected[0] - int(self.fit.shape[0]), self.n_collected[1] - int(self.eval.shape[0]))

    @property
    def d_model(self) -> int:
        """Width of the activations."""
        return int(self.fit.shape[1])

    def describe(self, n_latents: int) -> str:
        """One line for a reader: model, layer, ``d_model``, ``|D| = n_latents``, the training (``|M|``) and held-out
        counts, the massive tokens left out of each and cond(E[hh^T]) (chapters 2 and 5 print it)."""
        return (f"{self.lm.name}, layer {self.layer}: d_model = {self.d_model}, |D| = {int(n_latents)}; |M| = "
                f"{len(self.fit):,} training and {len(self.eval):,} held-out activations (massive tokens left out: "
                f"{self.n_excluded[0]} and {self.n_excluded[1]}); cond(E[hh^T]) = {self.aip.condition_number:.2e}")


def _positive_int(name: str, v, minimum: int = 1) -> int:
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {v!r}")
    return int(v)


def layer_data(model: str, layer: int, corpus: str, n_fit_tokens: int, n_eval_tokens: int, seed: int = 0,
               device: str = "cpu", dtype: str = "float32", lm=None, *, seq_len: int = 128, ridge: float = 0.0,
               cache: bool = True, progress: bool = False, massive_k: float | None = None,
               store: bool = False, store_dtype: str = "float32") -> LayerData:
    """Collect fitting and held-out activations of one layer and fit the AIP: every experiment's prologue.

    Activations come from :func:`atomsnb.activations.collect_activations` (cached on disk); ``S`` is fitted
    on the ``"fit"`` split only, never on the held-out one (SPEC §1.1). With ``massive_k``, massive tokens
    (norm above ``massive_k`` times the median token norm of their own split,
    :func:`atomsnb.massive.massive_token_mask`) are treated like the BOS token: left out of both splits, so that
    ``S`` is neither fitted on them nor evaluated on them (chapter 1 shows what this choice changes).

    Args:
        model: registered name, local directory or hub id.
        layer: residual-stream layer (after decoder block ``layer``; 0 = embeddings).
        corpus: text source (:class:`atomsnb.corpus.Corpus`), ``"fit"`` and ``"eval"`` splits.
        n_fit_tokens: activations of the fitting split (fits ``S``; the SAEs' training pool).
        n_eval_tokens: held-out activations.
        seed, device, dtype: as :class:`atomsnb.activations.ActivationConfig`.
        lm: an already loaded model to reuse (loaded from ``model`` if None).
        seq_len: window length in tokens, BOS included.
        ridge: relative ridge of the AIP (0: none, SPEC §1.4).
        cache: use the on-disk activation cache.
        progress: show progress bars.
        massive_k: exclude massive tokens with this criterion (a number > 1, e.g. 20); None keeps every token.
        store: collect through the activation store (:func:`atomsnb.store.collect_store`: sharded, resumable,
            shared by every experiment that reads a prefix of it) instead of the per-call activation cache, and read
            the first ``n_fit_tokens`` / ``n_eval_tokens`` rows into memory.
        store_dtype: the store's storage dtype (with ``store``).

    Returns:
        :class:`LayerData`.

    Raises:
        ValueError: a bad size or layer (before any work), or from collection.
        InsufficientTokensError, SingularSecondMomentError: from :meth:`AIP.fit` (too few fitting tokens, a
            singular second moment).
    """
    from .activations import ActivationConfig, collect_activations
    from .models import load_model

    if not isinstance(model, str) or not model:
        raise ValueError(f"model must be a non-empty string; got {model!r}")
    layer = _positive_int("layer", layer, 0)
    n_fit_tokens = _positive_int("n_fit_tokens", n_fit_tokens)
    n_eval_tokens = _positive_int("n_eval_tokens", n_eval_tokens)
    seq_len = _positive_int("seq_len", seq_len, 2)
    if massive_k is not None and (isinstance(massive_k, bool) or not isinstance(massive_k, numbers.Real)
                                  or not math.isfinite(massive_k) or massive_k <= 1):
        raise ValueError(f"massive_k must be None (keep every token) or a finite number > 1 (multiple of the median "
                         f"token norm); got {massive_k!r}")
    lm = lm if lm is not None else load_model(model, device=device, dtype=dtype)
    if layer > lm.n_layers:
        raise ValueError(f"layer {layer} out of range for {model!r}: allowed 0..{lm.n_layers}")
    common = dict(model=model, layers=(layer,), corpus=corpus, seq_len=seq_len, seed=seed, device=device, dtype=dtype)
    stores = {}
    if store:
        from .store import collect_store

        for split, n in (("fit", n_fit_tokens), ("eval", n_eval_tokens)):
            stores[split] = collect_store(ActivationConfig(split=split, n_tokens=n, **common), model=lm,
                                          store_dtype=store_dtype, progress=progress)[layer]
        fit = held = None
        x_fit = stores["fit"].read(0, n_fit_tokens).float()
        x_eval = stores["eval"].read(0, n_eval_tokens).float()
    else:
        fit = collect_activations(ActivationConfig(split="fit", n_tokens=n_fit_tokens, **common), model=lm,
                                  cache=cache, progress=progress)
        held = collect_activations(ActivationConfig(split="eval", n_tokens=n_eval_tokens, **common), model=lm,
                                   cache=cache, progress=progress)
        x_fit, x_eval = fit.acts[layer], held.acts[layer]
    n_collected = (int(x_fit.shape[0]), int(x_eval.shape[0]))
    if massive_k is None:
        fit_rows, eval_rows = torch.arange(x_fit.shape[0]), torch.arange(x_eval.shape[0])
    else:
        from .massive import massive_token_mask

        fit_rows = (~massive_token_mask(x_fit, float(massive_k))).nonzero().flatten()
        eval_rows = (~massive_token_mask(x_eval, float(massive_k))).nonzero().flatten()
        x_fit, x_eval = x_fit[fit_rows], x_eval[eval_rows]
    aip = AIP.fit(x_fit, ridge=ridge)
    return LayerData(x_fit, x_eval, aip, lm, layer, fit, held, fit_rows, eval_rows,
                     None if massive_k is None else float(massive_k), stores.get("fit"), stores.get("eval"),
                     n_collected)


# ---------------------------------------------------------------------------------------------------------------------
# Tables and readings for a reader
# ---------------------------------------------------------------------------------------------------------------------
def _fmt_coef(v) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:g}"


def reader_table(table: pd.DataFrame, split: str = "held-out") -> pd.DataFrame:
    """A reader's version of :func:`compare_unit_sets`' table: one row per unit set, rounded, units in headers.

    Args:
        table: :attr:`UnitSetResults.table`.
        split: ``"held-out"`` or ``"train"``.

    Returns:
        Index ``unit set``; columns ``family``, ``L0 coefficient``, ``L1 coefficient`` (blank where not applicable),
        ``R² (AIP)``, ``explained variance (Euclidean)``, ``q*`` (3 decimals), ``L0 (latents/token)`` (1 decimal),
        ``dead latents (%)`` (1 decimal).

    Raises:
        ValueError: an unknown split or missing columns.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}; got {split!r}")
    need = ["unit set", "family", "split", "l0_coefficient", "l1_coefficient", "r2_aip", "explained_variance", "q_star",
            "l0", "frac_dead"]
    missing = [c for c in need if c not in table]
    if missing:
        raise ValueError(f"the unit-set table lacks {missing}; pass UnitSetResults.table")
    t = table[table["split"] == split].set_index("unit set")
    out = pd.DataFrame({
        "family": t["family"],
        METRIC_LABELS["l0_coefficient"]: t["l0_coefficient"].map(_fmt_coef),
        METRIC_LABELS["l1_coefficient"]: t["l1_coefficient"].map(_fmt_coef),
        METRIC_LABELS["r2_aip"]: t["r2_aip"].round(3),
        METRIC_LABELS["explained_variance"]: t["explained_variance"].round(3),
        METRIC_LABELS["q_star"]: t["q_star"].round(3),
        METRIC_LABELS["l0"]: t["l0"].round(1),
        "dead latents (%)": (100 * t["frac_dead"]).round(1),
    })
    return out


def train_vs_heldout_table(table: pd.DataFrame) -> pd.DataFrame:
    """``R²`` (AIP) and ``q*`` on held-out and on training activations side by side, per unit set (3 decimals).

    A held-out number far below its training number is memorisation (SPEC §3).

    Raises:
        ValueError: the table has no ``"train"`` split (``n_train_eval=0``).
    """
    if not (table["split"] == "train").any():
        raise ValueError("the table has no 'train' rows: run compare_unit_sets with n_train_eval > 0")
    held = table[table["split"] == "held-out"].set_index("unit set")
    trn = table[table["split"] == "train"].set_index("unit set")
    return pd.DataFrame({f"{METRIC_LABELS['r2_aip']}, held-out": held["r2_aip"],
                         f"{METRIC_LABELS['r2_aip']}, train": trn["r2_aip"],
                         f"{METRIC_LABELS['q_star']}, held-out": held["q_star"],
                         f"{METRIC_LABELS['q_star']}, train": trn["q_star"]}).round(3)


def _span(values, fmt: str = "{:.3f}") -> str:
    """``"a-b"`` (``"a to b"`` when an end is negative), or one number when both ends print the same."""
    from .paper import _range

    return _range(values, fmt)


def describe(held: pd.DataFrame, *, condition_number: float | None = None) -> list[str]:
    """Readings of chapter 2's held-out table that are not claims of the paper (those are in :mod:`atomsnb.paper`).

    Every number-dependent word is chosen from the numbers:

    - features: Euclidean explained variance against ``R^2`` in the AIP; the explanation "a Euclidean loss
      neglects the low-variance directions that the AIP weighs" is given only where the gap exceeds
      :data:`atomsnb.paper.EUCLIDEAN_AIP_GAP` at every coefficient;
    - atoms: whether larger L0 coefficients trade faithfulness for stability monotonically;
    - the ablation (ReLU + L1 in AIP coordinates): whether the AIP lifts ``R^2`` above every Euclidean feature
      point, and whether the threshold adds stability at matched ``R^2``.

    Args:
        held: held-out rows of :attr:`UnitSetResults.table` (``family``, ``l0_coefficient``, ``r2_aip``,
            ``explained_variance``, ``q_star``, ``l0``).
        condition_number: ``cond(E[hh^T])`` of the AIP, quoted in the features sentence.

    Returns:
        The sentences, one per unit-set family present.
    """
    from .paper import EUCLIDEAN_AIP_GAP

    lines = []
    feats = held[held["family"] == "features"]
    atoms = held[held["family"] == "atoms"].sort_values("l0_coefficient")
    abl = held[held["family"] == "ablation"]
    if len(feats):
        gap = feats["explained_variance"] - feats["r2_aip"]
        line = (f"Standard-SAE features: Euclidean explained variance {_span(feats['explained_variance'])}, R² in the "
                f"AIP {_span(feats['r2_aip'], '{:.3g}')}. ")
        cond = f" (cond(E[hh^T]) = {condition_number:.1e} here)" if condition_number is not None else ""
        if (gap > EUCLIDEAN_AIP_GAP).all():
            line += (f"At every coefficient the Euclidean score is higher: a Euclidean loss neglects the low-variance "
                     f"directions that the AIP weighs equally{cond}.")
        elif (gap > EUCLIDEAN_AIP_GAP).any():
            line += (f"The Euclidean score is higher at {int((gap > EUCLIDEAN_AIP_GAP).sum())} of {len(feats)} "
                     f"coefficients only, so the neglect of low-variance directions explains part of the gap at most.")
        else:
            line += "The two scores agree, so the Euclidean loss has not neglected the directions the AIP weighs."
        lines.append(line)
    if len(atoms) >= 2:
        q_up, r_down = atoms["q_star"].is_monotonic_increasing, atoms["r2_aip"].is_monotonic_decreasing
        trend = ("larger L0 coefficients (sparser codes) buy stability at the cost of faithfulness" if q_up and r_down
                 else "larger L0 coefficients raise q* without a steady cost in R²" if q_up
                 else "larger L0 coefficients lower R² without a steady gain in q*" if r_down
                 else "no monotone trade-off between R² and q* across L0 coefficients")
        lines.append(f"TSAE atoms: R² {_span(atoms['r2_aip'])}, q* {_span(atoms['q_star'])}, L0 "
                     f"{_span(atoms['l0'], '{:.1f}')} latents/token: {trend}.")
    if len(abl) and len(feats):
        a = abl.iloc[0]
        lifts = a["r2_aip"] > feats["r2_aip"].max()
        dominated = bool(((atoms["q_star"] > a["q_star"]) & (atoms["r2_aip"] >= a["r2_aip"])).any()) if len(atoms) else False
        lines.append(f"Ablation, ReLU + L1 in AIP coordinates: R² = {a['r2_aip']:.3f}, q* = {a['q_star']:.3f}. Training "
                     f"in the AIP {'lifts' if lifts else 'does not lift'} R² above every Euclidean feature point, and "
                     f"the JumpReLU threshold {'adds' if dominated else 'does not add'} stability at matched R² ("
                     + ("some atom point has a higher q* with R² at least as high)." if dominated else
                        "no atom point has a higher q* with R² at least as high)."))
    return lines


# ---------------------------------------------------------------------------------------------------------------------
# Spliced-in scores beside the activation-space metrics (chapters 2 and 4)
# ---------------------------------------------------------------------------------------------------------------------
def with_spliced_scores(held: pd.DataFrame, spliced: dict) -> pd.DataFrame:
    """Held-out rows of :func:`compare_unit_sets` joined with :func:`atomsnb.splice.spliced_scores` per unit set.

    Args:
        held: rows with a ``unit set`` column (e.g. the ``"held-out"`` split of :attr:`UnitSetResults.table`).
        spliced: unit-set name -> :class:`atomsnb.splice.SpliceScores`.

    Returns:
        ``held`` with the score columns (``ce_loss_score``, ``kl_div_score``, ``ce_loss_with_sae``, ...) added.

    Raises:
        ValueError: a unit set of ``held`` without spliced scores, or scores of a unit set not in ``held``.
    """
    names = list(held["unit set"])
    if set(names) != set(spliced):
        raise ValueError(f"spliced scores are for {sorted(spliced)} but the table has unit sets {sorted(names)}")
    scores = pd.DataFrame([{"unit set": n, **spliced[n].as_dict()} for n in names])
    return held.merge(scores.drop(columns=["layer"], errors="ignore"), on="unit set", how="left", validate="one_to_one")


def spliced_reader_table(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`with_spliced_scores` for a reader: per unit set, the activation-space metrics beside the spliced-in ones.

    Returns:
        Index ``unit set``; ``R² (AIP)``, ``explained variance (Euclidean)``, ``q*``, ``ce_loss_score``,
        ``kl_div_score`` (3 decimals), ``CE spliced (nats)``, and the shared ``CE clean (nats)`` and
        ``CE zero-ablated (nats)`` (3 decimals).
    """
    need = ["unit set", "r2_aip", "explained_variance", "q_star", "ce_loss_score", "kl_div_score", "ce_loss_with_sae",
            "ce_loss_without_sae", "ce_loss_with_ablation"]
    missing = [c for c in need if c not in table.columns]
    if missing:
        raise ValueError(f"the table lacks columns {missing}; build it with with_spliced_scores")
    out = pd.DataFrame({
        METRIC_LABELS.get("r2_aip", "R² (AIP)"): table["r2_aip"].round(3).to_numpy(),
        METRIC_LABELS.get("explained_variance", "explained variance"): table["explained_variance"].round(3).to_numpy(),
        METRIC_LABELS.get("q_star", "q*"): table["q_star"].round(3).to_numpy(),
        "ce_loss_score": table["ce_loss_score"].round(3).to_numpy(),
        "kl_div_score": table["kl_div_score"].round(3).to_numpy(),
        "CE spliced (nats)": table["ce_loss_with_sae"].round(3).to_numpy(),
        "CE clean (nats)": table["ce_loss_without_sae"].round(3).to_numpy(),
        "CE zero-ablated (nats)": table["ce_loss_with_ablation"].round(3).to_numpy(),
    }, index=pd.Index(table["unit set"].to_numpy(), name="unit set"))
    return out
