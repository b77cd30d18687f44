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

The same trainer fits the standard ReLU + L1 SAE ("features", paper §4) with ``kind="relu"``. The sparsity
coefficients carry SAELens' names: ``l0_coefficient`` (JumpReLU) and ``l1_coefficient`` (ReLU); the defaults for
a model of width ``d`` live in :meth:`SAEConfig.for_model`. TopK and BatchTopK SAEs (``kind="topk"`` /
``"batchtopk"``, ``k`` active latents per token; Gao et al. 2024, Bussmann et al. 2024) train through the same loop
with EleutherAI/sparsify's conventions: the encoder reads ``x - b_d``, the loss is the FVU
``sum ||x - x_hat||^2 / sum ||x - mean(x)||^2`` (sparsify's default ``auxk_alpha = 0``; AuxK and multi-TopK are not
implemented), and codes, loss and gradients equal sparsify 1.3.3's ``SparseCoder`` (``tests/test_sparsify.py``).
Neurons are the identity dictionary with dense codes (:func:`neuron_baseline`).

:func:`train_sae` reads a stream of shuffled batches (:mod:`atomsnb.store`) from an in-memory tensor or an
on-disk activation store through the same loop, whitens each batch on its own, tracks dead latents (tokens
since each latent last fired, as EleutherAI/sparsify), keeps a training history, and checkpoints and resumes
bit-exactly. On the CPU the step computes the gradients by hand (:func:`compute_grads`): dense with reused
buffers at low sparsity, and, once the codes are sparse, decoding with ``embedding_bag`` and sampled matrix
products so that only the encoder's forward matmul stays dense. ``tests/test_sae.py`` checks that it equals
autograd through :meth:`SparseAutoencoder.forward`; on CUDA the step is autograd, optionally under bf16 autocast.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import numbers
import os
import warnings
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Literal, NamedTuple

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from .aip import AIP
from .io import DTYPES, CacheCorruptError, load_tensors, save_tensors, tensor_digest
from .metrics import coherence
from .models import resolve_device
from .store import ActivationStore, MemorySource, ShuffledBatches

