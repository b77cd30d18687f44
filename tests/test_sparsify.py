"""TopK SAEs against EleutherAI/sparsify (``eai-sparsify`` 1.3.3) on a fixture its own code wrote
(``tests/data/sparsify/``), and the sparsify-format loader's refusals. The live comparison in sparsify's own venv
is ``tests/compat/test_sparsify_compat.py`` (``make test-compat``)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from atomsnb.external import HookMismatchError, load_external_sae, load_sparsify
from sparsify_cases import FIXTURE, assert_matches_sparsify


def test_topk_forward_loss_and_grads_equal_sparsify_fixture():
    info = assert_matches_sparsify(FIXTURE)
    assert info["dtype"] == "torch.float64" and info["k"] == 4


def test_load_external_sae_recognises_a_sparsify_folder():
    sae = load_external_sae(FIXTURE)
    assert (sae.architecture, sae.k, sae.apply_b_dec_to_input, sae.n_latents, sae.d_model) == ("topk", 4, True, 64, 16)
    assert sae.dtype == torch.float64


@pytest.fixture
def copy(tmp_path):
    def make(hook="topk-d16-n64-k4", **cfg_changes):
        d = tmp_path / hook
        shutil.copytree(FIXTURE, d)
        cfg = json.loads((d / "cfg.json").read_text())
        cfg.update(cfg_changes)
        (d / "cfg.json").write_text(json.dumps(cfg))
        return d
    return make


def test_sparsify_hook_point_layers_i_is_atomsnb_layer_i_plus_1(copy):
    d = copy("layers.5")
    sae = load_sparsify(d)
    assert (sae.hook_name, sae.layer) == ("blocks.5.hook_resid_post", 6)
    load_sparsify(d, layer=6)
    with pytest.raises(HookMismatchError, match="layer 5 was asked"):
        load_sparsify(d, layer=5)
    with pytest.raises(HookMismatchError, match="not the residual stream"):
        load_sparsify(copy("layers.3.mlp"), layer=4)


@pytest.mark.parametrize("change, match", [
    ({"activation": "groupmax"}, r"activation='groupmax' cannot be expressed.*\['topk'\]"),
    ({"skip_connection": True}, r"skip_connection=True cannot be expressed"),
    ({"transcode": True}, r"transcode=True cannot be expressed"),
    ({"auxk": 1}, r"keys \['auxk'\] this loader does not know"),
    ({"k": 0}, r"k=0; need an integer >= 1"),
    ({"num_latents": 32}, r"cfg.json gives \[num_latents=32, d_in=16\]"),
])
def test_load_sparsify_refuses_what_it_cannot_express(copy, change, match):
    with pytest.raises(ValueError, match=match):
        load_sparsify(copy(**change))


def test_load_sparsify_refuses_extra_tensors_and_missing_files(copy):
    d = copy()
    t = load_file(str(d / "sae.safetensors"))
    save_file({**t, "W_skip": torch.zeros(16, 16, dtype=torch.float64)}, str(d / "sae.safetensors"))
    with pytest.raises(ValueError, match=r"holds tensors \['W_dec', 'W_skip'"):
        load_sparsify(d)
    (d / "sae.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="sae.safetensors' is missing"):
        load_sparsify(d)
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        load_sparsify(d / "nope")


def test_compare_unit_sets_reports_k_of_a_sparsify_sae_and_nan_for_an_external_sae_without_one():
    import math

    from atomsnb.aip import AIP
    from atomsnb.evaluation import compare_unit_sets
    from atomsnb.external import load_saelens

    g = torch.Generator().manual_seed(0)
    x = 2 * torch.randn(700, 16, generator=g, dtype=torch.float64) + 1
    aip = AIP.fit(x[:500])
    sl = load_saelens(FIXTURE.parent.parent / "saelens" / "jumprelu-expavg-d16-n48")
    res = compare_unit_sets(x[:500], x[500:], aip, [load_sparsify(FIXTURE), sl], n_train_eval=0, progress=False)
    k = res.table.set_index("unit set")["k"]
    assert k["external: topk-d16-n64-k4"] == 4.0 and math.isnan(k[sl.name])
    assert res.table.set_index("unit set").loc["external: topk-d16-n64-k4", "l0"] <= 4
