"""Residual-stream activations through hooks on GPT-2, Llama and Gemma2 architectures (tiny, random, local)."""

import pytest
import torch

from atomsnb.activations import ActivationConfig, capture_residual_stream, collect_activations, token_windows
from atomsnb.corpus import Corpus
from atomsnb.models import ModelNotFoundError, load_model, resolve_device, resolve_dtype
from tiny_models import save_tiny

ARCHS = ["gpt2", "llama", "gemma2"]


@pytest.fixture(scope="module", params=ARCHS)
def tiny(request, tmp_path_factory):
    return save_tiny(request.param, tmp_path_factory.mktemp(request.param))


def test_hooks_match_output_hidden_states(tiny):
    lm = load_model(str(tiny))
    assert lm.n_layers == 2 and lm.d_model == 32
    ids = torch.randint(2, 200, (3, 12), generator=torch.Generator().manual_seed(0))
    got = capture_residual_stream(lm, ids, [0, 1, 2])
    with torch.no_grad():
        hs = lm.model(input_ids=ids, output_hidden_states=True).hidden_states
    # layers 0..n_layers-1 coincide with hidden_states; the last differs (final norm applied there)
    for layer in (0, 1):
        torch.testing.assert_close(got[layer], hs[layer], rtol=1e-5, atol=1e-6)
    assert got[2].shape == hs[2].shape
    assert not torch.allclose(got[2], hs[2])


def test_collect_shapes_tokens_and_bos_dropped(tiny):
    cfg = ActivationConfig(model=str(tiny), layers=(1, 2), corpus="docstrings", split="eval", n_tokens=300,
                           seq_len=16, batch_size=4)
    a = collect_activations(cfg)
    assert set(a.acts) == {1, 2} and a.acts[1].shape == (300, 32) and a.acts[1].dtype == torch.float32
    assert a.token_ids.shape == (300,) and a.position.min() == 1  # BOS at position 0 dropped
    bos = load_model(str(tiny)).tokenizer.bos_token_id
    assert (a.windows[:, 0] == bos).all() and not (a.token_ids == bos).any()
    # the recorded token ids are the ones at (window, position)
    assert torch.equal(a.windows[a.window, a.position], a.token_ids)


def test_cache_is_used_and_corruption_is_recomputed(tmp_path, monkeypatch, capsys):
    path = save_tiny("gpt2", tmp_path / "m")
    cfg = ActivationConfig(model=str(path), layers=(1,), split="eval", n_tokens=200, seq_len=16)
    first = collect_activations(cfg)
    files = sorted((p for p in (tmp_path.parent).rglob("layer001.safetensors")), key=lambda p: p.stat().st_mtime)
    assert files, "a cache file must be written"
    cache_file = files[-1]
    again = collect_activations(cfg)
    assert torch.equal(first.acts[1], again.acts[1])
    raw = bytearray(cache_file.read_bytes())
    raw[-3] ^= 0xFF
    cache_file.write_bytes(bytes(raw))
    healed = collect_activations(cfg)
    assert "SHA-256" in capsys.readouterr().out
    assert torch.equal(first.acts[1], healed.acts[1])


def test_bad_inputs_are_clear_errors(tmp_path):
    path = save_tiny("llama", tmp_path / "m")
    with pytest.raises(ValueError, match=r"out of range.*0\.\.2"):
        collect_activations(ActivationConfig(model=str(path), layers=(3,), n_tokens=10))
    with pytest.raises(ValueError, match="asked for n_tokens=10000000"):
        collect_activations(ActivationConfig(model=str(path), layers=(1,), n_tokens=10_000_000, split="eval"))
    empty = tmp_path / "empty.txt"
    empty.write_text("short\n\nx")
    with pytest.raises(ValueError, match="empty"):
        collect_activations(ActivationConfig(model=str(path), layers=(1,), corpus=f"file:{empty}", n_tokens=10))
    with pytest.raises(ValueError, match="unknown dtype 'float8'"):
        resolve_dtype("float8")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


def test_nan_activations_name_the_layer(tmp_path):
    path = save_tiny("gpt2", tmp_path / "m")
    lm = load_model(str(path))
    with torch.no_grad():
        lm.model.transformer.h[1].mlp.c_proj.weight.fill_(float("nan"))
    with pytest.raises(ValueError, match="layer 2"):
        collect_activations(ActivationConfig(model=str(path), layers=(1, 2), split="eval", n_tokens=50, seq_len=16),
                            model=lm, cache=False)


def test_unknown_model_offline_says_how_to_fix():
    with pytest.raises(ModelNotFoundError, match=r"'no-such-org/no-such-model'.*hub.*local directory"):
        load_model("no-such-org/no-such-model")


def test_token_windows_deterministic_and_local_file_corpus(tmp_path):
    f = tmp_path / "t.txt"
    f.write_text("\n\n".join(f"Paragraph number {i} talks about matrices and vectors." for i in range(200)))
    tok = load_model(str(save_tiny("gpt2", tmp_path / "m"))).tokenizer
    c = Corpus(f"file:{f}")
    w1 = token_windows(tok, c, "train", n_tokens=100, seq_len=8, seed=3)
    w2 = token_windows(tok, c, "train", n_tokens=100, seq_len=8, seed=3)
    w3 = token_windows(tok, c, "train", n_tokens=100, seq_len=8, seed=4)
    assert torch.equal(w1, w2) and not torch.equal(w1, w3)
    assert w1.shape == (15, 8)  # ceil(100 / 7) windows of BOS + 7 tokens
