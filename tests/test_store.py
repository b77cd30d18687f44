"""The activation store (atomsnb.store): layout, checksums, prefixes, the shuffled stream, collection from a model,
byte-identical resumption after a SIGKILL, streaming hub corpora (issue 10)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from atomsnb.activations import ActivationConfig, collect_activations
from atomsnb.aip import AIP
from atomsnb.io import CacheCorruptError, load_tensors
from atomsnb.store import (
    MANIFEST, ActivationStore, MemorySource, ShuffledBatches, StoreMismatchError, collect_store, default_shard_tokens,
    fit_aip_from_store, stream_memory_bytes, write_store,
)
from tiny_models import save_tiny

pytestmark = pytest.mark.usefixtures("one_thread")
TESTS = Path(__file__).parent


def _data(n=3000, d=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) @ torch.randn(d, d, generator=g) + 1.5


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock"}


# ----------------------------------------------------------------------------------------------- layout and reading
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
def test_write_read_round_trip_and_manifest(tmp_path, dtype):
    x = _data()
    st = write_store(tmp_path / "s", x, dtype=dtype, shard_tokens=512)
    ref = x.to(st.dtype)
    assert st.n_tokens == 3000 and st.d_model == 12 and st.dtype_name == dtype and len(st.shards) == 6
    assert torch.equal(st.read(0, 3000), ref) and torch.equal(st.read(700, 1900), ref[700:1900])
    man = json.loads((tmp_path / "s" / MANIFEST).read_text())
    assert man["dtype"] == dtype and man["shard_tokens"] == 512
    # token ranges tile [0, n); each checksum is the SHA-256 the shard carries, which load_tensors checks its rows against
    assert [(s["start"], s["stop"]) for s in man["shards"]] == [(i * 512, min(3000, (i + 1) * 512)) for i in range(6)]
    from safetensors import safe_open

    for s in man["shards"]:
        with safe_open(str(tmp_path / "s" / s["file"]), framework="pt") as f:
            assert s["checksum"] == f.metadata() and any(len(v) == 64 for v in s["checksum"].values())
        assert torch.equal(load_tensors(tmp_path / "s" / s["file"])[0]["acts"], ref[s["start"]:s["stop"]])
    assert len({json.dumps(s["checksum"]) for s in man["shards"]}) == 6
    # prefixes: the first n rows, shard by shard
    chunks = list(st.iter_chunks(1100))
    assert [c.shape[0] for c in chunks] == [512, 512, 76] and torch.equal(torch.cat(chunks), ref[:1100])
    with pytest.raises(ValueError, match="3001"):
        list(st.iter_chunks(3001))


def test_iterable_of_batches_gives_the_same_bytes_as_the_tensor(tmp_path):
    x = _data()
    write_store(tmp_path / "a", x, shard_tokens=500, key={"what": "x"})
    sizes = [1, 333, 1000, 7, 1659]
    parts = torch.split(x, sizes)
    write_store(tmp_path / "b", iter(parts), shard_tokens=500, key={"what": "x"})
    assert _tree(tmp_path / "a") == _tree(tmp_path / "b")


def test_resuming_an_iterable_and_growing_a_store(tmp_path):
    x = _data()
    whole = write_store(tmp_path / "whole", x, shard_tokens=400, key={"k": 1})
    # a first pass that stopped after 1000 rows (mid-shard), then the full data: the same store
    write_store(tmp_path / "grown", iter([x[:1000]]), shard_tokens=400, key={"k": 1})
    assert ActivationStore(tmp_path / "grown").n_tokens == 1000
    write_store(tmp_path / "grown", iter(torch.split(x, 256)), key={"k": 1})
    assert _tree(tmp_path / "grown") == _tree(tmp_path / "whole") and whole.n_tokens == 3000
    with pytest.raises(StoreMismatchError, match=r"k: 1 \(on disk\) vs 2"):
        write_store(tmp_path / "whole", iter([x]), key={"k": 2})
    with pytest.raises(StoreMismatchError, match="shard_tokens=400"):
        write_store(tmp_path / "whole", iter([x]), key={"k": 1}, shard_tokens=512)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_resuming_from_other_data_under_the_same_key_is_refused(tmp_path, dtype):
    """The key alone cannot tell two iterables apart: the manifest's head digest (of the first rows) does."""
    import hashlib

    x, y = _data(seed=0), _data(seed=1)
    st = write_store(tmp_path / "s", iter([x[:1000]]), dtype=dtype, shard_tokens=400, key={"k": 1})
    # the head: SHA-256 of the first min(HEAD_ROWS, shard_tokens) rows as stored, computed here from numpy's bytes
    first = x[:400].to(st.dtype).view(torch.int16 if dtype == "bfloat16" else torch.float32).numpy()
    raw = f"{dtype}|(400, 12)|".encode() + first.tobytes()
    assert st.head == {"rows": 400, "sha256": hashlib.sha256(raw).hexdigest()}
    assert json.loads((tmp_path / "s" / MANIFEST).read_text())["head"] == st.head
    before = _tree(tmp_path / "s")
    for other, words in ((iter(torch.split(y, 256)), "has other rows"), (iter([x[:399]]), "gave only 399 rows"),
                         (iter([torch.cat([x[:399], y[399:]])]), "has other rows")):
        with pytest.raises(StoreMismatchError) as info:
            write_store(tmp_path / "s", other, dtype=dtype, key={"k": 1})
        msg = str(info.value)
        assert str(tmp_path / "s") in msg and words in msg and "delete the directory" in msg and "another key" in msg
        assert _tree(tmp_path / "s") == before  # nothing written
    # the same data in other batches resumes (and grows) the store
    grown = write_store(tmp_path / "s", iter(torch.split(x, 333)), dtype=dtype, key={"k": 1})
    assert torch.equal(grown.read(0, 3000), x.to(grown.dtype)) and grown.head == st.head


