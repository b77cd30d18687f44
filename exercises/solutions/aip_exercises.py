"""Solutions of the exercises in ``exercises/aip_exercises.py`` (same functions, same docstrings in short)."""

from __future__ import annotations

import torch


def _cholesky_factor(acts: torch.Tensor) -> torch.Tensor:
    acts = torch.as_tensor(acts, dtype=torch.float64)
    M = acts.T @ acts / acts.shape[0]  # E[m m^T], not centred
    return torch.linalg.cholesky(M)  # M = L L^T


def whiten(x: torch.Tensor, acts: torch.Tensor) -> torch.Tensor:
    """Exercise 1: ``y_i = L^{-1} x_i`` with ``M = L L^T`` (SPEC §1.2)."""
    L = _cholesky_factor(acts)
    x = torch.as_tensor(x, dtype=torch.float64)
    # Solve L Y^T = X^T for Y^T: one triangular solve for all rows, no explicit inverse.
    return torch.linalg.solve_triangular(L, x.T, upper=False).T


def aip_cosine(u: torch.Tensor, v: torch.Tensor, acts: torch.Tensor) -> torch.Tensor:
    """Exercise 2: ``u^T S v`` is the Euclidean inner product of the whitened vectors, since ``S = L^{-T} L^{-1}``."""
    yu, yv = whiten(u, acts), whiten(v, acts)
    return ((yu * yv).sum(1) / (yu.norm(dim=1) * yv.norm(dim=1))).clamp(-1.0, 1.0)


def _ceil_div(a: int, b: int) -> int:
    return -((-a) // b)


def q_star_pairwise(mu: torch.Tensor, K: torch.Tensor) -> float:
    """Exercise 3: exact ``q*``.

    ``Q_mu(q)`` and ``Q_K(q)`` only change where ``q * |x|`` crosses an integer, and both are constant on the
    left-open intervals ``((i-1)/|x|, i/|x|]``. So the condition ``Q_mu(q) < b(Q_K(q))`` is constant between
    consecutive points of ``{i / n} U {j / n_mu}`` (right end included), and the supremum of the set where it
    holds is one of those points: test each one, with integer arithmetic for ``ceil(q |x|)``.
    """
    mu_sorted = torch.sort(torch.as_tensor(mu, dtype=torch.float64).reshape(-1)).values.tolist()
    K_sorted = torch.sort(torch.as_tensor(K).reshape(-1).to(torch.int64)).values.tolist()
    n_mu, n = len(mu_sorted), len(K_sorted)

    def holds(a: int, b: int) -> bool:  # the condition at q = a / b
        k = K_sorted[_ceil_div(a * n, b) - 1]
        bound = float("inf") if k == 0 else 1.0 / (2 * k - 1)
        return mu_sorted[_ceil_div(a * n_mu, b) - 1] < bound

    candidates = [(i, n) for i in range(1, n + 1)] + [(j, n_mu) for j in range(1, n_mu + 1)]
    best = 0.0
    for a, b in candidates:
        if a / b > best and holds(a, b):
            best = a / b
    return best


def jumprelu(pi: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """Exercise 4a: ``pi * 1[pi > tau]`` (strict: a pre-activation equal to its threshold is off)."""
    return pi * (pi > tau).to(pi.dtype)


def jumprelu_threshold_grad(pi: torch.Tensor, tau: torch.Tensor, grad_out: torch.Tensor,
                            bandwidth: float) -> torch.Tensor:
    """Exercise 4b: ``sum_n grad_out * (-(tau / eps) * kappa((pi - tau) / eps))``."""
    z = (pi - tau) / bandwidth
    kappa = ((z > -0.5) & (z < 0.5)).to(pi.dtype)
    return (-(tau / bandwidth) * kappa * grad_out).sum(0)
