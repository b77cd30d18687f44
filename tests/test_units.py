"""The unit-set interface (issue 9 §2): neurons, trained, constructed and external SAEs through one contract."""

from __future__ import annotations

import math
from dataclasses import replace

import pandas as pd
import pytest
import torch

from atomsnb.aip import AIP
from atomsnb.sae import SAEConfig, SparseAutoencoder, construct_tsae, train_sae
from atomsnb.synthetic import SyntheticConfig, check_construction, make_world
from atomsnb.evaluation import compare_unit_sets, describe, evaluate_unit_set, reader_table, train_vs_heldout_table
from atomsnb.pipeline import layer_data
from atomsnb.units import Neurons, SAEUnits, UnitSet, UnitSetSpec, default_unit_sets, is_unit_set
from tiny_models import save_tiny

pytestmark = pytest.mark.usefixtures("one_thread")

H = 16
METRIC_KEYS = {"r2_aip", "explained_variance", "r2_per_dim", "r2_uncentred", "q_star", "l0", "frac_dead", "n_dead",
               "n_latents", "n_alive"}


@pytest.fixture(scope="module")
def world():
    # orthonormal atoms, N = H: the construction is exact (SPEC §5 (a))
    return make_world(SyntheticConfig(d_model=H, k=2, n_tokens=4000, family="orthonormal", cond=30.0, gamma=2.0,
                                      beta=0.0, seed=1))


@pytest.fixture(scope="module")
def aip(world):
    return AIP.fit(world.acts)


def _brute_r2_aip(x, x_hat, aip):
    S = aip.S
    e = (x - x_hat).double()
    x = x.double()
    return 1 - float(torch.einsum("ni,ij,nj->", e, S, e) / torch.einsum("ni,ij,nj->", x, S, x))


# ----------------------------------------------------------------------------------------------------- the contract
def test_neurons_present_the_contract(world, aip):
    n = Neurons(H)
    assert isinstance(n, UnitSet) and is_unit_set(n) and n.family == "neurons" and n.n_latents == H
    x = world.acts[:50].float()
    assert n.codes(x).dtype == torch.float64 and torch.equal(n.codes(x), x.double())
    assert torch.equal(n.reconstruct(x), x.double())
    assert torch.equal(n.dictionary, torch.eye(H, dtype=torch.float64))
    m = evaluate_unit_set(n, world.acts, aip)
    assert set(m) == METRIC_KEYS
    assert m["r2_aip"] == pytest.approx(1.0, abs=1e-12) and m["explained_variance"] == pytest.approx(1.0, abs=1e-12)
    assert m["l0"] == H and m["frac_dead"] == 0.0 and m["n_dead"] == 0 and m["n_alive"] == H


def test_external_sae_codes_and_reconstruction_match_a_hand_computation():
    g = torch.Generator().manual_seed(0)
    W_enc, b_enc = torch.randn(24, H, generator=g, dtype=torch.float64), torch.randn(24, generator=g, dtype=torch.float64)
    W_dec, b_dec = torch.randn(H, 24, generator=g, dtype=torch.float64), torch.randn(H, generator=g, dtype=torch.float64)
    tau = torch.rand(24, generator=g, dtype=torch.float64) + 0.1
    u = SAEUnits(SparseAutoencoder.from_weights(W_enc, b_enc, W_dec, b_dec, tau), name="ext", family="external")
    assert is_unit_set(u) and not is_unit_set(UnitSetSpec.neurons())
    x = torch.randn(30, H, generator=g, dtype=torch.float64)
    # brute force, one row and one latent at a time
    ref = torch.zeros(30, 24, dtype=torch.float64)
    for i in range(30):
        for j in range(24):
            p = float(W_enc[j] @ x[i] + b_enc[j])
            ref[i, j] = p if p > float(tau[j]) else 0.0
    assert torch.allclose(u.codes(x), ref, atol=1e-6)  # log-threshold stored in float32: ties at 1e-7 only
    assert torch.allclose(u.reconstruct(x), ref @ W_dec.T + b_dec, atol=1e-5)
    assert torch.equal(u.dictionary, W_dec)


