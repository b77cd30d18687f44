"""Tests of atomsnb.metrics: R^2 variants (SPEC §3), coherence and q* (SPEC §4)."""

from __future__ import annotations

import math

import pytest
import torch

from atomsnb.aip import AIP
from atomsnb.metrics import (
    coherence, dead_latents, evaluate_dictionary, explained_variance, fvu, gram_abs, iter_coherence_blocks, l0, q_star,
    q_star_from_samples, r2_aip, r2_all, support_coherence, uniqueness_bound, uniqueness_certificate, whitened_atoms,
)
from atomsnb.synthetic import SyntheticConfig, make_world


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def world():
    # strongly mixed two-ortho world (SPEC §7): H = 32, N = 64, K = 2
    return make_world(SyntheticConfig(d_model=32, k=2, n_tokens=8000, cond=1e3, gamma=5.0, beta=0.0, seed=3))


@pytest.fixture(scope="module")
def aip(world):
    return AIP.fit(world.acts)


@pytest.fixture(scope="module")
def mild():
    # a mildly mixed world for invariance checks, so that float64 round-off stays far below the tolerances
    w = make_world(SyntheticConfig(d_model=32, k=2, n_tokens=8000, cond=10.0, gamma=1.0, beta=0.0, seed=4))
    return w, AIP.fit(w.acts)


def _roundoff(aip: AIP) -> float:
    """Float64 round-off bound of an AIP quantity: 10 ulp x cond(E[hh^T]) (backward error of the Cholesky route)."""
    tol = 10 * torch.finfo(torch.float64).eps * aip.condition_number
    assert tol < 1e-8, "the test world is too ill-conditioned for a meaningful invariance check"
    return tol


def _brute_q_star(mu: torch.Tensor, K: torch.Tensor) -> float:
    """Scan every merged breakpoint (SPEC §4 definition, literally)."""
    mu, K = torch.sort(mu.double()).values, torch.sort(K.double()).values
    m, n = mu.numel(), K.numel()
    qs = sorted({i / m for i in range(1, m + 1)} | {j / n for j in range(1, n + 1)}) if m else [j / n for j in range(1, n + 1)]
    best = 0.0
    for q in qs:
        muq = float(mu[math.ceil(q * m - 1e-12) - 1]) if m else 0.0
        kq = float(K[math.ceil(q * n - 1e-12) - 1])
        b = math.inf if kq == 0 else 1.0 / (2 * kq - 1)
        if muq < b:
            best = max(best, q)
    return best


# ----------------------------------------------------------------------------------------------------- R^2 (SPEC §3)
def test_r2_variants_equal_one_for_neurons(world, aip):
    out = r2_all(world.acts, world.acts, aip)
    assert set(out) == {"r2_aip", "explained_variance", "r2_per_dim", "r2_uncentred"}
    for k, v in out.items():
        assert v == pytest.approx(1.0, abs=1e-12), k


def test_r2_values_on_a_hand_example():
    x = torch.tensor([[1.0, 0.0], [3.0, 2.0]], dtype=torch.float64)
    xh = torch.tensor([[1.0, 1.0], [3.0, 2.0]], dtype=torch.float64)
    # SSE = 1; centred SST = 2 + 2 = 4; uncentred = 1 + 13 = 14
    assert explained_variance(x, xh) == pytest.approx(0.75, abs=1e-15)
    assert fvu(x, xh) == pytest.approx(0.25, abs=1e-15)
    aip = AIP.fit(x, min_tokens_per_dim=1)
    out = r2_all(x, xh, aip)
    assert out["r2_uncentred"] == pytest.approx(1 - 1 / 14, abs=1e-15)
    assert out["r2_per_dim"] == pytest.approx((1.0 + (1 - 1 / 2)) / 2, abs=1e-15)  # dim 0 exact; dim 1 SSE 1 / SST 2
    # r2_aip by its definition with S = M^{-1}
    S = aip.S
    e = x - xh
    ref = 1 - float(torch.einsum("ni,ij,nj->", e, S, e) / torch.einsum("ni,ij,nj->", x, S, x))
    assert out["r2_aip"] == pytest.approx(ref, abs=1e-12)
    assert r2_aip(x, xh, aip) == out["r2_aip"]
    assert r2_aip(x, xh, aip) != explained_variance(x, xh)  # two quantities, two names


