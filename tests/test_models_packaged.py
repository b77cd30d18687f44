"""The packaged real LLMs (SmolLM2-135M, Gemma-3-270M): conversion, card, loading, hooks, BOS convention.

Marked ``shared_cache``: they use the repository cache, where ``make model`` converted both models (about
2 minutes once); afterwards each test takes seconds. Run by hand without ``make model``, the first test
converts them.
"""

import hashlib
import json
from importlib import metadata
from pathlib import Path

import pytest
import torch

from atomsnb.activations import capture_residual_stream, next_token_loss, token_windows
from atomsnb.corpus import Corpus, split_of
from atomsnb.fingerprints import directory_fingerprint
from atomsnb.models import DEFAULT_MODEL_NAME, PACKAGED_MODELS, load_model, model_card
from atomsnb.architecture import tokenizer_prefix
from atomsnb.packaged import CONVERTER_VERSION, ensure_packaged_model

pytestmark = pytest.mark.shared_cache

EXPECTED = {  # from the models' own documentation (SmolLM2: 135M, 30 layers, 576; Gemma 3 270M: 18 layers, 640)
    "smollm2-135m": dict(arch="LlamaForCausalLM", n_layers=30, d_model=576, vocab=49152, n_parameters=134_515_008,
                         file_type="MOSTLY_Q4_1", licence="Apache-2.0", prefix="none"),
    "gemma3-270m": dict(arch="Gemma3ForCausalLM", n_layers=18, d_model=640, vocab=262_144, n_parameters=268_098_176,
                        file_type="MOSTLY_Q4_K_M", licence="Gemma Terms of Use", prefix="bos"),
}


@pytest.fixture(scope="module", params=list(EXPECTED))
def lm(request):
    """One real model at a time (pytest groups the tests by this module-scoped parameter)."""
    return load_model(request.param)


def test_card_records_source_licence_and_sizes(lm):
    name = lm.name
    spec, exp = PACKAGED_MODELS[name], EXPECTED[name]
    path = ensure_packaged_model(name)
    card = model_card(name)
    assert card == model_card(path) and path.name.endswith(f"-c{CONVERTER_VERSION}")
    src = card["source"]
    assert src["package"] == spec.package and src["version"] == spec.version == metadata.version(spec.package)
    assert src["gguf_sha256"] == spec.gguf_sha256 and spec.gguf_sha256[:12] in path.name
    q = card["quantization"]
    assert q["file_type"] == exp["file_type"] and sum(q["tensor_types"].values()) == q["n_tensors"]
    lic = card["licence"]
    assert lic["name"] == exp["licence"] and lic["url"].startswith("https://")
    # no absolute path of the converting machine: the licence text is named relative to the installed distribution
    assert lic["installed_text"] == spec.licence_file and not Path(lic["installed_text"]).is_absolute()
    installed = Path(metadata.distribution(spec.package).locate_file(lic["installed_text"]))
    assert installed.is_file() and (path / lic["copy"]).read_bytes() == installed.read_bytes()
    assert str(Path.home()) not in json.dumps(card) and "site-packages" not in json.dumps(card)
    # the card seals itself (SHA-256 of the rest, computed here independently) and lists the required files
    body = {k: v for k, v in card.items() if k != "card_sha256"}
    assert card["card_sha256"] == hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= set(card["files"])
    if name == "gemma3-270m":
        assert lic["copy"] == "GEMMA_TERMS.html" and "Gemma Terms of Use" in (path / lic["copy"]).read_text()
    assert type(lm.model).__name__ == card["architecture"] == exp["arch"]
    assert card["n_parameters"] == sum(p.numel() for p in lm.model.parameters()) == exp["n_parameters"]
    assert (card["n_layers"], card["d_model"], card["vocab_size"]) == (lm.n_layers, lm.d_model, lm.model.config.vocab_size)
    assert (lm.n_layers, lm.d_model, card["vocab_size"]) == (exp["n_layers"], exp["d_model"], exp["vocab"])
    assert card["probe"]["logits_identical_after_reload"] and card["conversion_time_s"] > 0
    import transformers

    assert card["versions"]["transformers"] == transformers.__version__
    # every recorded file hash is the file's (hashed here independently of the stamp cache)
    for fname, sha in card["files"].items():
        h = hashlib.sha256()
        with (path / fname).open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 24), b""):
                h.update(chunk)
        assert h.hexdigest() == sha, fname
    assert lm.fingerprint == directory_fingerprint(path) and lm.path == str(path)


def test_hooks_match_output_hidden_states(lm):
    w = token_windows(lm.tokenizer, Corpus("pydoc-topics"), "eval", n_tokens=60, seq_len=31, seed=0)
    layers = [0, 1, lm.n_layers // 2, lm.n_layers - 1]
    got = capture_residual_stream(lm, w, layers)
    with torch.no_grad():
        hs = lm.model(input_ids=w, output_hidden_states=True, use_cache=False).hidden_states
    for layer in layers:
        torch.testing.assert_close(got[layer], hs[layer], rtol=1e-5, atol=1e-5)


def test_windows_follow_the_model_bos_convention(lm, tmp_path):
    tok = lm.tokenizer
    text = "The assert statement is a convenient way to insert debugging assertions into a program. " * 8
    f = tmp_path / "one.txt"
    f.write_text(text)
    w = token_windows(tok, Corpus(f"file:{f}"), split_of("file:one.txt:0"), n_tokens=40, seq_len=24, seed=0)
    assert w[0].tolist() == tok(text)["input_ids"][:24]  # windows begin as the tokenizer begins a text
    if EXPECTED[lm.name]["prefix"] == "bos":  # Gemma: <bos> first
        assert tokenizer_prefix(tok) == [tok.bos_token_id] == [2] and tok.convert_ids_to_tokens(2) == "<bos>"
        assert (w[:, 0] == 2).all()
    else:  # SmolLM2: no BOS; the window starts with text
        assert tokenizer_prefix(tok) == [] and tok.decode(w[0, :3]) == "The assert statement"
        assert not set(w[:, 0].tolist()) & set(tok.all_special_ids)


def test_a_real_model_predicts_english_prose(lm):
    res = next_token_loss(lm, "pydoc-topics", "eval", n_tokens=254, seq_len=128, batch_size=1)
    assert res["n_tokens"] == 2 * 127
    uniform = float(torch.log(torch.tensor(float(lm.model.config.vocab_size))))  # 10.8 (SmolLM2), 12.5 (Gemma)
    assert res["loss"] < 4.0 < uniform - 6


def test_default_is_smollm2():
    lm = load_model("default")
    assert DEFAULT_MODEL_NAME == "smollm2-135m" and lm.name == "smollm2-135m"
    assert lm.path == str(ensure_packaged_model("smollm2-135m"))


def test_converted_smollm2_reproduces_the_gguf_model():
    """Independent of the converter: load the GGUF itself through transformers and compare logits bit for bit (on
    SmolLM2 only: loading Gemma's GGUF takes over a minute)."""
    from transformers import AutoModelForCausalLM

    lm = load_model("smollm2-135m")
    spec = PACKAGED_MODELS["smollm2-135m"]
    gguf = Path(metadata.distribution(spec.package).locate_file(spec.gguf_file))
    direct = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32).eval()
    ids = lm.tokenizer("def mean(xs):\n    \"\"\"Arithmetic mean of xs.\"\"\"", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(direct(input_ids=ids).logits, lm.model(input_ids=ids).logits)
