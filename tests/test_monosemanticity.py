"""Chapter 5's comparisons and readings (atomsnb.monosemanticity) on fabricated judge scores with known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from atomsnb import judges as J
from atomsnb import paper as P
from atomsnb import verdicts as V
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
    v = V.check_mono_atoms_more_monosemantic(diffs, judges=["tc", "ec"], model="m")
    assert v.verdict == "partly reproduced" and v.interpretation.startswith("2 of 4 comparisons")
    assert v.ours.startswith("tc: atoms - features = +0.3") and "ec: atoms - neurons = +0.0" in v.ours
    v = V.check_mono_atoms_more_monosemantic(diffs, judges=["tc"], model="m")
    assert v.verdict == "reproduced" and v.interpretation.startswith("Every comparison")
    v = V.check_mono_atoms_more_monosemantic(diffs, judges=["ec"], model="m")
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
    assert list(st.columns) == ["q*", "R² (AIP)", "L0 (latents/token)", "tc (mean score)", "ec (mean score)"]
    assert st.loc["atoms", "tc (mean score)"] == round(float(summary.set_index(["judge", "unit set"]).loc[("tc", "atoms"),
                                                                                                          "mean"]), 3)
    assert format_differences(diffs.iloc[:1]).startswith("tc: atoms - features = +0.")


# ------------------------------------------------------------------------------ from unit sets to judged contexts
import torch  # noqa: E402

from atomsnb.activations import ActivationConfig, Activations  # noqa: E402
from atomsnb.monosemanticity import (  # noqa: E402
    OFFLINE_JUDGES, contexts_html, judge_units, make_judges, reader_agreement, reading_contexts,
)

VOCAB = ["<s>", " the", " cat", " sat", " on", " mat", " dog", " ran", "."]


class Tok:
    """Token id i decodes to VOCAB[i]; id 0 is the special (BOS) token."""

    all_special_ids = [0]

    def decode(self, ids):
        return "".join(VOCAB[i] for i in ids)


class Linear:
    """A unit set with codes relu(x @ W) and a made-up dictionary (only codes matter for contexts)."""

    family = "external"

    def __init__(self, name, W):
        self.name, self.W = name, W
        self.d_model, self.n_latents = W.shape

    def codes(self, x):
        return torch.relu(x.double() @ self.W)

    def reconstruct(self, x):
        return x.double()

    @property
    def dictionary(self):
        return self.W


def reading_text(n_windows=40, seq_len=9, d=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    body = torch.randint(1, len(VOCAB), (n_windows, seq_len - 1), generator=g)
    windows = torch.cat([torch.zeros(n_windows, 1, dtype=torch.long), body], 1)
    n = n_windows * (seq_len - 1)
    x = torch.randn(n, d, generator=g)
    x[7] = 1000.0  # one massive token: norm far above 20 x the median; it would top every unit with W >= 0
    return Activations(acts={3: x}, token_ids=body.reshape(-1), window=torch.arange(n_windows).repeat_interleave(seq_len - 1),
                       position=torch.arange(1, seq_len).repeat(n_windows), windows=windows, config=ActivationConfig())


def brute_force_top(codes, window, k):
    """Top-k rows of each unit, at most one per window, by a plain loop (ties: lower row first)."""
    out = {}
    for j in range(codes.shape[1]):
        order = sorted(range(codes.shape[0]), key=lambda i: (-float(codes[i, j]), i))
        rows, seen = [], set()
        for i in order:
            if float(codes[i, j]) <= 0 or len(rows) == k:
                break
            if int(window[i]) not in seen:
                seen.add(int(window[i]))
                rows.append(i)
        out[j] = rows
    return out


def test_reading_contexts_are_the_top_tokens_without_the_massive_ones():
    r = reading_text()
    W = torch.rand(4, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    sets = {"a": Linear("a", W), "b": Linear("b", -W)}
    ctx = reading_contexts(sets, r, 3, Tok(), n_units=3, k=4, width_left=2, width_right=1, massive_k=20.0, seed=5)
    assert ctx.n_excluded == 1 and bool(ctx.excluded[7]) and ctx.n_tokens == 320 and ctx.massive_k == 20.0
    x = r.acts[3].clone()
    x[7] = 0.0  # the reference: the massive token's codes are zero
    for i, (name, u) in enumerate(sets.items()):
        codes = u.codes(x)
        ref = brute_force_top(codes, r.window, 4)
        eligible = [j for j in range(6) if len({int(r.window[t]) for t in range(320) if codes[t, j] > 0}) >= 4]
        assert ctx.table.loc[name, "eligible"] == len(eligible) and ctx.table.loc[name, "latents"] == 6
        chosen = torch.tensor(eligible)[torch.randperm(len(eligible), generator=torch.Generator().manual_seed(5 + i))[:3]]
        assert [uc.unit for uc in ctx.units[name]] == sorted(chosen.tolist()), "set i samples with seed + i"
        for uc in ctx.units[name]:
            assert [c.index for c in uc.contexts] == ref[uc.unit]
            assert 7 not in [c.index for c in uc.contexts]
            assert uc.contexts[0].activation == pytest.approx(float(codes[ref[uc.unit][0], uc.unit]), rel=1e-6)
        assert ctx.table.loc[name, "contexts"] == sum(len(uc) for uc in ctx.units[name])
    # without the criterion the massive token tops every unit of "a" (its codes are all positive there)
    raw = reading_contexts({"a": sets["a"]}, r, 3, Tok(), n_units=6, k=4, seed=5)
    assert raw.n_excluded == 0 and all(uc.contexts[0].index == 7 for uc in raw.units["a"])
    # the chance pools: random non-massive tokens (20 k by default), and each set's own contexts
    assert len(ctx.random_pool) == 80 and 7 not in [c.index for c in ctx.random_pool]
    assert list(ctx.pools) == ["random tokens", "a", "b"]
    assert len(ctx.pools["a"]) == ctx.table.loc["a", "contexts"]


def test_reading_contexts_refuse_bad_input():
    r = reading_text()
    W = torch.rand(4, 6, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"hold layers \[3\], not layer 2"):
        reading_contexts({"a": Linear("a", W)}, r, 2, Tok(), n_units=3)
    with pytest.raises(ValueError, match="reads d_model=5 but the reading activations have d_model=4"):
        reading_contexts({"a": Linear("a", torch.rand(5, 6, dtype=torch.float64))}, r, 3, Tok(), n_units=3)
    with pytest.raises(ValueError, match="massive_k=1.0 is not allowed: massive_k must be None"):
        reading_contexts({"a": Linear("a", W)}, r, 3, Tok(), n_units=3, massive_k=1.0)
    with pytest.raises(ValueError, match="n_units must be an integer >= 1; got 0"):
        reading_contexts({"a": Linear("a", W)}, r, 3, Tok(), n_units=0)
    with pytest.raises(TypeError, match="does not present the UnitSet interface"):
        reading_contexts({"a": object()}, r, 3, Tok(), n_units=3)
    with pytest.raises(ValueError, match="no unit set"):
        reading_contexts({}, r, 3, Tok(), n_units=3)


class FirstActivation(J.Judge):
    """A judge whose score is known: the largest activation of the unit, squashed into [0, 1]."""

    name = "first activation"

    def score(self, contexts):
        return float(1 - np.exp(-contexts[0].activation)) if contexts else float("nan")


def test_judge_units_scores_every_unit_and_pool_and_appends_human_ratings():
    r = reading_text()
    W = torch.rand(4, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ctx = reading_contexts({"atoms": Linear("atoms", W), "neurons": Linear("neurons", -W)}, r, 3, Tok(), n_units=3,
                           k=4, massive_k=20.0)
    judge = FirstActivation()
    scores, chance = judge_units([judge], ctx, n_chance=5, seed=2)
    for name, us in ctx.units.items():
        got = scores[scores["unit set"] == name].set_index("unit")["score"]
        assert {u.unit: judge.score(u.contexts) for u in us} == got.to_dict()
    assert sorted(set(chance["pool"])) == ["atoms", "neurons", "random tokens"] and (chance.groupby("pool").size() == 5).all()
    unit = ctx.units["atoms"][0].unit
    ratings = pd.DataFrame({"unit set": ["atoms"], "unit": [unit], "score": [0.75]})
    with_h, _ = judge_units([judge], ctx, n_chance=5, seed=2, ratings=ratings)
    assert with_h[with_h.judge == "human"][["unit set", "unit", "score"]].values.tolist() == [["atoms", unit, 0.75]]
    with pytest.raises(ValueError, match=r"1 unit\(s\) that this run did not sample, e.g. \[\('atoms', 99\)\]"):
        judge_units([judge], ctx, n_chance=5, ratings=pd.DataFrame({"unit set": ["atoms"], "unit": [99], "score": [0.5]}))
    with pytest.raises(ValueError, match="n_chance must be an integer >= 1; got 0"):
        judge_units([judge], ctx, n_chance=0)

    html = contexts_html(ctx, scores, n_show=2, judges=["first activation", "absent judge"])
    assert len(html) == 2 and "atoms: 2 of 3 sampled units (scores: first activation)" in html[0]
    first = ctx.units["atoms"][0]
    assert f"{judge.score(first.contexts):.2f}" in html[0] and "&lt;s&gt;" not in html[0]


def test_make_judges_adds_the_llm_only_when_configured(monkeypatch):
    class Fake(J.Embedder):
        name = "fake embedder"

        def embed(self, texts):
            return torch.nn.functional.normalize(torch.ones(len(texts), 3), dim=1)

    monkeypatch.setattr(J, "default_embedder", lambda lm=None, layer=None: Fake())
    for v in ("ATOMSNB_LLM_BASE_URL", "ATOMSNB_LLM_MODEL", "OPENAI_API_KEY"):
        monkeypatch.delenv(v, raising=False)
    r = reading_text()
    judges, notes = make_judges(r, Tok())
    assert [j.name for j in judges] == list(OFFLINE_JUDGES)
    # base rates of the reading text: " the" and "the" are one type; 8 types (the BOS never occurs in the text)
    assert judges[0].base_rates == pytest.approx(
        {VOCAB[i].strip(): float((r.token_ids == i).double().mean()) for i in range(1, len(VOCAB))})
    assert notes[1] == "embedding coherence: fake embedder" and "not configured" in notes[2]
    judges, notes = make_judges(r, Tok(), llm_base_url="http://localhost:9/v1", llm_model="tiny")
    assert [j.name for j in judges] == [*OFFLINE_JUDGES, "LLM (tiny)"] and notes[2] == "LLM (tiny): at http://localhost:9/v1"
    monkeypatch.setenv("ATOMSNB_LLM_BASE_URL", "http://localhost:9/v1")
    monkeypatch.setenv("ATOMSNB_LLM_MODEL", "env-model")
    assert make_judges(r, Tok())[0][-1].name == "LLM (env-model)"


def test_reader_agreement():
    agreement = J.judge_agreement(scores(KNOWN))
    r = reader_agreement(agreement)
    assert list(r.columns) == ["Spearman rho", "p-value", "units"] and r.loc[("tc", "ec"), "units"] == 180
    assert r.loc[("tc", "ec"), "Spearman rho"] == round(float(agreement["spearman_rho"][0]), 2)
