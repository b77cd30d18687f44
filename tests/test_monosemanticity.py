"""Chapter 5's comparisons and readings (atomsnb.monosemanticity) on fabricated judge scores with known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from atomsnb import judges as J
from atomsnb import paper as P
from atomsnb.monosemanticity import (
    describe, format_differences, reader_differences, reader_summary, stability_table, unit_set_differences,
)


def scores(means: dict[str, dict[str, float]], n: int = 60, sd: float = 0.05, seed: int = 0) -> pd.DataFrame:
    """Judge scores ``N(mean, sd)`` for ``n`` units per (judge, unit set)."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame([{"unit set": s, "unit": u, "judge": j, "score": float(v)}
                         for j, by in means.items() for s, m in by.items()
                         for u, v in enumerate(rng.normal(m, sd, n))])


KNOWN = {"tc": {"neurons": 0.2, "features": 0.4, "atoms": 0.8}, "ec": {"neurons": 0.3, "features": 0.3, "atoms": 0.3}}


def test_a_known_difference_is_found_and_a_null_one_is_not():
    d = unit_set_differences(scores(KNOWN), n_boot=500, seed=1).set_index(["judge", "difference"])
    assert list(d.index) == [("tc", "atoms - features"), ("tc", "atoms - neurons"), ("ec", "atoms - features"),
                             ("ec", "atoms - neurons")]
    tc = d.loc[("tc", "atoms - features")]
    assert tc["value"] == pytest.approx(0.4, abs=0.03) and tc["ci_low"] > 0.3 and tc["ci_above_0"] and not tc["ci_below_0"]
    assert d.loc[("tc", "atoms - neurons"), "ci_low"] > 0.5
    for other in ("features", "neurons"):  # the same distribution: the CI contains 0
        r = d.loc[("ec", f"atoms - {other}")]
        assert r["ci_low"] < 0 < r["ci_high"] and not r["ci_above_0"] and not r["ci_below_0"]
    assert (d["ci_level"] == P.MONO_CI).all() and (d["n"] == 60).all()
    # the interval is the bootstrap of judges.bootstrap_difference with the same seed (each set resampled separately)
    s = scores(KNOWN)
    ref = J.bootstrap_difference(s[(s.judge == "tc") & (s["unit set"] == "atoms")]["score"],
                                 s[(s.judge == "tc") & (s["unit set"] == "features")]["score"], n_boot=500, seed=1)
    assert (tc["value"], tc["ci_low"], tc["ci_high"]) == (ref.value, ref.low, ref.high)
    # a known negative difference is found as one
    neg = unit_set_differences(scores({"tc": {"neurons": 0.9, "features": 0.9, "atoms": 0.1}}), n_boot=300)
    assert neg["ci_below_0"].all() and not neg["ci_above_0"].any()


def test_differences_refuse_bad_input():
    s = scores(KNOWN)
    with pytest.raises(ValueError, match=r"judge 'tc' has no scores for the unit set\(s\) \['neurons'\]"):
        unit_set_differences(s[~((s.judge == "tc") & (s["unit set"] == "neurons"))])
    with pytest.raises(ValueError, match=r"lacks the column\(s\) \['score'\]"):
        unit_set_differences(s.drop(columns="score"))
    with pytest.raises(ValueError, match="n_boot must be an integer >= 1; got 0"):
        unit_set_differences(s, n_boot=0)
    with pytest.raises(ValueError, match="ci must be in"):
        unit_set_differences(s, ci=1.5)


def test_verdicts_and_readings_flip_with_the_scores():
    s = scores(KNOWN)
    diffs = unit_set_differences(s, n_boot=300)
    summary = J.summary_table(s, None, n_boot=300)
    metrics = pd.DataFrame({"q_star": [0.01, 0.5, 0.9], "r2_aip": [1.0, 0.4, 0.8], "l0": [64.0, 10.0, 5.0]},
                           index=["neurons", "features", "atoms"])
    v = P.check_mono_atoms_more_monosemantic(diffs, judges=["tc", "ec"], model="m")
    assert v.verdict == "partly reproduced" and v.interpretation.startswith("2 of 4 comparisons")
    assert v.ours.startswith("tc: atoms - features = +0.3") and "ec: atoms - neurons = +0.0" in v.ours
    v = P.check_mono_atoms_more_monosemantic(diffs, judges=["tc"], model="m")
    assert v.verdict == "reproduced" and v.interpretation.startswith("Every comparison")
    v = P.check_mono_atoms_more_monosemantic(diffs, judges=["ec"], model="m")
    assert v.verdict == "not reproduced" and v.interpretation.startswith("No comparison")

    lines = describe(summary, diffs, metrics=metrics, offline_judges=["tc", "ec"])
    tc, ec = lines[0], lines[1]
    assert tc.startswith("tc: neurons 0.20, features 0.40, atoms 0.80. Ranking: atoms > features > neurons")
    assert "atoms are above features and above neurons (95% CIs)" in tc
    assert "not separable from features and not separable from neurons" in ec
    # ec's means differ by noise only: its order agreeing with q*'s is flagged as such
    assert lines[2] == ("q* orders the sets atoms > features > neurons; the same order as tc and ec (ec cannot separate "
                        "atoms from the other sets: its order is within the noise).")
    assert describe(summary, diffs, metrics=metrics, offline_judges=["tc"])[2] == \
        "q* orders the sets atoms > features > neurons; the same order as tc."
    assert lines[-1] == "2 of 4 comparisons of atoms with another set have a 95% CI above 0."
    # reverse q*: no judge orders the sets as q* does
    lines = describe(summary, diffs, metrics=metrics.assign(q_star=[0.9, 0.5, 0.1]), offline_judges=["tc"])
    assert lines[2] == "q* orders the sets neurons > features > atoms; no offline judge orders them the same way."
    # with chance levels: which sets beat both
    chance = pd.DataFrame([{"pool": p, "unit": 0, "judge": j, "score": 0.5} for j in ("tc", "ec")
                           for p in ("random tokens", "neurons", "features", "atoms")])
    line = describe(J.summary_table(s, chance, n_boot=300), diffs)[0]
    assert "(chance 0.50 at random tokens)" in line and line.endswith("Above both chance levels: atoms.")
    line = describe(J.summary_table(s, chance.assign(score=0.95), n_boot=300), diffs)[0]
    assert line.endswith("Above both chance levels: none.")

    r = reader_differences(diffs)
    assert list(r.columns) == ["difference of means", "95% CI", "reading"]
    assert r.loc[("tc", "atoms - features"), "reading"] == "atoms higher"
    assert r.loc[("ec", "atoms - neurons"), "reading"] == "not separable"
    rs = reader_summary(summary)
    assert list(rs.columns) == ["mean score", "95% CI", "units"] and rs.loc[("tc", "atoms"), "units"] == 60
    st = stability_table(metrics, summary)
    assert list(st.columns[:3]) == ["q*", "R² (AIP)", "L0 (latents/token)"] and "tc (mean score)" in st
    assert format_differences(diffs.iloc[:1]).startswith("tc: atoms - features = +0.")
