"""Chapter 1's per-model steps in :mod:`atomsnb.shift`: the three activation sets, the angle study on ordinary tokens,
the histograms' layers, the related pairs, the construction check and the reader tables stacked by model."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from tiny_models import save_tiny

from atomsnb import pipeline, shift
from atomsnb.activations import ActivationConfig, Activations
from atomsnb.aip import AIP
from atomsnb.models import load_model

LAYERS = (1, 2, 3, 4)


def _acts(n: int, seed: int, n_massive: int = 0) -> Activations:
    g = torch.Generator().manual_seed(seed)
    acts = {}
    for l in LAYERS:
        x = torch.randn(n, 64, generator=g) @ torch.diag(torch.linspace(1.0, 8.0, 64)) + 2.0  # a shared offset
        x[:n_massive, 0] += 3000.0
        acts[l] = x
    token_ids = torch.randint(0, 40, (n,), generator=g)
    window = torch.arange(n) // 16
    return Activations(acts, token_ids, window, torch.arange(n) % 16, torch.zeros(1, 16, dtype=torch.long),
                       ActivationConfig())


@pytest.fixture(scope="module")
def sets():
    return {"fit": _acts(3000, 0, n_massive=4), "held-out": _acts(1500, 1, n_massive=2), "other": _acts(1500, 2)}


@pytest.fixture(scope="module")
def fitted(sets):
    return shift.massive_choice(sets["fit"].acts, sets["held-out"].acts, k=20, n_pairs=2000, seed=0, return_aips=True)


def test_ordinary_mask():
    x = torch.ones(10, 3)
    x[2] *= 1000
    assert shift.ordinary_mask(x, None).all()
    assert shift.ordinary_mask(x, 20.0).tolist() == [True, True, False] + [True] * 7


@pytest.mark.parametrize("massive_k", [20.0, None])
def test_angle_study_sets_uses_the_massive_fits_and_the_ordinary_tokens(sets, fitted, massive_k):
    _, aips = fitted
    study = shift.angle_study_sets(sets, aips, massive_k=massive_k, n_pairs=2000, seed=0)
    assert set(study.table["set"]) == set(shift.SET_KEYS) and set(study.measured()["set"]) == {shift.HELD_OUT,
                                                                                               shift.OTHER_DOMAIN}
    n_kept = {"fit": 3000 - 4, "held-out": 1500 - 2, "other": 1500} if massive_k else {"fit": 3000, "held-out": 1500,
                                                                                        "other": 1500}
    for key, n in n_kept.items():
        assert all(int(study.keep[key][l].sum()) == n for l in LAYERS), key
    for l in LAYERS:  # the fit massive_choice made, not a new one
        assert study.aips[l] is aips[l][1 if massive_k else 0]
    shift.check_construction(study, sets["fit"])
    # the same numbers as angle_study called by hand
    kept = {label: {l: sets[key].acts[l][study.keep[key][l]] for l in LAYERS} for label, key in shift.SET_KEYS.items()}
    by_hand, _ = shift.angle_study(kept[shift.IN_SAMPLE], kept, n_pairs=2000, seed=0)
    pd.testing.assert_frame_equal(study.table, by_hand)


def test_check_construction_fails_when_the_construction_does(sets, fitted):
    study = shift.angle_study_sets(sets, fitted[1], massive_k=20.0, n_pairs=2000, seed=0)
    bad = study._replace(table=study.table.assign(aip_mean=study.table["aip_mean"] - 5))
    with pytest.raises(AssertionError, match="centre on 90"):
        shift.check_construction(bad, sets["fit"])
    other = {l: AIP.fit(sets["other"].acts[l]) for l in LAYERS}  # S of another set does not whiten the fit
    with pytest.raises(AssertionError, match="identity second moment"):
        shift.check_construction(study._replace(aips=other), sets["fit"])


def test_histogram_layers_and_related_pairs(sets, fitted):
    study = shift.angle_study_sets(sets, fitted[1], massive_k=20.0, n_pairs=2000, seed=0)
    assert shift.first_middle_last([4, 1, 2, 3]) == [1, 3, 4] and shift.first_middle_last([7]) == [7]
    angles = shift.layer_pair_angles(study, sets, n_pairs=500, seed=0)
    assert list(angles) == ["layer 1", "layer 3", "layer 4"]
    e, a = angles["layer 3"]
    e2, a2 = shift.pair_angles(study.aips[3], sets["held-out"].acts[3][study.keep["held-out"][3]], n_pairs=500, seed=0)
    assert torch.equal(e, e2) and torch.equal(a, a2)
    related = shift.related_study(study, sets["held-out"], n_pairs=300, seed=0)
    assert sorted(set(related["layer"])) == list(LAYERS)
    h, m = sets["held-out"], study.keep["held-out"][2]
    direct = shift.related_pair_angles(study.aips[2], h.acts[2][m], h.token_ids[m], h.window[m], n_pairs=300, seed=0)
    pd.testing.assert_frame_equal(related[related["layer"] == 2].drop(columns="layer").reset_index(drop=True), direct)


def test_tables_by_model(sets, fitted):
    study = shift.angle_study_sets(sets, fitted[1], massive_k=20.0, n_pairs=500, seed=0)
    studies = {"a": study, "b": study}
    t = shift.by_model(shift.reader_table, {n: s.measured() for n, s in studies.items()})
    assert t.index.names == ["model", "layer"] and list(t.index.get_level_values("model").unique()) == ["a", "b"]
    assert len(t) == 2 * len(LAYERS)
    long = shift.claims_table(studies)
    assert len(long) == 2 * len(study.table) and set(long["model"]) == {"a", "b"}
    with pytest.raises(ValueError, match="no table"):
        shift.by_model(shift.reader_table, {})


def test_collect_sets_and_models_table(tmp_path):
    lm = load_model(str(save_tiny("llama", tmp_path / "m")))
    sets = pipeline.collect_sets(lm, corpus="docstrings", other_corpus="pydoc-topics", n_fit_tokens=200, n_eval_tokens=100,
                              seq_len=32)
    assert list(sets) == list(shift.SET_KEYS.values())
    assert [sets[k].config.split for k in sets] == ["fit", "eval", "train"]
    assert [sets[k].config.corpus for k in sets] == ["docstrings", "docstrings", "pydoc-topics"]
    assert all(x.shape == (n, 32) for k, n in (("fit", 200), ("held-out", 100), ("other", 100))
               for x in sets[k].acts.values())
    t = shift.models_table([lm], n_fit_tokens=6400)
    row = t.loc[lm.name]
    assert (row["architecture"], row["blocks"], row["d_model"], row["fitting tokens / d_model"]) == ("Llama", 2, 32, 200)
    assert row["parameters (M)"] == round(sum(p.numel() for p in lm.model.parameters()) / 1e6, 1)
    assert row["package"] == "" and row["licence"] == ""  # not a packaged model


def test_massive_reader_table_pairs_before_and_after(fitted):
    table, _ = fitted
    r = shift.massive_reader_table(table)
    assert list(r.index) == list(LAYERS) and r.index.name == "layer" and len(r.columns) == 7
    row, raw = r.loc[2], table.set_index("layer").loc[2]
    assert row["massive tokens"] == 4 and row["largest |x| (coordinate)"] == f"{raw['max_abs']:.3g} (0)".replace("e+0", "e")
    cond = [f"{v:.1e}".replace("e+0", "e").replace("e+", "e") for v in (raw["cond_kept"], raw["cond_excluded"])]
    assert row["cond E[hhᵀ]: all → massive excluded"] == "\u00a0→\u00a0".join(cond)  # 2.1e+05 -> 2.1e5
    assert shift._pair(2.1e5, 3.4e-3, "{:.1e}") == "2.1e5\u00a0→\u00a03.4e-3"
    assert shift._pair(12, 1.5, "{:.2g}") == "12\u00a0→\u00a01.5"
    assert str(shift.massive_reader_table(table.assign(aip_mean_excluded=table["aip_mean_kept"] - 1e-4)).iloc[0, -1]) \
        == "0.0"  # never "-0.0"
    assert row["Δ mean held-out AIP angle (degrees)"] == round(raw["aip_mean_excluded"] - raw["aip_mean_kept"], 2)
