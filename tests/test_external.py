"""External SAEs (atomsnb.external) against SAELens' own outputs, and as unit sets.

References:
- ``tests/data/saelens_shared/``: an SAE written by SAELens 6.54.12's ``save_model`` with SAELens' outputs on a
  fixed input (vendored from the project's ``shared/fixtures/saelens/``, see its README).
- ``tests/data/saelens/``: small SAEs of the other architectures / options written and evaluated by SAELens
  6.54.12 itself (``tests/data/saelens/make_fixtures.py``).
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from atomsnb.external import (ExternalSAE, HookMismatchError, TransposedLayoutError, load_external_sae,
                              load_gemma_scope, load_saelens, residual_layer_of_hook, same_model)

LOCAL = Path(__file__).resolve().parent / "data" / "saelens"
LOCAL_SAES = sorted(p.name for p in LOCAL.iterdir() if p.is_dir())


SHARED = Path(__file__).resolve().parent / "data" / "saelens_shared"


@pytest.fixture(scope="module")
def shared_jumprelu() -> Path:
    return SHARED / "jumprelu-d64-n256"


def _expected(folder: Path):
    e = load_file(str(folder / "expected_outputs.safetensors"))
    return e["x"], e["feature_acts"].double(), e["sae_out"].double()


def _assert_close(got, want, atol=1e-6):
    assert got.dtype == torch.float64 and got.shape == want.shape
    assert (got - want).abs().max().item() <= atol


def _assert_reconstruction_close(sae, x, feature_acts, sae_out):
    """``sae.reconstruct(x)`` against SAELens' float32 ``sae_out`` within float32 rounding of the decoder sum.

    Two float32 evaluations of ``f @ W_dec + b_dec`` (theirs and ours, summed in different orders) each lie within
    ``gamma_{n+1} (|f| @ |W_dec| + |b_dec|)`` of the exact value (Higham, *Accuracy and Stability of Numerical
    Algorithms*, 2nd ed., eq. 3.5, ``gamma_n = n u / (1 - n u)``, ``u = 2**-24``), so they differ by at most twice that.
    With values up to ~28 and 256 latents a fixed 1e-6 would ask for better than float32's own spacing (1.9e-6 there).
    """
    assert sae.dtype == torch.float32
    got = sae.reconstruct(x)
    n, u = sae.n_latents + 1, 2.0 ** -24
    gamma = n * u / (1 - n * u)
    bound = 2 * gamma * (feature_acts.abs() @ sae.W_dec.double().abs() + sae.b_dec.double().abs())
    assert got.dtype == torch.float64 and got.shape == sae_out.shape
    assert ((got - sae_out).abs() <= bound).all()


# ------------------------------------------------------------------ against SAELens
def test_shared_fixture_matches_saelens(shared_jumprelu):
    sae = load_saelens(shared_jumprelu)
    x, feature_acts, sae_out = _expected(shared_jumprelu)
    _assert_close(sae.codes(x), feature_acts)
    _assert_reconstruction_close(sae, x, feature_acts, sae_out)
    assert (sae.d_model, sae.n_latents, sae.family, sae.architecture) == (64, 256, "external", "jumprelu")
    assert sae.dictionary.shape == (64, 256) and sae.dictionary.dtype == torch.float64
    assert not sae.apply_b_dec_to_input
    assert (feature_acts > 0).any() and (feature_acts == 0).any()  # the threshold really gates


@pytest.mark.parametrize("name", LOCAL_SAES)
def test_saelens_written_saes_match_saelens(name):
    folder = LOCAL / name
    sae = load_external_sae(folder)
    x, feature_acts, sae_out = _expected(folder)
    _assert_close(sae.codes(x), feature_acts)
    _assert_close(sae.reconstruct(x), sae_out)
    cfg = json.loads((folder / "cfg.json").read_text())
    assert sae.architecture == cfg["architecture"] and sae.normalize_activations == cfg["normalize_activations"]


def test_all_options_are_covered_by_saelens_references():
    seen = {(json.loads((LOCAL / n / "cfg.json").read_text())["architecture"],
             json.loads((LOCAL / n / "cfg.json").read_text())["normalize_activations"]) for n in LOCAL_SAES}
    assert {a for a, _ in seen} == {"standard", "jumprelu", "topk"}
    assert {n for _, n in seen} == {"none", "constant_norm_rescale", "layer_norm", "expected_average_only_in"}


def test_expected_average_scaling_factor_argument_equals_saelens_scaler_file(tmp_path):
    src = LOCAL / "jumprelu-expavg-d16-n48"
    s = json.loads((src / "activation_scaler.json").read_text())["scaling_factor"]
    dst = tmp_path / "no-scaler"
    shutil.copytree(src, dst)
    (dst / "activation_scaler.json").unlink()
    with pytest.raises(ValueError, match="norm_scaling_factor"):
        load_saelens(dst)
    x, feature_acts, sae_out = _expected(src)
    sae = load_saelens(dst, norm_scaling_factor=s)
    _assert_close(sae.codes(x), feature_acts)
    _assert_close(sae.reconstruct(x), sae_out)


@pytest.mark.parametrize("name", ["standard-bdec-d16-n48", "topk-rescaled-d16-n48", "jumprelu-expavg-d16-n48"])
def test_dictionary_and_codes_give_the_reconstruction(name):
    """For the constant (non per-token) normalisations: x_hat = codes @ dictionary^T + a constant bias."""
    sae = load_external_sae(LOCAL / name, dtype=torch.float64)
    x, _, _ = _expected(LOCAL / name)
    resid = sae.reconstruct(x) - sae.codes(x) @ sae.dictionary.T
    assert (resid - resid[0]).abs().max().item() < 1e-10
    if name.startswith("topk"):
        assert torch.allclose(sae.dictionary.norm(dim=0), torch.ones(sae.n_latents, dtype=torch.float64))
        assert ((sae.codes(x) != 0).sum(1) <= 6).all()


def test_pre_6_config_is_read_as_saelens_reads_it(tmp_path):
    """A config written before SAELens 6.0 (hook_point, no architecture, apply_b_dec_to_input defaulting to True)."""
    src = LOCAL / "standard-bdec-d16-n48"
    dst = tmp_path / "old"
    dst.mkdir()
    shutil.copy(src / "sae_weights.safetensors", dst)
    (dst / "cfg.json").write_text(json.dumps({"d_in": 16, "d_sae": 48, "dtype": "float32", "model_name": "gpt2",
                                              "hook_point": "blocks.3.hook_resid_pre", "hook_point_layer": 3,
                                              "normalize_activations": False, "sae_lens_version": "3.5.0"}))
    sae = load_saelens(dst)
    x, feature_acts, sae_out = _expected(src)
    _assert_close(sae.codes(x), feature_acts)
    _assert_close(sae.reconstruct(x), sae_out)
    assert (sae.hook_name, sae.layer, sae.model_name) == ("blocks.3.hook_resid_pre", 3, "gpt2")


# ------------------------------------------------------------------ layouts and Gemma Scope
def test_transposed_layout_gets_a_clear_error(shared_jumprelu, tmp_path):
    dst = tmp_path / "transposed"
    shutil.copytree(shared_jumprelu, dst)
    w = load_file(str(dst / "sae_weights.safetensors"))
    w["W_enc"] = w["W_enc"].T.contiguous()
    save_file(w, str(dst / "sae_weights.safetensors"))
    with pytest.raises(TransposedLayoutError) as exc:
        load_saelens(dst)
    msg = str(exc.value)
    assert "W_enc" in msg and "(256, 64)" in msg and "[d_in, d_sae]" in msg and "transpose" in msg.lower()
    w["W_enc"] = w["W_enc"].T.contiguous()
    w["W_dec"] = w["W_dec"].T.contiguous()
    save_file(w, str(dst / "sae_weights.safetensors"))
    with pytest.raises(TransposedLayoutError, match=r"W_dec.*\(64, 256\).*\[d_sae, d_in\]"):
        load_saelens(dst)


def _write_npz(path: Path, weights: dict, lower=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {(("w_" + k[2:]) if lower and k.startswith("W_") else k): v.numpy() for k, v in weights.items()}
    np.savez(path, **arrays)


@pytest.mark.parametrize("lower", [False, True])
def test_gemma_scope_npz_matches_the_same_sae_in_saelens_format(shared_jumprelu, tmp_path, lower):
    """Gemma Scope's params.npz is a JumpReLU SAE with apply_b_dec_to_input = False, like the shared fixture."""
    w = load_file(str(shared_jumprelu / "sae_weights.safetensors"))
    npz = tmp_path / "gemma-scope-2b-pt-res" / "layer_3" / "width_16k" / "average_l0_82" / "params.npz"
    _write_npz(npz, w, lower=lower)
    sae = load_external_sae(npz.parent)
    x, feature_acts, sae_out = _expected(shared_jumprelu)
    _assert_close(sae.codes(x), feature_acts)
    _assert_reconstruction_close(sae, x, feature_acts, sae_out)
    assert sae.hook_name == "blocks.3.hook_resid_post" and sae.layer == 4  # block 3's output = atomsnb layer 4
    assert sae.name == "Gemma Scope layer_3/width_16k/average_l0_82"
    assert sae.model_name == "gemma-2-2b"
    assert load_gemma_scope(npz, layer=4, model="google/gemma-2-2b").layer == 4  # what the path says: accepted
    with pytest.raises(HookMismatchError, match=r"'blocks.3.hook_resid_post'.*atomsnb layer 4, but layer 7"):
        load_gemma_scope(npz, layer=7)
    with pytest.raises(HookMismatchError, match=r"trained on model 'gemma-2-2b', but the target model is 'smollm2-135m'"):
        load_gemma_scope(npz, model="smollm2-135m")
    forced = load_gemma_scope(npz, layer=7, model="smollm2-135m", allow_mismatch=True)
    assert forced.layer == 7 and forced.mismatch_allowed and forced.hook_name == "blocks.3.hook_resid_post"


