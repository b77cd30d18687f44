"""Faithfulness, coherence and stability of a unit set: ``R^2``, ``mu``, ``q*`` and the SAE metrics.

Paper §4 (neurons and features as candidate units) scores a dictionary ``D`` and its codes by

- **faithfulness** ``R^2``: how much of the activations the reconstruction keeps (SPEC §3);
- **stability** ``q*``: the largest quantile level ``q`` at which the coherence quantile
  ``mu_q`` of the atoms stays below the uniqueness bound ``b(K_q) = 1/(2 K_q - 1)`` of sparse
  recovery, ``K_q`` being the quantile of the number of active atoms per activation (SPEC §4).

Conventions used throughout:

- activations ``x`` are ``[n_tokens, d_model]`` in raw coordinates; reconstructions ``x_hat`` too;
- a dictionary ``D`` is ``[d_model, n_latents]`` whose columns are the atoms, in raw coordinates;
- codes are ``[n_tokens, n_latents]``; the support of a row is its set of non-zero entries
  (JumpReLU zeros are exact). Neurons use ``codes = x`` and ``D = I`` (SPEC §4).
- Coherence is measured in the AIP: atoms are whitened, ``d~_j = W d_j / ||W d_j||``, and
  ``G = D~^T D~`` (SPEC §4), so every number here is invariant under ``x -> A x`` for covariant
  dictionaries (SPEC §1.3). Everything is computed in float64.

The field's standard names (SAELens ``evals.py``, sparsify) are used for the standard quantities, one
name per quantity: :func:`explained_variance` (Euclidean, pooled), :func:`fvu` (``1 -`` that),
:func:`l0` (mean active latents per token), ``frac_dead`` / ``n_dead`` (:func:`dead_latents`: the
fraction / the number of latents never active); our own names only for what is new:
:func:`r2_aip` (``R^2`` in the AIP, which needs the fitted AIP: there is no default) and ``q_star``.
"""

from __future__ import annotations

import math
from typing import Iterator, Literal, NamedTuple

import torch

from .aip import AIP

__all__ = [
    "r2_aip",
    "r2_all",
    "explained_variance",
    "fvu",
    "METRIC_LABELS",
    "l0",
    "DeadLatents",
    "dead_latents",
    "whitened_atoms",
    "gram_abs",
    "iter_coherence_blocks",
    "Coherence",
    "coherence",
    "uniqueness_bound",
    "QStarResult",
    "q_star",
    "q_star_from_samples",
    "support_coherence",
    "Certificate",
    "uniqueness_certificate",
    "evaluate_dictionary",
]

#: Rows of activations whitened at once (bounds the float64 working memory to ``_CHUNK * d_model * 8`` bytes).
_CHUNK = 8192


def _as2d(x, name: str) -> torch.Tensor:
    t = torch.as_tensor(x)
    if t.dim() != 2:
        raise ValueError(f"{name} must be 2-D; got shape {tuple(t.shape)}")
    return t


