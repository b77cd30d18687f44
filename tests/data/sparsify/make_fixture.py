"""Write a sparsify-format TopK SAE with EleutherAI/sparsify itself, and what sparsify computes on it.

Not part of the test suite (it needs ``eai-sparsify``, which the project does not depend on). Run in the venv that
``make test-compat`` builds (``.cache/sparsify-venv``, ``tools/sparsify.lock``) and commit the output::

    .cache/sparsify-venv/bin/python tests/data/sparsify/make_fixture.py            # -> tests/data/sparsify/topk-d16-n64-k4

``tests/compat/test_sparsify_compat.py`` runs it again with other shapes, dtypes and seeds into a temporary folder.

The folder holds ``cfg.json`` and ``sae.safetensors`` written by sparsify's ``SparseCoder.save_to_disk`` and
``expected.safetensors``: a fixed input ``x [B, d_in]``; sparsify's ``forward(x)`` outputs ``top_acts``,
``top_indices`` (sorted per row here, with ``top_acts`` in the same order, since ``topk(sorted=False)`` leaves the
order to the backend), ``sae_out`` and ``fvu``; and the gradient of every parameter after ``fvu.backward()``
(``grad.encoder.weight``, ``grad.encoder.bias``, ``grad.W_dec``, ``grad.b_dec``), i.e. the loss of sparsify's trainer
with its default ``auxk_alpha = 0``. The weights are random with non-zero biases (every term of the forward pass
matters) and the script checks that every selected code is positive (sparsify's fused backward sends gradient to a
selected zero code too, which a ReLU would not; the fixture avoids that tie).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import sparsify
import torch
from safetensors.torch import save_file
from sparsify import SparseCoder, SparseCoderConfig

HERE = Path(__file__).resolve().parent


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", nargs="?", type=Path, default=None)
    ap.add_argument("--d-in", type=int, default=16)
    ap.add_argument("--n-latents", type=int, default=64)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    out = a.out or HERE / f"topk-d{a.d_in}-n{a.n_latents}-k{a.k}"
    dtype = getattr(torch, a.dtype)
    torch.manual_seed(a.seed)
    sae = SparseCoder(a.d_in, SparseCoderConfig(num_latents=a.n_latents, k=a.k), dtype=dtype)
    g = torch.Generator().manual_seed(a.seed)
    with torch.no_grad():
        sae.encoder.bias.copy_(0.3 * torch.randn(a.n_latents, generator=g) + 0.5)
        sae.b_dec.copy_(0.5 * torch.randn(a.d_in, generator=g))
        sae.W_dec.mul_(0.5 + torch.rand(a.n_latents, 1, generator=g, dtype=dtype))  # not unit norm: scale matters
    x = (2 * torch.randn(a.batch, a.d_in, generator=g) + torch.randn(a.d_in, generator=g)).to(dtype)
    sae.save_to_disk(out)
    o = sae(x)
    assert bool((o.latent_acts > 0).all()), "a selected code is 0: change the seed"
    o.fvu.backward()
    order = o.latent_indices.argsort(dim=1)
    tensors = {"x": x, "top_acts": o.latent_acts.gather(1, order).detach(),
               "top_indices": o.latent_indices.gather(1, order), "sae_out": o.sae_out.detach(),
               "fvu": o.fvu.detach().reshape(1)}
    tensors.update({f"grad.{n}": p.grad for n, p in sae.named_parameters()})
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / "expected.safetensors"))
    print(json.dumps({"out": str(out), "sparsify": sparsify.__version__, "torch": torch.__version__,
                      "fvu": float(o.fvu.detach()), "cfg": json.loads((out / "cfg.json").read_text())}))


if __name__ == "__main__":
    main()