def test_r2_aip_invariant_under_mixing_euclidean_is_not(mild):
    world, aip = mild
    g = torch.Generator().manual_seed(0)
    x = world.acts
    noisy_codes = world.codes + 0.1 * torch.randn(world.codes.shape, generator=g, dtype=torch.float64)
    x_hat = noisy_codes @ world.mixed_atoms.T
    A = torch.randn(32, 32, generator=g, dtype=torch.float64) @ torch.diag(torch.logspace(0, -1, 32, dtype=torch.float64))
    aip_A = AIP.fit(x @ A.T)
    before, after = r2_aip(x, x_hat, aip), r2_aip(x @ A.T, x_hat @ A.T, aip_A)
    assert 0.3 < before < 0.99
    tol = _roundoff(aip_A)
    assert after == pytest.approx(before, abs=tol)
    # Euclidean FVE is not invariant: drop the smallest-variance raw direction, then mix so it is amplified
    v = torch.linalg.eigh(x.T @ x).eigenvectors[:, 0]
    x_drop = x - (x @ v)[:, None] * v[None, :]
    B = torch.eye(32, dtype=torch.float64) + 30.0 * torch.outer(v, v)
    ev_before, ev_after = explained_variance(x, x_drop), explained_variance(x @ B.T, x_drop @ B.T)
    assert ev_before > 0.99 and ev_after < 0.9
    aip_B = AIP.fit(x @ B.T)
    assert r2_aip(x @ B.T, x_drop @ B.T, aip_B) == pytest.approx(r2_aip(x, x_drop, aip), abs=_roundoff(aip_B))


def test_r2_rejects_bad_shapes(aip):
    with pytest.raises(ValueError, match="same shape"):
        r2_aip(torch.zeros(3, 32), torch.zeros(4, 32), aip)
    with pytest.raises(ValueError, match="zero variance"):
        explained_variance(torch.ones(5, 2), torch.ones(5, 2))


def test_r2_aip_requires_the_aip_and_refuses_what_would_be_silently_wrong(aip):
    x = torch.randn(10, 32, dtype=torch.float64)
    # no silent switch to the Euclidean quantity: the AIP is required
    with pytest.raises(TypeError, match="explained_variance"):
        r2_aip(x, x, None)
    with pytest.raises(ValueError, match="d_model=32 but x has d_model=4"):
        r2_aip(x[:, :4], x[:, :4], aip)
    bad = x.clone()
    bad[3, 5] = float("nan")
    with pytest.raises(ValueError, match="x_hat has NaN or inf in 1 of 10 rows"):
        r2_aip(x, bad, aip)
    with pytest.raises(ValueError, match="x has NaN or inf"):
        explained_variance(bad, x)
    with pytest.raises(TypeError, match="AIP"):
        r2_all(x, x, None)


# ----------------------------------------------------------------------------------------------------- SAE metrics
def test_l0_and_dead_latents():
    codes = torch.tensor([[0.0, 1.0, 0.0, 2.0], [0.0, 0.0, 0.0, 3.0], [0.0, -1.0, 0.0, 0.0]])
    assert l0(codes) == pytest.approx(4 / 3)
    d = dead_latents(codes)
    assert d.n_dead == 2 and d.frac_dead == 0.5 and d.mask.tolist() == [True, False, True, False]


# ----------------------------------------------------------------------------------------------------- coherence
def test_blockwise_coherence_equals_full_gram(world, aip):
    D = world.mixed_atoms
    G = gram_abs(D, aip)
    N = D.shape[1]
    # by definition: S-cosines of atoms
    S = aip.S
    ref = (D.T @ S @ D) / torch.outer(torch.sqrt(torch.diag(D.T @ S @ D)), torch.sqrt(torch.diag(D.T @ S @ D)))
    assert torch.allclose(G, ref.abs().clamp(max=1), atol=1e-10)
    iu = torch.triu_indices(N, N, 1)
    upper = torch.sort(G[iu[0], iu[1]]).values
    blocks = torch.sort(torch.cat(list(iter_coherence_blocks(D, aip, block_size=7)))).values
    assert torch.allclose(blocks, upper, atol=1e-14)
    thr = torch.tensor([0.05, 0.2, 0.1, 1.0, math.inf], dtype=torch.float64)
    c = coherence(D, aip, block_size=5, n_bins=1000, thresholds=thr)
    assert c.n_pairs == N * (N - 1) // 2 == int(c.hist_counts.sum())
    assert torch.equal(c.counts_below, torch.tensor([int((upper < t).sum()) for t in thr.tolist()]))
    assert torch.allclose(c.values, upper, atol=1e-14)
    Gd = G.clone().fill_diagonal_(0)
    assert c.eps == pytest.approx(float(Gd.max()), abs=1e-14)
    assert torch.allclose(c.eps_per_atom, Gd.max(dim=1).values, atol=1e-14)
    # histogram quantiles over-estimate the exact ones by at most one bin
    q = torch.tensor([0.1, 0.5, 0.9, 1.0], dtype=torch.float64)
    approx = c._replace(values=None).quantile(q)
    exact = c.quantile(q)
    assert bool(((approx - exact) >= -1e-12).all()) and bool(((approx - exact) <= 1e-3 + 1e-12).all())


