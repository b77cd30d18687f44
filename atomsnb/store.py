"""An activation store on disk: residual-stream activations in checksummed shards, read back as a stream.

The analogue of SAELens' ``ActivationsStore`` / ``CacheActivationsRunner`` for atomsnb (issue 10), so that a
TSAE trains on the paper's data sizes (``|M|`` up to 1.9B activations of Gemma2-2B, paper §5) with memory that does
not grow with ``|M|``:

- **One store per (model, layer, corpus, split, seed)**, keyed by what determines its bytes: the model's weights
  fingerprint, layer, corpus and its fingerprint, split, seed, window length, BOS handling, the forward batch
  size, model dtype, device type, storage dtype and the capture code's fingerprint (:func:`collection_key`).
- **Shards**: ``shard_NNNNNN.safetensors`` files of ``shard_tokens`` rows ``[rows, d_model]`` in the storage dtype
  (``float32``, or ``bfloat16`` / ``float16`` to halve the disk), each written atomically and checksummed by
  :mod:`atomsnb.io`; a manifest ``manifest.json`` (written atomically, see :data:`MANIFEST`) records the key, the
  dtype and, per shard, its token range ``[start, stop)`` and its checksum (the SHA-256 :mod:`atomsnb.io` writes in the
  shard's header: checked against the manifest, then against the shard's bytes, on every verified read).
- **Resumable**: a killed collection resumes at the first shard missing from the manifest, recomputing forward
  passes on the same global grid of batches, so it ends byte-identical to an uninterrupted one. Growing a store
  (asking for more tokens later) appends to it; the first ``n`` rows of a store never depend on its final size,
  so grid points with different ``|M|`` read prefixes of one store.
- **Read back** sequentially (:meth:`ActivationStore.iter_chunks`, e.g. :func:`fit_aip_from_store`) or as a
  seeded, deterministic stream of shuffled batches (:class:`ShuffledBatches`) through a mixing buffer of
  ``buffer_tokens`` rows: each epoch permutes the blocks (shards) of the prefix, reads them ``buffer_tokens`` at
  a time into the buffer and serves the buffer's rows in a random order. Its state is one integer (batches
  served), so a training checkpoint records its position exactly. An in-memory tensor is the same kind of
  source (:class:`MemorySource`): the SAE trainer has one code path for both.

Source conventions: SAELens ``training/mixing_buffer.py`` (a buffer of activations served in random order),
EleutherAI/sparsify (train from a stream); layer convention of :mod:`atomsnb.activations`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import json
import math
import numbers
import os
import re
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from tqdm import tqdm

from . import activations, fingerprints
from .activations import capture_residual_stream, checked_request, token_windows
from .aip import AIP, check_finite
from .codeprint import code_fingerprint
from .corpus import Corpus, iter_hf_documents
from .io import (
    DTYPES,
    CacheCorruptError,
    load_json,
    load_tensors,
    save_json,
    save_tensors,
    tensor_digest,
)
from .paths import cache_dir

__all__ = [
    "STORE_DTYPES",
    "MANIFEST",
    "HEAD_ROWS",
    "DEFAULT_BUFFER_TOKENS",
    "ActivationStore",
    "MemorySource",
    "ShuffledBatches",
    "StoreMismatchError",
    "default_shard_tokens",
    "write_store",
    "collect_store",
    "collection_key",
    "fit_aip_from_store",
    "stream_memory_bytes",
]

#: Storage dtypes of a store (float16 halves the disk but overflows above 65504: bfloat16 keeps float32's range).
STORE_DTYPES = {name: DTYPES[name] for name in ("float32", "bfloat16", "float16")}
#: File name of a store's manifest.
MANIFEST = "manifest.json"
#: Default size of the mixing buffer, in activations (SAELens' default buffer is of the same order).
DEFAULT_BUFFER_TOKENS = 1 << 18
FORMAT = "atomsnb-activation-store"
FORMAT_VERSION = 1
_SHARD = "shard_{:06d}.safetensors"
#: Rows of a store's head digest (at most one shard): the manifest's ``head`` is the SHA-256 of the first
#: ``min(HEAD_ROWS, shard_tokens, n_tokens)`` rows in the storage dtype, so that resuming a store from other data
#: under the same key is refused (:func:`write_store`).
HEAD_ROWS = 1024
_SHARD_TARGET_BYTES = 128 * 2**20


def _manifest_int(name: str, value, minimum: int) -> int:
    """An integer field of a manifest (JSON numbers that are not integers, and booleans, are refused)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")
    return value


class StoreMismatchError(ValueError):
    """A store directory holds a store with another key, d_model or dtype than the one asked for."""


