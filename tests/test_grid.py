"""The capacity grid and the layer study: validation before work, real points, Dask, aggregation."""

import math

import pandas as pd
import pytest

from atomsnb.grid import (CapacityGridConfig, LayerStudyConfig, capacity_point, code_version, critical_capacity,
                          layer_point, paper_table)
from atomsnb.models import ModelNotFoundError
from atomsnb.runner import run_grid
from tiny_models import save_tiny

SMALL = dict(n_fit_tokens=1000, n_eval_tokens=300, n_steps=20, batch_size=128)


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return str(save_tiny("llama", tmp_path_factory.mktemp("llama")))


def test_impossible_grids_fail_before_any_work(tiny_path):
    with pytest.raises(ModelNotFoundError, match="'no/such-model'"):
        CapacityGridConfig(model="no/such-model").points()
    with pytest.raises(ValueError, match=r"\|M\| values \[0\] impossible"):
        CapacityGridConfig(model=tiny_path, m_values=(0, 100), **SMALL).points()
    with pytest.raises(ValueError, match=r"\|M\| values \[5000\] impossible.*n_fit_tokens=1000"):
        CapacityGridConfig(model=tiny_path, m_values=(5000,), **SMALL).points()
    with pytest.raises(ValueError, match=r"size < 1"):
        CapacityGridConfig(model=tiny_path, m_values=(100,), d_multiples=(0,), **SMALL).points()
    with pytest.raises(ValueError, match=r"layer\(s\) \[7\] out of range"):
        CapacityGridConfig(model=tiny_path, layer=7, **SMALL).points()
    with pytest.raises(ValueError, match="below 20 x d_model = 640"):
        LayerStudyConfig(model=tiny_path, n_fit_tokens=100, n_train_tokens=100).points()
    with pytest.raises(ValueError, match="n_train_tokens=2000 impossible"):
        LayerStudyConfig(model=tiny_path, n_train_tokens=2000, **SMALL).points()


def test_points_carry_the_code_version(tiny_path):
    pts = CapacityGridConfig(model=tiny_path, m_values=(100, 400), d_multiples=(1, 2), **SMALL).points()
    assert len(pts) == 4 and {p.n_latents for p in pts} == {32, 64}
    assert all(p.param("code") == code_version() for p in pts)


def test_capacity_point_is_deterministic_and_sane(tiny_path):
    p = CapacityGridConfig(model=tiny_path, m_values=(200,), d_multiples=(2,), **SMALL).points()[0]
    a, b = capacity_point(p), capacity_point(p)
    assert a == b
    assert a["d_model"] == 32 and 0 <= a["train_q_star"] <= 1 and 0 <= a["heldout_q_star"] <= 1
    assert math.isfinite(a["heldout_r2_aip"]) and a["train_r2_aip"] <= 1


def test_capacity_point_equals_training_and_scoring_by_hand(tiny_path):
    """capacity_point goes through layer_data + compare_unit_sets; the same numbers by the low-level route."""
    from dataclasses import replace

    from atomsnb.activations import ActivationConfig, collect_activations
    from atomsnb.aip import AIP
    from atomsnb.metrics import evaluate_dictionary
    from atomsnb.sae import train_sae
    from atomsnb.sae import SAEConfig

    p = CapacityGridConfig(model=tiny_path, m_values=(200,), d_multiples=(2,), **SMALL).points()[0]
    row = capacity_point(p)
    common = dict(model=tiny_path, layers=(1,), corpus="docstrings", seq_len=128, seed=0)
    pool = collect_activations(ActivationConfig(split="fit", n_tokens=1000, **common), progress=False).acts[1]
    held = collect_activations(ActivationConfig(split="eval", n_tokens=300, **common), progress=False).acts[1]
    aip = AIP.fit(pool)
    cfg = replace(SAEConfig.for_model(32, n_steps=20, batch_size=128, seed=0), n_latents=64, l0_coefficient=3e-3)
    sae, _ = train_sae(pool[:200], aip, cfg, progress=False)
    for split, x in (("train", pool[:200]), ("heldout", held)):
        m = evaluate_dictionary(x, sae.encode_raw(x, aip), sae.reconstruct_raw(x, aip), sae.dictionary_raw(aip), aip)
        for k in ("r2_aip", "q_star", "l0", "explained_variance"):
            assert row[f"{split}_{k}"] == m[k], (split, k)
    assert row["frac_dead"] == m["frac_dead"] and row["n_dead"] == m["n_dead"] and "dead_latents" not in row


