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


# ---------------------------------------------------------------------------------------------------------------------
# The checksum covers the header metadata too (issue 9 §4.4)
# ---------------------------------------------------------------------------------------------------------------------
def _edit_header(path, edit):
    """Rewrite a safetensors file with its JSON header passed through ``edit(dict) -> dict`` (tensor bytes unchanged),
    the way a person editing the header by hand, or a bit flip in it, would change it."""
    import json
    import struct

    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = edit(json.loads(raw[8:8 + n]))
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + raw[8 + n:])


def _set_meta(key, value):
    def edit(h):
        h["__metadata__"][key] = value
        return h
    return edit


@pytest.mark.parametrize("key, value", [("kind", '"relu"'), ("input_scale", "2.5"), ("ridge", "0.001"),
                                        ("new_key", "1")])
def test_edited_metadata_fails_the_checksum(tmp_path, key, value):
    p = tmp_path / "sae.safetensors"
    save_tensors(p, {"W": torch.randn(4, 3)}, {"kind": "jumprelu", "input_scale": 1.0, "ridge": 1e-6})
    _edit_header(p, _set_meta(key, value))
    with pytest.raises(CacheCorruptError, match="SHA-256"):
        load_tensors(p)


def test_removed_metadata_fails_the_checksum(tmp_path):
    p = tmp_path / "x.safetensors"
    save_tensors(p, {"W": torch.randn(4, 3)}, {"kind": "jumprelu", "ridge": 1e-6})

    def drop(h):
        del h["__metadata__"]["ridge"]
        return h
    _edit_header(p, drop)
    with pytest.raises(CacheCorruptError, match="SHA-256"):
        load_tensors(p)


def test_file_from_an_older_atomsnb_is_not_trusted(tmp_path):
    """Files whose checksum covers only the tensors (before this fix) are recomputed, not loaded."""
    from atomsnb.io import tensor_digest
    from safetensors.torch import save_file

    t = {"W": torch.randn(4, 3)}
    p = tmp_path / "old.safetensors"
    save_file(t, str(p), metadata={"kind": '"jumprelu"', "atomsnb_sha256": tensor_digest(t)})
    with pytest.raises(CacheCorruptError, match="older"):
        load_tensors(p)
    save_file(t, str(p), metadata={"kind": '"jumprelu"'})
    with pytest.raises(CacheCorruptError, match="no checksum"):
        load_tensors(p)


def test_non_json_metadata_is_a_damaged_cache_not_a_json_error(tmp_path):
    """A header value that is not JSON (a file written by another tool under our name) is "damaged, recompute"."""
    from atomsnb import io as aio
    from safetensors.torch import save_file

    t = {"W": torch.randn(2, 2)}
    meta = {"kind": "jumprelu"}  # not JSON: a bare word
    meta[aio._DIGEST_KEY_V2] = aio._file_digest(t, meta)
    p = tmp_path / "x.safetensors"
    save_file(t, str(p), metadata=meta)
    with pytest.raises(CacheCorruptError, match="metadata 'kind'.*not JSON"):
        load_tensors(p)


def test_metadata_that_is_not_json_serialisable_is_refused_on_save(tmp_path):
    with pytest.raises(TypeError, match="metadata 'scale'.*Tensor"):
        save_tensors(tmp_path / "x.safetensors", {"a": torch.zeros(2)}, {"scale": torch.tensor(2.0)})
    with pytest.raises(TypeError, match="tensor 'a'.*list"):
        save_tensors(tmp_path / "x.safetensors", {"a": [1.0, 2.0]})
    with pytest.raises(ValueError, match="'atomsnb_sha256_v2' is reserved"):
        save_tensors(tmp_path / "x.safetensors", {"a": torch.zeros(2)}, {"atomsnb_sha256_v2": "x"})
    assert not (tmp_path / "x.safetensors").exists()