def test_constructed_tsae_through_the_interface(world, aip):
    chk = check_construction(world, aip)  # threshold at the middle of the feasible interval (SPEC §5)
    assert chk.feasible
    c = construct_tsae(world.mixed_atoms, aip, chk.tau)
    u = SAEUnits(c.sae, name="constructed TSAE", family="constructed")
    codes = u.codes(world.acts)
    assert torch.equal(codes != 0, world.codes != 0)  # every support recovered exactly
    # the codes are the thresholded pre-activations p = D^T S m of the S-normalised atoms, computed by hand
    p = world.acts.double() @ (aip.S @ c.dictionary)
    assert torch.allclose(codes, torch.where(p > chk.tau, p, torch.zeros(())), atol=1e-9)
    m = evaluate_unit_set(u, world.acts, aip)
    assert m["r2_aip"] == pytest.approx(chk.r2_literal, abs=1e-12)
    assert m["r2_aip"] == pytest.approx(_brute_r2_aip(world.acts, codes @ c.dictionary.T, aip), abs=1e-9)
    assert m["q_star"] == 1.0 and m["n_alive"] == H and m["frac_dead"] == 0.0


def test_whitened_sae_in_raw_coordinates(world, aip):
    cfg = SAEConfig(n_latents=2 * H, n_steps=30, batch_size=256, init_threshold=0.05, bandwidth=0.01, lr=3e-3,
                    l0_coefficient=0.01)
    sae, _ = train_sae(world.acts, aip, cfg, progress=False)
    u = SAEUnits(sae, aip, name="atoms", family="atoms", l0_coefficient=0.01)
    x = world.acts[:200]
    codes, D = u.codes(x), u.dictionary
    assert codes.shape == (200, 2 * H) and D.shape == (H, 2 * H)
    assert torch.allclose(u.reconstruct(x), codes @ D.T + sae.bias_raw(aip), atol=1e-9)
    m = evaluate_unit_set(u, x, aip)
    assert m["r2_aip"] == pytest.approx(_brute_r2_aip(x, u.reconstruct(x), aip), abs=1e-9)


def test_unit_sets_refuse_bad_inputs(world, aip):
    sae = SparseAutoencoder.init_random(H, 8, whitened=True)
    with pytest.raises(ValueError, match="whitened coordinates; pass the AIP"):
        SAEUnits(sae, name="a", family="atoms")
    with pytest.raises(ValueError, match="family must be one of"):
        SAEUnits(sae, aip, name="a", family="atom")
    with pytest.raises(ValueError, match="AIP has d_model=16 but the SAE reads d_model=4"):
        SAEUnits(SparseAutoencoder.init_random(4, 8, whitened=True), aip, name="a", family="atoms")
    with pytest.raises(TypeError, match="SparseAutoencoder"):
        SAEUnits("not an sae", name="a", family="atoms")
    with pytest.raises(ValueError, match="d_model must be an integer >= 1; got 0"):
        Neurons(0)
    n = Neurons(H)
    with pytest.raises(ValueError, match=r"d_model=16\]; got shape \(3, 4\)"):
        n.codes(torch.zeros(3, 4))
    x = world.acts[:10].clone()
    x[2, 1] = float("inf")
    with pytest.raises(ValueError, match="NaN or inf in 1 of 10 rows"):
        evaluate_unit_set(n, x, aip)
    with pytest.raises(TypeError, match="UnitSet interface"):
        evaluate_unit_set(object(), world.acts, aip)
    with pytest.raises(TypeError, match="AIP"):
        evaluate_unit_set(n, world.acts, None)

    class Broken(Neurons):
        def codes(self, x):
            return super().codes(x)[:, :3]

    with pytest.raises(ValueError, match=r"'neurons'.codes has shape \(4000, 3\); the UnitSet contract asks \(4000, 16\)"):
        evaluate_unit_set(Broken(H), world.acts, aip)