def test_capacity_grid_through_a_dask_local_cluster(tiny_path, tmp_path):
    distributed = pytest.importorskip("dask.distributed")
    pts = CapacityGridConfig(model=tiny_path, m_values=(100, 400), d_multiples=(1, 2), **SMALL).points()
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None, silence_logs=40) as cluster, distributed.Client(cluster) as client:
        df = run_grid(pts, capacity_point, tmp_path, backend="dask", client=client, progress=False)
    assert len(df) == 4 and (df["status"] == "ok").all(), df.get("error")
    seq = capacity_point(pts[0])
    row = df[df["key"] == pts[0].key].iloc[0]
    assert row["heldout_r2_aip"] == pytest.approx(seq["heldout_r2_aip"], rel=1e-6)  # same numbers on any backend


def test_layer_point_and_paper_table(tiny_path):
    pts = LayerStudyConfig(model=tiny_path, n_train_tokens=800, n_splice_tokens=256, **SMALL).points()
    assert [p.layer for p in pts] == [1, 2]
    row = layer_point(pts[0])
    assert row["neurons_r2_aip"] == pytest.approx(1.0, abs=1e-9)
    # spliced in: the neurons' reconstruction is the activation itself, so nothing of the loss is lost
    assert row["neurons_ce_loss_score"] == 1.0 and row["neurons_kl_div_score"] == 1.0
    assert math.isfinite(row["atoms_ce_loss_score"]) and math.isfinite(row["features_kl_div_score"])
    assert {"atoms_frac_dead", "features_frac_dead", "train_atoms_q_star"} <= set(row) and "atoms_dead_latents" not in row
    for fam in ("features", "atoms"):
        assert 0 <= row[f"{fam}_q_star"] <= 1 and math.isfinite(row[f"{fam}_r2_aip"])
    df = pd.DataFrame([{"status": "ok", "model": "m", "layer": l, **{f"{f}_{k}": v for f in ("neurons", "features", "atoms")
                                                                   for k, v in (("r2_aip", l / 10), ("q_star", l / 20))}}
                       for l in (1, 2, 3)] + [{"status": "error", "model": "m", "layer": 4}])
    t = paper_table(df).set_index("unit set")
    assert t.loc["atoms", "r2_aip"] == pytest.approx(0.2) and t.loc["atoms", "q_star"] == pytest.approx(0.1)
    assert t.loc["atoms", "layers"] == "1-3" and t.loc["atoms", "n_layers"] == 3


def test_layer_point_with_topk_trains_both_flavours_at_the_atoms_l0(tiny_path):
    plain = LayerStudyConfig(model=tiny_path, layers=(1,), n_train_tokens=800, **SMALL).points()[0]
    pt = LayerStudyConfig(model=tiny_path, layers=(1,), n_train_tokens=800, topk=True, **SMALL).points()[0]
    assert dict(pt.params)["topk"] is True and "topk" not in dict(plain.params) and pt.key != plain.key
    row = layer_point(pt)
    assert row["topk_k"] == max(1, round(row["atoms_l0"]))
    for fam in ("topk", "topk-aip"):
        assert 0 < row[f"{fam}_l0"] <= row["topk_k"] and 0 <= row[f"{fam}_q_star"] <= 1
    df = pd.DataFrame([{"status": "ok", "model": "m", "layer": 1, **row}])
    assert set(paper_table(df)["unit set"]) == {"neurons", "features", "atoms", "topk", "topk-aip"}
    from atomsnb.grid import describe_layers, layer_reader_table, layer_topk_reader_table

    assert "TopK (AIP) has mean R²" in describe_layers(df)[0]
    assert ("TopK k", "topk") in layer_topk_reader_table(df).columns and ("q*", "topk-aip") in layer_topk_reader_table(df)
    assert not any(fam.startswith("topk") for _, fam in layer_reader_table(df).columns)
    with pytest.raises(TypeError, match="topk='yes' is not allowed: True or False"):
        LayerStudyConfig(model=tiny_path, layers=(1,), n_train_tokens=800, topk="yes", **SMALL).points()


def test_critical_capacity():
    df = pd.DataFrame({"n_train": [10, 10, 10, 20, 20], "n_latents": [1, 2, 4, 1, 2],
                       "train_r2_aip": [0.5, 0.995, 1.0, 0.4, 0.6]})
    c = critical_capacity(df, threshold=0.99)
    assert c[10] == 2 and math.isnan(c[20])