def test_zero_atom_is_rejected(aip):
    D = torch.zeros(32, 3, dtype=torch.float64)
    D[0, 0] = 1.0
    with pytest.raises(ValueError, match="zero or non-finite AIP norm"):
        whitened_atoms(D, aip)


def test_support_coherence_matches_loop(world, aip):
    codes = world.codes[:50].clone()
    codes[0] = 0.0  # K = 0 row
    codes[1, 1:] = 0.0
    codes[1, 0] = 1.0  # K = 1 row
    codes[2, :10] = 1.0  # K = 10 row
    mu = support_coherence(codes, world.mixed_atoms, aip, max_elements=500)
    G = gram_abs(world.mixed_atoms, aip)
    for i in range(50):
        s = (codes[i] != 0).nonzero().flatten()
        ref = 0.0 if s.numel() <= 1 else float(G[s][:, s].fill_diagonal_(0).max())
        assert mu[i] == pytest.approx(ref, abs=1e-13), i


# ----------------------------------------------------------------------------------------------------- q* (SPEC §4)
def test_q_star_from_samples_matches_breakpoint_scan():
    g = torch.Generator().manual_seed(1)
    for trial in range(60):
        m, n = int(torch.randint(0, 30, (1,), generator=g)), int(torch.randint(1, 30, (1,), generator=g))
        mu = torch.rand(m, generator=g, dtype=torch.float64) * (0.3 if trial % 2 else 1.0)
        if trial % 5 == 0 and m:
            mu[: m // 2] = 1.0 / 3.0  # ties exactly at a bound
        K = torch.randint(0, 6, (n,), generator=g)
        ms = torch.sort(mu).values
        got = q_star_from_samples(lambda t: torch.searchsorted(ms, t, side="left"), m, K)
        assert got == pytest.approx(_brute_q_star(mu, K), abs=1e-12), trial


def test_uniqueness_bound():
    assert uniqueness_bound(torch.tensor([0, 1, 2, 5])).tolist() == [math.inf, 1.0, 1 / 3, 1 / 9]


def test_q_star_true_atoms_near_one_neurons_near_zero(world, aip):
    # SPEC §8: q*_P = 1.000 for true atoms; neurons small on strongly mixed data (0.016 at H = 256)
    true = q_star(world.codes, world.mixed_atoms, aip)
    assert true.q_star >= 0.99 and true.n_alive == 64 and true.estimator == "pairwise"
    assert bool((true.bound == 1 / 3).all())  # K = 2 everywhere
    neurons = q_star(world.acts, torch.eye(32, dtype=torch.float64), aip)
    assert neurons.q_star < 0.1
    # for dense codes P is the fraction of neuron pairs below 1/(2H - 1)
    G = gram_abs(torch.eye(32, dtype=torch.float64), aip)
    iu = torch.triu_indices(32, 32, 1)
    assert neurons.q_star == pytest.approx(float((G[iu[0], iu[1]] < 1 / 63).double().mean()), abs=1e-12)
    # Jm and Jj are exactly 0 for dense codes (SPEC §4)
    assert q_star(world.acts, torch.eye(32, dtype=torch.float64), aip, estimator="support").q_star == 0.0
    assert q_star(world.acts, torch.eye(32, dtype=torch.float64), aip, estimator="joint").q_star == 0.0
    assert q_star(world.codes, world.mixed_atoms, aip, estimator="joint").q_star >= 0.99


def test_q_star_invariant_under_mixing_for_covariant_dictionary(mild):
    world, aip = mild
    g = torch.Generator().manual_seed(5)
    A = torch.randn(32, 32, generator=g, dtype=torch.float64) + 3 * torch.eye(32, dtype=torch.float64)
    aip_A = AIP.fit(world.acts @ A.T)
    codes = world.codes.clone()
    codes[:100, :8] = 1.0  # some K = 10 rows so that q* < 1
    a = q_star(codes, world.mixed_atoms, aip)
    b = q_star(codes, A @ world.mixed_atoms, aip_A)
    assert a.q_star == pytest.approx(b.q_star, abs=1e-12)
    assert a.q_star < 1.0
    assert torch.allclose(a.mu_q, b.mu_q, atol=_roundoff(aip_A))


def test_q_star_edge_cases(aip):
    H = 32
    I = torch.eye(H, dtype=torch.float64)
    # no alive atom: q* = 0 by definition, no crash
    r = q_star(torch.zeros(10, 4, dtype=torch.float64), I[:, :4], aip)
    assert r.q_star == 0.0 and r.n_alive == 0
    # one alive atom (no pair): the coherence condition is vacuous -> 1
    codes = torch.zeros(10, 4, dtype=torch.float64)
    codes[:, 2] = 1.0
    r = q_star(codes, I[:, :4], aip)
    assert r.q_star == 1.0 and r.n_alive == 1
    # rows with K = 0 never violate (b(0) = inf): half empty rows, the rest dense over strongly coherent atoms
    D = torch.stack([I[:, 0], I[:, 0] + 1e-3 * I[:, 1], I[:, 1]], 1)
    codes = torch.zeros(10, 3, dtype=torch.float64)
    codes[5:] = 1.0
    r = q_star(codes, D, aip)
    mu_pairs = torch.sort(torch.cat(list(iter_coherence_blocks(D, aip)))).values
    assert r.q_star == pytest.approx(_brute_q_star(mu_pairs, (codes != 0).sum(1)), abs=1e-12)
    assert 0.5 <= r.q_star < 1.0
    # K = 1 with collinear duplicates (|G| = 1 is not < b(1) = 1): q* = 0
    Ddup = torch.stack([I[:, 0], -2.0 * I[:, 0]], 1)
    codes = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    assert q_star(codes, Ddup, aip).q_star == 0.0
    assert q_star(codes, Ddup, aip, estimator="joint").q_star == 1.0  # Jm/Jj ignore pairs outside a support
    # K = 1 with distinct atoms: every |G| < 1 -> q* = 1
    assert q_star(codes, I[:, :2], aip).q_star == 1.0
    # alive override and bad estimator
    assert q_star(codes, I[:, :2], aip, alive=torch.tensor([False, False])).q_star == 0.0
    with pytest.raises(ValueError, match="estimator"):
        q_star(codes, I[:, :2], aip, estimator="nope")


def test_uniqueness_certificate(world, aip):
    cert = uniqueness_certificate(world.codes, world.mixed_atoms, aip)
    c = coherence(world.mixed_atoms, aip)
    assert cert.mu == pytest.approx(c.eps, abs=1e-14)
    assert cert.k_bound == pytest.approx((1 + 1 / c.eps) / 2)
    K = (world.codes != 0).sum(1)
    assert torch.equal(cert.mask, K < cert.k_bound)
    # a dense row (K = 64) is never certified while mu > 1/127
    codes = world.codes.clone()
    codes[0] = 1.0
    assert not bool(uniqueness_certificate(codes, world.mixed_atoms, aip).mask[0])
    # single alive atom: mu = 0, everything certified
    one = torch.zeros(5, 64, dtype=torch.float64)
    one[:, 3] = 2.0
    cert = uniqueness_certificate(one, world.mixed_atoms, aip)
    assert cert.fraction == 1.0 and cert.mu == 0.0 and cert.k_bound == math.inf


def test_evaluate_dictionary_neurons(world, aip):
    out = evaluate_dictionary(world.acts, world.acts, world.acts, torch.eye(32, dtype=torch.float64), aip)
    assert out["r2_aip"] == pytest.approx(1.0, abs=1e-12) and out["explained_variance"] == pytest.approx(1.0, abs=1e-12)
    assert out["l0"] == 32.0 and out["frac_dead"] == 0.0 and out["n_dead"] == 0 and out["n_latents"] == 32
    assert "dead_latents" not in out
    assert out["q_star"] < 0.1
