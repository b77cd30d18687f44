"""Activation store benchmarks (issue 10), run by hand: write overhead against a bare forward pass, read throughput,
and peak RSS of a run on stores of 1M, 4M and 8M activations.

Model (write): the book's default model, ``smollm2-135m`` (``--model``; convert it first with ``make model``), or
``--model shaped``: a random-weight Llama with SmolLM2-135M's shape (d_model 576, 30 blocks, 9 heads, 3 KV heads, MLP
1536, vocab 49152) and the tests' tiny BPE tokenizer, whose forward costs the same. Text: the offline docstring corpus.

    .venv/bin/python benchmarks/bench_store.py write --threads 2
    .venv/bin/python benchmarks/bench_store.py read --threads 2
    .venv/bin/python benchmarks/bench_store.py rss

Prints markdown tables. The machine is shared: compare only figures taken in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))


def smollm2_shaped(path: Path) -> Path:
    from transformers import AutoModelForCausalLM, LlamaConfig

    from tiny_models import tiny_tokenizer

    tok = tiny_tokenizer()
    cfg = LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                      num_key_value_heads=3, vocab_size=49152, max_position_embeddings=2048, tie_word_embeddings=True,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def bench_write(args) -> None:
    """Overhead of a store over the forward passes it needs, measured inside the same run (the machine is shared):
    ``collect_store``'s wall time against the time spent in ``capture_residual_stream`` during it."""
    import atomsnb.activations as acts
    from atomsnb.activations import ActivationConfig
    from atomsnb.corpus import Corpus
    from atomsnb.models import load_model
    from atomsnb.store import collect_store

    tmp = Path(tempfile.mkdtemp(prefix="bench-store-"))
    real = acts.capture_residual_stream
    spent = [0.0]

    def timed(*a, **k):
        t0 = time.perf_counter()
        out = real(*a, **k)
        spent[0] += time.perf_counter() - t0
        return out

    acts.capture_residual_stream = timed
    try:
        lm = load_model(str(smollm2_shaped(tmp / "model"))) if args.model == "shaped" else load_model(args.model)
        Corpus("docstrings").texts("fit")  # parse the corpus once, outside the timings
        rows = []
        for layers, n_tokens in (((1,), args.tokens_shallow), ((15,), args.tokens_deep), (tuple(range(1, 31)), args.tokens_all)):
            cfg = ActivationConfig(model="x", layers=layers, corpus="docstrings", split="fit", n_tokens=n_tokens,
                                   seq_len=128, batch_size=16)
            for rep in range(args.repeats):
                for dtype in ("float32", "float16"):
                    root = tmp / f"stores-{dtype}"
                    spent[0] = 0.0
                    t0 = time.perf_counter()
                    stores = collect_store(cfg, model=lm, store_dtype=dtype, root=root, progress=False)
                    t_all = time.perf_counter() - t0
                    gb = sum(s.n_tokens * s.d_model * (4 if dtype == "float32" else 2) for s in stores.values()) / 1e9
                    name = f"{layers[0]}" + (f"-{layers[-1]}" if len(layers) > 1 else "")
                    rows.append(f"| {name} | {n_tokens:,} | {dtype} | {rep + 1} | {spent[0]:.1f} ({n_tokens / spent[0]:,.0f} tok/s) | "
                                f"{t_all:.1f} | {gb:.2f} | {100 * (t_all - spent[0]) / spent[0]:+.1f} % |")
                    shutil.rmtree(root)
        what = "SmolLM2-135M-shaped random Llama" if args.model == "shaped" else args.model
        print(f"\nstore write vs the forward passes it needs ({what}, float32, "
              f"{torch.get_num_threads()} threads, seq_len 128, 16 windows per forward; both measured in the same call)\n")
        print("| layers | tokens | store dtype | run | forward s (in the call) | collect_store s | GB written | overhead |")
        print("|---|---|---|---|---|---|---|---|")
        print("\n".join(rows))
    finally:
        acts.capture_residual_stream = real
        shutil.rmtree(tmp, ignore_errors=True)


