"""Time one TSAE training step against a naive dense step and one encoder-sized matmul (see BENCHMARKS.md).

For each ``d_model`` H (|D| = N = 4H, batch B, float32, CPU) and two sparsities -- at initialisation
(tau = 1e-3, about half the latents active) and trained-like (thresholds set so that L0 is about
``--l0``) -- it times, interleaved step by step, median of ``--repeats`` after ``--warmup`` warm-ups:

- ``atomsnb step``: :func:`atomsnb.sae.training_step` with hand-written gradients (dense route with
  reused buffers, or the sparse route: embedding_bag decoding, sampled dL/df, embedding_bag weight
  gradients), decoder-parallel gradient removal, Adam, decoder renormalisation;
- ``naive dense step``: the same step through autograd on :meth:`SparseAutoencoder.forward`
  (dense mask, no fusion, fresh tensors every step);
- ``matmul``: one ``[B, H] x [H, N]`` matmul, the unit of cost.

FLOP/s use two conventions: 10BHN per step (5 matmuls, BENCHMARKS.md) and 6BHN (the atoms issue's
text). For the sparse route these are *effective* rates (dense-equivalent work / time). Run by hand:

    PYTHONPATH=. python benchmarks/bench_tsae_step.py --sizes 256 2304 --repeats 5

The environment is left alone (no MALLOC_* variables, default thread count).
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import time

import torch

from atomsnb.sae import SparseAutoencoder, compute_grads, training_step


def _make(H: int, N: int, B: int, l0: float | None, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, H, generator=g) / math.sqrt(H)  # E||x||^2 = 1, like whitened inputs (SPEC §6)
    sae = SparseAutoencoder.init_random(H, N, seed=seed)
    if l0 is not None:  # trained-like sparsity: per-latent thresholds at the (1 - l0/N) quantile of pi
        with torch.no_grad():
            pi = sae.pre_acts(x)
            tau = torch.quantile(pi[: min(B, 2048)], 1.0 - l0 / N, dim=0).clamp_min(1e-4)
            sae.log_threshold.copy_(tau.log())
    return sae, x


def _adam(sae):
    return torch.optim.Adam([p for p in sae.parameters() if p.requires_grad], lr=1e-7, betas=(0.0, 0.999))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 2304])
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--l0", type=float, default=64.0)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: leave torch's default)")
    ap.add_argument("--check", action="store_true", help="also compare the fast gradients with autograd at the benchmark size")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    B = args.batch
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, CPU, batch {B}, "
          f"median of {args.repeats} after {args.warmup} warm-ups, variants interleaved")
    rows = []
    for H in args.sizes:
        N = 4 * H
        for label, l0 in (("init", None), (f"L0~{args.l0:g}", args.l0)):
            sae_fast, x = _make(H, N, B, l0)
            sae_naive = copy.deepcopy(sae_fast)
            opt_fast, opt_naive = _adam(sae_fast), _adam(sae_naive)
            We = sae_fast.W_enc.detach().T.contiguous()  # [H, N]
            mm_out = torch.empty(B, N)
            stats = {}

            def fast():
                stats["fast"] = training_step(sae_fast, opt_fast, x, 1e-3, fast=True)

            def naive():
                stats["naive"] = training_step(sae_naive, opt_naive, x, 1e-3, fast=False)

            def matmul():
                torch.mm(x, We, out=mm_out)

            variants = {"atomsnb step": fast, "naive dense step": naive, "matmul [B,H]x[H,N]": matmul}
            times = {k: [] for k in variants}
            for rep in range(args.warmup + args.repeats):
                for name, fn in variants.items():
                    t0 = time.perf_counter()
                    fn()
                    dt = time.perf_counter() - t0
                    if rep >= args.warmup:
                        times[name].append(dt)
            med = {k: statistics.median(v) for k, v in times.items()}
            for name in variants:
                t = med[name]
                flop10, flop6 = (2 if name.startswith("matmul") else 10) * B * H * N, (2 if name.startswith("matmul") else 6) * B * H * N
                route = ("sparse" if stats["fast"].sparse else "dense") if name == "atomsnb step" else ""
                rows.append(dict(size=f"{H} x {N}", sparsity=label, l0=stats["fast"].l0, variant=name + (f" ({route})" if route else ""),
                                 s=t, tok_s=B / t, gf10=flop10 / t / 1e9, gf6=flop6 / t / 1e9, vs_mm=t / med["matmul [B,H]x[H,N]"],
                                 speedup=med["naive dense step"] / t))
            if args.check:
                ref = copy.deepcopy(sae_fast)
                for p in ref.parameters():
                    p.grad = None
                out = ref(x, 1e-3)
                out.loss.backward()
                grads = {n: p.grad.clone() for n, p in ref.named_parameters() if p.grad is not None}
                compute_grads(ref, x, 1e-3)
                err = max(float((p.grad - grads[n]).abs().max() / grads[n].abs().max().clamp_min(1e-30))
                          for n, p in ref.named_parameters() if n in grads)
                print(f"  [{H} x {N}, {label}] max relative gradient difference fast vs autograd: {err:.1e}")
    hdr = f"| {'d_model x |D|':<13} | {'sparsity':<8} | {'L0':>7} | {'variant':<25} | {'s/step':>8} | {'tok/s':>8} | {'GFLOP/s 10BHN':>13} | {'GFLOP/s 6BHN':>12} | {'x matmul':>8} | {'vs naive':>8} |"
    print(hdr)
    print("|" + "|".join("-" * (len(c)) for c in hdr.split("|")[1:-1]) + "|")
    for r in rows:
        print(f"| {r['size']:<13} | {r['sparsity']:<8} | {r['l0']:7.1f} | {r['variant']:<25} | {r['s']:8.3f} | {r['tok_s']:8.0f} | "
              f"{r['gf10']:13.1f} | {r['gf6']:12.1f} | {r['vs_mm']:8.2f} | {r['speedup']:7.2f}x |")
    print("GFLOP/s of a step count 10BHN (or 6BHN) dense-equivalent FLOPs per step; of the matmul, 2BHN.")


if __name__ == "__main__":
    main()
