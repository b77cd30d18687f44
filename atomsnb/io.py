"""Atomic, checksummed storage of tensors and JSON (safetensors; never pickle).

Every cache file atomsnb writes goes through :func:`atomic_write`: the bytes land in a
temporary file in the same directory and are renamed into place only when complete, so an
interrupted run never leaves a half-written file under the final name. A write killed outright
(``kill -9``, a node lost) cannot remove its temporary file; the next write of the same target removes
it (:func:`remove_stale_temp_files` states the rule).

Tensor files carry a SHA-256 over their tensor bytes *and* their header metadata (every key and value)
under ``atomsnb_sha256_v2``; :func:`load_tensors` recomputes it and raises :class:`CacheCorruptError` on
any mismatch, truncation, unreadable header or metadata that is not JSON, so a damaged (or hand-edited)
cache is detected and recomputed, never silently used. Files written before the metadata was covered
(key ``atomsnb_sha256``) are not trusted either. JSON files written with ``checksum=True``
(:func:`save_json`) carry a SHA-256 of their content in the same way.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

__all__ = [
    "CacheCorruptError",
    "atomic_write",
    "save_tensors",
    "load_tensors",
    "save_json",
    "load_json",
    "tensor_digest",
    "json_digest",
    "remove_stale_temp_files",
    "is_write_failure",
    "STALE_TMP_AGE_S",
    "DTYPES",
]

#: The one table of floating dtype names -> ``torch.dtype`` (the names ``str(dtype)`` gives without ``torch.``,
#: which :func:`atomsnb.sae.save_sae` writes into its metadata); sizes are ``DTYPES[name].itemsize``. Each use
#: admits a subset and says which: SAE master weights ``float32``/``float64`` and autocast ``bfloat16``/``float16``
#: (:class:`atomsnb.sae.SAEConfig`), stores ``float32``/``bfloat16``/``float16`` (:data:`atomsnb.store.STORE_DTYPES`),
#: models the same plus ``fp32``/``bf16``/``fp16`` (:func:`atomsnb.models.resolve_dtype`).
DTYPES = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

_DIGEST_KEY_V1 = "atomsnb_sha256"  # before: tensors only (no longer trusted)
_DIGEST_KEY_V2 = "atomsnb_sha256_v2"  # tensors and every metadata key and value
_RESERVED = (_DIGEST_KEY_V1, _DIGEST_KEY_V2)
_JSON_DIGEST = "atomsnb_sha256"
_JSON_CONTENT = "content"

#: A temporary file of :func:`atomic_write` older than this (seconds) is stale whoever wrote it. Writers hold
#: their temporary file for the duration of one ``save_file`` / ``write_text`` call (seconds, minutes for
#: tens of GB), so one day is far beyond any live write.
STALE_TMP_AGE_S = 24 * 3600
_HOST = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname()) or "host"
# mkstemp's random part is 8 characters of [a-z0-9_]
_TMP_NEW = re.compile(r"^(?P<host>[A-Za-z0-9_-]+)\.(?P<pid>\d+)\.[a-z0-9_]{8}\.tmp$")
_TMP_OLD = re.compile(r"^[a-z0-9_]{8}\.tmp$")


class CacheCorruptError(RuntimeError):
    """A cache file exists but is truncated, unreadable or fails its checksum."""


def _pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this machine (True when it cannot be told)."""
    if os.name == "nt":  # os.kill would terminate the process on Windows: never probe there
        return True
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists (another user's)
        return True
    return True


def remove_stale_temp_files(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary files that killed writes of ``path`` left behind; return what was removed.

    A temporary file of ``path`` is ``.<name>.<host>.<pid>.<random>.tmp`` in the same directory
    (``.<name>.<random>.tmp`` from older atomsnb versions). It is stale, and removed, when

    - it was written on this machine (same host name) by a process that no longer exists, or
    - it was last modified more than :data:`STALE_TMP_AGE_S` seconds (one day) ago, whoever wrote it
      (another machine sharing the directory, or an older atomsnb whose names carry no process id).

    A live writer's file is never removed: its process exists, or (on another machine) it is younger
    than a day. Caveat: two containers that share both a host name and this directory but not a process
    namespace could each take the other's live writer for dead; give them distinct host names.
    Temporary files of other targets in the directory are left alone.

    Args:
        path: the final file name whose temporary files to clean.
    """
    path = Path(path)
    prefix = f".{path.name}."
    removed = []
    now = time.time()
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(prefix) or not entry.name.endswith(".tmp"):
            continue
        rest = entry.name[len(prefix):]
        m = _TMP_NEW.match(rest)
        if m is None and _TMP_OLD.match(rest) is None:
            continue  # not one of ours for this target
        try:
            age = now - entry.stat(follow_symlinks=False).st_mtime
            if not entry.is_file(follow_symlinks=False):
                continue
        except OSError:
            continue
        dead = m is not None and m["host"] == _HOST and not _pid_alive(int(m["pid"]))
        if dead or age > STALE_TMP_AGE_S:
            try:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
            except OSError:
                pass  # removed by someone else meanwhile, or not ours to remove
    return removed


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only on success.

    Before writing, stale temporary files of earlier killed writes of ``path`` are removed
    (:func:`remove_stale_temp_files`).

    Args:
        path: the final file name. Its directory is created if needed.

    Yields:
        A temporary file path in the same directory (same filesystem, so the rename is atomic), named
        ``.<name>.<host>.<pid>.<random>.tmp``. On an exception the temporary file is removed and ``path``
        is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp_files(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_HOST}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def tensor_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of ``tensors`` (in sorted name order).

    Hashes the raw bytes (any dtype, bfloat16 and float8 included) in chunks, so it needs no second
    copy of a large tensor.
    """
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        flat = t.reshape(-1).view(torch.uint8) if t.numel() else torch.empty(0, dtype=torch.uint8)
        step = 1 << 24
        for start in range(0, flat.numel(), step):
            h.update(flat[start: start + step].numpy().tobytes())
    return h.hexdigest()


def _file_digest(tensors: Mapping[str, torch.Tensor], raw_meta: Mapping[str, str]) -> str:
    """SHA-256 of a tensor file: the tensors' digest and every metadata key and value (as stored)."""
    h = hashlib.sha256(tensor_digest(tensors).encode())
    for k in sorted(raw_meta):
        h.update(json.dumps([k, raw_meta[k]]).encode())
    return h.hexdigest()


def is_write_failure(exc: BaseException) -> bool:
    """Whether ``exc``, raised by a cache writer (:func:`save_tensors`, :func:`save_json`), means the disk refused
    the write (full, read-only, file too large): an :class:`OSError`, or safetensors' own ``SafetensorError`` when it
    reports an I/O error ("I/O error: No space left on device (os error 28)"), which is not an ``OSError``. Any
    other ``SafetensorError`` is a bug, not the disk: False. The caches' writers (the activation cache, the SAE
    cache) warn on such a failure and return what they computed, uncached."""
    return isinstance(exc, OSError) or (isinstance(exc, SafetensorError) and "I/O error" in str(exc))


def save_tensors(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, Any] | None = None) -> Path:
    """Write ``tensors`` to a safetensors file atomically, with a checksum of tensors and metadata.

    Args:
        path: destination ``.safetensors`` file.
        tensors: name -> tensor (any shape and dtype; stored contiguous, on CPU).
        metadata: JSON-serialisable values, stored in the safetensors header under their keys; covered by
            the checksum, so an edited value fails :func:`load_tensors`.

    Returns:
        The path written.

    Raises:
        TypeError: a tensor that is not a ``torch.Tensor``, a key that is not a string, or a metadata value
            that is not JSON-serialisable (the message names it).
        ValueError: a metadata key reserved for the checksum (``atomsnb_sha256``, ``atomsnb_sha256_v2``).
    """
    clean = {}
    for k, v in tensors.items():
        if not isinstance(k, str):
            raise TypeError(f"tensor names must be strings; got {k!r} ({type(k).__name__})")
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"tensor {k!r} is a {type(v).__name__}, not a torch.Tensor")
        clean[k] = v.detach().contiguous().cpu()
    meta = {}
    for k, v in (metadata or {}).items():
        if not isinstance(k, str):
            raise TypeError(f"metadata keys must be strings; got {k!r} ({type(k).__name__})")
        if k in _RESERVED:
            raise ValueError(f"metadata key {k!r} is reserved for the checksum; use another name")
        try:
            meta[k] = json.dumps(v)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"metadata {k!r} is not JSON-serialisable ({type(v).__name__}: {exc}); "
                            "store numbers, strings, lists or dicts") from None
    meta[_DIGEST_KEY_V2] = _file_digest(clean, meta)
    with atomic_write(path) as tmp:
        save_file(clean, str(tmp), metadata=meta)
    return Path(path)


