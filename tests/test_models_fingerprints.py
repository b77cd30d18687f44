"""Content fingerprints: remembered while a file is unchanged, never stale after it changes."""

import hashlib
import os

import pytest

import atomsnb.fingerprints as fp
from atomsnb.fingerprints import directory_fingerprint, file_sha256


@pytest.fixture
def counted(monkeypatch):
    calls = []
    real = fp._hash_file

    def count(path):
        calls.append(path)
        return real(path)

    monkeypatch.setattr(fp, "_hash_file", count)
    return calls


def test_digest_is_sha256_and_remembered_until_the_file_changes(tmp_path, counted):
    f = tmp_path / "w.bin"
    f.write_bytes(b"a" * 1000)
    assert file_sha256(f) == hashlib.sha256(b"a" * 1000).hexdigest()
    assert file_sha256(f) == hashlib.sha256(b"a" * 1000).hexdigest() and len(counted) == 1  # from the stamp
    f.write_bytes(b"b" * 1000)  # same size, new bytes
    assert file_sha256(f) == hashlib.sha256(b"b" * 1000).hexdigest() and len(counted) == 2
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))  # same mtime set back: ctime still moves
    assert file_sha256(f) == hashlib.sha256(b"b" * 1000).hexdigest()
    assert file_sha256(f, use_stamp=False) == hashlib.sha256(b"b" * 1000).hexdigest()


def test_a_damaged_stamp_is_ignored(tmp_path, counted):
    f = tmp_path / "w.bin"
    f.write_bytes(b"xyz")
    file_sha256(f)
    for stamp in (tmp_path.parent).rglob("fingerprints/*.json"):
        stamp.write_text("{not json")
    assert file_sha256(f) == hashlib.sha256(b"xyz").hexdigest() and len(counted) == 2


def test_directory_fingerprint_covers_model_files_only(tmp_path):
    for name, data in (("model.safetensors", b"W" * 64), ("config.json", b"{}"), ("tokenizer.json", b"{}")):
        (tmp_path / name).write_bytes(data)
    base = directory_fingerprint(tmp_path)
    (tmp_path / "README.md").write_text("notes")
    (tmp_path / "atomsnb_card.json").write_text("{}")
    assert directory_fingerprint(tmp_path) == base  # documentation and our own card do not count
    (tmp_path / "tokenizer.json").write_bytes(b'{"x": 1}')
    changed = directory_fingerprint(tmp_path)
    assert changed != base
    (tmp_path / "model.safetensors").write_bytes(b"W" * 63 + b"V")
    assert directory_fingerprint(tmp_path) not in (base, changed)