def _nbytes(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _resolve_store_dtype(dtype: str | torch.dtype) -> tuple[str, torch.dtype]:
    for name, dt in STORE_DTYPES.items():
        if dtype == name or dtype == dt:
            return name, dt
    raise ValueError(f"unknown store dtype {dtype!r}; allowed: {sorted(STORE_DTYPES)}")


def _check_shard_tokens(shard_tokens) -> None:
    """Refuse a ``shard_tokens`` that is neither ``None`` (the default size) nor an integer >= 1."""
    if shard_tokens is None:
        return
    if isinstance(shard_tokens, bool) or not isinstance(shard_tokens, numbers.Integral) or shard_tokens < 1:
        raise ValueError(f"shard_tokens must be None (default_shard_tokens) or an integer >= 1; got {shard_tokens!r}")


def default_shard_tokens(d_model: int, dtype: str | torch.dtype = "float32") -> int:
    """Rows per shard: the largest power of two whose shard fits in 128 MiB, clamped to ``[2^10, 2^20]``.

    E.g. 32768 rows at ``d_model = 576`` float32 (75 MB), 16384 at 2304 bfloat16 (75 MB). Shards are the blocks the
    shuffled stream reads whole, so smaller shards mix better and larger ones keep the manifest short.
    """
    if int(d_model) < 1:
        raise ValueError(f"d_model must be >= 1; got {d_model}")
    _, dt = _resolve_store_dtype(dtype)
    rows = _SHARD_TARGET_BYTES // (int(d_model) * _nbytes(dt))
    return int(min(1 << 20, max(1 << 10, 1 << max(0, int(rows).bit_length() - 1))))


def _digest_of(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _head_digest(rows: torch.Tensor) -> dict:
    """The manifest's ``head``: ``{"rows": n, "sha256": ...}`` of ``rows`` ``[n, d_model]`` (storage dtype): SHA-256 of
    the dtype's name, the shape and the bytes (its own format, so that it never changes with :mod:`atomsnb.io`'s)."""
    x = rows.detach().contiguous().cpu()
    h = hashlib.sha256(f"{str(x.dtype).removeprefix('torch.')}|{tuple(x.shape)}|".encode())
    h.update(x.reshape(-1).view(torch.uint8).numpy().tobytes())
    return {"rows": int(x.shape[0]), "sha256": h.hexdigest()}


def _rng(seed: int, *parts: int) -> torch.Generator:
    """A generator seeded by a hash of ``(seed, *parts)``: independent streams per epoch and per fill."""
    h = hashlib.sha256(repr((int(seed),) + tuple(int(p) for p in parts)).encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(h[:8], "little") & ((1 << 63) - 1))


@contextlib.contextmanager
def _lock(directory: Path):
    """Exclusive advisory lock on ``directory/.lock`` (one writer per store, also across processes)."""
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / ".lock").open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _remove_orphans(directory: Path) -> None:
    """Remove temporary files that a killed writer left: ``.NAME.XXXX.tmp`` (:func:`atomsnb.io.atomic_write`) and
    ``.tmpXXXX`` (safetensors' own temporary file while it serialises). Called with the store's lock held."""
    for pattern in (".*.tmp", ".tmp*"):
        for p in directory.glob(pattern):
            with contextlib.suppress(FileNotFoundError):
                if p.is_file():
                    p.unlink()


# ---------------------------------------------------------------------------------------------------------------------
# Sources: what the shuffled stream reads from
# ---------------------------------------------------------------------------------------------------------------------
class _Fill:
    """Rows of one mixing-buffer fill, addressed by their position in the fill (``0..size-1``)."""

    def __init__(self, size: int, take):
        self.size = size
        self.take = take  # LongTensor [k] of positions -> Tensor [k, d_model]


class MemorySource:
    """An in-memory ``[n_tokens, d_model]`` tensor as a source of :class:`ShuffledBatches` (no copy is made).

    Args:
        data: ``[n_tokens, d_model]`` floating tensor (any float dtype, CPU).
        block_tokens: rows per block of the shuffle; give the ``shard_tokens`` of a store to obtain exactly the
            batches the store would give (default :func:`default_shard_tokens` at float32).

    Raises:
        ValueError: ``data`` not 2-D, not floating, empty; ``block_tokens < 1``.
    """

    def __init__(self, data: torch.Tensor, *, block_tokens: int | None = None):
        data = torch.as_tensor(data)
        if data.dim() != 2 or not data.is_floating_point():
            raise ValueError(f"activations must be a floating tensor [n_tokens, d_model]; got shape {tuple(data.shape)} "
                             f"and dtype {data.dtype}")
        if data.shape[0] < 1 or data.shape[1] < 1:
            raise ValueError(f"activations are empty (shape {tuple(data.shape)}); need at least one token and one dimension")
        self.data = data
        self.n_tokens, self.d_model = int(data.shape[0]), int(data.shape[1])
        self.dtype = data.dtype
        self.block_tokens = int(block_tokens) if block_tokens is not None else default_shard_tokens(self.d_model, "float32")
        if self.block_tokens < 1:
            raise ValueError(f"block_tokens must be >= 1; got {block_tokens}")

    def read_fill(self, ranges: Sequence[tuple[int, int]]) -> _Fill:
        """The rows of ``ranges`` (concatenated in order) as a lazy fill: rows are gathered only when taken."""
        gidx = torch.cat([torch.arange(a, b) for a, b in ranges])
        return _Fill(int(gidx.numel()), lambda idx: self.data[gidx[idx]])

    def read(self, start: int, stop: int) -> torch.Tensor:
        """Rows ``[start, stop)`` (a view)."""
        return self.data[start:stop]

    def fingerprint(self) -> str:
        """SHA-256 of the tensor's dtype, shape and bytes (:func:`atomsnb.io.tensor_digest`): one full pass."""
        return tensor_digest({"acts": self.data})

    def __repr__(self) -> str:
        return f"MemorySource(n_tokens={self.n_tokens}, d_model={self.d_model}, dtype={self.dtype})"


class ShuffledBatches:
    """A seeded, deterministic stream of shuffled batches ``[batch_size, d_model]`` from a source (paper §5-6).

    Epoch ``e`` cuts the prefix ``[0, n_tokens)`` of the source into blocks of ``block_tokens`` rows (a store's
    shards), permutes the blocks with a generator seeded by ``(seed, e)``, groups them ``buffer_tokens //
    block_tokens`` at a time into fills of the mixing buffer, permutes the rows of each fill (seed ``(seed, e,
    fill)``) and serves them ``batch_size`` at a time; a batch may span two fills. The last
    ``n_tokens mod batch_size`` rows of an epoch's order are dropped, so every epoch has
    ``n_tokens // batch_size`` batches and every row appears at most once per epoch. When the buffer holds the whole
    prefix an epoch is a uniform random permutation.

    The stream is a pure function of ``(source, n_tokens, batch_size, seed, buffer_tokens, block_tokens)`` and the
    position (batches served): :meth:`iter_from` resumes at any position by reading one fill. Memory:
    one fill (``<= buffer_tokens + block_tokens`` rows in the source dtype, none for a :class:`MemorySource`)
    plus one block being read plus a batch (:func:`stream_memory_bytes`).

    Args:
        source: a :class:`MemorySource` or :class:`ActivationStore`.
        batch_size: rows per batch, ``1 <= batch_size <= n_tokens``.
        n_tokens: prefix of the source to use (default: all of it).
        seed: the stream's seed.
        buffer_tokens: mixing-buffer size in rows (>= 1; rounded to whole blocks, at least one block).
        block_tokens: rows per block (default: the source's, i.e. a store's ``shard_tokens``).

    Raises:
        ValueError: a size out of range (the message names it and the allowed range).
    """

    def __init__(self, source, batch_size: int, *, n_tokens: int | None = None, seed: int = 0,
                 buffer_tokens: int = DEFAULT_BUFFER_TOKENS, block_tokens: int | None = None):
        avail = int(source.n_tokens)
        P = avail if n_tokens is None else int(n_tokens)
        if not 1 <= P <= avail:
            raise ValueError(f"n_tokens={n_tokens} is out of range: the source holds {avail} activations (allowed 1..{avail})")
        if not 1 <= int(batch_size) <= P:
            raise ValueError(f"batch_size={batch_size} is out of range: allowed 1..n_tokens={P} (the training activations)")
        if int(buffer_tokens) < 1:
            raise ValueError(f"buffer_tokens must be >= 1; got {buffer_tokens}")
        K = int(block_tokens) if block_tokens is not None else int(source.block_tokens)
        if K < 1:
            raise ValueError(f"block_tokens must be >= 1; got {block_tokens}")
        self.source, self.n_tokens, self.batch_size, self.seed = source, P, int(batch_size), int(seed)
        self.buffer_tokens, self.block_tokens = int(buffer_tokens), K
        self.blocks = [(s, min(s + K, P)) for s in range(0, P, K)]
        self.blocks_per_fill = max(1, self.buffer_tokens // K)
        self.batches_per_epoch = P // self.batch_size
        self.d_model = int(source.d_model)

    def epoch_plan(self, epoch: int) -> list[list[tuple[int, int]]]:
        """The fills of epoch ``epoch``: lists of ``(start, stop)`` row ranges, in reading order."""
        order = torch.randperm(len(self.blocks), generator=_rng(self.seed, epoch, -1)).tolist()
        blocks = [self.blocks[i] for i in order]
        return [blocks[i:i + self.blocks_per_fill] for i in range(0, len(blocks), self.blocks_per_fill)]

    def _fill_rows(self, epoch: int, f: int, ranges) -> tuple[_Fill, torch.Tensor]:
        fill = self.source.read_fill(ranges)
        return fill, torch.randperm(fill.size, generator=_rng(self.seed, epoch, f))

    def iter_from(self, position: int = 0) -> Iterator[torch.Tensor]:
        """Batches from ``position`` (batches already served) on, without end (epochs follow one another).

        Yields:
            ``[batch_size, d_model]`` tensors in the source's dtype, on the CPU.
        """
        if position < 0:
            raise ValueError(f"position must be >= 0; got {position}")
        B = self.batch_size
        epoch, b = divmod(int(position), self.batches_per_epoch)
        while True:
            plan = self.epoch_plan(epoch)
            sizes = [sum(s1 - s0 for s0, s1 in fill) for fill in plan]
            offset = b * B  # row offset within the epoch's order
            f = 0
            while f < len(plan) and offset >= sizes[f]:
                offset -= sizes[f]
                f += 1
            carry: list[torch.Tensor] = []
            need = B
            served = b
            while served < self.batches_per_epoch:
                fill, perm = self._fill_rows(epoch, f, plan[f])
                pos = offset
                offset = 0
                while pos < fill.size and served < self.batches_per_epoch:
                    take = min(need, fill.size - pos)
                    carry.append(fill.take(perm[pos:pos + take]))
                    pos += take
                    need -= take
                    if need == 0:
                        yield carry[0] if len(carry) == 1 else torch.cat(carry)
                        carry, need = [], B
                        served += 1
                del fill
                f += 1
            epoch, b = epoch + 1, 0

    def __iter__(self) -> Iterator[torch.Tensor]:
        return self.iter_from(0)


# ---------------------------------------------------------------------------------------------------------------------
# The store
# ---------------------------------------------------------------------------------------------------------------------
class ActivationStore:
    """A store of activations ``[n_tokens, d_model]`` on disk (see the module docstring for the layout).

    Open an existing store with ``ActivationStore(path)``; make one with :func:`write_store` (from a tensor or
    batches) or :func:`collect_store` (from a model's forward passes).

    Args:
        path: the store's directory.
        verify: check every shard's SHA-256 when it is read (a full hash of the shard, a few hundred MB/s);
            ``False`` checks only its shape and dtype (for paper-scale streams; run :meth:`verify` once instead).

    Attributes:
        path, key (dict), d_model, dtype (torch dtype), dtype_name, shard_tokens, n_tokens (rows written),
        shards (list of ``{"file", "start", "stop", "checksum"}``), block_tokens (= shard_tokens),
        head (``{"rows", "sha256"}`` of the first rows, see :data:`HEAD_ROWS`; ``None`` in older stores).

    Raises:
        FileNotFoundError: no manifest in ``path``.
        atomsnb.io.CacheCorruptError: a manifest that cannot be read, is not JSON, is not a store manifest or is
            inconsistent (the message names the file and says to delete the store's directory).
    """

    def __init__(self, path: str | os.PathLike, *, verify: bool = True):
        self.path = Path(path)
        self.verify_reads = bool(verify)
        man_path = self.path / MANIFEST
        if not man_path.is_file():
            raise FileNotFoundError(f"no activation store at {str(self.path)!r} (no {MANIFEST})")
        fix = f"delete the directory {str(self.path)!r} to recollect the store (or write it again)"
        try:
            man = load_json(man_path)
        except (CacheCorruptError, OSError) as exc:  # not UTF-8 JSON (load_json's CacheCorruptError), unreadable
            detail = f"not UTF-8 JSON: {exc.__cause__ or exc}" if isinstance(exc, CacheCorruptError) else \
                f"{type(exc).__name__}: {exc.strerror or exc}"
            raise CacheCorruptError(f"{man_path} is not a readable activation-store manifest ({detail}); {fix}") from exc
        try:
            if not isinstance(man, dict):
                raise TypeError(f"a JSON {type(man).__name__}, not an object")
            if man.get("format") != FORMAT or man.get("version") != FORMAT_VERSION:
                raise ValueError(f"format {man.get('format')!r} version {man.get('version')!r}, expected {FORMAT!r} "
                                 f"version {FORMAT_VERSION}")
            for field in ("key", "info"):
                if not isinstance(man.get(field, {}), dict):
                    raise TypeError(f"{field} is {man[field]!r}, not an object")
            self.key = dict(man["key"])
            self.info = dict(man.get("info", {}))
            self.d_model = _manifest_int("d_model", man["d_model"], 1)
            self.dtype_name, self.dtype = _resolve_store_dtype(man["dtype"])
            self.shard_tokens = _manifest_int("shard_tokens", man["shard_tokens"], 1)
            if not isinstance(man["shards"], list) or not all(isinstance(e, dict) for e in man["shards"]):
                raise ValueError(f"shards must be a list of objects; got {man['shards']!r:.200}")
            self.shards = [dict(e) for e in man["shards"]]
            pos = 0
            for i, e in enumerate(self.shards):
                start, stop = (_manifest_int(f"shard {i}'s {k}", e[k], 0) for k in ("start", "stop"))
                if e["file"] != _SHARD.format(i) or start != pos or not 0 < stop - start <= self.shard_tokens:
                    raise ValueError(f"shard entry {i} {e} is out of sequence")
                if i < len(self.shards) - 1 and stop - start != self.shard_tokens:
                    raise ValueError(f"shard {i} is partial but not the last one")
                if not isinstance(e.get("checksum"), dict) or not e["checksum"]:
                    raise ValueError(f"shard {i} has no checksum")
                pos = stop
            if man.get("key_digest") != _digest_of(self.key):
                raise ValueError("the key digest does not match the key")
            self.head = man.get("head")  # absent in stores written before it existed
            if self.head is not None:
                if not isinstance(self.head, dict) or set(self.head) != {"rows", "sha256"} \
                        or not re.fullmatch(r"[0-9a-f]{64}", str(self.head["sha256"])):
                    raise ValueError(f"head must be {{'rows': n, 'sha256': 64 hex digits}}; got {self.head!r}")
                if _manifest_int("head rows", self.head["rows"], 1) > min(pos, self.shard_tokens):
                    raise ValueError(f"head rows {self.head['rows']} exceed the first shard's {min(pos, self.shard_tokens)}")
        except (KeyError, TypeError, ValueError) as exc:
            what = f"no {exc}" if isinstance(exc, KeyError) else str(exc)
            raise CacheCorruptError(f"{man_path} is not a valid activation-store manifest ({what}); {fix}") from exc
        self.n_tokens = pos
        self.block_tokens = self.shard_tokens

    # ------------------------------------------------------------------ reading
    def _load_shard(self, i: int) -> torch.Tensor:
        s = self.shards[i]
        path = self.path / s["file"]
        if self.verify_reads:
            # the manifest's digest must be the one the file carries, and load_tensors checks the bytes against it
            try:
                with safe_open(str(path), framework="pt") as f:
                    carried = dict(f.metadata() or {})
            except Exception as exc:  # noqa: BLE001 - any unreadable file is a damaged store
                raise CacheCorruptError(f"{path} is unreadable ({exc}); delete the store to recompute") from exc
            if carried != s["checksum"]:
                raise CacheCorruptError(f"{path} is not the shard whose SHA-256 {self.path / MANIFEST} records; delete "
                                        "the store to recompute")
            tensors, _ = load_tensors(path)
        else:
            try:
                tensors = load_file(str(path))
            except Exception as exc:  # noqa: BLE001 - any unreadable file is a damaged store
                raise CacheCorruptError(f"{path} is unreadable ({exc}); delete the store to recompute") from exc
        x = tensors.get("acts")
        rows = s["stop"] - s["start"]
        if x is None or tuple(x.shape) != (rows, self.d_model) or x.dtype != self.dtype:
            raise CacheCorruptError(f"{path} holds {None if x is None else (tuple(x.shape), x.dtype)}, expected "
                                    f"({rows}, {self.d_model}) {self.dtype}; delete the store to recompute")
        return x

    def _check_range(self, start: int, stop: int) -> None:
        if not 0 <= start <= stop <= self.n_tokens:
            raise ValueError(f"rows [{start}, {stop}) are out of range: the store holds {self.n_tokens} activations")

    def read(self, start: int, stop: int) -> torch.Tensor:
        """Rows ``[start, stop)`` as one ``[stop - start, d_model]`` tensor in the storage dtype (reads whole shards)."""
        self._check_range(start, stop)
        return self.read_fill([(start, stop)]).take(torch.arange(stop - start))

    def read_fill(self, ranges: Sequence[tuple[int, int]]) -> _Fill:
        """Read row ranges into one buffer (each shard is loaded once and freed); used by :class:`ShuffledBatches`."""
        total = sum(b - a for a, b in ranges)
        buf = torch.empty(total, self.d_model, dtype=self.dtype)
        by_shard: dict[int, list[tuple[int, int, int]]] = {}
        at = 0
        for a, b in ranges:
            self._check_range(a, b)
            while a < b:
                i = a // self.shard_tokens
                e = min(b, (i + 1) * self.shard_tokens)
                by_shard.setdefault(i, []).append((a, e, at))
                at += e - a
                a = e
        for i in sorted(by_shard):
            x = self._load_shard(i)
            base = self.shards[i]["start"]
            for a, e, dst in by_shard[i]:
                buf[dst:dst + e - a] = x[a - base:e - base]
            del x
        return _Fill(total, lambda idx: buf[idx])

    def iter_chunks(self, n_tokens: int | None = None) -> Iterator[torch.Tensor]:
        """The first ``n_tokens`` rows (default all) in order, one shard at a time (``[rows, d_model]``, storage dtype).

        Raises:
            ValueError: ``n_tokens`` outside ``1..self.n_tokens``.
        """
        n = self.n_tokens if n_tokens is None else int(n_tokens)
        if not 1 <= n <= self.n_tokens:
            raise ValueError(f"n_tokens={n_tokens} is out of range: the store holds {self.n_tokens} activations "
                             f"(allowed 1..{self.n_tokens})")
        for i, s in enumerate(self.shards):
            if s["start"] >= n:
                break
            x = self._load_shard(i)
            yield x[: n - s["start"]] if s["stop"] > n else x

    def batches(self, batch_size: int, *, n_tokens: int | None = None, seed: int = 0,
                buffer_tokens: int = DEFAULT_BUFFER_TOKENS, position: int = 0) -> Iterator[torch.Tensor]:
        """Shuffled batches from the first ``n_tokens`` rows (see :class:`ShuffledBatches`), from ``position`` on."""
        return ShuffledBatches(self, batch_size, n_tokens=n_tokens, seed=seed, buffer_tokens=buffer_tokens).iter_from(position)

    def verify(self) -> None:
        """Read every shard and check its SHA-256 against the manifest.

        Raises:
            atomsnb.io.CacheCorruptError: naming the first damaged shard.
        """
        keep, self.verify_reads = self.verify_reads, True
        try:
            for i in range(len(self.shards)):
                self._load_shard(i)
        finally:
            self.verify_reads = keep

    def fingerprint(self) -> str:
        """What determines the store's content: the digest of its key (its rows are a prefix-stable function of it)."""
        return _digest_of({"key": self.key, "dtype": self.dtype_name, "d_model": self.d_model})

    def __len__(self) -> int:
        return self.n_tokens

    def __repr__(self) -> str:
        return (f"ActivationStore({str(self.path)!r}, n_tokens={self.n_tokens}, d_model={self.d_model}, "
                f"dtype={self.dtype_name}, shards={len(self.shards)})")


# ---------------------------------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------------------------------
def _all_finite(x: torch.Tensor) -> bool:
    """Whether every entry is finite: min and max propagate NaN and +-inf (one fast reduction, no mask)."""
    lo, hi = torch.aminmax(x)
    return math.isfinite(float(lo)) and math.isfinite(float(hi))


class _Writer:
    """Appends rows to a store, shard by shard; the manifest follows every written shard (at most every
    ``ceil(n_shards / 256)``-th one for very large stores, so that rewriting it stays cheap; a shard written but not
    yet in the manifest is recomputed after a kill). A full shard is hashed and written by a background thread while
    the caller goes on (at most one shard in flight, recorded in order), so writing overlaps the forward passes."""

    def __init__(self, path: Path, key: Mapping, d_model: int, dtype: str | torch.dtype, shard_tokens: int | None,
                 info: Mapping | None = None, name: str = "activations"):
        self.path = Path(path)
        self.dtype_name, self.dtype = _resolve_store_dtype(dtype)
        self.name = name
        existing = None
        if (self.path / MANIFEST).is_file():
            try:
                existing = ActivationStore(self.path, verify=False)
            except CacheCorruptError as exc:
                print(f"[atomsnb] {exc}; rewriting the store")
        if existing is not None:
            diff = [k for k in sorted(set(existing.key) | set(key)) if existing.key.get(k) != key.get(k)]
            if diff or existing.d_model != d_model or existing.dtype_name != self.dtype_name:
                what = ", ".join(f"{k}: {existing.key.get(k)!r} (on disk) vs {key.get(k)!r}" for k in diff) or \
                    f"d_model/dtype {existing.d_model}/{existing.dtype_name} (on disk) vs {d_model}/{self.dtype_name}"
                raise StoreMismatchError(f"{self.path} holds another activation store ({what}); use another directory "
                                         "or delete it")
            if shard_tokens is not None and int(shard_tokens) != existing.shard_tokens:
                raise StoreMismatchError(f"{self.path} was written with shard_tokens={existing.shard_tokens}; got "
                                         f"shard_tokens={shard_tokens} (leave it None to use the store's)")
            self.shard_tokens = existing.shard_tokens
            shards = existing.shards
            if shards and shards[-1]["stop"] - shards[-1]["start"] < self.shard_tokens:
                shards = shards[:-1]  # a partial last shard is rewritten as it grows
            # the head of the rows on disk (read from them, checked, for a store written before heads existed)
            self.stored_head = existing.head or _head_digest(
                ActivationStore(self.path).read(0, min(HEAD_ROWS, existing.shard_tokens, existing.n_tokens)))
        else:
            self.shard_tokens = int(shard_tokens) if shard_tokens is not None else default_shard_tokens(d_model, self.dtype)
            if self.shard_tokens < 1:
                raise ValueError(f"shard_tokens must be >= 1; got {shard_tokens}")
            shards = []
            self.stored_head = None
        self.key, self.d_model, self.info = dict(key), int(d_model), dict(info or {})
        self.shards = list(shards)
        self.head_rows = min(HEAD_ROWS, self.shard_tokens)
        # a head of fewer rows belongs to a store smaller than head_rows, rewritten from row 0: its head is computed anew
        short = self.stored_head is not None and self.stored_head["rows"] < self.head_rows and not self.shards
        self.head = None if short else self.stored_head
        self._head_parts: list[torch.Tensor] = []
        self.durable = self.shards[-1]["stop"] if self.shards else 0  # rows on disk in complete, recorded shards
        self.queued = self.durable  # rows in complete shards handed to the writing thread
        self.buf = torch.empty(self.shard_tokens, self.d_model, dtype=self.dtype)
        self.fill = 0
        self._since_manifest = 0
        self._pool = None
        self._pending = None

    @property
    def held(self) -> int:
        """Rows received so far: in complete shards (written or being written) and in the current buffer."""
        return self.queued + self.fill

    def _manifest(self) -> None:
        man = {"format": FORMAT, "version": FORMAT_VERSION, "key": self.key, "key_digest": _digest_of(self.key),
               "info": self.info, "d_model": self.d_model, "dtype": self.dtype_name, "shard_tokens": self.shard_tokens,
               "shards": self.shards}
        if self.head is not None:
            man["head"] = self.head
        save_json(self.path / MANIFEST, man)
        self._since_manifest = 0

    def add(self, rows: torch.Tensor, position: int) -> None:
        """Append ``rows`` (the store's rows ``[position, position + len(rows))``), writing every completed shard."""
        rows = rows.detach()
        if rows.dim() != 2 or rows.shape[1] != self.d_model:
            raise ValueError(f"{self.name} batch must be [n, d_model={self.d_model}]; got shape {tuple(rows.shape)}")
        if rows.numel() == 0:
            return
        if not _all_finite(rows):
            check_finite(rows, name=f"{self.name} rows {position}..{position + rows.shape[0]}")
        conv = rows.to(self.dtype)
        if self.dtype == torch.float16 and not _all_finite(conv):
            big = float(rows.abs().max())
            raise ValueError(f"{self.name} rows {position}..{position + rows.shape[0]} reach |x| = {big:.3g}, beyond "
                             "float16's range (65504): store them as dtype='bfloat16' or 'float32'")
        if self.head is None and position < self.head_rows:  # rows arrive in order, from row 0 for a new head
            self._head_parts.append(conv[: self.head_rows - position].clone())
            if sum(len(h) for h in self._head_parts) >= self.head_rows:
                self.head, self._head_parts = _head_digest(torch.cat(self._head_parts)[: self.head_rows]), []
        at = 0
        while at < conv.shape[0]:
            take = min(self.shard_tokens - self.fill, conv.shape[0] - at)
            self.buf[self.fill:self.fill + take] = conv[at:at + take]
            self.fill += take
            at += take
            if self.fill == self.shard_tokens:
                self._write_shard(final=False)

    @staticmethod
    def _save(path: Path, x: torch.Tensor) -> dict:
        """Write one shard (:func:`atomsnb.io.save_tensors`: atomic, SHA-256 in its header) and return its header
        metadata, i.e. the checksum it carries, for the manifest (read back from the header: no second hash)."""
        save_tensors(path, {"acts": x})
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})

    def _wait(self, final: bool = False) -> None:
        """Record the shard in flight once written (its exception, if any, is raised here)."""
        if self._pending is None:
            return
        future, entry = self._pending
        self._pending = None
        entry["checksum"] = future.result()
        self.shards.append(entry)
        self.durable = entry["stop"]
        self._since_manifest += 1
        if final or self._since_manifest >= max(1, math.ceil(len(self.shards) / 256)):
            self._manifest()

    def _write_shard(self, final: bool) -> None:
        self._wait()
        i = len(self.shards)
        start = i * self.shard_tokens
        entry = {"file": _SHARD.format(i), "start": start, "stop": start + self.fill}
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="atomsnb-store")
        self._pending = (self._pool.submit(self._save, self.path / entry["file"], self.buf[: self.fill]), entry)
        self.queued = entry["stop"]
        self.buf = torch.empty(self.shard_tokens, self.d_model, dtype=self.dtype)  # the thread owns the old one
        self.fill = 0
        if final:
            self._wait(final=True)

    def close(self) -> None:
        """Wait for the shard in flight (recording it) and stop the writing thread."""
        try:
            self._wait()
        finally:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None

    def finish(self) -> ActivationStore:
        """Write the partial last shard (if any) and the manifest; return the store."""
        if self.head is None and self._head_parts:  # a store of fewer than head_rows rows
            self.head, self._head_parts = _head_digest(torch.cat(self._head_parts)), []
        if self.fill:
            self._write_shard(final=True)
        else:
            self._wait(final=True)
            self._manifest()
        self.close()
        return ActivationStore(self.path)