def test_a_store_smaller_than_its_head_and_one_without_a_head_are_checked_too(tmp_path):
    x, y = _data(seed=0), _data(seed=1)
    # 100 rows: the head covers them all, and a resumption rewrites the partial shard from row 0
    write_store(tmp_path / "small", iter([x[:100]]), shard_tokens=400, key={"k": 1})
    assert ActivationStore(tmp_path / "small").head["rows"] == 100
    with pytest.raises(StoreMismatchError, match="first 100 rows"):
        write_store(tmp_path / "small", iter([y]), key={"k": 1})
    grown = write_store(tmp_path / "small", iter([x]), key={"k": 1})
    assert grown.head["rows"] == 400 and torch.equal(grown.read(0, 3000), x)
    # a manifest written before heads existed: the head is read from the shards on disk
    write_store(tmp_path / "old", iter([x[:1000]]), shard_tokens=400, key={"k": 1})
    man = json.loads((tmp_path / "old" / MANIFEST).read_text())
    expected = man.pop("head")
    (tmp_path / "old" / MANIFEST).write_text(json.dumps(man))
    assert ActivationStore(tmp_path / "old").head is None
    with pytest.raises(StoreMismatchError, match="first 400 rows"):
        write_store(tmp_path / "old", iter([y]), key={"k": 1})
    assert write_store(tmp_path / "old", iter([x]), key={"k": 1}).head == expected


