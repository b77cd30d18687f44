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

import re
from typing import Mapping, NamedTuple

import pandas as pd
import torch

from .activations import Activations
from .aip import (
    AIP,
    euclidean_angles,
    sample_pairs,
    summarize_angles,
    symmetric_eigenvalues,
)
from .massive import massive_activation_stats, massive_token_mask
from .models import PACKAGED_MODELS, model_card
from .packaged import card_summary
from .paper import AIP_CENTRE_TOL_DEG, RELATED_GAP_MIN_DEG

__all__ = ["angle_study", "pair_angles", "related_pair_angles", "reader_table", "related_reader_table", "describe",
           "IN_SAMPLE", "HELD_OUT", "OTHER_DOMAIN", "massive_choice", "massive_reader_table", "describe_massive_choice", "WHITENING_GAIN",
           "SET_KEYS", "models_table", "by_model", "ordinary_mask", "AngleStudy", "angle_study_sets",
           "first_middle_last", "layer_pair_angles", "related_study", "check_construction", "claims_table"]

#: How much better (ratio of condition numbers) excluding massive tokens must whiten held-out ordinary tokens
#: before the numbers are said to support excluding them (:func:`describe_massive_choice`).
WHITENING_GAIN = 10.0

#: The evaluation sets' names used by the book (chapter 1) and by the claim checks of :mod:`atomsnb.paper`.
IN_SAMPLE, HELD_OUT, OTHER_DOMAIN = "in-sample (fit)", "held-out", "other domain"


