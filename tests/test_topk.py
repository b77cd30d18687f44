"""TopK and BatchTopK SAEs (atomsnb.sae kinds "topk", "batchtopk"): the selections against brute-force loops, the
gradients against finite differences, the BatchTopK inference threshold against its definition recomputed by hand, and
training in both coordinates. sparsify's own outputs are ``tests/test_sparsify.py``'s."""

from __future__ import annotations

import math

import pytest
import torch

from atomsnb.aip import AIP
from atomsnb.sae import (
    BATCHTOPK_THRESHOLD_RATE, SAEConfig, SparseAutoencoder, compute_grads, load_sae, save_sae, topk_codes, train_sae,
)
from atomsnb.synthetic import SyntheticConfig, make_world

pytestmark = pytest.mark.usefixtures("one_thread")


def test_topk_codes_keep_the_k_largest_relu_per_row_or_bk_of_the_batch_by_brute_force():
    g = torch.Generator().manual_seed(0)
    pi = torch.randn(7, 11, generator=g, dtype=torch.float64)
    k = 3
    per_row, batch = topk_codes(pi, k), topk_codes(pi, k, batch=True)
    for b in range(7):
        keep = sorted(range(11), key=lambda j: -float(pi[b, j]))[:k]
        for j in range(11):
            assert float(per_row[b, j]) == (max(float(pi[b, j]), 0.0) if j in keep else 0.0)
    flat = sorted(((float(pi[b, j]), b, j) for b in range(7) for j in range(11)), reverse=True)[: 7 * k]
    chosen = {(b, j) for _, b, j in flat}
    for b in range(7):
        for j in range(11):
            assert float(batch[b, j]) == (max(float(pi[b, j]), 0.0) if (b, j) in chosen else 0.0)
    assert int((batch != 0).sum()) == 7 * k  # here the top 21 entries are positive
    assert (batch != 0).sum(1).tolist() != [k] * 7  # BatchTopK lets the count vary per row
    with pytest.raises(ValueError, match=r"k=0 is not allowed: an integer in \[1, N=11\]"):
        topk_codes(pi, 0)