def load_tensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a file written by :func:`save_tensors` and verify its checksum (tensors and metadata).

    Returns:
        ``(tensors, metadata)`` with metadata values decoded from JSON.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CacheCorruptError: the file is truncated, its header unreadable, the checksum missing, wrong or from an
            older atomsnb whose checksum did not cover the metadata, or a metadata value is not JSON.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            raw_meta = dict(f.metadata() or {})
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CacheCorruptError(f"cache file {path} is unreadable ({exc}); delete it to recompute") from exc
    expected = raw_meta.pop(_DIGEST_KEY_V2, None)
    if expected is None:
        if _DIGEST_KEY_V1 in raw_meta:
            raise CacheCorruptError(f"cache file {path} was written by an older atomsnb whose SHA-256 does not cover "
                                    "its metadata; it is not trusted: delete it to recompute")
        raise CacheCorruptError(f"cache file {path} has no checksum (not written by atomsnb.io.save_tensors); "
                                "delete it to recompute")
    if _file_digest(tensors, raw_meta) != expected:
        raise CacheCorruptError(f"cache file {path} fails its SHA-256 check (tensors or metadata changed); "
                                "delete it to recompute")
    meta = {}
    for k, v in raw_meta.items():
        try:
            meta[k] = json.loads(v)
        except json.JSONDecodeError as exc:
            raise CacheCorruptError(f"cache file {path}: metadata {k!r} is not JSON ({v[:80]!r}: {exc}); "
                                    "delete it to recompute") from exc
    return tensors, meta


