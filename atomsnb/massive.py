"""Massive activations: the few tokens whose residual-stream norm dwarfs the rest, and what they do to ``S``.

Real LLMs carry *massive activations* (Sun et al., 2024, "Massive Activations in Large Language Models"):
a few activations orders of magnitude larger than the median, on a few fixed coordinates. The uncentred
second moment ``E[h h^T]`` that defines the AIP's ``S = E[h h^T]^{-1}`` (paper §3, SPEC §1.1) is then
dominated by them. SPEC §1.1 names only the BOS / position-0 token (dropped by :mod:`atomsnb.activations`);
the paper does not say how it handled others. In the book's models they take two forms (chapter 1 measures
them per layer, in the build): a few tokens whose norm is tens to hundreds of times the median (in SmolLM2-135M,
which adds no BOS, copies of the attention sink a few positions into windows that begin with a repeated token),
and, in Gemma 3 270M, one coordinate that is large in every token. Leaving tokens out can only address the first.

This module makes the choice explicit and measurable:

- :func:`massive_token_mask` states the criterion: a token is *massive* when its Euclidean norm exceeds
  ``k`` times the median token norm of the same activations (default :data:`DEFAULT_K` = 20, chosen to separate
  SmolLM2's sink copies from the continuous tail of ordinary tokens; chapter 1 prints how many it flags per layer;
  medians here are lower medians, ``sorted(v)[(n - 1) // 2]``, as :func:`torch.median`);
- ``AIP.fit(acts, exclude=mask)`` (:class:`atomsnb.aip.AIP`) fits ``S`` without the masked tokens (the default,
  ``exclude=None``, fits on every token, as SPEC §1.1 states it);
- :func:`massive_activation_stats` reports what the masked tokens carry and the conditioning of
  ``E[h h^T]`` with and without them.

What the choice changes is shown by :func:`atomsnb.shift.massive_choice` in chapter 1.

All statistics are computed in float64.
"""

from __future__ import annotations

import math

import torch

from .aip import symmetric_eigenvalues

__all__ = ["DEFAULT_K", "token_norms", "massive_token_mask", "massive_activation_stats"]

#: Default criterion: a token is massive when its norm exceeds this multiple of the median token norm
#: (chosen to separate SmolLM2's attention-sink copies from the continuous tail of ordinary tokens).
DEFAULT_K = 20.0


