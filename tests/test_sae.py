"""Tests of atomsnb.sae: JumpReLU pseudo-gradients, the fast step, training, persistence, the construction (SPEC §5-6)."""

from __future__ import annotations

import math

import pytest
import torch

from atomsnb.aip import AIP
from atomsnb.io import CacheCorruptError
from atomsnb.metrics import r2_aip, r2_all
from atomsnb.sae import (
    DeadLatentTracker, JumpReLUFunction, SAEConfig, SparseAutoencoder, StepFunction, StepStats, TrainingHistory,
    compute_grads, construct_tsae, feasible_threshold_interval, load_sae, neuron_baseline, rectangle,
    refit_on_support, save_sae, train_sae,
)
from atomsnb.synthetic import SyntheticConfig, atom_recovery, make_world, support_recovery


pytestmark = pytest.mark.usefixtures("one_thread")


# ----------------------------------------------------------------------------------------------- pseudo-gradients
def _smoothed_step(z: torch.Tensor, eps: float) -> torch.Tensor:
    """Heaviside convolved with the rectangle kernel of width eps: a ramp from 0 to 1 over |z| < eps/2."""
    return (z / eps + 0.5).clamp(0.0, 1.0)


def test_rectangle_kernel():
    u = torch.tensor([-0.6, -0.5, -0.49, 0.0, 0.49, 0.5, 0.6], dtype=torch.float64)
    assert rectangle(u).tolist() == [0, 0, 1, 1, 1, 0, 0]


def test_step_pseudo_gradient_is_derivative_of_smoothed_step():
    eps = 1e-2
    tau = torch.tensor([0.3, 0.5, 0.7], dtype=torch.float64, requires_grad=True)
    # inside the window (away from the ramp's kinks), outside below, outside above
    pi = torch.tensor([[0.302, 0.4, 0.8]], dtype=torch.float64, requires_grad=True)
    StepFunction.apply(pi, tau, eps).sum().backward()
    h = 1e-6
    for j in range(3):
        tp, tm = tau.detach().clone(), tau.detach().clone()
        tp[j] += h
        tm[j] -= h
        fd = (_smoothed_step(pi.detach()[0, j] - tp[j], eps) - _smoothed_step(pi.detach()[0, j] - tm[j], eps)) / (2 * h)
        assert float(tau.grad[j]) == pytest.approx(float(fd), rel=1e-6, abs=1e-9), j
    assert float(tau.grad[0]) == pytest.approx(-1 / eps)
    assert torch.equal(pi.grad, torch.zeros_like(pi))  # dH/dpi = 0: an L0 penalty trains no encoder weight


def test_jumprelu_pseudo_gradient_matches_smoothed_jumprelu():
    eps = 1e-2
    tau = torch.tensor([0.3, 0.5], dtype=torch.float64, requires_grad=True)
    pi = torch.tensor([[0.302, 0.9]], dtype=torch.float64, requires_grad=True)
    JumpReLUFunction.apply(pi, tau, eps).sum().backward()
    # smoothed JumpReLU pi * H_eps(pi - tau): d/dtau = -(pi/eps) kappa; the pseudo-gradient uses tau for pi,
    # which differs by |pi - tau|/eps <= 1/2 inside the window
    h = 1e-7
    p, t = 0.302, 0.3
    fd = (p * _smoothed_step(torch.tensor(p - t - h), eps) - p * _smoothed_step(torch.tensor(p - t + h), eps)) / (2 * h)
    assert float(tau.grad[0]) == pytest.approx(-t / eps)
    assert abs(float(tau.grad[0]) - float(fd)) <= abs(p - t) / eps + 1e-6
    assert float(tau.grad[1]) == 0.0
    assert pi.grad.tolist() == [[1.0, 1.0]]  # dJumpReLU/dpi = H(pi - tau)


