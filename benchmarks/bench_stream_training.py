"""Training tokens/s from an activation store against training from memory (issue 10), run by hand.

Random correlated activations ``z @ A`` (so that the AIP is not the identity), TSAE with the book's defaults
(:meth:`atomsnb.sae.SAEConfig.for_model`), batch 4096, at 576 x 2304 and 2304 x 9216. Variants, each in its own
process, interleaved round by round:

- ``store f32`` / ``store bf16``: ``train_sae(ActivationStore)``, the stream reading shards into the mixing buffer;
- ``memory``: ``train_sae(tensor)``, the same loop over an in-memory tensor (whitening per batch);
- ``old``: the trainer before issue 10 (``--old-checkout``), which whitened the whole tensor once in float64.

An iteration is timed from one ``training_step`` call to the next (batch fetch, whitening, step); the median leaves
out the iterations that read a new fill of the mixing buffer, the mean includes them.

    .venv/bin/python benchmarks/bench_stream_training.py --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent

_CHILD = r"""
import json, sys, time, torch
mode, path, H, N, steps, threads, buffer_tokens = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:8])
torch.set_num_threads(threads)
import atomsnb.sae as S
from atomsnb.aip import AIP
stamps = []
real = S.training_step
def timed(*a, **k):
    stamps.append(time.perf_counter())
    return real(*a, **k)
S.training_step = timed
if mode.startswith("store"):
    from atomsnb.store import ActivationStore
    data = ActivationStore(path + ("/f32" if mode == "store f32" else "/bf16"), verify=True)
else:
    from safetensors.torch import load_file
    import glob
    data = torch.cat([load_file(p)["acts"] for p in sorted(glob.glob(path + "/f32/shard_*.safetensors"))])
# the same S for every variant, fitted here (the old checkout does not read files of the new io format)
aip = AIP.load(path + "/aip.safetensors") if mode.startswith("store") else AIP.fit(data)
if mode == "old":
    from atomsnb.units import default_sae_config
    from dataclasses import replace
    cfg = replace(default_sae_config(H, n_steps=steps, batch_size=4096), n_latents=N, sparsity_coefficient=1e-3)
else:
    cfg = S.SAEConfig.for_model(H, capacity=N // H, n_steps=steps, batch_size=4096, l0_coefficient=1e-3,
                                buffer_tokens=buffer_tokens)
t0 = time.perf_counter()
S.train_sae(data, aip, cfg, progress=False)
stamps.append(time.perf_counter())
d = [b - a for a, b in zip(stamps, stamps[1:])][1:]  # drop the first iteration (warm-up, first fill)
print(json.dumps({"median": sorted(d)[len(d) // 2], "mean": sum(d) / len(d)}))
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--buffer-tokens", type=int, default=1 << 15, help="small, so that several fills occur in a run")
    ap.add_argument("--sizes", default="576x2304:40:262144,2304x9216:8:65536", help="HxN:steps:tokens,...")
    ap.add_argument("--old-checkout", default=None,
                    help="a checkout of the code before issue 10 (e.g. a git worktree of v0.1.0), for the 'old' rows; "
                         "without it they are left out")
    args = ap.parse_args()
    from atomsnb.aip import AIP
    from atomsnb.store import ActivationStore, write_store

    tmp = Path(tempfile.mkdtemp(prefix="bench-train-"))
    out = []
    try:
        for spec in args.sizes.split(","):
            size, steps, n_tok = spec.split(":")
            args.tokens = int(n_tok)
            H, N = map(int, size.split("x"))
            g = torch.Generator().manual_seed(0)
            A = torch.randn(H, H, generator=g) / H ** 0.5 + torch.eye(H)
            path = tmp / size
            path.mkdir()
            aip = AIP(H)

            def chunks():
                for s in range(0, args.tokens, 1 << 15):
                    x = torch.randn(1 << 15, H, generator=torch.Generator().manual_seed(s)) @ A
                    aip.partial_fit(x)
                    yield x

            write_store(path / "f32", chunks(), dtype="float32", key={"H": H})
            aip.save(path / "aip.safetensors")
            st = write_store(path / "bf16", ActivationStore(path / "f32").iter_chunks(), dtype="bfloat16", key={"H": H})
            assert st.n_tokens == args.tokens
            res: dict[str, list] = {}
            for _ in range(args.rounds):
                for mode in ("store f32", "store bf16", "memory") + (("old",) if args.old_checkout else ()):
                    code = str(args.old_checkout if mode == "old" else ROOT)  # python -c imports from its cwd first
                    env = {**os.environ, "PYTHONPATH": code}
                    proc = subprocess.run([sys.executable, "-c", _CHILD, mode, str(path), str(H), str(N), steps,
                                           str(args.threads), str(args.buffer_tokens)], capture_output=True, text=True,
                                          env=env, cwd=code)
                    if proc.returncode != 0:
                        print(mode, proc.stderr[-1500:], file=sys.stderr)
                        continue
                    res.setdefault(mode, []).append(json.loads(proc.stdout.strip().splitlines()[-1]))
            base = statistics.median(r["median"] for r in res["memory"])
            for mode, rs in res.items():
                med = statistics.median(r["median"] for r in rs)
                mean = statistics.median(r["mean"] for r in rs)
                out.append(f"| {H} x {N} | {mode} | {med:.3f} | {4096 / med:,.0f} | {mean:.3f} | {4096 / mean:,.0f} | "
                           f"{base / med:.2f} |")
            shutil.rmtree(path)
        print(f"\nTSAE training from a store vs from memory (batch 4096, random activations (tokens per size: {args.sizes}), buffer "
              f"{args.buffer_tokens:,} rows, {args.threads} threads, median over {args.rounds} interleaved rounds)\n")
        print("| H x N | source | s / step (median) | tok/s | s / step (mean, fills included) | tok/s | speed vs memory |")
        print("|---|---|---|---|---|---|---|")
        print("\n".join(out))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
