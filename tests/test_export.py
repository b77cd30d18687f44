"""atomsnb.export: our unit sets in SAELens' format, and the download zip with its model card.

The round trip writes a unit set with :func:`export_saelens` and reads it back with :func:`atomsnb.external.load_saelens`
(tested against SAELens-written fixtures in ``tests/test_external.py``; against SAELens itself in ``tests/compat/``);
the reference is :class:`atomsnb.units.SAEUnits` (``tests/export_cases.py`` says how they are compared and why the
tolerances are what they are).
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from atomsnb.aip import AIP
from atomsnb.export import (EXPORT_DTYPES, MODEL_CARD_JSON, MODEL_CARD_README, SAELENS_VERSION, export_saelens,
                            saelens_hook_name, zip_export)
from atomsnb.external import check_target, load_saelens, residual_layer_of_hook
from atomsnb.sae import SAEConfig, construct_tsae, train_sae
from atomsnb.units import Neurons, SAEUnits
from export_cases import H, N, assert_same_as_ours, make_acts, random_sae

@pytest.fixture(scope="module")
def acts() -> torch.Tensor:
    return make_acts()


@pytest.fixture(scope="module")
def aip(acts) -> AIP:
    return AIP.fit(acts)


def _assert_round_trip(units: SAEUnits, folder: Path, x: torch.Tensor, dtype: str) -> None:
    loaded = load_saelens(folder)
    assert_same_as_ours(units, x, loaded.codes(x), loaded.reconstruct(x), dtype)


@pytest.mark.parametrize("dtype", EXPORT_DTYPES)
@pytest.mark.parametrize("kind,whitened,tied", [("jumprelu", True, False), ("jumprelu", False, False),
                                                ("relu", True, False), ("relu", False, False),
                                                ("jumprelu", True, True), ("topk", True, False),
                                                ("topk", False, False), ("batchtopk", True, False)])
def test_export_round_trip_keeps_support_and_reconstruction(tmp_path, acts, aip, kind, whitened, tied, dtype):
    sae = random_sae(kind, whitened, getattr(torch, dtype), tied=tied)
    units = SAEUnits(sae, aip if whitened else None, name=f"{kind} whitened={whitened}", family="atoms")
    out = export_saelens(units, tmp_path / "sae", layer=3, model_name="HuggingFaceTB/SmolLM2-135M", dtype=dtype)
    _assert_round_trip(units, out, acts[:512], dtype)
    cfg = json.loads((out / "cfg.json").read_text())
    assert cfg["architecture"] == {"jumprelu": "jumprelu", "relu": "standard", "topk": "topk",
                                   "batchtopk": "jumprelu"}[kind]
    if kind == "topk":
        assert (cfg["k"], cfg["rescale_acts_by_decoder_norm"], cfg["apply_b_dec_to_input"]) == (5, False, False)
    assert (cfg["d_in"], cfg["d_sae"], cfg["dtype"]) == (H, N, dtype)
    assert cfg["metadata"]["hook_name"] == "blocks.2.hook_resid_post"
    assert cfg["metadata"]["model_name"] == "HuggingFaceTB/SmolLM2-135M"
    assert cfg["metadata"]["sae_lens_version"] == SAELENS_VERSION
    state = load_file(out / "sae_weights.safetensors")
    assert set(state) == {"W_enc", "b_enc", "W_dec", "b_dec"} | ({"threshold"} if kind in ("jumprelu", "batchtopk")
                                                                  else set())
    assert all(t.dtype == getattr(torch, dtype) for t in state.values())


def test_trained_tsae_and_constructed_tsae_round_trip(tmp_path, acts, aip):
    config = SAEConfig.for_model(H, kind="jumprelu", n_steps=40, batch_size=256, log_every=20)
    sae, _ = train_sae(acts[:1500].float(), aip, config, progress=False)
    assert sae.whitened and sae.input_scale != 1.0, "a trained TSAE folds whitening and input scaling"
    trained = SAEUnits(sae, aip, name="atoms (trained)", family="atoms")
    _assert_round_trip(trained, export_saelens(trained, tmp_path / "trained", layer=1, model_name="m"),
                       acts[1500:], "float32")
    g = torch.Generator().manual_seed(3)
    D = torch.randn(H, N, generator=g, dtype=torch.float64)
    constructed = SAEUnits(construct_tsae(D, aip, 0.5).sae, name="constructed", family="constructed")
    _assert_round_trip(constructed, export_saelens(constructed, tmp_path / "constructed", layer=1, model_name="m",
                                                   dtype="float64"), acts[1500:], "float64")


@pytest.mark.parametrize("layer,hook", [(0, "blocks.0.hook_resid_pre"), (1, "blocks.0.hook_resid_post"),
                                        (12, "blocks.11.hook_resid_post")])
def test_hook_name_is_the_residual_stream_at_the_layer(tmp_path, layer, hook, aip):
    assert saelens_hook_name(layer) == hook
    assert residual_layer_of_hook(hook) == layer
    units = SAEUnits(random_sae("jumprelu", True, torch.float32), aip, name="a", family="atoms")
    loaded = load_saelens(export_saelens(units, tmp_path / "e", layer=layer, model_name="google/gemma-3-270m"))
    assert (loaded.hook_name, loaded.layer, loaded.model_name) == (hook, layer, "google/gemma-3-270m")
    check_target(loaded, layer=layer, model="gemma-3-270m")  # accepted where it belongs


def _snapshot(folder: Path) -> dict:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_export_refuses_what_it_cannot_express_before_writing(tmp_path, aip):
    units = SAEUnits(random_sae("jumprelu", True, torch.float32), aip, name="a", family="atoms")
    target = tmp_path / "new"
    with pytest.raises(TypeError, match="Neurons.*identity dictionary"):
        export_saelens(Neurons(H), target, layer=1, model_name="m")
    future = random_sae("relu", False, torch.float32)
    future.kind = "gated"  # a kind with no SAELens entry
    with pytest.raises(ValueError, match=r"kind 'gated' has no SAELens export; exportable kinds: \['batchtopk', "
                                         r"'jumprelu', 'relu', 'topk'\]"):
        export_saelens(SAEUnits(future, name="t", family="features"), target, layer=1, model_name="m")
    for layer in (-1, 1.5, True, "3"):
        with pytest.raises(ValueError, match=f"layer must be .* integer >= 0.*got {layer!r}"):
            export_saelens(units, target, layer=layer, model_name="m")
    with pytest.raises(ValueError, match="model_name must be a non-empty string"):
        export_saelens(units, target, layer=1, model_name=" ")
    with pytest.raises(ValueError, match=r"dtype must be one of \('float32', 'float64'\); got 'bfloat16'"):
        export_saelens(units, target, layer=1, model_name="m", dtype="bfloat16")
    with pytest.raises(ValueError, match=r"metadata keys \['hook_name'\] are set by export_saelens"):
        export_saelens(units, target, layer=1, model_name="m", metadata={"hook_name": "x"})
    g = torch.Generator().manual_seed(0)
    low_rank = torch.randn(400, 4, generator=g, dtype=torch.float64) @ torch.randn(4, H, generator=g, dtype=torch.float64)
    pinv_aip = AIP.fit(low_rank, pinv=True)
    assert pinv_aip.rank < H
    with pytest.raises(ValueError, match=f"the AIP has rank {pinv_aip.rank} < d_model={H}"):
        export_saelens(SAEUnits(random_sae("jumprelu", True, torch.float32), pinv_aip, name="p", family="atoms"),
                       target, layer=1, model_name="m")
    assert not target.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "no temporary directory left behind"


def test_export_refuses_a_non_empty_directory_unless_overwrite(tmp_path, aip):
    units = SAEUnits(random_sae("jumprelu", True, torch.float32), aip, name="a", family="atoms")
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    for overwrite in (False, True):  # overwrite=True replaces only an earlier export, never other files
        with pytest.raises(FileExistsError, match="notes.txt"):
            export_saelens(units, busy, layer=1, model_name="m", overwrite=overwrite)
    assert _snapshot(busy) == {"notes.txt": b"mine"}
    (tmp_path / "file").write_text("x")
    with pytest.raises(FileExistsError, match="is not a directory"):
        export_saelens(units, tmp_path / "file", layer=1, model_name="m")

    first = export_saelens(units, tmp_path / "e", layer=1, model_name="m")
    before = _snapshot(first)
    with pytest.raises(FileExistsError, match="pass overwrite=True"):
        export_saelens(units, first, layer=2, model_name="m")
    assert _snapshot(first) == before
    export_saelens(units, first, layer=2, model_name="m", overwrite=True)
    assert json.loads((first / "cfg.json").read_text())["metadata"]["hook_name"] == "blocks.1.hook_resid_post"
    (tmp_path / "empty").mkdir()
    assert load_saelens(export_saelens(units, tmp_path / "empty", layer=1, model_name="m")).n_latents == N


CARD = dict(corpus="wikitext-103 (train)", n_tokens=2_000_000, n_steps=1000, coefficients={"l0_coefficient": 0.003},
            metrics={"r2_aip": 0.91, "explained_variance": 0.87, "l0": 31.5, "q_star": 0.66})


def test_zip_export_bundles_the_sae_with_its_model_card(tmp_path, aip):
    units = SAEUnits(random_sae("jumprelu", True, torch.float32), aip, name="atoms (TSAE, L0 coefficient 0.003)",
                     family="atoms")
    folder = export_saelens(units, tmp_path / "smollm2-l5-tsae", layer=5, model_name="HuggingFaceTB/SmolLM2-135M")
    out = zip_export(folder, tmp_path / "downloads" / "smollm2-l5-tsae.zip", **CARD)
    with zipfile.ZipFile(out) as zf:
        assert sorted(zf.namelist()) == [f"smollm2-l5-tsae/{f}" for f in
                                         sorted(["cfg.json", "sae_weights.safetensors", MODEL_CARD_JSON, MODEL_CARD_README])]
        files = {n.split("/", 1)[1]: zf.read(n) for n in zf.namelist()}
        zf.extractall(tmp_path / "unzipped")
    card = json.loads(files[MODEL_CARD_JSON])
    assert (card["model"], card["layer"], card["hook_name"]) == ("HuggingFaceTB/SmolLM2-135M", 5, "blocks.4.hook_resid_post")
    assert (card["corpus"], card["n_tokens"], card["n_steps"]) == ("wikitext-103 (train)", 2_000_000, 1000)
    assert card["coefficients"] == {"l0_coefficient": 0.003} and card["metrics"]["r2_aip"] == 0.91
    assert card["unit_set"] == "atoms (TSAE, L0 coefficient 0.003)" and card["architecture"] == "jumprelu"
    import atomsnb
    assert card["atomsnb_version"] == atomsnb.__version__
    assert card["git_commit"] is None or len(card["git_commit"]) == 40
    import hashlib
    assert card["sha256"]["sae_weights.safetensors"] == hashlib.sha256(files["sae_weights.safetensors"]).hexdigest()
    readme = files[MODEL_CARD_README].decode()
    assert "SAE.load_from_disk(\"smollm2-l5-tsae\")" in readme and "| held-out `r2_aip` | 0.91 |" in readme
    repo_root = str(Path(atomsnb.__file__).resolve().parent.parent)
    for name, data in files.items():
        if name != "sae_weights.safetensors":
            text = data.decode()
            assert str(tmp_path) not in text and repo_root not in text, f"{name} holds an absolute path"
    # the unzipped folder is the SAE itself
    assert torch.equal(load_saelens(tmp_path / "unzipped" / "smollm2-l5-tsae").W_enc, load_saelens(folder).W_enc)
    # reproducible bytes, and no silent replacement
    again = zip_export(folder, tmp_path / "again.zip", **CARD)
    assert again.read_bytes() == out.read_bytes()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        zip_export(folder, out, **CARD)


def test_zip_export_refuses_bad_cards_before_writing(tmp_path, aip):
    units = SAEUnits(random_sae("relu", False, torch.float32), name="f", family="features")
    folder = export_saelens(units, tmp_path / "e", layer=1, model_name="m")
    out = tmp_path / "d.zip"
    bad = [(dict(corpus="/home/me/corpus.txt"), "not an absolute path"), (dict(corpus=""), "corpus must name"),
           (dict(n_tokens=0), "n_tokens must be an integer >= 1; got 0"),
           (dict(n_steps=2.5), "n_steps must be an integer >= 1; got 2.5"),
           (dict(coefficients={}), "coefficients must be a non-empty mapping"),
           (dict(metrics={"r2_aip": float("nan")}), r"metrics\['r2_aip'\] must be a finite number; got nan")]
    for change, message in bad:
        with pytest.raises(ValueError, match=message):
            zip_export(folder, out, **{**CARD, **change})
    with pytest.raises(ValueError, match="must end in .zip"):
        zip_export(folder, tmp_path / "d.tar", **CARD)
    with pytest.raises(FileNotFoundError, match="lacks"):
        zip_export(tmp_path / "nowhere", out, **CARD)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "cfg.json").write_text(json.dumps({"d_in": 1, "d_sae": 1}))
    (foreign / "sae_weights.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="no metadata.atomsnb"):
        zip_export(foreign, out, **CARD)
    (foreign / "cfg.json").write_text("{not json")
    with pytest.raises(ValueError, match="is not valid UTF-8 JSON"):
        zip_export(foreign, out, **CARD)
    assert not out.exists()


def test_export_results_zips_every_exportable_unit_set_with_its_held_out_metrics(tmp_path):
    """A chapter's downloads: every trained SAE of a comparison as a SAELens zip whose card carries its row's
    coefficients and held-out metrics; the neurons are skipped; the zip's SAE loads back as the same unit set."""
    from atomsnb.evaluation import compare_unit_sets
    from atomsnb.export import export_results
    from atomsnb.external import load_saelens
    from atomsnb.sae import SAEConfig
    from atomsnb.units import UnitSetSpec

    g = torch.Generator().manual_seed(0)
    x = torch.randn(3000, 8, generator=g, dtype=torch.float64) @ torch.randn(8, 8, generator=g, dtype=torch.float64)
    aip = AIP.fit(x[:2000])
    cfg = SAEConfig(n_latents=16, n_steps=20, batch_size=128, init_threshold=0.05, bandwidth=0.01, lr=3e-3)
    res = compare_unit_sets(x[:2000], x[2000:], aip, [UnitSetSpec.neurons(), UnitSetSpec.atoms(0.003, "atoms"),
                                                       UnitSetSpec.features(0.01, "features")], cfg, n_train_eval=0,
                            progress=False)
    zips = export_results(res.units, res.table, tmp_path / "dl", layer=3, model_name="tiny", corpus="docstrings",
                          n_tokens=2000, n_steps=20)
    assert list(zips) == ["atoms", "features"] and all(z.name in ("atoms.zip", "features.zip") for z in zips.values())
    held = res.table[res.table["split"] == "held-out"].set_index("unit set")
    for name, z in zips.items():
        with zipfile.ZipFile(z) as f:
            card = json.loads(f.read(f"{name}/model_card.json"))
        assert card["metrics"]["r2_aip"] == held.loc[name, "r2_aip"] and card["metrics"]["l0"] == held.loc[name, "l0"]
        assert str(tmp_path) not in json.dumps(card)
        back = load_saelens(tmp_path / "dl" / name)
        xe = x[2000:2100].float()
        assert torch.allclose(back.reconstruct(xe).double(), res.units[name].reconstruct(xe.double()), atol=1e-4,
                              rtol=1e-4)