@pytest.mark.parametrize("repo, hook, model", [("gemma-scope-2b-pt-mlp", "blocks.3.hook_mlp_out", "gemma-2-2b"),
                                               ("gemma-scope-9b-it-att", "blocks.3.attn.hook_z", "gemma-2-9b-it"),
                                               ("gemma-scope-2b-pt-transcoders", "blocks.3.ln2.hook_normalized",
                                                "gemma-2-2b")])
def test_gemma_scope_non_residual_sae_records_its_hook_and_is_refused_at_a_layer(shared_jumprelu, tmp_path, repo, hook,
                                                                                 model):
    w = load_file(str(shared_jumprelu / "sae_weights.safetensors"))
    npz = tmp_path / repo / "layer_3" / "width_16k" / "average_l0_82" / "params.npz"
    _write_npz(npz, w)
    sae = load_gemma_scope(npz)
    assert sae.layer is None and sae.hook_name == hook and sae.model_name == model
    with pytest.raises(HookMismatchError, match=rf"trained on hook '{hook}', which is not the residual stream"):
        load_gemma_scope(npz, layer=4)


def test_saelens_config_hook_and_model_are_checked(tmp_path):
    """cfg.json's hook_name and model_name decide where the SAE may be used (layer and model at load)."""
    src = LOCAL / "standard-bdec-d16-n48"

    def with_cfg(**kv):
        dst = tmp_path / f"sae{len(list(tmp_path.iterdir()))}"
        shutil.copytree(src, dst)
        cfg = json.loads((dst / "cfg.json").read_text())
        cfg.pop("hook_name", None)
        cfg.setdefault("metadata", {}).pop("hook_name", None)
        cfg["metadata"].pop("model_name", None)
        cfg["metadata"].update(kv)
        (dst / "cfg.json").write_text(json.dumps(cfg))
        return dst

    mlp = with_cfg(hook_name="blocks.2.hook_mlp_out", model_name="gpt2-small")
    sae = load_saelens(mlp)
    assert (sae.hook_name, sae.layer, sae.model_name) == ("blocks.2.hook_mlp_out", None, "gpt2-small")
    with pytest.raises(HookMismatchError, match=r"'blocks.2.hook_mlp_out', which is not the residual stream.*"
                                                r"allow_mismatch=True"):
        load_saelens(mlp, layer=3)
    resid = with_cfg(hook_name="blocks.2.hook_resid_post", model_name="gpt2-small")
    assert load_saelens(resid, layer=3, model="openai-community/gpt2").layer == 3  # TransformerLens' gpt2-small
    with pytest.raises(HookMismatchError, match=r"trained on model 'gpt2-small', but the target model is 'gemma3-270m'"):
        load_saelens(resid, layer=3, model="gemma3-270m")
    with pytest.raises(HookMismatchError, match=r"atomsnb layer 3, but layer 2 was asked for; use it at layer 3"):
        load_saelens(resid, layer=2)
    bare = with_cfg()
    assert load_saelens(bare).layer is None and load_saelens(bare, layer=5).layer == 5  # no hook: the caller declares
    with pytest.raises(ValueError, match=r"layer must be .* integer >= 1; got 0"):
        load_saelens(bare, layer=0)