def bench_read(args) -> None:
    from atomsnb.store import ActivationStore, ShuffledBatches, write_store

    tmp = Path(tempfile.mkdtemp(prefix="bench-read-"))
    try:
        g = torch.Generator().manual_seed(0)
        n, d = args.read_tokens, 576
        chunk = torch.randn(1 << 16, d, generator=g)
        rows = []
        for dtype, nbytes in (("float32", 4), ("float16", 2), ("bfloat16", 2)):
            t0 = time.perf_counter()
            st = write_store(tmp / dtype, (chunk * (1 + i) for i in range(n // chunk.shape[0])), dtype=dtype,
                             key={"bench": dtype})
            t_write = time.perf_counter() - t0
            gb = st.n_tokens * d * nbytes / 1e9
            for verify in (True, False):
                s = ActivationStore(st.path, verify=verify)
                t0 = time.perf_counter()
                tot = 0
                for x in s.iter_chunks():
                    tot += int(x.clone()[0, 0] != 0)  # a full copy: a shard may be memory-mapped lazily
                t_seq = time.perf_counter() - t0
                sb = ShuffledBatches(s, 4096, seed=0)
                it = sb.iter_from(0)
                t0 = time.perf_counter()
                k = 0
                for _ in range(args.read_batches):
                    b = next(it)
                    b.float()
                    k += b.shape[0]
                t_shuf = time.perf_counter() - t0
                rows.append(f"| {dtype} | {st.shard_tokens} | {verify} | {gb:.2f} | {gb / t_write:.2f} | "
                            f"{st.n_tokens / t_seq:,.0f} ({gb / t_seq:.2f} GB/s) | {k / t_shuf:,.0f} |")
        print(f"\nstore read throughput ({n:,} x {d} activations, page cache warm, {torch.get_num_threads()} threads; "
              "write: write_store from memory, hashing included)\n")
        print("| store dtype | shard rows | verify SHA-256 | GB | write GB/s | sequential read tok/s (full copy) | "
              "shuffled batches of 4096, tok/s (buffer 2^18, first fill included) |")
        print("|---|---|---|---|---|---|---|")
        print("\n".join(rows))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


_CHILD = r"""
import json, resource, sys, time, torch
torch.set_num_threads(int(sys.argv[3]))
mode, path = sys.argv[1], sys.argv[2]
from atomsnb.aip import AIP
from atomsnb.sae import SAEConfig, train_sae
t0 = time.perf_counter()
if mode == "store":
    from atomsnb.store import ActivationStore, fit_aip_from_store
    data = ActivationStore(path)
    aip = fit_aip_from_store(data)            # a pass over all of |M|
elif mode == "memory":
    from safetensors.torch import load_file
    data = torch.cat([load_file(p)["acts"].float() for p in sorted(__import__("glob").glob(path + "/shard_*.safetensors"))])
    aip = AIP.fit(data)
cfg = SAEConfig.for_model(576, n_steps=20, batch_size=4096, l0_coefficient=1e-3, sparse_density=0.0)
train_sae(data, aip, cfg, progress=False)
print(json.dumps({"peak_GB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9, "s": time.perf_counter() - t0}))
"""

_CHILD_OLD = r"""
import json, resource, sys, time, torch, glob
torch.set_num_threads(int(sys.argv[3]))
from safetensors.torch import load_file
from atomsnb.aip import AIP
from atomsnb.units import default_sae_config
from atomsnb.sae import train_sae
t0 = time.perf_counter()
data = torch.cat([load_file(p)["acts"].float() for p in sorted(glob.glob(sys.argv[2] + "/shard_*.safetensors"))])
aip = AIP.fit(data)
cfg = default_sae_config(576, n_steps=20, batch_size=4096)
train_sae(data, aip, cfg, progress=False)
print(json.dumps({"peak_GB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9, "s": time.perf_counter() - t0}))
"""


def bench_rss(args) -> None:
    from atomsnb.store import write_store

    tmp = Path(tempfile.mkdtemp(prefix="bench-rss-"))
    try:
        g = torch.Generator().manual_seed(0)
        A = torch.randn(576, 576, generator=g) / 24
        rows = []
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        for m in args.sizes:
            def chunks():
                for s in range(0, m, 1 << 16):
                    yield torch.randn(min(1 << 16, m - s), 576, generator=torch.Generator().manual_seed(s)) @ A
            st = write_store(tmp / f"m{m}", chunks(), dtype="float16", key={"m": m})
            for mode in ("store", "memory") + (("old",) if args.old_checkout else ()):
                if mode != "store" and m > args.max_in_memory:
                    rows.append(f"| {m:,} | {mode} | not run (needs > {m * 576 * 4 / 1e9 * (6 if mode == 'old' else 2):.0f} GB) | |")
                    continue
                if mode == "old":
                    cmd = [sys.executable, "-c", _CHILD_OLD, "old", str(st.path), str(args.threads)]
                    code = str(args.old_checkout)
                else:
                    cmd = [sys.executable, "-c", _CHILD, mode, str(st.path), str(args.threads)]
                    code = str(ROOT)
                # python -c imports from its working directory first: run it in the checkout it measures
                proc = subprocess.run(cmd, capture_output=True, text=True, env={**env, "PYTHONPATH": code}, cwd=code)
                if proc.returncode != 0:
                    rows.append(f"| {m:,} | {mode} | failed: {proc.stderr.strip().splitlines()[-1][:80]} | |")
                    continue
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                rows.append(f"| {m:,} | {mode} | {r['peak_GB']:.2f} | {r['s']:.0f} |")
            shutil.rmtree(st.path)
        print("\npeak RSS: fit S on all |M| then 20 TSAE steps at 576 x 2304, batch 4096 (float16 store, buffer 2^18; "
              "'memory' = the new trainer on a float32 tensor, 'old' = the trainer before issue 10 on the same tensor)\n")
        print("| |M| | path | peak RSS GB | seconds |")
        print("|---|---|---|---|")
        print("\n".join(rows))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("what", choices=["write", "read", "rss"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model", default="smollm2-135m",
                    help="the book's default model (converted by `make model`), or 'shaped': a random Llama of its shape")
    ap.add_argument("--tokens-shallow", type=int, default=100_000)
    ap.add_argument("--tokens-deep", type=int, default=20_000)
    ap.add_argument("--tokens-all", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--read-tokens", type=int, default=1 << 20)
    ap.add_argument("--read-batches", type=int, default=200)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1 << 20, 1 << 22, 1 << 23])
    ap.add_argument("--max-in-memory", type=int, default=1 << 20)
    ap.add_argument("--old-checkout", default=None,
                    help="a checkout of the code before issue 10 (e.g. a git worktree of v0.1.0), for the 'old' rows; "
                         "without it they are left out")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TQDM_DISABLE", "1")
    {"write": bench_write, "read": bench_read, "rss": bench_rss}[args.what](args)


if __name__ == "__main__":
    main()
