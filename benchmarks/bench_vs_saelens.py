"""The TSAE training step side by side with SAELens' own trainer step (BENCHMARKS.md's anchor).

Needs a separate virtualenv with SAELens (it is not a dependency of atomsnb):

    python3 -m venv /tmp/saelens-venv
    /tmp/saelens-venv/bin/pip install torch==2.13.0 && /tmp/saelens-venv/bin/pip install sae-lens==6.54.12 torch==2.13.0
    PYTHONPATH=. /tmp/saelens-venv/bin/python benchmarks/bench_vs_saelens.py --sizes 256 2304

For each d_model H (|D| = 4H, batch 4096, float32, CPU) and two sparsities (initialisation; trained-like, thresholds
set so that L0 is about 64 for both implementations on the same batch), variants interleaved step by step, median of
``--repeats`` after ``--warmup`` warm-ups:

- SAELens: ``SAETrainer._train_step`` on a ``JumpReLUTrainingSAE`` (forward, backward, grad clipping, Adam, schedulers,
  dead-latent bookkeeping: what its trainer does per step);
- atomsnb: :func:`atomsnb.sae.training_step` (hand-written gradients, sparse route when L0 is small, Adam, decoder
  renormalisation);
- one ``[B, H] x [H, N]`` matmul, the unit of cost (a dense step costs 10BHN = five of them).
No MALLOC_* variables are set.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import torch
from sae_lens import JumpReLUTrainingSAE, JumpReLUTrainingSAEConfig, SAETrainer
from sae_lens.config import SAETrainerConfig

from atomsnb.sae import SparseAutoencoder, training_step


def saelens_step(H: int, N: int, B: int, x: torch.Tensor, l0: float | None):
    cfg = JumpReLUTrainingSAEConfig(d_in=H, d_sae=N, l0_coefficient=1e-3, jumprelu_init_threshold=1e-3,
                                    jumprelu_bandwidth=1e-3, dtype="float32", device="cpu")
    sae = JumpReLUTrainingSAE(cfg)
    if l0 is not None:
        with torch.no_grad():
            pre = x[:2048] @ sae.W_enc + sae.b_enc
            sae.threshold.copy_(torch.quantile(pre, 1 - l0 / N, dim=0).clamp_min(1e-4))
    trainer = SAETrainer(SAETrainerConfig(total_training_samples=B * 10**6, train_batch_size_samples=B,
                                          adam_beta1=0.0, adam_beta2=0.999, lr=1e-7, lr_end=1e-7), sae,
                         data_provider=iter(()))

    def step():
        return trainer._train_step(sae, x)

    def current_l0():
        with torch.no_grad():
            pre = x @ sae.W_enc + sae.b_enc
            return float((pre > sae.threshold).float().sum(1).mean())
    return step, current_l0


def atomsnb_step(H: int, N: int, B: int, x: torch.Tensor, l0: float | None):
    sae = SparseAutoencoder.init_random(H, N, seed=0)
    if l0 is not None:
        with torch.no_grad():
            pi = sae.pre_acts(x[:2048])
            sae.log_threshold.copy_(torch.quantile(pi, 1 - l0 / N, dim=0).clamp_min(1e-4).log())
    opt = torch.optim.Adam([p for p in sae.parameters() if p.requires_grad], lr=1e-7, betas=(0.0, 0.999))
    stats = {}

    def step():
        stats["last"] = training_step(sae, opt, x, 1e-3)
    return step, stats


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 2304])
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--l0", type=float, default=64.0)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    args = ap.parse_args()
    B = args.batch
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, CPU, batch {B}, median of "
          f"{args.repeats} after {args.warmup} warm-ups, variants interleaved")
    print("| d_model x |D| | sparsity | variant | L0 | s/step | tok/s | x matmul | SAELens / variant |")
    print("|---|---|---|---|---|---|---|---|")
    for H in args.sizes:
        N = 4 * H
        g = torch.Generator().manual_seed(0)
        x = torch.randn(B, H, generator=g) / math.sqrt(H)
        for label, l0 in (("init", None), (f"L0~{args.l0:g}", args.l0)):
            sl_step, sl_l0 = saelens_step(H, N, B, x, l0)
            at_step, at_stats = atomsnb_step(H, N, B, x, l0)
            W = torch.randn(H, N, generator=g)
            out = torch.empty(B, N)
            variants = {"SAELens trainer step": sl_step, "atomsnb step": at_step,
                        "matmul [B,H]x[H,N]": lambda: torch.mm(x, W, out=out)}
            times = {k: [] for k in variants}
            for rep in range(args.warmup + args.repeats):
                for name, fn in variants.items():
                    t0 = time.perf_counter()
                    fn()
                    if rep >= args.warmup:
                        times[name].append(time.perf_counter() - t0)
            med = {k: statistics.median(v) for k, v in times.items()}
            l0s = {"SAELens trainer step": sl_l0(), "atomsnb step": at_stats["last"].l0, "matmul [B,H]x[H,N]": float("nan")}
            for name in variants:
                t = med[name]
                print(f"| {H} x {N} | {label} | {name} | {l0s[name]:.0f} | {t:.3f} | {B / t:,.0f} | "
                      f"{t / med['matmul [B,H]x[H,N]']:.2f} | {med['SAELens trainer step'] / t:.2f}x |")


if __name__ == "__main__":
    main()
