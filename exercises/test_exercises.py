"""Tests of the exercises: your functions against atomsnb's implementation, on random data.

    .venv/bin/python -m pytest exercises                              # your answers (exercises/aip_exercises.py)
    ATOMSNB_EXERCISES=solutions .venv/bin/python -m pytest exercises  # the solutions (what `make test` runs)

A function that still raises NotImplementedError fails its test with "not implemented yet".
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
import torch

from atomsnb.aip import AIP
from atomsnb.metrics import q_star, q_star_from_samples, whitened_atoms
from atomsnb.sae import JumpReLUFunction

HERE = Path(__file__).resolve().parent
WHICH = os.environ.get("ATOMSNB_EXERCISES", "student")
if WHICH not in ("student", "solutions"):
    raise ValueError(f"ATOMSNB_EXERCISES must be 'student' or 'solutions'; got {WHICH!r}")
_PATH = HERE / "solutions" / "aip_exercises.py" if WHICH == "solutions" else HERE / "aip_exercises.py"
_spec = importlib.util.spec_from_file_location(f"aip_exercises_{WHICH}", _PATH)
ex = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ex)


def call(name, *args, **kwargs):
    """Call the exercise function ``name``; an unimplemented one fails the test with a clear message."""
    try:
        return getattr(ex, name)(*args, **kwargs)
    except NotImplementedError as e:
        pytest.fail(f"not implemented yet: {name} in {_PATH} ({e})", pytrace=False)


def mixed(n: int, d: int, seed: int) -> torch.Tensor:
    """Anisotropic activations with a common offset, ``[n, d]`` float64: the representation shift in miniature."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(d, d, generator=g, dtype=torch.float64)
    return torch.randn(n, d, generator=g, dtype=torch.float64) @ A + 3.0 * torch.randn(d, generator=g, dtype=torch.float64)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_exercise1_whiten_matches_atomsnb(seed):
    acts = mixed(2000, 12, seed)
    x = mixed(50, 12, seed + 100)
    got = call("whiten", x, acts)
    want = AIP.fit(acts).whiten(x, method="cholesky")
    assert got.shape == want.shape
    torch.testing.assert_close(got.to(torch.float64), want, rtol=1e-7, atol=1e-9)


def test_exercise1_whitened_second_moment_is_identity():
    acts = mixed(3000, 8, 3)
    y = call("whiten", acts, acts).to(torch.float64)
    torch.testing.assert_close(y.T @ y / y.shape[0], torch.eye(8, dtype=torch.float64), rtol=0, atol=1e-8)


@pytest.mark.parametrize("seed", [0, 1])
def test_exercise2_aip_cosine_matches_atomsnb(seed):
    acts = mixed(2000, 10, seed)
    u, v = mixed(200, 10, seed + 10), mixed(200, 10, seed + 20)
    got = call("aip_cosine", u, v, acts)
    torch.testing.assert_close(got.to(torch.float64), AIP.fit(acts).inner(u, v), rtol=1e-7, atol=1e-9)


def test_exercise2_aip_cosine_is_invariant_under_reparametrisation():
    acts = mixed(2000, 10, 5)
    u, v = acts[:100], acts[100:200]
    A = torch.randn(10, 10, generator=torch.Generator().manual_seed(9), dtype=torch.float64) + 3 * torch.eye(10, dtype=torch.float64)
    before = call("aip_cosine", u, v, acts)
    after = call("aip_cosine", u @ A.T, v @ A.T, acts @ A.T)
    torch.testing.assert_close(after, before, rtol=0, atol=1e-8)


def _reference_q_star(mu: torch.Tensor, K: torch.Tensor) -> float:
    mu = mu.to(torch.float64)
    return q_star_from_samples(lambda t: (mu[None, :] < t[:, None]).sum(1), mu.numel(), K)


@pytest.mark.parametrize("seed", range(8))
def test_exercise3_q_star_matches_atomsnb_on_samples(seed):
    g = torch.Generator().manual_seed(seed)
    n_mu = int(torch.randint(1, 60, (1,), generator=g))
    n = int(torch.randint(1, 60, (1,), generator=g))
    mu = torch.rand(n_mu, generator=g, dtype=torch.float64) ** 2
    mu[: n_mu // 4] = torch.tensor([1.0, 1 / 3, 1 / 5, 0.0])[torch.randint(0, 4, (n_mu // 4,), generator=g)].to(mu)
    K = torch.randint(0, 6, (n,), generator=g)
    assert call("q_star_pairwise", mu, K) == pytest.approx(_reference_q_star(mu, K), abs=1e-12)


def test_exercise3_q_star_edge_cases():
    assert call("q_star_pairwise", torch.tensor([0.9], dtype=torch.float64), torch.tensor([0, 0])) == 1.0  # b(0) = inf
    assert call("q_star_pairwise", torch.tensor([1.0], dtype=torch.float64), torch.tensor([1, 1])) == 0.0  # mu < 1 fails
    assert call("q_star_pairwise", torch.tensor([0.2, 0.6], dtype=torch.float64), torch.tensor([2, 2])) == 0.5


def test_exercise3_q_star_matches_atomsnb_on_a_dictionary():
    """The same estimator as ``atomsnb.metrics.q_star(..., estimator="pairwise")`` on a real dictionary."""
    g = torch.Generator().manual_seed(11)
    d, n_latents, n = 8, 24, 400
    acts = mixed(1000, d, 11)
    aip = AIP.fit(acts)
    D = torch.randn(d, n_latents, generator=g, dtype=torch.float64)
    codes = torch.rand(n, n_latents, generator=g, dtype=torch.float64)
    codes = codes * (torch.rand(n, n_latents, generator=g) < 0.08)
    Dt = whitened_atoms(D, aip)
    alive = (codes != 0).any(0)
    G = (Dt[alive] @ Dt[alive].T).abs()
    j, k = torch.triu_indices(G.shape[0], G.shape[0], offset=1)
    mu, K = G[j, k], (codes != 0).sum(1)
    want = q_star(codes, D, aip, estimator="pairwise").q_star
    assert call("q_star_pairwise", mu, K) == pytest.approx(want, abs=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_exercise4a_jumprelu_matches_atomsnb(dtype):
    g = torch.Generator().manual_seed(0)
    pi = torch.randn(64, 16, generator=g, dtype=dtype)
    tau = torch.rand(16, generator=g, dtype=dtype) * 0.5
    pi[0] = tau  # ties: a pre-activation equal to its threshold is off
    got = call("jumprelu", pi, tau)
    torch.testing.assert_close(got, JumpReLUFunction.apply(pi, tau, 0.05), rtol=0, atol=0)


def test_exercise4b_threshold_pseudo_gradient_matches_atomsnb():
    g = torch.Generator().manual_seed(1)
    pi = torch.randn(256, 16, generator=g, dtype=torch.float64)
    tau = (torch.rand(16, generator=g, dtype=torch.float64) * 0.5).requires_grad_()
    grad_out = torch.randn(256, 16, generator=g, dtype=torch.float64)
    bandwidth = 0.3
    JumpReLUFunction.apply(pi, tau, bandwidth).backward(grad_out)
    got = call("jumprelu_threshold_grad", pi, tau.detach(), grad_out, bandwidth)
    torch.testing.assert_close(got, tau.grad, rtol=1e-10, atol=1e-12)
