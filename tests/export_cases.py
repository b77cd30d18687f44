"""Unit sets to export and the comparison of an export's outputs with ours (tests/test_export.py, tests/compat/).

The reference is :class:`atomsnb.units.SAEUnits`, which computes codes and reconstructions in raw coordinates its own
way (whiten, scale, encode, decode, unwhiten), not through the folded weights that :func:`atomsnb.export.export_saelens`
writes.
"""

from __future__ import annotations

import torch

from atomsnb.sae import SparseAutoencoder
from atomsnb.units import SAEUnits

H, N = 16, 48
# Tolerances, relative to each row's norm (the larger of our reconstruction and the input; codes: our codes' norm).
# float32: SAEUnits and the exported SAE both compute in float32 but along different paths (whiten in float64, then
# encode in float32; against one float32 matmul with the folded encoder), each a chain of about three products over at
# most H + N = 64 terms. With eps32 = 6e-8 and the test AIP's condition number (about 3e4: whitened coordinates carry
# up to sqrt(3e4) ~ 200 x the relative error of raw ones) errors are about 1e-6 (measured: at most 6e-7); 1e-5 leaves
# a factor 15. float64: the same chain with eps64 = 1.1e-16 (measured 4e-15); 1e-12.
RTOL = {"float32": 1e-5, "float64": 1e-12}
# A latent whose float64 pre-activation lies within this fraction of the summed size of its terms (|x| |E|^T along
# either path, plus bias and threshold) of its threshold may fire in one computation and not the other by round-off
# alone: each path rounds weights or inputs once and sums H + 1 = 17 terms, at most 2 x 17 x eps = 2e-6 (float32) or
# 4e-15 (float64) of that size; the band is 5 x (25 x) that. Such tokens are left out, and must be rare (checked).
BAND = {"float32": 1e-5, "float64": 1e-13}


def make_acts(n: int = 2000) -> torch.Tensor:
    """``[n, H]`` float64 activations with a mean offset and an anisotropic covariance (condition ~3e4)."""
    g = torch.Generator().manual_seed(0)
    mix = torch.randn(H, H, generator=g, dtype=torch.float64) * torch.logspace(0, 1, H, dtype=torch.float64)
    return torch.randn(n, H, generator=g, dtype=torch.float64) @ mix + 3 * torch.randn(H, generator=g,
                                                                                      dtype=torch.float64)


K = 5  # active latents per token of the TopK test SAEs


def random_sae(kind: str, whitened: bool, dtype: torch.dtype, *, tied: bool = False, seed: int = 1):
    """Random unit-norm decoder, non-zero biases and thresholds, input scale 2.7: every folded term matters (TopK:
    ``k = K``; BatchTopK: one threshold for every latent, as its inference has)."""
    g = torch.Generator().manual_seed(seed)
    sae = SparseAutoencoder.init_random(H, N, seed=seed, kind=kind, whitened=whitened, input_scale=2.7, dtype=dtype,
                                        tied=tied, k=K if kind in ("topk", "batchtopk") else None)
    with torch.no_grad():
        sae.b_enc.copy_(0.3 * torch.randn(N, generator=g))
        sae.b_dec.copy_(torch.randn(H, generator=g))
        sae.log_threshold.copy_((0.2 + 0.6 * torch.rand(N, generator=g)).log())
        if kind == "batchtopk":
            sae.log_threshold.fill_(float(sae.log_threshold[0]))
    return sae


def near_threshold_rows(units: SAEUnits, x: torch.Tensor, dtype: str) -> torch.Tensor:
    """``[n]`` bool: tokens with a float64 pre-activation within the round-off band of its threshold (0 for ReLU)."""
    sae = units.sae
    d = sae.d_in
    E = sae.encoder_weight.detach().double()
    xin = (units.aip.whiten(x) if sae.whitened else x.double()) / sae.input_scale
    b = sae.b_enc.detach().double()
    if sae.kind in ("topk", "batchtopk"):  # the encoder reads x - b_d
        b = b - E @ sae.b_dec.detach().double()
    pre = xin @ E.T + b
    A = units.aip.whiten(torch.eye(d, dtype=torch.float64)) if sae.whitened else torch.eye(d, dtype=torch.float64)
    thr = sae.threshold.detach().double() if sae.kind in ("jumprelu", "batchtopk") else torch.zeros_like(b)
    terms = xin.abs() @ E.abs().T + x.double().abs() @ (A @ E.T).abs() / sae.input_scale + b.abs() + thr
    near = ((pre - thr).abs() < BAND[dtype] * terms).any(dim=1)
    if sae.kind == "topk":  # the k-th and (k+1)-th largest pre-activations within round-off swap places
        top = pre.topk(sae.k + 1, dim=1).values
        near |= (top[:, -2] - top[:, -1]).abs() < BAND[dtype] * terms.max(dim=1).values
    return near


def assert_same_as_ours(units: SAEUnits, x: torch.Tensor, codes: torch.Tensor, recon: torch.Tensor,
                        dtype: str) -> None:
    """An export's ``codes`` ``[n, N]`` and reconstruction ``recon`` ``[n, H]`` of ``x`` are ours: the same latents
    fire and the numbers agree within :data:`RTOL`, on every token outside the round-off band (at least 98 %)."""
    x, codes, recon = x.double(), codes.double(), recon.double()
    keep = ~near_threshold_rows(units, x, dtype)
    assert keep.float().mean() >= 0.98, f"{int((~keep).sum())} tokens within round-off of a threshold"
    ours_codes, their_codes = units.codes(x)[keep], codes[keep]
    assert (ours_codes > 0).any() and not (ours_codes > 0).all(), "the test needs sparse, non-empty codes"
    assert torch.equal(ours_codes > 0, their_codes > 0), "the same latents fire"
    ours, theirs = units.reconstruct(x)[keep], recon[keep]
    row_err = (ours - theirs).norm(dim=1) / torch.maximum(ours.norm(dim=1), x[keep].norm(dim=1))
    assert float(row_err.max()) <= RTOL[dtype], f"reconstruction: relative error {float(row_err.max()):.3g}"
    code_err = (ours_codes - their_codes).norm(dim=1) / ours_codes.norm(dim=1).clamp_min(1e-300)
    assert float(code_err.max()) <= RTOL[dtype], f"codes: relative error {float(code_err.max()):.3g}"
