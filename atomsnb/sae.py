"""Sparse autoencoders: the JumpReLU TSAE that finds atoms, the ReLU+L1 baseline, and the theorem's construction.

Paper §5 (identifiability): a threshold-activated SAE (TSAE) with ``W_dec = D``, ``W_enc = D^T S`` and a
JumpReLU threshold ``tau`` recovers the supports of ``K``-sparse codes exactly when
``delta_min > eps (2K - 1) delta_max`` (SPEC §5). Paper §6 trains TSAEs with capacity ``|D| = 4H``;
this module trains them as SPEC §6 describes (Rajamanoharan et al. 2024, *Jumping Ahead*):

- inputs in whitened coordinates ``x = W m / c`` with ``W^T W = S`` and ``c = sqrt(H)`` so that ``E||x||^2 = 1``;
- ``pi = W_e x + b_e``, ``f = pi * H(pi - tau)``, ``x_hat = D~ f + b_d``,
  ``L = ||x - x_hat||^2 + lambda * sum_j H(pi_j - tau_j)`` (batch means);
- pseudo-gradients with the rectangle kernel and bandwidth ``epsilon`` for ``tau`` (stored as ``log tau``,
  float32); the L0 term sends no gradient to ``W_e``, ``b_e`` (as SAELens);
- Adam with ``betas = (0, 0.999)``, decoder columns renormalised to unit norm after each step.

The same trainer fits the standard ReLU + L1 SAE ("features", paper §4) with ``kind="relu"``. Neurons
are the identity dictionary with dense codes (:func:`neuron_baseline`).

The training step used by :func:`train_sae` computes the gradients by hand (:func:`compute_grads`):
dense with reused buffers at low sparsity, and, once the codes are sparse, decoding with
``embedding_bag`` and sampled matrix products so that only the encoder's forward matmul stays dense.
``tests/test_sae.py`` checks that it equals autograd through :meth:`SparseAutoencoder.forward`.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from .aip import AIP
from .io import load_tensors, save_tensors

__all__ = [
    "SAEConfig",
    "StepFunction",
    "JumpReLUFunction",
    "rectangle",
    "SAEOutput",
    "SparseAutoencoder",
    "StepStats",
    "compute_grads",
    "training_step",
    "train_sae",
    "save_sae",
    "load_sae",
    "neuron_baseline",
    "ThresholdInterval",
    "feasible_threshold_interval",
    "ConstructedTSAE",
    "construct_tsae",
    "refit_on_support",
]

_DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}


# ---------------------------------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class SAEConfig:
    """Every knob of a sparse autoencoder and its training run (SPEC §6)."""

    kind: Literal["jumprelu", "relu"] = "jumprelu"
    """"jumprelu": the TSAE (L0 penalty, per-latent threshold); "relu": the standard ReLU + L1 SAE baseline."""
    n_latents: int | None = None
    """Dictionary size ``N = |D|``; None -> ``4 * d_model`` (paper §6)."""
    sparsity_coefficient: float = 1e-3
    """``lambda``: the L0 coefficient (jumprelu) or L1 coefficient (relu), per token."""
    sparsity_warmup_steps: int = 0
    """Steps over which ``lambda`` rises linearly from 0 (SAELens ``l0_warm_up_steps``)."""
    bandwidth: float = 1e-3
    """``epsilon``, the rectangle-kernel bandwidth of the threshold pseudo-gradient (SPEC §6, SAELens default)."""
    init_threshold: float = 1e-3
    """Initial ``tau_j`` (SPEC §6, SAELens default)."""
    lr: float = 3e-4
    """Adam learning rate."""
    lr_decay_steps: int = 0
    """Final steps over which the learning rate decays linearly to 0 (0: constant)."""
    betas: tuple[float, float] = (0.0, 0.999)
    """Adam ``(beta1, beta2)``; ``(0, 0.999)`` as recalled from the paper (SPEC §6, to verify)."""
    batch_size: int = 4096
    """Tokens per step."""
    n_steps: int = 1000
    """Optimiser steps."""
    seed: int = 0
    """Seed of the initialisation and of the batch order."""
    whiten: bool = True
    """Train in whitened coordinates ``x = W m / sqrt(H)`` (SPEC §6); False: Euclidean MSE on ``m / c`` ([Alt])."""
    tied: bool = False
    """Tie the encoder to the decoder, ``W_e = D~^T`` (the theorem's family; an ablation, SPEC §6)."""
    fast: bool = True
    """Hand-written (sparse when possible) gradients; False: autograd through :meth:`SparseAutoencoder.forward`."""
    sparse_density: float = 0.15
    """The fast step decodes sparsely when the fraction of active latents in a batch is below this (CPU crossover ~0.2)."""
    log_every: int = 10
    """Steps between rows of the training history."""
    device: str = "cpu"
    """Torch device of the parameters and batches."""
    dtype: str = "float32"
    """Parameter and batch dtype ("float32", "float64"); ``log tau`` is always float32."""

    def to_dict(self) -> dict:
        """JSON-serialisable copy (tuples become lists)."""
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "SAEConfig":
        """Inverse of :meth:`to_dict`; unknown keys raise ``TypeError``."""
        d = dict(d)
        if "betas" in d:
            d["betas"] = tuple(d["betas"])
        return cls(**d)


# ---------------------------------------------------------------------------------------------------------------------
# JumpReLU and its pseudo-gradients (SPEC §6)
# ---------------------------------------------------------------------------------------------------------------------
def rectangle(u: torch.Tensor) -> torch.Tensor:
    """Rectangle kernel ``kappa(u) = 1[|u| < 1/2]`` (SPEC §6), in ``u``'s dtype."""
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


def _sum_to(g: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    while g.dim() > len(shape):
        g = g.sum(0)
    for i, s in enumerate(shape):
        if s == 1 and g.shape[i] != 1:
            g = g.sum(i, keepdim=True)
    return g


class StepFunction(torch.autograd.Function):
    """Heaviside step ``H(pi - tau)`` with the JumpReLU pseudo-gradient (Rajamanoharan et al. 2024, eq. 11; SPEC §6).

    Forward: ``1[pi > tau]``. Backward: ``dH/dpi = 0`` (so an L0 penalty sends no gradient to the
    encoder, as in SAELens) and ``dH/dtau = -(1/epsilon) kappa((pi - tau)/epsilon)`` with the rectangle
    kernel :func:`rectangle`. Source: SAELens ``jumprelu_sae.py`` / dictionary_learning ``trainers/jumprelu.py``.
    """

    @staticmethod
    def forward(ctx, pi: torch.Tensor, tau: torch.Tensor, bandwidth: float) -> torch.Tensor:
        ctx.save_for_backward(pi, tau)
        ctx.bandwidth = bandwidth
        return (pi > tau).to(pi.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        pi, tau = ctx.saved_tensors
        eps = ctx.bandwidth
        g_tau = -(1.0 / eps) * rectangle((pi - tau) / eps) * grad
        return torch.zeros_like(pi), _sum_to(g_tau, tau.shape), None


class JumpReLUFunction(torch.autograd.Function):
    """JumpReLU ``f = pi * H(pi - tau)`` with pseudo-gradients (Rajamanoharan et al. 2024, eq. 10; SPEC §6).

    Backward: ``df/dpi = H(pi - tau)``; ``df/dtau = -(tau/epsilon) kappa((pi - tau)/epsilon)``.
    """

    @staticmethod
    def forward(ctx, pi: torch.Tensor, tau: torch.Tensor, bandwidth: float) -> torch.Tensor:
        ctx.save_for_backward(pi, tau)
        ctx.bandwidth = bandwidth
        return pi * (pi > tau).to(pi.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        pi, tau = ctx.saved_tensors
        eps = ctx.bandwidth
        g_pi = (pi > tau).to(pi.dtype) * grad
        g_tau = -(tau / eps) * rectangle((pi - tau) / eps) * grad
        return g_pi, _sum_to(g_tau, tau.shape), None


# ---------------------------------------------------------------------------------------------------------------------
# Whitening helpers
# ---------------------------------------------------------------------------------------------------------------------
# ---------------------------------------------------------------------------------------------------------------------
# The module
# ---------------------------------------------------------------------------------------------------------------------
class SAEOutput(NamedTuple):
    """Result of :meth:`SparseAutoencoder.forward` (shapes for a batch of ``B`` inputs)."""

    x_hat: torch.Tensor
    """``[B, d_in]`` reconstruction ``D~ f + b_d``."""
    latents: torch.Tensor
    """``[B, N]`` codes ``f`` (exact zeros off the support)."""
    pre_acts: torch.Tensor
    """``[B, N]`` pre-activations ``pi = W_e x + b_e``."""
    l0: torch.Tensor
    """Scalar: mean number of active latents per input."""
    mse: torch.Tensor
    """Scalar: ``mean_b ||x - x_hat||^2`` (sum over dimensions)."""
    sparsity_loss: torch.Tensor
    """Scalar: ``lambda * mean_b sum_j H(pi - tau)`` (jumprelu) or ``lambda * mean_b sum_j f_j`` (relu)."""
    loss: torch.Tensor
    """Scalar: ``mse + sparsity_loss``."""


class SparseAutoencoder(nn.Module):
    """A JumpReLU (TSAE) or ReLU sparse autoencoder (paper §5-6, SPEC §6).

    Parameters (``H = d_in``, ``N = n_latents``):

    - ``W_enc`` ``[N, H]`` and ``b_enc`` ``[N]`` (encoder; ``W_enc`` unused when ``tied``);
    - ``W_dec`` ``[H, N]``: the dictionary ``D~`` in the SAE's input coordinates, columns of unit norm
      after every training step; ``b_dec`` ``[H]``;
    - ``log_threshold`` ``[N]`` float32: ``log tau`` (jumprelu only).

    Input coordinates: with ``whitened=True`` the SAE works on ``x = W m / input_scale`` (SPEC §6);
    with ``whitened=False`` on ``x = m / input_scale`` (raw coordinates, e.g. an external SAE or the
    construction, with ``input_scale = 1``). :meth:`encode_raw`, :meth:`reconstruct_raw` and
    :meth:`dictionary_raw` map to raw activation coordinates, where the reconstruction is
    ``m_hat = dictionary_raw @ codes_raw + bias_raw``.
    """

    def __init__(self, d_in: int, n_latents: int, *, kind: str = "jumprelu", tied: bool = False, whitened: bool = True,
                 input_scale: float = 1.0, bandwidth: float = 1e-3, init_threshold: float = 1e-3,
                 dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"):
        super().__init__()
        if kind not in ("jumprelu", "relu"):
            raise ValueError(f"kind must be 'jumprelu' or 'relu'; got {kind!r}")
        if d_in < 1 or n_latents < 1:
            raise ValueError(f"d_in and n_latents must be >= 1; got {d_in}, {n_latents}")
        if not bandwidth > 0 or not init_threshold > 0:
            raise ValueError(f"bandwidth and init_threshold must be > 0; got {bandwidth}, {init_threshold}")
        self.d_in, self.n_latents, self.kind, self.tied = int(d_in), int(n_latents), kind, bool(tied)
        self.whitened, self.input_scale, self.bandwidth = bool(whitened), float(input_scale), float(bandwidth)
        kw = dict(dtype=dtype, device=device)
        self.W_dec = nn.Parameter(torch.zeros(d_in, n_latents, **kw))
        self.b_dec = nn.Parameter(torch.zeros(d_in, **kw))
        self.W_enc = nn.Parameter(torch.zeros(n_latents, d_in, **kw), requires_grad=not tied)
        self.b_enc = nn.Parameter(torch.zeros(n_latents, **kw))
        self.log_threshold = nn.Parameter(torch.full((n_latents,), math.log(init_threshold), dtype=torch.float32, device=device),
                                          requires_grad=(kind == "jumprelu"))

    # -------------------------------------------------------------- construction
    @classmethod
    def init_random(cls, d_in: int, n_latents: int, *, seed: int = 0, **kwargs) -> "SparseAutoencoder":
        """Random unit-norm decoder columns, ``W_e = D~^T``, zero biases (SPEC §6)."""
        sae = cls(d_in, n_latents, **kwargs)
        g = torch.Generator().manual_seed(int(seed))
        D = torch.randn(d_in, n_latents, generator=g, dtype=torch.float64)
        D = D / D.norm(dim=0, keepdim=True)
        with torch.no_grad():
            sae.W_dec.copy_(D)
            sae.W_enc.copy_(D.T)
        return sae

    @classmethod
    def from_weights(cls, W_enc: torch.Tensor, b_enc: torch.Tensor | None, W_dec: torch.Tensor, b_dec: torch.Tensor | None,
                     threshold: torch.Tensor | float | None = None, *, kind: str | None = None, dtype: torch.dtype = torch.float64,
                     whitened: bool = False, input_scale: float = 1.0) -> "SparseAutoencoder":
        """Wrap an external SAE (or a constructed one) given by its weights, for evaluation.

        The SAE computes ``f = sigma(W_enc m + b_enc)`` with ``sigma`` a JumpReLU at ``threshold``
        (``kind="jumprelu"``, the default when a threshold is given) or a ReLU, and ``m_hat = W_dec f + b_dec``.
        By default it acts on raw coordinates (``whitened=False``, ``input_scale=1``).

        Args:
            W_enc: ``[N, H]``.
            b_enc: ``[N]`` or None (zeros).
            W_dec: ``[H, N]`` (columns are the atoms; not renormalised).
            b_dec: ``[H]`` or None (zeros).
            threshold: scalar or ``[N]`` positive thresholds (JumpReLU), or None (ReLU).

        Raises:
            ValueError: inconsistent shapes or a non-positive threshold.
        """
        W_enc, W_dec = torch.as_tensor(W_enc), torch.as_tensor(W_dec)
        N, H = W_enc.shape
        if W_dec.shape != (H, N):
            raise ValueError(f"W_dec must be [H={H}, N={N}] to match W_enc [N, H]; got {tuple(W_dec.shape)}")
        kind = kind or ("jumprelu" if threshold is not None else "relu")
        sae = cls(H, N, kind=kind, whitened=whitened, input_scale=input_scale, dtype=dtype)
        with torch.no_grad():
            sae.W_enc.copy_(W_enc)
            sae.W_dec.copy_(W_dec)
            if b_enc is not None:
                sae.b_enc.copy_(torch.as_tensor(b_enc))
            if b_dec is not None:
                sae.b_dec.copy_(torch.as_tensor(b_dec))
            if threshold is not None:
                t = torch.as_tensor(threshold, dtype=torch.float64).expand(N)
                if bool((t <= 0).any()):
                    raise ValueError("JumpReLU thresholds must be > 0 (stored as log tau)")
                sae.log_threshold.copy_(t.log().to(torch.float32))
        return sae

    # -------------------------------------------------------------- forward
    @property
    def encoder_weight(self) -> torch.Tensor:
        """``[N, H]`` encoder matrix (``W_dec^T`` when tied)."""
        return self.W_dec.T if self.tied else self.W_enc

    @property
    def threshold(self) -> torch.Tensor:
        """``tau = exp(log_threshold)`` ``[N]`` in the parameter dtype."""
        return self.log_threshold.exp().to(self.W_dec.dtype)

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        """``pi = W_e x + b_e`` ``[B, N]`` for inputs ``x`` ``[B, H]`` in SAE coordinates."""
        return F.linear(x, self.encoder_weight, self.b_enc)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Codes ``f`` ``[B, N]`` of inputs ``x`` ``[B, H]`` in SAE coordinates (JumpReLU or ReLU)."""
        pi = self.pre_acts(x)
        if self.kind == "jumprelu":
            return JumpReLUFunction.apply(pi, self.threshold, self.bandwidth)
        return F.relu(pi)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """Reconstruction ``D~ f + b_d`` ``[B, H]`` from codes ``f`` ``[B, N]``."""
        return F.linear(f, self.W_dec, self.b_dec)

    def forward(self, x: torch.Tensor, sparsity_coefficient: float = 0.0) -> SAEOutput:
        """Full forward pass and loss (SPEC §6); differentiable with the JumpReLU pseudo-gradients.

        Args:
            x: ``[B, H]`` inputs in SAE coordinates.
            sparsity_coefficient: ``lambda`` of the L0 (jumprelu) or L1 (relu) penalty.

        Returns:
            An :class:`SAEOutput`.
        """
        pi = self.pre_acts(x)
        if self.kind == "jumprelu":
            tau = self.threshold
            f = JumpReLUFunction.apply(pi, tau, self.bandwidth)
            active = StepFunction.apply(pi, tau, self.bandwidth)
            sparsity = sparsity_coefficient * active.sum(-1).mean()
            l0 = (pi > tau).sum(-1).to(torch.float64).mean()
        else:
            f = F.relu(pi)
            sparsity = sparsity_coefficient * f.sum(-1).mean()
            l0 = (f > 0).sum(-1).to(torch.float64).mean()
        x_hat = self.decode(f)
        mse = (x_hat - x).pow(2).sum(-1).mean()
        return SAEOutput(x_hat, f, pi, l0, mse, sparsity, mse + sparsity)

    # -------------------------------------------------------------- raw coordinates
    def _check_aip(self, aip: AIP | None) -> None:
        if self.whitened and aip is None:
            raise ValueError("this SAE works in whitened coordinates: pass the AIP it was trained with")

    def to_input(self, m: torch.Tensor, aip: AIP | None = None) -> torch.Tensor:
        """Raw activations ``m`` ``[n, d_model]`` -> SAE inputs ``x`` ``[n, H]`` in the parameter dtype."""
        self._check_aip(aip)
        m = torch.as_tensor(m)
        x = aip.whiten(m) if self.whitened else m.to(torch.float64)
        return (x / self.input_scale).to(self.W_dec.dtype)

    @torch.no_grad()
    def encode_raw(self, m: torch.Tensor, aip: AIP | None = None, batch_size: int = 8192) -> torch.Tensor:
        """Codes of raw activations ``m`` ``[n, d_model]`` -> ``[n, N]`` float64, scaled for :meth:`dictionary_raw`.

        ``codes_raw = input_scale * f`` so that ``m_hat = dictionary_raw @ codes_raw^T + bias_raw``.
        """
        out = []
        for s in range(0, m.shape[0], batch_size):
            out.append(self.encode(self.to_input(m[s : s + batch_size], aip)).to(torch.float64) * self.input_scale)
        return torch.cat(out) if out else torch.zeros(0, self.n_latents, dtype=torch.float64)

    @torch.no_grad()
    def dictionary_raw(self, aip: AIP | None = None) -> torch.Tensor:
        """The atoms in raw coordinates, ``D = W^{-1} D~`` ``[d_model, N]`` float64 (SPEC §6)."""
        self._check_aip(aip)
        D = self.W_dec.detach().to(torch.float64)
        return aip.unwhiten(D.T).T.contiguous() if self.whitened else D.clone()

    @torch.no_grad()
    def bias_raw(self, aip: AIP | None = None) -> torch.Tensor:
        """Decoder bias in raw coordinates, ``input_scale * W^{-1} b_d`` ``[d_model]`` float64."""
        self._check_aip(aip)
        b = self.b_dec.detach().to(torch.float64)
        b = aip.unwhiten(b[None])[0] if self.whitened else b
        return b * self.input_scale

    @torch.no_grad()
    def reconstruct_raw(self, m: torch.Tensor, aip: AIP | None = None, batch_size: int = 8192) -> torch.Tensor:
        """Reconstruction of raw activations ``m`` ``[n, d_model]`` -> ``[n, d_model]`` float64."""
        codes = self.encode_raw(m, aip, batch_size)
        return codes @ self.dictionary_raw(aip).T + self.bias_raw(aip)

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Rescale decoder columns to unit norm (after every step; SPEC §6)."""
        from_sq = _column_dot(self.W_dec, self.W_dec)  # squared column norms, [N]
        self.W_dec.div_(from_sq.sqrt_().clamp_min_(1e-12)[None, :])

    @torch.no_grad()
    def remove_parallel_decoder_grad(self) -> None:
        """Project out of ``W_dec.grad`` its component along each (unit) column (dictionary_learning convention)."""
        if self.W_dec.grad is not None:
            g = self.W_dec.grad
            g.sub_(self.W_dec * _column_dot(g, self.W_dec)[None, :])


# ---------------------------------------------------------------------------------------------------------------------
# The training step with hand-written gradients
# ---------------------------------------------------------------------------------------------------------------------
class StepStats(NamedTuple):
    """Scalars of one training step (floats)."""

    loss: float
    """``mse + sparsity_loss``."""
    mse: float
    """``mean_b ||x - x_hat||^2``."""
    sparsity_loss: float
    """``lambda * mean_b L0`` (jumprelu) or ``lambda * mean_b ||f||_1`` (relu)."""
    l0: float
    """Mean active latents per input."""
    r2: float
    """``1 - sum ||x - x_hat||^2 / sum ||x||^2`` on the batch (the AIP ``R^2`` when whitened)."""
    sparse: bool
    """Whether the sparse route was used."""


def _set_grad(p: torch.Tensor, g: torch.Tensor) -> None:
    if p.grad is None or p.grad.shape != p.shape:
        p.grad = g.detach().contiguous().to(p.dtype)
    else:
        p.grad.copy_(g)


class _Workspace:
    """Buffers reused across steps (fresh multi-GB tensors cost page faults every step; see BENCHMARKS.md)."""

    def __init__(self):
        self._bufs: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: torch.dtype, device) -> torch.Tensor:
        t = self._bufs.get(name)
        if t is None or t.shape != torch.Size(shape) or t.dtype != dtype or t.device != torch.device(device):
            t = torch.empty(shape, dtype=dtype, device=device)
            self._bufs[name] = t
        return t


def _workspace(sae: SparseAutoencoder) -> _Workspace:
    ws = getattr(sae, "_workspace", None)
    if ws is None:
        ws = _Workspace()
        object.__setattr__(sae, "_workspace", ws)  # not a parameter/buffer: never saved
    return ws


def _sampled_mm(a: torch.Tensor, b: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """``(a @ b)[rows, cols]`` for row-major sorted ``(rows, cols)`` without forming ``a @ b`` (SDDMM on a CSR pattern).

    Args:
        a: ``[B, H]``; b: ``[H, N]``; rows, cols: ``[nnz]`` int64 sorted by row; counts: ``[B]`` entries per row.

    Returns:
        ``[nnz]`` values in the order of ``(rows, cols)``.
    """
    nnz = rows.numel()
    if nnz == 0:
        return torch.zeros(0, dtype=a.dtype, device=a.device)
    crow = torch.cat([torch.zeros(1, dtype=torch.int64, device=a.device), torch.cumsum(counts, 0)])
    with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta"
        warnings.simplefilter("ignore", UserWarning)
        pattern = torch.sparse_csr_tensor(crow, cols, torch.zeros(nnz, dtype=a.dtype, device=a.device), (a.shape[0], b.shape[1]))
        return torch.sparse.sampled_addmm(pattern, a, b).values()


def _column_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``(a * b).sum(0)`` for ``[H, N]`` matrices, as a GEMV (strided column reductions are slow on CPU)."""
    return torch.mv((a * b).T, torch.ones(a.shape[0], dtype=a.dtype, device=a.device))


def compute_grads(sae: SparseAutoencoder, x: torch.Tensor, sparsity_coefficient: float, *, sparse: bool | None = None,
                  sparse_density: float = 0.15) -> StepStats:
    """Loss and gradients of one batch, written into ``p.grad`` without autograd (SPEC §6).

    Same loss and pseudo-gradients as ``sae.forward(x, lambda).loss.backward()`` (tested to round-off),
    computed either by the dense route (5 matmuls of size ``B x H x N`` into reused buffers) or, when
    the codes are sparse, by one dense matmul (the encoder) plus ``O(B * L0 * H)`` sparse work:
    decoding with ``embedding_bag`` and ``per_sample_weights``, ``dL/df`` on the support by a sampled
    matmul (``torch.sparse.sampled_addmm``), and the weight gradients with ``embedding_bag`` over the
    support grouped by latent.

    Args:
        sae: the model; its ``.grad`` fields are overwritten.
        x: ``[B, H]`` inputs in SAE coordinates (the parameters' dtype).
        sparsity_coefficient: ``lambda``.
        sparse: force the sparse (True) or dense (False) route; None chooses by the batch density.
        sparse_density: the fraction of active latents below which ``sparse=None`` picks the sparse route.

    Returns:
        :class:`StepStats`.
    """
    B, H = x.shape
    N = sae.n_latents
    lam = float(sparsity_coefficient)
    We = sae.encoder_weight.detach()
    D = sae.W_dec.detach()
    jump = sae.kind == "jumprelu"
    ws = _workspace(sae)
    dt, dev = x.dtype, x.device
    with torch.no_grad():
        # the one unavoidable dense matmul: pi = x W_e^T + b_e  [B, N]
        pi = torch.addmm(sae.b_enc.detach(), x, We.T, out=ws.get("pi", (B, N), dt, dev))
        mask = ws.get("mask", (B, N), torch.bool, dev)
        if jump:
            tau = sae.threshold.detach()
            torch.gt(pi, tau, out=mask)
        else:
            torch.gt(pi, 0, out=mask)
        nnz = int(torch.count_nonzero(mask))
        use_sparse = (nnz < sparse_density * B * N) if sparse is None else bool(sparse)
        if use_sparse:
            rows, cols = mask.nonzero(as_tuple=True)  # row-major
            counts = torch.bincount(rows, minlength=B)
            vals = pi.view(-1)[rows * N + cols]
            l1 = 0.0 if jump else float(vals.sum())
            offsets = torch.cumsum(counts, 0) - counts
            DT = torch.transpose(D, 0, 1).contiguous()  # [N, H]
            x_hat = F.embedding_bag(cols, DT, offsets, mode="sum", per_sample_weights=vals)
            resid = x_hat.add_(sae.b_dec.detach()).sub_(x)
            g_xhat = resid.mul(2.0 / B)
            # dL/df on the support: the sampled product (g_xhat D)[rows, cols]
            g_f = _sampled_mm(g_xhat, D, rows, cols, counts)
            g_pi = g_f if jump else g_f + lam / B
            # weight gradients: group the support by latent and sum rows with embedding_bag
            perm = torch.argsort(cols, stable=True)
            ccount = torch.bincount(cols, minlength=N)
            coffs = torch.cumsum(ccount, 0) - ccount
            rows_p = rows[perm]
            grad_D = F.embedding_bag(rows_p, g_xhat, coffs, mode="sum", per_sample_weights=vals[perm]).T  # [H, N]
            grad_We = F.embedding_bag(rows_p, x, coffs, mode="sum", per_sample_weights=g_pi[perm])  # [N, H]
            grad_be = torch.zeros(N, dtype=dt, device=dev).index_add_(0, cols, g_pi)
            if jump:  # pi and mask are no longer needed: reuse them for the kernel window |pi - tau| < eps/2
                u = pi.sub_(tau).abs_()
                win = torch.lt(u, 0.5 * sae.bandwidth, out=mask)
                wr, wc = win.nonzero(as_tuple=True)
                g_f_win = _sampled_mm(g_xhat, D, wr, wc, torch.bincount(wr, minlength=B))
        else:
            zero = torch.zeros((), dtype=dt, device=dev)
            f = torch.where(mask, pi, zero, out=ws.get("f", (B, N), dt, dev))
            l1 = 0.0 if jump else float(f.sum())
            x_hat = torch.addmm(sae.b_dec.detach(), f, D.T, out=ws.get("x_hat", (B, H), dt, dev))
            resid = x_hat.sub_(x)
            g_xhat = torch.mul(resid, 2.0 / B, out=ws.get("g_xhat", (B, H), dt, dev))
            grad_D = torch.mm(g_xhat.T, f, out=ws.get("grad_D", (H, N), dt, dev))  # [H, N]
            g_f = torch.mm(g_xhat, D, out=ws.get("g_f", (B, N), dt, dev))  # [B, N]
            if jump:
                u = torch.sub(pi, tau, out=f).abs_()  # f is no longer needed
                win = torch.lt(u, 0.5 * sae.bandwidth, out=ws.get("win", (B, N), torch.bool, dev))
                wr, wc = win.nonzero(as_tuple=True)
                g_f_win = g_f[wr, wc]
            g_pi = torch.where(mask, g_f if jump else g_f + lam / B, zero, out=g_f)
            grad_We = torch.mm(g_pi.T, x, out=ws.get("grad_We", (N, H), dt, dev))  # [N, H]
            grad_be = torch.mv(g_pi.T, torch.ones(B, dtype=dt, device=dev))  # column sum as a GEMV (much faster)
        mse = float(resid.pow(2).sum()) / B
        grad_bd = torch.mv(g_xhat.T, torch.ones(B, dtype=dt, device=dev))
        if jump:
            # dL/dtau_j = sum_b kappa_bj (g_f_bj (-tau_j / eps) - lambda / (B eps)); dL/dlog tau = tau dL/dtau
            # (the window |pi - tau| < eps/2 is kappa((pi - tau)/eps) = 1[|u| < 1/2])
            eps = sae.bandwidth
            contrib = g_f_win * (-tau[wc] / eps) - lam / (B * eps)
            grad_tau = torch.zeros(N, dtype=dt, device=dev).index_add_(0, wc, contrib)
            _set_grad(sae.log_threshold, (grad_tau * tau).to(torch.float32))
            sparsity = lam * nnz / B
        else:
            sparsity = lam * l1 / B
        if sae.tied:
            _set_grad(sae.W_dec, grad_D + grad_We.T)
        else:
            _set_grad(sae.W_dec, grad_D)
            _set_grad(sae.W_enc, grad_We)
        _set_grad(sae.b_dec, grad_bd)
        _set_grad(sae.b_enc, grad_be)
        tot = float(x.pow(2).sum())
        r2v = 1.0 - mse * B / tot if tot > 0 else float("nan")
    return StepStats(mse + sparsity, mse, sparsity, nnz / B, r2v, use_sparse)


def training_step(sae: SparseAutoencoder, optimizer: torch.optim.Optimizer, x: torch.Tensor, sparsity_coefficient: float, *,
                  fast: bool = True, sparse_density: float = 0.15) -> StepStats:
    """One optimiser step (SPEC §6): gradients, decoder-parallel gradient removed, Adam, decoder renormalised.

    Args:
        sae: the model.
        optimizer: e.g. ``Adam(params, betas=(0, 0.999))``.
        x: ``[B, H]`` batch in SAE coordinates.
        sparsity_coefficient: ``lambda`` for this step.
        fast: hand-written gradients (:func:`compute_grads`); False: autograd through :meth:`SparseAutoencoder.forward`.
        sparse_density: passed to :func:`compute_grads`.

    Returns:
        :class:`StepStats` of the batch before the update.
    """
    if fast:
        st = compute_grads(sae, x, sparsity_coefficient, sparse_density=sparse_density)
    else:
        optimizer.zero_grad(set_to_none=True)
        out = sae(x, sparsity_coefficient)
        out.loss.backward()
        mse = float(out.mse.detach())
        tot = float(x.pow(2).sum())
        st = StepStats(float(out.loss.detach()), mse, float(out.sparsity_loss.detach()), float(out.l0),
                       1.0 - mse * x.shape[0] / tot if tot > 0 else float("nan"), False)
    sae.remove_parallel_decoder_grad()
    optimizer.step()
    sae.normalize_decoder()
    return st


# ---------------------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------------------
def _prepare_inputs(acts: torch.Tensor, aip: AIP | None, config: SAEConfig) -> tuple[torch.Tensor, float]:
    acts = torch.as_tensor(acts)
    if acts.dim() != 2:
        raise ValueError(f"acts must be [n_tokens, d_model]; got shape {tuple(acts.shape)}")
    if config.whiten:
        if aip is None:
            raise ValueError("config.whiten=True needs the fitted AIP (or set whiten=False for the Euclidean [Alt])")
        x = torch.cat([aip.whiten(acts[s : s + 16384]) for s in range(0, acts.shape[0], 16384)])
        scale = math.sqrt(x.shape[1])
    else:
        x = acts.to(torch.float64)
        scale = math.sqrt(float(x.pow(2).sum(1).mean()))
        if scale == 0:
            raise ValueError("all activations are zero")
    return (x / scale).to(_DTYPES[config.dtype]).to(config.device), scale


def train_sae(acts: torch.Tensor, aip: AIP | None, config: SAEConfig, *, progress: bool = True) -> tuple[SparseAutoencoder, pd.DataFrame]:
    """Train a JumpReLU TSAE (or the ReLU + L1 baseline) on activations (paper §6, SPEC §6).

    Deterministic for a given ``config.seed`` (initialisation and batch order come from seeded
    generators; thread count and device must match for bitwise equality).

    Args:
        acts: ``[n_tokens, d_model]`` raw activations (any float dtype).
        aip: the fitted AIP (required when ``config.whiten``).
        config: the :class:`SAEConfig`.
        progress: show a tqdm bar (``TQDM_DISABLE=1`` silences it).

    Returns:
        ``(sae, history)``: the trained :class:`SparseAutoencoder` and a DataFrame with columns
        ``step, loss, mse, sparsity_loss, l0, r2, sparsity_coefficient, lr`` every ``config.log_every`` steps.

    Raises:
        ValueError: bad shapes, missing AIP, or an invalid configuration.
    """
    from tqdm import tqdm

    if config.n_steps < 0 or config.batch_size < 1:
        raise ValueError(f"need n_steps >= 0 and batch_size >= 1; got {config.n_steps}, {config.batch_size}")
    x_all, scale = _prepare_inputs(acts, aip, config)
    n, H = x_all.shape
    N = config.n_latents or 4 * H
    sae = SparseAutoencoder.init_random(H, N, seed=config.seed, kind=config.kind, tied=config.tied, whitened=config.whiten,
                                        input_scale=scale, bandwidth=config.bandwidth, init_threshold=config.init_threshold,
                                        dtype=_DTYPES[config.dtype], device=config.device)
    params = [p for p in sae.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=config.lr, betas=tuple(config.betas))
    g = torch.Generator().manual_seed(int(config.seed) + 1)
    perm = torch.randperm(n, generator=g)
    pos = 0
    rows: list[dict] = []
    bs = min(config.batch_size, n)
    bar = {} if progress else {"disable": True}  # leave `disable` unset so that TQDM_DISABLE=1 applies
    for step in tqdm(range(config.n_steps), desc=f"train {config.kind} SAE", mininterval=1.0, **bar):
        if pos + bs > n:
            perm, pos = torch.randperm(n, generator=g), 0
        x = x_all[perm[pos : pos + bs]]
        pos += bs
        lam = config.sparsity_coefficient * (min(1.0, (step + 1) / config.sparsity_warmup_steps) if config.sparsity_warmup_steps > 0 else 1.0)
        lr = config.lr
        if config.lr_decay_steps > 0:
            left = config.n_steps - step
            lr = config.lr * min(1.0, left / config.lr_decay_steps)
        for grp in opt.param_groups:
            grp["lr"] = lr
        st = training_step(sae, opt, x, lam, fast=config.fast, sparse_density=config.sparse_density)
        if step % config.log_every == 0 or step == config.n_steps - 1:
            rows.append(dict(step=step, loss=st.loss, mse=st.mse, sparsity_loss=st.sparsity_loss, l0=st.l0, r2=st.r2,
                             sparsity_coefficient=lam, lr=lr))
    sae.config = config  # type: ignore[attr-defined]
    return sae, pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------------------------------
# Persistence
# ---------------------------------------------------------------------------------------------------------------------
def save_sae(sae: SparseAutoencoder, path: str | os.PathLike) -> Path:
    """Save weights (safetensors, checksummed, atomic) with the architecture and config as JSON metadata. No pickle."""
    cfg = getattr(sae, "config", None)
    meta = dict(d_in=sae.d_in, n_latents=sae.n_latents, kind=sae.kind, tied=sae.tied, whitened=sae.whitened,
                input_scale=sae.input_scale, bandwidth=sae.bandwidth, dtype=str(sae.W_dec.dtype).removeprefix("torch."),
                config=cfg.to_dict() if isinstance(cfg, SAEConfig) else None)
    return save_tensors(path, {k: v.detach() for k, v in sae.state_dict().items()}, meta)


def load_sae(path: str | os.PathLike, device: str = "cpu") -> SparseAutoencoder:
    """Load an SAE written by :func:`save_sae`.

    Raises:
        FileNotFoundError: no such file.
        atomsnb.io.CacheCorruptError: truncated or checksum mismatch.
    """
    tensors, meta = load_tensors(path)
    sae = SparseAutoencoder(meta["d_in"], meta["n_latents"], kind=meta["kind"], tied=meta["tied"], whitened=meta["whitened"],
                            input_scale=meta["input_scale"], bandwidth=meta["bandwidth"], dtype=_DTYPES[meta["dtype"]], device=device)
    sae.load_state_dict(tensors)
    if meta.get("config") is not None:
        sae.config = SAEConfig.from_dict(meta["config"])  # type: ignore[attr-defined]
    return sae


# ---------------------------------------------------------------------------------------------------------------------
# Baselines
# ---------------------------------------------------------------------------------------------------------------------
class NeuronBaseline(NamedTuple):
    """Neurons as units (paper §4): identity dictionary, dense codes = the activations."""

    dictionary: torch.Tensor
    """``[d_model, d_model]`` identity (float64)."""
    codes: torch.Tensor
    """``[n_tokens, d_model]`` the activations themselves (float64)."""
    x_hat: torch.Tensor
    """``[n_tokens, d_model]`` the exact reconstruction (the activations)."""


def neuron_baseline(acts: torch.Tensor) -> NeuronBaseline:
    """The "neurons" unit set: ``D = I``, codes ``= acts``, reconstruction exact (SPEC §4)."""
    a = torch.as_tensor(acts).to(torch.float64)
    return NeuronBaseline(torch.eye(a.shape[1], dtype=torch.float64), a, a)


# ---------------------------------------------------------------------------------------------------------------------
# The identifiability construction (SPEC §5)
# ---------------------------------------------------------------------------------------------------------------------
class ThresholdInterval(NamedTuple):
    """The thresholds that recover every support exactly, ``(eps K d_max, d_min - eps (K-1) d_max)`` (SPEC §5)."""

    low: torch.Tensor | float
    """``eps K delta_max`` (a threshold must exceed it)."""
    high: torch.Tensor | float
    """``delta_min - eps (K - 1) delta_max`` (a threshold must be below it)."""
    nonempty: torch.Tensor | bool
    """``low < high``, i.e. ``delta_min > eps (2K - 1) delta_max``."""

    @property
    def mid(self):
        """Midpoint ``(low + high) / 2`` (meaningful only where non-empty)."""
        return (self.low + self.high) / 2


def feasible_threshold_interval(eps, K: int, delta_min: float, delta_max: float) -> ThresholdInterval:
    """Open interval of thresholds ``tau`` for exact support recovery by the construction (paper §5, SPEC §5).

    Args:
        eps: coherence ``max_{j != k} |G_jk|`` (float), or per-atom ``eps_j`` (tensor) for a vector ``tau``.
        K: maximum support size.
        delta_min, delta_max: range of the non-zero (non-negative) coefficients.

    Returns:
        A :class:`ThresholdInterval`; empty iff ``delta_min <= eps (2K - 1) delta_max``.

    Raises:
        ValueError: ``K < 1`` or ``0 < delta_min <= delta_max`` violated.
    """
    if K < 1:
        raise ValueError(f"K must be >= 1; got {K}")
    if not 0 < delta_min <= delta_max:
        raise ValueError(f"need 0 < delta_min <= delta_max; got {delta_min}, {delta_max}")
    low = eps * K * delta_max
    high = delta_min - eps * (K - 1) * delta_max
    nonempty = (low < high) if isinstance(low, torch.Tensor) else bool(low < high)
    return ThresholdInterval(low, high, nonempty)


class ConstructedTSAE(NamedTuple):
    """The theorem's TSAE (SPEC §5) and the normalised dictionary it is built from."""

    sae: SparseAutoencoder
    """Raw-coordinate SAE with ``W_dec = D``, ``W_enc = D^T S``, no biases, JumpReLU at ``tau`` (float64)."""
    dictionary: torch.Tensor
    """``[d_model, N]`` atoms rescaled to ``||d_j||_S = 1``."""
    atom_norms: torch.Tensor
    """``[N]`` the original ``||d_j||_S``: codes of the normalised dictionary are ``delta_j * ||d_j||_S``."""
    eps: float
    """Global AIP coherence of the atoms."""
    eps_per_atom: torch.Tensor
    """``[N]`` per-atom coherence ``eps_j``."""


def construct_tsae(dictionary: torch.Tensor, aip: AIP, tau) -> ConstructedTSAE:
    """Build the TSAE of the identifiability theorem (paper §5, SPEC §5).

    The atoms are rescaled to unit AIP norm, then ``W_dec = D``, ``W_enc = D^T S``, no biases and
    ``sigma_tau(p) = p 1[p > tau]``, so that the pre-activations are ``p = G delta`` for
    ``m = D delta``. Inside :func:`feasible_threshold_interval` this recovers supports exactly; the
    reconstruction is exact only when ``(G_SS - I) delta_S = 0`` (use :func:`refit_on_support`).

    Args:
        dictionary: ``[d_model, N]`` atoms (raw coordinates).
        aip: the fitted AIP.
        tau: positive scalar or ``[N]`` thresholds, in units of the normalised codes.

    Returns:
        A :class:`ConstructedTSAE`.

    Raises:
        ValueError: an atom with zero AIP norm, or a non-positive threshold.
    """
    from .metrics import coherence

    D = torch.as_tensor(dictionary).to(torch.float64)
    norms = aip.norm(D.T)
    if bool((norms == 0).any()):
        raise ValueError("an atom has zero AIP norm")
    Dn = D / norms[None, :]
    coh = coherence(Dn, aip, n_bins=1, max_exact_pairs=0)
    W_enc = (Dn.T @ aip.S)  # [N, H]: p = D^T S m
    sae = SparseAutoencoder.from_weights(W_enc, None, Dn, None, tau, kind="jumprelu", dtype=torch.float64)
    return ConstructedTSAE(sae, Dn, norms, coh.eps, coh.eps_per_atom)


def refit_on_support(acts: torch.Tensor, support: torch.Tensor, dictionary: torch.Tensor, aip: AIP, *, chunk: int = 4096) -> torch.Tensor:
    """Least-squares codes on a given support, ``delta_S = G_SS^{-1} p_S`` in the AIP metric (SPEC §5).

    Solves ``min_delta ||m - D_S delta||_S`` per row as a least-squares problem on the whitened atoms
    (``G_SS = D~_S^T D~_S``, ``p_S = D~_S^T W m``); collinear atoms get the minimum-norm solution.
    When ``m`` lies in the span of ``D_S`` the reconstruction ``D delta`` is exact.

    Args:
        acts: ``[n_tokens, d_model]`` raw activations.
        support: ``[n_tokens, N]`` bool (or codes, whose non-zeros are taken).
        dictionary: ``[d_model, N]`` raw atoms (the scale of the returned codes is theirs).
        aip: the fitted AIP.

    Returns:
        ``[n_tokens, N]`` float64 codes, zero off the support.
    """
    acts = torch.as_tensor(acts)
    S = torch.as_tensor(support) != 0
    D = torch.as_tensor(dictionary).to(torch.float64)
    Dw = aip.whiten(D.T)  # [N, r] rows = W d_j
    n, N = S.shape
    out = torch.zeros(n, N, dtype=torch.float64)
    kmax = int(S.sum(1).max()) if n else 0
    if kmax == 0:
        return out
    for s in range(0, n, chunk):
        Sc = S[s : s + chunk]
        idx = torch.sort((~Sc).to(torch.int8), dim=1, stable=True).indices[:, :kmax]  # support first
        valid = torch.gather(Sc, 1, idx)
        A = Dw[idx] * valid[..., None]  # [c, kmax, r]; padded atoms zeroed
        y = aip.whiten(acts[s : s + chunk])  # [c, r]
        sol = torch.linalg.lstsq(A.transpose(1, 2), y[..., None], driver="gelsd").solution[..., 0]  # [c, kmax]
        out[s : s + chunk].scatter_(1, idx, torch.where(valid, sol, torch.zeros((), dtype=sol.dtype)))
    return out