def _store_source(path: Path, data, key: Mapping | None) -> tuple[dict, Iterator[torch.Tensor], int]:
    """``(key, chunks, d_model)`` of :func:`write_store`'s ``data``: a tensor's key defaults to its SHA-256 and it is cut
    in chunks of 65,536 rows; an iterable's first batch gives ``d_model`` (and is put back in front)."""
    if isinstance(data, torch.Tensor):
        if data.dim() != 2 or data.shape[0] < 1 or data.shape[1] < 1 or not data.is_floating_point():
            raise ValueError(f"data must be a non-empty floating tensor [n_tokens, d_model]; got shape {tuple(data.shape)} "
                             f"dtype {data.dtype}")
        key = dict(key) if key is not None else {"source": "tensor", "sha256": tensor_digest({"acts": data})}
        chunks: Iterator[torch.Tensor] = (data[s:s + 65536] for s in range(0, data.shape[0], 65536))
        d_model = int(data.shape[1])
    else:
        if key is None and (path / MANIFEST).is_file():
            raise ValueError(f"{path} already holds a store: pass key= (what determines the batches) to resume it")
        key = dict(key) if key is not None else {"source": "batches"}
        it = iter(data)
        try:
            first = next(it)
        except StopIteration:
            raise ValueError("data yielded no batch: nothing to store") from None
        first = torch.as_tensor(first)
        if first.dim() != 2:
            raise ValueError(f"each batch must be [n, d_model]; got shape {tuple(first.shape)}")
        d_model = int(first.shape[1])
        chunks = itertools.chain([first], it)

    return key, chunks, d_model


