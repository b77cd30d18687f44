"""Tests of atomsnb.synthetic: the toy world (SPEC §7), atom and support recovery, the construction check."""

from __future__ import annotations

import math

import pytest
import torch

from atomsnb.aip import AIP, euclidean_cosines
from atomsnb.synthetic import (
    SyntheticConfig, atom_recovery, check_construction, hadamard, make_world, support_recovery,
)


pytestmark = pytest.mark.usefixtures("one_thread")


def test_hadamard():
    h = hadamard(16)
    assert torch.equal(h @ h.T, 16 * torch.eye(16, dtype=torch.float64))
    with pytest.raises(ValueError, match="power of 2"):
        hadamard(12)


@pytest.mark.parametrize("family", ["orthonormal", "two_ortho", "gaussian"])
def test_world_structure(family):
    cfg = SyntheticConfig(d_model=16, k=3, n_tokens=500, family=family, delta_min=0.5, delta_max=1.5, beta=2.0, gamma=2.0,
                          cond=50.0, seed=11)
    w = make_world(cfg)
    N = 16 if family == "orthonormal" else 32
    assert w.acts.shape == (500, 16) and w.codes.shape == (500, N) and w.atoms.shape == (16, N)
    assert w.acts.dtype == torch.float64
    assert bool(((w.codes != 0).sum(1) == 3).all())
    nz = w.codes[w.codes != 0]
    assert float(nz.min()) >= 0.5 and float(nz.max()) <= 1.5
    assert torch.allclose(w.atoms.norm(dim=0), torch.ones(N, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(w.acts, (w.codes @ w.atoms.T + 2.0 * w.offset) @ w.A.T, atol=1e-12)
    assert torch.allclose(w.mixed_atoms, w.A @ w.atoms, atol=1e-14)
    assert torch.allclose(w.clean_acts @ w.A.T, w.acts, atol=1e-12)
    if family == "orthonormal":
        assert torch.allclose(w.atoms.T @ w.atoms, torch.eye(16, dtype=torch.float64), atol=1e-12)
    if family == "two_ortho":
        G = (w.atoms.T @ w.atoms).abs()
        off = G - torch.diag(torch.diag(G))
        assert float(off.max()) == pytest.approx(1 / math.sqrt(16), abs=1e-12)  # Euclidean coherence 1/sqrt(H)
    # deterministic
    w2 = make_world(cfg)
    assert torch.equal(w.acts, w2.acts) and torch.equal(w.codes, w2.codes)
    assert not torch.equal(make_world(SyntheticConfig(**{**cfg.__dict__, "seed": 12})).acts, w.acts)


def test_mixing_condition_number():
    w = make_world(SyntheticConfig(d_model=16, n_tokens=100, cond=1e3, gamma=0.0, seed=0))
    s = torch.linalg.svdvals(w.A)
    assert float(s[0] / s[-1]) == pytest.approx(1e3, rel=1e-9)


def test_bad_configs():
    with pytest.raises(ValueError, match="power of 2"):
        make_world(SyntheticConfig(d_model=12, family="two_ortho"))
    with pytest.raises(ValueError, match="family"):
        make_world(SyntheticConfig(family="nope"))
    with pytest.raises(ValueError, match="gamma"):
        make_world(SyntheticConfig(gamma=-1.0))
    with pytest.raises(ValueError, match="k must be"):
        make_world(SyntheticConfig(d_model=8, k=17))


def test_aip_angles_invariant_under_mixing_euclidean_not():
    """Paper §3 / SPEC §1.3: the mixing changes Euclidean geometry only."""
    base = dict(d_model=32, k=3, n_tokens=4000, beta=4.0, seed=2)
    clean = make_world(SyntheticConfig(**base, cond=1.0, gamma=0.0))
    mixed = make_world(SyntheticConfig(**base, cond=100.0, gamma=5.0))
    assert torch.equal(clean.codes, mixed.codes) and torch.equal(clean.atoms, mixed.atoms)
    # the clean world still has an orthogonal Q1 Q2^T mixing: undo it for the "unmixed" reference
    unmixed = clean.clean_acts
    a0, a1 = AIP.fit(unmixed), AIP.fit(mixed.acts)
    i, j = torch.arange(0, 2000), torch.arange(2000, 4000)
    aip_before = a0.inner(unmixed[i], unmixed[j])
    aip_after = a1.inner(mixed.acts[i], mixed.acts[j])
    assert float((aip_before - aip_after).abs().max()) < 1e-8
    eu_before = euclidean_cosines(unmixed[i], unmixed[j])
    eu_after = euclidean_cosines(mixed.acts[i], mixed.acts[j])
    assert float((eu_before - eu_after).abs().max()) > 0.1


def test_atom_recovery():
    w = make_world(SyntheticConfig(d_model=16, k=2, n_tokens=2000, cond=100.0, gamma=3.0, seed=0))
    aip = AIP.fit(w.acts)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(32, generator=g)
    scale = torch.rand(32, generator=g, dtype=torch.float64) + 0.5
    sign = torch.where(torch.rand(32, generator=g) < 0.5, -1.0, 1.0).double()
    learned = torch.cat([w.mixed_atoms[:, perm] * scale * sign, torch.zeros(16, 1, dtype=torch.float64)], 1)  # + a dead atom
    rec = atom_recovery(learned, w.mixed_atoms, aip)
    assert rec.fraction == 1.0 and rec.threshold == 0.9
    assert torch.allclose(rec.cosines, torch.ones(32, dtype=torch.float64), atol=1e-10)
    assert torch.equal(perm[rec.assignment], torch.arange(32))
    # half the atoms only: the other half is unmatched (cosine 0) -> fraction 1/2
    half = atom_recovery(w.mixed_atoms[:, :16], w.mixed_atoms, aip)
    assert half.fraction == 0.5 and int((half.assignment == -1).sum()) == 16
    # random directions recover nothing at 0.9
    rnd = atom_recovery(torch.randn(16, 64, generator=g, dtype=torch.float64), w.mixed_atoms, aip)
    assert rnd.fraction < 0.1


def test_support_recovery():
    a = torch.tensor([[1.0, 0.0, 2.0], [0.0, 1.0, 0.0]])
    b = torch.tensor([[3.0, 0.0, 0.5], [1.0, 1.0, 0.0]])
    assert support_recovery(a, b) == 0.5
    with pytest.raises(ValueError):
        support_recovery(a, b[:, :2])


def test_check_construction_reference_values():
    """SPEC §8 shape of the results: feasible -> exact supports and refit; violated -> degraded supports."""
    w = make_world(SyntheticConfig(d_model=64, k=2, n_tokens=4000, delta_min=1.0, delta_max=1.2, cond=100.0, gamma=3.0, seed=1))
    ok = check_construction(w, AIP.fit(w.acts))
    assert ok.feasible and ok.margin > 0 and ok.support_recovery == 1.0
    assert ok.r2_literal < 1 - 1e-4 and ok.r2_refit == pytest.approx(1.0, abs=1e-10)
    w = make_world(SyntheticConfig(d_model=64, k=3, n_tokens=4000, delta_min=0.2, delta_max=2.0, cond=100.0, gamma=3.0, seed=1))
    bad = check_construction(w, AIP.fit(w.acts))
    assert not bad.feasible and bad.margin < 0 and bad.support_recovery < 0.9
    assert bad.support_recovery == bad.best_support_recovery


# ----------------------------------------------------------------------------------------- unit sets and readings
class HalfTheAtoms:
    """A ready unit set whose dictionary is the first half of the true atoms (codes: least squares on them)."""

    family, name = "external", "half the atoms"

    def __init__(self, atoms):
        self.D = atoms[:, : atoms.shape[1] // 2].clone()
        self.d_model, self.n_latents = self.D.shape

    def codes(self, x):
        return torch.linalg.lstsq(self.D, x.T.double()).solution.T

    def reconstruct(self, x):
        return self.codes(x) @ self.D.T

    @property
    def dictionary(self):
        return self.D


def test_score_unit_sets_adds_the_atom_recovery_of_each_unit_set():
    from atomsnb.sae import construct_tsae
    from atomsnb.synthetic import reader_table, score_unit_sets
    from atomsnb.evaluation import compare_unit_sets
    from atomsnb.units import Neurons, SAEUnits

    w = make_world(SyntheticConfig(d_model=16, k=2, n_tokens=3000, delta_min=1.0, delta_max=1.2, cond=100.0,
                                   gamma=3.0, seed=1))
    train, test = w.acts[:2000], w.acts[2000:]
    aip = AIP.fit(train)
    constructed = SAEUnits(construct_tsae(w.mixed_atoms, aip, 0.5).sae, name="constructed", family="constructed")
    res = compare_unit_sets(train, test, aip, [constructed, HalfTheAtoms(w.mixed_atoms), Neurons(16)], n_train_eval=0,
                            progress=False)
    scores = score_unit_sets(res, w.mixed_atoms, aip).set_index("unit set")
    # the constructed TSAE's dictionary is the true atoms (rescaled): all recovered, |cos| = 1
    assert scores.loc["constructed", "atom_recovery"] == 1.0
    assert scores.loc["constructed", "median_match_cos"] == pytest.approx(1.0, abs=1e-9)
    # half the true atoms: exactly half recovered (the other half has no unit to match)
    assert scores.loc["half the atoms", "atom_recovery"] == 0.5
    # independent reference: the neurons' recovery is atom_recovery of the identity
    assert scores.loc["neurons", "atom_recovery"] == atom_recovery(torch.eye(16, dtype=torch.float64), w.mixed_atoms,
                                                                   aip).fraction
    assert (scores["r2_aip"] == res.table.set_index("unit set").loc[scores.index, "r2_aip"]).all()
    table = reader_table(score_unit_sets(res, w.mixed_atoms, aip))
    assert list(table["true atoms recovered (%)"]) == [100.0, 50.0, scores.loc["neurons", "atom_recovery"] * 100]
    assert table.loc["half the atoms", "alive latents"] == 16 and "R² (AIP)" in table
    with pytest.raises(ValueError, match=r"true_atoms must be \[d_model=16, n_true\]; got shape \(8, 32\)"):
        score_unit_sets(res, w.mixed_atoms[:8], aip)
    with pytest.raises(ValueError, match="lacks"):
        reader_table(res.table)


def _angles(mean: float, n: int = 20000, spread: float = 10.0):
    """n angles with exactly this mean (degrees) and standard deviation ``spread``."""
    z = torch.randn(n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return mean + spread * (z - z.mean()) / z.std()


def test_describe_reads_the_aip_angles_from_the_numbers():
    from atomsnb.synthetic import MixingInvariance, describe

    def line(mean_clean, mean_mixed, H=32):
        inv = MixingInvariance(None, None, _angles(mean_clean), _angles(mean_mixed), 0.0, 0.0)
        (out,) = describe(inv, d_model=H)
        return out

    # standard error 10 / sqrt(20000) = 0.0707 degree: 3 SE = 0.21 degree; arcsin(1/32) = 1.79 degrees
    assert "centred on 90° within sampling noise" in line(89.9, 90.1)
    within = line(88.5, 88.6)
    assert "up to 1.50° below 90°, within the arcsin(1/H) = 1.79°" in within and "88.50° unmixed, 88.60° mixed" in within
    beyond = line(85.0, 85.0)
    assert "5.00° below 90°, more than the arcsin(1/H) = 1.79°" in beyond and "poorly estimated" in beyond
    assert "above 90° by more than sampling noise" in line(91.0, 90.0)
    # the same shortfall is within the allowance of a smaller H (arcsin(1/8) = 7.18 degrees)
    assert "within the arcsin(1/H) = 7.18°" in line(85.0, 85.0, H=8)
    with pytest.raises(ValueError, match="d_model"):
        describe(MixingInvariance(None, None, _angles(90), _angles(90), 0.0, 0.0))


def test_describe_reads_the_neurons_coherence_and_it_is_their_q_star():
    from atomsnb.metrics import gram_abs, q_star
    from atomsnb.synthetic import describe

    def gram(values):  # 4 x 4 symmetric, unit diagonal, the 6 upper pairs given; bound 1/(2*4-1) = 0.1429
        g = torch.eye(4, dtype=torch.float64)
        iu = torch.triu_indices(4, 4, 1)
        g[iu[0], iu[1]] = g[iu[1], iu[0]] = torch.tensor(values, dtype=torch.float64)
        return g

    assert "all pairs (100.0%" in describe(neuron_gram=gram([0.1] * 6))[0]
    assert "most pairs (66.7%" in describe(neuron_gram=gram([0.1] * 4 + [0.5] * 2))[0]
    assert "some pairs (16.7%" in describe(neuron_gram=gram([0.1] + [0.5] * 5))[0]
    g6 = torch.full((6, 6), 0.5, dtype=torch.float64).fill_diagonal_(1.0)
    g6[0, 1] = g6[1, 0] = 0.01  # 1 of 15 pairs below 1/11
    assert "few pairs (6.7%" in describe(neuron_gram=g6)[0]
    assert "no pairs (0.0%; median |G_ij| 0.500, largest 0.900)" in describe(neuron_gram=gram([0.5] * 5 + [0.9]))[0]
    with pytest.raises(ValueError, match="square"):
        describe(neuron_gram=torch.ones(3, 4))
    # the sentence's premise: with dense codes the neurons' q* (estimator P) is that share, counted by a plain loop
    w = make_world(SyntheticConfig(d_model=16, k=3, n_tokens=2000, cond=100.0, gamma=3.0, beta=1.0, seed=3))
    aip = AIP.fit(w.acts)
    G = gram_abs(torch.eye(16, dtype=torch.float64), aip)
    below = sum(float(G[i, j]) < 1 / 31 for i in range(16) for j in range(i + 1, 16)) / (16 * 15 / 2)
    assert q_star(w.acts, torch.eye(16, dtype=torch.float64), aip).q_star == pytest.approx(below, abs=1e-12)
    assert f"({below:.1%};" in describe(neuron_gram=G)[0]