def test_damage_is_detected(tmp_path):
    x = _data()
    st = write_store(tmp_path / "s", x, shard_tokens=1000)
    shard = tmp_path / "s" / st.shards[1]["file"]
    raw = bytearray(shard.read_bytes())
    raw[-5] ^= 0x10
    shard.write_bytes(bytes(raw))
    with pytest.raises(CacheCorruptError, match="SHA-256"):
        ActivationStore(tmp_path / "s").read(0, 3000)
    with pytest.raises(CacheCorruptError, match="SHA-256"):
        ActivationStore(tmp_path / "s").verify()
    # a valid shard under another shard's name (same shape) is caught by the manifest's checksum
    shard.write_bytes((tmp_path / "s" / st.shards[0]["file"]).read_bytes())
    with pytest.raises(CacheCorruptError, match="is not the shard"):
        ActivationStore(tmp_path / "s").read(1000, 2000)
    assert torch.equal(ActivationStore(tmp_path / "s", verify=False).read(1000, 2000), x[:1000])  # unchecked reads trust it
    man = json.loads((tmp_path / "s" / MANIFEST).read_text())
    man["shards"][1]["start"] = 1001  # a hole in the token ranges
    (tmp_path / "s" / MANIFEST).write_text(json.dumps(man))
    with pytest.raises(CacheCorruptError, match="out of sequence"):
        ActivationStore(tmp_path / "s")


_BAD_MANIFESTS = {
    "not JSON": lambda man: b"{",
    "empty file": lambda man: b"",
    "not UTF-8": lambda man: b"\xff\xfe",
    "a list": lambda man: b"[]",
    "a string": lambda man: b'"manifest"',
    "huge d_model": lambda man: json.dumps({**man, "d_model": 1e400}).encode(),
    "d_model as text": lambda man: json.dumps({**man, "d_model": "12"}).encode(),
    "shard_tokens zero": lambda man: json.dumps({**man, "shard_tokens": 0, "shards": []}).encode(),
    "shards not a list": lambda man: json.dumps({**man, "shards": {"0": 1}}).encode(),
    "shard not an object": lambda man: json.dumps({**man, "shards": ["shard_000000.safetensors"]}).encode(),
    "float row bounds": lambda man: json.dumps({**man, "shards": [{**e, "stop": e["stop"] + 0.5} for e in man["shards"]]}).encode(),
    "shard without stop": lambda man: json.dumps({**man, "shards": [{"file": e["file"]} for e in man["shards"]]}).encode(),
    "key not an object": lambda man: json.dumps({**man, "key": [1]}).encode(),
    "info not an object": lambda man: json.dumps({**man, "info": "x"}).encode(),
    "no format": lambda man: json.dumps({k: v for k, v in man.items() if k != "format"}).encode(),
    "head not hex": lambda man: json.dumps({**man, "head": {"rows": 128, "sha256": "x" * 64}}).encode(),
    "head beyond the first shard": lambda man: json.dumps({**man, "head": {**man["head"], "rows": 129}}).encode(),
}


@pytest.mark.parametrize("damage", list(_BAD_MANIFESTS))
def test_a_bad_manifest_is_a_corrupt_cache_naming_the_file_and_the_fix(tmp_path, damage):
    write_store(tmp_path / "s", _data(n=300, d=4), shard_tokens=128)
    path = tmp_path / "s" / MANIFEST
    path.write_bytes(_BAD_MANIFESTS[damage](json.loads(path.read_text())))
    with pytest.raises(CacheCorruptError) as info:
        ActivationStore(tmp_path / "s")
    msg = str(info.value)
    assert str(path) in msg and f"delete the directory {str(tmp_path / 's')!r} to recollect" in msg, msg
    # a writer treats it as no store and writes the store again
    assert write_store(tmp_path / "s", _data(n=300, d=4), shard_tokens=128).n_tokens == 300