def test_unit_set_specs_validate_their_coefficients():
    assert UnitSetSpec.atoms(0.01).l0_coefficient == 0.01 and math.isnan(UnitSetSpec.atoms(0.01).l1_coefficient)
    assert UnitSetSpec.features(0.1).kind == "relu" and not UnitSetSpec.features(0.1).whiten
    assert UnitSetSpec.ablation(0.1).whiten and UnitSetSpec.ablation(0.1).family == "ablation"
    with pytest.raises(ValueError, match="l0_coefficient must be a finite number >= 0; got -1"):
        UnitSetSpec.atoms(-1)
    with pytest.raises(ValueError, match="l1_coefficient must be a finite number >= 0; got nan"):
        UnitSetSpec("f", "features", "relu", False, l1_coefficient=float("nan"))
    with pytest.raises(ValueError, match="a 'relu' unit set takes no l0_coefficient; got 0.1"):
        UnitSetSpec("f", "features", "relu", False, l0_coefficient=0.1, l1_coefficient=0.1)
    with pytest.raises(ValueError, match="a 'jumprelu' SAE takes an l0_coefficient; none given"):
        UnitSetSpec("a", "atoms", "jumprelu")
    with pytest.raises(ValueError, match="unknown unit-set kind 'gated'"):
        UnitSetSpec("a", "atoms", "gated")
    with pytest.raises(ValueError, match="'a': a 'topk' SAE takes k, an integer >= 1; got None"):
        UnitSetSpec("a", "topk", "topk")
    with pytest.raises(ValueError, match="'a': a 'relu' unit set takes no k; got 3"):
        UnitSetSpec("a", "features", "relu", False, l1_coefficient=0.1, k=3)
    t = UnitSetSpec.topk(8, whiten=True, batch=True)
    assert (t.name, t.family, t.kind, t.whiten, t.k) == ("BatchTopK (AIP, k 8)", "topk-aip", "batchtopk", True, 8)
    assert math.isnan(t.l0_coefficient) and math.isnan(t.l1_coefficient)
    with pytest.raises(ValueError, match="a 'neurons' unit set takes no l0_coefficient; got 1.0"):
        UnitSetSpec("n", "neurons", "neurons", l0_coefficient=1.0)
    specs = default_unit_sets((1e-3,), (1e-2, 3e-2), None)
    assert [s.family for s in specs] == ["neurons", "features", "features", "atoms"]


