"""Activation collection vs a bare forward pass over the same tokens (issue: overhead at most 15 %).

    python benchmarks/bench_activations.py [--model default] [--windows 64] [--batch 16] [--repeats 5]

Variants, interleaved per repeat, median reported:
- bare forward: ``model(input_ids)``, every block plus the final norm and the LM head;
- bare forward, blocks only: ``model.base_model(input_ids)``, the cost any collection of all layers must pay
  (the overhead is measured against this one);
- hooks, all layers: :func:`atomsnb.activations.capture_residual_stream` for layers 1..n_layers
  (no early stop possible), plus the copy into the float32 buffer that ``collect_activations`` does;
- hooks, layer 1 only: the same, stopping after block 1 (the saving early stopping gives).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from atomsnb.activations import capture_residual_stream, token_windows
from atomsnb.corpus import Corpus
from atomsnb.models import load_model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="default")
    ap.add_argument("--windows", type=int, default=64)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    lm = load_model(args.model)
    windows = token_windows(lm.tokenizer, Corpus(), "eval", n_tokens=args.windows * (args.seq_len - 1),
                            seq_len=args.seq_len, seed=0)
    n_tok = windows.numel()
    all_layers = list(range(1, lm.n_layers + 1))

    def bare():
        with torch.no_grad():
            for s in range(0, len(windows), args.batch):
                lm.model(input_ids=windows[s:s + args.batch], use_cache=False)

    def bare_base():
        with torch.no_grad():
            for s in range(0, len(windows), args.batch):
                lm.model.base_model(input_ids=windows[s:s + args.batch], use_cache=False)

    def hooks(layers):
        def run():
            bufs = {l: torch.empty(n_tok, lm.d_model) for l in layers}
            pos = 0
            for s in range(0, len(windows), args.batch):
                ids = windows[s:s + args.batch]
                out = capture_residual_stream(lm, ids, layers)
                k = ids.numel()
                for l in layers:
                    bufs[l][pos:pos + k] = out[l].reshape(-1, lm.d_model).float()
                pos += k
        return run

    variants = {"bare forward": bare, "bare forward, blocks only (no LM head)": bare_base, f"hooks, layers 1-{lm.n_layers}": hooks(all_layers), "hooks, layer 1 only": hooks([1])}
    times = {k: [] for k in variants}
    for fn in variants.values():
        fn()  # warm-up
    for _ in range(args.repeats):
        for name, fn in variants.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    base = statistics.median(times["bare forward, blocks only (no LM head)"])
    print(f"model {lm.name} ({lm.n_layers} blocks, d_model {lm.d_model}), {n_tok:,} tokens, batch {args.batch}x{args.seq_len}, "
          f"{torch.get_num_threads()} threads, median of {args.repeats}")
    print(f"| variant | s | tokens/s | vs blocks-only forward |\n|---|---|---|---|")
    for name, ts in times.items():
        m = statistics.median(ts)
        print(f"| {name} | {m:.3f} | {n_tok / m:,.0f} | {100 * (m / base - 1):+.1f}% |")


if __name__ == "__main__":
    main()
