"""The atomic inner product (AIP) and the angle statistics of representation shift.

Paper §3 (representation shift): a causal LM's loss sees a hidden state ``h`` only through
``softmax(W_U h)``, so ``h`` is identified only up to an invertible linear map ``A``. The AIP

    <u, v>_S = u^T S v / (||u||_S ||v||_S),   S = (E[h h^T])^{-1},   ||u||_S = sqrt(u^T S u)

is invariant under ``h -> A h`` when ``S`` is re-estimated on the transformed data (SPEC §1.3).

Conventions (SPEC §1.1-1.2): the second moment is *uncentred* (option U of SPEC §1.5) and
accumulated in float64; ``S`` is never formed by an explicit inverse for whitening: with
``M = L L^T`` (Cholesky), the whitening map is ``W = L^{-1}`` applied by a triangular solve,
so that ``<u, v>_S = cos(W u, W v)``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.linalg
import torch
from threadpoolctl import threadpool_limits

from .io import load_tensors, save_tensors

__all__ = [
    "AIP",
    "symmetric_eigenvalues",
    "InsufficientTokensError",
    "SingularSecondMomentError",
    "check_finite",
    "euclidean_cosines",
    "euclidean_angles",
    "sample_pairs",
    "AngleSummary",
    "summarize_angles",
]

#: SPEC §1.1: at least this many tokens per dimension to estimate S without regularisation.
MIN_TOKENS_PER_DIM = 20
#: Condition numbers above this are treated as singular in float64 unless ridge/pinv is asked for.
MAX_CONDITION = 1e13


def symmetric_eigenvalues(m: torch.Tensor) -> torch.Tensor:
    """Eigenvalues, ascending, of a symmetric matrix ``m`` ``[H, H]`` -> ``[H]`` float64.

    LAPACK's MRRR driver (``?syevr`` through :func:`scipy.linalg.eigh`): on the ill-conditioned second moments of real
    LLMs (condition numbers up to 1e8) it is 10-40 times faster on the CPU than ``torch.linalg.eigvalsh``, with the same
    accuracy (absolute error about ``eps * ||m||``).
    """
    a = torch.as_tensor(m).detach().to(torch.float64).cpu().numpy()
    # one BLAS thread: scipy's BLAS threads would otherwise compete with torch's spinning OpenMP threads (seconds
    # instead of tens of milliseconds on a 2-core machine)
    with threadpool_limits(limits=1, user_api="blas"):
        ev = scipy.linalg.eigh(a, eigvals_only=True, driver="evr", check_finite=False)
    return torch.from_numpy(ev.copy())


class InsufficientTokensError(ValueError):
    """Too few tokens to estimate the second moment ``E[h h^T]`` reliably (SPEC §1.1)."""


class SingularSecondMomentError(ValueError):
    """The second moment is singular or too ill-conditioned to invert in float64 (SPEC §1.4)."""


def _as_tensor(x, name: str) -> torch.Tensor:
    t = torch.as_tensor(x)
    if t.dim() != 2:
        raise ValueError(f"{name} must be a 2-D tensor [n_tokens, d_model]; got shape {tuple(t.shape)}")
    if not (t.is_floating_point()):
        t = t.to(torch.float64)
    return t


def check_finite(x: torch.Tensor, name: str = "activations") -> None:
    """Raise ``ValueError`` if ``x`` contains NaN or inf, naming how many and the first row.

    Args:
        x: any tensor, typically activations ``[n_tokens, d_model]``.
        name: what ``x`` is, for the message.

    Raises:
        ValueError: with the count of non-finite entries and the index of the first bad row.
    """
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        n_bad = int(bad.sum())
        first = int(bad.reshape(x.shape[0], -1).any(dim=1).nonzero()[0]) if x.dim() > 0 else 0
        raise ValueError(
            f"{name} contain {n_bad} NaN/inf values (first in row {first}); "
            "check the model dtype (bf16 overflow?) or the input text"
        )


class AIP:
    """Atomic inner product estimated from activations (paper §3, SPEC §1).

    Build it with :meth:`AIP.fit` on a ``[n_tokens, d_model]`` tensor, or stream batches with
    :meth:`partial_fit` (memory ``O(d_model^2)``, independent of the token count). After fitting it holds
    ``d_model`` (``H``), ``n_tokens`` (activation vectors accumulated) and ``n_excluded`` (rows left out through
    ``exclude``, e.g. massive tokens, :mod:`atomsnb.massive`; informational, not saved by :meth:`save`), and gives
    :attr:`second_moment` (``M``), :attr:`S` and :attr:`condition_number` (documented below).

    Args:
        d_model: width ``H`` of the activations.
        ridge: relative ridge ``lambda_rel``; ``M + lambda_rel * tr(M)/H * I`` is inverted.
            Default 0 (none). Any ridge breaks exact invariance (SPEC §1.4): report
            :meth:`invariance_error` when you use one.
        pinv: use the exact-range pseudo-inverse (for rank-deficient ``M``, SPEC §1.4).
            Whitened vectors then have ``rank(M)`` coordinates.
        min_tokens_per_dim: refuse to fit (without ridge/pinv) on fewer than this many tokens per
            dimension (SPEC §1.1 asks for ``n >= 20 H``).
    """

    def __init__(self, d_model: int, *, ridge: float = 0.0, pinv: bool = False, min_tokens_per_dim: float = MIN_TOKENS_PER_DIM):
        if d_model < 1:
            raise ValueError(f"d_model must be >= 1; got {d_model}")
        if ridge < 0 or not math.isfinite(ridge):
            raise ValueError(f"ridge must be a finite number >= 0; got {ridge}")
        self.d_model = int(d_model)
        self.ridge = float(ridge)
        self.pinv = bool(pinv)
        self.min_tokens_per_dim = float(min_tokens_per_dim)
        self._sum = torch.zeros(d_model, d_model, dtype=torch.float64)
        self.n_tokens = 0
        self.n_excluded = 0
        self._fitted: dict | None = None

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(cls, acts: torch.Tensor, *, ridge: float = 0.0, pinv: bool = False, batch_size: int = 16384,
            min_tokens_per_dim: float = MIN_TOKENS_PER_DIM, exclude: torch.Tensor | None = None) -> "AIP":
        """Estimate the AIP from activations ``acts`` ``[n_tokens, d_model]`` (any float dtype).

        Args:
            exclude: optional ``[n_tokens]`` bool mask of rows to leave out of ``E[h h^T]``, e.g. massive tokens
                (:func:`atomsnb.massive.massive_token_mask`: norm above ``k`` x the median norm). ``None`` (default)
                fits on every row, as SPEC §1.1 states it. The token-count requirement applies to the rows kept.

        Raises:
            ValueError: ``acts`` is not 2-D or contains NaN/inf; ``exclude`` is not a bool mask of length
                ``n_tokens`` or excludes every row.
            InsufficientTokensError: ``n_tokens < min_tokens_per_dim * d_model`` with no ridge/pinv.
            SingularSecondMomentError: ``M`` is singular or its condition number exceeds 1e13 in float64.
        """
        acts = _as_tensor(acts, "acts")
        aip = cls(acts.shape[1], ridge=ridge, pinv=pinv, min_tokens_per_dim=min_tokens_per_dim)
        aip.partial_fit(acts, batch_size=batch_size, exclude=exclude)
        aip._finalize()
        return aip

    def copy(self) -> "AIP":
        """An independent copy of this accumulator (its ``sum m m^T``, counts and settings), e.g. to add rows to one
        fit while keeping the other: ``kept = excluded.copy().partial_fit(massive_rows)``."""
        out = AIP(self.d_model, ridge=self.ridge, pinv=self.pinv, min_tokens_per_dim=self.min_tokens_per_dim)
        out._sum = self._sum.clone()
        out.n_tokens, out.n_excluded = self.n_tokens, self.n_excluded
        return out

    def partial_fit(self, acts: torch.Tensor, *, batch_size: int = 16384, exclude: torch.Tensor | None = None) -> "AIP":
        """Accumulate ``sum m m^T`` over a batch ``[n, d_model]`` in float64; returns ``self``.

        ``exclude``: optional ``[n]`` bool mask of rows to leave out (see :meth:`fit`)."""
        acts = _as_tensor(acts, "acts")
        if acts.shape[1] != self.d_model:
            raise ValueError(f"acts have d_model={acts.shape[1]}, but this AIP was built for d_model={self.d_model}")
        if exclude is not None:
            exclude = torch.as_tensor(exclude)
            if exclude.dtype != torch.bool or tuple(exclude.shape) != (acts.shape[0],):
                raise ValueError(f"exclude must be a bool mask of shape ({acts.shape[0]},) (one flag per row of acts); "
                                 f"got {exclude.dtype} of shape {tuple(exclude.shape)}")
            if acts.shape[0] and bool(exclude.all()):
                raise ValueError(f"exclude masks all {acts.shape[0]} rows; nothing is left to estimate E[hh^T]")
            self.n_excluded += int(exclude.sum())
            acts = acts[~exclude]
        check_finite(acts)
        for start in range(0, acts.shape[0], batch_size):
            x = acts[start : start + batch_size].to(torch.float64)
            self._sum.addmm_(x.T, x)
        self.n_tokens += int(acts.shape[0])
        self._fitted = None
        return self

    @property
    def second_moment(self) -> torch.Tensor:
        """``M = E[m m^T]``, ``[H, H]`` float64 (SPEC §1.1)."""
        if self.n_tokens == 0:
            raise InsufficientTokensError("no activations accumulated yet: call fit() or partial_fit() first")
        return self._sum / self.n_tokens

    def _finalize(self) -> dict:
        if self._fitted is not None:
            return self._fitted
        H = self.d_model
        M = self.second_moment
        need = int(math.ceil(self.min_tokens_per_dim * H))
        if self.n_tokens < need and self.ridge == 0 and not self.pinv:
            raise InsufficientTokensError(
                f"AIP needs at least {need} tokens ({self.min_tokens_per_dim:g} x d_model={H}) to estimate "
                f"S = E[hh^T]^-1 without regularisation (SPEC §1.1); got {self.n_tokens}. Collect more tokens, "
                "or pass ridge>0 or pinv=True, which break exact invariance (SPEC §1.4)."
            )
        if self.pinv:
            evals, evecs = torch.linalg.eigh(M)
        else:
            evals = symmetric_eigenvalues(M)
        lmin, lmax = float(evals[0]), float(evals[-1])
        cond = lmax / lmin if lmin > 0 else math.inf
        out: dict = {"condition_number": cond, "eigenvalues": evals}
        if self.pinv:
            keep = evals > lmax * H * np.finfo(np.float64).eps * 10
            U, lam = evecs[:, keep], evals[keep]
            out["W"] = (U / lam.sqrt()).T.contiguous()  # [r, H]
            out["S"] = (U / lam) @ U.T
            out["rank"] = int(keep.sum())
        else:
            Mr = M + self.ridge * (torch.trace(M) / H) * torch.eye(H, dtype=torch.float64) if self.ridge > 0 else M
            L, info = torch.linalg.cholesky_ex(Mr)
            r_evals = symmetric_eigenvalues(Mr) if self.ridge > 0 else evals
            r_cond = float(r_evals[-1] / r_evals[0]) if float(r_evals[0]) > 0 else math.inf
            if int(info) != 0 or not r_cond < MAX_CONDITION:
                rel = max(1e-9, 1e-3 * lmin / (float(torch.trace(M)) / H)) if lmin > 0 else 1e-9
                raise SingularSecondMomentError(
                    f"the second moment E[hh^T] ({H}x{H}, from {self.n_tokens} tokens) cannot be inverted in float64: "
                    f"smallest eigenvalue {lmin:.3g}, condition number {cond:.3g} (allowed < {MAX_CONDITION:.0e}). "
                    f"Pass a relative ridge (start near ridge={rel:.1g} and raise it until the fit succeeds) or pinv=True, and report the invariance error (SPEC §1.4)."
                )
            out["L"] = L  # S = (L L^T)^{-1} is formed only when asked for (whitening never needs it)
            out["rank"] = H
        self._fitted = out
        return out

    @property
    def S(self) -> torch.Tensor:
        """``S = M^{-1}``, ``[H, H]`` float64 (the AIP's metric tensor, paper §3)."""
        f = self._finalize()
        if "S" not in f:
            f["S"] = torch.cholesky_inverse(f["L"])
        return f["S"]

    @property
    def condition_number(self) -> float:
        """Condition number of the (unregularised) second moment ``M``."""
        return float(self._finalize()["condition_number"])

    @property
    def rank(self) -> int:
        """Number of whitened coordinates: ``d_model``, or ``rank(M)`` with ``pinv=True``."""
        return int(self._finalize()["rank"])

    # ------------------------------------------------------------------ geometry
    def whiten(self, x: torch.Tensor, method: Literal["cholesky", "symmetric"] = "cholesky") -> torch.Tensor:
        """Map activations to whitened coordinates ``W x`` with ``W^T W = S`` (SPEC §1.2).

        Args:
            x: ``[n, d_model]``, any float dtype.
            method: ``"cholesky"`` (default; ``W = L^{-1}``, applied by a triangular solve) or
                ``"symmetric"`` (ZCA, ``W = M^{-1/2}``, the paper's ``S^{1/2}``). The two differ by an
                orthogonal map, so every AIP quantity agrees.

        Returns:
            ``[n, r]`` float64 with ``r = d_model`` (``rank(M)`` for ``pinv=True``); on the fitting data the
            whitened second moment is the identity.
        """
        x = _as_tensor(x, "x").to(torch.float64)
        if x.shape[1] != self.d_model:
            raise ValueError(f"x has d_model={x.shape[1]}, but this AIP was fitted with d_model={self.d_model}")
        if method not in ("cholesky", "symmetric"):
            raise ValueError(f"method must be 'cholesky' or 'symmetric'; got {method!r}")
        f = self._finalize()
        if self.pinv:  # exact-range pseudo-inverse: W = Lambda_r^{-1/2} U_r^T, [r, H]
            return x @ f["W"].T
        if method == "cholesky":
            return torch.linalg.solve_triangular(f["L"], x.T, upper=False).T
        if "W_sym" not in f:
            lam, U = torch.linalg.eigh(torch.cholesky_solve(torch.eye(self.d_model, dtype=torch.float64), f["L"]))
            f["W_sym"] = (U * lam.sqrt()) @ U.T  # S^{1/2}
        return x @ f["W_sym"].T

    def unwhiten(self, y: torch.Tensor) -> torch.Tensor:
        """Map whitened rows back to raw coordinates, the inverse of :meth:`whiten` (Cholesky route, SPEC §1.2).

        Args:
            y: ``[n, r]`` whitened coordinates.

        Returns:
            ``[n, d_model]`` float64: ``y L^T`` (Cholesky), or ``y (W^+)^T`` with ``pinv=True`` (exact on the range of ``M``).
        """
        f = self._finalize()
        y = torch.as_tensor(y).to(torch.float64)
        if self.pinv:
            if "W_pinv" not in f:
                f["W_pinv"] = torch.linalg.pinv(f["W"])  # [H, r]
            return y @ f["W_pinv"].T
        return y @ f["L"].T

    def norm(self, x: torch.Tensor) -> torch.Tensor:
        """AIP norm ``||x||_S = sqrt(x^T S x)`` of each row of ``x`` ``[n, d_model]`` -> ``[n]``."""
        return self.whiten(x).norm(dim=1)

    def inner(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Normalised AIP ``<u_i, v_i>_S`` of paired rows (paper §3, SPEC §1.1).

        Args:
            u, v: ``[n, d_model]`` each (row ``i`` of ``u`` is paired with row ``i`` of ``v``).

        Returns:
            ``[n]`` float64 cosines in ``[-1, 1]`` (NaN for a zero row, whose angle is undefined).
        """
        if torch.as_tensor(u).shape != torch.as_tensor(v).shape:
            raise ValueError(f"u and v must have the same shape; got {tuple(u.shape)} and {tuple(v.shape)}")
        return _cosines(self.whiten(u), self.whiten(v))

    def angles(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """AIP angles ``arccos <u_i, v_i>_S`` in degrees, ``[n]`` float64 (SPEC §2)."""
        return torch.rad2deg(torch.arccos(self.inner(u, v).clamp(-1.0, 1.0)))

    def pair_angles(self, acts: torch.Tensor, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        """``angles(acts[i], acts[j])`` for index pairs into one set of rows, whitening each distinct row once
        (random pairs of a set reuse rows: whitening ``2 n_pairs`` rows would repeat work).

        Args:
            acts: ``[n, d_model]``; i, j: ``[n_pairs]`` int64 row indices.

        Returns:
            ``[n_pairs]`` float64 angles in degrees (SPEC §2).

        Raises:
            ValueError: ``i`` and ``j`` of different lengths.
        """
        i, j = torch.as_tensor(i), torch.as_tensor(j)
        if i.shape != j.shape:
            raise ValueError(f"i and j must have the same shape; got {tuple(i.shape)} and {tuple(j.shape)}")
        rows, inverse = torch.unique(torch.cat([i.reshape(-1), j.reshape(-1)]), return_inverse=True)
        w = self.whiten(_as_tensor(acts, "acts")[rows])
        n = i.numel()
        return torch.rad2deg(torch.arccos(_cosines(w[inverse[:n]], w[inverse[n:]])))

    def invariance_error(self, acts: torch.Tensor, n_pairs: int = 2000, seed: int = 0) -> float:
        """Largest change of the AIP cosine of random pairs when the data are mixed by a random ``A``.

        Refits on ``A``-transformed activations (same ridge/pinv) and compares the cosines of
        the same pairs. With no ridge it is float64 round-off; with a ridge it measures the
        invariance the ridge broke (SPEC §1.4).

        Args:
            acts: ``[n_tokens, d_model]``, the data this AIP was fitted on (or similar).
        """
        acts = _as_tensor(acts, "acts").to(torch.float64)
        g = torch.Generator().manual_seed(seed)
        A = torch.randn(self.d_model, self.d_model, generator=g, dtype=torch.float64) / math.sqrt(self.d_model)
        A = A + torch.eye(self.d_model, dtype=torch.float64)
        mixed = AIP.fit(acts @ A.T, ridge=self.ridge, pinv=self.pinv, min_tokens_per_dim=self.min_tokens_per_dim)
        i, j = sample_pairs(acts.shape[0], n_pairs, seed=seed)
        before = self.inner(acts[i], acts[j])
        after = mixed.inner(acts[i] @ A.T, acts[j] @ A.T)
        return float((before - after).abs().max())

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike) -> None:
        """Save the accumulated second moment (safetensors, checksummed, atomic)."""
        save_tensors(path, {"sum_mmT": self._sum}, {"n_tokens": self.n_tokens, "ridge": self.ridge, "pinv": self.pinv,
                                                     "min_tokens_per_dim": self.min_tokens_per_dim})

    @classmethod
    def load(cls, path: str | os.PathLike) -> "AIP":
        """Load an AIP written by :meth:`save` (raises ``CacheCorruptError`` on a damaged file)."""
        tensors, meta = load_tensors(path)
        s = tensors["sum_mmT"]
        aip = cls(s.shape[0], ridge=meta["ridge"], pinv=meta["pinv"], min_tokens_per_dim=meta["min_tokens_per_dim"])
        aip._sum = s.to(torch.float64)
        aip.n_tokens = int(meta["n_tokens"])
        return aip

    def __repr__(self) -> str:
        state = f"cond={self.condition_number:.3g}" if self._fitted else "not finalised"
        return f"AIP(d_model={self.d_model}, n_tokens={self.n_tokens}, ridge={self.ridge:g}, pinv={self.pinv}, {state})"


def _cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    num = (a * b).sum(dim=1)
    den = a.norm(dim=1) * b.norm(dim=1)
    return torch.where(den > 0, num / den, torch.full_like(num, float("nan"))).clamp(-1.0, 1.0)


def euclidean_cosines(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Euclidean cosine of paired rows of ``u``, ``v`` ``[n, d]`` -> ``[n]`` float64."""
    return _cosines(_as_tensor(u, "u").to(torch.float64), _as_tensor(v, "v").to(torch.float64))


def euclidean_angles(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Euclidean angle between paired rows of ``u``, ``v`` ``[n, d]`` in degrees -> ``[n]`` (SPEC §2)."""
    return torch.rad2deg(torch.arccos(euclidean_cosines(u, v)))


def sample_pairs(n: int, n_pairs: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``n_pairs`` index pairs ``(i, j)``, ``i != j``, uniformly from ``range(n)`` (SPEC §2).

    Returns:
        Two ``[n_pairs]`` int64 tensors.

    Raises:
        ValueError: ``n < 2`` or ``n_pairs < 1``.
    """
    if n < 2:
        raise ValueError(f"need at least 2 activations to form pairs; got n={n}")
    if n_pairs < 1:
        raise ValueError(f"n_pairs must be >= 1; got {n_pairs}")
    g = torch.Generator().manual_seed(seed)
    i = torch.randint(0, n, (n_pairs,), generator=g)
    j = torch.randint(0, n - 1, (n_pairs,), generator=g)
    j = j + (j >= i).long()
    return i, j


@dataclass(frozen=True)
class AngleSummary:
    """Mean, median and standard deviation (degrees) of pair angles under both metrics (SPEC §2)."""

    euclidean_mean: float
    euclidean_median: float
    euclidean_std: float
    aip_mean: float
    aip_median: float
    aip_std: float
    n_pairs: int

    @property
    def shift(self) -> float:
        """Representation shift ``90 - mean Euclidean angle`` in degrees (SPEC §2)."""
        return 90.0 - self.euclidean_mean


def summarize_angles(euclidean: torch.Tensor, aip: torch.Tensor) -> AngleSummary:
    """Summarise two ``[n_pairs]`` tensors of angles (degrees) into an :class:`AngleSummary`."""
    e, a = euclidean.to(torch.float64), aip.to(torch.float64)
    return AngleSummary(
        euclidean_mean=float(e.mean()), euclidean_median=float(e.median()), euclidean_std=float(e.std()),
        aip_mean=float(a.mean()), aip_median=float(a.median()), aip_std=float(a.std()), n_pairs=int(e.numel()),
    )
