"""Representation shift (paper §3, SPEC §2): Euclidean vs AIP angles of activation pairs, per layer.

The paper's finding: Euclidean angles between random pairs of activations sit well below 90
degrees (the activations share a common direction), while AIP angles re-centre on 90 degrees.
On the data ``S`` was fitted on, the re-centring is guaranteed by construction (whitened vectors
have identity second moment, so the mean cosine of random pairs is at most about ``1/H``,
SPEC §1.5); :func:`angle_study` therefore always fits ``S`` on one split and measures on others
(held-out text of the same domain, and text of another domain), and :func:`related_pair_angles`
compares random pairs with pairs that *should* be related (same token in different contexts,
neighbouring tokens of one context), the test the construction does not pass for free.
"""

from __future__ import annotations

from typing import Mapping

import pandas as pd
import torch

from .aip import AIP, euclidean_angles, sample_pairs, summarize_angles

__all__ = ["angle_study", "pair_angles", "related_pair_angles"]


def pair_angles(aip: AIP, acts: torch.Tensor, *, n_pairs: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Euclidean and AIP angles (degrees) of ``n_pairs`` random pairs of rows of ``acts`` ``[n, d_model]``.

    Returns:
        ``(euclidean [n_pairs], aip [n_pairs])`` float64 (SPEC §2).
    """
    i, j = sample_pairs(acts.shape[0], n_pairs, seed=seed)
    return euclidean_angles(acts[i], acts[j]), aip.angles(acts[i], acts[j])


def angle_study(fit: Mapping[int, torch.Tensor], evaluations: Mapping[str, Mapping[int, torch.Tensor]], *,
                n_pairs: int = 20_000, seed: int = 0, ridge: float = 0.0) -> tuple[pd.DataFrame, dict[int, AIP]]:
    """Fit ``S`` per layer on ``fit`` and summarise pair angles on every evaluation set.

    Args:
        fit: layer -> activations ``[n_fit, d_model]`` used to estimate ``S`` (SPEC §1.1).
        evaluations: name -> (layer -> activations ``[n_eval, d_model]``), e.g.
            ``{"fit (in-sample)": fit, "held-out": ..., "other domain": ...}``.
        n_pairs: random pairs per layer and set (SPEC §2 suggests 2e4).
        seed: pair-sampling seed (the same pairs of indices for every layer).
        ridge: relative ridge for :class:`AIP` (0 = none, the default).

    Returns:
        ``(table, aips)``: a long table with one row per (layer, set) and columns ``layer``, ``set``,
        ``euclidean_mean/median/std``, ``aip_mean/median/std`` (degrees), ``shift`` (``90 - euclidean_mean``),
        ``condition_number``; and the fitted :class:`AIP` per layer.

    Raises:
        InsufficientTokensError / SingularSecondMomentError: from :meth:`AIP.fit`.
    """
    rows, aips = [], {}
    for layer, x in fit.items():
        aip = AIP.fit(x, ridge=ridge)
        aips[layer] = aip
        for name, sets in evaluations.items():
            e, a = pair_angles(aip, sets[layer], n_pairs=n_pairs, seed=seed)
            s = summarize_angles(e, a)
            rows.append({"layer": layer, "set": name, "euclidean_mean": s.euclidean_mean,
                         "euclidean_median": s.euclidean_median, "euclidean_std": s.euclidean_std,
                         "aip_mean": s.aip_mean, "aip_median": s.aip_median, "aip_std": s.aip_std,
                         "shift": s.shift, "condition_number": aip.condition_number})
    return pd.DataFrame(rows), aips


def related_pair_angles(aip: AIP, acts: torch.Tensor, token_ids: torch.Tensor, window: torch.Tensor, *,
                        n_pairs: int = 5000, seed: int = 0) -> pd.DataFrame:
    """Mean Euclidean and AIP angles (degrees) of random, same-token and same-context pairs.

    - ``random``: uniform pairs of distinct tokens;
    - ``same token, other context``: two occurrences of one token id in different windows;
    - ``same context, other token``: two different positions of one window.

    A metric that carries meaning puts related pairs well below 90 degrees while random pairs sit
    near 90; this is informative even on the data ``S`` was fitted on.

    Args:
        acts: ``[n, d_model]``; token_ids, window: ``[n]`` int64 (from :class:`atomsnb.activations.Activations`).

    Returns:
        A table with columns ``pairs``, ``n_pairs``, ``euclidean_mean``, ``aip_mean``, ``aip_median``.
    """
    g = torch.Generator().manual_seed(seed)
    n = acts.shape[0]
    i, j = sample_pairs(n, n_pairs, seed=seed)
    groups = {"random": (i, j)}
    # same token, different window: sort by token, pair neighbours in a random permutation within each token
    perm = torch.randperm(n, generator=g)
    order = perm[torch.argsort(token_ids[perm], stable=True)]
    a, b = order[:-1], order[1:]
    keep = (token_ids[a] == token_ids[b]) & (window[a] != window[b])
    a, b = a[keep], b[keep]
    sel = torch.randperm(len(a), generator=g)[:n_pairs]
    groups["same token, other context"] = (a[sel], b[sel])
    # same window, different position
    order = perm[torch.argsort(window[perm], stable=True)]
    a, b = order[:-1], order[1:]
    keep = window[a] == window[b]
    a, b = a[keep], b[keep]
    sel = torch.randperm(len(a), generator=g)[:n_pairs]
    groups["same context, other token"] = (a[sel], b[sel])
    rows = []
    for name, (p, q) in groups.items():
        if len(p) == 0:
            continue
        e, s = euclidean_angles(acts[p], acts[q]), aip.angles(acts[p], acts[q])
        rows.append({"pairs": name, "n_pairs": int(len(p)), "euclidean_mean": float(e.mean()),
                     "aip_mean": float(s.mean()), "aip_median": float(s.median())})
    return pd.DataFrame(rows)
