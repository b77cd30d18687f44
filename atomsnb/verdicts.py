"""The checks that turn our numbers into the book's verdicts and the words that read them (paper §3-7).

Each claim of :data:`atomsnb.paper.CLAIMS` has a check, ``check_<claim id>(our numbers, *, model=...)``, that
returns a :class:`~atomsnb.claims.Verdict`: the verdict, our numbers formatted, the criterion in words and the
sentences reading the numbers. Every word of those sentences that depends on a number is chosen by a conditional
on that number (:mod:`atomsnb.wording`), and every threshold is a named constant of :mod:`atomsnb.paper`. A chapter
passes the verdict to :func:`atomsnb.claims.record`.

The checks take the tables the chapters compute, with the column names documented in each check. Each raises
``ValueError`` naming the missing column or the non-finite value instead of deciding on it. This module sits above
the modules whose tables it reads (:mod:`atomsnb.grid`, :mod:`atomsnb.monosemanticity`).
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence

import pandas as pd

from .claims import Verdict
from .grid import critical_capacity
from .monosemanticity import format_differences
from .scaling import StudyReading
from .paper import (
    AIP_CENTRE_TOL_DEG, AIP_INVARIANCE_TOL, ATOMS_PAPER_SUMMARY, ATOM_RECOVERY_MIN, CAPACITY_R2_THRESHOLD, CLAIMS,
    EUCLIDEAN_AIP_GAP, EUCLIDEAN_CHANGE_MIN, EXACT_R2_TOL, FEATURES_TOL, FEATURES_UNFAITHFUL_R2, L0_MATCH_TOL,
    MONO_CI, NEAR_ONE, NEURON_Q_STAR_MAX, NEURON_R2_MIN, PAPER_ATOMS, PAPER_FEATURES, PAPER_NEURONS, SHIFT_MIN_DEG,
    SUPPORTS_PARTLY_MIN, TOY_FEATURE_RECOVERY_MAX, TOY_NEURON_Q_STAR_MAX, TREND_RHO_MIN, rerun_command,
)
from .wording import agreeing_verb, percent, share, three_level, value_range

__all__ = [
    "CHECKS",
    "check_toy_aip_invariance", "check_toy_construction_supports", "check_toy_construction_reconstruction",
    "check_toy_trained_tsae", "check_toy_baselines",
    "check_shift_euclidean_below_90", "check_shift_aip_recentres",
    "check_units_neurons", "check_units_features", "check_units_atoms_beat_features", "check_units_atoms_near_one",
    "check_grid_critical_capacity",
    "check_layers_atoms_near_one", "check_layers_paper_models",
    "check_mono_atoms_more_monosemantic", "check_mono_llm_human_judgement", "check_scaling_near_one",
]


# =====================================================================================================================
# Helpers
# =====================================================================================================================
def _verdict(claim_id: str, verdict: str, *, ours: str, criterion: str, interpretation: str, model: str,
             values: Mapping | None = None, command: str | None = None, evidence: str | None = None) -> Verdict:
    c = CLAIMS[claim_id]
    return Verdict(chapter=c.chapter, claim_id=c.claim_id, statement=c.statement, section=c.section, paper=c.paper,
                   verdict=verdict, ours=ours, criterion=criterion, interpretation=interpretation, model=model,
                   command=command, evidence=evidence, values=dict(values or {}))


def _need(df: pd.DataFrame, columns: Iterable[str], what: str) -> None:
    """Refuse a table without the columns a check reads, or with a non-finite number in them."""
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"{what} must be a pandas DataFrame; got {type(df).__name__}")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what} lacks the column(s) {missing}; it has {list(df.columns)}")
    if len(df) == 0:
        raise ValueError(f"{what} has no rows: nothing to decide a verdict on")
    for c in columns:
        if pd.api.types.is_numeric_dtype(df[c]) and not pd.api.types.is_bool_dtype(df[c]):
            bad = df[c][~pd.Series([math.isfinite(float(v)) for v in df[c]], index=df.index)]
            if len(bad):
                raise ValueError(f"{what}: column {c!r} has non-finite value(s) {bad.tolist()[:5]}; a verdict on them "
                                 "would be meaningless")


def _finite(name: str, v) -> float:
    v = float(v)
    if not math.isfinite(v):
        raise ValueError(f"{name} = {v} is not finite; a verdict on it would be meaningless")
    return v


def _family_rows(table: pd.DataFrame, family: str, what: str) -> pd.DataFrame:
    rows = table[table["family"] == family]
    if rows.empty:
        raise ValueError(f"{what} has no row of family {family!r}; families present: {sorted(set(table['family']))}")
    return rows


def _one(table: pd.DataFrame, family: str, what: str) -> pd.Series:
    rows = _family_rows(table, family, what)
    if len(rows) != 1:
        raise ValueError(f"{what} must have exactly one row of family {family!r}; got {len(rows)}")
    return rows.iloc[0]


def _coefficient(row) -> str:
    for name, sym in (("l0_coefficient", "L0 coefficient"), ("l1_coefficient", "L1 coefficient")):
        v = row.get(name, math.nan) if hasattr(row, "get") else math.nan
        if v is not None and isinstance(v, (int, float)) and math.isfinite(v):
            return f"{sym} {v:g}"
    return str(row.get("unit set", row.name)) if hasattr(row, "get") else str(row.name)


# =====================================================================================================================
# Chapter 0: the toy world
# =====================================================================================================================
def check_toy_aip_invariance(inv, *, model: str = "synthetic world") -> Verdict:
    """``toy.aip_invariance`` (paper §3, SPEC §1.3): the AIP does not see the mixing; Euclidean geometry does.

    Args:
        inv: a :class:`atomsnb.synthetic.MixingInvariance` (or any object with the same fields):
            ``max_aip_change``, ``max_euclidean_change`` (largest change of a pair's cosine) and the angle
            tensors ``euclidean_clean``, ``euclidean_mixed`` (degrees).
        model: what it ran on.

    Returns:
        reproduced: AIP change < :data:`AIP_INVARIANCE_TOL` and Euclidean change > :data:`EUCLIDEAN_CHANGE_MIN`;
        partly: the AIP is invariant but the mixing does not change Euclidean cosines visibly; not: the AIP moved.
    """
    aip = _finite("max_aip_change", inv.max_aip_change)
    euc = _finite("max_euclidean_change", inv.max_euclidean_change)
    e0, e1 = float(inv.euclidean_clean.mean()), float(inv.euclidean_mixed.mean())
    aip_ok, euc_ok = aip < AIP_INVARIANCE_TOL, euc > EUCLIDEAN_CHANGE_MIN
    aip_text = f"< {AIP_INVARIANCE_TOL:g} (float64 round-off)" if aip_ok else f"{aip:.1e}"
    verdict = "reproduced" if aip_ok and euc_ok else "partly reproduced" if aip_ok else "not reproduced"
    first = ("The AIP cosines of the same pairs did not move beyond float64 round-off when the world was mixed"
             if aip_ok else f"The AIP cosines moved by up to {aip:.1e} under the mixing, more than round-off: the "
                            "invariance failed here (an ill-conditioned S or a ridge breaks it, SPEC §1.4)")
    second = (f"while Euclidean cosines changed by up to {euc:.2f} (mean Euclidean angle {e0:.1f}° -> {e1:.1f}°): "
              "Euclidean geometry depends on the parametrisation." if euc_ok else
              f"and Euclidean cosines barely changed either (at most {euc:.2f}): this mixing is too mild to show "
              "the contrast.")
    return _verdict("toy.aip_invariance", verdict,
                    ours=f"max AIP cosine change {aip_text}; max Euclidean change {euc:.2f}; "
                         f"mean Euclidean angle {e0:.1f}° -> {e1:.1f}°",
                    criterion=f"reproduced: AIP change < {AIP_INVARIANCE_TOL:g} and Euclidean change > "
                              f"{EUCLIDEAN_CHANGE_MIN:g} on the same pairs; partly: the AIP part only",
                    interpretation=f"{first}, {second}", model=model,
                    values={"max_aip_change": aip, "max_euclidean_change": euc})


def _feasible(phase: pd.DataFrame, columns: Sequence[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    _need(phase, ["feasible", *columns], "the phase table (atomsnb.synthetic.construction_phase_grid)")
    feas = phase[phase["feasible"].astype(bool)]
    if feas.empty:
        raise ValueError("the phase table has no feasible world: the claim about the feasible region cannot be tested "
                         "(widen the grid: larger delta_min / delta_max or smaller K)")
    return feas, phase[~phase["feasible"].astype(bool)]


def check_toy_construction_supports(phase: pd.DataFrame, *, model: str = "synthetic world") -> Verdict:
    """``toy.construction_supports`` (paper §5, SPEC §5): exact support recovery inside the feasible region.

    Args:
        phase: :func:`atomsnb.synthetic.construction_phase_grid` output; reads ``feasible`` (bool),
            ``support_recovery`` (fraction of activations whose support is exact) and, for the reading of the
            infeasible worlds, ``margin`` (``delta_min/delta_max - eps (2K - 1)``) when present.

    Returns:
        reproduced: every feasible world at 100%; partly: every feasible world at least
        :data:`SUPPORTS_PARTLY_MIN`; not: otherwise.

    Raises:
        ValueError: a missing column, a non-finite value, or no feasible world.
    """
    feas, infeas = _feasible(phase, ["support_recovery"])
    n, n_exact = len(feas), int((feas["support_recovery"] == 1.0).sum())
    worst = float(feas["support_recovery"].min())
    verdict = ("reproduced" if n_exact == n else "partly reproduced" if worst >= SUPPORTS_PARTLY_MIN
               else "not reproduced")
    words = [("Inside the feasible region every support is recovered, as the theorem says." if n_exact == n else
              f"Inside the feasible region only {n_exact} of {n} worlds recover every support; the worst recovers "
              f"{worst:.1%}: the theorem's guarantee does not hold here as stated.")]
    ours = f"{n_exact}/{n} feasible worlds at 100% support recovery (worst {worst:.4f})"
    if len(infeas):
        lo, hi = float(infeas["support_recovery"].min()), float(infeas["support_recovery"].max())
        ours += f"; infeasible worlds {lo:.2f}-{hi:.2f}"
        words.append(f"Outside it, violated worlds still recover {lo:.0%}-{hi:.0%} of supports: the condition is "
                     "sufficient, not necessary." if hi > 0 else
                     "Outside it no world recovers any support exactly.")
        if "margin" in infeas and len(infeas) >= 3 and infeas["support_recovery"].nunique() > 1:
            rho = float(infeas["margin"].rank().corr(infeas["support_recovery"].rank()))
            words.append(f"Recovery degrades as the violation grows (Spearman rho of margin and recovery {rho:.2f})."
                         if rho >= TREND_RHO_MIN else
                         f"Recovery does not track the size of the violation closely (Spearman rho {rho:.2f}).")
    return _verdict("toy.construction_supports", verdict, ours=ours,
                    criterion=f"reproduced: support recovery == 1 in every feasible world of the grid; partly: >= "
                              f"{SUPPORTS_PARTLY_MIN:g} in every feasible world",
                    interpretation=" ".join(words), model=model,
                    values={"n_feasible": n, "n_exact": n_exact, "worst": worst})


def check_toy_construction_reconstruction(phase: pd.DataFrame, *, model: str = "synthetic world") -> Verdict:
    """``toy.construction_reconstruction`` (paper §5, SPEC §5): does the construction also reconstruct exactly?

    Args:
        phase: :func:`atomsnb.synthetic.construction_phase_grid` output; reads ``feasible``, ``r2_literal``
            (``R^2`` in the AIP of ``D sigma_tau(G delta)``) and ``r2_refit`` (after a least-squares refit on the
            recovered support).

    Returns:
        reproduced: literal ``R^2 >= 1 - EXACT_R2_TOL`` in every feasible world; partly: only after the refit;
        not: not even after the refit.
    """
    feas, _ = _feasible(phase, ["r2_literal", "r2_refit"])
    lit, refit = float(feas["r2_literal"].min()), float(feas["r2_refit"].min())
    lit_ok, refit_ok = lit >= 1 - EXACT_R2_TOL, refit >= 1 - EXACT_R2_TOL
    verdict = "reproduced" if lit_ok else "partly reproduced" if refit_ok else "not reproduced"
    if lit_ok:
        words = ("The construction's own reconstruction is exact in every feasible world: the atoms of each support "
                 "are AIP-orthogonal here.")
    else:
        words = (f"The construction's own reconstruction D sigma_tau(G delta) is not exact when the atoms of a support "
                 f"are coherent (literal R^2 down to {lit:.4f}); ")
        words += (f"a least-squares refit on the recovered support makes it exact (R^2 >= 1 - {EXACT_R2_TOL:g} in every "
                  "feasible world), as SPEC §5 predicts." if refit_ok else
                  f"even a least-squares refit on the recovered support leaves R^2 at {refit:.6f}.")
    return _verdict("toy.construction_reconstruction", verdict,
                    ours=f"literal R^2_S min {lit:.4f}; after refit {refit:.6f}",
                    criterion=f"reproduced: literal R^2_S >= 1 - {EXACT_R2_TOL:g} in every feasible world; partly: only "
                              "after a least-squares refit on the recovered support",
                    interpretation=words, model=model, values={"r2_literal_min": lit, "r2_refit_min": refit})


def check_toy_trained_tsae(scores: pd.DataFrame, *, k: int, support_exact: float | None = None,
                           r2_refit: float | None = None, n_true_atoms: int | None = None,
                           model: str = "synthetic world") -> Verdict:
    """``toy.trained_tsae`` (paper §6): a trained TSAE recovers the toy world's atoms with ``R^2``, ``q*`` near 1.

    Args:
        scores: one row per unit set with columns ``family`` (exactly one ``"atoms"`` row), ``atom_recovery``
            (fraction of true atoms matched with AIP ``|cos| >= 0.9``), ``r2_aip``, ``q_star``, ``l0`` and
            optionally ``n_alive``.
        k: the world's support size ``K``.
        support_exact: optional fraction of activations whose support the TSAE gets exactly right.
        r2_refit: optional ``R^2`` in the AIP after a least-squares refit on the TSAE's own supports.
        n_true_atoms: optional number of true atoms (read against ``n_alive``).

    Returns:
        reproduced: recovery >= :data:`ATOM_RECOVERY_MIN` with ``R^2`` and ``q*`` >= :data:`NEAR_ONE`; partly:
        the recovery only; not: otherwise.
    """
    _need(scores, ["family", "atom_recovery", "r2_aip", "q_star", "l0"], "the toy scores table")
    t = _one(scores, "atoms", "the toy scores table")
    rec, r2, q, l0 = (float(t[c]) for c in ("atom_recovery", "r2_aip", "q_star", "l0"))
    found, near = rec >= ATOM_RECOVERY_MIN, r2 >= NEAR_ONE and q >= NEAR_ONE
    verdict = "reproduced" if found and near else "partly reproduced" if found else "not reproduced"
    recovered = "every one" if rec == 1 else f"{rec:.0%}" if found else f"only {rec:.0%}"
    nums = f"(R^2 {r2:.3f}, q* {q:.3f})"
    link = (("and reaches" if near else "but does not reach") if found else
            ("although it reaches" if near else "and does not reach"))
    words = [f"The TSAE recovers {recovered} of the true atoms {link} R^2 and q* of "
             + (f"at least {NEAR_ONE:g} {nums}." if near else f"{NEAR_ONE:g} {'here' if found else 'either'} {nums}.")]
    if l0 < k - L0_MATCH_TOL:
        words.append(f"Its L0 ({l0:.2f}) is below K = {k}: the L0 penalty drops small coefficients.")
    elif l0 > k + L0_MATCH_TOL:
        words.append(f"Its L0 ({l0:.2f}) is above K = {k}: latents beside the atoms fire too.")
    else:
        words.append(f"Its L0 ({l0:.2f}) matches K = {k}.")
    if support_exact is not None:
        se = _finite("support_exact", support_exact)
        words.append("Its supports are exactly right on every held-out activation." if se == 1 else
                     f"Its supports are exactly right on {se:.1%} of held-out activations.")
    if r2_refit is not None:
        rr = _finite("r2_refit", r2_refit)
        words.append(f"A refit on its own supports raises R^2 to {rr:.4f}: its thresholded codes carry the cross-talk "
                     "of coherent atoms." if rr > r2 else
                     f"A refit on its own supports does not raise R^2 ({rr:.4f}): the loss is in the supports, not "
                     "in the code values.")
    if n_true_atoms is not None and "n_alive" in t:
        n_alive = int(t["n_alive"])
        if n_alive > n_true_atoms:
            words.append(f"{n_alive} latents are alive for {n_true_atoms} atoms: the spare ones enter the coherence "
                         "quantiles of q*.")
        else:
            words.append(f"{n_alive} latents are alive for {n_true_atoms} atoms: no spare latent dilutes q*.")
    return _verdict("toy.trained_tsae", verdict, ours=f"recovery {rec:.3f}, R^2_S {r2:.3f}, q* {q:.3f}, L0 {l0:.2f}",
                    criterion=f"reproduced: recovery >= {ATOM_RECOVERY_MIN:g} with R^2_S >= {NEAR_ONE:g} and q* >= "
                              f"{NEAR_ONE:g}; partly: recovery >= {ATOM_RECOVERY_MIN:g} only",
                    interpretation=" ".join(words), model=model,
                    values={"atom_recovery": rec, "r2_aip": r2, "q_star": q, "l0": l0})


def _q_star_order(table: pd.DataFrame, families: Sequence[str]) -> list[str]:
    present = [f for f in families if (table["family"] == f).any()]
    return sorted(present, key=lambda f: -float(table.loc[table["family"] == f, "q_star"].max()))


def check_toy_baselines(scores: pd.DataFrame, *, model: str = "synthetic world") -> Verdict:
    """``toy.baselines`` (paper §4): neurons faithful but not unique; standard-SAE features are not the atoms.

    The paper's numbers are on real models, so the toy world can reproduce this qualitatively only: the best
    verdict is *partly reproduced*.

    Args:
        scores: one row per unit set; columns ``family`` (one ``"neurons"`` and one ``"features"`` row; an
            ``"atoms"`` row, if present, enters the ordering sentence), ``r2_aip``, ``q_star``,
            ``atom_recovery``, ``explained_variance``.

    Returns:
        partly: neurons ``R^2 >= 1 - EXACT_R2_TOL`` with ``q* <= TOY_NEURON_Q_STAR_MAX`` and features recover at
        most :data:`TOY_FEATURE_RECOVERY_MAX` of the atoms; not: either fails.
    """
    _need(scores, ["family", "r2_aip", "q_star", "atom_recovery", "explained_variance"], "the toy scores table")
    n, f = _one(scores, "neurons", "the toy scores table"), _one(scores, "features", "the toy scores table")
    neurons_ok = n["r2_aip"] >= 1 - EXACT_R2_TOL and n["q_star"] <= TOY_NEURON_Q_STAR_MAX
    features_ok = f["atom_recovery"] <= TOY_FEATURE_RECOVERY_MAX
    verdict = "partly reproduced" if neurons_ok and features_ok else "not reproduced"
    words = [(f"The neurons reconstruct exactly (R^2 = {n['r2_aip']:.3f}) but are dense and coherent under the AIP, "
              f"so q* = {n['q_star']:.3f}: faithful, not unique." if neurons_ok else
              f"The neurons have R^2 = {n['r2_aip']:.3f} and q* = {n['q_star']:.3f}: not the paper's 'faithful, not "
              "unique'.")]
    gap = float(f["explained_variance"] - f["r2_aip"])
    words.append((f"The Euclidean ReLU SAE explains {f['explained_variance']:.3f} of the Euclidean variance but only "
                  f"R^2 = {f['r2_aip']:.3f} in the AIP: it spends its capacity on the high-variance directions the "
                  "mixing created" if gap > EUCLIDEAN_AIP_GAP else
                  f"The Euclidean ReLU SAE scores alike in both metrics (explained variance "
                  f"{f['explained_variance']:.3f}, R^2 in the AIP {f['r2_aip']:.3f})")
                 + (f", and its units are not the atoms (it recovers {f['atom_recovery']:.0%} of them)." if features_ok
                    else f", and it recovers {f['atom_recovery']:.0%} of the atoms: its units are close to them."))
    order = _q_star_order(scores, ("atoms", "features", "neurons"))
    if len(order) == 3:
        words.append(f"q* orders the sets {' > '.join(order)}"
                     + (", the paper's order." if order == ["atoms", "features", "neurons"] else
                        ", unlike the paper's atoms > features > neurons."))
    return _verdict("toy.baselines", verdict,
                    ours=f"neurons R^2_S {n['r2_aip']:.3f}, q* {n['q_star']:.3f}; features R^2_S {f['r2_aip']:.3f}, "
                         f"q* {f['q_star']:.3f}, recovery {f['atom_recovery']:.3f}",
                    criterion=f"qualitative only (the paper's numbers are on real models), so at most partly: neurons "
                              f"R^2 >= 1 - {EXACT_R2_TOL:g} with q* <= {TOY_NEURON_Q_STAR_MAX:g}, and features recover "
                              f"<= {TOY_FEATURE_RECOVERY_MAX:.0%} of the atoms",
                    interpretation=" ".join(words), model=model,
                    values={"neurons_ok": bool(neurons_ok), "features_ok": bool(features_ok)})


# =====================================================================================================================
# Chapter 1: representation shift
# =====================================================================================================================
def _angle_rows(table: pd.DataFrame, set_name: str, columns: Sequence[str]) -> pd.DataFrame:
    _need(table, ["layer", "set", *columns], "the angle table (atomsnb.shift.angle_study)")
    rows = table[table["set"] == set_name]
    if rows.empty:
        raise ValueError(f"the angle table has no rows of set {set_name!r}; sets present: {sorted(set(table['set']))}")
    if "model" in rows:  # models in the order they appear, layers ascending within each
        order = {m: i for i, m in enumerate(dict.fromkeys(rows["model"]))}
        return rows.assign(_order=rows["model"].map(order)).sort_values(["_order", "layer"], kind="stable").drop(
            columns="_order")
    return rows.sort_values("layer", kind="stable")


def _layers(rows: pd.DataFrame) -> str:
    """'layer 3' / 'layers 1-30', or with a ``model`` column 'layers 1-30 of A and 1-18 of B'."""
    if "model" in rows:
        parts = []
        for i, (m, g) in enumerate(rows.groupby("model", sort=False)):
            ls = g["layer"].tolist()
            span = f"{ls[0]}" if len(ls) == 1 else f"{ls[0]}-{ls[-1]}"
            parts.append(f"{'layer' if len(ls) == 1 else 'layers'} {span} of {m}" if i == 0 else f"{span} of {m}")
        return " and ".join(parts)
    ls = rows["layer"].tolist()
    return f"layer {ls[0]}" if len(ls) == 1 else f"layers {ls[0]}-{ls[-1]}"


def _per_layer(rows: pd.DataFrame, column: str) -> str:
    """The column's values per layer, '76.3, 77.1, ...', or per model with a ``model`` column 'A: ...; B: ...'."""
    if "model" in rows:
        return "; ".join(f"{m}: " + ", ".join(f"{v:.1f}" for v in g[column]) for m, g in rows.groupby("model", sort=False))
    return ", ".join(f"{v:.1f}" for v in rows[column])


def check_shift_euclidean_below_90(table: pd.DataFrame, *, model: str, set_name: str = "held-out") -> Verdict:
    """``shift.euclidean_below_90`` (paper §3, SPEC §2): Euclidean angles of random pairs well below 90 degrees.

    Args:
        table: :func:`atomsnb.shift.angle_study` output; reads the rows of ``set == set_name`` and their
            ``layer``, ``euclidean_mean`` (degrees), ``shift`` (``90 - euclidean_mean``); with a ``model`` column
            (several models' tables concatenated) every (model, layer) counts.
        set_name: the held-out evaluation set.

    Returns:
        reproduced: every layer's mean Euclidean angle at most ``90 - SHIFT_MIN_DEG``; partly: some layers; not: none.
    """
    rows = _angle_rows(table, set_name, ["euclidean_mean", "shift"])
    ok = rows["euclidean_mean"] <= 90 - SHIFT_MIN_DEG
    verdict = three_level(int(ok.sum()), len(rows))
    where = share(int(ok.sum()), len(rows), "layer")
    words = (f"Random {set_name} activation pairs have mean Euclidean angles of {value_range(rows['euclidean_mean'])} degrees "
             f"across {_layers(rows)}, a shift of {value_range(rows['shift'])} degrees below 90: the paper's representation "
             + (f"shift is present in {where}." if ok.any() else
                f"shift is absent (no layer is {SHIFT_MIN_DEG:g} degrees or more below 90)."))
    return _verdict("shift.euclidean_below_90", verdict,
                    ours=f"{set_name} mean Euclidean angle per layer: " + _per_layer(rows, "euclidean_mean"),
                    criterion=f"reproduced: every layer's {set_name} mean Euclidean angle <= {90 - SHIFT_MIN_DEG:g} "
                              "degrees; partly: some layers",
                    interpretation=words, model=model, values={"n_layers": len(rows), "n_below": int(ok.sum())})


def check_shift_aip_recentres(table: pd.DataFrame, *, model: str, set_name: str = "held-out") -> Verdict:
    """``shift.aip_recentres`` (paper §3, SPEC §2): under the AIP the angles re-centre on 90 degrees.

    Only informative on text ``S`` was not fitted on (on the fitting data it is automatic, SPEC §1.5).

    Args:
        table: :func:`atomsnb.shift.angle_study` output; reads the rows of ``set == set_name``: ``layer``,
            ``aip_mean`` (degrees).

    Returns:
        reproduced: every layer's mean AIP angle within :data:`AIP_CENTRE_TOL_DEG` of 90; partly: some; not: none.
    """
    rows = _angle_rows(table, set_name, ["aip_mean"])
    ok = (rows["aip_mean"] - 90).abs() <= AIP_CENTRE_TOL_DEG
    verdict = three_level(int(ok.sum()), len(rows))
    where = share(int(ok.sum()), len(rows), "layer")
    words = (f"Under the AIP fitted on a disjoint split, the {set_name} means are {value_range(rows['aip_mean'])} degrees: "
             + (f"the re-centring holds within {AIP_CENTRE_TOL_DEG:g} degrees in {where}." if ok.any() else
                f"the re-centring does not hold within {AIP_CENTRE_TOL_DEG:g} degrees in any layer."))
    return _verdict("shift.aip_recentres", verdict,
                    ours=f"{set_name} mean AIP angle per layer: " + _per_layer(rows, "aip_mean"),
                    criterion=f"reproduced: every layer's {set_name} mean AIP angle within {AIP_CENTRE_TOL_DEG:g} "
                              "degrees of 90, S fitted on a disjoint split; partly: some layers",
                    interpretation=words, model=model, values={"n_layers": len(rows), "n_centred": int(ok.sum())})


# =====================================================================================================================
# Chapter 2: neurons, features and atoms
# =====================================================================================================================
_UNITS_COLUMNS = ["family", "r2_aip", "q_star"]


def check_units_neurons(held: pd.DataFrame, *, model: str) -> Verdict:
    """``units.neurons`` (paper §4): neurons are faithful (``R^2 = 100%``) but not unique (``q* = 0.5%``).

    Args:
        held: held-out rows of :func:`atomsnb.evaluation.compare_unit_sets` (``family``, ``r2_aip``, ``q_star``),
            one ``"neurons"`` row.

    Returns:
        reproduced: ``R^2 > NEURON_R2_MIN`` and ``q* < NEURON_Q_STAR_MAX``; partly: faithful only; not: otherwise.
    """
    _need(held, _UNITS_COLUMNS, "the held-out unit-set table")
    n = _one(held, "neurons", "the held-out unit-set table")
    faithful, not_unique = n["r2_aip"] > NEURON_R2_MIN, n["q_star"] < NEURON_Q_STAR_MAX
    verdict = "reproduced" if faithful and not_unique else "partly reproduced" if faithful else "not reproduced"
    words = (f"Neurons: R^2 = {n['r2_aip']:.3f}, q* = {n['q_star']:.3f}: "
             + ("faithful but not unique, as the paper reports." if faithful and not_unique else
                f"faithful, and more stable than the paper reports ({percent(PAPER_NEURONS['q_star'])})." if faithful else
                "not faithful: the neuron reconstruction is not exact, which points to a bug."))
    return _verdict("units.neurons", verdict, ours=f"R^2 = {n['r2_aip']:.3f}, q* = {n['q_star']:.3f}",
                    criterion=f"reproduced: R^2 > {NEURON_R2_MIN:g} and q* < {NEURON_Q_STAR_MAX:g}; partly: R^2 only",
                    interpretation=words, model=model, values={"r2_aip": float(n["r2_aip"]), "q_star": float(n["q_star"])})


def check_units_features(held: pd.DataFrame, *, model: str) -> Verdict:
    """``units.features`` (paper §4): standard-SAE features, ``R^2 = 48.8%``, ``q* = 68.2%``.

    Args:
        held: held-out rows of :func:`atomsnb.evaluation.compare_unit_sets`; the ``"features"`` rows (one per
            coefficient) with ``r2_aip``, ``q_star`` and ``l1_coefficient``.

    Returns:
        reproduced: some coefficient within :data:`FEATURES_TOL` of both numbers; partly: ``R^2`` below
        :data:`FEATURES_UNFAITHFUL_R2` (unfaithful in the AIP) at every coefficient; not: otherwise.
    """
    _need(held, _UNITS_COLUMNS, "the held-out unit-set table")
    feats = _family_rows(held, "features", "the held-out unit-set table")
    close = ((feats["r2_aip"] - PAPER_FEATURES["r2_aip"]).abs() < FEATURES_TOL) & \
            ((feats["q_star"] - PAPER_FEATURES["q_star"]).abs() < FEATURES_TOL)
    unfaithful = bool((feats["r2_aip"] < FEATURES_UNFAITHFUL_R2).all())
    verdict = "reproduced" if close.any() else "partly reproduced" if unfaithful else "not reproduced"
    gap = PAPER_FEATURES["q_star"] - float(feats["q_star"].max())
    words = (f"Standard-SAE features: R^2 in the AIP {value_range(feats['r2_aip'], '{:.3g}')} (paper "
             f"{percent(PAPER_FEATURES['r2_aip'])}), "
             + ("unfaithful in the AIP at every coefficient; " if unfaithful else
                f"at least {FEATURES_UNFAITHFUL_R2:g} at some coefficient, so not unfaithful as the paper finds; ")
             + f"q* at most {feats['q_star'].max():.3f}, "
             + ("well below" if gap > FEATURES_TOL else "close to" if abs(gap) <= FEATURES_TOL else "well above")
             + f" the paper's {percent(PAPER_FEATURES['q_star'])}.")
    return _verdict("units.features", verdict,
                    ours="; ".join(f"{_coefficient(r)}: R^2 = {r['r2_aip']:.3g}, q* = {r['q_star']:.3f}"
                                   for _, r in feats.iterrows()),
                    criterion=f"reproduced: some coefficient within {FEATURES_TOL:g} of both numbers; partly: R^2 < "
                              f"{FEATURES_UNFAITHFUL_R2:g} (unfaithful in the AIP) at every coefficient",
                    interpretation=words, model=model, values={"n_close": int(close.sum()), "unfaithful": unfaithful})


def _dominated(atoms: pd.DataFrame, point: pd.Series) -> bool:
    return bool(((atoms["q_star"] > point["q_star"]) & (atoms["r2_aip"] >= point["r2_aip"])).any())


def check_units_atoms_beat_features(held: pd.DataFrame, *, model: str) -> Verdict:
    """``units.atoms_beat_features`` (paper §4-6): atoms more stable than features at matched or better ``R^2``.

    Args:
        held: held-out rows of :func:`atomsnb.evaluation.compare_unit_sets` with ``"atoms"`` and ``"features"`` rows.

    Returns:
        reproduced: every feature point dominated (some atom point with higher ``q*`` and ``R^2`` at least as
        high); partly: some; not: none.
    """
    _need(held, _UNITS_COLUMNS, "the held-out unit-set table")
    atoms = _family_rows(held, "atoms", "the held-out unit-set table")
    feats = _family_rows(held, "features", "the held-out unit-set table")
    beaten = sum(_dominated(atoms, r) for _, r in feats.iterrows())
    verdict = three_level(beaten, len(feats))
    words = (f"{share(beaten, len(feats), 'feature point').capitalize()} "
             + agreeing_verb(beaten, len(feats), "is", "are")
             + " beaten on q* by an atom point with R^2 at least as high"
             + (": atoms dominate the features' frontier." if beaten == len(feats) else
                ": the atoms' frontier crosses the features'." if beaten else
                ": no atom point improves on a feature point in both metrics."))
    return _verdict("units.atoms_beat_features", verdict,
                    ours=f"{beaten} of {len(feats)} feature points beaten on q* by an atom point with R^2 at least as "
                         f"high; best atoms q* = {atoms['q_star'].max():.3f}, best features q* = "
                         f"{feats['q_star'].max():.3f}",
                    criterion="reproduced: every feature point is dominated (higher q*, R^2 at least as high) by some "
                              "atom point; partly: some",
                    interpretation=words, model=model, values={"beaten": beaten, "n_features": len(feats)})


def _at_scale(words: str, at_scale: StudyReading | None) -> str:
    """A verdict's reading followed by what the committed scaling study says (chapter 7), when given."""
    if at_scale is None:
        return words
    if not isinstance(at_scale, StudyReading):
        raise TypeError(f"at_scale must be an atomsnb.scaling.StudyReading (scaling.study_reading()); got "
                        f"{type(at_scale).__name__}")
    return f"{words} At scale: {at_scale.sentence}"


def check_units_atoms_near_one(held: pd.DataFrame, *, model: str, at_scale: StudyReading | None = None) -> Verdict:
    """``units.atoms_near_one`` (paper §6): TSAE atoms reach ``R^2`` and ``q*`` near 1.

    Args:
        held: held-out rows of :func:`atomsnb.evaluation.compare_unit_sets`; the ``"atoms"`` rows with ``r2_aip``,
            ``q_star``, ``l0`` and ``l0_coefficient``.
        model: what the rows were computed on, with their scale (tokens, steps).
        at_scale: the committed scaling study's reading (:func:`atomsnb.scaling.study_reading`), cited after the
            reading of this build's numbers; it does not change the verdict, which is on this build's numbers.

    Raises:
        TypeError: ``at_scale`` is not a :class:`~atomsnb.scaling.StudyReading`.

    Returns:
        reproduced: some coefficient with ``R^2`` and ``q*`` >= :data:`NEAR_ONE`; partly: one of the two at some
        coefficient; not: neither.
    """
    _need(held, [*_UNITS_COLUMNS, "l0"], "the held-out unit-set table")
    atoms = _family_rows(held, "atoms", "the held-out unit-set table")
    both = (atoms["r2_aip"] >= NEAR_ONE) & (atoms["q_star"] >= NEAR_ONE)
    either = (atoms["r2_aip"] >= NEAR_ONE) | (atoms["q_star"] >= NEAR_ONE)
    verdict = "reproduced" if both.any() else "partly reproduced" if either.any() else "not reproduced"
    words = (f"TSAE atoms: R^2 {value_range(atoms['r2_aip'], '{:.3f}')}, q* {value_range(atoms['q_star'], '{:.3f}')}; "
             + (f"{share(int(both.sum()), len(atoms), 'coefficient')} "
                f"{agreeing_verb(int(both.sum()), len(atoms), 'reaches', 'reach')} both "
                f"{NEAR_ONE:g}." if both.any() else
                f"R^2 or q* reaches {NEAR_ONE:g} at {share(int(either.sum()), len(atoms), 'coefficient')}, never both."
                if either.any() else f"no coefficient reaches {NEAR_ONE:g} in either."))
    return _verdict("units.atoms_near_one", verdict,
                    ours="; ".join(f"{_coefficient(r)}: R^2 = {r['r2_aip']:.3f}, q* = {r['q_star']:.3f}, "
                                   f"L0 = {r['l0']:.1f}" for _, r in atoms.iterrows()),
                    criterion=f"reproduced: some coefficient with R^2 >= {NEAR_ONE:g} and q* >= {NEAR_ONE:g}; partly: "
                              "one of the two",
                    interpretation=_at_scale(words, at_scale), model=model,
                    values={"n_both": int(both.sum()), "n_either": int(either.sum())})


# =====================================================================================================================
# Chapter 3: the capacity grid
# =====================================================================================================================
def check_grid_critical_capacity(df: pd.DataFrame, *, model: str, threshold: float = CAPACITY_R2_THRESHOLD) -> Verdict:
    """``grid.critical_capacity`` (paper §5): ``R^2`` jumps to about 1 past a critical ``|D|`` matched to ``|M|``.

    Args:
        df: capacity-grid rows (:func:`atomsnb.grid.capacity_point` through the runner, ``status == "ok"``):
            ``n_train`` (``|M|``), ``n_latents`` (``|D|``), ``train_r2_aip``, ``heldout_r2_aip``.
        threshold: the ``R^2`` that counts as "about 1" (default :data:`CAPACITY_R2_THRESHOLD`).

    Returns:
        reproduced: training ``R^2 >= threshold`` at some ``|D|`` for every ``|M|``, the critical ``|D|``
        non-decreasing in ``|M|`` and larger at the largest ``|M|`` than at the smallest; partly: reached at some
        ``|M|``; not: at none.
    """
    _need(df, ["n_train", "n_latents", "train_r2_aip"], "the capacity-grid table")
    crit = critical_capacity(df, value="train_r2_aip", threshold=threshold)
    found = crit.dropna()
    grows = bool(found.is_monotonic_increasing) and len(found) >= 2 and found.iloc[-1] > found.iloc[0]
    verdict = ("reproduced" if len(found) == len(crit) and grows else "partly reproduced" if len(found)
               else "not reproduced")
    reached = share(len(found), len(crit), "|M|")
    words = (f"Training R^2 reaches {threshold:g} at {reached} of the grid"
             + ((f"; the critical |D| grows from {int(found.iloc[0])} to {int(found.iloc[-1])} with |M|." if grows else
                 "; the critical |D| does not grow with |M| here.") if len(found) else
                ": no |D| in the grid is large enough, so no jump is seen."))
    return _verdict("grid.critical_capacity", verdict,
                    ours="critical |D| on training activations per |M|: "
                         + ", ".join(f"{m}: {'-' if pd.isna(d) else int(d)}" for m, d in crit.items()),
                    criterion=f"reproduced: training R^2 >= {threshold:g} at some |D| for every |M|, with the critical "
                              "|D| growing with |M|; partly: reached for some |M|",
                    interpretation=words, model=model, values={"n_reached": len(found), "grows": grows})


# =====================================================================================================================
# Chapter 4: per-model results
# =====================================================================================================================
def _atoms_row(table: pd.DataFrame, model_name: str | None = None) -> pd.Series:
    _need(table, ["unit set", "r2_aip", "q_star", "layers"], "the per-model table (atomsnb.grid.paper_table)")
    rows = table[table["unit set"] == "atoms"]
    if model_name is not None:
        rows = rows[rows["model"] == model_name]
    if len(rows) != 1:
        raise ValueError(f"the per-model table must have exactly one atoms row{'' if model_name is None else f' for {model_name!r}'}; "
                         f"got {len(rows)}")
    return rows.iloc[0]


def _near_one_verdict(r2: float, q: float) -> tuple[str, str]:
    both, either = r2 >= NEAR_ONE and q >= NEAR_ONE, r2 >= NEAR_ONE or q >= NEAR_ONE
    verdict = "reproduced" if both else "partly reproduced" if either else "not reproduced"
    words = (f"R^2 and q* both reach {NEAR_ONE:g}" if both else
             f"{'R^2' if r2 >= NEAR_ONE else 'q*'} reaches {NEAR_ONE:g} but {'q*' if r2 >= NEAR_ONE else 'R^2'} "
             "does not" if either else f"neither R^2 nor q* reaches {NEAR_ONE:g}")
    return verdict, words


def check_layers_atoms_near_one(table: pd.DataFrame, *, model: str, at_scale: StudyReading | None = None) -> Verdict:
    """``layers.atoms_near_one`` (paper §6): atoms averaged over layers reach ``R^2`` and ``q*`` near 1.

    Args:
        table: :func:`atomsnb.grid.paper_table` output (``unit set``, ``layers``, ``r2_aip``, ``q_star``): one
            ``"atoms"`` row, or one per model (column ``model``), each judged on its own.
        model: what the table was computed on, with its scale (tokens, steps).
        at_scale: the committed scaling study's reading (:func:`atomsnb.scaling.study_reading`), cited after the
            reading of this build's numbers (the verdict stays on this build's numbers).

    Raises:
        TypeError: ``at_scale`` is not a :class:`~atomsnb.scaling.StudyReading`.

    Returns:
        reproduced: mean ``R^2`` and ``q*`` >= :data:`NEAR_ONE` (for every model); partly: one of them (or some
        models); not: neither, for any model.
    """
    _need(table, ["unit set", "r2_aip", "q_star", "layers"], "the per-model table (atomsnb.grid.paper_table)")
    atoms = table[table["unit set"] == "atoms"]
    if "model" in atoms and len(atoms) > 1:
        if atoms["model"].duplicated().any():
            raise ValueError(f"the per-model table has several atoms rows for one model: {atoms['model'].tolist()}")
        rows = list(atoms.iterrows())
    else:
        rows = [(None, _atoms_row(table))]
    parts, verdicts, values = [], [], {}
    for _, a in rows:
        r2, q = _finite("r2_aip", a["r2_aip"]), _finite("q_star", a["q_star"])
        v, words = _near_one_verdict(r2, q)
        verdicts.append(v)
        name = a["model"] if "model" in a and len(rows) > 1 else None
        parts.append(((f"{name}: " if name else "") + f"R^2 = {r2:.3f}, q* = {q:.3f} (layers {a['layers']})",
                      (f"on {name}, " if name else "") + f"averaged over layers {a['layers']}, {words}"))
        values[name or "atoms"] = {"r2_aip": r2, "q_star": q}
    verdict = ("reproduced" if all(v == "reproduced" for v in verdicts) else
               "not reproduced" if all(v == "not reproduced" for v in verdicts) else "partly reproduced")
    reading = "; ".join(w for _, w in parts)
    return _verdict("layers.atoms_near_one", verdict, ours="; ".join(o for o, _ in parts),
                    criterion=f"reproduced: mean over layers of held-out R^2 >= {NEAR_ONE:g} and q* >= {NEAR_ONE:g} "
                              "(on every model); partly: one of the two, or some models",
                    interpretation=_at_scale(reading[0].upper() + reading[1:] + f" (paper: {ATOMS_PAPER_SUMMARY}).",
                                             at_scale),
                    model=model, values=values if len(rows) > 1 else values["atoms"])


def _has_atoms(table: pd.DataFrame | None, model: str) -> bool:
    return table is not None and "model" in table and ((table["model"] == model) & (table["unit set"] == "atoms")).any()


def check_layers_paper_models(table: pd.DataFrame | None = None, *, model_label: str | None = None,
                              ledger_table: pd.DataFrame | None = None, evidence: str | None = None) -> list[Verdict]:
    """``layers.<model>`` (paper §6): one verdict per model of the paper's table (:data:`PAPER_ATOMS`).

    A model present in ``table`` (column ``model``, computed in this build) is judged as
    :func:`check_layers_atoms_near_one`; else one present in ``ledger_table`` (the committed rows of
    :mod:`atomsnb.layer_ledger`), judged the same way with ``evidence`` saying where its numbers come from; the others
    are *not run here*, with the command that computes them into the ledger.

    Args:
        table: :func:`atomsnb.grid.paper_table` output (``model``, ``unit set``, ``layers``, ``r2_aip``,
            ``q_star``), or None if nothing ran.
        model_label: what ours ran on (defaults to the model name).
        ledger_table: :func:`atomsnb.grid.paper_table` of the ledger's current rows, or None.
        evidence: :meth:`atomsnb.ledger.Ledger.evidence` of those rows (required with ``ledger_table``).

    Returns:
        One :class:`Verdict` per row of :data:`PAPER_ATOMS`.

    Raises:
        ValueError: ``ledger_table`` without ``evidence``.
    """
    if ledger_table is not None and not evidence:
        raise ValueError("ledger_table needs its evidence (Ledger.evidence): a verdict on committed rows must say "
                         "where they come from")
    out = []
    for r in PAPER_ATOMS:
        cid = f"layers.{r['model'].split('/')[-1]}"
        source, ev = (table, None) if _has_atoms(table, r["model"]) else \
            (ledger_table, evidence) if _has_atoms(ledger_table, r["model"]) else (None, None)
        if source is None:
            out.append(_verdict(cid, "not run here", ours="not run in this build (needs the model and a GPU) and not "
                                "in the ledger results/layers/",
                                criterion=f"as layers.atoms_near_one, on {r['model']}",
                                interpretation=f"{r['model']} was not run in this build, and the ledger holds no current "
                                               "row of it.", model=r["model"],
                                command=f"make layers-ledger PARAMS={r['params']}"))
            continue
        a = _atoms_row(source, r["model"])
        r2, q = _finite("r2_aip", a["r2_aip"]), _finite("q_star", a["q_star"])
        verdict, words = _near_one_verdict(r2, q)
        out.append(_verdict(cid, verdict, ours=f"R^2 = {r2:.4f}, q* = {q:.4f} (layers {a['layers']})",
                            criterion=f"reproduced: mean R^2 >= {NEAR_ONE:g} and q* >= {NEAR_ONE:g}; partly: one of them",
                            interpretation=f"On {r['model']}, {words} (paper: {percent(r['r2_aip'], 2)} / "
                                           f"{percent(r['q_star'], 2)}).",
                            model=(model_label if source is table else None) or r["model"],
                            values={"r2_aip": r2, "q_star": q}, evidence=ev))
    return out


# =====================================================================================================================
# Chapter 5: monosemanticity
# =====================================================================================================================
def _mono(claim_id: str, diffs: pd.DataFrame, judges: Sequence[str], model: str, criterion: str,
          command: str | None = None) -> Verdict:
    _need(diffs, ["judge", "difference", "value", "ci_low", "ci_high", "ci_above_0"],
          "the differences table (atomsnb.monosemanticity.unit_set_differences)")
    d = diffs[diffs["judge"].isin(list(judges))]
    if d.empty:
        raise ValueError(f"no differences for the judges {list(judges)}; judges present: {sorted(set(diffs['judge']))}")
    n_up = int(d["ci_above_0"].sum())
    n_down = int(d["ci_below_0"].sum()) if "ci_below_0" in d else 0
    verdict = three_level(n_up, len(d))
    words = (f"{share(n_up, len(d), 'comparison').capitalize()} of atoms with another set "
             + agreeing_verb(n_up, len(d), "has", "have")
             + f" a {MONO_CI:.0%} CI above 0"
             + (f"; {n_down} {'has' if n_down == 1 else 'have'} one below 0 (atoms judged less monosemantic)."
                if n_down else "."))
    return _verdict(claim_id, verdict, ours=format_differences(d), criterion=criterion, interpretation=words,
                    model=model, values={"n_up": n_up, "n_down": n_down, "n": len(d)}, command=command)


def check_mono_atoms_more_monosemantic(diffs: pd.DataFrame, *, judges: Sequence[str], model: str) -> Verdict:
    """``mono.atoms_more_monosemantic`` (paper §7), judged by the offline judges.

    Args:
        diffs: :func:`atomsnb.monosemanticity.unit_set_differences` output (``judge``, ``difference``, ``value``,
            ``ci_low``, ``ci_high``, ``ci_above_0``, ``ci_below_0``).
        judges: the offline judges' names (e.g. token concentration, embedding coherence).

    Returns:
        reproduced: every atoms-minus-other CI above 0 for every judge; partly: some; not: none.
    """
    return _mono("mono.atoms_more_monosemantic", diffs, judges, model,
                 f"reproduced: the {MONO_CI:.0%} bootstrap CI of atoms - features and of atoms - neurons above 0 for "
                 "every offline judge; partly: for some of the comparisons")


def check_mono_llm_human_judgement(diffs: pd.DataFrame, *, judges: Sequence[str], model: str) -> Verdict:
    """``mono.llm_human_judgement`` (paper §7): the LLM and human judges, or *not run here* without them.

    Args:
        diffs: as :func:`check_mono_atoms_more_monosemantic`.
        judges: the LLM / human judges that ran (empty: *not run here*, with the command that runs them).
    """
    cmd = rerun_command("05_monosemanticity", None, llm_base_url="http://localhost:11434/v1", llm_model="MODEL")
    criterion = (f"reproduced: the {MONO_CI:.0%} CI of atoms - features and atoms - neurons above 0 for every LLM / "
                 "human judge; partly: for some (or -p ratings_file FILLED.csv for human ratings)")
    if not list(judges):
        return _verdict("mono.llm_human_judgement", "not run here",
                        ours="no LLM endpoint configured and no human ratings given", criterion=criterion,
                        interpretation="No LLM or human judge ran in this build.", model=model, command=cmd)
    return _mono("mono.llm_human_judgement", diffs, judges, model, criterion, command=None)


# =====================================================================================================================
# Chapter 7: the scaling study
# =====================================================================================================================
def check_scaling_near_one(fits: Mapping, *, model: str, evidence: str | None, command: str = "make scaling",
                           reach: float = NEAR_ONE, n_rows: int = 0) -> Verdict:
    """``scaling.atoms_near_one_with_data`` (paper §5-6): with enough data, atoms reach ``R^2`` and ``q*`` near 1.

    Decided on the power-law fits of held-out ``1 - R^2`` and ``1 - q*`` against ``|M|`` (:func:`atomsnb.scaling.fit_table`)
    of the full study's ledger rows, per model and layer: a metric's fitted ceiling ``1 - c`` is *below* ``reach``
    when the upper end of its 95 % interval is below it.

    Args:
        fits: ``{(model, layer, metric): PowerLawFit}`` with metric ``"r2_aip"`` or ``"q_star"``; empty when the full
            study has not been run (then the verdict is "not run here" with ``command``).
        model: what the fits were computed on.
        evidence: where the rows come from (:meth:`atomsnb.ledger.Ledger.evidence`).
        n_rows: the current ledger rows the fits were attempted on (with no fit: none, or too few data sizes).

    Returns:
        reproduced: no ceiling below ``reach`` (the fits are consistent with reaching it); not reproduced: at every
        (model, layer) the ``R^2`` or the ``q*`` ceiling is below it; partly: in between.
    """
    if not fits:
        return _verdict("scaling.atoms_near_one_with_data", "not run here",
                        ours="the ledger holds no current row of the full study" if not n_rows else
                             f"the ledger holds {n_rows} current row{'s' if n_rows > 1 else ''} of the full study, "
                             "but no model and layer with the 4 data sizes a fit needs yet",
                        criterion=f"the fitted ceilings of held-out R^2 and q* against |M| (95 % CI) reach {reach:g}",
                        interpretation="", model=model, command=command, evidence=evidence)
    below = {}
    for (m, layer, metric), f in fits.items():
        hi = f.ci.get("ceiling", (f.ceiling, f.ceiling))[1]
        below.setdefault((m, layer), []).append(("R^2" if metric == "r2_aip" else "q*") if hi < reach else None)
    capped = {k: [x for x in v if x] for k, v in below.items()}
    n_capped = sum(bool(v) for v in capped.values())
    verdict = "reproduced" if n_capped == 0 else "not reproduced" if n_capped == len(capped) else "partly reproduced"
    words = ("No fitted ceiling lies below " + f"{reach:g}: more data may close the gap." if n_capped == 0 else
             f"At {share(n_capped, len(capped), 'model-layer pair')} a fitted ceiling lies below {reach:g} "
             f"({'; '.join(f'{m} layer {l}: ' + ', '.join(v) for (m, l), v in capped.items() if v)}): there, more "
             "activations alone do not reach it within the fit.")
    ours = "; ".join(f"{m} layer {layer} {'R^2' if metric == 'r2_aip' else 'q*'}: ceiling {f.ceiling:.3f} "
                     f"(95 % CI {f.ci['ceiling'][0]:.3f}-{f.ci['ceiling'][1]:.3f})"
                     for (m, layer, metric), f in fits.items())
    return _verdict("scaling.atoms_near_one_with_data", verdict, ours=ours,
                    criterion=f"reproduced: no fitted ceiling (95 % CI upper end) of held-out R^2 or q* below {reach:g};"
                              " not: at every model and layer one is below",
                    interpretation=words, model=model, evidence=evidence, values={"n_capped": n_capped})


#: claim id -> its check (``layers.<model>`` ids are all decided by :func:`check_layers_paper_models`).
CHECKS = {
    "toy.aip_invariance": check_toy_aip_invariance,
    "toy.construction_supports": check_toy_construction_supports,
    "toy.construction_reconstruction": check_toy_construction_reconstruction,
    "toy.trained_tsae": check_toy_trained_tsae,
    "toy.baselines": check_toy_baselines,
    "shift.euclidean_below_90": check_shift_euclidean_below_90,
    "shift.aip_recentres": check_shift_aip_recentres,
    "units.neurons": check_units_neurons,
    "units.features": check_units_features,
    "units.atoms_beat_features": check_units_atoms_beat_features,
    "units.atoms_near_one": check_units_atoms_near_one,
    "grid.critical_capacity": check_grid_critical_capacity,
    "layers.atoms_near_one": check_layers_atoms_near_one,
    **{f"layers.{r['model'].split('/')[-1]}": check_layers_paper_models for r in PAPER_ATOMS},
    "mono.atoms_more_monosemantic": check_mono_atoms_more_monosemantic,
    "mono.llm_human_judgement": check_mono_llm_human_judgement,
    "scaling.atoms_near_one_with_data": check_scaling_near_one,
}
assert set(CHECKS) == set(CLAIMS), "every claim has a check"
