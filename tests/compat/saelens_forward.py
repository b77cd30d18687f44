"""Run under SAELens' own venv (``make test-compat``), never imported by the project: load SAEs with SAELens and
write what it computes on a fixed input.

    <saelens-venv>/bin/python tests/compat/saelens_forward.py INPUT.safetensors OUT_DIR SAE_DIR [SAE_DIR ...]

For each ``SAE_DIR`` (a directory written by ``atomsnb.export.export_saelens``) it calls ``SAE.load_from_disk`` and
writes ``OUT_DIR/<name>.safetensors`` with ``feature_acts = sae.encode(x)`` and ``sae_out = sae.decode(feature_acts)``
of ``x`` from ``INPUT.safetensors``, and prints one JSON line per SAE: the class SAELens chose, its architecture,
dtype, hook and model name, and the SAELens and torch versions.
"""

import json
import sys
from pathlib import Path

import sae_lens
import torch
from safetensors.torch import load_file, save_file
from sae_lens import SAE


def main(argv):
    x_path, out_dir, *sae_dirs = argv
    x = load_file(x_path)["x"]
    for folder in sae_dirs:
        sae = SAE.load_from_disk(folder)
        with torch.no_grad():
            feature_acts = sae.encode(x)
            sae_out = sae.decode(feature_acts)
        save_file({"feature_acts": feature_acts.contiguous(), "sae_out": sae_out.contiguous()},
                  str(Path(out_dir) / f"{Path(folder).name}.safetensors"))
        print(json.dumps({"sae": Path(folder).name, "class": type(sae).__name__, "architecture": sae.cfg.architecture(),
                          "dtype": str(sae.dtype), "hook_name": sae.cfg.metadata.hook_name,
                          "model_name": sae.cfg.metadata.model_name, "sae_lens": sae_lens.__version__,
                          "torch": torch.__version__}))


if __name__ == "__main__":
    main(sys.argv[1:])
