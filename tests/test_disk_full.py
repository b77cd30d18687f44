"""A cache write that really fails (the file-size limit of the process, as a full disk would) is survived.

CI once ran out of disk in chapters 1 and 2: safetensors reports a failed write as its own ``SafetensorError``, not
as the ``OSError`` that the caches' "warn and keep going" handlers catch, so the chapters died instead of going on
without a cache file. The older test of that path (``test_activations.py``) replaced ``save_tensors`` by a function
raising ``OSError``, and so could not see it. Here nothing is replaced: a child process lowers ``RLIMIT_FSIZE`` (with
``SIGXFSZ`` ignored, a write past it fails with ``EFBIG``, as one on a full disk fails with ``ENOSPC``) and runs the
real writers.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tiny_models import save_tiny

WORKER = textwrap.dedent("""
    import json, resource, signal, sys, traceback, warnings
    from pathlib import Path

    import torch

    from atomsnb.activations import ActivationConfig, collect_activations
    from atomsnb.aip import AIP
    from atomsnb.paths import cache_dir
    from atomsnb.sae import SAEConfig
    from atomsnb.sae_cache import train_sae_cached

    model, part = sys.argv[1], sys.argv[2]
    cfg = ActivationConfig(model=model, layers=(1,), split="eval", n_tokens=200, seq_len=16)
    uncached = collect_activations(cfg, cache=False, progress=False).acts[1]  # corpus and model read before the limit
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 32, generator=g) @ torch.randn(32, 32, generator=g)
    aip = AIP.fit(x)
    sae_cfg = SAEConfig(n_latents=64, n_steps=5, batch_size=256, init_threshold=0.05, bandwidth=0.01, lr=3e-3,
                        l0_coefficient=0.01)

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))  # the JSON files fit, the tensors do not
    report = {}
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        try:
            if part == "activations":
                # two forward passes agree to rounding, not always to the bit (the CPU kernels' summation order
                # can follow the buffers' alignment), so the activations returned are compared to rounding
                got = collect_activations(cfg, progress=False).acts[1]
                report["equal"] = bool(got.shape == uncached.shape and torch.allclose(got, uncached, rtol=1e-5,
                                                                                      atol=1e-6))
                report["max_diff"] = float((got - uncached).abs().max())
            else:
                sae, hist, hit = train_sae_cached(x, aip, sae_cfg, progress=False)
                report["sae"] = {"hit": hit, "n_latents": sae.n_latents, "steps": len(hist)}
        except Exception as exc:
            report["raised"] = f"{type(exc).__name__}: {exc}"
    report["warnings"] = [[w.category.__name__, str(w.message)] for w in seen]
    report["cached"] = sorted(p.name for kind in ("activations", "saes") for p in cache_dir(kind).rglob("*")
                              if p.is_file())
    print(json.dumps(report))
""")


def _run(tmp_path, part):
    model = save_tiny("gpt2", tmp_path / "m")
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", ATOMSNB_CACHE=str(tmp_path / "cache"), TQDM_DISABLE="1",
               PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", WORKER, str(model), part], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_an_sae_cache_write_that_fails_on_disk_warns_and_returns_the_trained_sae(tmp_path):
    report = _run(tmp_path, "sae")
    assert "raised" not in report, report
    assert report["sae"]["hit"] is False and report["sae"]["n_latents"] == 64 and report["sae"]["steps"] >= 1
    runtime = [m for cat, m in report["warnings"] if cat == "RuntimeWarning"]
    assert any("could not write the SAE cache" in m and "File too large" in m for m in runtime), report["warnings"]
    # the SafetensorError path: the history (JSON) was written, the weights were not, and nothing half-written is left
    assert report["cached"] == ["history.json"], report["cached"]


def test_an_activation_cache_write_that_fails_on_disk_warns_and_returns_the_activations(tmp_path):
    report = _run(tmp_path, "activations")
    assert "raised" not in report, report["raised"]
    assert report["equal"] is True, report.get("max_diff")
    runtime = [m for cat, m in report["warnings"] if cat == "RuntimeWarning"]
    assert any("layer001.safetensors" in m and "File too large" in m for m in runtime), report["warnings"]
    assert not any(name.startswith("layer") for name in report["cached"])