def test_pseudo_gradient_matches_finite_difference_of_the_batch_sum():
    """Summed over many pre-activations, the kernel estimate equals the derivative of the expected jump."""
    eps, tau0, spacing = 1e-3, 0.3, 1e-6
    pi = torch.arange(0.2, 0.4, spacing, dtype=torch.float64)[:, None]  # uniform density 1/spacing
    tau = torch.tensor([tau0], dtype=torch.float64, requires_grad=True)
    JumpReLUFunction.apply(pi, tau, eps).sum().backward()
    g_jump = float(tau.grad[0])
    tau.grad = None
    StepFunction.apply(pi, tau, eps).sum().backward()
    g_step = float(tau.grad[0])
    d = 1e-3
    F = lambda t: float((pi * (pi > t)).sum())
    Hs = lambda t: float((pi > t).sum())
    fd_jump = (F(tau0 + d) - F(tau0 - d)) / (2 * d)
    fd_step = (Hs(tau0 + d) - Hs(tau0 - d)) / (2 * d)
    assert g_step == pytest.approx(fd_step, rel=1e-3)
    assert g_jump == pytest.approx(fd_jump, rel=1e-2)  # fd averages pi over [tau - d, tau + d]: O(d / tau) bias


# ----------------------------------------------------------------------------------------------- fast step vs autograd
@pytest.mark.parametrize("kind", ["jumprelu", "relu"])
@pytest.mark.parametrize("tied", [False, True])
@pytest.mark.parametrize("sparse", [False, True])
def test_fast_step_equals_autograd(kind, tied, sparse):
    g = torch.Generator().manual_seed(7)
    sae = SparseAutoencoder.init_random(12, 40, seed=2, kind=kind, tied=tied, dtype=torch.float64, init_threshold=0.15, bandwidth=0.05)
    with torch.no_grad():
        sae.b_enc.copy_(0.05 * torch.randn(40, generator=g, dtype=torch.float64))
        sae.b_dec.copy_(0.1 * torch.randn(12, generator=g, dtype=torch.float64))
        sae.log_threshold.add_(0.3 * torch.randn(40, generator=g).float())
    x = torch.randn(96, 12, generator=g, dtype=torch.float64) / 3
    out = sae(x, 0.3)
    out.loss.backward()
    ref = {n: p.grad.clone() for n, p in sae.named_parameters() if p.grad is not None}
    if kind == "jumprelu":
        assert float(ref["log_threshold"].abs().max()) > 1e-3  # the window is populated: the test can fail
    for p in sae.parameters():
        p.grad = None
    st = compute_grads(sae, x, 0.3, sparse=sparse)
    assert st.sparse == sparse
    assert st.loss == pytest.approx(float(out.loss.detach()), abs=1e-12)
    assert st.l0 == pytest.approx(float(out.l0), abs=1e-12)
    got = {n: p.grad for n, p in sae.named_parameters() if p.grad is not None}
    assert set(got) == set(ref)
    for n in ref:
        tol = 1e-6 * max(1.0, float(ref[n].abs().max())) if n == "log_threshold" else 1e-12  # log tau is float32
        assert torch.allclose(got[n].double(), ref[n].double(), atol=tol, rtol=0), n


def test_l0_penalty_sends_no_gradient_to_encoder():
    sae = SparseAutoencoder.init_random(8, 20, seed=0, dtype=torch.float64, init_threshold=0.1, bandwidth=0.1)
    x = torch.randn(64, 8, dtype=torch.float64)
    out = sae(x, 1.0)
    out.sparsity_loss.backward()
    assert float(sae.W_enc.grad.abs().max()) == 0.0 and float(sae.b_enc.grad.abs().max()) == 0.0
    assert float(sae.log_threshold.grad.abs().max()) > 0.0


# ----------------------------------------------------------------------------------------------- the trainer's pieces
_SCHED = dict(n_latents=8, n_steps=10, batch_size=64, lr=4e-3, init_threshold=0.05, bandwidth=0.01, log_every=1,
              whiten=False, seed=3)


def _schedule_run(cfg: SAEConfig):
    x = torch.randn(256, 4, generator=torch.Generator().manual_seed(0))
    return train_sae(x, None, cfg, progress=False)[1]


