"""Atomic, checksummed cache files (atomsnb.io)."""

import pytest
import torch

from atomsnb.io import CacheCorruptError, atomic_write, load_json, load_tensors, save_json, save_tensors


def test_roundtrip_with_metadata(tmp_path):
    t = {"a": torch.arange(12.0).view(3, 4), "b": torch.tensor([1, 2, 3])}
    save_tensors(tmp_path / "x.safetensors", t, {"layer": 3, "name": "m"})
    back, meta = load_tensors(tmp_path / "x.safetensors")
    assert torch.equal(back["a"], t["a"]) and torch.equal(back["b"], t["b"])
    assert meta == {"layer": 3, "name": "m"}


def test_truncated_and_flipped_files_are_detected(tmp_path):
    p = tmp_path / "x.safetensors"
    save_tensors(p, {"a": torch.randn(100, 10)})
    raw = p.read_bytes()
    p.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CacheCorruptError, match="unreadable"):
        load_tensors(p)
    flipped = bytearray(raw)
    flipped[-1] ^= 0x01
    p.write_bytes(bytes(flipped))
    with pytest.raises(CacheCorruptError, match="SHA-256"):
        load_tensors(p)


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    p = tmp_path / "out.json"
    save_json(p, {"ok": 1})
    with pytest.raises(RuntimeError):
        with atomic_write(p) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("killed")
    assert load_json(p) == {"ok": 1}
    assert [f.name for f in tmp_path.iterdir()] == ["out.json"]