@pytest.mark.parametrize("sae_model, names, same", [
    ("gemma-2-2b", ["google/gemma-2-2b"], True), ("gpt2-small", ["gpt2"], True),
    ("pythia-70m-deduped", ["EleutherAI/pythia-70m-deduped"], True), ("pythia-70m-deduped", ["pythia-70m"], False),
    ("SmolLM2-135M-Instruct", ["smollm2-135m"], True), ("gemma-3-270m", ["gemma3-270m"], True),
    ("gemma-2-2b", ["gemma3-270m"], False), ("gemma-2-2b", ["/tmp/runs/gemma-2-2b/"], True),
    ("gemma-2-2b-it", ["gemma-2-2b"], False)])
def test_same_model(sae_model, names, same):
    assert same_model(sae_model, names) is same


@pytest.mark.parametrize("hook, layer", [("blocks.0.hook_resid_post", 1), ("blocks.12.hook_resid_post", 13),
                                         ("blocks.5.hook_resid_pre", 5), ("model.layers.12", 13),
                                         ("transformer.h.0", 1), ("blocks.5.hook_mlp_out", None),
                                         ("blocks.5.hook_resid_mid", None), ("hook_embed", None), (None, None)])
def test_residual_layer_of_hook(hook, layer):
    assert residual_layer_of_hook(hook) == layer