def test_learning_rate_schedule_is_constant_then_linear_to_the_end():
    # n_steps = 10, lr_decay_steps = 4: full lr for steps 0..6, then 3/4, 2/4, 1/4 of it (the last step is not 0)
    cfg = SAEConfig(l0_coefficient=0.02, lr_decay_steps=4, **_SCHED)
    expected = [4e-3] * 7 + [3e-3, 2e-3, 1e-3]
    assert [cfg.learning_rate_at(k) for k in range(10)] == pytest.approx(expected, rel=1e-15, abs=0)
    assert _schedule_run(cfg)["lr"].tolist() == [cfg.learning_rate_at(k) for k in range(10)]  # what the trainer used
    # lr_decay_steps >= n_steps: decays from the first step; 0: constant
    long = SAEConfig(l0_coefficient=0.02, lr_decay_steps=20, **_SCHED)
    assert [long.learning_rate_at(k) for k in range(10)] == pytest.approx([4e-3 * (10 - k) / 20 for k in range(10)],
                                                                          rel=1e-15, abs=0)
    assert {SAEConfig(l0_coefficient=0.02, **_SCHED).learning_rate_at(k) for k in range(10)} == {4e-3}
    for bad in (-1, 1.5, True, "3"):
        with pytest.raises(ValueError, match=f"step={bad!r}.*integer >= 0"):
            cfg.learning_rate_at(bad)


def test_sparsity_coefficient_warms_up_linearly_from_the_first_step():
    # coefficient 0.02 over 4 warm-up steps: 0.005, 0.010, 0.015, then 0.02 from step 3 on (never 0)
    cfg = SAEConfig(l0_coefficient=0.02, sparsity_warmup_steps=4, **_SCHED)
    expected = [0.005, 0.01, 0.015] + [0.02] * 7
    assert [cfg.coefficient_at(k) for k in range(10)] == pytest.approx(expected, rel=1e-15, abs=0)
    hist = _schedule_run(cfg)
    assert hist["l0_coefficient"].tolist() == [cfg.coefficient_at(k) for k in range(10)]
    # the ReLU kind warms up its own coefficient, under its own name; no warm-up: full from step 0
    relu = cfg.with_kind("relu", 0.3)
    assert [relu.coefficient_at(k) for k in range(5)] == pytest.approx([0.075, 0.15, 0.225, 0.3, 0.3], rel=1e-15, abs=0)
    assert _schedule_run(relu)["l1_coefficient"].tolist() == [relu.coefficient_at(k) for k in range(10)]
    assert SAEConfig(**_SCHED).coefficient_at(0) == 3e-3  # DEFAULT_L0_COEFFICIENT, no warm-up
    with pytest.raises(ValueError, match="step=-2"):
        cfg.coefficient_at(-2)


def test_dead_latents_count_tokens_since_each_latent_last_fired():
    g = torch.Generator().manual_seed(1)
    dead = DeadLatentTracker(6, dead_after_tokens=100)
    last = [None] * 6  # reference: the batch each latent last fired in
    seen = 0
    for b in range(12):
        fired = torch.rand(6, generator=g) < torch.tensor([0.9, 0.5, 0.2, 0.1, 0.0, 0.0])
        dead.update(fired, 30)
        seen += 30
        for j in range(6):
            if fired[j]:
                last[j] = b
        since = [seen - 30 * (last[j] + 1) if last[j] is not None else seen for j in range(6)]
        assert dead.tokens_since_fired.tolist() == since
        assert dead.fraction() == sum(t >= 100 for t in since) / 6
    assert dead.fraction() > 0  # the two latents that never fire are dead after 120 tokens


