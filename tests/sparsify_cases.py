"""Our TopK SAE against EleutherAI/sparsify's ``SparseCoder`` on a folder written by sparsify itself
(``tests/data/sparsify/make_fixture.py``): shared by ``tests/test_sparsify.py`` (the committed fixture) and
``tests/compat/test_sparsify_compat.py`` (fresh folders written in sparsify's own venv)."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import load_file

from atomsnb.external import load_sparsify
from atomsnb.sae import SparseAutoencoder, compute_grads

FIXTURE = Path(__file__).parent / "data" / "sparsify" / "topk-d16-n64-k4"


def our_sae(folder: Path, kind: str = "topk") -> SparseAutoencoder:
    """sparsify's weights in our :class:`SparseAutoencoder` (raw coordinates, TopK with ``x - b_dec`` encoder input)."""
    ext = load_sparsify(folder)
    return SparseAutoencoder.from_weights(ext.W_enc.T, ext.b_enc, ext.W_dec.T, ext.b_dec, kind=kind, k=ext.k,
                                          dtype=ext.dtype)


def _close(ours: torch.Tensor, theirs: torch.Tensor, what: str) -> None:
    """Equal to round-off: 64 ulps of the dtype, relative to the reference's largest entry (sums are reordered)."""
    tol = 64 * torch.finfo(theirs.dtype).eps * max(1.0, float(theirs.abs().max()))
    err = float((ours.to(theirs.dtype) - theirs).abs().max())
    assert err <= tol, f"{what}: max |ours - sparsify| = {err:.3g} > {tol:.3g}"


def assert_matches_sparsify(folder: Path) -> dict:
    """Our forward pass, FVU loss and every parameter's gradient (hand-written step and autograd) equal sparsify's
    ``forward`` + ``fvu.backward()`` stored in ``folder/expected.safetensors``; so do the loader's codes and
    reconstruction. Returns the errors' scale for printing."""
    exp = load_file(str(folder / "expected.safetensors"))
    x = exp["x"]
    B, N = x.shape[0], int(exp["grad.encoder.bias"].shape[0])
    k = exp["top_indices"].shape[1]
    theirs_codes = torch.zeros(B, N, dtype=x.dtype).scatter(1, exp["top_indices"], exp["top_acts"])
    grads = {"W_enc": exp["grad.encoder.weight"], "b_enc": exp["grad.encoder.bias"], "W_dec": exp["grad.W_dec"].T,
             "b_dec": exp["grad.b_dec"]}
    # the loader (the SAELens-style TopK forward of atomsnb.external)
    ext = load_sparsify(folder)
    _close(ext.codes(x), theirs_codes, "loader codes")
    _close(ext.reconstruct(x), exp["sae_out"], "loader reconstruction")
    # autograd through our module
    sae = our_sae(folder)
    out = sae(x)
    out.loss.backward()
    vals, idx = out.latents.detach().topk(k, dim=1)
    order = idx.argsort(dim=1)
    assert torch.equal(idx.gather(1, order), exp["top_indices"]), "autograd: indices differ from sparsify's"
    _close(vals.gather(1, order), exp["top_acts"], "autograd top-k values")
    _close(out.x_hat.detach(), exp["sae_out"], "autograd reconstruction")
    _close(out.loss.detach(), exp["fvu"][0], "autograd FVU")
    for name, g in grads.items():
        _close(getattr(sae, name).grad, g, f"autograd grad {name}")
    # the hand-written step
    sae = our_sae(folder)
    st = compute_grads(sae, x, 0.0)
    _close(torch.tensor(st.loss, dtype=x.dtype), exp["fvu"][0], "step FVU")
    assert st.l0 == k
    for name, g in grads.items():
        _close(getattr(sae, name).grad, g, f"step grad {name}")
    return {"fvu": float(exp["fvu"][0]), "B": B, "N": N, "k": k, "dtype": str(x.dtype)}