def _canonical(obj: Any) -> tuple[Any, str]:
    """``obj`` as it reads back from JSON, and its canonical serialisation (sorted keys) that the checksum covers."""
    back = json.loads(json.dumps(obj, default=str))
    return back, json.dumps(back, sort_keys=True)


def json_digest(obj: Any) -> str:
    """SHA-256 (64 hex digits) of ``obj``'s canonical JSON (sorted keys, as it reads back from JSON).

    The checksum of :func:`save_json` (``checksum=True``), for files that carry their checksum inside (a model card's
    ``card_sha256``, :mod:`atomsnb.packaged`): equal for two objects that serialise to the same JSON.
    """
    return hashlib.sha256(_canonical(obj)[1].encode()).hexdigest()


def save_json(path: str | os.PathLike, obj: Any, *, checksum: bool = False) -> Path:
    """Write ``obj`` as indented JSON, atomically.

    Args:
        path: destination file.
        obj: JSON-serialisable data (other objects are written as their ``str``).
        checksum: wrap it as ``{"atomsnb_sha256": <SHA-256 of the canonical JSON>, "content": obj}``, for caches
            whose content must be verified on read (:func:`load_json` with ``checksum=True``).
    """
    if checksum:
        content, _ = _canonical(obj)
        obj = {_JSON_DIGEST: json_digest(content), _JSON_CONTENT: content}
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    return Path(path)


def load_json(path: str | os.PathLike, *, checksum: bool = False) -> Any:
    """Read JSON written by :func:`save_json`.

    Args:
        path: the file.
        checksum: expect (and verify) the checksummed form written by ``save_json(..., checksum=True)``;
            return its content.

    Raises:
        FileNotFoundError: no such file.
        CacheCorruptError: the file is not UTF-8 JSON, or (with ``checksum``) has no checksum or fails it.
    """
    path = Path(path)
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CacheCorruptError(f"{path} is not valid UTF-8 JSON ({exc}); delete it to recompute") from exc
    if not checksum:
        return obj
    if not isinstance(obj, dict) or set(obj) != {_JSON_DIGEST, _JSON_CONTENT}:
        raise CacheCorruptError(f"{path} has no checksum (expected the keys {_JSON_DIGEST!r} and {_JSON_CONTENT!r}); "
                                "delete it to recompute")
    if json_digest(obj[_JSON_CONTENT]) != obj[_JSON_DIGEST]:
        raise CacheCorruptError(f"{path} fails its checksum (its content was changed); delete it to recompute")
    return obj[_JSON_CONTENT]
