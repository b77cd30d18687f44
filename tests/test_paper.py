"""The paper's claims and their checks (issue 9 §1): verdicts and words computed from the numbers.

Every check runs on fabricated numbers chosen to flip each verdict and each number-dependent phrase; each test
asserts that the recorded verdict *and* the printed words flip together.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from atomsnb import paper as P
from atomsnb import verdicts as V
from atomsnb.claims import VERDICTS, Verdict, record

ROOT = Path(__file__).resolve().parents[1]


def printed(v: Verdict, capsys) -> str:
    """Record ``v`` (no claims dir) and return what it printed."""
    record(v)
    return capsys.readouterr().out


def flips(make, capsys, cases):
    """``cases``: list of (input, expected verdict, phrase that must be printed, phrase that must not)."""
    for args, verdict, present, absent in cases:
        v = make(*args)
        out = printed(v, capsys)
        assert verdict in VERDICTS and v.verdict == verdict, (args, v.verdict, v.interpretation)
        assert f"[{verdict.upper()}]" in out
        for ph in ([present] if isinstance(present, str) else present):
            assert ph in out, (ph, out)
        assert f"reading: {v.interpretation}" in out
        for ph in ([absent] if isinstance(absent, str) else absent):  # the words chosen from the numbers
            assert ph not in v.interpretation and ph not in v.ours, (ph, v.interpretation)


# ----------------------------------------------------------------------------------------------- the claims table
def test_every_claim_has_a_check_and_its_numbers_are_the_papers():
    assert set(V.CHECKS) == set(P.CLAIMS)
    assert len({c.claim_id for c in P.CLAIMS.values()}) == len(P.CLAIMS)
    chapters = {c.chapter for c in P.CLAIMS.values()}
    assert chapters == {"00_toy_world", "01_representation_shift", "02_neurons_features_atoms", "03_capacity_grid",
                        "04_per_model_results", "05_monosemanticity", "07_scaling"}
    # the paper's numbers, as PAPER.md quotes them
    assert P.PAPER_NEURONS["r2_aip"] == 1.0 and P.PAPER_NEURONS["q_star"] == 0.005
    assert P.PAPER_FEATURES["r2_aip"] == 0.488 and P.PAPER_FEATURES["q_star"] == 0.682
    assert [(r["r2_aip"], r["q_star"]) for r in P.PAPER_ATOMS] == [(0.9992, 0.9974), (0.9993, 0.9987), (0.9985, 0.9995)]
    assert P.paper_unit_points() == {"neurons": (0.005, 1.0), "features": (0.682, 0.488),
                                     "atoms, Gemma2-2B": (0.9974, 0.9992)}
    assert "48.8%" in P.CLAIMS["units.features"].paper and "68.2%" in P.CLAIMS["units.features"].paper
    assert "99.92%" in P.CLAIMS["layers.atoms_near_one"].paper


def test_record_prints_and_appends_the_verdict(tmp_path, monkeypatch, capsys):
    inv = SimpleNamespace(max_aip_change=1e-12, max_euclidean_change=0.5, euclidean_clean=torch.tensor([80.0]),
                          euclidean_mixed=torch.tensor([20.0]))
    monkeypatch.setenv("ATOMSNB_CLAIMS_DIR", str(tmp_path))
    v = record(V.check_toy_aip_invariance(inv))
    out = capsys.readouterr().out
    assert out.startswith("[REPRODUCED] The AIP is invariant") and "reading: " in out
    rec = json.loads((tmp_path / "00_toy_world.jsonl").read_text())
    assert rec["verdict"] == "reproduced" and rec["claim_id"] == "toy.aip_invariance" and rec["section"] == "§3"
    assert rec["interpretation"] == v.interpretation and "command" not in rec
    with pytest.raises(TypeError, match="Verdict"):
        record({"verdict": "reproduced"})
    with pytest.raises(ValueError, match="verdict must be one of"):
        Verdict("c", "x", "s", "§1", "p", "proven", "o", "c", "i", "m")
    with pytest.raises(ValueError, match="give the command"):
        Verdict("c", "x", "s", "§1", "p", "not run here", "o", "c", "i", "m")
    with pytest.raises(ValueError, match="ours must be a non-empty string"):
        Verdict("c", "x", "s", "§1", "p", "reproduced", "", "c", "i", "m")


# ----------------------------------------------------------------------------------------------- chapter 0
def test_toy_aip_invariance(capsys):
    def make(aip, euc):
        return V.check_toy_aip_invariance(SimpleNamespace(max_aip_change=aip, max_euclidean_change=euc,
                                                          euclidean_clean=torch.tensor([70.0, 80.0]),
                                                          euclidean_mixed=torch.tensor([10.0, 20.0])))
    flips(make, capsys, [
        ((1e-12, 0.5), "reproduced", ["< 1e-08 (float64 round-off)", "depends on the parametrisation"], "too mild"),
        ((1e-12, 0.01), "partly reproduced", "too mild to show the contrast", "depends on the parametrisation"),
        ((1e-3, 0.5), "not reproduced", ["moved by up to 1.0e-03", "invariance failed"], "round-off when"),
    ])
    with pytest.raises(ValueError, match="max_aip_change = nan is not finite"):
        make(float("nan"), 0.5)


def _phase(feasible_rec, infeasible_rec=(), lit=1.0, refit=1.0):
    rows = [{"feasible": True, "support_recovery": r, "r2_literal": lit, "r2_refit": refit, "margin": 0.1}
            for r in feasible_rec]
    rows += [{"feasible": False, "support_recovery": r, "r2_literal": 0.5, "r2_refit": 0.9, "margin": m}
             for r, m in infeasible_rec]
    return pd.DataFrame(rows)


def test_toy_construction_supports(capsys):
    degrading = [(0.9, -0.1), (0.5, -0.5), (0.2, -1.0)]  # recovery falls as the margin goes negative
    flat = [(0.2, -0.1), (0.9, -0.5), (0.5, -1.0)]  # no monotone trend
    flips(lambda ph: V.check_toy_construction_supports(ph), capsys, [
        ((_phase([1.0, 1.0], degrading),), "reproduced",
         ["every support is recovered, as the theorem says", "sufficient, not necessary", "degrades as the violation grows"],
         "does not track"),
        ((_phase([1.0, 0.95], flat),), "partly reproduced", ["only 1 of 2 worlds", "does not track the size"], "degrades"),
        ((_phase([1.0, 0.5], [(0.0, -1.0)]),), "not reproduced", ["worst recovers 50.0%", "no world recovers any support"],
         "as the theorem says"),
    ])
    with pytest.raises(ValueError, match="no feasible world"):
        V.check_toy_construction_supports(_phase([], degrading))
    with pytest.raises(ValueError, match=r"lacks the column\(s\) \['support_recovery'\]"):
        V.check_toy_construction_supports(pd.DataFrame({"feasible": [True]}))


def test_toy_construction_reconstruction(capsys):
    flips(lambda ph: V.check_toy_construction_reconstruction(ph), capsys, [
        ((_phase([1.0], lit=1.0, refit=1.0),), "reproduced", "AIP-orthogonal here", "not exact"),
        ((_phase([1.0], lit=0.99, refit=1.0 - 1e-12),), "partly reproduced", ["not exact", "makes it exact"], "even a"),
        ((_phase([1.0], lit=0.99, refit=0.999),), "not reproduced", "even a least-squares refit", "makes it exact"),
    ])


def _toy_scores(rec=1.0, r2=0.995, q=0.995, l0=3.0, n_alive=64, neurons_q=0.01, feat_rec=0.1, feat_ev=0.95,
                feat_r2=0.3, feat_q=0.4):
    return pd.DataFrame([
        {"family": "atoms", "atom_recovery": rec, "r2_aip": r2, "q_star": q, "l0": l0, "n_alive": n_alive,
         "explained_variance": 0.99},
        {"family": "features", "atom_recovery": feat_rec, "r2_aip": feat_r2, "q_star": feat_q, "l0": 10.0, "n_alive": 100,
         "explained_variance": feat_ev},
        {"family": "neurons", "atom_recovery": 0.0, "r2_aip": 1.0, "q_star": neurons_q, "l0": 32.0, "n_alive": 32,
         "explained_variance": 1.0},
    ])


def test_toy_trained_tsae(capsys):
    def make(scores, **kw):
        return V.check_toy_trained_tsae(scores, k=3, n_true_atoms=64, **kw)
    flips(make, capsys, [
        ((_toy_scores(),), "reproduced", ["recovers every one", "reaches R^2 and q* of at least 0.99", "matches K = 3",
                                          "no spare latent"], ["does not reach", "below K"]),
        ((_toy_scores(rec=0.95, r2=0.95, l0=2.5, n_alive=128),), "partly reproduced",
         ["recovers 95%", "does not reach R^2 and q* of 0.99", "below K = 3", "128 latents are alive for 64 atoms"],
         "reaches R^2 and q* of at least"),
        ((_toy_scores(rec=0.5, l0=3.5),), "not reproduced",
         ["recovers only 50% of the true atoms although it reaches R^2 and q* of at least 0.99", "above K = 3"],
         "below K"),
        ((_toy_scores(rec=0.0, r2=0.9),), "not reproduced",
         ["recovers only 0% of the true atoms and does not reach R^2 and q* of 0.99 either"], "but does not"),
    ])
    out = printed(V.check_toy_trained_tsae(_toy_scores(r2=0.95), k=3, support_exact=0.8, r2_refit=0.97), capsys)
    assert "exactly right on 80.0%" in out and "raises R^2 to 0.9700" in out
    out = printed(V.check_toy_trained_tsae(_toy_scores(r2=0.95), k=3, support_exact=1.0, r2_refit=0.94), capsys)
    assert "exactly right on every held-out activation" in out and "does not raise R^2" in out
    with pytest.raises(ValueError, match="exactly one row of family 'atoms'"):
        V.check_toy_trained_tsae(pd.concat([_toy_scores(), _toy_scores()]), k=3)


def test_toy_baselines(capsys):
    flips(lambda s: V.check_toy_baselines(s), capsys, [
        ((_toy_scores(),), "partly reproduced",
         ["faithful, not unique", "spends its capacity on the high-variance", "units are not the atoms",
          "atoms > features > neurons, the paper's order"], "unlike the paper"),
        ((_toy_scores(neurons_q=0.5, feat_rec=0.9, feat_ev=0.31, feat_q=0.3),), "not reproduced",
         ["not the paper's 'faithful, not unique'", "scores alike in both metrics", "its units are close to them",
          "unlike the paper's"], ["spends its capacity", "faithful, not unique."]),
    ])


# ----------------------------------------------------------------------------------------------- chapter 1
def _angles(euclid, aip_held, set_name="held-out"):
    rows = [{"layer": l, "set": set_name, "euclidean_mean": e, "shift": 90 - e, "aip_mean": a}
            for l, (e, a) in enumerate(zip(euclid, aip_held), start=1)]
    rows += [{"layer": l, "set": "in-sample (fit)", "euclidean_mean": 1.0, "shift": 89.0, "aip_mean": 90.0}
             for l in range(1, len(euclid) + 1)]
    return pd.DataFrame(rows)


def test_shift_claims(capsys):
    flips(lambda t: V.check_shift_euclidean_below_90(t, model="m"), capsys, [
        ((_angles([40.0, 60.0], [90, 90]),), "reproduced", ["40.0-60.0 degrees", "present in every layer"], "absent"),
        ((_angles([40.0, 88.0], [90, 90]),), "partly reproduced", "present in 1 of 2 layers", "every layer"),
        ((_angles([87.0, 88.0], [90, 90]),), "not reproduced", "shift is absent", "present in"),
    ])
    flips(lambda t: V.check_shift_aip_recentres(t, model="m"), capsys, [
        ((_angles([40, 60], [89.5, 90.5]),), "reproduced", "holds within 2 degrees in every layer", "does not hold"),
        ((_angles([40, 60], [89.5, 85.0]),), "partly reproduced", "in 1 of 2 layers", "every layer"),
        ((_angles([40, 60], [80.0, 85.0]),), "not reproduced", "does not hold within 2 degrees in any layer", "holds within"),
    ])
    with pytest.raises(ValueError, match="no rows of set 'held-out'"):
        V.check_shift_euclidean_below_90(_angles([40.0], [90], set_name="other"), model="m")
    bad = _angles([40.0, float("nan")], [90, 90])
    with pytest.raises(ValueError, match="'euclidean_mean' has non-finite"):
        V.check_shift_euclidean_below_90(bad, model="m")


def test_shift_claims_over_several_models(capsys):
    both = pd.concat([_angles([40.0, 60.0, 50.0], [90, 90, 90]).assign(model="A"),
                      _angles([88.0, 30.0], [90, 90]).assign(model="B")])
    v = V.check_shift_euclidean_below_90(both, model="A and B")
    assert v.verdict == "partly reproduced" and "present in 4 of 5 layers" in v.interpretation
    assert "layers 1-3 of A and 1-2 of B" in v.interpretation
    assert v.ours == "held-out mean Euclidean angle per layer: A: 40.0, 60.0, 50.0; B: 88.0, 30.0"
    v = V.check_shift_euclidean_below_90(both[both["model"] == "A"], model="A")
    assert v.verdict == "reproduced" and "layers 1-3 of A" in v.interpretation


def test_shift_describe_flips_its_words():
    from atomsnb.shift import describe

    def table(ho, od):
        return pd.DataFrame([{"layer": l, "set": s, "aip_mean": v} for s, vals in (("held-out", ho), ("other domain", od))
                             for l, v in enumerate(vals, start=1)])

    def related(gaps):
        return pd.DataFrame([{"layer": l, "pairs": p, "aip_mean": v} for l, g in enumerate(gaps, start=1)
                             for p, v in (("random", 90.0), ("same token, other context", 90.0 - g))])

    kw = dict(fit_corpus="docstrings", other_corpus="stdlib-code")
    t = " ".join(describe(table([90.1, 89.8], [89.0, 91.0]), related([20, 30]), **kw))
    assert "holds there too" in t and "keeps related activations together rather than" in t and "less well" not in t
    assert "20.0-30.0 degrees below random" in t
    t = " ".join(describe(table([90.1, 89.8], [80.0, 91.0]), related([1, 2]), **kw))
    assert "holds less well than on held-out" in t and "partly specific" in t and "holds there too" not in t
    assert "hardly closer than random ones" in t and "keeps related activations together rather" not in t
    t = " ".join(describe(table([80.0, 89.8], [85.0, 91.0]), related([10, 1]), **kw))
    assert "not specific to the other domain" in t and "in 1 of 2 layers only" in t
    t = " ".join(describe(table([90.0], [90.0]), related([-3]), **kw))
    assert "sit 3.0 degrees above random pairs" in t and "hardly closer" in t
    t = " ".join(describe(table([90.0, 90.0], [90.0, 90.0]), related([-3, 8]), **kw))
    assert "from 3.0 degrees above to 8.0 degrees below random pairs" in t
    with pytest.raises(ValueError, match="no rows of set 'other domain'"):
        describe(table([90.0], [90.0])[lambda d: d["set"] == "held-out"], None, **kw)


# ----------------------------------------------------------------------------------------------- chapter 2
def _held(neurons=(1.0, 0.01), feats=((0.5, 0.7),), atoms=((0.995, 0.995, 20.0),)):
    rows = [{"unit set": "neurons", "family": "neurons", "l0_coefficient": math.nan, "l1_coefficient": math.nan,
             "r2_aip": neurons[0], "q_star": neurons[1], "l0": 64.0}]
    rows += [{"unit set": f"features {i}", "family": "features", "l0_coefficient": math.nan, "l1_coefficient": 0.01 * (i + 1),
              "r2_aip": r, "q_star": q, "l0": 10.0} for i, (r, q) in enumerate(feats)]
    rows += [{"unit set": f"atoms {i}", "family": "atoms", "l0_coefficient": 0.001 * (i + 1), "l1_coefficient": math.nan,
              "r2_aip": r, "q_star": q, "l0": l0} for i, (r, q, l0) in enumerate(atoms)]
    return pd.DataFrame(rows)


def test_units_neurons(capsys):
    flips(lambda h: V.check_units_neurons(h, model="m"), capsys, [
        ((_held(neurons=(1.0, 0.01)),), "reproduced", "faithful but not unique, as the paper reports", "more stable"),
        ((_held(neurons=(1.0, 0.3)),), "partly reproduced", "more stable than the paper reports (0.5%)", "as the paper"),
        ((_held(neurons=(0.9, 0.01)),), "not reproduced", "not faithful", "as the paper reports"),
    ])


def test_units_features(capsys):
    flips(lambda h: V.check_units_features(h, model="m"), capsys, [
        ((_held(feats=((0.5, 0.7), (0.2, 0.3))),), "reproduced", ["close to the paper's 68.2%", "L1 coefficient 0.01"],
         "well below"),
        ((_held(feats=((0.2, 0.3), (0.1, 0.4))),), "partly reproduced", ["well below the paper's 68.2%",
                                                                         "unfaithful in the AIP at every coefficient"],
         "close to"),
        ((_held(feats=((0.95, 0.9),)),), "not reproduced", ["well above the paper's", "so not unfaithful"],
         "unfaithful in the AIP at every"),
    ])


def test_units_atoms_beat_features(capsys):
    flips(lambda h: V.check_units_atoms_beat_features(h, model="m"), capsys, [
        ((_held(feats=((0.5, 0.7), (0.6, 0.5)), atoms=((0.7, 0.9, 5.0),)),), "reproduced",
         ["Every feature point is beaten", "dominate the features' frontier"], "crosses"),
        ((_held(feats=((0.5, 0.7), (0.9, 0.5)), atoms=((0.7, 0.9, 5.0),)),), "partly reproduced",
         ["1 of 2 feature points is beaten", "crosses the features'"], "dominate"),
        ((_held(feats=((0.9, 0.95),), atoms=((0.7, 0.9, 5.0),)),), "not reproduced",
         ["No feature point is beaten", "no atom point improves"], "dominate"),
    ])


def test_units_atoms_near_one(capsys):
    flips(lambda h: V.check_units_atoms_near_one(h, model="m"), capsys, [
        ((_held(atoms=((0.995, 0.995, 20.0), (0.9, 0.9, 5.0))),), "reproduced", "1 of 2 coefficients reaches both 0.99",
         "never both"),
        ((_held(atoms=((0.995, 0.5, 20.0), (0.9, 0.9, 5.0))),), "partly reproduced", "at 1 of 2 coefficients, never both",
         "reaches both"),
        ((_held(atoms=((0.9, 0.5, 20.0),)),), "not reproduced", "no coefficient reaches 0.99 in either", "reaches both"),
    ])


# ----------------------------------------------------------------------------------------------- chapter 3
def _grid(train_r2):
    """train_r2: {|M|: [R^2 at |D| = 10, 20, 40]}; held-out R^2 a bit lower."""
    return pd.DataFrame([{"n_train": m, "n_latents": d, "train_r2_aip": r, "heldout_r2_aip": r - 0.2}
                         for m, rs in train_r2.items() for d, r in zip((10, 20, 40), rs)])


def test_grid_critical_capacity(capsys):
    flips(lambda df: V.check_grid_critical_capacity(df, model="m"), capsys, [
        ((_grid({100: [0.96, 1.0, 1.0], 1000: [0.5, 0.97, 1.0]}),), "reproduced",
         ["at every |M|", "grows from 10 to 20 with |M|"], "does not grow"),
        ((_grid({100: [0.96, 1.0, 1.0], 1000: [0.5, 0.7, 0.8]}),), "partly reproduced", "at 1 of 2 |M|s", "grows from"),
        ((_grid({100: [0.96, 1.0, 1.0], 1000: [0.97, 1.0, 1.0]}),), "partly reproduced", "does not grow with |M|",
         "grows from"),
        ((_grid({100: [0.5, 0.6, 0.7], 1000: [0.5, 0.7, 0.8]}),), "not reproduced", "no |D| in the grid is large enough",
         "grows"),
    ])


def test_grid_describe_capacity_flips_survival():
    from atomsnb.grid import describe_capacity

    df = _grid({100: [0.96, 1.0, 1.0], 1000: [0.5, 0.97, 1.0]})
    df.loc[(df["n_train"] == 1000) & (df["n_latents"] == 20), "heldout_r2_aip"] = 0.99
    text = "\n".join(describe_capacity(df))
    assert "|M| = 100: at |D| = 10" in text and "does NOT survive (memorisation)" in text
    assert "|M| = 1000: at |D| = 20" in text and "the jump survives" in text
    assert "1 of 2 jumps survive" in text and "Best held-out R² in the grid: 0.990 at |M| = 1000, |D| = 20" in text
    df["heldout_r2_aip"] = df["train_r2_aip"]
    assert "Every jump survives on held-out text" in "\n".join(describe_capacity(df))
    df["heldout_r2_aip"] = 0.1
    assert "No jump survives on held-out text" in "\n".join(describe_capacity(df))
    text = "\n".join(describe_capacity(_grid({100: [0.5, 0.6, 0.7]})))
    assert "no |D| in the grid reaches training R² >= 0.95" in text and "jump" not in text


# ----------------------------------------------------------------------------------------------- chapter 4
def _table(r2, q, model="mine"):
    return pd.DataFrame([{"model": model, "unit set": "atoms", "layers": "1-4", "n_layers": 4, "r2_aip": r2, "q_star": q},
                         {"model": model, "unit set": "features", "layers": "1-4", "n_layers": 4, "r2_aip": 0.1,
                          "q_star": 0.1}])


def test_layers_atoms_near_one(capsys):
    flips(lambda t: V.check_layers_atoms_near_one(t, model="m"), capsys, [
        ((_table(0.995, 0.999),), "reproduced", "R^2 and q* both reach 0.99", "does not"),
        ((_table(0.995, 0.5),), "partly reproduced", "R^2 reaches 0.99 but q* does not", "both reach"),
        ((_table(0.5, 0.995),), "partly reproduced", "q* reaches 0.99 but R^2 does not", "both reach"),
        ((_table(0.5, 0.5),), "not reproduced", "neither R^2 nor q* reaches 0.99", "both reach"),
    ])


def test_layers_paper_models(capsys):
    vs = V.check_layers_paper_models(_table(0.9995, 0.999, model="google/gemma-2-2b"))
    assert [v.claim_id for v in vs] == ["layers.gemma-2-2b", "layers.gemma-2-9b", "layers.Llama-3.1-8B"]
    assert [v.verdict for v in vs] == ["reproduced", "not run here", "not run here"]
    assert vs[1].command == "make layers-ledger PARAMS=params/gemma-2-9b.yaml" and vs[0].evidence is None
    assert printed(vs[1], capsys).count("to run it: ") == 1
    vs = V.check_layers_paper_models(_table(0.5, 0.999, model="google/gemma-2-2b"))
    assert vs[0].verdict == "partly reproduced" and "q* reaches 0.99 but R^2 does not" in vs[0].interpretation
    assert all(v.verdict == "not run here" for v in V.check_layers_paper_models(None))


def test_grid_describe_layers_flips_its_words():
    from atomsnb.grid import describe_layers

    df = pd.DataFrame({"status": "ok", "layer": [1, 2], "atoms_q_star": [0.9, 0.5], "features_q_star": [0.5, 0.6],
                       "atoms_r2_aip": [0.9, 0.9], "features_r2_aip": [0.1, 0.2], "neurons_r2_aip": [1.0, 1.0]})
    assert "at 1 of 2 layers" in describe_layers(df)[0]
    assert "at every layer" in describe_layers(df.assign(atoms_q_star=0.99))[0]
    assert "at no layer" in describe_layers(df.assign(atoms_q_star=0.1))[0]
    spliced = df.assign(atoms_ce_loss_score=[0.9, 0.8], features_ce_loss_score=[0.5, 0.6])
    assert "(atoms leave the model's next-token loss closer" in describe_layers(spliced)[0]
    assert "(features leave the model's next-token loss closer" in describe_layers(spliced.assign(features_ce_loss_score=0.95))[0]
    two = pd.concat([df.assign(model="A"), df.assign(model="B", atoms_q_star=0.1)])
    lines = describe_layers(two)
    assert len(lines) == 2 and lines[0].startswith("A: ") and "at 1 of 2" in lines[0] and "at no layer" in lines[1]


# ----------------------------------------------------------------------------------------------- chapter 5
def _diffs(above, below=()):
    """above/below: judges x comparisons flags."""
    rows = []
    for i, (j, diff) in enumerate([(j, d) for j in ("tc", "ec") for d in ("atoms - features", "atoms - neurons")]):
        up, down = i in above, i in below
        rows.append({"judge": j, "difference": diff, "value": 0.2 if up else -0.2 if down else 0.0,
                     "ci_low": 0.1 if up else -0.3 if down else -0.1, "ci_high": 0.3 if up else -0.1 if down else 0.1,
                     "ci_above_0": up, "ci_below_0": down, "ci_level": 0.95, "n": 40})
    return pd.DataFrame(rows)


def test_mono_claims(capsys):
    flips(lambda d: V.check_mono_atoms_more_monosemantic(d, judges=["tc", "ec"], model="m"), capsys, [
        ((_diffs({0, 1, 2, 3}),), "reproduced", "Every comparison of atoms with another set has a 95% CI above 0",
         "below 0"),
        ((_diffs({0}, {3}),), "partly reproduced", ["1 of 4 comparisons", "1 has one below 0"], "Every comparison"),
        ((_diffs(set()),), "not reproduced", "No comparison of atoms", "Every comparison"),
    ])
    v = V.check_mono_llm_human_judgement(_diffs({0}), judges=[], model="m")
    assert v.verdict == "not run here" and "-p llm_base_url" in v.command
    v = V.check_mono_llm_human_judgement(_diffs({0, 1}), judges=["tc"], model="m")
    assert v.verdict == "reproduced" and v.command is None
    with pytest.raises(ValueError, match=r"no differences for the judges \['llm'\]"):
        V.check_mono_atoms_more_monosemantic(_diffs({0}), judges=["llm"], model="m")


# ----------------------------------------------------------------------------------------------- status page
def _chapter(dir_: Path, stem: str) -> Path:
    src = dir_ / f"{stem}.py"
    src.write_text('# %% [markdown]\n# # A chapter\n\n# %% tags=["parameters"]\nmodel = "default"\n')
    return src


def test_status_page_renders_the_records_and_refuses_bad_ones(tmp_path, monkeypatch, capsys):
    sys.path.insert(0, str(ROOT / "tools"))
    import status_page

    nb, claims_dir = tmp_path / "notebooks", tmp_path / "claims"
    nb.mkdir()
    _chapter(nb, "04_per_model_results")
    monkeypatch.setenv("ATOMSNB_CLAIMS_DIR", str(claims_dir))
    record(V.check_layers_atoms_near_one(_table(0.5, 0.5), model="mine"))
    for v in V.check_layers_paper_models(None):
        record(v)
    capsys.readouterr()
    out = tmp_path / "status.md"
    assert status_page.main(["--claims-dir", str(claims_dir), "--notebooks", str(nb), "--params", str(tmp_path),
                             "--out", str(out)]) == 0
    page = out.read_text()
    assert "1 *not reproduced*" in page and "3 *not run here*" in page
    assert "<small>reading: Averaged over layers 1-4, neither R^2 nor q\\* reaches 0.99" in page
    assert "(paper §6)" in page and "make layers-ledger PARAMS=params/gemma-2-9b.yaml" in page
    # every claim says where its numbers come from
    assert page.count("<small>evidence: computed in this build</small>") == 1
    assert page.count("<small>evidence: not run in this build</small>") == 3
    # a duplicated record (the chapter ran twice into one file) is refused
    path = claims_dir / "04_per_model_results.jsonl"
    path.write_text(path.read_text() + path.read_text().splitlines()[0] + "\n")
    assert status_page.main(["--claims-dir", str(claims_dir), "--notebooks", str(nb), "--out", str(out)]) == 1
    assert "recorded twice" in capsys.readouterr().err
    # a record missing a field, or with a field that is not text
    rec = json.loads(path.read_text().splitlines()[0])
    path.write_text(json.dumps({k: v for k, v in rec.items() if k != "criterion"}) + "\n")
    assert status_page.main(["--claims-dir", str(claims_dir), "--notebooks", str(nb), "--out", str(out)]) == 1
    assert "missing fields ['criterion']" in capsys.readouterr().err
    path.write_text(json.dumps({**rec, "interpretation": 3}) + "\n")
    assert status_page.main(["--claims-dir", str(claims_dir), "--notebooks", str(nb), "--out", str(out)]) == 1
    assert "['interpretation'] are not text" in capsys.readouterr().err
    # a claims file older than its chapter is stale
    path.write_text(json.dumps(rec) + "\n")
    import os
    os.utime(path, (1, 1))
    assert status_page.main(["--claims-dir", str(claims_dir), "--notebooks", str(nb), "--out", str(out)]) == 1
    assert "older than the source" in capsys.readouterr().err
    # a chapter without a claims file
    _chapter(nb, "05_monosemanticity")
    os.utime(path, None)
    assert status_page.main(["--claims-dir", str(claims_dir), "--notebooks", str(nb), "--out", str(out)]) == 1
    assert "no claims file" in capsys.readouterr().err
    # a chapter that tests no claim of the paper (the atom browser) needs no claims file, and is not on the page
    (nb / "05_monosemanticity.py").unlink()
    _chapter(nb, "06_atom_browser")
    assert "06_atom_browser" not in status_page.CLAIM_CHAPTERS
    assert status_page.main(["--claims-dir", str(claims_dir), "--notebooks", str(nb), "--out", str(out)]) == 0
    assert "06_atom_browser" not in out.read_text() and "chapters/04_per_model_results" in out.read_text()


def test_layers_atoms_near_one_over_several_models():
    t = pd.DataFrame([{"model": m, "unit set": "atoms", "layers": "1-3", "r2_aip": r, "q_star": q}
                      for m, r, q in (("A", 0.995, 0.995), ("B", 0.5, 0.3))])
    v = V.check_layers_atoms_near_one(t, model="A and B")
    assert v.verdict == "partly reproduced" and "A: R^2 = 0.995" in v.ours and "B: R^2 = 0.500" in v.ours
    assert "On A, averaged over layers 1-3, R^2 and q* both reach" in v.interpretation
    assert "on B, averaged over layers 1-3, neither" in v.interpretation
    assert V.check_layers_atoms_near_one(t.assign(r2_aip=0.999, q_star=0.999), model="m").verdict == "reproduced"
    assert V.check_layers_atoms_near_one(t.assign(r2_aip=0.1, q_star=0.1), model="m").verdict == "not reproduced"
    with pytest.raises(ValueError, match="several atoms rows"):
        V.check_layers_atoms_near_one(t.assign(model="A"), model="m")


def test_status_page_shows_a_ledger_claims_evidence(tmp_path, monkeypatch, capsys):
    sys.path.insert(0, str(ROOT / "tools"))
    import status_page

    nb, claims_dir = tmp_path / "notebooks", tmp_path / "claims"
    nb.mkdir()
    _chapter(nb, "07_scaling")
    monkeypatch.setenv("ATOMSNB_CLAIMS_DIR", str(claims_dir))
    from atomsnb.scaling import fit_power_law

    m = 2.0 ** np.arange(10, 24)
    fit = fit_power_law(m, 3.0 * m ** -0.4 + 0.05, n_boot=50)
    record(V.check_scaling_near_one({("smollm2-135m", 1, "r2_aip"): fit}, model="smollm2-135m",
                                    evidence="ledger: commit abc1234, 3.2 h on 2 CPU cores"))
    capsys.readouterr()
    out = tmp_path / "status.md"
    assert status_page.main(["--claims-dir", str(claims_dir), "--notebooks", str(nb), "--out", str(out)]) == 0
    assert "<small>evidence: ledger: commit abc1234, 3.2 h on 2 CPU cores</small>" in out.read_text()