def test_training_history_logs_every_log_every_steps_and_the_last():
    cfg = SAEConfig(l0_coefficient=0.02, **{**_SCHED, "log_every": 4})
    h = TrainingHistory(cfg)
    assert [k for k in range(10) if h.due(k)] == [0, 4, 8, 9]
    h.log(0, StepStats(1.5, 1.0, 0.5, 3.0, 8.0, False), batch_size=4, coefficient=0.01, lr=1e-3, frac_dead_recent=0.25)
    h.log(4, StepStats(0.1, 0.0, 0.1, 1.0, 0.0, False), batch_size=4, coefficient=0.02, lr=1e-3, frac_dead_recent=0.0)
    df = h.frame()
    assert list(df.columns) == ["step", "loss", "mse", "sparsity_loss", "l0", "batch_r2_uncentred", "frac_dead_recent",
                                "l0_coefficient", "lr"]
    assert df["batch_r2_uncentred"].iloc[0] == 1 - 1.0 * 4 / 8.0 and math.isnan(df["batch_r2_uncentred"].iloc[1])  # all-zero batch
    assert _schedule_run(cfg)["step"].tolist() == [0, 4, 8, 9]
    with pytest.raises(ValueError, match="another version"):
        TrainingHistory(cfg).restore([{"step": 0, "r2": 1.0}], "ck")


def test_training_curves_plot_the_histories_batch_r2():
    import matplotlib.pyplot as plt

    from atomsnb.plots import training_histories

    raw = _schedule_run(SAEConfig(l0_coefficient=0.02, **_SCHED))
    x = torch.randn(256, 4, generator=torch.Generator().manual_seed(0))
    white = train_sae(x, AIP.fit(x, min_tokens_per_dim=0), SAEConfig(l0_coefficient=0.02, **{**_SCHED, "whiten": True}),
                      progress=False)[1]
    fig = training_histories({"raw": raw, "whitened": white})
    r2_panel = fig.axes[2].lines
    assert r2_panel[0].get_ydata().tolist() == raw["batch_r2_uncentred"].tolist()
    assert r2_panel[1].get_ydata().tolist() == white["batch_r2_aip"].tolist()
    plt.close(fig)


# ----------------------------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def small_world():
    w = make_world(SyntheticConfig(d_model=16, k=2, n_tokens=12000, cond=100.0, gamma=3.0, beta=1.0, seed=0))
    train, test = w.acts[:10000], w.acts[10000:]
    return w, train, test, AIP.fit(train)


_TRAIN = dict(n_latents=64, l0_coefficient=0.03, lr=3e-3, n_steps=1500, batch_size=512, init_threshold=0.05,
              bandwidth=0.01, sparsity_warmup_steps=300, lr_decay_steps=300, log_every=100)


def test_tsae_recovers_synthetic_atoms(small_world):
    w, train, test, aip = small_world
    sae, hist = train_sae(train, aip, SAEConfig(**_TRAIN), progress=False)
    rec = atom_recovery(sae.dictionary_raw(aip), w.mixed_atoms, aip, threshold=0.9)
    assert rec.fraction >= 0.9, rec.cosines
    assert r2_aip(test, sae.reconstruct_raw(test, aip), aip) > 0.9
    assert list(hist.columns) == ["step", "loss", "mse", "sparsity_loss", "l0", "batch_r2_aip", "frac_dead_recent", "l0_coefficient", "lr"]
    assert hist["l0"].iloc[-1] < 4  # true K = 2
    # decoder columns stay unit-norm
    assert torch.allclose(sae.W_dec.norm(dim=0), torch.ones(64), atol=1e-5)


def test_training_is_deterministic_and_fast_equals_autograd_path(small_world):
    _, train, _, aip = small_world
    cfg = SAEConfig(**{**_TRAIN, "n_steps": 30, "dtype": "float64"})
    a, ha = train_sae(train, aip, cfg, progress=False)
    b, hb = train_sae(train, aip, cfg, progress=False)
    for (n, p), (_, q) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(p, q), n
    c, hc = train_sae(train, aip, SAEConfig(**{**_TRAIN, "n_steps": 30, "dtype": "float64", "fast": False}), progress=False)
    for (n, p), (_, q) in zip(a.state_dict().items(), c.state_dict().items()):
        assert torch.allclose(p.double(), q.double(), atol=1e-5), n


