"""Neurons, features and atoms as candidate units: one interface (paper §4-6).

A *unit set* is a dictionary with an encoder. Whatever it is (the neurons, the features of a standard
SAE, the atoms of a TSAE, the theorem's constructed TSAE, an SAE given by external weights), it
presents the same three things in raw activation coordinates, the :class:`UnitSet` protocol:

- ``codes(x)``: ``[n_tokens, n_latents]`` float64 codes of activations ``x`` ``[n_tokens, d_model]``;
- ``reconstruct(x)``: ``[n_tokens, d_model]`` float64 reconstructions;
- ``dictionary``: ``[d_model, n_latents]`` float64 atoms as columns,

plus ``name``, ``family``, ``d_model`` and ``n_latents``. Implementations here: :class:`Neurons` (identity
dictionary, the activations as dense codes) and :class:`SAEUnits` (any :class:`~atomsnb.sae.SparseAutoencoder`:
trained JumpReLU/ReLU/TopK SAEs, the constructed TSAE ``construct_tsae(...).sae``, ``SparseAutoencoder.from_weights(...)``).
:class:`UnitSetSpec` names a unit set to train (:func:`default_unit_sets`: the book's recipe).

The stages above this one: :mod:`atomsnb.sae_cache` trains SAEs once per content, :mod:`atomsnb.evaluation` scores
and compares unit sets (:func:`atomsnb.evaluation.compare_unit_sets`), and :mod:`atomsnb.pipeline` is the prologue
every experiment shares (activations of one layer and the fitted AIP).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Protocol, Sequence, runtime_checkable

import torch

from .aip import AIP
from .sae import SAEConfig, SparseAutoencoder

__all__ = ["UnitSet", "FAMILIES", "Neurons", "SAEUnits", "UnitSetSpec", "default_unit_sets", "topk_ks_spanning",
           "is_unit_set", "check_activations"]

#: The families a unit set can belong to (the row groups of the book's tables).
#: ``"topk"``: TopK / BatchTopK SAEs with the field's Euclidean loss on raw activations (as EleutherAI/sparsify trains
#: them); ``"topk-aip"``: the same in whitened AIP coordinates (the TSAE's loss with a TopK activation).
FAMILIES = ("neurons", "features", "atoms", "topk", "topk-aip", "ablation", "constructed", "external")


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
    sentinel = object()
    return all(inspect.getattr_static(obj, m, sentinel) is not sentinel for m in _UNIT_SET_MEMBERS)


def _check_name_family(name, family) -> None:
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"a unit set needs a non-empty name; got {name!r}")
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}; got {family!r}")


def check_activations(x, d_model: int, who: str) -> torch.Tensor:
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
        return check_activations(x, self.d_model, self.name).to(torch.float64)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """The activations themselves (exact), ``[n, d_model]`` float64."""
        return check_activations(x, self.d_model, self.name).to(torch.float64)

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
            applicable or unknown). A TopK SAE's ``k`` is its :attr:`k` (``sae.k``; NaN for other kinds).

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
        self.k = float(sae.k) if sae.k is not None else math.nan

    def _aip(self) -> AIP | None:
        return self.aip if self.sae.whitened else None

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """Codes ``[n, n_latents]`` float64 of raw activations ``x`` ``[n, d_model]``."""
        return self.sae.encode_raw(check_activations(x, self.d_model, self.name), self._aip())

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstructions ``[n, d_model]`` float64 in raw coordinates."""
        return self.sae.reconstruct_raw(check_activations(x, self.d_model, self.name), self._aip())

    @property
    def dictionary(self) -> torch.Tensor:
        """The atoms ``[d_model, n_latents]`` float64 in raw coordinates (``W^{-1} D~`` for a whitened SAE)."""
        return self.sae.dictionary_raw(self._aip())

    def __repr__(self) -> str:
        return (f"SAEUnits({self.sae.kind}, d_model={self.d_model}, n_latents={self.n_latents}, name={self.name!r}, "
                f"family={self.family!r})")


_SPEC_KINDS = ("neurons", "relu", "jumprelu", "topk", "batchtopk")


def _coef(name: str, v) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        raise ValueError(f"{name} must be a finite number >= 0; got {v!r}")
    return float(v)


