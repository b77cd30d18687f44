"""Our TopK SAE against EleutherAI/sparsify itself: fresh SAEs written by sparsify's own code in its own venv.

Skipped unless ``ATOMSNB_SPARSIFY_PYTHON`` is the python of a venv with ``eai-sparsify`` 1.3.3 (``make test-compat``
builds ``.cache/sparsify-venv`` from ``tools/sparsify.lock`` and sets it); ``make test`` neither needs nor builds it.
sparsify runs ``tests/data/sparsify/make_fixture.py`` in a subprocess (its pins clash with the project's) with other
shapes, dtypes and seeds than the committed fixture; the comparison is ``tests/sparsify_cases.py``'s: top-k values
and indices, reconstruction, FVU and the gradient of every parameter, from autograd through our module and from the
hand-written step, plus the loader's codes and reconstruction.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from sparsify_cases import assert_matches_sparsify

SPARSIFY_PYTHON = os.environ.get("ATOMSNB_SPARSIFY_PYTHON")
SCRIPT = Path(__file__).parents[1] / "data" / "sparsify" / "make_fixture.py"

pytestmark = pytest.mark.skipif(not SPARSIFY_PYTHON, reason="ATOMSNB_SPARSIFY_PYTHON is not set (run `make test-compat`)")

CASES = {  # name: make_fixture.py arguments
    "f64-d48-n384-k16-b256": ["--d-in", "48", "--n-latents", "384", "--k", "16", "--batch", "256", "--seed", "1"],
    "f32-d64-n256-k8-b128": ["--d-in", "64", "--n-latents", "256", "--k", "8", "--batch", "128", "--dtype", "float32",
                             "--seed", "2"],
    "f64-d32-n128-k1-b64": ["--d-in", "32", "--n-latents", "128", "--k", "1", "--batch", "64", "--seed", "3"],
}


@pytest.mark.parametrize("name", list(CASES))
def test_our_topk_equals_sparsify_sparse_coder(tmp_path, name):
    assert Path(SPARSIFY_PYTHON).is_file(), f"ATOMSNB_SPARSIFY_PYTHON={SPARSIFY_PYTHON!r} is not a file"
    folder = tmp_path / name
    run = subprocess.run([SPARSIFY_PYTHON, str(SCRIPT), str(folder), *CASES[name]], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads([line for line in run.stdout.splitlines() if line.startswith("{")][-1])
    assert report["sparsify"] == "1.3.3", report
    info = assert_matches_sparsify(folder)
    print(f"{name}: sparsify {report['sparsify']} (torch {report['torch']}) SparseCoder = ours: top-k values and "
          f"indices, reconstruction, FVU {info['fvu']:.6f} and every gradient (B={info['B']}, N={info['N']}, "
          f"k={info['k']}, {info['dtype']})")
