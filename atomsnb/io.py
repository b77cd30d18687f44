"""Atomic, checksummed storage of tensors and JSON (safetensors; never pickle).

Every cache file atomsnb writes goes through :func:`atomic_write`: the bytes land in a
temporary file in the same directory and are renamed into place only when complete, so an
interrupted run never leaves a half-written file under the final name. Tensor files carry a
SHA-256 of their tensor bytes in the safetensors metadata; :func:`load_tensors` recomputes it
and raises :class:`CacheCorruptError` on any mismatch, truncation or unreadable header, so a
damaged cache is detected and recomputed, never silently used.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

__all__ = [
    "CacheCorruptError",
    "atomic_write",
    "save_tensors",
    "load_tensors",
    "save_json",
    "load_json",
    "tensor_digest",
]

_DIGEST_KEY = "atomsnb_sha256"


class CacheCorruptError(RuntimeError):
    """A cache file exists but is truncated, unreadable or fails its checksum."""


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it onto ``path`` only on success.

    Args:
        path: the final file name. Its directory is created if needed.

    Yields:
        A temporary file path in the same directory (same filesystem, so the rename is atomic).
        On an exception the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
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

    Hashes in chunks of rows, so it needs no second copy of a large tensor.
    """
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        flat = t.reshape(-1)
        if flat.dtype == torch.bfloat16:
            flat = flat.view(torch.int16)
        step = 1 << 22
        for start in range(0, flat.numel(), step):
            h.update(flat[start : start + step].numpy().tobytes())
    return h.hexdigest()


def save_tensors(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, Any] | None = None) -> Path:
    """Write ``tensors`` to a safetensors file atomically, with a checksum and JSON metadata.

    Args:
        path: destination ``.safetensors`` file.
        tensors: name -> tensor (any shape; stored contiguous, on CPU).
        metadata: JSON-serialisable values, stored in the safetensors header under their keys.

    Returns:
        The path written.
    """
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    meta = {k: json.dumps(v) for k, v in (metadata or {}).items()}
    meta[_DIGEST_KEY] = tensor_digest(tensors)
    with atomic_write(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return Path(path)


def load_tensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read a file written by :func:`save_tensors` and verify its checksum.

    Returns:
        ``(tensors, metadata)`` with metadata values decoded from JSON.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CacheCorruptError: the file is truncated, its header unreadable, the checksum missing or wrong.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(path)
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            raw_meta = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CacheCorruptError(f"cache file {path} is unreadable ({exc}); delete it to recompute") from exc
    expected = raw_meta.pop(_DIGEST_KEY, None)
    if expected is None or tensor_digest(tensors) != expected:
        raise CacheCorruptError(f"cache file {path} fails its SHA-256 check; delete it to recompute")
    meta = {k: json.loads(v) for k, v in raw_meta.items()}
    return tensors, meta


def save_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_write(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    return Path(path)


def load_json(path: str | os.PathLike) -> Any:
    """Read JSON written by :func:`save_json`; raise :class:`CacheCorruptError` if it does not parse."""
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as exc:
        raise CacheCorruptError(f"{path} is not valid JSON ({exc}); delete it to recompute") from exc