def _check_acts(acts) -> torch.Tensor:
    x = torch.as_tensor(acts)
    if x.dim() != 2 or x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(f"acts must be a non-empty 2-D tensor [n_tokens, d_model]; got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"acts must be a floating-point tensor; got dtype {x.dtype}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("acts contain NaN/inf values; massive-activation statistics need finite activations")
    return x


def token_norms(acts: torch.Tensor, batch_size: int = 65536) -> torch.Tensor:
    """Euclidean norm of every token's activation, ``[n_tokens, d_model]`` -> ``[n_tokens]`` float64."""
    x = _check_acts(acts)
    return torch.cat([x[s:s + batch_size].to(torch.float64).norm(dim=1) for s in range(0, x.shape[0], batch_size)])


def massive_token_mask(acts: torch.Tensor, k: float = DEFAULT_K) -> torch.Tensor:
    """Tokens whose norm exceeds ``k`` times the median token norm: ``||m_n|| > k * median_n' ||m_n'||``.

    Args:
        acts: activations ``[n_tokens, d_model]`` (any float dtype).
        k: the multiple of the median norm (> 1; default :data:`DEFAULT_K`).

    Returns:
        ``[n_tokens]`` bool, ``True`` for a massive token (pass it as ``AIP.fit(acts, exclude=mask)``).

    Raises:
        ValueError: ``k`` not a finite number > 1, or ``acts`` not a non-empty finite 2-D tensor.
    """
    if isinstance(k, bool) or not isinstance(k, (int, float)) or not math.isfinite(k) or k <= 1:
        raise ValueError(f"k must be a finite number > 1 (multiple of the median token norm); got {k!r}")
    norms = token_norms(acts)
    return norms > float(k) * float(norms.median())


def _column_sq_sum(x: torch.Tensor, batch_size: int = 16384) -> torch.Tensor:
    """``sum_i x_ij^2`` per coordinate ``j``, ``[d_model]`` float64 (the diagonal of ``n E[m m^T]``)."""
    out = torch.zeros(x.shape[1], dtype=torch.float64)
    for start in range(0, x.shape[0], batch_size):
        out += x[start:start + batch_size].to(torch.float64).square().sum(dim=0)
    return out


def _second_moment(x: torch.Tensor, batch_size: int = 16384) -> torch.Tensor:
    d = x.shape[1]
    out = torch.zeros(d, d, dtype=torch.float64)
    for s in range(0, x.shape[0], batch_size):
        b = x[s:s + batch_size].to(torch.float64)
        out.addmm_(b.T, b)
    return out / max(1, x.shape[0])


def _cond(m: torch.Tensor) -> float:
    ev = symmetric_eigenvalues(m)
    return float(ev[-1] / ev[0]) if float(ev[0]) > 0 else math.inf


def massive_activation_stats(acts: torch.Tensor, *, k: float = DEFAULT_K, n_top: int = 32,
                             mask: torch.Tensor | None = None, conditioning: bool = True) -> dict:
    """How much a few tokens and one coordinate dominate the second moment of ``acts``.

    Args:
        acts: activations ``[n_tokens, d_model]`` (one layer).
        k: criterion of :func:`massive_token_mask` (used when ``mask`` is not given).
        n_top: the number of largest-norm tokens whose share is reported.
        mask: ``[n_tokens]`` bool, the tokens to treat as massive (default: :func:`massive_token_mask` with ``k``).
        conditioning: compute ``cond`` and ``cond_unmasked`` (two eigendecompositions; False leaves them out).

    Returns:
        A dict of floats/ints:

        - ``max_abs``, ``max_abs_dim``, ``max_abs_token``: the largest ``|x|``, its coordinate and token row;
        - ``median_abs``: median ``|x|`` over all entries; ``max_abs_ratio`` = ``max_abs / median_abs``;
        - ``norm_median``, ``norm_max``: token norms;
        - ``n_tokens``, ``n_top``, ``share_sq_norm_top``: share of ``sum ||m||^2`` carried by the ``n_top``
          largest-norm tokens;
        - ``k``, ``n_masked``, ``frac_masked``, ``share_sq_norm_masked``: the same for the masked tokens;
        - ``top_dim``, ``share_trace_top_dim``: the coordinate with the largest ``E[m_j^2]`` and its share of
          ``trace(E[m m^T])``; ``share_trace_top_dim_unmasked``: the same share without the masked tokens;
        - ``cond``, ``cond_unmasked``: condition number of ``E[h h^T]`` with all tokens / without the masked ones
          (``inf`` if singular).

    Raises:
        ValueError: bad ``acts``, ``k``, ``n_top`` or a ``mask`` of the wrong shape, or every token masked.
    """
    x = _check_acts(acts)
    n = x.shape[0]
    if isinstance(n_top, bool) or not isinstance(n_top, int) or not 1 <= n_top <= n:
        raise ValueError(f"n_top must be an integer in 1..n_tokens={n}; got {n_top!r}")
    if mask is None:
        mask = massive_token_mask(x, k)
    else:
        mask = torch.as_tensor(mask)
        if mask.dtype != torch.bool or mask.shape != (n,):
            raise ValueError(f"mask must be a bool tensor of shape ({n},); got {mask.dtype} {tuple(mask.shape)}")
    if bool(mask.all()):
        raise ValueError(f"every one of the {n} tokens is masked; nothing is left to fit")
    norms = token_norms(x)
    sq = norms.square()
    total = float(sq.sum())
    absx = x.abs()
    flat = int(absx.reshape(-1).argmax())
    # diag(E[m m^T]) is a column sum of squares: the full second moments are only needed for the conditioning
    diag = _column_sq_sum(x)
    top_dim = int(diag.argmax())
    diag_rest = diag - _column_sq_sum(x[mask])  # float64: the subtraction loses < 1e-12 relative
    # the median of a set of floats is one of them: no wider dtype is needed
    median_abs = float(absx.reshape(-1).median()) if x.numel() <= 16_000_000 else \
        float(absx[torch.randperm(n, generator=torch.Generator().manual_seed(0))[:16_000_000 // x.shape[1]]]
              .reshape(-1).median())
    return {
        "n_tokens": n,
        "max_abs": float(absx.reshape(-1)[flat]),
        "max_abs_dim": flat % x.shape[1],
        "max_abs_token": flat // x.shape[1],
        "median_abs": median_abs,
        "max_abs_ratio": float(absx.reshape(-1)[flat]) / median_abs if median_abs > 0 else math.inf,
        "norm_median": float(norms.median()),
        "norm_max": float(norms.max()),
        "n_top": n_top,
        "share_sq_norm_top": float(sq.topk(n_top).values.sum()) / total if total > 0 else 0.0,
        "k": float(k) if mask is not None else None,
        "n_masked": int(mask.sum()),
        "frac_masked": float(mask.double().mean()),
        "share_sq_norm_masked": float(sq[mask].sum()) / total if total > 0 else 0.0,
        "top_dim": top_dim,
        "share_trace_top_dim": float(diag[top_dim] / diag.sum()),
        "share_trace_top_dim_unmasked": float(diag_rest.max() / diag_rest.sum()),
        **({"cond": _cond(_second_moment(x)), "cond_unmasked": _cond(_second_moment(x[~mask]))} if conditioning else {}),
    }