@torch.no_grad()
def _fvu_at(sae, x, support):
    """sparsify's FVU with the support held fixed (the loss is smooth there): a reference written from its definition."""
    pi = torch.nn.functional.linear(x - sae.b_dec, sae.encoder_weight, sae.b_enc)
    f = torch.where(support, pi.clamp_min(0), torch.zeros((), dtype=x.dtype))
    x_hat = f @ sae.W_dec.T + sae.b_dec
    return float(((x - x_hat) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())


@pytest.mark.parametrize("kind", ["topk", "batchtopk"])
@pytest.mark.parametrize("tied", [False, True])
def test_topk_step_gradients_equal_central_finite_differences(kind, tied):
    torch.manual_seed(0)
    sae = SparseAutoencoder.init_random(10, 30, kind=kind, k=4, tied=tied, dtype=torch.float64, seed=1)
    with torch.no_grad():
        sae.b_dec.normal_(std=0.3)
        sae.b_enc.normal_(std=0.1)
        sae.W_enc.mul_(1.3)
    x = torch.randn(25, 10, dtype=torch.float64) + 0.5
    st = compute_grads(sae, x, 0.0)
    support = sae(x).latents.detach() != 0
    assert math.isclose(st.loss, _fvu_at(sae, x, support), rel_tol=1e-12)
    h = 1e-6
    g = torch.Generator().manual_seed(2)
    for name in ["W_dec", "b_dec", "b_enc"] + ([] if tied else ["W_enc"]):
        p = getattr(sae, name)
        for _ in range(6):
            i = int(torch.randint(p.numel(), (1,), generator=g))
            with torch.no_grad():
                old = float(p.view(-1)[i])
                p.view(-1)[i] = old + h
                up = _fvu_at(sae, x, support)
                p.view(-1)[i] = old - h
                down = _fvu_at(sae, x, support)
                p.view(-1)[i] = old
            fd = (up - down) / (2 * h)
            assert abs(float(p.grad.view(-1)[i]) - fd) < 1e-7 * max(1.0, abs(fd)), (name, i)


def test_batchtopk_threshold_is_the_moving_average_of_each_batchs_smallest_selected_code():
    w = make_world(SyntheticConfig(d_model=16, k=2, n_tokens=3000, seed=0))
    seen = []
    cfg = SAEConfig(kind="batchtopk", k=3, n_latents=48, n_steps=12, batch_size=256, whiten=False, lr=3e-3,
                    init_threshold=0.05, log_every=5)
    sae, hist = train_sae(w.acts, None, cfg, progress=False, callback=lambda step, st: seen.append(st.min_active))
    theta = 0.05
    for m in seen:
        theta = theta + BATCHTOPK_THRESHOLD_RATE * (m - theta)
    assert math.isclose(float(sae.threshold[0]), theta, rel_tol=1e-6)
    assert torch.all(sae.threshold == sae.threshold[0])
    assert list(hist.columns)[-2:] == ["k", "lr"] and set(hist["k"]) == {3.0}
    # inference: a JumpReLU at theta on relu(W_e (x - b_d) + b_e)
    x = sae.to_input(w.acts[:50])
    a = torch.relu(torch.nn.functional.linear(x - sae.b_dec, sae.W_enc, sae.b_enc))
    assert torch.equal(sae.encode(x), a * (a > sae.threshold[0]))


@pytest.mark.parametrize("whiten", [False, True])
def test_topk_trains_in_either_coordinates_with_exactly_k_codes_and_round_trips(tmp_path, whiten):
    w = make_world(SyntheticConfig(d_model=16, k=2, n_tokens=4000, cond=100.0, seed=0))
    train, test = w.acts[:3000], w.acts[3000:]
    aip = AIP.fit(train)
    cfg = SAEConfig(kind="topk", k=2, n_latents=64, n_steps=150, batch_size=256, whiten=whiten, lr=3e-3, log_every=50)
    sae, hist = train_sae(train, aip, cfg, progress=False)
    assert hist["loss"].iloc[-1] < 0.5 * hist["loss"].iloc[0]  # the FVU falls
    codes = sae.encode_raw(test, aip)
    assert ((codes != 0).sum(1) <= 2).all() and float((codes != 0).sum(1).double().mean()) > 1.9
    back = load_sae(save_sae(sae, tmp_path / "s.safetensors"))
    assert (back.kind, back.k, back.config.k) == ("topk", 2, 2)
    assert torch.equal(back.encode_raw(test, aip), codes)


def test_topk_config_takes_k_and_refuses_coefficients():
    c = SAEConfig.for_model(16, kind="topk", coefficient=8)
    assert (c.k, c.coefficient, c.coefficient_name, c.coefficient_at(0), c.whiten) == (8, 8.0, "k", 8.0, False)
    assert SAEConfig.for_model(16).with_kind("batchtopk", 5).k == 5
    assert SAEConfig(kind="topk", k=3).with_kind("jumprelu", 0.01).k is None
    with pytest.raises(ValueError, match=r"SAEConfig.k=None is not allowed: an integer in \[1, n_latents=64\]"):
        SAEConfig(kind="topk", n_latents=64)
    with pytest.raises(ValueError, match=r"SAEConfig.k=65 is not allowed"):
        SAEConfig(kind="topk", n_latents=64, k=65)
    with pytest.raises(ValueError, match=r"SAEConfig.l0_coefficient=0.1 is not allowed: None for kind='topk'"):
        SAEConfig(kind="topk", k=3, l0_coefficient=0.1)
    with pytest.raises(ValueError, match=r"SAEConfig.k=3 is not allowed: None for kind='relu'"):
        SAEConfig(kind="relu", k=3)
    with pytest.raises(ValueError, match=r"k=None is not allowed for kind='topk'"):
        SparseAutoencoder(4, 8, kind="topk")


def test_topk_ks_span_the_l0_range_geometrically():
    from atomsnb.units import topk_ks_spanning

    assert topk_ks_spanning([30.0, 4.0, 250.0, float("nan")]) == [4, 32, 250]  # sqrt(4 * 250) = 31.6
    assert topk_ks_spanning([4.0, 250.0], n=1) == [4]
    assert topk_ks_spanning([1.2, 1.4], n=3) == [1]
    with pytest.raises(ValueError, match=r"need at least one finite L0 > 0 to span; got \[nan, 0.0\]"):
        topk_ks_spanning([float("nan"), 0.0])
    with pytest.raises(ValueError, match="n must be an integer >= 1; got 0"):
        topk_ks_spanning([3.0], n=0)


def _held(rows):
    import pandas as pd

    cols = ["unit set", "family", "k", "r2_aip", "q_star", "explained_variance", "l0", "l0_coefficient"]
    return pd.DataFrame([dict(zip(cols, r)) for r in rows])


@pytest.mark.parametrize("atoms_q, topk_aip_r2, expected", [
    # atoms (q 0.9, R² 0.8) beat the TopK point (q 0.5, R² 0.7); nothing beats an atom
    (0.9, 0.7, ["lifts R² at every shared k", "the JumpReLU threshold's frontier lies above TopK's here"]),
    # the atoms are less stable than every TopK point with R² at least as high: TopK above
    (0.1, 0.85, ["lifts R² at every shared k", "TopK's frontier lies above the TSAE's here"]),
])
def test_describe_reads_the_topk_rows_from_the_numbers(atoms_q, topk_aip_r2, expected):
    from atomsnb.evaluation import describe

    held = _held([("a", "atoms", float("nan"), 0.8, atoms_q, 0.9, 10.0, 0.003),
                  ("e8", "topk", 8.0, 0.4, 0.5, 0.95, 8.0, float("nan")),
                  ("a8", "topk-aip", 8.0, topk_aip_r2, 0.5, 0.9, 8.0, float("nan"))])
    text = " ".join(describe(held))
    assert "TopK, Euclidean loss on raw activations: k 8, R² 0.400, q* 0.500" in text
    for phrase in expected:
        assert phrase in text, text
    held.loc[2, "r2_aip"] = 0.3  # now the AIP does not lift R² at k = 8
    assert "Training TopK in the AIP does not lift R² at any shared k" in " ".join(describe(held))


def test_unit_set_results_extend_keeps_both_and_refuses_a_repeated_name():
    import pandas as pd

    from atomsnb.evaluation import UnitSetResults

    a = UnitSetResults(pd.DataFrame({"unit set": ["x"]}), {"x": 1}, {"x": "ux"}, {"x": "hx"}, ["x"])
    b = UnitSetResults(pd.DataFrame({"unit set": ["y"]}), {"y": 2}, {"y": "uy"}, {}, [])
    c = a.extend(b)
    assert c.table["unit set"].tolist() == ["x", "y"] and list(c.units) == ["x", "y"] and c.cached == ["x"]
    with pytest.raises(ValueError, match=r"unit sets \['x'\] are in both results"):
        a.extend(a)
