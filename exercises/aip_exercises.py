"""Exercises: the AIP, its cosine, the stability q* and the JumpReLU, written from scratch.

Implement each function below (replace ``raise NotImplementedError``), then run the tests:

    .venv/bin/python -m pytest exercises

The tests compare your functions with ``atomsnb``'s implementation on random data. The teaching guide
(book/teaching.md, "Exercises") states each task with the math; the solutions are in ``exercises/solutions/``
(try first!). Use ``torch`` only; every tensor is float64 unless stated otherwise.
"""

from __future__ import annotations

import torch


def whiten(x: torch.Tensor, acts: torch.Tensor) -> torch.Tensor:
    """Exercise 1. Whiten the rows of ``x`` with the Cholesky factor of the second moment of ``acts``.

    ``M = E[m m^T] = acts^T acts / n`` (not centred), ``M = L L^T`` with ``L`` lower-triangular, and the whitened
    vector of a row ``x_i`` is ``y_i = L^{-1} x_i`` (SPEC §1.2). Use a triangular solve, not an explicit inverse.

    Args:
        x: ``[n, d_model]`` rows to whiten.
        acts: ``[n_tokens, d_model]`` the activations ``M`` is estimated from.

    Returns:
        ``[n, d_model]`` float64, ``y = x L^{-T}``.
    """
    raise NotImplementedError("exercise 1: whiten")


def aip_cosine(u: torch.Tensor, v: torch.Tensor, acts: torch.Tensor) -> torch.Tensor:
    """Exercise 2. Normalised atomic inner product of paired rows (paper §3, SPEC §1.1).

    ``cos_S(u_i, v_i) = u_i^T S v_i / sqrt(u_i^T S u_i * v_i^T S v_i)`` with ``S = M^{-1}``, ``M = E[m m^T]`` of
    ``acts``. Hint: in whitened coordinates (exercise 1) it is the ordinary cosine.

    Args:
        u, v: ``[n, d_model]`` each; row ``i`` of ``u`` is paired with row ``i`` of ``v``.
        acts: ``[n_tokens, d_model]`` the activations ``S`` is estimated from.

    Returns:
        ``[n]`` float64 cosines in ``[-1, 1]``.
    """
    raise NotImplementedError("exercise 2: aip_cosine")


def q_star_pairwise(mu: torch.Tensor, K: torch.Tensor) -> float:
    """Exercise 3. The stability ``q*`` from a coherence sample and a support-size sample (estimator P, SPEC §4).

    ``q* = sup {q in (0, 1] : Q_mu(q) < b(Q_K(q))}`` (``sup {} = 0``), where ``b(K) = 1 / (2K - 1)`` for
    ``K >= 1``, ``b(0) = +inf``, and ``Q_x(q) = x_(ceil(q |x|))`` is the lower quantile of a sample ``x``
    (its ``ceil(q |x|)``-th smallest value, counting from 1). The result must be exact, not found on a grid.

    Args:
        mu: ``[n_mu]`` coherence values ``|G_jk|`` in ``[0, 1]`` (at least one).
        K: ``[n]`` support sizes ``K_n >= 0`` (integers, at least one).

    Returns:
        ``q*`` in ``[0, 1]``.
    """
    raise NotImplementedError("exercise 3: q_star_pairwise")


def jumprelu(pi: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """Exercise 4a. JumpReLU with a per-latent threshold: ``f = pi * H(pi - tau)`` with ``H(z) = 1[z > 0]``.

    Args:
        pi: ``[n_tokens, n_latents]`` pre-activations.
        tau: ``[n_latents]`` thresholds (broadcast over tokens).

    Returns:
        ``[n_tokens, n_latents]``, ``pi`` where ``pi > tau`` and 0 elsewhere.
    """
    raise NotImplementedError("exercise 4a: jumprelu")


def jumprelu_threshold_grad(pi: torch.Tensor, tau: torch.Tensor, grad_out: torch.Tensor,
                            bandwidth: float) -> torch.Tensor:
    """Exercise 4b. The pseudo-gradient of the loss with respect to ``tau`` through the JumpReLU (SPEC §6).

    ``H`` has zero derivative almost everywhere, so the TSAE uses a straight-through estimate with the rectangle
    kernel ``kappa(z) = 1[|z| < 1/2]`` and bandwidth ``epsilon``: ``df/dtau = -(tau / epsilon)
    kappa((pi - tau) / epsilon)`` (Rajamanoharan et al. 2024, eq. 10), multiplied by ``grad_out = dL/df`` and
    summed over tokens.

    Args:
        pi: ``[n_tokens, n_latents]`` pre-activations.
        tau: ``[n_latents]`` thresholds.
        grad_out: ``[n_tokens, n_latents]`` the upstream gradient ``dL/df``.
        bandwidth: ``epsilon > 0``.

    Returns:
        ``[n_latents]`` ``dL/dtau``.
    """
    raise NotImplementedError("exercise 4b: jumprelu_threshold_grad")
