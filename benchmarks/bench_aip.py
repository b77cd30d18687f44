"""Streaming AIP accumulation: throughput (tokens/s) and peak memory, independent of the token count.

    python benchmarks/bench_aip.py [--d-model 2304] [--tokens 1000000] [--batch 16384]

Streams random float32 batches ``[batch, d_model]`` (as activations would arrive from a model) through
:meth:`atomsnb.aip.AIP.partial_fit`, holding no more than one batch, then finalises (eigendecomposition +
Cholesky in float64). Reports tokens/s of accumulation, the finalise time, and peak resident memory
(``ru_maxrss``) against the size the tokens would occupy if held (``tokens x d_model x 4`` bytes).
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from atomsnb.aip import AIP


def rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--d-model", type=int, default=2304)
    ap.add_argument("--tokens", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=16384)
    args = ap.parse_args()
    H = args.d_model
    g = torch.Generator().manual_seed(0)
    mix = torch.randn(H, H, generator=g) / H ** 0.5 + torch.eye(H)
    before = rss_mib()
    aip = AIP(H)
    t0 = time.perf_counter()
    gen_time = 0.0
    done = 0
    while done < args.tokens:
        n = min(args.batch, args.tokens - done)
        tg = time.perf_counter()
        x = torch.randn(n, H, generator=g) @ mix  # a correlated batch, as activations would be
        gen_time += time.perf_counter() - tg
        aip.partial_fit(x)
        done += n
    acc = time.perf_counter() - t0 - gen_time
    t1 = time.perf_counter()
    _ = aip.S, aip.condition_number
    fin = time.perf_counter() - t1
    peak = rss_mib()
    held = args.tokens * H * 4 / 2**20
    print(f"d_model {H}, {args.tokens:,} tokens in batches of {args.batch}, {torch.get_num_threads()} threads")
    print("| quantity | value |\n|---|---|")
    print(f"| accumulation (float64 X^T X) | {acc:.1f} s, {args.tokens / acc:,.0f} tokens/s, "
          f"{2 * args.tokens * H * H / acc / 1e9:.1f} GFLOP/s |")
    print(f"| finalise (eigh + Cholesky, float64) | {fin:.1f} s |")
    print(f"| peak RSS | {peak:,.0f} MiB (at start {before:,.0f} MiB) |")
    print(f"| the tokens if held as float32 | {held:,.0f} MiB |")
    print(f"| state kept by the accumulator | {H * H * 8 / 2**20:.0f} MiB (one float64 [H, H]) |")


if __name__ == "__main__":
    main()