__all__ = [
    "SAEConfig",
    "StepFunction",
    "JumpReLUFunction",
    "rectangle",
    "topk_codes",
    "TOPK_KINDS",
    "BATCHTOPK_THRESHOLD_RATE",
    "SAEOutput",
    "SparseAutoencoder",
    "StepStats",
    "TrainingHistory",
    "DeadLatentTracker",
    "DEFAULT_L0_COEFFICIENT",
    "DEFAULT_L1_COEFFICIENT",
    "DEFAULT_DEAD_AFTER_TOKENS",
    "CHECKPOINT_FILE",
    "compute_grads",
    "training_step",
    "training_memory_bytes",
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

_PARAM_DTYPES = ("float32", "float64")  # master weights and the whitening solve (names of atomsnb.io.DTYPES)
_AUTOCAST_DTYPES = ("bfloat16", "float16")
_KINDS = ("jumprelu", "relu", "topk", "batchtopk")
#: The kinds whose sparsity is a number of active latents ``k`` rather than a penalty (:attr:`SAEConfig.k`).
TOPK_KINDS = ("topk", "batchtopk")
#: Rate of the exponential moving average that sets a BatchTopK SAE's inference threshold (SAELens' ``topk_threshold_lr``).
BATCHTOPK_THRESHOLD_RATE = 0.01

#: Default L0 coefficient of the TSAE (jumprelu) when none is given (the chapters' atoms coefficient).
DEFAULT_L0_COEFFICIENT = 3e-3
#: Default L1 coefficient of the ReLU + L1 SAE when none is given (the chapters' features coefficient).
DEFAULT_L1_COEFFICIENT = 3e-2
#: Tokens without firing after which a latent counts as dead during training (EleutherAI/sparsify's
#: ``dead_feature_threshold``).
DEFAULT_DEAD_AFTER_TOKENS = 10_000_000


def _bad(name: str, value, allowed: str) -> ValueError:
    return ValueError(f"SAEConfig.{name}={value!r} is not allowed: {allowed}")


def _finite(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def _is_int(v) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


# ---------------------------------------------------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class SAEConfig:
    """Every knob of a sparse autoencoder and its training run (SPEC §6), validated on construction.

    **Sparsity coefficients** (SAELens' names): a JumpReLU TSAE takes ``l0_coefficient`` (the L0 penalty
    ``lambda sum_j H(pi_j - tau_j)``), a ReLU SAE takes ``l1_coefficient`` (``lambda sum_j f_j``). One config carries
    the one of its ``kind``; giving the other kind's coefficient is an error (the value would be silently
    ignored). Leave it None for the default (:data:`DEFAULT_L0_COEFFICIENT`, :data:`DEFAULT_L1_COEFFICIENT`);
    :attr:`coefficient` is the value in force. Switch kind with :meth:`with_kind`.

    **Defaults for a model of width d** live in one place, :meth:`for_model` (capacity, thresholds and
    bandwidth scaled with ``1/sqrt(d)``, schedule). The plain defaults below are SAELens' (SPEC §6).

    Raises:
        ValueError: any field out of range, naming the field, the value and what is allowed.
    """

    kind: Literal["jumprelu", "relu", "topk", "batchtopk"] = "jumprelu"
    """"jumprelu": the TSAE (L0 penalty, per-latent threshold); "relu": the standard ReLU + L1 SAE baseline;
    "topk": the ``k`` largest ReLU pre-activations of each token (Gao et al. 2024, as EleutherAI/sparsify); "batchtopk":
    the ``B k`` largest of the whole batch in training, a threshold at inference (Bussmann et al. 2024)."""
    n_latents: int | None = None
    """Dictionary size ``N = |D| >= 1``; None -> ``4 x`` the input width (paper §6)."""
    l0_coefficient: float | None = None
    """L0 coefficient ``lambda`` per token (jumprelu only; None: :data:`DEFAULT_L0_COEFFICIENT`)."""
    l1_coefficient: float | None = None
    """L1 coefficient ``lambda`` per token (relu only; None: :data:`DEFAULT_L1_COEFFICIENT`)."""
    k: int | None = None
    """Active latents per token of a "topk" / "batchtopk" SAE (required there, None for the other kinds)."""
    sparsity_warmup_steps: int = 0
    """Steps over which ``lambda`` rises linearly from 0 (SAELens ``l0_warm_up_steps`` / ``l1_warm_up_steps``)."""
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
    """Tokens per step (at most the training tokens)."""
    n_steps: int = 1000
    """Optimiser steps (>= 1)."""
    seed: int = 0
    """Seed of the initialisation and of the batch stream."""
    whiten: bool = True
    """Train in whitened coordinates ``x = W m / sqrt(H)`` (SPEC §6); False: Euclidean MSE on ``m / c`` ([Alt])."""
    tied: bool = False
    """Tie the encoder to the decoder, ``W_e = D~^T`` (the theorem's family; an ablation, SPEC §6)."""
    fast: bool | None = None
    """Gradients: True, hand-written (:func:`compute_grads`, sparse when the codes are); False, autograd through
    :meth:`SparseAutoencoder.forward`; None (auto): hand-written on the CPU, autograd on CUDA or under autocast
    (the hand-written step's point is sparse CPU work and reused buffers; on a GPU dense autograd matmuls under
    bf16 autocast are the usual fast path, and autocast does not reach the hand-written step's ``out=`` matmuls)."""
    sparse_density: float = 0.15
    """The hand-written step decodes sparsely when the fraction of active latents is below this (CPU crossover ~0.2)."""
    log_every: int = 10
    """Steps between rows of the training history (>= 1)."""
    device: str = "cpu"
    """Torch device of the parameters and batches: "cpu", "cuda", "cuda:N" or "auto"."""
    dtype: str = "float32"
    """Parameter (master weight) dtype: "float32" or "float64"; ``log tau`` is always float32."""
    autocast_dtype: str | None = None
    """None, or "bfloat16"/"float16": matmuls under ``torch.autocast`` with float32 master weights and threshold."""
    whiten_dtype: str | None = None
    """dtype of the per-batch triangular solve ``x = (c L)^{-1} m`` (None: ``dtype``; "float64" for exactness:
    at cond(E[mm^T]) = 1e8 float32 whitening has a median relative error of 2e-4 per token, 5e-3 at 1e11)."""
    buffer_tokens: int = 1 << 18
    """Rows of the mixing buffer of the batch stream (:class:`atomsnb.store.ShuffledBatches`)."""
    dead_after_tokens: int = DEFAULT_DEAD_AFTER_TOKENS
    """A latent is dead in the training history when it has not fired for this many tokens (sparsify's
    ``dead_feature_threshold``; ``frac_dead`` stays 0 until that many tokens have been seen)."""

    def __post_init__(self):
        self.validate()

    def validate(self) -> "SAEConfig":
        """Check every field; return ``self``.

        Raises:
            ValueError: naming the field, its value and what is allowed.
        """
        if self.kind not in _KINDS:
            raise _bad("kind", self.kind, f"one of {_KINDS}")
        if self.n_latents is not None and (not _is_int(self.n_latents) or self.n_latents < 1):
            raise _bad("n_latents", self.n_latents, "an integer >= 1, or None for 4 x d_model")
        if self.kind in TOPK_KINDS:
            for other in ("l0_coefficient", "l1_coefficient"):
                if getattr(self, other) is not None:
                    raise _bad(other, getattr(self, other), f"None for kind={self.kind!r}, which takes k "
                               f"(use SAEConfig.with_kind to switch kinds)")
            if not _is_int(self.k) or self.k < 1 or (self.n_latents is not None and self.k > self.n_latents):
                raise _bad("k", self.k, f"an integer in [1, n_latents={self.n_latents}] for kind={self.kind!r}")
        else:
            if self.k is not None:
                raise _bad("k", self.k, f"None for kind={self.kind!r} (k belongs to {TOPK_KINDS})")
            own, other = ("l0_coefficient", "l1_coefficient") if self.kind == "jumprelu" else ("l1_coefficient", "l0_coefficient")
            if getattr(self, other) is not None:
                raise _bad(other, getattr(self, other), f"None for kind={self.kind!r}, which takes {own} "
                           f"(use SAEConfig.with_kind to switch kinds)")
            c = getattr(self, own)
            if c is not None and not (_finite(c) and c >= 0):
                raise _bad(own, c, "a finite number >= 0")
        for name in ("bandwidth", "init_threshold", "lr"):
            v = getattr(self, name)
            if not (_finite(v) and v > 0):
                raise _bad(name, v, "a finite number > 0")
        for name in ("batch_size", "n_steps", "log_every", "buffer_tokens", "dead_after_tokens"):
            v = getattr(self, name)
            if not _is_int(v) or v < 1:
                raise _bad(name, v, "an integer >= 1")
        for name in ("sparsity_warmup_steps", "lr_decay_steps"):
            v = getattr(self, name)
            if not _is_int(v) or v < 0:
                raise _bad(name, v, "an integer >= 0")
        if not _is_int(self.seed) or self.seed < 0:
            raise _bad("seed", self.seed, "an integer >= 0")
        if len(tuple(self.betas)) != 2 or not all(_finite(b) and 0 <= b < 1 for b in self.betas):
            raise _bad("betas", self.betas, "two numbers in [0, 1)")
        if not (_finite(self.sparse_density) and 0 <= self.sparse_density <= 1):
            raise _bad("sparse_density", self.sparse_density, "a number in [0, 1]")
        if self.dtype not in _PARAM_DTYPES:
            raise _bad("dtype", self.dtype, f"one of {sorted(_PARAM_DTYPES)} (master weights; use autocast_dtype for bf16 matmuls)")
        if self.whiten_dtype is not None and self.whiten_dtype not in _PARAM_DTYPES:
            raise _bad("whiten_dtype", self.whiten_dtype, f"None or one of {sorted(_PARAM_DTYPES)}")
        if self.autocast_dtype is not None:
            if self.autocast_dtype not in _AUTOCAST_DTYPES:
                raise _bad("autocast_dtype", self.autocast_dtype, f"None or one of {sorted(_AUTOCAST_DTYPES)}")
            if self.dtype != "float32":
                raise _bad("dtype", self.dtype, "'float32' under autocast (float32 master weights)")
            if self.fast:
                raise _bad("fast", self.fast, "None or False under autocast (the hand-written step does not autocast)")
        if self.fast not in (None, True, False):
            raise _bad("fast", self.fast, "True, False or None (auto)")
        if not isinstance(self.device, str) or not (self.device == "auto" or _parses_as_device(self.device)):
            raise _bad("device", self.device, "'cpu', 'cuda', 'cuda:N' or 'auto'")
        return self

    @property
    def coefficient(self) -> float:
        """The sparsity coefficient in force: ``l0_coefficient`` (jumprelu) or ``l1_coefficient`` (relu), or its default;
        ``k`` for the TopK kinds (whose step ignores the coefficient argument and reads ``k`` from the SAE)."""
        if self.kind in TOPK_KINDS:
            return float(self.k)
        if self.kind == "jumprelu":
            return float(DEFAULT_L0_COEFFICIENT if self.l0_coefficient is None else self.l0_coefficient)
        return float(DEFAULT_L1_COEFFICIENT if self.l1_coefficient is None else self.l1_coefficient)

    @property
    def coefficient_name(self) -> str:
        """``"l0_coefficient"`` (jumprelu), ``"l1_coefficient"`` (relu) or ``"k"`` (topk, batchtopk)."""
        if self.kind in TOPK_KINDS:
            return "k"
        return "l0_coefficient" if self.kind == "jumprelu" else "l1_coefficient"

    def coefficient_at(self, step: int) -> float:
        """The sparsity coefficient ``lambda`` at optimiser step ``step`` (0-based): :attr:`coefficient` warmed up
        linearly over the first ``sparsity_warmup_steps`` steps, ``coefficient x min(1, (step + 1) / warmup)``
        (SAELens ``l0_warm_up_steps`` / ``l1_warm_up_steps``; dictionary_learning ``get_sparsity_warmup_fn``); the
        full coefficient from the first step when ``sparsity_warmup_steps = 0``.

        Raises:
            ValueError: ``step`` not an integer >= 0.
        """
        _check_step(step)
        if self.kind in TOPK_KINDS:
            return float(self.k)  # no warm-up: k is fixed (sparsify's k_decay_steps is not implemented)
        warmup = self.sparsity_warmup_steps
        return self.coefficient * (min(1.0, (step + 1) / warmup) if warmup > 0 else 1.0)

    def learning_rate_at(self, step: int) -> float:
        """Adam's learning rate at optimiser step ``step`` (0-based): ``lr``, decaying linearly over the last
        ``lr_decay_steps`` steps, ``lr x min(1, (n_steps - step) / lr_decay_steps)`` (dictionary_learning
        ``get_lr_schedule`` with ``decay_start = n_steps - lr_decay_steps``, no warm-up); the last step runs at
        ``lr / lr_decay_steps``. Constant when ``lr_decay_steps = 0``.

        Raises:
            ValueError: ``step`` not an integer >= 0.
        """
        _check_step(step)
        if self.lr_decay_steps > 0:
            return self.lr * min(1.0, (self.n_steps - step) / self.lr_decay_steps)
        return self.lr

    def with_kind(self, kind: str, coefficient: float | None = None, *, whiten: bool | None = None) -> "SAEConfig":
        """A copy for another kind, its coefficient set (and the other kinds' cleared), e.g.
        ``config.with_kind("relu", 0.03, whiten=False)`` for the features of a TSAE's config, or
        ``config.with_kind("topk", 32)`` (the coefficient of a TopK kind is ``k``)."""
        if kind not in _KINDS:
            raise _bad("kind", kind, f"one of {_KINDS}")
        coeffs = {"l0_coefficient": coefficient if kind == "jumprelu" else None,
                  "l1_coefficient": coefficient if kind == "relu" else None,
                  "k": (int(coefficient) if coefficient is not None and float(coefficient).is_integer() else coefficient)
                  if kind in TOPK_KINDS else None}
        return replace(self, kind=kind, whiten=self.whiten if whiten is None else whiten, **coeffs)

    @classmethod
    def for_model(cls, d_model: int, *, kind: str = "jumprelu", coefficient: float | None = None, capacity: float = 4,
                  n_steps: int = 1000, batch_size: int = 2048, whiten: bool | None = None, seed: int = 0,
                  device: str = "cpu", **overrides) -> "SAEConfig":
        """The book's SAE defaults for a model of width ``d_model`` (the one place they live).

        - ``n_latents = capacity x d_model`` (paper §6: 4);
        - in whitened coordinates scaled to ``E||x||^2 = 1`` a coordinate is about ``1/sqrt(d)``, so the initial
          JumpReLU threshold is ``0.8/sqrt(d)`` and the bandwidth ``0.16/sqrt(d)`` (0.05 and 0.01 at ``d = 256``);
          SAELens' 1e-3 (SPEC §6) leaves the threshold too small to move within a CPU-sized budget;
        - Adam ``betas=(0, 0.999)``, lr 3e-3 decaying linearly over the last 20 % of steps, ``lambda`` warmed up over
          the first 20 %;
        - ``whiten`` defaults to the paper's recipe of each kind: True for the TSAE, False for the ReLU + L1 features;
        - ``dead_after_tokens``: sparsify's 10M tokens, or the last 10 % of the run's tokens if that is fewer, so
          that ``frac_dead`` means something in a short run.

        Args:
            d_model: input width ``H``.
            kind: "jumprelu" or "relu".
            coefficient: the kind's sparsity coefficient (default :data:`DEFAULT_L0_COEFFICIENT` /
                :data:`DEFAULT_L1_COEFFICIENT`).
            capacity: ``|D| / d_model``.
            n_steps, batch_size, seed, device: as the fields.
            whiten: None for the kind's default.
            **overrides: any other field.

        Raises:
            ValueError: ``d_model < 1``, ``capacity x d_model < 1``, or a bad field.
        """
        if not _is_int(d_model) or d_model < 1:
            raise ValueError(f"d_model must be an integer >= 1; got {d_model!r}")
        n_latents = int(round(capacity * d_model))
        if n_latents < 1:
            raise ValueError(f"capacity={capacity} gives n_latents={n_latents} for d_model={d_model}; need >= 1")
        base = dict(kind=kind, n_latents=n_latents, init_threshold=0.8 / math.sqrt(d_model),
                    bandwidth=0.16 / math.sqrt(d_model), lr=3e-3, n_steps=n_steps, batch_size=batch_size,
                    sparsity_warmup_steps=n_steps // 5, lr_decay_steps=n_steps // 5, seed=seed, device=device,
                    whiten=(kind == "jumprelu") if whiten is None else whiten,
                    dead_after_tokens=max(1, min(DEFAULT_DEAD_AFTER_TOKENS, n_steps * batch_size // 10)))
        if kind in TOPK_KINDS:
            base["k"] = coefficient
        else:
            base["l0_coefficient" if kind == "jumprelu" else "l1_coefficient"] = coefficient
        base.update(overrides)
        return cls(**base)

    def to_dict(self) -> dict:
        """JSON-serialisable copy (tuples become lists)."""
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "SAEConfig":
        """Inverse of :meth:`to_dict`.

        Raises:
            TypeError: an unknown key (a config written before ``sparsity_coefficient`` was renamed names the new keys).
        """
        d = dict(d)
        if "sparsity_coefficient" in d:
            raise TypeError("SAEConfig.sparsity_coefficient was renamed: use l0_coefficient (kind='jumprelu') or "
                            "l1_coefficient (kind='relu'), as SAELens does")
        if "betas" in d:
            d["betas"] = tuple(d["betas"])
        return cls(**d)


def _check_step(step) -> None:
    if not _is_int(step) or step < 0:
        raise ValueError(f"step={step!r} is not allowed: an integer >= 0 (0-based optimiser step)")


def _parses_as_device(name: str) -> bool:
    try:
        torch.device(name)
    except (RuntimeError, ValueError):
        return False
    return True


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
def topk_codes(pi: torch.Tensor, k: int, *, batch: bool = False) -> torch.Tensor:
    """TopK codes ``[B, N]`` from pre-activations ``pi`` ``[B, N]``: ``relu(pi)`` kept at the ``k`` largest entries of each
    row (``batch=False``; Gao et al. 2024, EleutherAI/sparsify ``fused_encoder``), or at the ``B k`` largest entries of
    the whole batch (``batch=True``, BatchTopK: Bussmann et al. 2024; SAELens ``BatchTopK``, dictionary_learning
    ``BatchTopKSAE``), zero elsewhere. Differentiable: the gradient reaches the selected positive entries only.
    Ties are broken by ``torch.topk``; a selected entry with ``relu(pi) = 0`` is a zero code.

    Raises:
        ValueError: ``k`` not an integer in ``[1, N]``.
    """
    B, N = pi.shape
    if not _is_int(k) or not 1 <= k <= N:
        raise ValueError(f"k={k!r} is not allowed: an integer in [1, N={N}]")
    a = F.relu(pi)
    if batch:
        vals, idx = a.reshape(-1).topk(min(B * k, B * N), sorted=False)
        return torch.zeros_like(a).reshape(-1).scatter(0, idx, vals).view(B, N)
    vals, idx = a.topk(k, dim=-1, sorted=False)
    return torch.zeros_like(a).scatter(1, idx, vals)


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
    - ``log_threshold`` ``[N]`` float32: ``log tau`` (jumprelu; batchtopk: the inference threshold, one value
      repeated, not a trained parameter).

    TopK kinds (``k`` active latents; the convention of EleutherAI/sparsify and SAELens' "topk"): the encoder reads the
    input minus the decoder bias, ``pi = W_e (x - b_d) + b_e``, and ``f`` keeps the ``k`` largest of ``relu(pi)`` per
    token ("topk") or the ``B k`` largest of the whole batch in training ("batchtopk", Bussmann et al. 2024;
    :func:`topk_codes`), zero elsewhere. At inference a BatchTopK SAE is a JumpReLU with the scalar threshold
    ``theta`` kept in ``log_threshold``: ``f = relu(pi) 1[relu(pi) > theta]``, where ``theta`` is the moving average
    (rate :data:`BATCHTOPK_THRESHOLD_RATE`) of the smallest positive code selected in each training batch
    (SAELens ``BatchTopKTrainingSAE``; dictionary_learning uses the same minimum with rate 0.001).

    Input coordinates: with ``whitened=True`` the SAE works on ``x = W m / input_scale`` (SPEC §6);
    with ``whitened=False`` on ``x = m / input_scale`` (raw coordinates, e.g. an external SAE or the
    construction, with ``input_scale = 1``). :meth:`encode_raw`, :meth:`reconstruct_raw` and
    :meth:`dictionary_raw` map to raw activation coordinates, where the reconstruction is
    ``m_hat = dictionary_raw @ codes_raw + bias_raw``.
    """

    def __init__(self, d_in: int, n_latents: int, *, kind: str = "jumprelu", tied: bool = False, whitened: bool = True,
                 input_scale: float = 1.0, bandwidth: float = 1e-3, init_threshold: float = 1e-3,
                 dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu", k: int | None = None):
        super().__init__()
        if kind not in _KINDS:
            raise ValueError(f"kind must be one of {_KINDS}; got {kind!r}")
        if d_in < 1 or n_latents < 1:
            raise ValueError(f"d_in and n_latents must be >= 1; got {d_in}, {n_latents}")
        if kind in TOPK_KINDS and not (_is_int(k) and 1 <= k <= n_latents):
            raise ValueError(f"k={k!r} is not allowed for kind={kind!r}: an integer in [1, n_latents={n_latents}]")
        if kind not in TOPK_KINDS and k is not None:
            raise ValueError(f"k={k!r} is not allowed for kind={kind!r}: None (k belongs to {TOPK_KINDS})")
        self.k = None if k is None else int(k)
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
                     whitened: bool = False, input_scale: float = 1.0, k: int | None = None) -> "SparseAutoencoder":
        """Wrap an external SAE (or a constructed one) given by its weights, for evaluation.

        The SAE computes ``f = sigma(W_enc m + b_enc)`` with ``sigma`` a JumpReLU at ``threshold``
        (``kind="jumprelu"``, the default when a threshold is given) or a ReLU, and ``m_hat = W_dec f + b_dec``.
        By default it acts on raw coordinates (``whitened=False``, ``input_scale=1``).

        Args:
            W_enc: ``[N, H]``.
            b_enc: ``[N]`` or None (zeros).
            W_dec: ``[H, N]`` (columns are the atoms; not renormalised).
            b_dec: ``[H]`` or None (zeros).
            threshold: scalar or ``[N]`` positive thresholds (JumpReLU; BatchTopK's inference threshold), or None.
            kind: one of ``"jumprelu"``, ``"relu"``, ``"topk"``, ``"batchtopk"`` (default from ``threshold``).
            k: active latents per token of a TopK kind (whose encoder reads ``x - b_dec``).

        Raises:
            ValueError: inconsistent shapes or a non-positive threshold.
        """
        W_enc, W_dec = torch.as_tensor(W_enc), torch.as_tensor(W_dec)
        N, H = W_enc.shape
        if W_dec.shape != (H, N):
            raise ValueError(f"W_dec must be [H={H}, N={N}] to match W_enc [N, H]; got {tuple(W_dec.shape)}")
        kind = kind or ("jumprelu" if threshold is not None else "relu")
        sae = cls(H, N, kind=kind, whitened=whitened, input_scale=input_scale, dtype=dtype, k=k)
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
        """``pi = W_e x + b_e`` ``[B, N]`` for inputs ``x`` ``[B, H]`` in SAE coordinates (TopK kinds:
        ``W_e (x - b_d) + b_e``)."""
        if self.kind in TOPK_KINDS:
            x = x - self.b_dec
        return F.linear(x, self.encoder_weight, self.b_enc)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Codes ``f`` ``[B, N]`` of inputs ``x`` ``[B, H]`` in SAE coordinates (JumpReLU, ReLU, TopK per token;
        BatchTopK at inference: its threshold, see the class docstring)."""
        pi = self.pre_acts(x)
        if self.kind == "jumprelu":
            return JumpReLUFunction.apply(pi, self.threshold, self.bandwidth)
        if self.kind == "topk":
            return topk_codes(pi, self.k, batch=False)
        if self.kind == "batchtopk":
            a = F.relu(pi)
            return a * (a > self.threshold[0]).to(a.dtype)
        return F.relu(pi)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """Reconstruction ``D~ f + b_d`` ``[B, H]`` from codes ``f`` ``[B, N]``."""
        return F.linear(f, self.W_dec, self.b_dec)

    def forward(self, x: torch.Tensor, coefficient: float = 0.0) -> SAEOutput:
        """Full forward pass and loss (SPEC §6); differentiable with the JumpReLU pseudo-gradients.

        TopK kinds: the training codes (:func:`topk_codes`, BatchTopK selecting over the batch) and the loss is
        sparsify's FVU, ``sum_b ||x_b - x_hat_b||^2 / sum_b ||x_b - mean(x)||^2`` (``sparsity_loss = 0``; sparsify's
        AuxK term, off by default there with ``auxk_alpha = 0``, is not implemented).

        Args:
            x: ``[B, H]`` inputs in SAE coordinates.
            coefficient: ``lambda``, the ``l0_coefficient`` (jumprelu) or ``l1_coefficient`` (relu); ignored by TopK.

        Returns:
            An :class:`SAEOutput`.
        """
        pi = self.pre_acts(x)
        if self.kind in TOPK_KINDS:
            f = topk_codes(pi, self.k, batch=self.kind == "batchtopk")
            x_hat = self.decode(f)
            sq = (x_hat - x).pow(2).sum()
            fvu = sq / (x - x.mean(0)).pow(2).sum()
            zero = torch.zeros((), dtype=x.dtype, device=x.device)
            return SAEOutput(x_hat, f, pi, (f != 0).sum(-1).to(torch.float64).mean(), sq / x.shape[0], zero, fvu)
        if self.kind == "jumprelu":
            tau = self.threshold
            f = JumpReLUFunction.apply(pi, tau, self.bandwidth)
            active = StepFunction.apply(pi, tau, self.bandwidth)
            sparsity = coefficient * active.sum(-1).mean()
            l0 = (pi > tau).sum(-1).to(torch.float64).mean()
        else:
            f = F.relu(pi)
            sparsity = coefficient * f.sum(-1).mean()
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
    """Scalars of one training step (floats) and the latents that fired."""

    loss: float
    """``mse + sparsity_loss``."""
    mse: float
    """``mean_b ||x - x_hat||^2`` in the SAE's input coordinates."""
    sparsity_loss: float
    """``lambda * mean_b L0`` (jumprelu) or ``lambda * mean_b ||f||_1`` (relu)."""
    l0: float
    """Mean active latents per input."""
    sum_sq: float
    """``sum_b ||x_b||^2`` of the batch: ``1 - mse * B / sum_sq`` is the batch's uncentred R^2 in the SAE's input
    coordinates (the training history's ``batch_r2_aip`` when the SAE is whitened, ``batch_r2_uncentred`` if not)."""
    sparse: bool
    """Whether the sparse route was used."""
    fired: torch.Tensor | None = None
    """``[N]`` bool: latents active on at least one input of the batch."""
    min_active: float | None = None
    """BatchTopK: the smallest positive code selected in the batch (sets the inference threshold); else None."""


def _set_grad(p: torch.Tensor, g: torch.Tensor) -> None:
    if p.grad is None or p.grad.shape != p.shape:
        p.grad = g.detach().contiguous().to(p.dtype)
    else:
        p.grad.copy_(g)


def _set_param_grads(sae: SparseAutoencoder, g, grad_bd: torch.Tensor) -> None:
    """Store a step's hand-written gradients on the SAE's parameters (``W_dec`` takes the encoder's too when tied);
    ``g`` holds ``grad_D``, ``grad_We`` and ``grad_be`` (every step route), ``grad_bd`` the decoder bias's."""
    if sae.tied:
        _set_grad(sae.W_dec, g.grad_D + g.grad_We.T)
    else:
        _set_grad(sae.W_dec, g.grad_D)
        _set_grad(sae.W_enc, g.grad_We)
    _set_grad(sae.b_dec, grad_bd)
    _set_grad(sae.b_enc, g.grad_be)


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


def compute_grads(sae: SparseAutoencoder, x: torch.Tensor, coefficient: float, *, sparse: bool | None = None,
                  sparse_density: float = 0.15) -> StepStats:
    """Loss and gradients of one batch, written into ``p.grad`` without autograd (SPEC §6).

    Same loss and pseudo-gradients as ``sae.forward(x, lambda).loss.backward()`` (tested to round-off),
    computed either by the dense route (5 matmuls of size ``B x H x N`` into reused buffers) or, when
    the codes are sparse, by one dense matmul (the encoder) plus ``O(B * L0 * H)`` sparse work:
    decoding with ``embedding_bag`` and ``per_sample_weights``, ``dL/df`` on the support by a sampled
    matmul (``torch.sparse.sampled_addmm``), and the weight gradients with ``embedding_bag`` over the
    support grouped by latent.

    TopK kinds always take the sparse route (:func:`_topk_grads`; ``coefficient``, ``sparse`` and ``sparse_density``
    are ignored): the loss is sparsify's FVU, whose gradients equal sparsify's ``SparseCoder`` (tested on its output).

    Args:
        sae: the model; its ``.grad`` fields are overwritten.
        x: ``[B, H]`` inputs in SAE coordinates (the parameters' dtype).
        coefficient: ``lambda``, the ``l0_coefficient`` (jumprelu) or ``l1_coefficient`` (relu).
        sparse: force the sparse (True) or dense (False) route; None chooses by the batch density.
        sparse_density: the fraction of active latents below which ``sparse=None`` picks the sparse route.

    Returns:
        :class:`StepStats`.
    """
    if sae.kind in TOPK_KINDS:
        return _topk_grads(sae, x)
    B = x.shape[0]
    lam = float(coefficient)
    jump = sae.kind == "jumprelu"
    ws = _workspace(sae)
    with torch.no_grad():
        pi, mask, tau = _encode_support(sae, x, ws)
        nnz = int(torch.count_nonzero(mask))
        use_sparse = (nnz < sparse_density * B * sae.n_latents) if sparse is None else bool(sparse)
        route = _sparse_route if use_sparse else _dense_route
        g = route(sae, x, pi, mask, tau, lam, ws)
        mse = float(g.resid.pow(2).sum()) / B
        grad_bd = torch.mv(g.g_xhat.T, torch.ones(B, dtype=x.dtype, device=x.device))
        if jump:
            _set_grad(sae.log_threshold, _log_threshold_grad(sae, tau, g.window_latents, g.g_f_window, lam, B))
            sparsity = lam * nnz / B
        else:
            sparsity = lam * g.l1 / B
        _set_param_grads(sae, g, grad_bd)
        tot = float(x.pow(2).sum())
    return StepStats(mse + sparsity, mse, sparsity, nnz / B, tot, use_sparse, g.fired)


class _RouteGrads(NamedTuple):
    """What a gradient route of :func:`compute_grads` hands back (shapes for ``B`` inputs, ``H = d_in``, ``N`` latents)."""

    resid: torch.Tensor
    """``[B, H]`` residual ``x_hat - x``."""
    g_xhat: torch.Tensor
    """``[B, H]`` ``dL/dx_hat = 2 resid / B``."""
    grad_D: torch.Tensor
    """``[H, N]`` the decoder's gradient through the reconstruction."""
    grad_We: torch.Tensor
    """``[N, H]`` the encoder's gradient."""
    grad_be: torch.Tensor
    """``[N]`` the encoder bias' gradient."""
    fired: torch.Tensor
    """``[N]`` bool: latents active on at least one input."""
    l1: float
    """``sum_b ||f_b||_1`` (relu; 0.0 for jumprelu)."""
    window_latents: torch.Tensor | None
    """jumprelu: ``[nw]`` latent of each entry in the kernel window ``|pi - tau| < epsilon / 2`` (else None)."""
    g_f_window: torch.Tensor | None
    """jumprelu: ``[nw]`` ``dL/df`` at those entries (else None)."""


def _encode_support(sae: SparseAutoencoder, x: torch.Tensor, ws: _Workspace):
    """``(pi, mask, tau)``: pre-activations ``pi = x W_e^T + b_e`` ``[B, N]`` (the one unavoidable dense matmul), the
    support ``mask = pi > tau`` (jumprelu; ``pi > 0`` for relu) ``[B, N]`` bool, and ``tau`` ``[N]`` (None for relu);
    ``pi`` and ``mask`` live in the workspace's buffers."""
    B, N = x.shape[0], sae.n_latents
    pi = torch.addmm(sae.b_enc.detach(), x, sae.encoder_weight.detach().T, out=ws.get("pi", (B, N), x.dtype, x.device))
    mask = ws.get("mask", (B, N), torch.bool, x.device)
    if sae.kind == "jumprelu":
        tau = sae.threshold.detach()
        torch.gt(pi, tau, out=mask)
        return pi, mask, tau
    torch.gt(pi, 0, out=mask)
    return pi, mask, None


def _sparse_route(sae: SparseAutoencoder, x: torch.Tensor, pi: torch.Tensor, mask: torch.Tensor, tau, lam: float,
                  ws: _Workspace, *, x_enc: torch.Tensor | None = None, g_scale: float | None = None,
                  support: tuple[torch.Tensor, torch.Tensor] | None = None) -> _RouteGrads:
    """Gradients when the codes are sparse: ``O(B L0 H)`` work on the support (SPEC §6).

    Decodes with ``embedding_bag`` and ``per_sample_weights``, takes ``dL/df`` on the support by a sampled matmul
    (:func:`_sampled_mm`) and the weight gradients by ``embedding_bag`` over the support grouped by latent. Overwrites
    ``pi`` and ``mask`` (the jumprelu kernel window reuses them). ``x_enc``: the encoder's input when it is not ``x``
    (TopK: ``x - b_dec``); ``g_scale``: ``dL/dx_hat = g_scale * resid`` (default ``2 / B``, the batch-mean MSE);
    ``support``: the ``(rows, cols)`` of the codes, row-major, when the caller has them (TopK; ``mask`` then unused).
    """
    B, N = pi.shape
    jump = tau is not None
    D = sae.W_dec.detach()
    rows, cols = mask.nonzero(as_tuple=True) if support is None else support  # row-major
    counts = torch.bincount(rows, minlength=B)
    vals = pi.view(-1)[rows * N + cols]
    l1 = 0.0 if jump else float(vals.sum())
    offsets = torch.cumsum(counts, 0) - counts
    DT = torch.transpose(D, 0, 1).contiguous()  # [N, H]
    x_hat = F.embedding_bag(cols, DT, offsets, mode="sum", per_sample_weights=vals)
    resid = x_hat.add_(sae.b_dec.detach()).sub_(x)
    g_xhat = resid.mul(2.0 / B if g_scale is None else g_scale)
    # dL/df on the support: the sampled product (g_xhat D)[rows, cols]
    g_f = _sampled_mm(g_xhat, D, rows, cols, counts)
    g_pi = g_f if jump else g_f + lam / B
    # weight gradients: group the support by latent and sum rows with embedding_bag
    perm = torch.argsort(cols, stable=True)
    ccount = torch.bincount(cols, minlength=N)
    coffs = torch.cumsum(ccount, 0) - ccount
    rows_p = rows[perm]
    grad_D = F.embedding_bag(rows_p, g_xhat, coffs, mode="sum", per_sample_weights=vals[perm]).T  # [H, N]
    grad_We = F.embedding_bag(rows_p, x if x_enc is None else x_enc, coffs, mode="sum",
                              per_sample_weights=g_pi[perm])  # [N, H]
    grad_be = torch.zeros(N, dtype=x.dtype, device=x.device).index_add_(0, cols, g_pi)
    wc = g_f_win = None
    if jump:  # pi and mask are no longer needed: reuse them for the kernel window |pi - tau| < eps/2
        u = pi.sub_(tau).abs_()
        win = torch.lt(u, 0.5 * sae.bandwidth, out=mask)
        wr, wc = win.nonzero(as_tuple=True)
        g_f_win = _sampled_mm(g_xhat, D, wr, wc, torch.bincount(wr, minlength=B))
    return _RouteGrads(resid, g_xhat, grad_D, grad_We, grad_be, ccount > 0, l1, wc, g_f_win)


def _topk_grads(sae: SparseAutoencoder, x: torch.Tensor) -> StepStats:
    """Loss (sparsify's FVU) and gradients of a TopK / BatchTopK SAE, written into ``p.grad`` (see :func:`compute_grads`).

    ``pi = W_e (x - b_d) + b_e`` by one dense matmul (the bias folded in: ``b_e - W_e b_d``), the support from
    ``torch.topk`` of ``pi`` (per row, or over the flattened batch for BatchTopK) restricted to positive codes (the
    same support as the top k of ``relu(pi)``),
    then :func:`_sparse_route` with ``dL/dx_hat = 2 resid / T``, ``T = sum_b ||x_b - mean(x)||^2``. The decoder bias
    also reaches the encoder input: ``dL/db_d = sum_b dL/dx_hat_b - W_e^T dL/db_e``.
    """
    B, N = x.shape[0], sae.n_latents
    ws = _workspace(sae)
    with torch.no_grad():
        We, bd = sae.encoder_weight.detach(), sae.b_dec.detach()
        bias = sae.b_enc.detach() - torch.mv(We, bd)
        # no ReLU pass over [B, N]: the positive entries among the top k of pi are those among the top k of relu(pi)
        pi = torch.addmm(bias, x, We.T, out=ws.get("pi", (B, N), x.dtype, x.device))
        # the support, row-major, straight from torch.topk (no [B, N] mask to fill and scan)
        if sae.kind == "batchtopk":
            vals, idx = pi.view(-1).topk(min(B * sae.k, B * N), sorted=False)
            flat = idx[vals > 0].sort().values
            rows, cols = flat.div(N, rounding_mode="floor"), flat.remainder(N)
        else:
            vals, idx = pi.topk(sae.k, dim=1, sorted=False)
            idx, order = idx.sort(dim=1)
            keep = (vals.gather(1, order) > 0).view(-1)
            rows = torch.arange(B, device=x.device).repeat_interleave(sae.k)[keep]
            cols = idx.reshape(-1)[keep]
        pos = vals[vals > 0]
        min_active = float(pos.min()) if sae.kind == "batchtopk" and pos.numel() else None
        nnz = int(pos.numel())
        centred = torch.sub(x, x.mean(0), out=ws.get("centred", tuple(x.shape), x.dtype, x.device))
        total = float(torch.dot(centred.view(-1), centred.view(-1)))
        x_enc = torch.sub(x, bd, out=centred)
        g = _sparse_route(sae, x, pi, None, None, 0.0, ws, x_enc=x_enc, g_scale=2.0 / total, support=(rows, cols))
        sq = float(g.resid.pow(2).sum())
        grad_bd = torch.mv(g.g_xhat.T, torch.ones(B, dtype=x.dtype, device=x.device)) - torch.mv(We.T, g.grad_be)
        _set_param_grads(sae, g, grad_bd)
        tot = float(x.pow(2).sum())
    return StepStats(sq / total, sq / B, 0.0, nnz / B, tot, True, g.fired, min_active)


def _dense_route(sae: SparseAutoencoder, x: torch.Tensor, pi: torch.Tensor, mask: torch.Tensor, tau, lam: float,
                 ws: _Workspace) -> _RouteGrads:
    """Gradients by 5 dense matmuls of size ``B x H x N`` into the workspace's reused buffers (SPEC §6)."""
    (B, H), N = x.shape, mask.shape[1]
    jump = tau is not None
    dt, dev = x.dtype, x.device
    D = sae.W_dec.detach()
    zero = torch.zeros((), dtype=dt, device=dev)
    fired = mask.any(0)
    f = torch.where(mask, pi, zero, out=ws.get("f", (B, N), dt, dev))
    l1 = 0.0 if jump else float(f.sum())
    x_hat = torch.addmm(sae.b_dec.detach(), f, D.T, out=ws.get("x_hat", (B, H), dt, dev))
    resid = x_hat.sub_(x)
    g_xhat = torch.mul(resid, 2.0 / B, out=ws.get("g_xhat", (B, H), dt, dev))
    grad_D = torch.mm(g_xhat.T, f, out=ws.get("grad_D", (H, N), dt, dev))  # [H, N]
    g_f = torch.mm(g_xhat, D, out=ws.get("g_f", (B, N), dt, dev))  # [B, N]
    wc = g_f_win = None
    if jump:
        u = torch.sub(pi, tau, out=f).abs_()  # f is no longer needed
        win = torch.lt(u, 0.5 * sae.bandwidth, out=ws.get("win", (B, N), torch.bool, dev))
        wr, wc = win.nonzero(as_tuple=True)
        g_f_win = g_f[wr, wc]
    g_pi = torch.where(mask, g_f if jump else g_f + lam / B, zero, out=g_f)
    grad_We = torch.mm(g_pi.T, x, out=ws.get("grad_We", (N, H), dt, dev))  # [N, H]
    grad_be = torch.mv(g_pi.T, torch.ones(B, dtype=dt, device=dev))  # column sum as a GEMV (much faster)
    return _RouteGrads(resid, g_xhat, grad_D, grad_We, grad_be, fired, l1, wc, g_f_win)


def _log_threshold_grad(sae: SparseAutoencoder, tau: torch.Tensor, window_latents: torch.Tensor,
                        g_f_window: torch.Tensor, lam: float, B: int) -> torch.Tensor:
    """``dL/dlog tau`` ``[N]`` float32 from the entries in the kernel window (Rajamanoharan et al. 2024, eqs. 10-11).

    ``dL/dtau_j = sum_b kappa_bj (g_f_bj (-tau_j / eps) - lambda / (B eps))`` and ``dL/dlog tau = tau dL/dtau``; the
    window ``|pi - tau| < eps/2`` is ``kappa((pi - tau)/eps) = 1[|u| < 1/2]``.
    """
    eps = sae.bandwidth
    contrib = g_f_window * (-tau[window_latents] / eps) - lam / (B * eps)
    grad_tau = torch.zeros(sae.n_latents, dtype=g_f_window.dtype, device=g_f_window.device).index_add_(
        0, window_latents, contrib)
    return (grad_tau * tau).to(torch.float32)


def training_step(sae: SparseAutoencoder, optimizer: torch.optim.Optimizer, x: torch.Tensor, coefficient: float, *,
                  fast: bool = True, sparse_density: float = 0.15, autocast_dtype: torch.dtype | None = None) -> StepStats:
    """One optimiser step (SPEC §6): gradients, decoder-parallel gradient removed, Adam, decoder renormalised.

    Args:
        sae: the model.
        optimizer: e.g. ``Adam(params, betas=(0, 0.999))``.
        x: ``[B, H]`` batch in SAE coordinates.
        coefficient: ``lambda`` for this step (``l0_coefficient`` or ``l1_coefficient``, warm-up applied).
        fast: hand-written gradients (:func:`compute_grads`); False: autograd through :meth:`SparseAutoencoder.forward`.
        sparse_density: passed to :func:`compute_grads`.
        autocast_dtype: run the autograd forward under ``torch.autocast`` at this dtype (matmuls in bf16/fp16, master
            weights and the threshold stay float32); needs ``fast=False``.

    Returns:
        :class:`StepStats` of the batch before the update.
    """
    if fast:
        if autocast_dtype is not None:
            raise ValueError("autocast needs fast=False: the hand-written step's matmuls write into float buffers")
        st = compute_grads(sae, x, coefficient, sparse_density=sparse_density)
    else:
        optimizer.zero_grad(set_to_none=True)
        ctx = torch.autocast(device_type=x.device.type, dtype=autocast_dtype) if autocast_dtype is not None \
            else contextlib.nullcontext()
        with ctx:
            out = sae(x, coefficient)
        out.loss.backward()
        lat = out.latents.detach()
        pos = lat[lat > 0]
        min_active = float(pos.min()) if sae.kind == "batchtopk" and pos.numel() else None
        st = StepStats(float(out.loss.detach()), float(out.mse.detach()), float(out.sparsity_loss.detach()), float(out.l0),
                       float(x.detach().float().pow(2).sum()), False, (lat > 0).any(0), min_active)
    sae.remove_parallel_decoder_grad()
    optimizer.step()
    sae.normalize_decoder()
    if st.min_active is not None:  # BatchTopK's inference threshold: a moving average of the batch's smallest code
        with torch.no_grad():
            theta = float(sae.log_threshold[0].exp())
            theta += BATCHTOPK_THRESHOLD_RATE * (st.min_active - theta)
            sae.log_threshold.fill_(math.log(theta))
    return st


# ---------------------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------------------
def training_memory_bytes(d_in: int, n_latents: int, batch_size: int, *, dtype: str = "float32",
                          sparse_density: float = 0.15) -> int:
    """Bytes the trainer holds besides the batch stream (an upper bound of the formula's terms, used by
    :func:`atomsnb.budget.resources` and checked against measured RSS in ``tests/test_stream_training.py``).

    - ``10 N H`` parameter-sized tensors: ``W_enc``, ``W_dec``, their gradients, Adam's two moments, and the
      hand-written step's two gradient buffers;
    - ``(4 s + 2) B N`` bytes of per-batch codes (``s`` = bytes per element): ``pi``, ``f``, ``dL/df``, a spare, two
      bool masks; plus the sparse route's index lists, ``40 x sparse_density x B N`` bytes;
    - ``6 B H`` batch-sized tensors (raw batch, whitened batch, reconstruction, residual...) and the whitening factor
      ``2 H^2`` in float64.
    """
    s = DTYPES[dtype].itemsize
    B, H, N = int(batch_size), int(d_in), int(n_latents)
    return int(10 * N * H * s + (4 * s + 2) * B * N + 40 * sparse_density * B * N + 6 * B * H * s + 2 * H * H * 8)


class _BatchPrep:
    """Raw batches ``[B, d_model]`` (CPU, any float dtype) -> SAE inputs ``[B, r]`` on the device (SPEC §6).

    Whitened: ``x = (c L)^{-1} m`` with ``L`` the Cholesky factor of ``E[mm^T]`` (from the AIP, float64) scaled by
    ``c = sqrt(r)`` once, applied to each batch by a triangular solve in ``whiten_dtype`` (a matmul by
    ``W`` for a pseudo-inverse AIP); otherwise ``x = m / c`` with ``c^2 = E||m||^2``. On CUDA the batch is copied
    through a reused pinned buffer with ``non_blocking=True``.
    """

    def __init__(self, aip: AIP | None, whiten: bool, scale: float, d_model: int, device: torch.device,
                 dtype: torch.dtype, whiten_dtype: torch.dtype):
        self.whiten, self.scale, self.device, self.dtype, self.wdt = whiten, float(scale), device, dtype, whiten_dtype
        self.pinv = False
        if whiten:
            eye = torch.eye(d_model, dtype=torch.float64)
            if aip.pinv:
                self.pinv = True
                self.factor = (aip.whiten(eye) / scale).to(device=device, dtype=whiten_dtype)  # [H, r]: x = m @ W^T / c
            else:
                L = aip.unwhiten(eye).T  # [H, H] lower triangular, M = L L^T
                self.factor = (L * scale).T.contiguous().to(device=device, dtype=whiten_dtype)  # (c L)^T, upper
        self._pinned: list[torch.Tensor] = []
        self._events: list = []
        self._turn = 0

    def _to_device(self, m: torch.Tensor) -> torch.Tensor:
        if self.device.type != "cuda":
            return m
        i = self._turn % 2
        self._turn += 1
        if len(self._pinned) <= i or self._pinned[i].shape != m.shape or self._pinned[i].dtype != m.dtype:
            buf = torch.empty(m.shape, dtype=m.dtype).pin_memory()
            if len(self._pinned) <= i:
                self._pinned.append(buf)
                self._events.append(None)
            else:
                self._pinned[i] = buf
        elif self._events[i] is not None:
            self._events[i].synchronize()  # the previous copy out of this buffer has finished
        self._pinned[i].copy_(m)
        out = self._pinned[i].to(self.device, non_blocking=True)
        ev = torch.cuda.Event()
        ev.record()
        self._events[i] = ev
        return out

    def __call__(self, m: torch.Tensor) -> torch.Tensor:
        m = self._to_device(m)
        if self.whiten:
            m = m.to(self.wdt)
            if self.pinv:
                x = m @ self.factor
            else:
                # x (cL)^T = m, solved as (cL) x^T = m^T: the result's transpose is row-major (solving with
                # left=False returns a column-major batch, over which the sparse step's embedding_bag is ~20x slower)
                x = torch.linalg.solve_triangular(self.factor.T, m.T, upper=False).T
            return x.to(self.dtype)
        return (m.to(self.wdt) / self.scale).to(self.dtype)


def _history_names(config: SAEConfig) -> tuple[str, str]:
    return ("batch_r2_aip" if config.whiten else "batch_r2_uncentred"), config.coefficient_name


#: Name of the checkpoint file inside ``checkpoint_dir``.
CHECKPOINT_FILE = "checkpoint.safetensors"


def _run_fingerprint(config: SAEConfig, source, n_tokens: int, aip: AIP | None) -> dict:
    d = {"config": config.to_dict(), "data": source.fingerprint(), "n_tokens": int(n_tokens), "data_dtype": str(source.dtype)}
    if config.whiten:
        d["aip"] = tensor_digest({"M": aip.second_moment}) + f"|{aip.n_tokens}|{aip.ridge}|{aip.pinv}"
    return d


def _save_checkpoint(path: Path, sae: SparseAutoencoder, opt: torch.optim.Optimizer, step: int, since_fired: torch.Tensor,
                     rows: list[dict], run: dict, scale: float) -> None:
    tensors = {f"sae.{k}": v.detach() for k, v in sae.state_dict().items()}
    st = opt.state_dict()
    for i, s in st["state"].items():
        for k, v in s.items():
            tensors[f"opt.{i}.{k}"] = torch.as_tensor(v).detach()
    tensors["tokens_since_fired"] = since_fired.detach()
    state = {"step": int(step), "position": int(step), "history": rows, "run": run, "scale": float(scale),
             "param_groups": st["param_groups"], "sae": dict(d_in=sae.d_in, n_latents=sae.n_latents)}
    blob = json.dumps(state, sort_keys=True, default=str)
    save_tensors(path, tensors, {"state": blob, "state_sha256": hashlib.sha256(blob.encode()).hexdigest()})


def _load_checkpoint(path: Path) -> tuple[dict, dict]:
    tensors, meta = load_tensors(path)
    blob = meta.get("state")
    if not isinstance(blob, str) or hashlib.sha256(blob.encode()).hexdigest() != meta.get("state_sha256"):
        raise CacheCorruptError(f"checkpoint {path} has damaged metadata (its SHA-256 does not match); delete it to restart")
    return tensors, json.loads(blob)


def _check_checkpoint_dir(checkpoint_dir, checkpoint_every) -> Path | None:
    if checkpoint_dir is None:
        if checkpoint_every is not None:
            raise ValueError(f"checkpoint_every={checkpoint_every!r} needs a checkpoint_dir")
        return None
    if checkpoint_every is not None and (not _is_int(checkpoint_every) or checkpoint_every < 1):
        raise ValueError(f"checkpoint_every={checkpoint_every!r} is not allowed: an integer >= 1 (steps), or None "
                         "(only a final checkpoint)")
    d = Path(checkpoint_dir).expanduser()
    if d.exists() and not d.is_dir():
        raise ValueError(f"checkpoint_dir {str(d)!r} exists and is not a directory")
    probe = d
    while not probe.exists():
        probe = probe.parent
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ValueError(f"checkpoint_dir {str(d)!r} is not writable (no write permission on {str(probe)!r})")
    return d


class TrainingHistory:
    """The training history of :func:`train_sae`: one row every ``config.log_every`` steps and at the last step.

    Columns, in order: ``step, loss, mse, sparsity_loss, l0`` (the step's :class:`StepStats`), the training batch's
    uncentred R^2 ``1 - mse B / sum_b ||x_b||^2`` named after its coordinates (``batch_r2_aip`` when whitened,
    ``batch_r2_uncentred`` otherwise; ``batch_`` because :func:`atomsnb.metrics.r2_aip` and the results' ``r2_aip``
    are the R^2 of a whole, usually held-out, set, not of one training batch), ``frac_dead_recent``
    (:class:`DeadLatentTracker`: not fired in the last ``dead_feature_threshold`` tokens; ``frac_dead`` of
    :mod:`atomsnb.metrics` is the fraction never fired on a whole evaluated set), the coefficient in force under its SAELens name (``l0_coefficient`` /
    ``l1_coefficient``, warm-up included) and ``lr``. Rows restored from a checkpoint continue the list
    (dictionary_learning logs the same quantities every ``log_steps``).
    """

    def __init__(self, config: SAEConfig):
        self.log_every, self.last_step = config.log_every, config.n_steps - 1
        self.r2_name, self.coefficient_name = _history_names(config)
        self.columns = ["step", "loss", "mse", "sparsity_loss", "l0", self.r2_name, "frac_dead_recent",
                        self.coefficient_name, "lr"]
        self.rows: list[dict] = []

    def due(self, step: int) -> bool:
        """Whether ``step`` (0-based) gets a row: every ``log_every`` steps from 0, and the last step."""
        return step % self.log_every == 0 or step == self.last_step

    def log(self, step: int, stats: StepStats, batch_size: int, coefficient: float, lr: float,
            frac_dead_recent: float) -> None:
        """Append the row of ``step``; the batch R^2 is NaN for an all-zero batch (``sum_sq = 0``)."""
        r2 = 1.0 - stats.mse * batch_size / stats.sum_sq if stats.sum_sq > 0 else float("nan")
        self.rows.append({"step": step, "loss": stats.loss, "mse": stats.mse, "sparsity_loss": stats.sparsity_loss,
                          "l0": stats.l0, self.r2_name: r2, "frac_dead_recent": frac_dead_recent,
                          self.coefficient_name: coefficient,
                          "lr": lr})

    def restore(self, rows: list[dict], where: str) -> None:
        """Continue from a checkpoint's rows.

        Raises:
            ValueError: a row whose columns are not :attr:`columns` (a checkpoint written by another version of the
                trainer), naming ``where`` and the columns.
        """
        for row in rows:
            if set(row) != set(self.columns):  # the checkpoint's JSON sorts the keys
                raise ValueError(f"the checkpoint in {where!r} has history columns {sorted(row)}, this trainer writes "
                                 f"{self.columns}: it was written by another version of atomsnb; delete it to restart")
        self.rows = list(rows)

    def frame(self) -> pd.DataFrame:
        """The rows as a DataFrame with :attr:`columns` (empty with these columns when nothing was logged)."""
        return pd.DataFrame(self.rows, columns=self.columns)


class DeadLatentTracker:
    """Tokens since each latent last fired, and the fraction counted dead during training (EleutherAI/sparsify's
    ``num_tokens_since_fired`` and ``dead_feature_threshold``). Not :class:`atomsnb.metrics.DeadLatents`, the latents
    that never fire on an evaluated set.

    A latent is dead once it has not fired for ``dead_after_tokens`` tokens, so ``fraction`` stays 0 until that
    many tokens have been seen. The counters (``[N]`` int64 on the training device) go into checkpoints.
    """

    def __init__(self, n_latents: int, dead_after_tokens: int, device: torch.device | str = "cpu"):
        self.dead_after_tokens = int(dead_after_tokens)
        self.tokens_since_fired = torch.zeros(n_latents, dtype=torch.int64, device=device)

    def update(self, fired: torch.Tensor, n_tokens: int) -> None:
        """Count a batch of ``n_tokens`` tokens; reset the latents in ``fired`` (``[N]`` bool) to 0."""
        self.tokens_since_fired.add_(n_tokens)
        self.tokens_since_fired.masked_fill_(fired, 0)

    def fraction(self) -> float:
        """The fraction of latents that have not fired for ``dead_after_tokens`` tokens."""
        return float((self.tokens_since_fired >= self.dead_after_tokens).sum()) / self.tokens_since_fired.numel()


def _training_source(data, config: SAEConfig, aip: AIP | None, n_tokens: int | None):
    """Validate the trainer's inputs before any work; return ``(source, P)``: the data as a store or
    :class:`atomsnb.store.MemorySource`, and the number of training rows ``P``.

    Raises:
        TypeError: ``config`` not an :class:`SAEConfig`, ``data`` of another type.
        ValueError: as :func:`train_sae` (NaN/inf rows of a tensor, ``n_tokens`` out of range, ``batch_size`` above
            ``P``, a missing or mismatched AIP).
    """
    if not isinstance(config, SAEConfig):
        raise TypeError(f"config must be an SAEConfig; got {type(config).__name__}")
    config.validate()
    if isinstance(data, (ActivationStore, MemorySource)):
        source = data
    elif isinstance(data, torch.Tensor):
        source = MemorySource(data)
        for s in range(0, source.n_tokens, 65536):  # min/max propagate NaN and inf: no full-size mask
            chunk = data[s:s + 65536]
            lo, hi = torch.aminmax(chunk)
            if not (math.isfinite(float(lo)) and math.isfinite(float(hi))):
                bad = ~torch.isfinite(chunk)
                raise ValueError(f"training activations contain {int(bad.sum())} NaN/inf values in rows {s}.."
                                 f"{s + chunk.shape[0] - 1} (first in row {s + int(bad.any(1).nonzero()[0])}); check the "
                                 "model dtype (bf16 overflow?) or the input text")
    else:
        raise TypeError(f"data must be a [n_tokens, d_model] tensor, an ActivationStore or a MemorySource; got "
                        f"{type(data).__name__}")
    P = source.n_tokens if n_tokens is None else n_tokens
    if not _is_int(P) or not 1 <= P <= source.n_tokens:
        raise ValueError(f"n_tokens={n_tokens!r} is out of range: the data hold {source.n_tokens} activations "
                         f"(allowed 1..{source.n_tokens})")
    P = int(P)
    if config.batch_size > P:
        raise ValueError(f"SAEConfig.batch_size={config.batch_size} exceeds the {P} training activations: lower "
                         "batch_size to at most the number of activations")
    if config.whiten:
        if aip is None:
            raise ValueError("config.whiten=True needs the fitted AIP (or set whiten=False for the Euclidean [Alt])")
        if aip.d_model != source.d_model:
            raise ValueError(f"the AIP was fitted on d_model={aip.d_model}, the activations have d_model={source.d_model}")
    return source, P


def _input_scale(config: SAEConfig, aip: AIP | None, source, n_tokens: int) -> tuple[int, float]:
    """``(d_in, c)``: the SAE's input width and the scale ``c`` of its inputs ``x = W m / c`` or ``m / c`` (SPEC §6).

    Whitened: ``d_in = rank(W)`` and ``c = sqrt(d_in)``, so that ``E||x||^2 = 1``; raw: ``d_in = d_model`` and
    ``c^2 = E||m||^2`` over the first ``min(n_tokens, 2^20)`` training rows.

    Raises:
        ValueError: all those rows are zero.
    """
    if config.whiten:
        return aip.rank, math.sqrt(aip.rank)
    n_scale = min(n_tokens, 1 << 20)  # E||m||^2 from the first 2^20 training rows (all of them in small runs)
    tot = 0.0
    for s in range(0, n_scale, 65536):
        tot += float(source.read(s, min(s + 65536, n_scale)).to(torch.float64).pow(2).sum())
    scale = math.sqrt(tot / n_scale)
    if scale == 0:
        raise ValueError("all activations are zero: nothing to train on")
    return source.d_model, scale


def _training_batches(source, config: SAEConfig, n_tokens: int, start: int, prep: _BatchPrep):
    """The SAE inputs of steps ``start, start + 1, ...``: the seeded stream of shuffled batches
    (:class:`atomsnb.store.ShuffledBatches`, one batch per step, so a resumed run reads on from ``start``), each
    batch checked for NaN/inf and prepared by ``prep`` (whitened, scaled, on the device).

    Raises:
        ValueError: a batch holds NaN/inf, naming its step.
    """
    stream = ShuffledBatches(source, config.batch_size, n_tokens=n_tokens, seed=config.seed,
                             buffer_tokens=config.buffer_tokens).iter_from(start)
    step = start
    while True:
        m = next(stream)
        lo, hi = torch.aminmax(m)
        if not (math.isfinite(float(lo)) and math.isfinite(float(hi))):
            raise ValueError(f"the batch of step {step} holds NaN/inf activations (rows of the source; check the store)")
        yield prep(m)
        step += 1


def _init_model(config: SAEConfig, d_in: int, scale: float, dtype: torch.dtype,
                device: torch.device) -> tuple[SparseAutoencoder, torch.optim.Adam]:
    """The SAE at its seeded initialisation (:meth:`SparseAutoencoder.init_random`: unit-norm decoder, ``W_e = D~^T``,
    JumpReLU threshold ``init_threshold`` and bandwidth from the config) and Adam over its trainable parameters
    (``log tau`` only for jumprelu, no ``W_enc`` when tied), ``betas = config.betas`` (SPEC §6)."""
    sae = SparseAutoencoder.init_random(d_in, config.n_latents or 4 * d_in, seed=config.seed, kind=config.kind, k=config.k,
                                        tied=config.tied, whitened=config.whiten, input_scale=scale,
                                        bandwidth=config.bandwidth, init_threshold=config.init_threshold, dtype=dtype,
                                        device=device)
    opt = torch.optim.Adam([p for p in sae.parameters() if p.requires_grad], lr=config.lr, betas=tuple(config.betas))
    return sae, opt


class _Precision(NamedTuple):
    """The dtypes and the gradient route of a training run, from its config and device."""

    params: torch.dtype
    """Master weights (``config.dtype``)."""
    whiten: torch.dtype
    """The per-batch whitening solve (``config.whiten_dtype``, default ``config.dtype``)."""
    autocast: torch.dtype | None
    """``torch.autocast`` dtype of the autograd step, or None."""
    fast: bool
    """Hand-written gradients (:func:`compute_grads`); auto: on the CPU without autocast."""

    @classmethod
    def of(cls, config: SAEConfig, device: torch.device) -> _Precision:
        adt = DTYPES[config.autocast_dtype] if config.autocast_dtype else None
        fast = config.fast if config.fast is not None else (device.type == "cpu" and adt is None)
        return cls(DTYPES[config.dtype], DTYPES[config.whiten_dtype or config.dtype], adt, fast)


class _Checkpoints:
    """Where and when :func:`train_sae` saves its state: every ``every`` steps (None: only at the end) and at the
    end, in ``directory/CHECKPOINT_FILE`` (one file, atomic, checksummed); nothing when ``directory`` is None. The
    run's fingerprint (config, data, AIP) goes in, so that another run's checkpoint is refused on resume."""

    def __init__(self, directory: Path | None, every: int | None, config: SAEConfig, source, n_tokens: int,
                 aip: AIP | None, scale: float):
        self.path = directory / CHECKPOINT_FILE if directory is not None else None
        self.every, self.n_steps, self.scale = every, config.n_steps, scale
        self.run = _run_fingerprint(config, source, n_tokens, aip) if self.path is not None else None

    def resume(self, sae: SparseAutoencoder, opt: torch.optim.Optimizer, dead: DeadLatentTracker,
               history: TrainingHistory) -> int:
        """Load the checkpoint if there is one (:func:`_resume`); return the step to start from (0 if none)."""
        if self.path is None or not self.path.exists():
            return 0
        return _resume(self.path, self.run, sae, opt, dead, history)

    def after_step(self, done: int, sae: SparseAutoencoder, opt: torch.optim.Optimizer,
                   dead: DeadLatentTracker, history: TrainingHistory) -> None:
        """Save after ``done`` steps when ``done`` is a multiple of ``every`` short of the end."""
        if self.every is not None and done % self.every == 0 and done < self.n_steps:
            self.save(done, sae, opt, dead, history)

    def save(self, done: int, sae: SparseAutoencoder, opt: torch.optim.Optimizer, dead: DeadLatentTracker,
             history: TrainingHistory) -> None:
        """Write the state after ``done`` steps (no-op without a directory)."""
        if self.path is not None:
            _save_checkpoint(self.path, sae, opt, done, dead.tokens_since_fired, history.rows, self.run, self.scale)


def _resume(ckpt: Path, run: dict, sae: SparseAutoencoder, opt: torch.optim.Optimizer,
            dead: DeadLatentTracker, history: TrainingHistory) -> int:
    """Load a checkpoint into the model, Adam, the dead-latent counters and the history; return its step.

    Raises:
        ValueError: the checkpoint was written by another run (naming the fields that differ) or another version.
        atomsnb.io.CacheCorruptError: a damaged checkpoint.
    """
    tensors, state = _load_checkpoint(ckpt)
    if state["run"] != _json_roundtrip(run):
        diff = sorted(k for k in set(state["run"]) | set(run) if state["run"].get(k) != _json_roundtrip(run).get(k))
        if "config" in diff:
            old, new = state["run"]["config"], _json_roundtrip(run)["config"]
            diff = [f"config.{k}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)] + \
                [d for d in diff if d != "config"]
        raise ValueError(f"the checkpoint in {str(ckpt.parent)!r} was written by another run (differs in: "
                         f"{', '.join(diff)}); use another checkpoint_dir or delete it")
    history.restore(state["history"], str(ckpt.parent))
    sae.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("sae.")})
    osd = {"state": {}, "param_groups": state["param_groups"]}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, i, name = k.split(".", 2)
            osd["state"].setdefault(int(i), {})[name] = v
    opt.load_state_dict(osd)
    dead.tokens_since_fired.copy_(tensors["tokens_since_fired"])
    return int(state["step"])


def train_sae(data, aip: AIP | None, config: SAEConfig, *, n_tokens: int | None = None, progress: bool = True,
              checkpoint_dir: str | os.PathLike | None = None, checkpoint_every: int | None = None,
              callback=None, monitor=None) -> tuple[SparseAutoencoder, pd.DataFrame]:
    """Train a JumpReLU TSAE (or the ReLU + L1 baseline, or a TopK / BatchTopK SAE) on activations in memory or on disk
    (paper §6, SPEC §6).

    One loop for every source: a tensor (wrapped in :class:`atomsnb.store.MemorySource`) and an
    :class:`atomsnb.store.ActivationStore` give the same seeded stream of shuffled batches, so the same weights; each
    batch is whitened on its own, so memory does not grow with the training tokens (:func:`training_memory_bytes`).
    Each step: lambda and lr from the schedules (:meth:`SAEConfig.coefficient_at`, :meth:`SAEConfig.learning_rate_at`),
    :func:`training_step`, then :class:`DeadLatentTracker` and :class:`TrainingHistory`. Deterministic for a given
    ``config.seed`` (same thread count and device for bitwise equality). With a ``checkpoint_dir`` the run saves its
    whole state every ``checkpoint_every`` steps and at the end; calling again with the same arguments resumes there
    and ends with the weights of an uninterrupted run, bit for bit.

    Args:
        data: ``[n_tokens, d_model]`` raw activations (any float dtype), an :class:`~atomsnb.store.ActivationStore`
            or a :class:`~atomsnb.store.MemorySource`.
        aip: the fitted AIP (required when ``config.whiten``; ignored otherwise).
        config: the :class:`SAEConfig`.
        n_tokens: train on the first ``n_tokens`` rows only (``|M|``; default all): grid points share one store.
        progress: show a tqdm bar (``TQDM_DISABLE=1`` silences it).
        checkpoint_dir: directory of the run's checkpoint (created); None: no checkpoint.
        checkpoint_every: steps between checkpoints (None: only the final one).
        callback: called as ``callback(step, stats)`` after every step (:class:`StepStats`); an exception it raises
            stops the run (the last checkpoint stays).
        monitor: ``(every, fn)``: ``fn(steps_done, sae)`` is called after every ``every`` steps (``steps_done`` a
            multiple of ``every``), with the SAE in its current state (e.g. to evaluate a learning curve on held-out
            activations; :mod:`atomsnb.scaling`). ``fn`` must not change the SAE; it runs under ``torch.no_grad``.
            If it returns ``True`` the run stops there (early stopping; the weights are those after
            ``steps_done`` steps). None (default): the run is bit-identical to one without the argument. Not
            combined with ``checkpoint_dir`` (a run stopped early has no final checkpoint to resume from).

    Returns:
        ``(sae, history)``: the trained :class:`SparseAutoencoder` and the DataFrame of :class:`TrainingHistory` (one
        row every ``config.log_every`` steps and the last: losses, L0, the batch R^2, ``frac_dead_recent``, lambda, lr).

    Raises:
        ValueError: before any work: an invalid config, data that are not a non-empty 2-D float tensor or store,
            NaN/inf activations (also checked per batch, naming the step), a missing or mismatched AIP,
            ``batch_size`` above the training tokens, an unusable device, bad checkpoint arguments, or a checkpoint
            written by another run.
        atomsnb.io.CacheCorruptError: a damaged checkpoint or store shard.
    """
    source, P = _training_source(data, config, aip, n_tokens)  # validation, before any work
    device = resolve_device(config.device)
    ckpt_dir = _check_checkpoint_dir(checkpoint_dir, checkpoint_every)
    every, watch = _check_monitor(monitor, ckpt_dir)
    prec = _Precision.of(config, device)
    d_in, scale = _input_scale(config, aip, source, P)
    sae, opt = _init_model(config, d_in, scale, prec.params, device)
    dead, history = DeadLatentTracker(sae.n_latents, config.dead_after_tokens, device), TrainingHistory(config)
    checkpoints = _Checkpoints(ckpt_dir, checkpoint_every, config, source, P, aip, scale)
    start = checkpoints.resume(sae, opt, dead, history)

    prep = _BatchPrep(aip, config.whiten, scale, source.d_model, device, prec.params, prec.whiten)
    bar = {} if progress else {"disable": True}  # leave `disable` unset so that TQDM_DISABLE=1 applies
    steps = tqdm(range(start, config.n_steps), desc=f"train {config.kind} SAE", mininterval=1.0, initial=start,
                 total=config.n_steps, **bar)
    for step, x in zip(steps, _training_batches(source, config, P, start, prep)):
        lam, lr = config.coefficient_at(step), config.learning_rate_at(step)
        for grp in opt.param_groups:
            grp["lr"] = lr
        st = training_step(sae, opt, x, lam, fast=prec.fast, sparse_density=config.sparse_density,
                           autocast_dtype=prec.autocast)
        dead.update(st.fired, config.batch_size)
        if history.due(step):
            history.log(step, st, config.batch_size, lam, lr, dead.fraction())
        checkpoints.after_step(step + 1, sae, opt, dead, history)
        if callback is not None:
            callback(step, st)
        if watch is not None and (step + 1) % every == 0:
            with torch.no_grad():
                stop = watch(step + 1, sae)
            if stop is True:
                if not history.due(step):  # the history's last row is the last step run
                    history.log(step, st, config.batch_size, lam, lr, dead.fraction())
                break
    else:
        if start < config.n_steps:
            checkpoints.save(config.n_steps, sae, opt, dead, history)
    sae.config = config  # type: ignore[attr-defined]
    return sae, history.frame()


def _check_monitor(monitor, ckpt_dir) -> tuple[int, object]:
    """``(every, fn)`` of :func:`train_sae`'s ``monitor`` argument, checked before any work (``(0, None)`` for None)."""
    if monitor is None:
        return 0, None
    if not isinstance(monitor, tuple) or len(monitor) != 2 or not callable(monitor[1]):
        raise ValueError(f"monitor must be None or a pair (every_n_steps, fn(steps_done, sae)); got {monitor!r}")
    every = monitor[0]
    if not _is_int(every) or every < 1:
        raise ValueError(f"monitor's every_n_steps must be an integer >= 1; got {every!r}")
    if ckpt_dir is not None:
        raise ValueError("monitor is not combined with checkpoint_dir: a run it stops early has no final checkpoint "
                         "to resume from; pass one or the other")
    return int(every), monitor[1]


def _json_roundtrip(obj):
    """``obj`` as it reads back from JSON (tuples become lists), to compare with a stored copy."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


# ---------------------------------------------------------------------------------------------------------------------
# Persistence
# ---------------------------------------------------------------------------------------------------------------------
def save_sae(sae: SparseAutoencoder, path: str | os.PathLike) -> Path:
    """Save weights (safetensors, checksummed, atomic) with the architecture and config as JSON metadata. No pickle."""
    cfg = getattr(sae, "config", None)
    meta = dict(d_in=sae.d_in, n_latents=sae.n_latents, kind=sae.kind, k=sae.k, tied=sae.tied, whitened=sae.whitened,
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
                            input_scale=meta["input_scale"], bandwidth=meta["bandwidth"], dtype=DTYPES[meta["dtype"]], device=device,
                            k=meta.get("k"))
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
