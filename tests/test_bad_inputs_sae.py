"""Bad inputs to the SAE trainer and the activation store, refused before any work with a message that names the
bad value and what is allowed (issue 9 §4.5, issue 10). Table-driven: one row per bad input."""

from __future__ import annotations

import math

import pytest
import torch

from atomsnb.aip import AIP
from atomsnb.sae import SAEConfig, train_sae
from atomsnb.store import MemorySource, ShuffledBatches, write_store

pytestmark = pytest.mark.usefixtures("one_thread")

_G = torch.Generator().manual_seed(0)
X = torch.randn(600, 8, generator=_G) @ torch.randn(8, 8, generator=_G)
AIP8 = AIP.fit(X)
AIP4 = AIP.fit(X[:, :4])
OK = dict(n_latents=16, n_steps=2, batch_size=64)


def _nan_data():
    x = X.clone()
    x[17, 3] = float("nan")
    return x


def _train(data=None, aip=AIP8, **kw):
    opts = {k: kw.pop(k) for k in ("n_tokens", "checkpoint_dir", "checkpoint_every") if k in kw}
    return lambda: train_sae(X if data is None else data, aip, SAEConfig(**{**OK, **kw}), progress=False, **opts)


def _file(tmp_path):
    p = tmp_path / "a_file"
    p.write_text("not a directory")
    return p


