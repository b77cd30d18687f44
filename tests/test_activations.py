"""Residual-stream activations through hooks on GPT-2, Llama and Gemma2 architectures (tiny, random, local)."""

import pytest
import torch

from atomsnb.activations import (ActivationConfig, capture_residual_stream, collect_activations, next_token_loss,
                                 token_windows)
from atomsnb.corpus import Corpus, split_of
from atomsnb.paths import cache_dir
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


@pytest.mark.parametrize("add_bos", [True, False], ids=["adds-bos", "no-bos"])
def test_windows_begin_as_the_tokenizer_begins_a_text(tmp_path, add_bos):
    """A one-document corpus: the first window is exactly how the tokenizer encodes that text on its own."""
    text = " ".join(f"Return the sum of the numbers number {i}." for i in range(40))
    f = tmp_path / "one.txt"
    f.write_text(text)
    tok = load_model(str(save_tiny("llama", tmp_path / "m", add_bos=add_bos))).tokenizer
    w = token_windows(tok, Corpus(f"file:{f}"), split_of("file:one.txt:0"), n_tokens=20, seq_len=12, seed=0)
    own = tok(text)["input_ids"]  # add_special_tokens=True: the tokenizer's own beginning
    assert w[0].tolist() == own[:12]
    assert (w[0, 0] == tok.bos_token_id) == add_bos


def test_cache_key_is_the_weights_not_the_folder_name(tmp_path):
    """Two checkpoints named .../final, and a checkpoint overwritten in place, never share cached activations."""
    a = save_tiny("llama", tmp_path / "runA" / "final", seed=1)
    b = save_tiny("llama", tmp_path / "runB" / "final", seed=2)
    cfg = dict(layers=(1,), split="eval", n_tokens=60, seq_len=16)
    acts_a = collect_activations(ActivationConfig(model=str(a), **cfg)).acts[1]
    acts_b = collect_activations(ActivationConfig(model=str(b), **cfg)).acts[1]
    fresh_b = collect_activations(ActivationConfig(model=str(b), **cfg), cache=False).acts[1]
    assert torch.equal(acts_b, fresh_b) and not torch.allclose(acts_a, acts_b)
    save_tiny("llama", a, seed=3)  # new weights under the same path
    again = collect_activations(ActivationConfig(model=str(a), **cfg)).acts[1]
    assert torch.equal(again, collect_activations(ActivationConfig(model=str(a), **cfg), cache=False).acts[1])
    assert not torch.allclose(again, acts_a)


def test_unfilled_rows_are_an_error_and_nothing_is_cached(tmp_path, monkeypatch):
    import atomsnb.activations as act

    path = save_tiny("gpt2", tmp_path / "m")
    real = act.token_windows
    monkeypatch.setattr(act, "token_windows", lambda *a, **k: real(*a, **k)[:-1])  # one window short
    cfg = ActivationConfig(model=str(path), layers=(1,), split="eval", n_tokens=100, seq_len=16)
    with pytest.raises(RuntimeError, match="filled 90 of 100 rows"):
        collect_activations(cfg)
    assert not list(cache_dir("activations").rglob("*.safetensors"))


def test_a_model_that_does_not_match_the_config_is_refused(tmp_path):
    a, b = save_tiny("gpt2", tmp_path / "a"), save_tiny("gpt2", tmp_path / "b", seed=1)
    lm_b = load_model(str(b))
    with pytest.raises(ValueError, match=rf"loaded from '{b}'.*config.model='{a}'"):
        collect_activations(ActivationConfig(model=str(a), layers=(1,), split="eval", n_tokens=20, seq_len=16), model=lm_b)
    with pytest.raises(ValueError, match=r"dtype torch.float32.*config.dtype='bfloat16'"):
        collect_activations(ActivationConfig(model=str(b), layers=(1,), split="eval", n_tokens=20, seq_len=16,
                                             dtype="bfloat16"), model=lm_b)
    ok = collect_activations(ActivationConfig(model=str(b), layers=(1,), split="eval", n_tokens=20, seq_len=16), model=lm_b)
    assert ok.acts[1].shape == (20, 32)


def test_disk_full_warns_naming_the_file_and_still_returns(tmp_path, monkeypatch):
    import errno

    import atomsnb.activations as act

    def full(path, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(act, "save_tensors", full)
    path = save_tiny("gpt2", tmp_path / "m")
    cfg = ActivationConfig(model=str(path), layers=(1,), split="eval", n_tokens=30, seq_len=16)
    with pytest.warns(RuntimeWarning) as record:
        got = collect_activations(cfg)
    messages = [str(w.message) for w in record]
    assert any("layer001.safetensors" in m and "No space left on device" in m for m in messages), messages
    assert any("tokens.safetensors" in m for m in messages), messages
    assert torch.equal(got.acts[1], collect_activations(cfg, cache=False).acts[1])


def test_seq_len_above_the_model_positions_is_refused_before_torch_fails(tmp_path):
    path = save_tiny("gpt2", tmp_path / "m")  # learned positions: n_positions = 64
    with pytest.raises(ValueError, match=r"seq_len=100 exceeds the maximum positions .*\(64\); use seq_len <= 64"):
        collect_activations(ActivationConfig(model=str(path), layers=(1,), split="eval", n_tokens=200, seq_len=100))


def test_next_token_loss_matches_transformers_own_loss(tmp_path):
    lm = load_model(str(save_tiny("llama", tmp_path / "m")))
    got = next_token_loss(lm, "docstrings", "eval", n_tokens=60, seq_len=16, seed=0, batch_size=3)
    w = token_windows(lm.tokenizer, Corpus("docstrings"), "eval", n_tokens=60, seq_len=16, seed=0)
    with torch.no_grad():  # transformers' mean shifted cross-entropy, one window at a time
        ref = sum(float(lm.model(input_ids=w[i:i + 1], labels=w[i:i + 1]).loss) for i in range(len(w))) / len(w)
    assert got["n_tokens"] == len(w) * 15 and got["loss"] == pytest.approx(ref, rel=1e-5)


def test_capture_code_is_part_of_the_cache_key(tmp_path, monkeypatch):
    """Activations cached by other capture code are not returned (a fix to the capture that leaves the weights and the
    config alone must not be hidden by the cache): the key holds the code fingerprint, here changed through the torch
    version it includes (an edit of the code itself: tests/test_code_fingerprint.py)."""
    import atomsnb.activations as act
    import atomsnb.codeprint as cp

    path = save_tiny("llama", tmp_path / "m")
    cfg = ActivationConfig(model=str(path), layers=(1,), split="eval", n_tokens=40, seq_len=16)
    before = collect_activations(cfg).acts[1]
    real = act.capture_residual_stream
    monkeypatch.setattr(act, "capture_residual_stream",  # a "fixed" capture: different numbers
                        lambda *a, **k: {l: x + 1.0 for l, x in real(*a, **k).items()})
    assert torch.equal(collect_activations(cfg).acts[1], before)  # same code: the cache answers
    versions = cp.library_versions()
    monkeypatch.setattr(cp, "library_versions", lambda: {**versions, "torch": versions["torch"] + ".other"})
    assert torch.equal(collect_activations(cfg).acts[1], before + 1.0)  # other code: recomputed