def _check_head(path: Path, w: "_Writer", chunks: Iterator[torch.Tensor], key: dict, d_model: int) -> Iterator[torch.Tensor]:
    """Resuming: the data's first rows must be the store's (the key alone cannot tell two iterables apart). Reads the
    first :data:`HEAD_ROWS` rows of ``chunks`` and returns the chunks with them put back in front.

    Raises:
        StoreMismatchError: the data's first rows are not the store's, or there are fewer of them."""
    want = w.stored_head["rows"]
    peeked, got = [], 0
    for x in chunks:
        peeked.append(_checked_batch(x, d_model))
        got += len(peeked[-1])
        if got >= want:
            break
    rows = torch.cat(peeked)[:want].detach().to(w.dtype) if peeked else torch.empty(0, d_model, dtype=w.dtype)
    if len(rows) < want or _head_digest(rows) != w.stored_head:
        what = f"gave only {len(rows)} rows" if len(rows) < want else "has other rows"
        raise StoreMismatchError(
            f"{path} holds a store written from other data under the same key {key!r}: its first {want} rows "
            f"(SHA-256 {w.stored_head['sha256'][:16]}...) are not the data's, which {what}; delete the "
            "directory to write it from this data, or pass another key (or path)")
    return itertools.chain(peeked, chunks)