@dataclass(frozen=True)
class UnitSetSpec:
    """One unit set to train (or the neurons) in :func:`compare_unit_sets`.

    Prefer the constructors :meth:`neurons`, :meth:`features`, :meth:`atoms`, :meth:`topk` and :meth:`ablation`.

    Attributes:
        name: row label, e.g. ``"atoms (TSAE, L0 coefficient 0.003)"``.
        family: one of :data:`FAMILIES` (what the paper's tables call it).
        kind: ``"neurons"``, ``"relu"`` (ReLU + L1), ``"jumprelu"`` (TSAE), ``"topk"`` or ``"batchtopk"``.
        whiten: train in whitened AIP coordinates (True for the TSAE, False for the standard SAE).
        l0_coefficient: the L0 coefficient of a ``"jumprelu"`` SAE (required there; stored as NaN otherwise).
        l1_coefficient: the L1 coefficient of a ``"relu"`` SAE (required there; stored as NaN otherwise).
        k: active latents per token of a ``"topk"`` / ``"batchtopk"`` SAE (required there; None otherwise).

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
    k: int | None = None

    def __post_init__(self):
        _check_name_family(self.name, self.family)
        if self.kind not in _SPEC_KINDS:
            raise ValueError(f"unknown unit-set kind {self.kind!r}; use one of {_SPEC_KINDS}")
        topk = self.kind in ("topk", "batchtopk")
        if topk and (isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 1):
            raise ValueError(f"{self.name!r}: a {self.kind!r} SAE takes k, an integer >= 1; got {self.k!r}")
        if not topk and self.k is not None:
            raise ValueError(f"{self.name!r}: a {self.kind!r} unit set takes no k; got {self.k!r}")
        takes = {"jumprelu": "l0_coefficient", "relu": "l1_coefficient"}.get(self.kind)
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
    def topk(cls, k: int, *, whiten: bool = False, batch: bool = False, name: str | None = None) -> "UnitSetSpec":
        """A TopK SAE (``batch``: BatchTopK) with ``k`` active latents per token: the field's recipe, a Euclidean
        (FVU) loss on raw activations (family ``"topk"``, as EleutherAI/sparsify trains it), or with ``whiten`` the
        same loss in whitened AIP coordinates (family ``"topk-aip"``, the TSAE's loss)."""
        label = f"{'BatchTopK' if batch else 'TopK'} ({'AIP' if whiten else 'Euclidean'}, k {k})"
        return cls(name or label, "topk-aip" if whiten else "topk", "batchtopk" if batch else "topk", bool(whiten),
                   k=k)

    @classmethod
    def ablation(cls, l1_coefficient: float, name: str | None = None) -> "UnitSetSpec":
        """The ablation "ReLU + L1 in whitened AIP coordinates": the AIP without the threshold."""
        return cls(name or f"ablation: ReLU+L1 in AIP coordinates, L1 coefficient {l1_coefficient:g}", "ablation",
                   "relu", True, l1_coefficient=l1_coefficient)


def _sae_config(spec: UnitSetSpec, config: SAEConfig) -> SAEConfig:
    """The base config with the spec's kind, coordinates and coefficient (the one place that maps them)."""
    coefficient = {"jumprelu": spec.l0_coefficient, "relu": spec.l1_coefficient}.get(spec.kind, spec.k)
    return config.with_kind(spec.kind, coefficient, whiten=spec.whiten)


def default_unit_sets(l0_coefficients: Sequence[float] = (1e-3, 3e-3, 1e-2),
                      l1_coefficients: Sequence[float] = (1e-2, 3e-2, 1e-1),
                      ablation_l1_coefficient: float | None = 0.1) -> list[UnitSetSpec]:
    """Neurons, the standard-SAE features at each L1 coefficient, the TSAE atoms at each L0 coefficient, and
    (unless ``ablation_l1_coefficient`` is None) the ablation "ReLU + L1 in whitened coordinates". The TopK family
    (:meth:`UnitSetSpec.topk`) is chosen from these sets' L0 (:func:`topk_ks_spanning`), so it comes after them."""
    specs = [UnitSetSpec.neurons()]
    specs += [UnitSetSpec.features(c) for c in l1_coefficients]
    specs += [UnitSetSpec.atoms(c) for c in l0_coefficients]
    if ablation_l1_coefficient is not None:
        specs.append(UnitSetSpec.ablation(ablation_l1_coefficient))
    return specs


def topk_ks_spanning(l0s: Sequence[float], n: int = 3) -> list[int]:
    """``n`` values of ``k`` spanning the L0 range of other unit sets: geometrically spaced from the smallest to the
    largest L0 (latents per token), rounded to integers >= 1, duplicates dropped (fewer than ``n`` when the range
    holds fewer integers). Chapter 2 passes the atoms' and features' held-out L0, so the TopK family is compared at
    the same sparsities.

    Raises:
        ValueError: no finite positive L0, or ``n`` not an integer >= 1.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an integer >= 1; got {n!r}")
    vals = [float(v) for v in l0s if math.isfinite(float(v)) and float(v) > 0]
    if not vals:
        raise ValueError(f"need at least one finite L0 > 0 to span; got {list(l0s)!r}")
    lo, hi = min(vals), max(vals)
    raw = [lo] if n == 1 else [lo * (hi / lo) ** (i / (n - 1)) for i in range(n)]
    return sorted({max(1, int(round(v))) for v in raw})
