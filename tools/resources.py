"""Disk, host memory, GPU memory and time of a parameter file, computed by atomsnb.budget.resources (issue 10).

    .venv/bin/python tools/resources.py params/capacity_gemma-2-2b.yaml            # print
    .venv/bin/python tools/resources.py params/*.yaml --update                    # rewrite the '# [resources]' lines

The figures come from the code's own formulas (the store's layout, the stream's buffer, the trainer's tensors,
BENCHMARKS.md's FLOP count of a step) at the throughputs of :class:`atomsnb.budget.Rates`, which the output states.
Model shapes come from the models' published configs (table below), so no download is needed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from atomsnb.budget import Rates, resources  # noqa: E402
from atomsnb.store import DEFAULT_BUFFER_TOKENS  # noqa: E402

#: d_model, blocks, parameters (from each model's config.json / model card).
MODELS = {
    "google/gemma-2-2b": (2304, 26, 2_614_341_888),
    "google/gemma-2-9b": (3584, 42, 9_241_705_984),
    "meta-llama/Llama-3.1-8B": (4096, 32, 8_030_261_248),
    "gpt2": (768, 12, 124_439_808),
    "EleutherAI/pythia-160m": (768, 12, 162_322_944),
}
TAG = "# [resources]"


def _single_model(p: dict) -> dict:
    """Chapter 4's files name ``models: [one]`` and ``layers: [[...]]`` (or null): read them as one model's."""
    if isinstance(p, dict) and "models" in p and isinstance(p["models"], list) and len(p["models"]) == 1:
        layers = p.get("layers")
        p = {**p, "model": p["models"][0], "layers": layers[0] if isinstance(layers, list) and layers
             and isinstance(layers[0], list) else layers}
    return p


def estimate(p: dict) -> tuple[dict, str]:
    """The resources of one parameter file and a one-line description of what was counted."""
    p = _single_model(p)
    model = p["model"]
    if model not in MODELS:
        raise SystemExit(f"{model!r}: shape unknown to tools/resources.py (add it to MODELS)")
    H, n_layers, n_params = MODELS[model]
    device = "cuda" if str(p.get("device", "cpu")).startswith("cuda") or p.get("device") == "auto" else "cpu"
    dtype = p.get("dtype", "float32")
    store_dtype = "bfloat16" if dtype == "bfloat16" else "float32"
    common = dict(d_model=H, model_params=n_params, n_layers_model=n_layers, batch_size=int(p.get("batch_size", 4096)),
                  store_dtype=store_dtype, model_dtype=dtype, device=device, buffer_tokens=DEFAULT_BUFFER_TOKENS)
    n_steps = int(p.get("n_steps", 600))
    seeds = len(p.get("seeds", [0]))
    if "m_values" in p:  # chapter 3: one layer, every (|M|, |D|) point trains a TSAE on a prefix of one store
        trainings = [(int(round(k * H)), n_steps) for _ in p["m_values"] for k in p["d_multiples"] for _ in range(seeds)]
        r = resources(deepest_layer=int(p["layer"]), n_layer_stores=1, n_store_tokens=int(p["n_fit_tokens"]),
                      n_eval_tokens=int(p["n_eval_tokens"]), trainings=trainings, n_aip_tokens=int(p["n_fit_tokens"]),
                      **common)
        what = (f"one store of {int(p['n_fit_tokens']):,} + {int(p['n_eval_tokens']):,} activations at layer {p['layer']}, "
                f"{len(trainings)} TSAEs x {n_steps:,} steps, S fitted on the whole pool")
    else:  # chapter 4: every layer, features and atoms at each
        layers = p.get("layers") or list(range(1, n_layers + 1))
        N = int(p.get("capacity", 4)) * H
        trainings = [(N, n_steps)] * (2 * len(layers) * seeds)
        r = resources(deepest_layer=max(layers), n_layer_stores=len(layers), n_store_tokens=int(p["n_fit_tokens"]),
                      n_eval_tokens=int(p["n_eval_tokens"]), trainings=trainings, n_aip_tokens=int(p["n_fit_tokens"]),
                      n_aip_fits=len(layers), **common)
        what = (f"{len(layers)} layer stores of {int(p['n_fit_tokens']):,} + {int(p['n_eval_tokens']):,} activations "
                f"(one forward pass), {len(trainings)} SAEs x {n_steps:,} steps")
    return r, what


def lines(p: dict) -> list[str]:
    r, what = estimate(p)
    rt = Rates()
    cpu = ""
    if str(p.get("device")) == "auto":  # a GPU if there is one, else the CPU: give both
        rc, _ = estimate({**p, "device": "cpu"})
        cpu = f" (on the CPU instead: {rc['hours']:,.1f} h, host memory {rc['host_GB']:,.1f} GB)"
    store = "bfloat16" if p.get("dtype") == "bfloat16" else "float32"
    return [
        f"{TAG} computed by tools/resources.py (atomsnb.budget.resources): {what}, {store} stores.",
        f"{TAG} disk {r['disk_GB']:,.0f} GB | host memory {r['host_GB']:,.1f} GB | GPU memory {r['gpu_GB']:,.1f} GB | "
        f"time {r['hours']:,.1f} h (collect {r['collect_hours']:,.1f} h, fit S {r['aip_hours']:,.1f} h, "
        f"train {r['train_hours']:,.1f} h){cpu}",
        f"{TAG} at {rt.gpu_tflops:g} TFLOP/s bf16 (H100), {rt.cpu_gflops:g} GFLOP/s float32 and {rt.cpu_f64_gflops:g} "
        f"GFLOP/s float64 CPU, {rt.disk_gb_s:g} GB/s disk; evaluation (q*, R^2) not included.",
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("files", nargs="+")
    ap.add_argument("--update", action="store_true", help=f"rewrite the '{TAG}' comment lines of each file")
    args = ap.parse_args()
    for f in args.files:
        path = Path(f)
        text = path.read_text()
        p = _single_model(yaml.safe_load(text))
        if not isinstance(p, dict) or p.get("model") not in MODELS:
            print(f"{f}: skipped (not a hub model's parameter file)")
            continue
        new = lines(p)
        if args.update:
            kept = [line for line in text.splitlines() if not line.startswith(TAG)]
            head = [i for i, line in enumerate(kept) if not line.startswith("#")]
            at = head[0] if head else len(kept)
            path.write_text("\n".join(kept[:at] + new + kept[at:]) + "\n")
        print(f"{f}:\n  " + "\n  ".join(new))


if __name__ == "__main__":
    main()
