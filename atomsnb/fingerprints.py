"""Content fingerprints (SHA-256) of files and model directories, hashed once per file version.

Hashing a 1 GB ``model.safetensors`` takes seconds; loading a model should not. :func:`file_sha256`
therefore remembers the digest of a file in a small stamp (``$ATOMSNB_CACHE/fingerprints/*.json``)
keyed by the file's absolute path and recording its size, ``st_mtime_ns``, ``st_ctime_ns`` and inode.
A stamp is used only when all four still match the file on disk: rewriting, replacing, truncating or
``touch``-ing the file changes at least one of them (``ctime`` cannot be set back by user tools), so a
stale digest is never returned. A stamp that cannot be read is ignored; one that cannot be written only
costs a re-hash next time.

The activation cache (:mod:`atomsnb.activations`) is keyed by :func:`directory_fingerprint` of the
model directory, i.e. by the bytes of its weights, config and tokenizer, not by the folder's name.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from .io import save_json
from .paths import cache_dir

__all__ = ["file_sha256", "directory_fingerprint", "MODEL_FILE_SUFFIXES", "STAMP_VERSION"]

#: Bump when the stamp format or the hashing changes.
STAMP_VERSION = 1
#: Files of a model directory that ``from_pretrained`` reads (weights, config, tokenizer, remote code).
MODEL_FILE_SUFFIXES = (".safetensors", ".bin", ".json", ".model", ".txt", ".jinja", ".tiktoken", ".py", ".pt", ".pth",
                       ".msgpack", ".h5", ".gguf")
#: Files of a model directory that never affect the model's outputs (our own card).
_IGNORED_NAMES = ("atomsnb_card.json",)


def _stat_key(st: os.stat_result) -> dict:
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "ino": st.st_ino}


def _hash_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def file_sha256(path: str | os.PathLike, *, use_stamp: bool = True) -> str:
    """SHA-256 (64 hex digits) of a file's bytes, remembered across runs while the file is unchanged.

    Args:
        path: a regular file.
        use_stamp: read and write the stamp cache (see module docstring); ``False`` always hashes.

    Returns:
        The hex digest.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        IsADirectoryError: ``path`` is a directory.
    """
    path = Path(path).expanduser().resolve()
    if path.is_dir():
        raise IsADirectoryError(f"{str(path)!r} is a directory; file_sha256 hashes one file")
    before = _stat_key(path.stat())
    stamp = None
    if use_stamp:
        stamp = cache_dir("fingerprints") / (hashlib.sha256(str(path).encode()).hexdigest()[:24] + ".json")
        try:
            rec = json.loads(stamp.read_text())
            if rec.get("version") == STAMP_VERSION and rec.get("path") == str(path) and rec.get("stat") == before:
                return str(rec["sha256"])
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            pass
    digest = _hash_file(path)
    if stamp is not None and _stat_key(path.stat()) == before:  # unchanged while hashing: safe to remember
        try:
            save_json(stamp, {"version": STAMP_VERSION, "path": str(path), "stat": before, "sha256": digest})
        except OSError:
            pass  # an optimisation only: the next call hashes again
    return digest


def directory_fingerprint(path: str | os.PathLike) -> str:
    """SHA-256 (64 hex digits) over the names and contents of a model directory's model files.

    The files are the top-level regular files whose suffix is in :data:`MODEL_FILE_SUFFIXES`
    (weights, config, tokenizer), hidden files and the atomsnb model card excluded; each is hashed
    with :func:`file_sha256`.

    Raises:
        NotADirectoryError: ``path`` is not a directory.
        ValueError: the directory holds no model file.
    """
    path = Path(path).expanduser().resolve()
    if not path.is_dir():
        raise NotADirectoryError(f"{str(path)!r} is not a directory")
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith(".")
                   and p.suffix in MODEL_FILE_SUFFIXES and p.name not in _IGNORED_NAMES)
    if not files:
        raise ValueError(f"directory {str(path)!r} holds no model file (looked for {', '.join(MODEL_FILE_SUFFIXES)})")
    h = hashlib.sha256()
    for p in files:
        h.update(f"{p.name}\0{file_sha256(p)}\n".encode())
    return h.hexdigest()