def test_bad_rows_are_refused(tmp_path):
    x = _data()
    x[1234, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN/inf"):
        write_store(tmp_path / "nan", x)
    with pytest.raises(ValueError, match="float16's range"):
        write_store(tmp_path / "f16", _data() * 1e5, dtype="float16")
    with pytest.raises(ValueError, match="'int8'"):
        write_store(tmp_path / "i8", _data(), dtype="int8")


def test_default_shard_tokens():
    assert default_shard_tokens(576, "float32") == 32768 and default_shard_tokens(2304, "bfloat16") == 16384
    assert default_shard_tokens(2304, "float32") == 8192 and default_shard_tokens(4, "float32") == 1 << 20


# ----------------------------------------------------------------------------------------------- the shuffled stream
def test_stream_epochs_are_permutations_and_resume_anywhere():
    n, B = 3000, 128
    idx = MemorySource(torch.arange(n, dtype=torch.float64)[:, None], block_tokens=256)
    sb = ShuffledBatches(idx, B, seed=5, buffer_tokens=700)  # fills of 2 blocks: many fills per epoch
    assert sb.batches_per_epoch == 3000 // 128
    it = sb.iter_from(0)
    epochs = [torch.cat([next(it) for _ in range(sb.batches_per_epoch)]).long().flatten() for _ in range(2)]
    for e in epochs:  # each row at most once per epoch, only n mod B rows left out
        assert e.unique().numel() == e.numel() == n - n % B and int(e.min()) >= 0 and int(e.max()) < n
    assert not torch.equal(epochs[0], epochs[1])
    # rows of one batch come from different blocks (mixing), not a contiguous run
    first = epochs[0][:B]
    assert (first // 256).unique().numel() >= 2 and (first.diff().abs() != 1).any()
    # resumption: iter_from(k) continues exactly, also across an epoch boundary
    for k in (0, 5, sb.batches_per_epoch - 1, sb.batches_per_epoch + 3):
        again = sb.iter_from(k)
        ref = torch.cat(epochs).view(-1, B)
        assert torch.equal(next(again).long().flatten(), ref[k])
    # the same parameters give the same stream; another seed another one
    assert torch.equal(next(ShuffledBatches(idx, B, seed=5, buffer_tokens=700).iter_from(0)).long().flatten(), epochs[0][:B])
    assert not torch.equal(next(ShuffledBatches(idx, B, seed=6, buffer_tokens=700).iter_from(0)).long().flatten(), epochs[0][:B])


def test_stream_reads_only_the_prefix_and_equals_the_memory_source(tmp_path):
    x = _data(2000)
    st = write_store(tmp_path / "s", x, shard_tokens=300)
    a = ShuffledBatches(st, 100, n_tokens=1234, seed=1, buffer_tokens=600).iter_from(0)
    b = ShuffledBatches(MemorySource(x, block_tokens=300), 100, n_tokens=1234, seed=1, buffer_tokens=600).iter_from(0)
    rows = []
    for _ in range(30):
        xa, xb = next(a), next(b)
        assert torch.equal(xa, xb)
        rows.append(xa)
    # every row served is one of the first 1234 rows (looked up by value)
    prefix = {tuple(r.tolist()) for r in x[:1234]}
    assert all(tuple(r.tolist()) in prefix for r in torch.cat(rows))
    with pytest.raises(ValueError, match="n_tokens=2001"):
        ShuffledBatches(st, 10, n_tokens=2001)
    with pytest.raises(ValueError, match="batch_size=2000"):
        ShuffledBatches(st, 2000, n_tokens=1000)


def test_fit_aip_from_store_equals_fit_in_memory(tmp_path):
    x = _data(6000, 12).double()
    st = write_store(tmp_path / "s", x.float(), shard_tokens=700)
    ref = AIP.fit(x.float())
    got = fit_aip_from_store(st)
    assert got.n_tokens == 6000
    assert torch.allclose(got.S, ref.S, rtol=1e-10, atol=0)
    part = fit_aip_from_store(st, 2500)
    assert torch.allclose(part.S, AIP.fit(x[:2500].float()).S, rtol=1e-10, atol=0)
    # cached in the store: the second call reads the file (same S), a damaged file is refitted
    a = fit_aip_from_store(st, 2500, cache=True)
    files = list(st.path.glob("aip-2500-*.safetensors"))
    assert len(files) == 1 and torch.equal(fit_aip_from_store(st, 2500, cache=True).S, a.S)
    files[0].write_bytes(files[0].read_bytes()[:-10])
    assert torch.equal(fit_aip_from_store(st, 2500, cache=True).S, a.S)
    with pytest.raises(ValueError, match="n_tokens=6001"):
        fit_aip_from_store(st, 6001)


def test_stream_memory_formula_and_resources():
    # one fill (buffer rounded down to whole shards, at least one) + two shards + a batch, in the storage dtype
    assert stream_memory_bytes(576, store_dtype="float16", buffer_tokens=1 << 18, shard_tokens=32768,
                               batch_size=4096) == (8 * 32768 + 2 * 32768 + 4096) * 576 * 2
    from atomsnb.sae import training_memory_bytes
    from atomsnb.budget import Rates, resources

    rates = Rates(gpu_tflops=100.0, cpu_f64_gflops=50.0, disk_gb_s=1.0)
    r = resources(d_model=2304, model_params=2_600_000_000, n_layers_model=26, deepest_layer=1, n_layer_stores=1,
                  n_store_tokens=10**9, n_eval_tokens=10**6, trainings=[(9216, 1000), (4608, 500)], batch_size=4096,
                  n_aip_tokens=10**7, store_dtype="bfloat16", rates=rates)
    rows = 10**9 + 10**6
    assert r["disk_GB"] == pytest.approx(rows * 2304 * 2 / 1e9)
    assert r["gpu_GB"] == pytest.approx((2_600_000_000 * 2 + 12 * 16 * 128 * 2304 * 4) / 1e9)  # the bf16 model dominates
    assert r["gpu_GB"] * 1e9 > training_memory_bytes(2304, 9216, 4096)
    collect = 2 * 100e6 * rows / 100e12 + rows * 2304 * 2 / 1e9
    aip = 2 * 10**7 * 2304**2 / 50e9 + 10**7 * 2304 * 2 / 1e9
    train = sum(k * ((10 * 4096 * 2304 * n + 4096 * 2304**2) / 100e12 + 4096 * 2304 * 2 / 1e9) for n, k in ((9216, 1000), (4608, 500)))
    assert r["collect_hours"] == pytest.approx(collect / 3600) and r["aip_hours"] == pytest.approx(aip / 3600)
    assert r["train_hours"] == pytest.approx(train / 3600)
    assert r["hours"] == pytest.approx((collect + aip + train) / 3600)


# ----------------------------------------------------------------------------------------------- collection from a model
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return save_tiny("llama", tmp_path_factory.mktemp("llama"))


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    """A small local corpus (``file:``), quicker to read than the docstrings of the standard library."""
    from tiny_models import TEXTS

    path = tmp_path_factory.mktemp("corpus") / "text.txt"
    path.write_text("\n\n".join(f"Document {i}: {TEXTS[i % 4]} {TEXTS[(7 * i) % 4]}" for i in range(3000)))
    return f"file:{path}"


def _cfg(model, corpus, **kw):
    base = dict(model=str(model), layers=(1, 2), corpus=corpus, split="eval", n_tokens=1500, seq_len=16, batch_size=4)
    base.update(kw)
    return ActivationConfig(**base)


def test_collected_store_equals_collect_activations_and_grows_by_prefix(tmp_path, tiny, text_file):
    stores = collect_store(_cfg(tiny, text_file), root=tmp_path / "a", shard_tokens=256, progress=False)
    ref = collect_activations(_cfg(tiny, text_file), progress=False)
    for layer in (1, 2):
        assert stores[layer].n_tokens == 1500
        torch.testing.assert_close(stores[layer].read(0, 1500), ref.acts[layer], rtol=1e-5, atol=1e-6)
    # a store grown from 700 to 1500 rows is byte-identical to one collected at 1500 at once; one layer alone too
    collect_store(_cfg(tiny, text_file, n_tokens=700), root=tmp_path / "b", shard_tokens=256, progress=False)
    grown = collect_store(_cfg(tiny, text_file), root=tmp_path / "b", shard_tokens=256, progress=False)
    assert _tree(tmp_path / "a") == _tree(tmp_path / "b")
    alone = collect_store(_cfg(tiny, text_file, layers=(2,)), root=tmp_path / "c", shard_tokens=256, progress=False)
    assert _tree(alone[2].path) == _tree(grown[2].path)
    # asking for fewer rows returns the store as it is (the grid reads prefixes)
    again = collect_store(_cfg(tiny, text_file, n_tokens=100), root=tmp_path / "a", progress=False)
    assert again[1].n_tokens == 1500
    # the key records what determines the bytes
    key = stores[1].key
    assert key["layer"] == 1 and key["split"] == "eval" and key["store_dtype"] == "float32" and key["model"]
    assert stores[1].path != stores[2].path


def test_collect_store_checks_its_request_as_collect_activations_does(tmp_path, tiny, text_file):
    """seq_len beyond the model's positions (rotary Llama would run on silently) and a loaded model other than the
    one config.model names are refused before any store directory exists."""
    from atomsnb.models import load_model

    root = tmp_path / "stores"
    with pytest.raises(ValueError, match=r"seq_len=300 exceeds the maximum positions .*use seq_len <= 256"):
        collect_store(_cfg(tiny, text_file, seq_len=300, n_tokens=600), root=root, progress=False)
    other = load_model(str(save_tiny("llama", tmp_path / "other", seed=1)))
    with pytest.raises(ValueError, match=r"passed to collect_store was loaded from .*other.*pass the model config.model"):
        collect_store(_cfg(tiny, text_file), model=other, root=root, progress=False)
    assert not root.exists()


def test_a_store_records_no_machine_path(tmp_path, tmp_path_factory, tiny):
    """A model loaded from a (temporary) directory: neither the directory names nor the manifest hold its path, the
    store's path or the home directory; the model is named by its folder's name and its weights fingerprint."""
    import re

    root = tmp_path / "stores"
    st = collect_store(_cfg(str(tiny), "pydoc-topics", n_tokens=200, layers=(1,)), root=root, shard_tokens=64,
                       progress=False)[1]
    forbidden = [str(tmp_path_factory.getbasetemp()), str(Path.home()), "pytest-of"]
    names = [str(p.relative_to(root)) for p in root.rglob("*")]
    assert re.fullmatch(rf"{re.escape(tiny.name)}-L001-eval-[0-9a-f]{{16}}", st.path.name), st.path.name
    text = (st.path / MANIFEST).read_text()
    for bad in forbidden:
        assert not any(bad in n for n in names), (bad, names)
        assert bad not in text, (bad, text)
    assert st.info == {"model_name": tiny.name, "model_fingerprint": st.key["model"], "layer": 1}
    # registered names and hub ids are kept as given; a relative or home-relative folder is named by its own name
    from types import SimpleNamespace

    from atomsnb.store import _model_label

    for name, path, label in (("smollm2-135m", "/x/models/smollm2-135m", "smollm2-135m"),
                              ("HuggingFaceTB/SmolLM2-135M", "HuggingFaceTB/SmolLM2-135M", "HuggingFaceTB/SmolLM2-135M"),
                              ("./runs/final", "/home/u/runs/final", "final"), ("~/m/tiny", "/home/u/m/tiny", "tiny")):
        assert _model_label(SimpleNamespace(name=name, path=path)) == label


_KILLER = """
import os, signal, sys, torch
torch.set_num_threads(1)
sys.path.insert(0, {tests!r})
import atomsnb.io as io
from atomsnb.activations import ActivationConfig
from atomsnb.store import collect_store
real, calls = io.save_file, [0]
def dying(tensors, path, metadata=None):
    calls[0] += 1
    if calls[0] == {kill_at}:  # half a shard written to its temporary file, then SIGKILL
        real(tensors, path, metadata=metadata)
        data = open(path, "rb").read()
        open(path, "wb").write(data[: len(data) // 2])
        os.kill(os.getpid(), signal.SIGKILL)
    return real(tensors, path, metadata=metadata)
io.save_file = dying
cfg = ActivationConfig(model={model!r}, layers=(1, 2), corpus={corpus!r}, split="eval", n_tokens=1500, seq_len=16,
                       batch_size=4)
collect_store(cfg, root={root!r}, shard_tokens=256, progress=False)
"""


def test_collection_killed_mid_shard_resumes_byte_identical(tmp_path, tiny, text_file):
    script = _KILLER.format(tests=str(TESTS), kill_at=5, model=str(tiny), corpus=text_file, root=str(tmp_path / "killed"))
    import atomsnb

    root = str(Path(atomsnb.__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == -9, proc.stderr[-2000:]  # killed by SIGKILL, not finished
    leftovers = list((tmp_path / "killed").rglob(".*.tmp"))
    assert leftovers, "the kill must leave a half-written temporary file behind"
    partial = [ActivationStore(p) for p in (tmp_path / "killed").iterdir() if (p / MANIFEST).exists()]
    assert partial and all(s.n_tokens < 1500 for s in partial)
    collect_store(_cfg(tiny, text_file), root=tmp_path / "killed", shard_tokens=256, progress=False)
    collect_store(_cfg(tiny, text_file), root=tmp_path / "clean", shard_tokens=256, progress=False)
    assert _tree(tmp_path / "killed") == _tree(tmp_path / "clean")  # temporary files cleaned, bytes identical


# ----------------------------------------------------------------------------------------------- hub corpora (the `hub` extra)
def _local_dataset(root: Path, n_docs: int = 400) -> Path:
    from tiny_models import TEXTS

    root.mkdir(parents=True)
    with (root / "train.jsonl").open("w") as f:
        for i in range(n_docs):
            f.write(json.dumps({"text": f"Document {i}. " + " ".join(TEXTS[i % len(TEXTS)] for _ in range(3))}) + "\n")
    return root


def test_hub_corpus_without_datasets_names_the_extra(monkeypatch, tmp_path):
    from atomsnb.corpus import iter_hf_documents

    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ImportError, match=r"\[hub\]"):
        next(iter_hf_documents(str(tmp_path)))


def test_hub_corpus_streams_like_the_full_download(tmp_path, tiny):
    pytest.importorskip("datasets", reason="the optional 'hub' extra is not installed (make install-hub)")
    from atomsnb.corpus import Corpus, iter_hf_documents

    ds = _local_dataset(tmp_path / "ds")
    for split in ("fit", "eval", None):
        assert list(iter_hf_documents(str(ds), split)) == Corpus(f"hf:{ds}").documents(split)
    cfg = _cfg(tiny, f"hf:{ds}", split="train", n_tokens=600, layers=(1,))
    a = collect_store(cfg, root=tmp_path / "a", shard_tokens=256, progress=False)[1]
    b = collect_store(cfg, root=tmp_path / "b", shard_tokens=256, progress=False)[1]
    assert a.n_tokens == 600 and a.key["corpus_fingerprint"] == "hub-stream"
    assert _tree(a.path) == _tree(b.path)
    assert bool(torch.isfinite(a.read(0, 600)).all())
    # the windows: BOS, then the split's documents in some order, each tokenised whole and followed by EOS
    from atomsnb.models import load_model
    from atomsnb.store import _windows_streaming

    lm = load_model(str(tiny))
    tok = lm.tokenizer
    wins = torch.stack(list(_windows_streaming(lm, Corpus(f"hf:{ds}"), cfg)))
    assert (wins[:, 0] == tok.bos_token_id).all() and wins.shape[1] == 16
    body = wins[:, 1:].flatten().tolist()
    docs = {tuple(tok(d.text, add_special_tokens=False)["input_ids"]) for d in Corpus(f"hf:{ds}").documents("train")}
    segments, cur = [], []
    for t in body:
        if t == tok.eos_token_id:
            segments.append(tuple(cur))
            cur = []
        else:
            cur.append(t)
    assert len(segments) == len(set(segments)) and set(segments) <= docs  # no document lost in part, none repeated
    assert len(segments) >= 0.9 * len(docs)  # all but the tail that does not fill a window
