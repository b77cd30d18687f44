"""Are atoms more monosemantic than neurons and features? Comparisons and readings of the judges' scores (paper §7).

Chapter 5 scores sampled units of each unit set with several judges (:mod:`atomsnb.judges`: token
concentration, embedding coherence, optionally an LLM and human ratings), each beside its chance
baselines. This module turns those scores into what the chapter reports:

- :func:`unit_set_differences`: ``mean(atoms) - mean(other)`` per judge with a bootstrap confidence
  interval over units (:func:`atomsnb.judges.bootstrap_difference`, each set resampled separately);
- :func:`format_differences`: the same as one line of text, for the claim record;
- :func:`describe`: the chapter's verdict lines (per judge: the ranking, the comparisons, which sets
  beat both chance levels; the judges' agreement; whether ``q*`` orders the sets as the judges do),
  every number-dependent word chosen from the numbers;
- :func:`reader_summary`, :func:`reader_differences`, :func:`stability_table`: the tables for a reader.

The verdicts on the paper's claims are :func:`atomsnb.paper.check_mono_atoms_more_monosemantic` and
:func:`atomsnb.paper.check_mono_llm_human_judgement`, which read :func:`unit_set_differences`' table.
"""

from __future__ import annotations

from typing import Sequence

import pandas as pd

from . import judges as J
from .metrics import METRIC_LABELS

__all__ = ["SETS", "unit_set_differences", "format_differences", "describe", "reader_summary", "reader_differences",
           "stability_table"]

#: The unit sets of chapter 5, in the paper's order.
SETS = ("neurons", "features", "atoms")


def _need(df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"{what} must be a pandas DataFrame; got {type(df).__name__}")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what} lacks the column(s) {missing}; it has {list(df.columns)}")


def unit_set_differences(scores: pd.DataFrame, *, reference: str = "atoms", others: Sequence[str] = ("features", "neurons"),
                         n_boot: int = 2000, ci: float | None = None, seed: int = 0) -> pd.DataFrame:
    """``mean(reference) - mean(other)`` per judge, with a bootstrap CI over units (paper §7).

    Args:
        scores: :func:`atomsnb.judges.score_table` output (``unit set``, ``unit``, ``judge``, ``score``), possibly
            with human ratings appended.
        reference: the unit set compared with the others (the atoms).
        others: the unit sets it is compared with.
        n_boot: bootstrap resamples.
        ci: confidence level (default :data:`atomsnb.paper.MONO_CI`).
        seed: bootstrap seed (the same for every judge and pair, so results are reproducible).

    Returns:
        One row per (judge, other): ``judge``, ``difference`` (``"atoms - features"``), ``value``, ``ci_low``,
        ``ci_high``, ``ci_above_0``, ``ci_below_0`` (bool; both False when the CI contains 0 or is undefined),
        ``ci_level`` and ``n``.

    Raises:
        ValueError: missing columns, ``n_boot < 1``, a level outside ``(0, 1)``, or a judge without scores for
            the reference or one of the other sets.
    """
    from .paper import MONO_CI

    ci = MONO_CI if ci is None else ci
    _need(scores, ["unit set", "judge", "score"], "the scores table (atomsnb.judges.score_table)")
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 1:
        raise ValueError(f"n_boot must be an integer >= 1; got {n_boot!r}")
    if not 0 < ci < 1:
        raise ValueError(f"ci must be in (0, 1); got {ci!r}")
    rows = []
    for judge, g in scores.groupby("judge", sort=False):
        present = set(g["unit set"])
        missing = [s for s in (reference, *others) if s not in present]
        if missing:
            raise ValueError(f"judge {judge!r} has no scores for the unit set(s) {missing}; present: {sorted(present)}")
        ref = g.loc[g["unit set"] == reference, "score"]
        for other in others:
            d = J.bootstrap_difference(ref, g.loc[g["unit set"] == other, "score"], n_boot=n_boot, ci=ci, seed=seed)
            rows.append({"judge": judge, "difference": f"{reference} - {other}", "value": d.value, "ci_low": d.low,
                         "ci_high": d.high, "ci_above_0": bool(d.low > 0), "ci_below_0": bool(d.high < 0),
                         "ci_level": ci, "n": d.n})
    return pd.DataFrame(rows, columns=["judge", "difference", "value", "ci_low", "ci_high", "ci_above_0", "ci_below_0",
                                       "ci_level", "n"])


