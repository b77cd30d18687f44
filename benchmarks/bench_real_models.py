"""Load time and activation-collection throughput of the packaged real LLMs (run by hand, not a test).

    python benchmarks/bench_real_models.py [--models smollm2-135m gemma3-270m] [--seq-lens 128 256]
                                           [--tokens 4096] [--batch 8] [--threads 2] [--loss-tokens 0]

For each model: the time ``load_model`` takes in this process (the conversion must exist: run ``make model``
first; a cold conversion is timed in the model card, ``conversion_time_s``), then the tokens/s of
``capture_residual_stream`` for every layer and for layer 1 only (the pass stops after block 1), per window
length, on held-out docstrings, after one warm-up batch. ``--loss-tokens N`` also measures the held-out
next-token loss on docstrings and pydoc-topics (N tokens each). Prints one markdown table; the 1-minute load
average before and after is printed too, since the machine is shared.
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from atomsnb.activations import capture_residual_stream, next_token_loss, token_windows
from atomsnb.corpus import Corpus
from atomsnb.models import load_model, model_card


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=["smollm2-135m", "gemma3-270m"])
    ap.add_argument("--seq-lens", nargs="+", type=int, default=[128, 256])
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--loss-tokens", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)  # a benchmark script, not library code
    print(f"threads {torch.get_num_threads()}, load average before {os.getloadavg()[0]:.2f}")
    rows = []
    for name in args.models:
        t = time.perf_counter()
        lm = load_model(name)
        load_s = time.perf_counter() - t
        card = model_card(name)
        for seq_len in args.seq_lens:
            w = token_windows(lm.tokenizer, Corpus("docstrings"), "eval", n_tokens=args.tokens, seq_len=seq_len, seed=0)
            for label, layers in (("all layers", list(range(1, lm.n_layers + 1))), ("layer 1", [1])):
                capture_residual_stream(lm, w[: args.batch], layers)  # warm-up
                t = time.perf_counter()
                for s in range(0, len(w), args.batch):
                    capture_residual_stream(lm, w[s:s + args.batch], layers)
                dt = time.perf_counter() - t
                rows.append((name, f"{load_s:.1f}", f"{card['conversion_time_s']:.0f}", seq_len, label,
                             f"{w.numel() / dt:,.0f}"))
                print(" | ".join(map(str, rows[-1])), flush=True)
        if args.loss_tokens:
            for corpus in ("docstrings", "pydoc-topics"):
                r = next_token_loss(lm, corpus, "eval", n_tokens=args.loss_tokens, seq_len=128, batch_size=2)
                print(f"{name} held-out loss {corpus}: {r['loss']:.3f} nats/token over {r['n_tokens']} tokens", flush=True)
        del lm
    print(f"load average after {os.getloadavg()[0]:.2f}")
    print("| model | load s | conversion s (card) | seq_len | layers | tokens/s |\n|---|---|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(map(str, r)) + " |")


if __name__ == "__main__":
    main()