def test_monitor_sees_the_sae_every_n_steps_changes_nothing_and_can_stop_the_run(small_world):
    _, train, held, aip = small_world
    cfg = SAEConfig(**{**_TRAIN, "n_steps": 30})
    plain, h_plain = train_sae(train, aip, cfg, progress=False)
    seen = []

    def watch(done, sae):
        seen.append((done, r2_aip(held, sae.reconstruct_raw(held, aip), aip), sae.W_dec.detach().clone()))

    watched, h_watched = train_sae(train, aip, cfg, progress=False, monitor=(10, watch))
    for (n, p), (_, q) in zip(plain.state_dict().items(), watched.state_dict().items()):
        assert torch.equal(p, q), n  # bit-identical with a monitor that returns None
    assert h_plain.equals(h_watched)
    assert [d for d, _, _ in seen] == [10, 20, 30]
    assert torch.equal(seen[-1][2], plain.W_dec)  # the monitor saw the SAE as it was after that step
    assert seen[-1][1] == pytest.approx(r2_aip(held, plain.reconstruct_raw(held, aip), aip))
    # a monitor that returns True stops the run there: the weights are those of a 20-step run (same schedule)
    stopped, h_stopped = train_sae(train, aip, cfg, progress=False, monitor=(10, lambda done, sae: done == 20))
    assert torch.equal(stopped.W_dec, seen[1][2])
    assert int(h_stopped["step"].iloc[-1]) == 19
    with pytest.raises(ValueError, match="every_n_steps"):
        train_sae(train, aip, cfg, progress=False, monitor=(0, watch))
    with pytest.raises(ValueError, match="monitor must be"):
        train_sae(train, aip, cfg, progress=False, monitor=watch)


def test_raw_coordinate_maps_are_consistent(small_world):
    _, train, test, aip = small_world
    sae = SparseAutoencoder.init_random(16, 64, seed=1, input_scale=4.0, dtype=torch.float64)
    with torch.no_grad():
        sae.b_dec.normal_(0, 0.1)
    m = test[:50]
    codes = sae.encode_raw(m, aip)
    xr = sae.reconstruct_raw(m, aip)
    assert torch.allclose(xr, codes @ sae.dictionary_raw(aip).T + sae.bias_raw(aip), atol=1e-10)
    # same thing through the SAE's own coordinates: m_hat = c W^{-1} x_hat
    x_hat = sae(sae.to_input(m, aip)).x_hat
    assert torch.allclose(xr, 4.0 * aip.unwhiten(x_hat), atol=1e-10)
    assert torch.allclose(aip.unwhiten(aip.whiten(m)), m.double(), atol=1e-10)
    with pytest.raises(ValueError, match="whitened coordinates"):
        sae.encode_raw(m)


def test_save_load_round_trip(tmp_path, small_world):
    _, train, test, aip = small_world
    sae, _ = train_sae(train, aip, SAEConfig(**{**_TRAIN, "n_steps": 20}), progress=False)
    path = save_sae(sae, tmp_path / "sae.safetensors")
    back = load_sae(path)
    for (n, p), (_, q) in zip(sae.state_dict().items(), back.state_dict().items()):
        assert torch.equal(p, q) and p.dtype == q.dtype, n
    assert back.config == sae.config and back.input_scale == sae.input_scale and back.kind == "jumprelu"
    assert torch.equal(back.encode_raw(test, aip), sae.encode_raw(test, aip))
    raw = path.read_bytes()
    path.write_bytes(raw[:-7] + bytes([raw[-7] ^ 1]) + raw[-6:])
    with pytest.raises(CacheCorruptError):
        load_sae(path)