def _checked_batch(x, d_model: int) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.dim() != 2 or x.shape[1] != d_model:
        raise ValueError(f"each batch must be [n, d_model={d_model}]; got shape {tuple(x.shape)}")
    return x


def write_store(path: str | os.PathLike, data: torch.Tensor | Iterable[torch.Tensor], *, dtype: str = "float32",
                shard_tokens: int | None = None, key: Mapping | None = None, info: Mapping | None = None,
                progress: bool = False) -> ActivationStore:
    """Write activations to a store: from an in-memory tensor or from any iterable of ``[n, d_model]`` batches.

    Rows are appended in order and converted to ``dtype``; a store already at ``path`` with the same key is
    resumed (its rows are taken as the first rows of ``data``, which is then re-read from that row on): the
    iterable must therefore yield the same rows on every pass. The manifest records a digest of the first rows
    (:data:`HEAD_ROWS`), and a resumption whose data begins with other rows is refused before anything is written.

    Args:
        path: the store's directory (created).
        data: ``[n_tokens, d_model]`` tensor, or an iterable of ``[n_i, d_model]`` tensors.
        dtype: storage dtype, one of :data:`STORE_DTYPES`.
        shard_tokens: rows per shard (default :func:`default_shard_tokens`).
        key: what determines the content (JSON-serialisable). Default for a tensor: its SHA-256; required to
            resume a store written from an iterable.
        info: informational fields kept in the manifest (not part of the key).
        progress: show a tqdm bar.

    Returns:
        The :class:`ActivationStore`.

    Raises:
        ValueError: a batch that is not ``[n, d_model]``, NaN/inf rows, float16 overflow, an empty input, an
            unknown dtype, or a store at ``path`` written from an iterable without ``key``.
        NotADirectoryError: ``path`` is a file.
        StoreMismatchError: ``path`` holds a store with another key, d_model or dtype, or one with the same key whose
            first rows are not the first rows of ``data`` (delete the directory, or pass another key).
    """
    path = Path(path)
    _resolve_store_dtype(dtype)
    _check_shard_tokens(shard_tokens)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"store path {str(path)!r} is a file, not a directory; pass a directory")
    key, chunks, d_model = _store_source(path, data, key)

    with _lock(path):
        _remove_orphans(path)
        w = _Writer(path, key, d_model, dtype, shard_tokens, info)
        try:
            if w.stored_head is not None:
                chunks = _check_head(path, w, chunks, key, d_model)
            skip = w.durable  # rows already on disk: the data's first rows
            pos = 0
            for x in tqdm(chunks, desc=f"store {path.name}", disable=not progress or None, leave=False):
                x = _checked_batch(x, d_model)
                n = int(x.shape[0])
                if pos + n > skip:
                    w.add(x[max(0, skip - pos):], max(pos, skip))
                pos += n
            if pos == 0:
                raise ValueError("data holds no rows: nothing to store")
            if pos < skip:
                raise StoreMismatchError(f"{path} holds {skip} rows but data gave only {pos}: not the same data")
            return w.finish()
        finally:
            w.close()