def test_compare_with_paper_marks_what_was_not_run():
    from atomsnb.grid import compare_with_paper
    from atomsnb.paper import PAPER_ATOMS

    ours = pd.DataFrame([{"model": "google/gemma-2-2b", "unit set": "atoms", "layers": "1-26", "r2_aip": 0.5, "q_star": 0.25},
                         {"model": "mine", "unit set": "atoms", "layers": "1-4", "r2_aip": 0.7, "q_star": 0.1},
                         {"model": "mine", "unit set": "features", "layers": "1-4", "r2_aip": -3.0, "q_star": 0.1}])
    t = compare_with_paper(ours)
    assert len(t) == 2 * len(PAPER_ATOMS) + 1
    gemma = t[t["model"] == "google/gemma-2-2b"].set_index("source")
    assert gemma.loc["paper", "R² (AIP)"] == "99.92%" and gemma.loc["ours (this build)", "q*"] == "25.00%"
    not_run = t[t["source"] == "not run here"]
    assert len(not_run) == 2 and not_run["command"].str.contains("params/gemma-2-9b.yaml").any()
    assert t.iloc[-1]["model"] == "mine" and t.iloc[-1]["R² (AIP)"] == "70.00%"


def test_reader_tables():
    from atomsnb.grid import capacity_reader_table, layer_reader_table, layer_topk_reader_table

    df = pd.DataFrame({"n_train": [20, 10], "n_latents": [4, 4], "train_r2_aip": [0.12345, 0.5], "heldout_r2_aip": [0.1, 0.4],
                       "train_q_star": [0.9, 0.8], "heldout_q_star": [0.7, 0.6], "train_l0": [3.26, 2.0],
                       "heldout_l0": [3.0, 2.0]})
    t = capacity_reader_table(df)
    assert t.index.names == ["|M| (training activations)", "|D| (latents)"] and t.index[0] == (10, 4)
    assert t.loc[(20, 4), "R² (AIP), train"] == 0.123 and t.loc[(20, 4), "L0 (latents/token), train"] == 3.3
    rows = pd.DataFrame([{"status": "ok", "layer": l, "atoms_l0": 5.0, **{f"{f}_{m}": 0.5 for f in ("neurons", "features", "atoms")
                                                                          for m in ("r2_aip", "q_star")}} for l in (2, 1)])
    lt = layer_reader_table(rows)
    assert list(lt.index) == [1, 2] and ("R² (AIP)", "atoms") in lt and ("L0 (latents/token)", "atoms") in lt
    assert ("R² (AIP)", "neurons") in lt  # 0.5: shown
    exact = rows.assign(neurons_r2_aip=1.0, neurons_q_star=1.0)
    lt = layer_reader_table(exact)
    assert ("R² (AIP)", "neurons") not in lt and ("q*", "neurons") in lt and ("R² (AIP)", "features") in lt
    assert layer_topk_reader_table(rows) is None  # no TopK family in these rows


def test_critical_capacity_and_paper_reader_tables():
    from atomsnb.grid import critical_capacity_table, paper_reader_table

    df = pd.DataFrame({"n_train": [10, 10, 20, 20], "n_latents": [1, 2, 1, 2], "train_r2_aip": [0.5, 0.99, 0.4, 0.6],
                       "heldout_r2_aip": [0.5, 0.5, 0.4, 0.6]})
    t = critical_capacity_table(df, threshold=0.95)
    assert t.index.name == "|M| (training activations)" and t.loc[10, "critical |D|, train"] == 2
    assert pd.isna(t.loc[20, "critical |D|, train"]) and pd.isna(t.loc[10, "critical |D|, held-out"])
    pt = pd.DataFrame([{"model": "m", "unit set": "atoms", "layers": "1-2", "n_layers": 2, "r2_aip": 0.12345, "q_star": 0.5}])
    r = paper_reader_table(pt)
    assert r.loc[("m", "atoms"), "R² (AIP)"] == 0.123 and list(r.columns) == ["layers", "R² (AIP)", "q*"]


def test_seq_len_reaches_the_points_activations(tiny_path):
    """A grid's seq_len (not a hard-coded 128) decides the windows its points' activations come from, for both grids."""
    from atomsnb import grid
    from atomsnb.activations import ActivationConfig, collect_activations

    common = dict(model=tiny_path, layers=(1,), corpus="docstrings", seed=0)
    for seq_len in (32, 128):
        cap = CapacityGridConfig(model=tiny_path, m_values=(200,), d_multiples=(1,), seq_len=seq_len, **SMALL).points()[0]
        lay = LayerStudyConfig(model=tiny_path, layers=(1,), n_train_tokens=200, seq_len=seq_len, **SMALL).points()[0]
        by_hand = collect_activations(ActivationConfig(split="fit", n_tokens=1000, seq_len=seq_len, **common),
                                      progress=False).acts[1]
        _, fit_store, _ = grid._stores(cap)
        assert fit_store.read(0, 1000).float().equal(by_hand), seq_len
        data = grid._layer_data(lay)
        assert data.fit.equal(by_hand[data.fit_rows]), seq_len  # the rows kept (massive tokens may be left out)
    assert not collect_activations(ActivationConfig(split="fit", n_tokens=1000, seq_len=32, **common),
                                   progress=False).acts[1].equal(by_hand)