def format_differences(diffs: pd.DataFrame) -> str:
    """``"judge: atoms - features = +0.120 [+0.050, +0.190]; ..."`` for the rows of :func:`unit_set_differences`."""
    _need(diffs, ["judge", "difference", "value", "ci_low", "ci_high"], "the differences table")
    return "; ".join(f"{r['judge']}: {r['difference']} = {r['value']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]"
                     for _, r in diffs.iterrows())


def _level(diffs: pd.DataFrame) -> str:
    from .paper import MONO_CI

    levels = set(diffs["ci_level"]) if "ci_level" in diffs else {MONO_CI}
    return "/".join(f"{lv:.0%}" for lv in sorted(levels))


def _relation(row: pd.Series) -> str:
    return "above" if row["ci_above_0"] else "below" if row["ci_below_0"] else "not separable from"


def describe(summary: pd.DataFrame, diffs: pd.DataFrame, *, metrics: pd.DataFrame | None = None,
             agreement: pd.DataFrame | None = None, offline_judges: Sequence[str] = (),
             sets: Sequence[str] = SETS, reference: str = "atoms") -> list[str]:
    """Chapter 5's verdict lines, every number-dependent word chosen from the numbers.

    Args:
        summary: :func:`atomsnb.judges.summary_table` output (``judge``, ``unit set``, ``mean``, ``ci_low`` and the
            chance columns ``chance (random tokens)``, ``chance (shuffled)``).
        diffs: :func:`unit_set_differences` output.
        metrics: held-out rows of :attr:`atomsnb.units.UnitSetResults.table` indexed by unit set (``q_star``), for
            the "does q* order the sets as the judges do" line; None to skip it.
        agreement: :func:`atomsnb.judges.judge_agreement` output; None or empty to skip.
        offline_judges: the judges whose order is compared with ``q*``'s.
        sets: the unit sets, in display order.
        reference: the set the differences are taken from.

    Returns:
        One line per judge, then the agreement line, the ``q*`` ordering line and the count of comparisons with a CI
        above 0.
    """
    _need(summary, ["judge", "unit set", "mean", "ci_low"], "the summary table (atomsnb.judges.summary_table)")
    _need(diffs, ["judge", "difference", "ci_above_0", "ci_below_0"], "the differences table")
    s = summary.set_index(["judge", "unit set"])
    lines = []
    for judge in dict.fromkeys(summary["judge"]):
        row = {n: s.loc[(judge, n)] for n in sets}
        chance_cols = [c for c in ("chance (random tokens)", "chance (shuffled)") if c in summary]
        above = [n for n in sets if chance_cols and row[n]["ci_low"] > max(row[n][c] for c in chance_cols)]
        ranking = sorted(sets, key=lambda n: -row[n]["mean"])
        d = diffs[diffs["judge"] == judge].set_index("difference")
        words = [f"{_relation(d.loc[k])} {k.split(' - ', 1)[1]}" for k in d.index]
        chance = (f" (chance {row[reference]['chance (random tokens)']:.2f} at random tokens)"
                  if "chance (random tokens)" in summary else "")
        line = (f"{judge}: " + ", ".join(f"{n} {row[n]['mean']:.2f}" for n in sets) + f"{chance}. Ranking: "
                f"{' > '.join(ranking)}")
        if words:
            line += f"; {reference} are {' and '.join(words)} ({_level(d)} CIs)"
        if chance_cols:
            line += f". Above both chance levels: {', '.join(above) or 'none'}"
        lines.append(line + ".")
    if agreement is not None and len(agreement):
        lines.append("Agreement between judges: " + "; ".join(
            f"{r['judge a']} vs {r['judge b']}: rho = {r['spearman_rho']:.2f}" for _, r in agreement.iterrows()) + ".")
    if metrics is not None and len(offline_judges):
        order_q = sorted(sets, key=lambda n: -float(metrics.loc[n, "q_star"]))
        same = [j for j in offline_judges if sorted(sets, key=lambda n: -s.loc[(j, n), "mean"]) == order_q]
        noisy = [j for j in same if not (diffs.loc[diffs["judge"] == j, ["ci_above_0", "ci_below_0"]].to_numpy().any())]
        caveat = (f" ({' and '.join(noisy)} cannot separate {reference} from the other sets: "
                  f"{'its' if len(noisy) == 1 else 'their'} order is within the noise)" if noisy else "")
        lines.append(f"q* orders the sets {' > '.join(order_q)}; "
                     + (f"the same order as {' and '.join(same)}{caveat}." if same else
                        "no offline judge orders them the same way."))
    n_up, n_all = int(diffs["ci_above_0"].sum()), len(diffs)
    lines.append(f"{n_up} of {n_all} comparisons of {reference} with another set have a {_level(diffs)} CI above 0.")
    return lines