# ---------------------------------------------------------------------------------------------------------------------
# Collecting from a model
# ---------------------------------------------------------------------------------------------------------------------
def _capture_code_version() -> str:
    """:func:`atomsnb.codeprint.code_fingerprint` (16 hex digits) of the capture code: the modules of the functions
    that turn text into stored rows and everything they import, plus the torch/transformers/safetensors versions."""
    return code_fingerprint(activations.capture_residual_stream, activations.token_windows, _collect,
                            _windows_in_memory, _windows_streaming).digest[:16]


_MODEL_FP_CACHE: "weakref.WeakKeyDictionary[torch.nn.Module, str]" = weakref.WeakKeyDictionary()


def _model_fingerprint(lm) -> str:
    """The weights fingerprint of a loaded model: ``LoadedModel.fingerprint`` when the loader provides one (the
    real-model issue adds it), else ``atomsnb.fingerprints.directory_fingerprint`` of a local directory when that
    module exists, else a SHA-256 of the parameters' bytes (exact; one pass over the weights, remembered per object)."""
    for attr in ("fingerprint", "weights_fingerprint"):
        fp = getattr(lm, attr, None)
        if fp:
            return str(fp)
    if lm.model in _MODEL_FP_CACHE:
        return _MODEL_FP_CACHE[lm.model]
    fp = None
    with contextlib.suppress(ImportError, AttributeError, OSError, ValueError, TypeError):
        if os.path.isdir(str(lm.path)):
            fp = "dir:" + str(fingerprints.directory_fingerprint(lm.path))
    if fp is None:
        h = hashlib.sha256()
        for name, p in sorted(lm.model.state_dict().items()):
            t = p.detach().contiguous().cpu().reshape(-1)
            h.update(f"{name}|{t.dtype}|{tuple(p.shape)}|".encode())
            if t.dtype == torch.bfloat16:
                t = t.view(torch.int16)
            h.update(t.numpy().tobytes())
        fp = "params:" + h.hexdigest()
    _MODEL_FP_CACHE[lm.model] = fp
    return fp


def collection_key(lm, config, layer: int, store_dtype: str, corpus, corpus_fingerprint: str | None = None) -> dict:
    """The key of the store of ``layer`` collected with ``config`` (an :class:`atomsnb.activations.ActivationConfig`):
    every input that determines its bytes. ``n_tokens`` is not part of it (stores grow; prefixes are stable).
    ``corpus_fingerprint``: ``corpus.fingerprint(config.split)`` if already computed (``"hub-stream"`` for ``hf:``)."""
    if corpus_fingerprint is None:
        corpus_fingerprint = "hub-stream" if corpus.source.startswith("hf:") else corpus.fingerprint(config.split)
    return {"kind": "residual_stream", "model": _model_fingerprint(lm), "layer": int(layer), "corpus": corpus.source,
            "corpus_fingerprint": corpus_fingerprint, "split": config.split,
            "seed": int(config.seed), "seq_len": int(config.seq_len), "drop_bos": bool(config.drop_bos),
            "forward_batch_size": int(config.batch_size), "model_dtype": str(lm.dtype).removeprefix("torch."),
            "device_type": torch.device(lm.device).type, "store_dtype": store_dtype, "capture_code": _capture_code_version()}