def test_hub_spec_without_hub_says_how_to_download(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError) as exc:
        load_external_sae("google/gemma-scope-2b-pt-res/layer_12/width_16k/average_l0_82", cache_dir=tmp_path)
    msg = str(exc.value)
    assert "huggingface-cli download google/gemma-scope-2b-pt-res --include 'layer_12/width_16k/average_l0_82/*'" in msg


# ------------------------------------------------------------------ as a unit set
def test_external_sae_goes_through_the_unit_set_evaluation(shared_jumprelu):
    from atomsnb.aip import AIP
    from atomsnb.metrics import evaluate_dictionary

    sae = load_saelens(shared_jumprelu)
    x, feature_acts, _ = _expected(shared_jumprelu)
    x = x.double()
    aip = AIP.fit(x, min_tokens_per_dim=1)
    m = evaluate_dictionary(x, sae.codes(x), sae.reconstruct(x), sae.dictionary, aip)
    assert m["l0"] == pytest.approx(float((feature_acts != 0).double().sum(1).mean()))
    # SAELens' explained_variance formula on our reconstruction (checked against SAELens' sae_out above, to float32
    # rounding, which moves this number by ~1e-9)
    ev = 1 - ((x - sae.reconstruct(x)) ** 2).sum() / ((x - x.mean(0)) ** 2).sum()
    assert m["explained_variance"] == pytest.approx(float(ev), abs=1e-9)
    assert m["n_latents"] == 256 and 0 <= m["q_star"] <= 1