def pair_angles(aip: AIP, acts: torch.Tensor, *, n_pairs: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Euclidean and AIP angles (degrees) of ``n_pairs`` random pairs of rows of ``acts`` ``[n, d_model]``.

    Returns:
        ``(euclidean [n_pairs], aip [n_pairs])`` float64 (SPEC §2).
    """
    i, j = sample_pairs(acts.shape[0], n_pairs, seed=seed)
    return euclidean_angles(acts[i], acts[j]), aip.pair_angles(acts, i, j)


def angle_study(fit: Mapping[int, torch.Tensor], evaluations: Mapping[str, Mapping[int, torch.Tensor]], *,
                n_pairs: int = 20_000, seed: int = 0, ridge: float = 0.0,
                aips: Mapping[int, AIP] | None = None) -> tuple[pd.DataFrame, dict[int, AIP]]:
    """Fit ``S`` per layer on ``fit`` and summarise pair angles on every evaluation set.

    Args:
        fit: layer -> activations ``[n_fit, d_model]`` used to estimate ``S`` (SPEC §1.1).
        evaluations: name -> (layer -> activations ``[n_eval, d_model]``), e.g.
            ``{"fit (in-sample)": fit, "held-out": ..., "other domain": ...}``.
        n_pairs: random pairs per layer and set (SPEC §2 suggests 2e4).
        seed: pair-sampling seed (the same pairs of indices for every layer).
        ridge: relative ridge for :class:`AIP` (0 = none, the default).
        aips: optional layer -> :class:`AIP` already fitted on exactly ``fit`` (e.g. the *excluded* fits that
            :func:`massive_choice` returns), used instead of fitting again; checked by token count.

    Returns:
        ``(table, aips)``: a long table with one row per (layer, set) and columns ``layer``, ``set``,
        ``euclidean_mean/median/std``, ``aip_mean/median/std`` (degrees), ``shift`` (``90 - euclidean_mean``),
        ``condition_number``; and the fitted :class:`AIP` per layer.

    Raises:
        InsufficientTokensError / SingularSecondMomentError: from :meth:`AIP.fit`.
    """
    given = dict(aips or {})
    for layer, aip in given.items():
        if layer not in fit or aip.n_tokens != fit[layer].shape[0] or aip.d_model != fit[layer].shape[1] \
                or aip.ridge != float(ridge):
            n = None if layer not in fit else tuple(fit[layer].shape)
            raise ValueError(f"aips[{layer}] was fitted on {aip.n_tokens} tokens of d_model {aip.d_model} with ridge "
                             f"{aip.ridge:g}; fit[{layer}] has shape {n} and ridge is {ridge:g}: pass AIPs fitted on "
                             f"exactly these activations, or none")
    rows, aips = [], {}
    for layer, x in fit.items():
        aip = given[layer] if layer in given else AIP.fit(x, ridge=ridge)
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


# ---------------------------------------------------------------------------------------------------------------------
# Tables and readings for a reader
# ---------------------------------------------------------------------------------------------------------------------
_STATS = {"mean": "mean", "median": "median", "std": "std"}


def reader_table(table: pd.DataFrame, *, stats: tuple[str, ...] = ("mean",)) -> pd.DataFrame:
    """:func:`angle_study`'s long table for a reader: one row per layer, angles in degrees, one decimal.

    Args:
        table: :func:`angle_study` output.
        stats: which of ``"mean"``, ``"median"``, ``"std"`` to show.

    Returns:
        Index ``layer``; a two-level header (evaluation set, ``"Euclidean <stat> (degrees)"`` /
        ``"AIP <stat> (degrees)"``), sets in the order they appear in ``table``.

    Raises:
        ValueError: an unknown statistic.
    """
    bad = [s for s in stats if s not in _STATS]
    if bad or not stats:
        raise ValueError(f"stats must be a non-empty subset of {tuple(_STATS)}; got {stats!r}")
    sets = list(dict.fromkeys(table["set"]))
    cols = {}
    for name in sets:
        t = table[table["set"] == name].set_index("layer")
        for st in stats:
            cols[(name, f"Euclidean {st} (degrees)")] = t[f"euclidean_{st}"].round(1)
            cols[(name, f"AIP {st} (degrees)")] = t[f"aip_{st}"].round(1)
    out = pd.DataFrame(cols)
    out.index.name = "layer"
    return out


def related_reader_table(related: pd.DataFrame) -> pd.DataFrame:
    """:func:`related_pair_angles` rows of several layers (with a ``layer`` column) for a reader: mean AIP angle
    (degrees, one decimal) per layer and kind of pair."""
    out = related.pivot_table(index="layer", columns="pairs", values="aip_mean", sort=False).round(1)
    out.columns = [f"{c}: AIP mean (degrees)" for c in out.columns]
    return out


def describe(table: pd.DataFrame, related: pd.DataFrame | None = None, *, fit_corpus: str, other_corpus: str,
             held_out: str = HELD_OUT, other: str = OTHER_DOMAIN) -> list[str]:
    """Chapter 1's readings that are not claims of the paper: how far ``S`` transfers to another domain, and
    whether the AIP keeps related activations together. Each number-dependent word is chosen from the numbers
    (thresholds :data:`atomsnb.paper.AIP_CENTRE_TOL_DEG`, :data:`atomsnb.paper.RELATED_GAP_MIN_DEG`).

    Args:
        table: :func:`angle_study` output with rows of sets ``held_out`` and ``other`` (``layer``, ``aip_mean``).
        related: :func:`related_pair_angles` rows with a ``layer`` column (or None to skip that reading).
        fit_corpus, other_corpus: the corpora's names, quoted.

    Returns:
        The sentences.

    Raises:
        ValueError: a set missing from ``table``.
    """
    lines = []
    for name in (held_out, other):
        if not (table["set"] == name).any():
            raise ValueError(f"the angle table has no rows of set {name!r}; sets present: {sorted(set(table['set']))}")
    ho = table[table["set"] == held_out].set_index("layer")["aip_mean"]
    od = table[table["set"] == other].set_index("layer")["aip_mean"]
    dev_ho, dev_od = float((ho - 90).abs().max()), float((od - 90).abs().max())
    rng = f"{od.min():.1f}-{od.max():.1f} degrees"
    if dev_od <= AIP_CENTRE_TOL_DEG:
        verdict = (f"the re-centring holds there too, within {AIP_CENTRE_TOL_DEG:g} degrees in every layer: S transfers "
                   "across these text types")
    elif dev_od > dev_ho:
        verdict = (f"it holds less well than on held-out {fit_corpus!r} text (up to {dev_od:.1f} against "
                   f"{dev_ho:.1f} degrees from 90): S is partly specific to the text it was fitted on")
    else:
        verdict = (f"it misses 90 by up to {dev_od:.1f} degrees, no more than on held-out {fit_corpus!r} text "
                   f"({dev_ho:.1f}): the miss is not specific to the other domain")
    lines.append(f"On {other_corpus!r} text, with S fitted on {fit_corpus!r}, the mean AIP angles are {rng}: {verdict}.")
    if related is not None and len(related):
        rel = related.pivot_table(index="layer", columns="pairs", values="aip_mean", sort=False)
        need = ["random", "same token, other context"]
        if all(c in rel for c in need):
            gap = (rel["random"] - rel["same token, other context"]).dropna()
            if len(gap):
                lo, hi = float(gap.min()), float(gap.max())
                if lo >= RELATED_GAP_MIN_DEG:
                    reading = ("so the metric keeps related activations together rather than spreading everything "
                               "to 90")
                elif hi < RELATED_GAP_MIN_DEG:
                    reading = (f"less than {RELATED_GAP_MIN_DEG:g} degrees in every layer, so under the AIP related "
                               "activations are hardly closer than random ones")
                else:
                    n_ok = int((gap >= RELATED_GAP_MIN_DEG).sum())
                    reading = (f"at least {RELATED_GAP_MIN_DEG:g} degrees in {n_ok} of {len(gap)} layers only, so the "
                               "metric keeps related activations together in some layers, not all")
                span = lambda a, b: f"{a:.1f}" if f"{a:.1f}" == f"{b:.1f}" else f"{a:.1f}-{b:.1f}"  # noqa: E731
                position = (f"{span(lo, hi)} degrees below" if lo >= 0 else
                            f"{span(-hi, -lo)} degrees above" if hi < 0 else
                            f"from {-lo:.1f} degrees above to {hi:.1f} degrees below")
                lines.append(f"Same-token pairs from different contexts sit {position} random pairs under the AIP, "
                             f"{reading}.")
    return lines


# ---------------------------------------------------------------------------------------------------------------------
# Massive activations: fit S with or without them (chapter 1)
# ---------------------------------------------------------------------------------------------------------------------
def _whitened_cond(aip: AIP, x: torch.Tensor) -> float:
    w = aip.whiten(x)
    ev = symmetric_eigenvalues(w.T @ w / w.shape[0])
    return float(ev[-1] / ev[0]) if float(ev[0]) > 0 else float("inf")


def massive_choice(fit: Mapping[int, torch.Tensor], held_out: Mapping[int, torch.Tensor], *, k: float,
                   n_pairs: int = 20_000, seed: int = 0, return_aips: bool = False):
    """What fitting ``S`` with or without massive tokens changes, per layer (paper §3, SPEC §1.1).

    SPEC §1.1 excludes only the BOS / position-0 token; real LLMs carry a few further tokens whose norm dwarfs
    the rest (:mod:`atomsnb.massive`). For each layer this fits ``S`` twice, on every fitting token (*kept*) and
    without the tokens that :func:`atomsnb.massive.massive_token_mask` flags with criterion ``k`` in their own
    split (*excluded*; held-out massive tokens are left out of that evaluation too), and compares.

    Args:
        fit: layer -> fitting activations ``[n_fit, d_model]``.
        held_out: layer -> held-out activations ``[n_eval, d_model]``.
        k: the criterion (a token is massive when its norm exceeds ``k`` times the median token norm).
        n_pairs, seed: random pairs for the mean angles (the same index pairs for both fits).
        return_aips: also return ``{layer: (kept, excluded)}``, the two fitted :class:`AIP` per layer (the
            *excluded* one is the fit of :func:`angle_study` on the ordinary fitting tokens: pass it as ``aips``).

    Returns:
        One row per layer: ``layer``; ``n_massive_fit``, ``n_massive_eval`` (tokens flagged); ``share_sq_norm``
        (fraction of the fitting tokens' ``sum ||m||^2`` the massive ones carry); ``max_abs`` and ``max_abs_dim``
        (the largest ``|x|`` and its coordinate); ``share_trace_top_dim`` (the largest coordinate's share of
        ``trace(E[mm^T])``); ``cond_kept``, ``cond_excluded`` (condition number of ``E[hh^T]``);
        ``aip_mean_kept``, ``aip_mean_excluded`` (mean held-out AIP angle of random pairs, degrees, over the tokens
        each fit is evaluated on); ``whitened_cond_kept``, ``whitened_cond_excluded`` (condition number of the
        second moment of held-out *ordinary* tokens after whitening with each ``S``: 1 for a perfect whitening).
        With ``return_aips``, the pair ``(table, {layer: (kept, excluded)})``.

    Raises:
        ValueError: layers that differ between ``fit`` and ``held_out``, or a bad ``k`` (from the mask).
    """
    if set(fit) != set(held_out):
        raise ValueError(f"fit and held_out must have the same layers; got {sorted(fit)} and {sorted(held_out)}")
    rows, fitted = [], {}
    for layer in sorted(fit):
        x, y = fit[layer], held_out[layer]
        m_fit, m_eval = massive_token_mask(x, k), massive_token_mask(y, k)
        st = massive_activation_stats(x, mask=m_fit, k=k, conditioning=False)  # the AIPs give them
        # one pass over the ordinary tokens; the kept fit adds the few massive ones to a copy of that sum
        excl = AIP.fit(x, exclude=m_fit)
        kept = excl.copy()
        if bool(m_fit.any()):
            kept.n_excluded = 0
            kept.partial_fit(x[m_fit])
        fitted[layer] = (kept, excl)
        ordinary = y[~m_eval]
        i, j = sample_pairs(y.shape[0], n_pairs, seed=seed)
        p, q = sample_pairs(ordinary.shape[0], n_pairs, seed=seed)
        rows.append({"layer": layer, "n_massive_fit": int(m_fit.sum()), "n_massive_eval": int(m_eval.sum()),
                     "share_sq_norm": st["share_sq_norm_masked"], "max_abs": st["max_abs"],
                     "max_abs_dim": st["max_abs_dim"], "share_trace_top_dim": st["share_trace_top_dim"],
                     "cond_kept": kept.condition_number, "cond_excluded": excl.condition_number,
                     "aip_mean_kept": float(kept.pair_angles(y, i, j).mean()),
                     "aip_mean_excluded": float(excl.pair_angles(ordinary, p, q).mean()),
                     "whitened_cond_kept": _whitened_cond(kept, ordinary),
                     "whitened_cond_excluded": _whitened_cond(excl, ordinary)})
    return (pd.DataFrame(rows), fitted) if return_aips else pd.DataFrame(rows)


def _short(value: float, fmt: str) -> str:
    """``value`` in ``fmt`` with the exponent written short: ``2.1e+05`` -> ``2.1e5``, ``3.4e-03`` -> ``3.4e-3``."""
    return re.sub(r"e([+-])0*(\d)", lambda m: f"e{'-' if m.group(1) == '-' else ''}{m.group(2)}", fmt.format(value))


def _pair(before: float, after: float, fmt: str) -> str:
    """``"2.1e5 → 3.4e3"``: two numbers in ``fmt`` (:func:`_short`) joined by an arrow between no-break spaces, so
    that a table cell never breaks inside the pair."""
    return "\u00a0→\u00a0".join(_short(v, fmt) for v in (before, after))


def massive_reader_table(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`massive_choice` for a reader: one row per layer, units in the headers, each "with / without the massive
    tokens" pair in one column (``before → after``), so that the table fits the book's column.

    Returns:
        Index ``layer``; columns: ``massive tokens`` (count among the fitting tokens), ``their share of Σ‖m‖² (%)``
        (1 decimal), ``largest |x| (coordinate)`` (3 significant digits and the coordinate), ``top coordinate's share of
        tr E[hhᵀ] (%)`` (1 decimal), ``cond E[hhᵀ]: all → massive excluded`` (2 digits each, ``2.1e5 → 3.4e3``), ``whitened held-out
        cond: S from all → S without massive`` (2 significant digits each; 1 is a perfect whitening) and ``Δ mean
        held-out AIP angle (degrees)`` (without minus with the massive tokens, 2 decimals).
    """
    out = pd.DataFrame({
        "massive tokens": table["n_massive_fit"].astype(int),
        "their share of Σ‖m‖² (%)": (100 * table["share_sq_norm"]).round(1),
        "largest |x| (coordinate)": [f"{_short(v, '{:.3g}')} ({int(d)})" for v, d in zip(table["max_abs"],
                                                                                          table["max_abs_dim"])],
        "top coordinate's share of tr E[hhᵀ] (%)": (100 * table["share_trace_top_dim"]).round(1),
        "cond E[hhᵀ]: all → massive excluded": [_pair(a, b, "{:.1e}") for a, b in zip(table["cond_kept"],
                                                                                      table["cond_excluded"])],
        "whitened held-out cond: S from all → S without massive": [
            _pair(a, b, "{:.2g}") for a, b in zip(table["whitened_cond_kept"], table["whitened_cond_excluded"])],
        "Δ mean held-out AIP angle (degrees)": (table["aip_mean_excluded"] - table["aip_mean_kept"]).round(2) + 0.0,
    })
    out.index = pd.Index(table["layer"].astype(int), name="layer")
    return out


def _span(lo: int, hi: int) -> str:
    """'10' when both ends agree, else '3-10'."""
    return str(lo) if lo == hi else f"{lo}-{hi}"


def describe_massive_choice(table: pd.DataFrame, *, k: float, chosen: float | None, model: str) -> list[str]:
    """Chapter 1's reading of :func:`massive_choice`, every number-dependent word chosen from the numbers.

    The numbers *support excluding* massive tokens when, in some layer that has them, ``S`` fitted without them
    whitens held-out ordinary tokens at least :data:`WHITENING_GAIN` times better (ratio of condition numbers);
    they *support keeping* them when excluding never helps that much and makes it worse somewhere by the same
    factor; otherwise the choice makes no material difference.

    Args:
        table: :func:`massive_choice` output.
        k: the criterion the table was computed with.
        chosen: the criterion the chapter runs with (``massive_k``), or None if it keeps every token.
        model: the model's name, for the sentences.

    Returns:
        The sentences.
    """
    need = {"layer", "n_massive_fit", "share_sq_norm", "aip_mean_kept", "aip_mean_excluded", "whitened_cond_kept",
            "whitened_cond_excluded"}
    missing = need - set(table.columns)
    if missing or table.empty:
        raise ValueError(f"the massive-choice table needs rows with columns {sorted(need)}; missing {sorted(missing)}")
    has = table[table["n_massive_fit"] > 0]
    if has.empty:
        return [f"{model}: no fitting token exceeds {k:g} times the median token norm in any layer, so excluding "
                "massive tokens changes nothing here; " + ("the chapter's choice to exclude them is moot."
                                                           if chosen is not None else "every token is kept.")]
    dangle = float((has["aip_mean_kept"] - has["aip_mean_excluded"]).abs().max())
    gain = has["whitened_cond_kept"] / has["whitened_cond_excluded"]
    layers = has["layer"].tolist()
    where = f"layer {layers[0]}" if len(layers) == 1 else f"{len(layers)} layers ({layers[0]}-{layers[-1]})"
    lines = [f"{model}: at {k:g} times the median token norm, {where} {'has' if len(layers) == 1 else 'have'} massive "
             "fitting tokens "
             f"({_span(int(has['n_massive_fit'].min()), int(has['n_massive_fit'].max()))} per layer) carrying "
             f"{100 * has['share_sq_norm'].min():.0f}-{100 * has['share_sq_norm'].max():.0f}% of the fitting tokens' "
             f"sum of squared norms."]
    moves = f"by at most {dangle:.2f} degrees" if dangle >= 0.005 else "by less than 0.01 degrees"
    lines.append(f"Excluding them moves the mean held-out AIP angle {moves}, while the "
                 f"condition number of held-out ordinary tokens after whitening goes from "
                 f"{has['whitened_cond_kept'].min():.3g}-{has['whitened_cond_kept'].max():.3g} (S fitted with them) to "
                 f"{has['whitened_cond_excluded'].min():.3g}-{has['whitened_cond_excluded'].max():.3g} (without; 1 is a "
                 "perfect whitening).")
    if float(gain.max()) >= WHITENING_GAIN:
        support = "exclude"
        why = (f"S fitted without them whitens ordinary tokens up to {float(gain.max()):.3g} times better, so the "
               "numbers support excluding them")
    elif float((1 / gain).max()) >= WHITENING_GAIN:
        support = "keep"
        why = "S fitted without them whitens ordinary tokens worse, so the numbers support keeping them"
    else:
        support = "either"
        why = (f"neither fit whitens ordinary tokens {WHITENING_GAIN:g} times better than the other, so the choice "
               "makes no material difference")
    runs = "excludes them" if chosen is not None else "keeps them"
    agree = (support == "either" or (support == "exclude") == (chosen is not None))
    lines.append(f"{why}; the book {runs}" + (", as the numbers support." if agree and support != "either" else
                                              "." if agree else ", against what these numbers support."))
    return lines


# ---------------------------------------------------------------------------------------------------------------------
# Chapter 1 per model: the activation sets, the angle study on ordinary tokens, the related pairs, the tables
# ---------------------------------------------------------------------------------------------------------------------
#: Chapter 1's three activation sets: the name :func:`angle_study` reports each under -> its key in
#: :func:`atomsnb.pipeline.collect_sets`' mapping.
SET_KEYS = {IN_SAMPLE: "fit", HELD_OUT: "held-out", OTHER_DOMAIN: "other"}




def models_table(lms, *, n_fit_tokens: int) -> pd.DataFrame:
    """The models of chapter 1 for a reader: one row per model.

    Args:
        lms: loaded models (:func:`atomsnb.models.load_model`).
        n_fit_tokens: tokens per layer fitting ``S`` (shown per ``d_model``: SPEC §1.1 asks at least 20).

    Returns:
        Index ``model``; ``architecture`` (the transformers class without ``ForCausalLM``), ``blocks``, ``d_model``, ``parameters (M)`` (1 decimal),
        ``fitting tokens / d_model`` (integer) and, for the packaged models (:data:`atomsnb.models.PACKAGED_MODELS`;
        blank for the others), ``package`` (``name==version``) and ``licence`` from the model card.
    """
    rows = []
    for lm in lms:
        card = card_summary(model_card(lm.name)) if lm.name in PACKAGED_MODELS else {}
        rows.append({"model": lm.name, "architecture": type(lm.model).__name__.removesuffix("ForCausalLM"),
                     "blocks": lm.n_layers,
                     "d_model": lm.d_model,
                     "parameters (M)": round(sum(p.numel() for p in lm.model.parameters()) / 1e6, 1),
                     "fitting tokens / d_model": round(n_fit_tokens / lm.d_model),
                     "package": card.get("package", ""), "licence": card.get("licence", "")})
    return pd.DataFrame(rows).set_index("model")


def by_model(reader, tables: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """One reader table per model, stacked under a ``model`` index level: ``reader(tables[name])`` for each name.

    Args:
        reader: a reader-table function of this module (:func:`reader_table`, :func:`massive_reader_table`,
            :func:`related_reader_table`).
        tables: model name -> that function's input, in the order to show.

    Raises:
        ValueError: no table.
    """
    if not tables:
        raise ValueError("no table to show (no model)")
    return pd.concat({name: reader(t) for name, t in tables.items()}, names=["model"])


def ordinary_mask(x: torch.Tensor, massive_k: float | None) -> torch.Tensor:
    """``[n_tokens]`` bool: the rows of ``x`` ``[n_tokens, d_model]`` that chapter 1 keeps (not massive under
    criterion ``massive_k``; every row when ``massive_k`` is ``None``)."""
    return torch.ones(len(x), dtype=torch.bool) if massive_k is None else ~massive_token_mask(x, massive_k)


class AngleStudy(NamedTuple):
    """:func:`angle_study_sets` for one model."""

    table: pd.DataFrame
    """:func:`angle_study`'s long table, every layer and set (the in-sample set included)."""
    aips: dict[int, AIP]
    """layer -> the :class:`AIP` the angles were measured with."""
    keep: dict[str, dict[int, torch.Tensor]]
    """set key (``"fit"``, ``"held-out"``, ``"other"``) -> layer -> ``[n_tokens]`` bool, the ordinary tokens."""

    def measured(self) -> pd.DataFrame:
        """The table without the in-sample rows (the sets ``S`` was not fitted on)."""
        return self.table[self.table["set"] != IN_SAMPLE]


def angle_study_sets(sets: Mapping[str, Activations], massive_aips: Mapping[int, tuple[AIP, AIP]], *,
                     massive_k: float | None, n_pairs: int = 20_000, seed: int = 0) -> AngleStudy:
    """Chapter 1's angle study of one model: :func:`angle_study` on the ordinary tokens of its three sets.

    Args:
        sets: :func:`atomsnb.pipeline.collect_sets`' mapping.
        massive_aips: layer -> ``(kept, excluded)`` fits from :func:`massive_choice` (``return_aips=True``) on
            ``sets["fit"]`` with criterion ``massive_k``: the *excluded* fit is used, or the *kept* one (every
            token) when ``massive_k`` is ``None``; nothing is fitted twice.
        massive_k: the criterion of :func:`atomsnb.massive.massive_token_mask`, or ``None`` to keep every token.
        n_pairs, seed: random pairs per layer and set.

    Returns:
        :class:`AngleStudy`.

    Raises:
        ValueError: ``massive_aips`` not fitted on exactly the ordinary fitting tokens (from :func:`angle_study`).
    """
    layers = sorted(sets["fit"].acts)
    keep = {key: {l: ordinary_mask(sets[key].acts[l], massive_k) for l in layers} for key in SET_KEYS.values()}
    kept = {label: {l: sets[key].acts[l][keep[key][l]] for l in layers} for label, key in SET_KEYS.items()}
    fitted = {l: massive_aips[l][0 if massive_k is None else 1] for l in layers}
    table, aips = angle_study(kept[IN_SAMPLE], kept, n_pairs=n_pairs, seed=seed, aips=fitted)
    return AngleStudy(table, aips, keep)


def first_middle_last(layers) -> list[int]:
    """The first, middle and last of ``layers`` (sorted; fewer when there are fewer than three)."""
    layers = sorted(layers)
    return list(dict.fromkeys([layers[0], layers[len(layers) // 2], layers[-1]]))


def layer_pair_angles(study: AngleStudy, sets: Mapping[str, Activations], *, key: str = "held-out",
                      layers=None, n_pairs: int = 20_000, seed: int = 0) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Random-pair angles of the ordinary tokens of one set at a few layers (for histograms).

    Args:
        study, sets: :func:`angle_study_sets`' result and input.
        key: the set (a value of :data:`SET_KEYS`).
        layers: which layers; ``None`` for :func:`first_middle_last`.

    Returns:
        ``"layer <l>"`` -> ``(euclidean [n_pairs], aip [n_pairs])`` degrees (:func:`pair_angles`).
    """
    layers = first_middle_last(study.aips) if layers is None else layers
    return {f"layer {l}": pair_angles(study.aips[l], sets[key].acts[l][study.keep[key][l]], n_pairs=n_pairs,
                                      seed=seed) for l in layers}


def related_study(study: AngleStudy, held: Activations, *, n_pairs: int = 5000, seed: int = 0) -> pd.DataFrame:
    """:func:`related_pair_angles` at every layer, on the ordinary tokens of the held-out set.

    Returns:
        :func:`related_pair_angles`' rows with a ``layer`` column (input of :func:`related_reader_table`).
    """
    rows = []
    for l in sorted(study.aips):
        m = study.keep["held-out"][l]
        rows.append(related_pair_angles(study.aips[l], held.acts[l][m], held.token_ids[m], held.window[m],
                                        n_pairs=n_pairs, seed=seed).assign(layer=l))
    return pd.concat(rows, ignore_index=True)


def check_construction(study: AngleStudy, fit: Activations, *, angle_tol: float = 1.0,
                       whitening_tol: float = 1e-6) -> None:
    """What the AIP guarantees by construction on its own fitting data (SPEC §1.5), checked.

    In-sample random-pair AIP angles average within ``angle_tol`` degrees of 90 at every layer, and the whitened
    fitting tokens have identity second moment (max abs deviation below ``whitening_tol``) at the first, middle and
    last layer (:func:`first_middle_last`; a whitening costs a fit).

    Raises:
        AssertionError: either guarantee fails (a bug in :class:`AIP`, not a finding).
    """
    ins = study.table[study.table["set"] == IN_SAMPLE]
    worst = float((ins["aip_mean"] - 90).abs().max())
    if not worst < angle_tol:
        raise AssertionError(f"in-sample AIP angles must centre on 90 degrees by construction; off by {worst:.3f}")
    for l in first_middle_last(study.aips):
        w = study.aips[l].whiten(fit.acts[l][study.keep["fit"][l]])
        dev = float(((w.T @ w) / len(w) - torch.eye(w.shape[1], dtype=w.dtype)).abs().max())
        if not dev < whitening_tol:
            raise AssertionError(f"layer {l}: whitened fitting tokens deviate from identity second moment by {dev:.2e}")


def claims_table(studies: Mapping[str, AngleStudy]) -> pd.DataFrame:
    """Every model's :attr:`AngleStudy.table` stacked with a ``model`` column (the input of the claim checks of
    :mod:`atomsnb.verdicts`)."""
    return pd.concat([s.table.assign(model=name) for name, s in studies.items()], ignore_index=True)
