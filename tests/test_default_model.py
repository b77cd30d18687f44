"""The docstring GPT-2 (registered name "docstring-gpt2"): deterministic build, model card, checksum, BOS, one loading path.

The full-size build takes minutes and is no longer on the book's default path; these tests build a micro
configuration of the same recipe.
"""

import pytest

from atomsnb import models
from atomsnb.architecture import tokenizer_prefix
from atomsnb.default_model import MODEL_NAME, DefaultModelConfig, _is_valid, default_model_path, ensure_default_model
from atomsnb.models import load_model, model_card

MICRO = DefaultModelConfig(vocab_size=300, n_embd=32, n_layer=2, n_head=2, n_ctx=32, batch_size=4, n_steps=6,
                           warmup_steps=2, n_val_sequences=4)


def test_micro_build_is_deterministic_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("ATOMSNB_CACHE", str(tmp_path / "a"))
    p1 = ensure_default_model(MICRO, verbose=False)
    card = model_card(p1)
    assert card["name"] == MODEL_NAME == "docstring-gpt2"
    assert card["tokens_seen"] == 6 * 4 * 32 and card["val_loss"] > 0
    assert card["corpus"]["train_fingerprint"] and card["weights_sha256"]
    mtime = (p1 / "model.safetensors").stat().st_mtime
    assert ensure_default_model(MICRO, verbose=False) == p1  # cached: not rebuilt
    assert (p1 / "model.safetensors").stat().st_mtime == mtime
    monkeypatch.setenv("ATOMSNB_CACHE", str(tmp_path / "b"))
    p2 = ensure_default_model(MICRO, verbose=False)
    assert model_card(p2)["weights_sha256"] == card["weights_sha256"]  # same seed, same bytes


def test_damaged_model_is_detected_and_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("ATOMSNB_CACHE", str(tmp_path))
    p = ensure_default_model(MICRO, verbose=False)
    sha = model_card(p)["weights_sha256"]
    assert _is_valid(p)  # (this records the weights' hash stamp)
    weights = p / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-10] ^= 0xFF
    weights.write_bytes(bytes(raw))  # same size: only the stamp's mtime/ctime tell
    assert not _is_valid(p)
    assert model_card(ensure_default_model(MICRO, verbose=False))["weights_sha256"] == sha


def test_cache_key_depends_on_config():
    assert default_model_path(MICRO) != default_model_path(DefaultModelConfig())


def test_tokenizer_adds_the_bos_it_was_trained_with_and_windows_start_with_it(tmp_path, monkeypatch):
    monkeypatch.setenv("ATOMSNB_CACHE", str(tmp_path))
    p = ensure_default_model(MICRO, verbose=False)
    lm = load_model(str(p))
    eot = lm.tokenizer.convert_tokens_to_ids("<|endoftext|>")
    assert tokenizer_prefix(lm.tokenizer) == [eot]
    text = "Return the absolute value of x."
    ids = lm.tokenizer(text)["input_ids"]
    assert ids[0] == eot and lm.tokenizer.decode(ids[1:]) == text


def test_registered_name_routes_to_the_docstring_gpt2(tmp_path, monkeypatch):
    monkeypatch.setenv("ATOMSNB_CACHE", str(tmp_path))
    built = ensure_default_model(MICRO, verbose=False)
    monkeypatch.setattr(models, "ensure_default_model", lambda verbose=True: built)
    for name in ("docstring-gpt2", "atomsnb/docstring-gpt2"):
        lm = load_model(name)
        assert lm.name == "docstring-gpt2" and lm.path == str(built)
        assert type(lm.model).__name__ == "GPT2LMHeadModel" and lm.n_layers == 2 and lm.d_model == 32
    assert models.model_card("docstring-gpt2")["config"]["n_embd"] == 32
    assert models.DEFAULT_MODEL_NAME == "smollm2-135m" != MODEL_NAME


@pytest.mark.parametrize("alias", ["default", "smollm2-135m"])
def test_default_resolves_to_smollm2(alias):
    assert models.canonical_name(alias) == "smollm2-135m"