def test_every_dtype_round_trips_with_a_checksum(tmp_path):
    t = {str(dt): torch.arange(6).to(dt) for dt in (torch.float32, torch.float64, torch.float16, torch.bfloat16,
                                                    torch.int8, torch.uint8, torch.int64, torch.bool)}
    if hasattr(torch, "float8_e4m3fn"):
        t["f8"] = torch.arange(6).float().to(torch.float8_e4m3fn)
    save_tensors(tmp_path / "x.safetensors", t)
    back, _ = load_tensors(tmp_path / "x.safetensors")
    assert all(torch.equal(back[k].view(torch.uint8), t[k].view(torch.uint8)) for k in t)


# ---------------------------------------------------------------------------------------------------------------------
# JSON caches
# ---------------------------------------------------------------------------------------------------------------------
def test_json_that_is_not_utf8_is_a_damaged_cache(tmp_path):
    p = tmp_path / "x.json"
    p.write_bytes(b"\xff\xfe{\x00")
    with pytest.raises(CacheCorruptError, match="x.json"):
        load_json(p)


def test_checksummed_json_detects_edits_and_plain_files(tmp_path):
    p = tmp_path / "x.json"
    save_json(p, {"score": 7, "reply": "ok"}, checksum=True)
    assert load_json(p, checksum=True) == {"score": 7, "reply": "ok"}
    p.write_text(p.read_text().replace('"score": 7', '"score": 9'))
    with pytest.raises(CacheCorruptError, match="checksum"):
        load_json(p, checksum=True)
    save_json(p, {"score": 7})  # no checksum: not trusted where one is expected
    with pytest.raises(CacheCorruptError, match="no checksum"):
        load_json(p, checksum=True)


# ---------------------------------------------------------------------------------------------------------------------
# Orphaned temporary files of killed writes (issue 9 §4.11)
# ---------------------------------------------------------------------------------------------------------------------
def _temps(directory):
    return sorted(f.name for f in directory.iterdir() if f.name.endswith(".tmp"))


def test_temp_file_of_a_killed_writer_is_removed_by_the_next_write(tmp_path):
    import subprocess
    import sys

    target = tmp_path / "big.safetensors"
    code = ("import os, signal, sys, torch\n"
            "from atomsnb.io import atomic_write\n"
            "with atomic_write(sys.argv[1]) as tmp:\n"
            "    tmp.write_bytes(b'x' * 100000)\n"
            "    os.kill(os.getpid(), signal.SIGKILL)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(target)], capture_output=True)
    assert proc.returncode == -9
    assert len(_temps(tmp_path)) == 1 and not target.exists()  # the kill left an orphan
    save_tensors(target, {"a": torch.zeros(3)})
    assert _temps(tmp_path) == [], "the orphaned temporary file of the killed writer was not removed"
    assert torch.equal(load_tensors(target)[0]["a"], torch.zeros(3))


def test_stale_temp_rule_keeps_live_and_recent_writers(tmp_path):
    import os
    import time

    from atomsnb import io as aio

    target = tmp_path / "r.json"
    old = time.time() - aio.STALE_TMP_AGE_S - 60
    live = tmp_path / f".r.json.{aio._HOST}.{os.getpid()}.abcd1234.tmp"  # this process: alive
    foreign_new = tmp_path / ".r.json.otherhost.12345.abcd1234.tmp"      # another machine, recent: may be writing
    foreign_old = tmp_path / ".r.json.otherhost.12346.abcd1234.tmp"      # another machine, older than the safe age
    legacy_old = tmp_path / ".r.json.k3j_x9q2.tmp"                        # mkstemp name of an older atomsnb, old
    legacy_new = tmp_path / ".r.json.k3j_x9q3.tmp"
    other_target = tmp_path / ".r.json.x.otherhost.12347.abcd1234.tmp"   # temp of the target "r.json.x"
    for f in (live, foreign_new, foreign_old, legacy_old, legacy_new, other_target):
        f.write_text("partial")
    for f in (foreign_old, legacy_old, other_target):
        os.utime(f, (old, old))
    save_json(target, {"ok": 1})
    assert _temps(tmp_path) == sorted(f.name for f in (live, foreign_new, legacy_new, other_target))
