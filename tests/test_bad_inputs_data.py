"""Bad inputs on the data path (models, corpora, activations, massive activations), table-driven.

Each case: a call, the exception type it must raise before any work starts, the offending value as the
message must name it, and the words saying what is allowed. Issue 9, §4.1, 4.2, 4.8-4.11.
"""

import json

import pytest
import torch

from atomsnb.activations import ActivationConfig, collect_activations, token_windows
from atomsnb.aip import AIP
from atomsnb.corpus import Corpus
from atomsnb.fingerprints import file_sha256
from atomsnb.massive import massive_activation_stats, massive_token_mask
from atomsnb.models import ModelNotFoundError, UnsupportedModelError, load_model, model_card
from atomsnb.store import collect_store
from tiny_models import save_tiny


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Paths the cases need: tiny models, odd folders and files."""
    root = tmp_path_factory.mktemp("bad")
    e = {"root": root}
    e["gpt2"] = save_tiny("gpt2", root / "gpt2")  # n_positions = 64
    e["llama"] = save_tiny("llama", root / "llama")
    e["llama2"] = save_tiny("llama", root / "llama2", seed=1)
    (root / "empty").mkdir()
    e["empty"] = root / "empty"
    for name, model_type in (("alien", "no-such-architecture"), ("vision", "vit")):
        d = root / name
        d.mkdir()
        (d / "config.json").write_text(json.dumps({"model_type": model_type, "hidden_size": 8}))
        e[name] = d
    noweights = root / "noweights"
    noweights.mkdir()
    (noweights / "config.json").write_text((e["llama"] / "config.json").read_text())
    for f in e["llama"].iterdir():
        if f.name.startswith("tokenizer"):
            (noweights / f.name).write_text(f.read_text())
    e["noweights"] = noweights
    (root / "runs").mkdir()
    e["latin1"] = root / "latin1.txt"
    e["latin1"].write_bytes("Caf\xe9 cr\xe8me, a document long enough to count.\n".encode("latin-1"))
    e["afile"] = root / "afile.txt"
    e["afile"].write_text("not a model")
    return e


def cfg(**kw):
    return ActivationConfig(**kw)


def collect(env, model_key="llama", model_obj=None, **kw):
    base = dict(model=str(env[model_key]), layers=(1,), split="eval", n_tokens=20, seq_len=16)
    base.update(kw)
    lm = load_model(str(env[model_obj])) if model_obj else None
    return collect_activations(ActivationConfig(**base), model=lm, progress=False)


def store(env, model_key="llama", model_obj=None, **kw):
    """collect_store with the arguments of :func:`collect`: it must refuse what collect_activations refuses."""
    base = dict(model=str(env[model_key]), layers=(1,), split="eval", n_tokens=20, seq_len=16)
    base.update(kw)
    lm = load_model(str(env[model_obj])) if model_obj else None
    return collect_store(ActivationConfig(**base), model=lm, root=env["root"] / "stores", progress=False)


ACTS = torch.randn(200, 4, generator=torch.Generator().manual_seed(0))

# (id, call(env), exception type, offending value as named in the message, what is allowed)
CASES = [
    # ActivationConfig: every field, on construction (issue 9 §4.1)
    ("batch_size negative", lambda e: cfg(batch_size=-3), ValueError, "-3", "batch_size must be an integer >= 1"),
    ("batch_size zero", lambda e: cfg(batch_size=0), ValueError, "got 0", "batch_size must be an integer >= 1"),
    ("n_tokens zero", lambda e: cfg(n_tokens=0), ValueError, "got 0", "n_tokens must be an integer >= 1"),
    ("n_tokens float", lambda e: cfg(n_tokens=2.5), TypeError, "2.5", "n_tokens must be an integer >= 1"),
    ("n_tokens bool", lambda e: cfg(n_tokens=True), TypeError, "True", "n_tokens must be an integer >= 1"),
    ("seq_len 1", lambda e: cfg(seq_len=1), ValueError, "got 1", "seq_len must be an integer >= 2"),
    ("seq_len str", lambda e: cfg(seq_len="128"), TypeError, "'128'", "seq_len must be an integer >= 2"),
    ("seed negative", lambda e: cfg(seed=-1), ValueError, "-1", "seed must be an integer >= 0"),
    ("split", lambda e: cfg(split="test"), ValueError, "'test'", "('train', 'fit', 'eval')"),
    ("device unknown", lambda e: cfg(device="gpu"), ValueError, "'gpu'", "'cpu', 'cuda', 'cuda:N', 'mps' or 'auto'"),
    ("device type", lambda e: cfg(device="meta"), ValueError, "'meta'", "'cpu', 'cuda', 'cuda:N', 'mps' or 'auto'"),
    ("dtype", lambda e: cfg(dtype="float8"), ValueError, "'float8'", "'float32'"),
    ("layers empty", lambda e: cfg(layers=()), ValueError, "empty sequence", "non-empty sequence of layer indices"),
    ("layer negative", lambda e: cfg(layers=(1, -1)), ValueError, "-1", "each layer must be an integer >= 0"),
    ("layer float", lambda e: cfg(layers=(1.5,)), TypeError, "1.5", "each layer must be an integer >= 0"),
    ("layers not a sequence", lambda e: cfg(layers=object()), TypeError, "object", "None or a sequence of layer"),
    ("drop_bos", lambda e: cfg(drop_bos="yes"), TypeError, "'yes'", "True or False"),
    ("model empty", lambda e: cfg(model=""), TypeError, "''", "registered name, a local directory or a hub id"),
    ("corpus unknown", lambda e: cfg(corpus="wikipedia"), ValueError, "'wikipedia'", "'pydoc-topics'"),
    # corpora (§4.10)
    ("corpus file missing", lambda e: Corpus(f"file:{e['root']}/nope.txt"), FileNotFoundError, "nope.txt",
     "existing UTF-8 text file"),
    ("corpus folder", lambda e: Corpus(f"file:{e['root']}"), IsADirectoryError, "is a directory",
     "takes one UTF-8 text file"),
    ("corpus not utf-8", lambda e: Corpus(f"file:{e['latin1']}").documents(), ValueError, "latin1.txt",
     "takes a UTF-8 text file"),
    ("corpus file: alone", lambda e: Corpus("file:"), ValueError, "'file:'", "'file:PATH'"),
    ("corpus not a string", lambda e: Corpus(3), TypeError, "got 3", "'docstrings'"),
    # models (§4.9)
    ("model empty folder", lambda e: load_model(str(e["empty"])), ModelNotFoundError, "empty", "config.json"),
    ("model path missing", lambda e: load_model(str(e["root"] / "no" / "such")), ModelNotFoundError, "no/such",
     "existing directory saved with save_pretrained"),
    ("model relative path missing", lambda e: load_model("./no-such-dir"), ModelNotFoundError, "'./no-such-dir'",
     "existing directory"),
    ("model dir/sub missing", lambda e: _in(e["root"], lambda: load_model("runs/final")), ModelNotFoundError,
     "'runs/final' does not exist", "existing directory"),
    ("model unknown architecture", lambda e: load_model(str(e["alien"])), UnsupportedModelError,
     "'no-such-architecture'", "causal-LM model types"),
    ("model not a causal LM", lambda e: load_model(str(e["vision"])), UnsupportedModelError, "'vit'",
     "causal-LM model types"),
    ("model without weights", lambda e: load_model(str(e["noweights"])), ModelNotFoundError, "noweights",
     "model.safetensors"),
    ("model is a file", lambda e: load_model(str(e["afile"])), ModelNotFoundError, "afile.txt", "is a file, not a directory"),
    ("model dtype", lambda e: load_model(str(e["llama"]), dtype="int8"), ValueError, "'int8'", "'float32'"),
    ("model card missing", lambda e: model_card(str(e["llama"])), ModelNotFoundError, "llama", "smollm2-135m"),
    # collection (§4.8, 4.11)
    ("seq_len above positions", lambda e: collect(e, "gpt2", seq_len=100, n_tokens=200), ValueError, "seq_len=100",
     "use seq_len <= 64"),
    ("layer above n_layers", lambda e: collect(e, layers=(3,)), ValueError, "[3]", "0..2"),
    ("model object mismatch", lambda e: collect(e, "llama", model_obj="llama2"), ValueError, "llama2",
     "pass the model config.model names"),
    ("model object dtype", lambda e: collect(e, "llama", model_obj="llama", dtype="bfloat16"), ValueError,
     "'bfloat16'", "load it with dtype='bfloat16'"),
    ("config not a config", lambda e: collect_activations({"model": "default"}), TypeError, "dict",
     "must be an ActivationConfig"),
    ("too many tokens", lambda e: collect(e, n_tokens=10_000_000), ValueError, "n_tokens=10000000", "Lower n_tokens"),
    # the activation store refuses the same (the same checks, before any forward pass)
    ("store seq_len above positions", lambda e: store(e, "gpt2", seq_len=100, n_tokens=200), ValueError, "seq_len=100",
     "use seq_len <= 64"),
    ("store layer above n_layers", lambda e: store(e, layers=(3,)), ValueError, "[3]", "0..2"),
    ("store model object mismatch", lambda e: store(e, "llama", model_obj="llama2"), ValueError, "llama2",
     "pass the model config.model names"),
    ("store model object dtype", lambda e: store(e, "llama", model_obj="llama", dtype="bfloat16"), ValueError,
     "'bfloat16'", "load it with dtype='bfloat16'"),
    ("store config not a config", lambda e: collect_store({"model": "default"}), TypeError, "dict",
     "must be an ActivationConfig"),
    ("store shard_tokens 0", lambda e: collect_store(cfg(model=str(e["llama"])), shard_tokens=0,
                                                     root=e["root"] / "stores"), ValueError, "got 0",
     "shard_tokens must be None (default_shard_tokens) or an integer >= 1"),
    ("store root is a file", lambda e: collect_store(cfg(model=str(e["llama"])), root=e["afile"]), NotADirectoryError,
     "afile.txt", "is a file, not a directory"),
    ("token_windows seq_len", lambda e: token_windows(load_model(str(e["llama"])).tokenizer, Corpus(), "eval",
                                                     n_tokens=5, seq_len=1, seed=0), ValueError, "got 1", ">= 2"),
    # massive activations / AIP exclusion
    ("massive k", lambda e: massive_token_mask(ACTS, k=0.5), ValueError, "0.5", "finite number > 1"),
    ("massive k nan", lambda e: massive_token_mask(ACTS, k=float("nan")), ValueError, "nan", "finite number > 1"),
    ("massive n_top", lambda e: massive_activation_stats(ACTS, n_top=0), ValueError, "0", "1..n_tokens=200"),
    ("massive mask shape", lambda e: massive_activation_stats(ACTS, mask=torch.zeros(3, dtype=torch.bool)),
     ValueError, "(3,)", "shape (200,)"),
    ("AIP exclude shape", lambda e: AIP.fit(ACTS, exclude=torch.zeros(5, dtype=torch.bool), min_tokens_per_dim=1),
     ValueError, "(5,)", "bool mask of shape (200,)"),
    ("AIP exclude dtype", lambda e: AIP.fit(ACTS, exclude=torch.zeros(200), min_tokens_per_dim=1), ValueError,
     "torch.float32", "bool mask"),
    ("AIP exclude all", lambda e: AIP.fit(ACTS, exclude=torch.ones(200, dtype=torch.bool)), ValueError, "all 200 rows",
     "nothing is left"),
    ("file_sha256 of a folder", lambda e: file_sha256(e["root"]), IsADirectoryError, "is a directory",
     "hashes one file"),
]


def _in(directory, fn):
    import os

    old = os.getcwd()
    os.chdir(directory)
    try:
        return fn()
    finally:
        os.chdir(old)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_with_a_clear_message(case, env):
    _, call, exc_type, value, allowed = case
    with pytest.raises(exc_type) as info:
        call(env)
    msg = str(info.value)
    assert value in msg, f"message does not name the offending value {value!r}: {msg}"
    assert allowed in msg, f"message does not say what is allowed ({allowed!r}): {msg}"
    assert not (env["root"] / "stores").exists(), "collect_store wrote a store before refusing its input"


def test_enough_cases():
    assert len(CASES) >= 40


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_asked_for_without_cuda():
    with pytest.raises(ValueError, match=r"'cuda'.*not available here; use device='cpu'"):
        ActivationConfig(device="cuda")
