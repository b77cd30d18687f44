"""The offline default model: deterministic build, model card, checksum, one loading path."""

import pytest

from atomsnb.default_model import (DEFAULT_MODEL_NAME, DefaultModelConfig, _is_valid, default_model_path,
                                   ensure_default_model, model_card)
from atomsnb.models import load_model

MICRO = DefaultModelConfig(vocab_size=300, n_embd=32, n_layer=2, n_head=2, n_ctx=32, batch_size=4, n_steps=6,
                           warmup_steps=2, n_val_sequences=4)


def test_micro_build_is_deterministic_and_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("ATOMSNB_CACHE", str(tmp_path / "a"))
    p1 = ensure_default_model(MICRO, verbose=False)
    card = model_card(p1)
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
    weights = p / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-10] ^= 0xFF
    weights.write_bytes(bytes(raw))
    assert not _is_valid(p)
    assert model_card(ensure_default_model(MICRO, verbose=False))["weights_sha256"] == sha


def test_cache_key_depends_on_config():
    assert default_model_path(MICRO) != default_model_path(DefaultModelConfig())


@pytest.mark.shared_cache
def test_default_model_is_a_real_trained_lm():
    """The book's default model (built once, shared with the book via the repo's cache)."""
    path = ensure_default_model()
    card = model_card(path)
    assert card["val_loss"] < card["val_loss_uniform_baseline"] - 2.0, "the model must have learned the corpus"
    for name in ("default", DEFAULT_MODEL_NAME, str(path)):
        lm = load_model(name)
        assert lm.n_layers == 4 and lm.d_model == 256
        assert type(lm.model).__name__ == "GPT2LMHeadModel"
    ids = lm.tokenizer("Return the absolute value of x.", return_tensors="pt")["input_ids"]
    assert lm.tokenizer.decode(ids[0]) == "Return the absolute value of x."