def _windows_in_memory(lm, corpus, config, n_windows: int) -> torch.Tensor:
    """Windows ``[n, seq_len]`` of an in-memory corpus, exactly as :func:`atomsnb.activations.token_windows` cuts
    them (its output is prefix-stable in ``n_tokens``), rounded up to whole forward batches when the corpus allows."""
    per_window = config.seq_len - (1 if config.drop_bos else 0)
    full = math.ceil(n_windows / config.batch_size) * config.batch_size
    for n in (full, n_windows):
        try:
            return token_windows(lm.tokenizer, corpus, config.split, n_tokens=n * per_window, seq_len=config.seq_len,
                                 seed=config.seed, drop_bos=config.drop_bos)
        except ValueError:
            if n == n_windows:
                raise
    raise AssertionError("unreachable")  # pragma: no cover


def _windows_streaming(lm, corpus, config, shuffle_docs: int = 10_000) -> Iterator[torch.Tensor]:
    """Windows ``[seq_len]`` of a hub corpus streamed with ``datasets`` (never downloaded whole).

    The documents of the split come in the dataset's order through a seeded shuffle buffer of ``shuffle_docs``
    documents (a global permutation would need every document first); tokenisation, EOS separators, BOS prefix and
    window cutting follow :func:`atomsnb.activations.token_windows`.
    """
    tok = lm.tokenizer
    bos = getattr(tok, "bos_token_id", None)
    sep = getattr(tok, "eos_token_id", None)
    body_len = config.seq_len - 1 if bos is not None else config.seq_len
    g = _rng(config.seed, -7)
    buf: list[str] = []

    def shuffled():
        for d in iter_hf_documents(corpus.source[3:], config.split):
            if len(buf) < shuffle_docs:
                buf.append(d.text)
                continue
            j = int(torch.randint(len(buf), (1,), generator=g))
            out, buf[j] = buf[j], d.text
            yield out
        for j in torch.randperm(len(buf), generator=g).tolist():
            yield buf[j]

    stream: list[int] = []
    batch: list[str] = []

    def cut():
        n_full = len(stream) // body_len
        if n_full:
            bodies = torch.tensor(stream[: n_full * body_len], dtype=torch.long).view(n_full, body_len)
            del stream[: n_full * body_len]
            if bos is not None:
                bodies = torch.cat([torch.full((n_full, 1), bos, dtype=torch.long), bodies], dim=1)
            yield from bodies

    for text in shuffled():
        batch.append(text)
        if len(batch) == 256:
            for ids in tok(batch, add_special_tokens=False)["input_ids"]:
                stream.extend(ids)
                if sep is not None:
                    stream.append(sep)
            batch = []
            yield from cut()
    if batch:
        for ids in tok(batch, add_special_tokens=False)["input_ids"]:
            stream.extend(ids)
            if sep is not None:
                stream.append(sep)
        yield from cut()


