"""A cache write that really fails (the file-size limit of the process, as a full disk would) is survived.

CI once ran out of disk in chapter 1: safetensors reports a failed write as its own ``SafetensorError``, not as the
``OSError`` that the caches' "warn and keep going" handlers catch, so the notebook died instead of going on without
a cache file. The older test of that path (``test_activations.py``) replaced ``save_tensors`` by a function raising
``OSError``, and so could not see it. Here nothing is replaced: a child process lowers ``RLIMIT_FSIZE`` (with
``SIGXFSZ`` ignored, a write past it fails with ``EFBIG``, as one on a full disk fails with ``ENOSPC``) and runs the
real writers.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from tiny_models import save_tiny

WORKER = textwrap.dedent("""
    import json, resource, signal, sys, warnings
    from pathlib import Path

    import torch

    from atomsnb.activations import ActivationConfig, collect_activations
    from atomsnb.aip import AIP
    from atomsnb.io import save_tensors
    from atomsnb.sae import SAEConfig
    from atomsnb.sae_cache import train_sae_cached
    from atomsnb.paths import cache_dir

    model, out = sys.argv[1], Path(sys.argv[2])
    cfg = ActivationConfig(model=model, layers=(1,), split="eval", n_tokens=200, seq_len=16)
    uncached = collect_activations(cfg, cache=False, progress=False).acts[1]  # corpus and model read before the limit
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 32, generator=g) @ torch.randn(32, 32, generator=g)
    aip = AIP.fit(x)
    sae_cfg = SAEConfig(n_latents=64, n_steps=5, batch_size=256, init_threshold=0.05, bandwidth=0.01, lr=3e-3,
                        l0_coefficient=0.01)

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (512, 512))
    report = {}
    try:
        save_tensors(out / "big.safetensors", {"a": torch.zeros(10_000)})
        report["save_tensors"] = "written"
    except OSError as exc:
        report["save_tensors"] = {"errno": exc.errno, "message": str(exc)}
    report["left_in_out"] = sorted(p.name for p in out.iterdir())
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        got = collect_activations(cfg, progress=False).acts[1]
        report["acts_equal"] = bool(torch.equal(got, uncached))
        sae, hist, hit = train_sae_cached(x, aip, sae_cfg, progress=False)
        report["sae"] = {"hit": hit, "n_latents": sae.n_latents, "steps": len(hist)}
    report["warnings"] = [[w.category.__name__, str(w.message)] for w in seen]
    report["cached_layer_files"] = sorted(p.name for p in cache_dir("activations").rglob("layer*.safetensors"))
    report["cached_saes"] = sorted(p.name for p in cache_dir("saes").rglob("sae.safetensors"))
    print(json.dumps(report))
""")


def test_a_cache_write_that_fails_on_disk_warns_and_keeps_the_result(tmp_path):
    model = save_tiny("gpt2", tmp_path / "m")
    out = tmp_path / "out"
    out.mkdir()
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", ATOMSNB_CACHE=str(tmp_path / "cache"), TQDM_DISABLE="1",
               PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", WORKER, str(model), str(out)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])

    # the write fails as the OSError it is (EFBIG = 27), naming the file; no partial or temporary file is left
    assert report["save_tensors"] != "written"
    assert report["save_tensors"]["errno"] == 27, report
    assert "big.safetensors" in report["save_tensors"]["message"]
    assert report["left_in_out"] == []

    # the activations and the SAE come back, computed, with a warning that names what was not cached
    assert report["acts_equal"] is True
    assert report["sae"] == {"hit": False, "n_latents": 64, "steps": report["sae"]["steps"]}
    assert report["sae"]["steps"] >= 1
    runtime = [m for cat, m in report["warnings"] if cat == "RuntimeWarning"]
    assert any("layer001.safetensors" in m and "File too large" in m for m in runtime), report["warnings"]
    assert any("could not write the SAE cache" in m for m in runtime), report["warnings"]
    # and nothing half-written is in the caches to be read back later
    assert report["cached_layer_files"] == [] and report["cached_saes"] == []