def _check_pair(x: torch.Tensor, x_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x, x_hat = _as2d(x, "x"), _as2d(x_hat, "x_hat")
    if x.shape != x_hat.shape:
        raise ValueError(f"x and x_hat must have the same shape [n_tokens, d_model]; got {tuple(x.shape)} and {tuple(x_hat.shape)}")
    if x.shape[0] == 0:
        raise ValueError("x has no rows: R^2 of an empty set is undefined")
    for name, t in (("x", x), ("x_hat", x_hat)):
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            n_bad = int((~torch.isfinite(t)).any(dim=1).sum())
            raise ValueError(f"{name} has NaN or inf in {n_bad} of {t.shape[0]} rows: a metric of it would be NaN")
    return x, x_hat


#: Reader-ready column headers (units included) for the metric names of this module, used by every reader table.
METRIC_LABELS = {
    "r2_aip": "R² (AIP)",
    "explained_variance": "explained variance (Euclidean)",
    "fvu": "FVU (Euclidean)",
    "r2_per_dim": "R² (per dimension)",
    "r2_uncentred": "R² (uncentred, Euclidean)",
    "q_star": "q*",
    "l0": "L0 (latents/token)",
    "frac_dead": "dead latents (fraction)",
    "n_dead": "dead latents (count)",
    "n_latents": "|D| (latents)",
    "n_alive": "alive latents (count)",
    "l0_coefficient": "L0 coefficient",
    "l1_coefficient": "L1 coefficient",
    "k": "TopK k",
}


# ---------------------------------------------------------------------------------------------------------------------
# Faithfulness (SPEC §3)
# ---------------------------------------------------------------------------------------------------------------------
def _check_aip(aip, d_model: int) -> None:
    if not isinstance(aip, AIP):
        raise TypeError(f"aip must be a fitted atomsnb.aip.AIP (R^2 in the AIP needs S); got {type(aip).__name__}. "
                        "For the Euclidean quantity use explained_variance(x, x_hat)")
    if aip.d_model != d_model:
        raise ValueError(f"the AIP was fitted on d_model={aip.d_model} but x has d_model={d_model}")


def _r2_aip(x: torch.Tensor, x_hat: torch.Tensor, aip: AIP) -> float:
    sse = 0.0
    sst = 0.0
    for s in range(0, x.shape[0], _CHUNK):
        wx = aip.whiten(x[s : s + _CHUNK])
        wr = aip.whiten(x[s : s + _CHUNK].to(torch.float64) - x_hat[s : s + _CHUNK].to(torch.float64))
        sse += float((wr * wr).sum())
        sst += float((wx * wx).sum())
    if sst == 0.0:
        raise ValueError("all activations are zero: R^2 is undefined")
    return 1.0 - sse / sst


def r2_aip(x: torch.Tensor, x_hat: torch.Tensor, aip: AIP) -> float:
    """Faithfulness ``R^2`` in the AIP, the primary metric of the book (paper §4, SPEC §3).

    ``R^2_S = 1 - sum_n ||x_n - x_hat_n||_S^2 / sum_n ||x_n||_S^2``: uncentred, in the metric
    ``S = E[hh^T]^{-1}``, hence invariant under ``x -> A x`` when ``S`` is re-estimated (SPEC §1.3).
    It is *not* the Euclidean :func:`explained_variance` (SAELens' ``explained_variance``); the two
    have separate names so that neither is ever returned in place of the other.

    Args:
        x: activations ``[n_tokens, d_model]`` (raw coordinates, any float dtype).
        x_hat: reconstructions ``[n_tokens, d_model]``.
        aip: the fitted :class:`~atomsnb.aip.AIP` (fit it on data disjoint from ``x`` for held-out numbers). Required.

    Returns:
        A float ``<= 1`` (1 for a perfect reconstruction; can be negative).

    Raises:
        TypeError: ``aip`` is not an :class:`~atomsnb.aip.AIP` (e.g. ``None``).
        ValueError: shapes differ, ``x`` is empty, NaN/inf in ``x`` or ``x_hat``, the AIP's ``d_model`` differs,
            or every activation is zero.
    """
    x, x_hat = _check_pair(x, x_hat)
    _check_aip(aip, x.shape[1])
    return _r2_aip(x, x_hat, aip)


def explained_variance(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Euclidean fraction of variance explained, ``1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2`` (SPEC §3 [Alt]).

    SAELens calls this ``explained_variance`` (the pooled version over all tokens, not the
    per-token average). It is *not* invariant under ``x -> A x``; see :func:`r2_aip` for the AIP metric.

    Args:
        x: activations ``[n_tokens, d_model]``.
        x_hat: reconstructions ``[n_tokens, d_model]``.

    Returns:
        A float ``<= 1`` (1 for a perfect reconstruction; can be negative).

    Raises:
        ValueError: shapes differ, ``x`` is empty, NaN/inf in ``x`` or ``x_hat``, or ``x`` has zero variance.
    """
    x, x_hat = _check_pair(x, x_hat)
    x, x_hat = x.to(torch.float64), x_hat.to(torch.float64)
    sse = float(((x - x_hat) ** 2).sum())
    sst = float(((x - x.mean(dim=0)) ** 2).sum())
    if sst == 0.0:
        raise ValueError("x has zero variance: explained variance is undefined")
    return 1.0 - sse / sst


def fvu(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Fraction of variance unexplained, ``1 - explained_variance(x, x_hat)`` (Euclidean; sparsify's ``fvu``).

    Args and Raises: as :func:`explained_variance`.

    Returns:
        A float ``>= 0`` (0 for a perfect reconstruction).
    """
    return 1.0 - explained_variance(x, x_hat)


def r2_all(x: torch.Tensor, x_hat: torch.Tensor, aip: AIP) -> dict[str, float]:
    """Every ``R^2`` variant of SPEC §3 (all equal 1 for neurons, i.e. ``x_hat = x``).

    Args:
        x: activations ``[n_tokens, d_model]``.
        x_hat: reconstructions ``[n_tokens, d_model]``.
        aip: the fitted AIP.

    Returns:
        ``{"r2_aip": ..., "explained_variance": ..., "r2_per_dim": ..., "r2_uncentred": ...}``:

        - ``r2_aip``: primary, ``1 - sum ||x - x_hat||_S^2 / sum ||x||_S^2``;
        - ``explained_variance``: Euclidean FVE, ``1 - SSE / sum ||x - mean||^2``;
        - ``r2_per_dim``: per-dimension ``1 - SSE_d / SST_d`` averaged uniformly over dimensions
          (the sklearn/torchmetrics default; a constant dimension scores 1 if reconstructed exactly, else 0);
        - ``r2_uncentred``: Euclidean uncentred, ``1 - SSE / sum ||x||^2``.

    Raises:
        TypeError, ValueError: as :func:`r2_aip`.
    """
    x, x_hat = _check_pair(x, x_hat)
    _check_aip(aip, x.shape[1])
    xd, xh = x.to(torch.float64), x_hat.to(torch.float64)
    err2 = (xd - xh) ** 2
    sse_d = err2.sum(dim=0)
    sst_d = ((xd - xd.mean(dim=0)) ** 2).sum(dim=0)
    per_dim = torch.where(sst_d > 0, 1.0 - sse_d / sst_d.clamp_min(1e-300), (sse_d == 0).to(torch.float64))
    tot = float((xd * xd).sum())
    if tot == 0.0:
        raise ValueError("all activations are zero: R^2 is undefined")
    return {
        "r2_aip": _r2_aip(x, x_hat, aip),
        "explained_variance": explained_variance(xd, xh),
        "r2_per_dim": float(per_dim.mean()),
        "r2_uncentred": 1.0 - float(sse_d.sum()) / tot,
    }


# ---------------------------------------------------------------------------------------------------------------------
# Standard SAE metrics (SAELens names)
# ---------------------------------------------------------------------------------------------------------------------
def l0(codes: torch.Tensor) -> float:
    """Mean number of non-zero latents per token (SAELens ``l0``).

    Args:
        codes: ``[n_tokens, n_latents]``.

    Returns:
        ``mean_n K_n`` as a float (0 for an empty batch is an error).

    Raises:
        ValueError: ``codes`` is not 2-D or has no rows.
    """
    codes = _as2d(codes, "codes")
    if codes.shape[0] == 0:
        raise ValueError("codes has no rows")
    return float((codes != 0).sum(dim=1).to(torch.float64).mean())


class DeadLatents(NamedTuple):
    """Latents never active on the evaluated tokens (SAELens "dead latents")."""

    n_dead: int
    """Number of latents that are zero on every evaluated token (a count)."""
    frac_dead: float
    """``n_dead / n_latents`` (a fraction in ``[0, 1]``)."""
    mask: torch.Tensor
    """``[n_latents]`` bool, True where the latent is dead."""


def dead_latents(codes: torch.Tensor) -> DeadLatents:
    """The latents that never fire on ``codes`` ``[n_tokens, n_latents]`` (SAELens "dead latents").

    Returns:
        A :class:`DeadLatents` with ``n_dead`` (count), ``frac_dead`` (fraction) and the ``mask``.

    Raises:
        ValueError: ``codes`` is not 2-D or has no latents.
    """
    codes = _as2d(codes, "codes")
    if codes.shape[1] == 0:
        raise ValueError("codes has no latents")
    dead = ~(codes != 0).any(dim=0)
    n = int(dead.sum())
    return DeadLatents(n, n / codes.shape[1], dead)


# ---------------------------------------------------------------------------------------------------------------------
# Coherence (SPEC §4)
# ---------------------------------------------------------------------------------------------------------------------
def whitened_atoms(dictionary: torch.Tensor, aip: AIP) -> torch.Tensor:
    """Unit-normalised whitened atoms ``d~_j = W d_j / ||W d_j||`` (SPEC §4), as rows.

    Args:
        dictionary: ``D`` ``[d_model, n_latents]``, atoms as columns, raw coordinates.
        aip: the fitted AIP.

    Returns:
        ``D~^T`` ``[n_latents, r]`` float64 (``r = d_model`` unless the AIP uses a pseudo-inverse), rows of unit norm.

    Raises:
        ValueError: ``dictionary`` is not 2-D, has the wrong ``d_model``, or has an atom of zero AIP norm
            (its direction, hence its coherence, is undefined).
    """
    D = _as2d(dictionary, "dictionary")
    if D.shape[0] != aip.d_model:
        raise ValueError(f"dictionary must be [d_model={aip.d_model}, n_latents]; got shape {tuple(D.shape)}")
    Wd = aip.whiten(D.T)
    norms = Wd.norm(dim=1)
    bad = (norms == 0) | ~torch.isfinite(norms)
    if bool(bad.any()):
        idx = bad.nonzero().flatten()[:10].tolist()
        raise ValueError(f"{int(bad.sum())} atoms have zero or non-finite AIP norm (columns {idx}...): drop them before measuring coherence")
    return Wd / norms[:, None]


def gram_abs(dictionary: torch.Tensor, aip: AIP) -> torch.Tensor:
    """The full absolute AIP Gram matrix ``|G| = |D~^T D~|`` ``[n_latents, n_latents]`` float64 (SPEC §4).

    Memory is ``8 N^2`` bytes: use :func:`coherence` (blockwise) for large ``N``. The diagonal is 1;
    entries are clamped to ``[0, 1]`` against round-off.
    """
    Dt = whitened_atoms(dictionary, aip)
    return (Dt @ Dt.T).abs_().clamp_(max=1.0)


def iter_coherence_blocks(dictionary: torch.Tensor, aip: AIP, *, alive: torch.Tensor | None = None,
                          block_size: int = 1024) -> Iterator[torch.Tensor]:
    """Yield the strict upper triangle of ``|G|`` over the alive atoms, one block of rows at a time (SPEC §4).

    Memory per block is ``8 * block_size * N`` bytes, so ``N = 9216`` needs ~75 MB at the default.

    Args:
        dictionary: ``[d_model, n_latents]``.
        aip: the fitted AIP.
        alive: optional ``[n_latents]`` bool mask; only pairs of alive atoms are yielded.
        block_size: rows of ``G`` built at once.

    Yields:
        1-D float64 tensors of ``|G_jk|``, ``j < k``; over all blocks, each pair exactly once.
    """
    Dt = whitened_atoms(dictionary, aip)
    if alive is not None:
        Dt = Dt[torch.as_tensor(alive, dtype=torch.bool)]
    N = Dt.shape[0]
    for s in range(0, N, block_size):
        e = min(N, s + block_size)
        blk = (Dt[s:e] @ Dt[s:].T).abs_().clamp_(max=1.0)  # [b, N - s]
        rows = torch.arange(e - s)[:, None]
        cols = torch.arange(N - s)[None, :]
        yield blk[cols > rows]


class Coherence(NamedTuple):
    """AIP coherence of a dictionary's atoms (SPEC §4-5), computed blockwise."""

    eps: float
    """Global coherence ``max_{j != k} |G_jk|`` over the (alive) atoms; 0 when fewer than 2 atoms."""
    eps_per_atom: torch.Tensor
    """``[n_atoms]`` float64, ``eps_j = max_{k != j} |G_jk|`` (over the alive atoms; indexes the alive atoms only)."""
    n_pairs: int
    """Number of pairs ``j < k``, ``N (N - 1) / 2`` over the alive atoms."""
    hist_counts: torch.Tensor
    """``[n_bins]`` int64 histogram of ``|G_jk|`` over ``[0, 1]`` (the last bin includes 1)."""
    counts_below: torch.Tensor
    """``[len(thresholds)]`` int64: exact number of pairs with ``|G_jk| < threshold_i``."""
    thresholds: torch.Tensor
    """The thresholds asked for, float64."""
    values: torch.Tensor | None
    """All ``|G_jk|`` sorted ascending (float64) when ``n_pairs <= max_exact_pairs``, else None."""

    def quantile(self, q: torch.Tensor | float) -> torch.Tensor:
        """Lower quantile ``Q_mu(q) = mu_(ceil(q * n_pairs))`` (SPEC §4), q in (0, 1].

        Exact when :attr:`values` is kept, otherwise the upper edge of the histogram bin holding the
        order statistic (an over-estimate by at most one bin width). Returns 0 when there are no pairs.
        """
        q = torch.as_tensor(q, dtype=torch.float64).reshape(-1)
        if self.n_pairs == 0:
            return torch.zeros_like(q)
        k = torch.ceil(q * self.n_pairs).clamp(1, self.n_pairs).to(torch.int64)
        if self.values is not None:
            return self.values[k - 1]
        cum = torch.cumsum(self.hist_counts, 0)
        b = torch.searchsorted(cum, k, side="left")
        return (b + 1).to(torch.float64) / self.hist_counts.numel()


def coherence(dictionary: torch.Tensor, aip: AIP, *, alive: torch.Tensor | None = None, block_size: int = 1024,
              n_bins: int = 10**6, thresholds: torch.Tensor | None = None, max_exact_pairs: int = 5 * 10**6) -> Coherence:
    """AIP coherence of the atoms: global ``eps``, per-atom ``eps_j``, and the distribution of ``|G_jk|`` (SPEC §4).

    ``G`` is built in blocks of ``block_size`` rows (never the full ``N x N`` matrix), so ``N = 9216``
    (42M pairs) needs about ``8 * block_size * N`` bytes plus the ``n_bins`` histogram. The pair
    distribution is kept exactly (sorted) up to ``max_exact_pairs`` pairs and as a ``n_bins``-bin
    histogram always; counts below the given ``thresholds`` are always exact, which is what
    :func:`q_star` needs.

    Args:
        dictionary: ``D`` ``[d_model, n_latents]``, raw coordinates.
        aip: the fitted AIP.
        alive: optional ``[n_latents]`` bool mask restricting to alive atoms (SPEC §4: ``j, k in A``).
        block_size: rows of ``G`` per block.
        n_bins: histogram bins over ``[0, 1]`` (SPEC §4 suggests ``10^6``).
        thresholds: values ``t_i`` for which the exact counts ``#{|G_jk| < t_i}`` are returned.
        max_exact_pairs: keep the sorted pair values up to this many pairs.

    Returns:
        A :class:`Coherence`.

    Raises:
        ValueError: as :func:`whitened_atoms`.
    """
    Dt = whitened_atoms(dictionary, aip)
    if alive is not None:
        alive = torch.as_tensor(alive, dtype=torch.bool)
        if alive.shape != (Dt.shape[0],):
            raise ValueError(f"alive must be a [n_latents={Dt.shape[0]}] bool mask; got shape {tuple(alive.shape)}")
        Dt = Dt[alive]
    N = Dt.shape[0]
    n_pairs = N * (N - 1) // 2
    thr = torch.as_tensor([] if thresholds is None else thresholds, dtype=torch.float64).reshape(-1)
    thr_sorted, thr_order = torch.sort(thr)
    counts_sorted = torch.zeros(thr.numel() + 1, dtype=torch.int64)
    hist = torch.zeros(n_bins, dtype=torch.int64)
    eps_j = torch.zeros(N, dtype=torch.float64)
    keep = [] if n_pairs <= max_exact_pairs else None
    for s in range(0, N, block_size):
        e = min(N, s + block_size)
        blk = (Dt[s:e] @ Dt.T).abs_().clamp_(max=1.0)  # [b, N]
        idx = torch.arange(s, e)
        blk[idx - s, idx] = -1.0  # exclude the diagonal from the maxima
        eps_j[s:e] = blk.max(dim=1).values if N > 1 else 0.0
        vals = blk[:, s:][torch.arange(N - s)[None, :] > torch.arange(e - s)[:, None]]  # strict upper triangle
        if vals.numel():
            bins = (vals * n_bins).to(torch.int64).clamp_(max=n_bins - 1)
            hist += torch.bincount(bins, minlength=n_bins)
            if thr.numel():
                # number of pairs with value < t_i == number with searchsorted(t, v, right) <= i
                pos = torch.searchsorted(thr_sorted, vals, right=True)
                counts_sorted += torch.bincount(pos, minlength=thr.numel() + 1)
            if keep is not None:
                keep.append(vals)
    # pos(v) = #{thresholds <= v}; v < t_i (sorted index i) iff pos(v) <= i, so count_i = sum_{p <= i} #{pos = p}
    below_sorted = torch.cumsum(counts_sorted, 0)[: thr.numel()]
    counts_below = torch.empty_like(below_sorted)
    counts_below[thr_order] = below_sorted
    values = torch.sort(torch.cat(keep)).values if keep else (torch.zeros(0, dtype=torch.float64) if keep is not None else None)
    eps = float(eps_j.max()) if N > 1 else 0.0
    return Coherence(eps, eps_j, n_pairs, hist, counts_below, thr, values)


# ---------------------------------------------------------------------------------------------------------------------
# q* (SPEC §4)
# ---------------------------------------------------------------------------------------------------------------------
def uniqueness_bound(K: torch.Tensor | int) -> torch.Tensor:
    """``b(K) = 1 / (2K - 1)`` for ``K >= 1`` and ``b(0) = +inf`` (SPEC §4), float64, elementwise."""
    K = torch.as_tensor(K, dtype=torch.float64)
    return torch.where(K >= 1, 1.0 / (2.0 * K - 1.0).clamp_min(1.0), torch.full_like(K, math.inf))


class QStarResult(NamedTuple):
    """Stability ``q*`` of a unit set and the curves it comes from (paper §4, SPEC §4)."""

    q_star: float
    """``sup {q in (0, 1] : mu_q < b(K_q)}``, with ``sup {} = 0``; exact (no grid), in ``[0, 1]``."""
    q: torch.Tensor
    """``[n_grid]`` float64 quantile levels at which the curves are tabulated (for plots)."""
    mu_q: torch.Tensor
    """``[n_grid]`` coherence quantile ``Q_mu(q)`` (pairwise ``|G|`` for "pairwise", ``mu_n`` for "support"/"joint")."""
    K_q: torch.Tensor
    """``[n_grid]`` support-size quantile ``Q_K(q)`` (float64 holding integers)."""
    bound: torch.Tensor
    """``[n_grid]`` ``b(K_q) = 1/(2 K_q - 1)`` (``inf`` where ``K_q = 0``)."""
    n_alive: int
    """Number of alive atoms (non-zero on at least one evaluated token)."""
    estimator: str
    """"pairwise" (P, default), "support" (Jm) or "joint" (Jj)."""


def _lower_quantile_sorted(x_sorted: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    n = x_sorted.numel()
    if n == 0:
        return torch.zeros_like(q)
    k = torch.ceil(q * n).clamp(1, n).to(torch.int64)
    return x_sorted[k - 1].to(torch.float64)


def q_star_from_samples(count_mu_below, n_mu: int, K: torch.Tensor) -> float:
    """Exact ``q* = sup {q in (0,1] : Q_mu(q) < b(Q_K(q))}`` from a coherence sample and a ``K``-sample (SPEC §4).

    ``Q_K`` is constant on ``(D_{w-1}/n, D_w/n]`` for the cumulative counts ``D_w`` of the sorted distinct
    support sizes ``k_w``; there ``Q_mu(q) < b(k_w)`` iff ``q <= c_w / n_mu`` with
    ``c_w = #{mu < b(k_w)}``. So ``q* = max_w min(D_w/n, c_w/n_mu)`` over the ``w`` with
    ``c_w/n_mu > D_{w-1}/n`` (0 if none): exact, with no grid or bisection.

    Args:
        count_mu_below: callable mapping a float64 tensor of thresholds ``[m]`` to the int64 counts
            ``#{mu < t}`` ``[m]`` of the coherence sample.
        n_mu: size of the coherence sample. ``n_mu = 0`` (no pair to compare) makes the coherence
            condition vacuous: ``Q_mu = 0`` for every ``q``.
        K: ``[n_tokens]`` support sizes (any integer dtype).

    Returns:
        ``q*`` in ``[0, 1]``; 0 when ``K`` is empty.
    """
    K = torch.as_tensor(K).reshape(-1).to(torch.int64)
    n = K.numel()
    if n == 0:
        return 0.0
    kv, kc = torch.unique(K, sorted=True, return_counts=True)
    D = torch.cumsum(kc, 0).to(torch.float64)
    D_prev = torch.cat([torch.zeros(1, dtype=torch.float64), D[:-1]])
    b = uniqueness_bound(kv)
    if n_mu == 0:
        frac = torch.ones_like(b)
    else:
        frac = torch.as_tensor(count_mu_below(b), dtype=torch.float64) / n_mu
    right = torch.minimum(D / n, frac)
    ok = frac > D_prev / n
    return float(right[ok].max()) if bool(ok.any()) else 0.0


def support_coherence(codes: torch.Tensor, dictionary: torch.Tensor, aip: AIP, *, max_elements: int = 2 * 10**7) -> torch.Tensor:
    """Per-activation support coherence ``mu_n = max_{j != k in S_n} |G_jk|`` (SPEC §4, estimators Jm/Jj).

    ``mu_n = 0`` when ``K_n <= 1``. Computed in chunks of rows from padded supports, so dense codes
    (neurons, ``K_n = d_model``) work too.

    Args:
        codes: ``[n_tokens, n_latents]``.
        dictionary: ``[d_model, n_latents]``.
        aip: the fitted AIP.
        max_elements: bound on the elements of the per-chunk ``[rows, K_max, max(K_max, r)]`` work tensors.

    Returns:
        ``[n_tokens]`` float64.
    """
    codes = _as2d(codes, "codes")
    Dt = whitened_atoms(dictionary, aip)  # [N, r]
    if codes.shape[1] != Dt.shape[0]:
        raise ValueError(f"codes have {codes.shape[1]} latents but the dictionary has {Dt.shape[0]} atoms")
    active = codes != 0
    K = active.sum(dim=1)
    n = codes.shape[0]
    out = torch.zeros(n, dtype=torch.float64)
    kmax = int(K.max()) if n else 0
    if kmax <= 1:
        return out
    r = Dt.shape[1]
    rows = max(1, max_elements // (kmax * max(kmax, r)))
    for s in range(0, n, rows):
        a = active[s : s + rows]
        # padded support indices: the active columns first (stable sort on ~active)
        idx = torch.sort((~a).to(torch.int8), dim=1, stable=True).indices[:, :kmax]
        valid = torch.gather(a, 1, idx)  # [c, kmax]
        atoms = Dt[idx]  # [c, kmax, r]
        g = torch.bmm(atoms, atoms.transpose(1, 2)).abs_().clamp_(max=1.0)
        m = valid[:, :, None] & valid[:, None, :] & ~torch.eye(kmax, dtype=torch.bool)[None]
        g = torch.where(m, g, torch.zeros((), dtype=g.dtype))
        out[s : s + rows] = g.amax(dim=(1, 2))
    return out


def q_star(codes: torch.Tensor, dictionary: torch.Tensor, aip: AIP, *,
           estimator: Literal["pairwise", "support", "joint"] = "pairwise", alive: torch.Tensor | None = None,
           n_grid: int = 1001, block_size: int = 1024, n_bins: int = 10**6) -> QStarResult:
    """Stability ``q*`` of a dictionary on its codes (paper §4, SPEC §4).

    Estimators (SPEC §4):

    - ``"pairwise"`` (P, default): the ``mu``-sample is ``{|G_jk| : j < k alive}``, the ``K``-sample is
      ``{K_n}``; lower quantiles ``Q_x(q) = x_(ceil(q |x|))``; ``q* = sup {q : mu_q < b(K_q)}``. The
      counts of pairs below each bound are exact (blockwise, any ``N``), so ``q*`` is exact.
    - ``"support"`` (Jm): the ``mu``-sample is the per-activation support coherence ``mu_n`` of
      :func:`support_coherence`, with the same sup over marginal quantiles.
    - ``"joint"`` (Jj): the fraction of activations with ``mu_n < b(K_n)``.

    Edge cases (all return a result, none raise):

    - rows with ``K_n = 0`` have ``b(0) = +inf``: they never violate the bound;
    - ``K_n = 1`` needs ``mu < 1``: collinear duplicates (``|G| = 1``) violate it;
    - fewer than 2 alive atoms: no pair exists, the coherence condition is vacuous (``mu_q = 0``),
      so ``q* = 1`` if at least one atom is alive;
    - **no alive atom** (all codes zero): the unit set decomposes nothing, and ``q*`` is defined as
      0 ("no activation has a certified decomposition"), with ``n_alive = 0``.

    Args:
        codes: ``[n_tokens, n_latents]``; support = non-zero entries. Neurons: ``codes = x``, ``D = I``.
        dictionary: ``[d_model, n_latents]``, raw coordinates.
        aip: the fitted AIP.
        estimator: ``"pairwise"``, ``"support"`` or ``"joint"``.
        alive: optional ``[n_latents]`` bool mask overriding the alive set ``A = union_n S_n``.
        n_grid: points of the tabulated curves (``q = i / (n_grid - 1)``, ``i >= 1``, plus ``q*``).
        block_size, n_bins: passed to :func:`coherence`.

    Returns:
        A :class:`QStarResult`.

    Raises:
        ValueError: bad shapes, an unknown estimator, or an alive atom of zero AIP norm.
    """
    codes = _as2d(codes, "codes")
    if estimator not in ("pairwise", "support", "joint"):
        raise ValueError(f"estimator must be 'pairwise', 'support' or 'joint'; got {estimator!r}")
    D = _as2d(dictionary, "dictionary")
    if codes.shape[1] != D.shape[1]:
        raise ValueError(f"codes have {codes.shape[1]} latents but the dictionary has {D.shape[1]} atoms")
    active = codes != 0
    K = active.sum(dim=1)
    alive_mask = active.any(dim=0) if alive is None else torch.as_tensor(alive, dtype=torch.bool)
    n_alive = int(alive_mask.sum())
    grid = torch.cat([torch.arange(1, n_grid, dtype=torch.float64) / (n_grid - 1)]) if n_grid > 1 else torch.ones(1, dtype=torch.float64)
    K_sorted = torch.sort(K).values
    if n_alive == 0 or codes.shape[0] == 0:
        Kq = _lower_quantile_sorted(K_sorted, grid)
        return QStarResult(0.0, grid, torch.zeros_like(grid), Kq, uniqueness_bound(Kq), 0, estimator)

    if estimator == "pairwise":
        kv = torch.unique(K)
        coh = coherence(D[:, alive_mask], aip, block_size=block_size, n_bins=n_bins, thresholds=uniqueness_bound(kv))
        table = dict(zip(coh.thresholds.tolist(), coh.counts_below.tolist()))

        def count_below(t: torch.Tensor) -> torch.Tensor:
            return torch.tensor([table[float(v)] for v in t.tolist()], dtype=torch.int64)

        qs = q_star_from_samples(count_below, coh.n_pairs, K)
        grid = torch.sort(torch.cat([grid, torch.tensor([qs], dtype=torch.float64)]).clamp_min(1e-300)).values
        mu_q = coh.quantile(grid)
    else:
        mu_n = support_coherence(codes, D, aip)
        if estimator == "joint":
            qs = float((mu_n < uniqueness_bound(K)).to(torch.float64).mean())
        else:
            mu_sorted = torch.sort(mu_n).values
            qs = q_star_from_samples(lambda t: torch.searchsorted(mu_sorted, t, side="left"), mu_sorted.numel(), K)
        grid = torch.sort(torch.cat([grid, torch.tensor([qs], dtype=torch.float64)]).clamp_min(1e-300)).values
        mu_q = _lower_quantile_sorted(torch.sort(mu_n).values, grid)
    Kq = _lower_quantile_sorted(K_sorted, grid)
    return QStarResult(qs, grid, mu_q, Kq, uniqueness_bound(Kq), n_alive, estimator)


class Certificate(NamedTuple):
    """Per-activation uniqueness certificate with the global coherence (SPEC §4)."""

    fraction: float
    """Fraction of activations with ``K_n < (1 + 1/mu) / 2``."""
    mask: torch.Tensor
    """``[n_tokens]`` bool, True where the activation's decomposition is certified unique."""
    mu: float
    """Global coherence ``max_{j != k alive} |G_jk|`` (0 with fewer than two alive atoms)."""
    k_bound: float
    """``(1 + 1/mu) / 2`` (``inf`` when ``mu = 0``): certified iff ``K_n`` is below it."""


def uniqueness_certificate(codes: torch.Tensor, dictionary: torch.Tensor, aip: AIP, *, block_size: int = 1024) -> Certificate:
    """Donoho-Elad certificate per activation: ``K_n < (1 + 1/mu) / 2`` with the global AIP coherence (SPEC §4).

    Unlike the support-only estimators this is a valid certificate: a ``K_n``-sparse code below the
    bound is the unique sparsest decomposition over the whole dictionary. ``mu`` is taken over the
    alive atoms; rows with ``K_n = 0`` are certified (trivially unique).

    Args:
        codes: ``[n_tokens, n_latents]``.
        dictionary: ``[d_model, n_latents]``.
        aip: the fitted AIP.

    Returns:
        A :class:`Certificate`.
    """
    codes = _as2d(codes, "codes")
    active = codes != 0
    K = active.sum(dim=1).to(torch.float64)
    alive = active.any(dim=0)
    if int(alive.sum()) >= 2:
        mu = coherence(dictionary[:, alive], aip, block_size=block_size, n_bins=1, max_exact_pairs=0).eps
    else:
        mu = 0.0
    kb = math.inf if mu == 0 else (1.0 + 1.0 / mu) / 2.0
    mask = K < kb
    frac = float(mask.to(torch.float64).mean()) if codes.shape[0] else 0.0
    return Certificate(frac, mask, mu, kb)


# ---------------------------------------------------------------------------------------------------------------------
# One call per unit set
# ---------------------------------------------------------------------------------------------------------------------
def evaluate_dictionary(x: torch.Tensor, codes: torch.Tensor, x_hat: torch.Tensor, dictionary: torch.Tensor,
                        aip: AIP, *, estimator: Literal["pairwise", "support", "joint"] = "pairwise",
                        return_q_star: bool = False):
    """Every metric of paper §4 for one unit set (neurons, features or atoms).

    Args:
        x: activations ``[n_tokens, d_model]`` (held out from training, SPEC §3).
        codes: ``[n_tokens, n_latents]`` (neurons: ``x`` itself).
        x_hat: reconstructions ``[n_tokens, d_model]`` (neurons: ``x``).
        dictionary: ``[d_model, n_latents]`` raw-coordinate atoms (neurons: identity).
        aip: the fitted AIP.
        estimator: the ``q*`` estimator (SPEC §4).
        return_q_star: also return the :class:`QStarResult` (its curves, for plots).

    Returns:
        ``{"r2_aip", "explained_variance", "r2_per_dim", "r2_uncentred", "q_star", "l0",
        "frac_dead" (fraction), "n_dead" (count), "n_latents", "n_alive"}``, and with ``return_q_star`` the
        tuple ``(that dict, QStarResult)``.

    Raises:
        TypeError, ValueError: as :func:`r2_aip` and :func:`q_star`; codes whose row count differs from ``x``'s.
    """
    codes = _as2d(codes, "codes")
    if codes.shape[0] != torch.as_tensor(x).shape[0]:
        raise ValueError(f"codes have {codes.shape[0]} rows but x has {torch.as_tensor(x).shape[0]}: one code per activation")
    out: dict[str, float] = dict(r2_all(x, x_hat, aip))
    qs = q_star(codes, dictionary, aip, estimator=estimator)
    dl = dead_latents(codes)
    out.update(q_star=qs.q_star, l0=l0(codes), frac_dead=dl.frac_dead, n_dead=dl.n_dead,
               n_latents=int(codes.shape[1]), n_alive=qs.n_alive)
    return (out, qs) if return_q_star else out