# ----------------------------------------------------------------------------------------------------- comparison
def test_compare_unit_sets_mixes_trained_and_ready_unit_sets(world, aip):
    train, held = world.acts[:3000], world.acts[3000:]
    cfg = SAEConfig(n_latents=2 * H, n_steps=20, batch_size=256, init_threshold=0.05, bandwidth=0.01, lr=3e-3)
    constructed = SAEUnits(construct_tsae(world.mixed_atoms, aip, 0.5).sae, name="constructed", family="constructed")
    specs = [UnitSetSpec.neurons(), UnitSetSpec.features(0.05, "features"), UnitSetSpec.atoms(0.01, "atoms"), constructed]
    res = compare_unit_sets(train, held, aip, specs, cfg, n_train_eval=500, progress=False)
    t = res.table
    assert list(t["unit set"].unique()) == ["neurons", "features", "atoms", "constructed"]
    assert set(t["split"]) == {"held-out", "train"} and len(t) == 8
    assert METRIC_KEYS <= set(t.columns) and "dead_latents" not in t and "lambda" not in t
    idx = t.set_index(["unit set", "split"])
    assert idx.loc[("atoms", "held-out"), "l0_coefficient"] == 0.01 and math.isnan(idx.loc[("atoms", "held-out"), "l1_coefficient"])
    assert idx.loc[("features", "held-out"), "l1_coefficient"] == 0.05
    assert math.isnan(idx.loc[("neurons", "held-out"), "l0_coefficient"])
    assert math.isnan(idx.loc[("constructed", "held-out"), "train_seconds"])
    assert set(res.histories) == {"features", "atoms"} and set(res.saes) == {"features", "atoms"}
    # each row is the interface's evaluation of the returned unit set on that split
    for name, u in res.units.items():
        ref = evaluate_unit_set(u, held, aip)
        assert idx.loc[(name, "held-out"), "r2_aip"] == ref["r2_aip"] and idx.loc[(name, "held-out"), "q_star"] == ref["q_star"]
        assert idx.loc[(name, "train"), "r2_aip"] == evaluate_unit_set(u, train[:500], aip)["r2_aip"]
    assert res.summary().startswith("trained 2 SAEs (features, atoms) in ")
    assert res.summary().endswith("evaluated 4 unit sets on held-out activations")
    only = compare_unit_sets(train, held, aip, [UnitSetSpec.neurons()], n_train_eval=0)
    assert only.summary() == "trained no SAE; evaluated 1 unit set on held-out activations"
    assert set(only.table["split"]) == {"held-out"}
    with pytest.raises(ValueError, match=r"unique .* duplicated: \['neurons'\]"):
        compare_unit_sets(train, held, aip, [UnitSetSpec.neurons(), Neurons(H)])
    with pytest.raises(ValueError, match="pass the base SAEConfig"):
        compare_unit_sets(train, held, aip, [UnitSetSpec.atoms(0.1)])
    with pytest.raises(TypeError, match="UnitSetSpec or a UnitSet; got str"):
        compare_unit_sets(train, held, aip, ["atoms"], cfg)
    with pytest.raises(ValueError, match="no unit set"):
        compare_unit_sets(train, held, aip, [], cfg)

    r = reader_table(t)
    assert list(r.columns) == ["R² (AIP)", "explained variance (Euclidean)", "q*", "L0 (latents/token)",
                               "dead latents (%)"]
    assert r.loc["atoms", "dead latents (%)"] == round(100 * idx.loc[("atoms", "held-out"), "frac_dead"], 1)
    assert r.loc["neurons", "R² (AIP)"] == 1.0
    tv = train_vs_heldout_table(t)
    assert list(tv.columns) == ["R² (AIP), held-out", "R² (AIP), train", "q*, held-out", "q*, train"]
    with pytest.raises(ValueError, match="no 'train' rows"):
        train_vs_heldout_table(only.table)
    with pytest.raises(ValueError, match="split must be one of"):
        reader_table(t, "test")


# ----------------------------------------------------------------------------------------------------- readings
def _held(feats_ev, feats_r2, atoms, ablation=None):
    rows = [{"unit set": f"f{i}", "family": "features", "l0_coefficient": math.nan, "l1_coefficient": 0.01 * (i + 1),
             "explained_variance": ev, "r2_aip": r2, "q_star": 0.5, "l0": 10.0}
            for i, (ev, r2) in enumerate(zip(feats_ev, feats_r2))]
    rows += [{"unit set": f"a{i}", "family": "atoms", "l0_coefficient": c, "l1_coefficient": math.nan,
              "explained_variance": 0.9, "r2_aip": r2, "q_star": q, "l0": l0} for i, (c, r2, q, l0) in enumerate(atoms)]
    if ablation:
        rows.append({"unit set": "abl", "family": "ablation", "l0_coefficient": math.nan, "l1_coefficient": 0.1,
                     "explained_variance": 0.8, "r2_aip": ablation[0], "q_star": ablation[1], "l0": 20.0})
    return pd.DataFrame(rows)