def _collect(lm, config, corpus, writers: dict[int, _Writer], n_tokens: int, progress: bool) -> None:
    """Forward passes on a fixed global grid of ``config.batch_size`` windows (rounded up to whole batches, so that a
    batch's composition never depends on ``n_tokens``), from the batch holding the first row that some layer still
    needs; each layer's rows go to its writer."""
    bs = int(config.batch_size)
    first = 1 if config.drop_bos else 0
    per_window = config.seq_len - first
    n_windows = math.ceil(n_tokens / per_window)
    n_batches = math.ceil(n_windows / bs)
    start_batch = (min(w.durable for w in writers.values()) // per_window) // bs
    if corpus.source.startswith("hf:"):
        def batches() -> Iterator[torch.Tensor]:
            cur: list[torch.Tensor] = []
            for i, w in enumerate(_windows_streaming(lm, corpus, config)):
                if i >= n_batches * bs:
                    break
                if i // bs >= start_batch:
                    cur.append(w)
                    if len(cur) == bs:
                        yield torch.stack(cur)
                        cur = []
            if cur:
                yield torch.stack(cur)
        src: Iterable[torch.Tensor] = batches()
    else:
        windows = _windows_in_memory(lm, corpus, config, n_windows)
        src = (windows[b * bs:(b + 1) * bs] for b in range(start_batch, n_batches))
    row = start_batch * bs * per_window
    bar = tqdm(src, total=n_batches - start_batch, desc=f"store {lm.name} layers {sorted(writers)}",
               disable=not progress or None, leave=False)
    for ids in bar:
        if row >= n_tokens:
            break
        rows = int(ids.shape[0]) * per_window
        hi = min(rows, n_tokens - row)
        need = [l for l, w in writers.items() if w.held < row + hi]
        if need:
            res = capture_residual_stream(lm, ids, need)
            for l in need:
                w = writers[l]
                lo = w.held - row  # rows of this batch that the layer already holds (>= 0)
                x = res[l][:, first:].reshape(-1, lm.d_model)
                w.add(x[lo:hi].float().cpu(), row + lo)
        row += rows
    short = [l for l, w in writers.items() if w.held < n_tokens]
    if short:
        raise ValueError(f"corpus {corpus.source!r} split {config.split!r} ran out before n_tokens={n_tokens} at "
                         f"seq_len={config.seq_len} (layers {short}); lower n_tokens or use a larger corpus")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[-40:] or "model"


def _model_label(lm) -> str:
    """The model's name as a store records it, never a machine's path: a registered name or hub id as given, the
    folder's own name for a model loaded from a local directory (its identity is the key's weights fingerprint)."""
    name = str(lm.name)
    local = os.path.isabs(name) or name.startswith((".", "~")) or os.path.isdir(os.path.expanduser(name))
    return (Path(str(lm.path)).name or Path(name).name or "model") if local else name


def collect_store(config, *, model=None, store_dtype: str = "float32", root: str | os.PathLike | None = None,
                  shard_tokens: int | None = None, progress: bool = True) -> dict[int, ActivationStore]:
    """Collect residual-stream activations of ``config.layers`` into one store per layer (one forward pass serves
    every layer), or extend / resume the stores already there.

    The store of a layer lives in ``root/<model>-L<layer>-<split>-<key digest>`` (default root
    ``$ATOMSNB_CACHE/stores``; ``<model>`` is the registered name or hub id, or the folder's name of a model loaded
    from a directory: never a path), keyed by :func:`collection_key`. It holds at least ``config.n_tokens`` rows when this
    returns; a store already holding that many is returned as is, a shorter one is extended, a killed collection
    is resumed at its first missing shard. Windows and layers follow :func:`atomsnb.activations.collect_activations`
    (in-memory corpora are cut by :func:`atomsnb.activations.token_windows`, so the first ``n`` rows equal the
    activations ``collect_activations`` returns for ``n_tokens = n`` up to the forward batch's round-off;
    ``hf:`` corpora are streamed with ``datasets``, see :func:`atomsnb.corpus.iter_hf_documents`).

    Args:
        config: an :class:`atomsnb.activations.ActivationConfig` (``model``, ``layers``, ``corpus``, ``split``,
            ``n_tokens``, ``seq_len``, ``batch_size``, ``seed``, ``drop_bos``, ``device``, ``dtype``).
        model: an already loaded :class:`atomsnb.models.LoadedModel` (default: loaded from ``config``); it must be
            the model ``config.model`` names, with ``config.dtype``, on ``config.device``.
        store_dtype: one of :data:`STORE_DTYPES`.
        root: directory of the stores (e.g. on a filesystem shared by Dask workers).
        shard_tokens: rows per shard of new stores (default :func:`default_shard_tokens`).
        progress: show a tqdm bar.

    Returns:
        ``{layer: ActivationStore}``.

    Raises:
        TypeError: ``config`` not an :class:`~atomsnb.activations.ActivationConfig`, ``model`` not a
            :class:`~atomsnb.models.LoadedModel`.
        ValueError: before any work, as :func:`atomsnb.activations.collect_activations` (the same checks): a
            ``model`` that is not the one ``config.model`` names (path, dtype, device), a layer out of range,
            ``seq_len`` above the model's maximum positions; an unknown store dtype, ``shard_tokens < 1``. During
            collection: NaN/inf activations, float16 overflow, a corpus too small for ``n_tokens``.
        NotADirectoryError: ``root`` is a file.
        ImportError: an ``hf:`` corpus without the ``hub`` extra.
    """
    _resolve_store_dtype(store_dtype)
    _check_shard_tokens(shard_tokens)
    if root is not None and Path(root).exists() and not Path(root).is_dir():
        raise NotADirectoryError(f"stores root {str(root)!r} is a file, not a directory; pass a directory")
    lm, layers = checked_request(config, model, "collect_store")
    corpus = Corpus(config.corpus)
    base = Path(root) if root is not None else cache_dir("stores")
    n = int(config.n_tokens)
    dirs, keys = {}, {}
    cfp = "hub-stream" if corpus.source.startswith("hf:") else corpus.fingerprint(config.split)
    label = _model_label(lm)
    for l in layers:
        keys[l] = collection_key(lm, config, l, store_dtype, corpus, cfp)
        dirs[l] = base / f"{_slug(label)}-L{l:03d}-{config.split}-{_digest_of(keys[l])[:16]}"
    out: dict[int, ActivationStore] = {}
    with contextlib.ExitStack() as locks:
        for l in layers:
            locks.enter_context(_lock(dirs[l]))
            _remove_orphans(dirs[l])
        writers = {}
        for l in layers:
            existing = None
            with contextlib.suppress(FileNotFoundError, CacheCorruptError):
                existing = ActivationStore(dirs[l])
            if existing is not None and existing.key == keys[l] and existing.dtype_name == store_dtype \
                    and existing.n_tokens >= n:
                out[l] = existing
                continue
            info = {"model_name": label, "model_fingerprint": _model_fingerprint(lm), "layer": l}  # no machine paths
            writers[l] = _Writer(dirs[l], keys[l], lm.d_model, store_dtype, shard_tokens, info,
                                 name=f"activations of layer {l}")
        try:
            if writers:
                _collect(lm, config, corpus, writers, n, progress)
                for l, w in writers.items():
                    out[l] = w.finish()
        finally:
            for w in writers.values():
                w.close()
    return {l: out[l] for l in layers}


# ---------------------------------------------------------------------------------------------------------------------
# Consumers
# ---------------------------------------------------------------------------------------------------------------------
def fit_aip_from_store(store, n_tokens: int | None = None, *, ridge: float = 0.0, pinv: bool = False,
                       min_tokens_per_dim: float | None = None, cache: bool = False) -> AIP:
    """Fit the AIP (paper §3, SPEC §1) on the first ``n_tokens`` rows of a store by streaming its shards through
    :meth:`atomsnb.aip.AIP.partial_fit` (float64 accumulation; memory one shard plus ``d_model^2``).

    Args:
        store: an :class:`ActivationStore` (or :class:`MemorySource`).
        n_tokens: prefix to use (default: the whole store).
        ridge, pinv, min_tokens_per_dim: as :class:`atomsnb.aip.AIP`.
        cache: keep the accumulated second moment in the store's directory (``aip-<n_tokens>-<options>.safetensors``,
            :meth:`atomsnb.aip.AIP.save`: atomic, checksummed), so that grid points sharing a store fit it once.
            A damaged file is reported and refitted.

    Returns:
        The fitted (finalised) :class:`~atomsnb.aip.AIP`.

    Raises:
        ValueError: ``n_tokens`` out of range; the AIP's own errors (too few tokens, singular second moment).
    """
    kw = {} if min_tokens_per_dim is None else {"min_tokens_per_dim": min_tokens_per_dim}
    n = int(store.n_tokens if n_tokens is None else n_tokens)
    if not 1 <= n <= store.n_tokens:
        raise ValueError(f"n_tokens={n_tokens} is out of range: the store holds {store.n_tokens} activations "
                         f"(allowed 1..{store.n_tokens})")
    cached = None
    if cache and isinstance(store, ActivationStore):
        opts = _digest_of([float(ridge), bool(pinv), min_tokens_per_dim])[:8]
        cached = store.path / f"aip-{n}-{opts}.safetensors"
        if cached.is_file():
            try:
                aip = AIP.load(cached)
                if aip.n_tokens == n and aip.d_model == store.d_model:
                    _ = aip.rank
                    return aip
                print(f"[atomsnb] {cached} holds an AIP of {aip.n_tokens} tokens, expected {n}; refitting")
            except CacheCorruptError as exc:
                print(f"[atomsnb] {exc}; refitting")
    aip = AIP(int(store.d_model), ridge=ridge, pinv=pinv, **kw)
    if isinstance(store, MemorySource):
        chunks: Iterable[torch.Tensor] = (store.read(s, min(s + 65536, n)) for s in range(0, n, 65536))
    else:
        chunks = store.iter_chunks(n)
    for x in chunks:
        aip.partial_fit(x)
    _ = aip.rank  # factorise now: errors surface here, not at the first use
    if cached is not None:
        aip.save(cached)
    return aip


def stream_memory_bytes(d_model: int, *, store_dtype: str = "float32", buffer_tokens: int = DEFAULT_BUFFER_TOKENS,
                        shard_tokens: int | None = None, batch_size: int = 4096) -> int:
    """Host bytes of a :class:`ShuffledBatches` over a store: one fill (``buffer_tokens`` rounded up to whole shards)
    plus one shard being read (its safetensors load and its checked copy) plus a batch, in the storage dtype."""
    _, dt = _resolve_store_dtype(store_dtype)
    K = shard_tokens or default_shard_tokens(d_model, store_dtype)
    fill = max(1, buffer_tokens // K) * K
    return int((fill + 2 * K + batch_size) * d_model * _nbytes(dt))
