"""Our TopK training step side by side with EleutherAI/sparsify's own (BENCHMARKS.md: "TopK at 2304 x 9216, batch
4096, k 64: at least the speed of sparsify's own training step").

Runs in sparsify's venv (``make test-compat`` builds it from ``tools/sparsify.lock``) with our package on the path:

    PYTHONPATH=. .cache/sparsify-venv/bin/python benchmarks/bench_vs_sparsify.py --sizes 256 2304

For each d_model H (|D| = 4H, batch 4096, k = 64, float32, CPU; the shapes of ``bench_vs_saelens.py``), variants
interleaved step by step, median of ``--repeats`` after ``--warmup`` warm-ups:

- sparsify: the per-step work of ``sparsify.Trainer.fit`` on a batch of activations with ``loss_fn="fvu"``,
  ``auxk_alpha=0`` (its defaults): ``set_decoder_norm_to_unit_norm``, the batch's total variance, ``SparseCoder.forward``
  (fused encoder, ``embedding_bag`` decoder: triton is not installed on the CPU), the did-fire mask,
  ``fvu.backward()``, ``remove_gradient_parallel_to_decoder_directions``, the optimiser step, ``zero_grad``, the
  scheduler and the tokens-since-fired counters. Two optimisers: ``adam`` (``torch.optim.Adam`` with sparsify's
  linear warm-up schedule, as ours) and ``signum`` (sparsify's default, ``ScheduleFreeWrapper(SignSGD)``);
- atomsnb: :func:`atomsnb.sae.training_step` on a ``kind="topk"`` SAE (hand-written sparse gradients of the same FVU,
  Adam, decoder renormalisation) plus :class:`atomsnb.sae.DeadLatentTracker`, as :func:`atomsnb.sae.train_sae` does;
- one ``[B, H] x [H, N]`` matmul, the unit of cost (the encoder's forward; a dense step costs five).
No MALLOC_* variables are set. The machine is shared: compare only the ratios of one run.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
from schedulefree import ScheduleFreeWrapper
from sparsify import SparseCoder, SparseCoderConfig
from sparsify.sign_sgd import SignSGD
from transformers import get_linear_schedule_with_warmup

from atomsnb.sae import DeadLatentTracker, SparseAutoencoder, training_step


def sparsify_step(H: int, N: int, B: int, k: int, x: torch.Tensor, optimizer: str):
    torch.manual_seed(0)
    sae = SparseCoder(H, SparseCoderConfig(num_latents=N, k=k), dtype=torch.float32)
    lr = 2e-4 / (N / 2**14) ** 0.5
    if optimizer == "adam":
        opt = torch.optim.Adam(sae.parameters(), lr=lr)
        schedulers = [get_linear_schedule_with_warmup(opt, 1000, 10**6)]
    else:
        opt = ScheduleFreeWrapper(SignSGD(sae.parameters(), lr=5e-3 / (N / 2**14) ** 0.5), momentum=0.95)
        opt.train()
        schedulers = []
    since_fired = torch.zeros(N, dtype=torch.long)

    def step():
        sae.set_decoder_norm_to_unit_norm()
        did_fire = torch.zeros(N, dtype=torch.bool)
        total_variance = (x - x.mean(0)).pow(2).sum()
        out = sae(x=x, y=x, dead_mask=None, total_variance=total_variance)
        did_fire[out.latent_indices.flatten()] = True
        float(out.fvu.detach())
        (out.fvu + 0.0 * out.auxk_loss + out.multi_topk_fvu / 8).backward()
        sae.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
        for s in schedulers:
            s.step()
        with torch.no_grad():
            since_fired.add_(B)
            since_fired[did_fire] = 0
        return out
    return step


def atomsnb_step(H: int, N: int, B: int, k: int, x: torch.Tensor):
    sae = SparseAutoencoder.init_random(H, N, seed=0, kind="topk", k=k, whitened=False)
    opt = torch.optim.Adam([p for p in sae.parameters() if p.requires_grad], lr=1e-4, betas=(0.0, 0.999))
    dead = DeadLatentTracker(N, 10_000_000)
    stats = {}

    def step():
        st = training_step(sae, opt, x, 0.0)
        dead.update(st.fired, B)
        stats["last"] = st
    return step, stats


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 2304])
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--k", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    args = ap.parse_args()
    B, k = args.batch, args.k
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, CPU, batch {B}, k {k}, median of "
          f"{args.repeats} after {args.warmup} warm-ups, variants interleaved")
    print("| d_model x |D| | variant | L0 | s/step | tok/s | x matmul | sparsify (adam) / variant |")
    print("|---|---|---|---|---|---|---|")
    for H in args.sizes:
        N = 4 * H
        g = torch.Generator().manual_seed(0)
        x = torch.randn(B, H, generator=g) / math.sqrt(H) + 0.1 * torch.randn(H, generator=g)
        at_step, at_stats = atomsnb_step(H, N, B, k, x)
        W = torch.randn(H, N, generator=g)
        out = torch.empty(B, N)
        variants = {"sparsify step (adam)": sparsify_step(H, N, B, k, x, "adam"),
                    "sparsify step (signum, its default)": sparsify_step(H, N, B, k, x, "signum"),
                    "atomsnb topk step": at_step,
                    "matmul [B,H]x[H,N]": lambda: torch.mm(x, W, out=out)}
        times = {name: [] for name in variants}
        for rep in range(args.warmup + args.repeats):
            for name, fn in variants.items():
                t0 = time.perf_counter()
                fn()
                if rep >= args.warmup:
                    times[name].append(time.perf_counter() - t0)
        med = {name: statistics.median(v) for name, v in times.items()}
        l0 = {"atomsnb topk step": f"{at_stats['last'].l0:.0f}", "matmul [B,H]x[H,N]": "-"}
        for name in variants:
            t = med[name]
            print(f"| {H} x {N} | {name} | {l0.get(name, k)} | {t:.3f} | {B / t:,.0f} | "
                  f"{t / med['matmul [B,H]x[H,N]']:.2f} | {med['sparsify step (adam)'] / t:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