def test_describe_chooses_every_phrase_from_the_numbers():
    trade = [(1e-3, 0.95, 0.5, 20.0), (1e-2, 0.90, 0.8, 5.0)]
    lines = describe(_held([0.95, 0.9], [0.3, 0.2], trade, ablation=(0.6, 0.4)), condition_number=1e5)
    text = " ".join(lines)
    assert "a Euclidean loss neglects the low-variance directions" in text and "1.0e+05" in text
    assert "buy stability at the cost of faithfulness" in text
    assert "Training in the AIP lifts R²" in text and "the JumpReLU threshold adds stability" in text
    # the causal explanation disappears when the two scores agree, or is hedged when they agree at some coefficients
    text = " ".join(describe(_held([0.31, 0.21], [0.3, 0.2], trade)))
    assert "neglects" not in text and "The two scores agree" in text
    text = " ".join(describe(_held([0.9, 0.21], [0.3, 0.2], trade)))
    assert "at 1 of 2 coefficients only" in text
    # no trade-off: q* falls as the coefficient grows; R² rises
    text = " ".join(describe(_held([0.9], [0.3], [(1e-3, 0.90, 0.8, 20.0), (1e-2, 0.95, 0.5, 5.0)])))
    assert "no monotone trade-off" in text
    text = " ".join(describe(_held([0.9], [0.3], [(1e-3, 0.9, 0.5, 20.0), (1e-2, 0.95, 0.8, 5.0)])))
    assert "raise q* without a steady cost" in text
    # the ablation lifts nothing and no atom point dominates it
    text = " ".join(describe(_held([0.9], [0.7], trade, ablation=(0.5, 0.9))))
    assert "does not lift R²" in text and "does not add stability" in text


# ----------------------------------------------------------------------------------------------------- layer data
@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return str(save_tiny("llama", tmp_path_factory.mktemp("llama")))


def test_layer_data_is_the_shared_prologue(tiny_path):
    d = layer_data(tiny_path, 1, "docstrings", 1000, 300, seed=0)
    assert d.fit.shape == (1000, 32) and d.eval.shape == (300, 32) and d.d_model == 32 and d.layer == 1
    # S is fitted on the fitting split, never on the held-out one: compare with the second moment by definition
    M = d.fit.double().T @ d.fit.double() / 1000
    assert torch.allclose(d.aip.second_moment, M, rtol=1e-10, atol=1e-12)
    assert d.eval_activations.token_ids.shape == (300,) and d.eval_activations.config.split == "eval"
    again = layer_data(tiny_path, 1, "docstrings", 1000, 300, seed=0, lm=d.lm)
    assert torch.equal(again.fit, d.fit) and torch.equal(again.eval, d.eval)