def reader_summary(summary: pd.DataFrame, *, ci: float | None = None) -> pd.DataFrame:
    """:func:`atomsnb.judges.summary_table` for a reader: index (judge, unit set); ``mean score``, ``<level> CI``
    (``"[low, high]"``), the chance columns and ``units`` (3 decimals).

    Args:
        ci: the level the summary was computed at (default :data:`atomsnb.paper.MONO_CI`), for the header.
    """
    from .paper import MONO_CI

    _need(summary, ["judge", "unit set", "mean", "ci_low", "ci_high", "n"], "the summary table")
    out = summary.set_index(["judge", "unit set"])
    res = pd.DataFrame({"mean score": out["mean"].round(3),
                        f"{MONO_CI if ci is None else ci:.0%} CI": [f"[{lo:.3f}, {hi:.3f}]"
                                                                    for lo, hi in zip(out["ci_low"], out["ci_high"])]},
                       index=out.index)
    for c in ("chance (random tokens)", "chance (shuffled)"):
        if c in out:
            res[c] = out[c].round(3)
    res["units"] = out["n"]
    return res


def reader_differences(diffs: pd.DataFrame) -> pd.DataFrame:
    """:func:`unit_set_differences` for a reader: index (judge, difference); ``difference of means``, ``95% CI``
    and ``reading`` (``"atoms higher"``, ``"atoms lower"`` or ``"not separable"``)."""
    _need(diffs, ["judge", "difference", "value", "ci_low", "ci_high", "ci_above_0", "ci_below_0"],
          "the differences table")
    out = diffs.set_index(["judge", "difference"])
    ref = [d.split(" - ", 1)[0] for d in diffs["difference"]]
    reading = [f"{r} higher" if up else f"{r} lower" if down else "not separable"
               for r, up, down in zip(ref, diffs["ci_above_0"], diffs["ci_below_0"])]
    return pd.DataFrame({"difference of means": out["value"].round(3),
                         f"{_level(diffs)} CI": [f"[{lo:+.3f}, {hi:+.3f}]" for lo, hi in zip(out["ci_low"], out["ci_high"])],
                         "reading": reading}, index=out.index)


def stability_table(metrics: pd.DataFrame, summary: pd.DataFrame, sets: Sequence[str] = SETS) -> pd.DataFrame:
    """Each set's ``q*``, ``R²`` (AIP) and L0 beside its mean judged monosemanticity (the paper's argument that
    a unique decomposition is necessary for monosemanticity): index unit set, 2-3 decimals.

    Args:
        metrics: held-out rows of the unit-set table indexed by unit set (``q_star``, ``r2_aip``, ``l0``).
        summary: :func:`atomsnb.judges.summary_table` output.
    """
    means = summary.pivot_table(index="unit set", columns="judge", values="mean").reindex(list(sets))
    means.columns = [f"{c} (mean score)" for c in means.columns]
    m = metrics.loc[list(sets)]
    base = pd.DataFrame({METRIC_LABELS["q_star"]: m["q_star"].round(3), METRIC_LABELS["r2_aip"]: m["r2_aip"].round(3),
                         METRIC_LABELS["l0"]: m["l0"].round(1)})
    return pd.concat([base, means.round(3)], axis=1)