def test_external_sae_wrapping_and_neurons(small_world):
    _, _, test, aip = small_world
    g = torch.Generator().manual_seed(0)
    We, Wd = torch.randn(30, 16, generator=g, dtype=torch.float64), torch.randn(16, 30, generator=g, dtype=torch.float64)
    be, bd = torch.randn(30, generator=g, dtype=torch.float64), torch.randn(16, generator=g, dtype=torch.float64)
    sae = SparseAutoencoder.from_weights(We, be, Wd, bd, threshold=0.5)
    pi = test @ We.T + be
    f = pi * (pi > 0.5)
    assert torch.allclose(sae.encode_raw(test), f, atol=1e-12)
    assert torch.allclose(sae.reconstruct_raw(test), f @ Wd.T + bd, atol=1e-10)
    assert torch.equal(sae.dictionary_raw(), Wd)
    relu = SparseAutoencoder.from_weights(We, be, Wd, bd)
    assert relu.kind == "relu" and torch.allclose(relu.encode_raw(test), pi.clamp_min(0), atol=1e-12)
    with pytest.raises(ValueError, match="W_dec"):
        SparseAutoencoder.from_weights(We, be, Wd.T, bd)
    nb = neuron_baseline(test)
    assert torch.equal(nb.codes, test.double()) and torch.equal(nb.dictionary, torch.eye(16, dtype=torch.float64))
    assert all(v == pytest.approx(1.0, abs=1e-12) for v in r2_all(test, nb.x_hat, aip).values())


# ----------------------------------------------------------------------------------------------- construction (SPEC §5)
def test_feasible_threshold_interval():
    iv = feasible_threshold_interval(0.05, 3, 1.0, 2.0)
    assert iv.low == pytest.approx(0.3, abs=1e-15) and iv.high == pytest.approx(0.8, abs=1e-15) and iv.nonempty
    assert iv.mid == pytest.approx(0.55, abs=1e-15)
    # empty iff delta_min <= eps (2K - 1) delta_max: at eps = 0.1 the boundary is 1.0 = 0.1 * 5 * 2.0
    assert not feasible_threshold_interval(0.1, 3, 1.0, 2.0 + 1e-12).nonempty
    assert feasible_threshold_interval(0.1, 3, 1.0, 2.0 - 1e-9).nonempty
    v = feasible_threshold_interval(torch.tensor([0.0, 0.1, 0.2]), 2, 1.0, 2.0)
    assert v.nonempty.tolist() == [True, True, False]
    with pytest.raises(ValueError):
        feasible_threshold_interval(0.1, 0, 1.0, 2.0)


def _construction_case(family, H, K, dmin, dmax, seed=1):
    w = make_world(SyntheticConfig(family=family, d_model=H, k=K, n_tokens=6000, delta_min=dmin, delta_max=dmax,
                                   cond=100.0, gamma=3.0, seed=seed))
    aip = AIP.fit(w.acts)
    c = construct_tsae(w.mixed_atoms, aip, 1.0)
    nz = (w.codes * c.atom_norms)[w.codes > 0]  # codes of the S-normalised atoms
    return w, aip, c, float(nz.min()), float(nz.max())


def test_construction_recovers_supports_inside_the_feasible_region():
    w, aip, c, dmin, dmax = _construction_case("two_ortho", 64, 2, 1.0, 1.2)
    iv = feasible_threshold_interval(c.eps, 2, dmin, dmax)
    assert iv.nonempty
    for tau in (iv.low + 1e-6 * (iv.high - iv.low), iv.mid, iv.high - 1e-6 * (iv.high - iv.low)):
        sae = construct_tsae(w.mixed_atoms, aip, tau).sae
        codes = sae.encode_raw(w.acts)
        assert support_recovery(codes, w.codes) == 1.0
    # W_enc = D^T S on S-normalised atoms: the pre-activations are G delta
    assert torch.allclose(aip.norm(c.dictionary.T), torch.ones(128, dtype=torch.float64), atol=1e-10)
    # the literal reconstruction is not exact (coherent atoms), the refit on the recovered support is (SPEC §5)
    x_hat = sae.reconstruct_raw(w.acts)
    assert r2_aip(w.acts, x_hat, aip) < 1 - 1e-4
    delta = refit_on_support(w.acts, codes, c.dictionary, aip)
    assert torch.equal(delta != 0, w.codes != 0)
    assert torch.allclose(delta, w.codes * c.atom_norms, atol=1e-8)
    assert r2_aip(w.acts, delta @ c.dictionary.T, aip) == pytest.approx(1.0, abs=1e-10)