def test_layer_data_leaves_massive_tokens_out_of_both_splits(tiny_path):
    full = layer_data(tiny_path, 1, "docstrings", 1000, 300, seed=0)
    k = 1.2  # a random tiny model has no massive tokens: a low multiple of the median excludes some of each split
    d = layer_data(tiny_path, 1, "docstrings", 1000, 300, seed=0, lm=full.lm, massive_k=k)
    for x_all, x_kept, rows in ((full.fit, d.fit, d.fit_rows), (full.eval, d.eval, d.eval_rows)):
        norms = [float(sum(v * v for v in row) ** 0.5) for row in x_all.double().tolist()]  # brute force
        med = sorted(norms)[(len(norms) - 1) // 2]
        keep = [i for i, n in enumerate(norms) if not n > k * med]
        assert 0 < len(keep) < len(norms) and rows.tolist() == keep and torch.equal(x_kept, x_all[keep])
    assert d.n_excluded == (1000 - len(d.fit_rows), 300 - len(d.eval_rows)) and d.massive_k == k
    M = d.fit.double().T @ d.fit.double() / len(d.fit)  # S from the kept fitting tokens only
    assert torch.allclose(d.aip.second_moment, M, rtol=1e-10, atol=1e-12)
    assert full.n_excluded == (0, 0)
    n_fit, n_eval = len(d.fit_rows), len(d.eval_rows)
    assert d.describe(64).endswith(f"layer 1: d_model = 32, |D| = 64; |M| = {n_fit:,} training and {n_eval:,} held-out "
                                   f"activations (massive tokens left out: {1000 - n_fit} and {300 - n_eval}); "
                                   f"cond(E[hh^T]) = {d.aip.condition_number:.2e}")
    for bad in (1.0, float("nan"), True, "20"):
        with pytest.raises(ValueError, match="massive_k must be None"):
            layer_data(tiny_path, 1, "docstrings", 1000, 300, lm=full.lm, massive_k=bad)


def test_layer_data_refuses_bad_inputs_before_any_work(tiny_path):
    with pytest.raises(ValueError, match="layer must be an integer >= 0; got -1"):
        layer_data("no/such-model", -1, "docstrings", 1000, 300)
    with pytest.raises(ValueError, match="n_fit_tokens must be an integer >= 1; got 0"):
        layer_data("no/such-model", 1, "docstrings", 0, 300)
    with pytest.raises(ValueError, match="n_eval_tokens must be an integer >= 1; got 2.5"):
        layer_data("no/such-model", 1, "docstrings", 100, 2.5)
    with pytest.raises(ValueError, match=r"layer 7 out of range .* allowed 0..2"):
        layer_data(tiny_path, 7, "docstrings", 1000, 300)


def test_trained_saes_are_cached_by_data_settings_and_code(world, aip):
    from atomsnb.sae_cache import train_sae_cached

    cfg = SAEConfig(n_latents=2 * H, n_steps=10, batch_size=256, init_threshold=0.05, bandwidth=0.01, lr=3e-3,
                    l0_coefficient=0.01)
    a, ha, hit_a = train_sae_cached(world.acts, aip, cfg, progress=False)
    b, hb, hit_b = train_sae_cached(world.acts, aip, cfg, progress=False)
    assert (hit_a, hit_b) == (False, True)
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k
    assert ha.reset_index(drop=True).equals(hb.reset_index(drop=True))
    # any change of data or settings trains afresh
    assert train_sae_cached(world.acts[1:], aip, cfg, progress=False)[2] is False
    assert train_sae_cached(world.acts, aip, replace(cfg, seed=1), progress=False)[2] is False
    # a damaged entry is reported and retrained, never used
    from atomsnb.paths import cache_dir
    for f in cache_dir("saes").rglob("sae.safetensors"):
        f.write_bytes(f.read_bytes()[:-10])
    with pytest.warns(UserWarning, match="damaged"):
        c, _, hit_c = train_sae_cached(world.acts, aip, cfg, progress=False)
    assert hit_c is False and torch.equal(c.W_dec, a.W_dec)
    assert train_sae_cached(world.acts, aip, cfg, cache=False, progress=False)[2] is False


def test_spliced_reader_table_gives_the_shared_losses_once():
    from atomsnb.evaluation import spliced_reader_table

    t = pd.DataFrame({"unit set": ["neurons", "atoms"], "r2_aip": [1.0, 0.91234], "explained_variance": [1.0, 0.8],
                      "q_star": [0.5, 0.7], "ce_loss_score": [1.0, 0.61234], "kl_div_score": [1.0, 0.5],
                      "ce_loss_with_sae": [3.0, 3.41234], "ce_loss_without_sae": [3.0, 3.0],
                      "ce_loss_with_ablation": [7.12345, 7.12345]})
    r = spliced_reader_table(t)
    spliced = "CE spliced (nats; clean 3.000, zero-ablated 7.123)"
    assert list(r.columns) == ["R² (AIP)", "explained variance (Euclidean)", "q*", "ce_loss_score", "kl_div_score", spliced]
    assert r.loc["atoms", "R² (AIP)"] == 0.912 and r.loc["atoms", spliced] == 3.412
    with pytest.raises(ValueError, match="ce_loss_with_ablation differs"):
        spliced_reader_table(t.assign(ce_loss_with_ablation=[7.0, 8.0]))
    with pytest.raises(ValueError, match="lacks columns"):
        spliced_reader_table(t.drop(columns="kl_div_score"))