CASES = [
    # SAEConfig fields (refused at construction, so also before train_sae starts)
    ("n_latents=0", lambda t: SAEConfig(n_latents=0), ValueError, ["n_latents=0", ">= 1"]),
    ("n_latents=-4", lambda t: SAEConfig(n_latents=-4), ValueError, ["n_latents=-4", ">= 1"]),
    ("n_latents=2.5", lambda t: SAEConfig(n_latents=2.5), ValueError, ["n_latents=2.5", "integer"]),
    ("l0 negative", lambda t: SAEConfig(l0_coefficient=-1e-3), ValueError, ["l0_coefficient=-0.001", ">= 0"]),
    ("l0 NaN", lambda t: SAEConfig(l0_coefficient=math.nan), ValueError, ["l0_coefficient=nan", "finite"]),
    ("l0 inf", lambda t: SAEConfig(l0_coefficient=math.inf), ValueError, ["l0_coefficient=inf", "finite"]),
    ("l1 negative", lambda t: SAEConfig(kind="relu", l1_coefficient=-2.0), ValueError, ["l1_coefficient=-2.0", ">= 0"]),
    ("l1 given to a TSAE", lambda t: SAEConfig(kind="jumprelu", l1_coefficient=0.1), ValueError,
     ["l1_coefficient=0.1", "l0_coefficient", "with_kind"]),
    ("l0 given to a ReLU SAE", lambda t: SAEConfig(kind="relu", l0_coefficient=0.1), ValueError,
     ["l0_coefficient=0.1", "l1_coefficient"]),
    ("old name", lambda t: SAEConfig.from_dict({"sparsity_coefficient": 0.1}), TypeError,
     ["sparsity_coefficient", "l0_coefficient", "l1_coefficient"]),
    ("unknown kind", lambda t: SAEConfig(kind="gated"), ValueError, ["kind='gated'", "jumprelu", "relu", "topk", "batchtopk"]),
    ("topk without k", lambda t: SAEConfig(kind="topk"), ValueError, ["k=None", "kind='topk'", "[1, n_latents"]),
    ("log_every=0", lambda t: SAEConfig(log_every=0), ValueError, ["log_every=0", ">= 1"]),
    ("batch_size=0", lambda t: SAEConfig(batch_size=0), ValueError, ["batch_size=0", ">= 1"]),
    ("n_steps=0", lambda t: SAEConfig(n_steps=0), ValueError, ["n_steps=0", ">= 1"]),
    ("warm-up negative", lambda t: SAEConfig(sparsity_warmup_steps=-1), ValueError, ["sparsity_warmup_steps=-1", ">= 0"]),
    ("lr=0", lambda t: SAEConfig(lr=0.0), ValueError, ["lr=0.0", "> 0"]),
    ("bandwidth NaN", lambda t: SAEConfig(bandwidth=math.nan), ValueError, ["bandwidth=nan", "> 0"]),
    ("init_threshold negative", lambda t: SAEConfig(init_threshold=-0.1), ValueError, ["init_threshold=-0.1", "> 0"]),
    ("beta1 = 1", lambda t: SAEConfig(betas=(1.0, 0.999)), ValueError, ["betas=(1.0, 0.999)", "[0, 1)"]),
    ("unknown dtype", lambda t: SAEConfig(dtype="float16"), ValueError, ["dtype='float16'", "float32", "float64"]),
    ("unknown whiten dtype", lambda t: SAEConfig(whiten_dtype="half"), ValueError, ["whiten_dtype='half'", "float64"]),
    ("unknown autocast dtype", lambda t: SAEConfig(autocast_dtype="int8"), ValueError, ["autocast_dtype='int8'", "bfloat16"]),
    ("autocast with float64 weights", lambda t: SAEConfig(autocast_dtype="bfloat16", dtype="float64"), ValueError,
     ["dtype='float64'", "float32"]),
    ("autocast with the hand-written step", lambda t: SAEConfig(autocast_dtype="bfloat16", fast=True), ValueError,
     ["fast=True", "autocast"]),
    ("unknown device", lambda t: SAEConfig(device="gpu"), ValueError, ["device='gpu'", "cuda"]),
    ("seed negative", lambda t: SAEConfig(seed=-1), ValueError, ["seed=-1", ">= 0"]),
    ("buffer_tokens=0", lambda t: SAEConfig(buffer_tokens=0), ValueError, ["buffer_tokens=0", ">= 1"]),
    ("dead_after_tokens=0", lambda t: SAEConfig(dead_after_tokens=0), ValueError, ["dead_after_tokens=0", ">= 1"]),
    ("capacity 0", lambda t: SAEConfig.for_model(64, capacity=0), ValueError, ["capacity=0", ">= 1"]),
    # train_sae inputs
    ("NaN activations", lambda t: _train(_nan_data()), ValueError, ["NaN/inf", "row 17"]),
    ("empty activations", lambda t: _train(torch.zeros(0, 8)), ValueError, ["(0, 8)", "at least one token"]),
    ("1-D activations", lambda t: _train(torch.zeros(8)), ValueError, ["(8,)", "[n_tokens, d_model]"]),
    ("integer activations", lambda t: _train(torch.zeros(10, 8, dtype=torch.long)), ValueError, ["torch.int64", "floating"]),
    ("not a tensor", lambda t: _train([[1.0] * 8] * 10), TypeError, ["list", "ActivationStore"]),
    ("batch larger than the data", lambda t: _train(batch_size=601), ValueError, ["batch_size=601", "600"]),
    ("no AIP for a whitened SAE", lambda t: _train(aip=None), ValueError, ["whiten=True", "AIP"]),
    ("AIP of another width", lambda t: _train(aip=AIP4), ValueError, ["d_model=4", "d_model=8"]),
    ("n_tokens beyond the data", lambda t: _train(n_tokens=601), ValueError, ["n_tokens=601", "1..600"]),
    ("n_tokens=0", lambda t: _train(n_tokens=0), ValueError, ["n_tokens=0", "1..600"]),
    ("checkpoint_dir is a file", lambda t: _train(checkpoint_dir=_file(t)), ValueError, ["a_file", "not a directory"]),
    ("checkpoint_every=0", lambda t: _train(checkpoint_dir=t / "ck", checkpoint_every=0), ValueError,
     ["checkpoint_every=0", ">= 1"]),
    ("checkpoint_every without a directory", lambda t: _train(checkpoint_every=5), ValueError,
     ["checkpoint_every=5", "checkpoint_dir"]),
    ("CUDA where there is none", lambda t: _train(device="cuda"), ValueError, ["'cuda'", "device='cpu'"]),
    # the store and its stream
    ("store dtype", lambda t: lambda: write_store(t / "s", X, dtype="int8"), ValueError, ["'int8'", "bfloat16", "float16"]),
    ("float16 overflow", lambda t: lambda: write_store(t / "s", X * 1e6, dtype="float16"), ValueError,
     ["float16's range", "bfloat16"]),
    ("stream batch_size=0", lambda t: lambda: ShuffledBatches(MemorySource(X), 0), ValueError, ["batch_size=0", "1..n_tokens=600"]),
    ("stream buffer_tokens=0", lambda t: lambda: ShuffledBatches(MemorySource(X), 8, buffer_tokens=0), ValueError,
     ["buffer_tokens", ">= 1"]),
    ("empty batches", lambda t: lambda: write_store(t / "s", iter([])), ValueError, ["no batch"]),
    ("shard_tokens=0", lambda t: lambda: write_store(t / "s", X, shard_tokens=0), ValueError,
     ["got 0", "shard_tokens must be None (default_shard_tokens) or an integer >= 1"]),
    ("shard_tokens=2.5", lambda t: lambda: write_store(t / "s", X, shard_tokens=2.5), ValueError,
     ["got 2.5", "an integer >= 1"]),
    ("store path is a file", lambda t: lambda: write_store(_file(t), X), NotADirectoryError,
     ["a_file", "is a file, not a directory"]),
]


@pytest.mark.parametrize("name,make,exc,words", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_with_a_clear_message(tmp_path, name, make, exc, words):
    if name == "CUDA where there is none" and torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(exc) as info:
        call = make(tmp_path)
        if callable(call):
            call()
    msg = str(info.value)
    for w in words:
        assert w in msg, (w, msg)
    assert not (tmp_path / "ck").exists() or not any((tmp_path / "ck").iterdir())  # no work was done
    if name != "float16 overflow":  # found in the rows as they are written (data may be a stream)
        assert not (tmp_path / "s").exists()  # no store directory was made
