"""Our exports against SAELens itself: ``SAE.load_from_disk``, ``encode`` and ``decode`` in SAELens' own venv.

Skipped unless ``ATOMSNB_SAELENS_PYTHON`` is the python of a venv with ``sae-lens`` (``make test-compat`` builds
``.cache/saelens-venv`` from ``tools/saelens.lock`` and sets it); ``make test`` neither needs nor builds that venv.
SAELens runs in a subprocess (its pins clash with the project's), on a fixed input written here; the comparison with
our unit sets is ``tests/export_cases.py``'s (same support, reconstruction within float32 / float64 round-off).
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from atomsnb.aip import AIP
from atomsnb.export import SAELENS_VERSION, export_saelens
from atomsnb.sae import SAEConfig, train_sae
from atomsnb.units import SAEUnits
from export_cases import H, assert_same_as_ours, make_acts, random_sae

SAELENS_PYTHON = os.environ.get("ATOMSNB_SAELENS_PYTHON")
SCRIPT = Path(__file__).with_name("saelens_forward.py")

pytestmark = pytest.mark.skipif(not SAELENS_PYTHON, reason="ATOMSNB_SAELENS_PYTHON is not set (run `make test-compat`)")


def test_saelens_loads_our_exports_and_computes_our_codes_and_reconstructions(tmp_path):
    assert Path(SAELENS_PYTHON).is_file(), f"ATOMSNB_SAELENS_PYTHON={SAELENS_PYTHON!r} is not a file"
    acts = make_acts()
    aip = AIP.fit(acts)
    trained, _ = train_sae(acts[:1500].float(), aip, SAEConfig.for_model(H, n_steps=40, batch_size=256), progress=False)
    cases = {  # name: (unit set, dtype, SAELens class expected)
        "tsae-whitened-f32": (SAEUnits(random_sae("jumprelu", True, torch.float32), aip, name="a", family="atoms"),
                              "float32", "JumpReLUSAE"),
        "tsae-trained-f32": (SAEUnits(trained, aip, name="t", family="atoms"), "float32", "JumpReLUSAE"),
        "jumprelu-raw-f32": (SAEUnits(random_sae("jumprelu", False, torch.float32), name="j", family="ablation"),
                             "float32", "JumpReLUSAE"),
        "relu-raw-f32": (SAEUnits(random_sae("relu", False, torch.float32), name="f", family="features"), "float32",
                         "StandardSAE"),
        "relu-whitened-f32": (SAEUnits(random_sae("relu", True, torch.float32), aip, name="w", family="ablation"),
                              "float32", "StandardSAE"),
        "tsae-whitened-f64": (SAEUnits(random_sae("jumprelu", True, torch.float64), aip, name="d", family="atoms"),
                              "float64", "JumpReLUSAE"),
        "topk-raw-f32": (SAEUnits(random_sae("topk", False, torch.float32), name="k", family="topk"), "float32",
                         "TopKSAE"),
        "topk-whitened-f64": (SAEUnits(random_sae("topk", True, torch.float64), aip, name="kw", family="topk"),
                              "float64", "TopKSAE"),
        "batchtopk-whitened-f32": (SAEUnits(random_sae("batchtopk", True, torch.float32), aip, name="b",
                                            family="topk"), "float32", "JumpReLUSAE"),
    }
    dirs = [export_saelens(u, tmp_path / name, layer=4, model_name="HuggingFaceTB/SmolLM2-135M", dtype=dtype)
            for name, (u, dtype, _) in cases.items()]
    x = acts[1500:]
    out = tmp_path / "out"
    out.mkdir()
    for dtype in ("float32", "float64"):  # SAELens casts its input to the SAE's dtype; give each its own
        save_file({"x": x.to(getattr(torch, dtype)).contiguous()}, str(tmp_path / f"x-{dtype}.safetensors"))
    reports = {}
    for dtype in ("float32", "float64"):
        chosen = [str(d) for d, (_, dt, _) in zip(dirs, cases.values()) if dt == dtype]
        run = subprocess.run([SAELENS_PYTHON, str(SCRIPT), str(tmp_path / f"x-{dtype}.safetensors"), str(out), *chosen],
                             capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        assert run.returncode == 0, run.stderr[-3000:]
        for line in run.stdout.splitlines():
            if line.startswith("{"):
                r = json.loads(line)
                reports[r["sae"]] = r
    for name, (units, dtype, cls) in cases.items():
        r = reports[name]
        print(json.dumps(r))
        assert (r["class"], r["sae_lens"], r["dtype"]) == (cls, SAELENS_VERSION, f"torch.{dtype}")
        assert (r["hook_name"], r["model_name"]) == ("blocks.3.hook_resid_post", "HuggingFaceTB/SmolLM2-135M")
        theirs = load_file(str(out / f"{name}.safetensors"))
        assert_same_as_ours(units, x, theirs["feature_acts"], theirs["sae_out"], dtype)
        fired = (theirs["feature_acts"] > 0).double().sum(1).mean()
        print(f"{name}: SAELens {cls} reproduces our support and reconstruction (L0 {float(fired):.1f})")