def test_construction_exact_for_orthonormal_atoms_and_degrades_outside():
    # orthonormal atoms with their own oracle S = (D D^T)^{-1}: eps = 0 and R^2 = 1 exactly (SPEC §8 (a))
    g = torch.Generator().manual_seed(0)
    D = torch.linalg.qr(torch.randn(16, 16, generator=g, dtype=torch.float64)).Q
    codes = torch.zeros(4000, 16, dtype=torch.float64)
    idx = torch.rand(4000, 16, generator=g).argsort(1)[:, :3]
    codes.scatter_(1, idx, 1 + torch.rand(4000, 3, generator=g, dtype=torch.float64))
    acts = codes @ D.T
    aip = AIP.fit(acts)
    c = construct_tsae(D, aip, 0.5)
    assert c.eps < 0.5  # estimated S is not the oracle: non-negative codes add a rank-one term (SPEC §1.5)
    # outside the region: random atoms, K = 8, wide coefficients -> support recovery collapses (SPEC §8: 0.2%)
    w, aip2, c2, dmin, dmax = _construction_case("gaussian", 32, 8, 0.2, 2.0)
    assert not feasible_threshold_interval(c2.eps, 8, dmin, dmax).nonempty
    best = max(support_recovery(construct_tsae(w.mixed_atoms, aip2, t).sae.encode_raw(w.acts), w.codes)
               for t in torch.linspace(0.05, 1.5, 15).tolist())
    assert best < 0.5
    # oracle S for the orthonormal atoms: exact reconstruction by the construction itself
    oracle = AIP.fit(torch.cat([D.T * math.sqrt(16), -D.T * math.sqrt(16)]), min_tokens_per_dim=0)  # M = D D^T
    co = construct_tsae(D, oracle, 0.5)
    assert co.eps == pytest.approx(0.0, abs=1e-12)
    rec = co.sae.reconstruct_raw(acts)
    assert support_recovery(co.sae.encode_raw(acts), codes) == 1.0
    assert torch.allclose(rec, acts, atol=1e-10)


# ----------------------------------------------------------------------------------------------- configuration
def test_for_model_holds_the_book_defaults_and_with_kind_switches_coefficients():
    c = SAEConfig.for_model(256, n_steps=1000, batch_size=2048)
    # chapter 00's hand-tuned values at d = 256 (0.8/sqrt(d), 0.16/sqrt(d)), |D| = 4H, 20 % warm-up and decay
    assert c.kind == "jumprelu" and c.whiten and c.n_latents == 1024
    assert c.init_threshold == pytest.approx(0.05) and c.bandwidth == pytest.approx(0.01) and c.lr == 3e-3
    assert c.sparsity_warmup_steps == 200 and c.lr_decay_steps == 200 and c.betas == (0.0, 0.999)
    assert c.coefficient == 3e-3 and c.l1_coefficient is None
    assert c.dead_after_tokens == 1000 * 2048 // 10  # the last 10 % of a short run's tokens
    assert SAEConfig.for_model(2304, n_steps=10**6, batch_size=4096).dead_after_tokens == 10_000_000  # sparsify's
    f = SAEConfig.for_model(256, kind="relu", coefficient=0.05, capacity=2)
    assert not f.whiten and f.n_latents == 512 and f.l1_coefficient == 0.05 and f.l0_coefficient is None
    g = c.with_kind("relu", 0.1, whiten=False)
    assert (g.kind, g.l0_coefficient, g.l1_coefficient, g.whiten, g.n_latents) == ("relu", None, 0.1, False, 1024)
    assert g.coefficient_name == "l1_coefficient" and g.with_kind("jumprelu", 0.01).l0_coefficient == 0.01
    assert SAEConfig.from_dict(c.to_dict()) == c