def _identity_sae(d: int, hook_name: str | None) -> ExternalSAE:
    """ReLU SAE with W_enc = [I, -I], W_dec = [I; -I]: relu(x) - relu(-x) = x exactly."""
    eye = torch.eye(d)
    return ExternalSAE(name="identity SAE", architecture="standard", W_enc=torch.cat([eye, -eye], 1),
                       b_enc=torch.zeros(2 * d), W_dec=torch.cat([eye, -eye], 0), b_dec=torch.zeros(d),
                       apply_b_dec_to_input=False, hook_name=hook_name, layer=residual_layer_of_hook(hook_name))


def test_external_sae_splices_into_a_model(tmp_path, one_thread):
    from tiny_models import save_tiny

    from atomsnb.models import load_model
    from atomsnb.splice import spliced_scores

    lm = load_model(str(save_tiny("llama", tmp_path / "llama", seed=2)))
    sae = _identity_sae(32, "blocks.1.hook_resid_post")
    assert sae.layer == 2
    w = torch.randint(2, 300, (2, 12), generator=torch.Generator().manual_seed(0))
    w[:, 0] = lm.tokenizer.bos_token_id
    s = spliced_scores(lm, sae, w, 2)
    assert s.ce_loss_score == 1.0 and s.kl_div_with_sae == 0.0
    with pytest.raises(HookMismatchError, match=r"'blocks.1.hook_resid_post', the residual stream at atomsnb layer 2, "
                                                r"but layer 1 was asked for"):
        spliced_scores(lm, sae, w, 1)


def test_splicing_refuses_another_hook_point_or_model_unless_allowed(tmp_path, one_thread):
    """An SAE trained on an MLP output, on no known hook, or on another model is not spliced into the residual
    stream unless the caller says allow_mismatch=True (where the identity SAE then scores exactly 1)."""
    from tiny_models import save_tiny

    from atomsnb.models import load_model
    from atomsnb.splice import spliced_scores

    lm = load_model(str(save_tiny("llama", tmp_path / "llama", seed=2)))
    w = torch.randint(2, 300, (2, 12), generator=torch.Generator().manual_seed(0))
    w[:, 0] = lm.tokenizer.bos_token_id
    mlp = _identity_sae(32, "blocks.1.hook_mlp_out")
    assert mlp.layer is None
    with pytest.raises(HookMismatchError, match=r"'blocks.1.hook_mlp_out', which is not the residual stream; it cannot "
                                                r"replace the residual stream at layer 2.*allow_mismatch=True"):
        spliced_scores(lm, mlp, w, 2)
    with pytest.raises(HookMismatchError, match=r"does not say which hook point.*load it with layer=2"):
        spliced_scores(lm, _identity_sae(32, None), w, 2)
    other = _identity_sae(32, "blocks.1.hook_resid_post")
    other.model_name = "gemma-2-2b"
    with pytest.raises(HookMismatchError, match=r"trained on model 'gemma-2-2b', but the target model is '.*llama'"):
        spliced_scores(lm, other, w, 2)
    own = _identity_sae(32, "blocks.1.hook_resid_post")
    own.model_name = "llama"  # the tiny model's directory name
    assert spliced_scores(lm, own, w, 2).ce_loss_score == 1.0
    for sae in (mlp, other):
        assert spliced_scores(lm, sae, w, 2, allow_mismatch=True).ce_loss_score == 1.0
    declared = _identity_sae(32, None)
    declared.mismatch_allowed = True  # what load_*(..., allow_mismatch=True) records
    assert spliced_scores(lm, declared, w, 2).ce_loss_score == 1.0
