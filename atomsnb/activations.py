"""Residual-stream activations ``[n_tokens, d_model]`` from any causal LM, through forward hooks.

Layer convention (paper §5 reports "layers 1-26" for Gemma2-2B's 26 blocks): layer ``l`` for
``1 <= l <= n_layers`` is the residual stream *after* decoder block ``l`` (the block's raw
output, before any final norm); layer ``0`` is the input to the first block (the embeddings,
as the model scales them). For ``0 <= l < n_layers`` this equals ``hidden_states[l]`` of
``output_hidden_states=True``; for ``l = n_layers`` it differs, because ``transformers``
returns the *final-norm* output there. Hooks stop the forward pass after the deepest
requested block, so early layers cost only what they compute.

Text comes from :class:`atomsnb.corpus.Corpus`: documents of one split are shuffled with the
seed, tokenised without special tokens, joined with EOS and cut into windows of ``seq_len`` tokens.
Every window begins the way the model's own tokenizer begins a text it encodes on its own
(:func:`atomsnb.architecture.tokenizer_prefix`, i.e. ``add_special_tokens=True``): Gemma's tokenizer puts
``<bos>`` first, so Gemma windows are ``<bos>`` + text; SmolLM2's adds nothing, so SmolLM2 windows start
with a text token; the docstring GPT-2's tokenizer adds ``<|endoftext|>`` as it was trained. Position 0
(the BOS, or whatever token comes first: the attention sink whose massive activations dominate second
moments in real LLMs, SPEC §1.1) is dropped by default (``drop_bos``), whatever token it holds.

Results are cached per layer as checksummed safetensors (:mod:`atomsnb.io`) under a key of the model's
*content* (:attr:`atomsnb.models.LoadedModel.fingerprint`: SHA-256 of its weights, config and tokenizer
files, never the folder's name), dtype, the window prefix, corpus split fingerprint, token count, window
length, seed, BOS handling and the capture code (:func:`atomsnb.codeprint.code_fingerprint` of this module's
import closure and the torch/transformers/safetensors versions). A model changed in memory after loading has the
fingerprint of its files: collect from it with ``cache=False``.
"""

from __future__ import annotations

import hashlib
import json
import math
import operator
import os
import warnings
from dataclasses import asdict, dataclass, field
from typing import Sequence

import torch
from tqdm import tqdm

from .aip import check_finite
from .codeprint import code_fingerprint
from .corpus import CORPUS_SPLITS, Corpus
from .io import CacheCorruptError, is_write_failure, load_tensors, save_tensors, tensor_digest
from .architecture import decoder_layers, tokenizer_prefix
from .models import LoadedModel, load_model, resolve_device, resolve_dtype, resolve_model_path
from .paths import cache_dir

__all__ = ["ActivationConfig", "Activations", "collect_activations", "token_windows",
           "capture_residual_stream", "next_token_loss", "checked_request"]


def _int_field(name: str, value, minimum: int, hint: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            if isinstance(value, bool):
                raise TypeError
            value = operator.index(value)
        except TypeError:
            raise TypeError(f"{name} must be an integer >= {minimum}{hint}; got {value!r} "
                            f"({type(value).__name__})") from None
    if value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}{hint}; got {value}")
    return int(value)


@dataclass(frozen=True)
class ActivationConfig:
    """What to collect: every field is a papermill parameter of the chapters."""

    model: str = "default"
    """Registered name, local directory or hub id (:func:`atomsnb.models.load_model`)."""
    layers: tuple[int, ...] | None = None
    """Residual-stream layers ``0..n_layers`` (see module docstring); ``None`` = ``1..n_layers``."""
    corpus: str = "docstrings"
    """Corpus source (:class:`atomsnb.corpus.Corpus`)."""
    split: str = "fit"
    """Corpus split: ``"fit"`` for estimating ``S`` / training dictionaries, ``"eval"`` for metrics."""
    n_tokens: int = 20_000
    """Number of activation vectors (tokens) per layer."""
    seq_len: int = 128
    """Window length in tokens, BOS included."""
    batch_size: int = 16
    """Windows per forward pass."""
    seed: int = 0
    """Seed for the order of documents."""
    drop_bos: bool = True
    """Drop position 0 of every window (the BOS token)."""
    device: str = "cpu"
    """``"cpu"``, ``"cuda"`` or ``"auto"``."""
    dtype: str = "float32"
    """Model dtype (activations are stored float32 regardless)."""

    def __post_init__(self):
        """Validate every field before any work starts (``TypeError`` / ``ValueError`` naming the field,
        the bad value and what is allowed); ``layers`` is normalised to a sorted tuple without duplicates."""
        if isinstance(self.model, os.PathLike):
            object.__setattr__(self, "model", os.fspath(self.model))
        if not isinstance(self.model, str) or not self.model.strip():
            raise TypeError(f"model must be a non-empty string (a registered name, a local directory or a hub id); "
                            f"got {self.model!r}")
        if self.layers is not None:
            layers = (self.layers,) if isinstance(self.layers, int) and not isinstance(self.layers, bool) else self.layers
            try:
                items = list(layers)
            except TypeError:
                raise TypeError(f"layers must be None or a sequence of layer indices >= 0; got {self.layers!r}") from None
            if not items:
                raise ValueError("layers must be None (all layers 1..n_layers) or a non-empty sequence of layer "
                                 "indices >= 0; got an empty sequence")
            clean = tuple(sorted({_int_field("each layer", l, 0, " (0 = embeddings, l = after block l)") for l in items}))
            object.__setattr__(self, "layers", clean)
        Corpus(self.corpus)  # validates the source string (and a file: path) without reading anything
        if self.split not in CORPUS_SPLITS:
            raise ValueError(f"split must be one of {CORPUS_SPLITS}; got {self.split!r}")
        object.__setattr__(self, "n_tokens", _int_field("n_tokens", self.n_tokens, 1))
        object.__setattr__(self, "seq_len", _int_field("seq_len", self.seq_len, 2, " (position 0 is dropped)"))
        object.__setattr__(self, "batch_size", _int_field("batch_size", self.batch_size, 1))
        object.__setattr__(self, "seed", _int_field("seed", self.seed, 0))
        if not isinstance(self.drop_bos, bool):
            raise TypeError(f"drop_bos must be True or False; got {self.drop_bos!r}")
        if not isinstance(self.device, str):
            raise TypeError(f"device must be a string ('cpu', 'cuda', 'cuda:N', 'mps' or 'auto'); got {self.device!r}")
        resolve_device(self.device)
        if not isinstance(self.dtype, str):
            raise TypeError(f"dtype must be a string ('float32', 'bfloat16', 'float16'); got {self.dtype!r}")
        resolve_dtype(self.dtype)


@dataclass
class Activations:
    """Collected activations and the tokens they belong to.

    Attributes:
        acts: layer -> ``[n_tokens, d_model]`` float32.
        token_ids: ``[n_tokens]`` int64, the token at each activation.
        window: ``[n_tokens]`` int64, index of the window (context) each token comes from.
        position: ``[n_tokens]`` int64, position of the token in its window.
        windows: ``[n_windows, seq_len]`` int64, the token ids of every window used (for contexts).
        config: the :class:`ActivationConfig`.
    """

    acts: dict[int, torch.Tensor]
    token_ids: torch.Tensor
    window: torch.Tensor
    position: torch.Tensor
    windows: torch.Tensor
    config: ActivationConfig
    meta: dict = field(default_factory=dict)

    def __getitem__(self, layer: int) -> torch.Tensor:
        return self.acts[layer]


def token_windows(tokenizer, corpus: Corpus, split: str, *, n_tokens: int, seq_len: int, seed: int,
                  drop_bos: bool = True) -> torch.Tensor:
    """Windows ``[n_windows, seq_len]`` of token ids holding at least ``n_tokens`` usable tokens.

    Each window is the tokenizer's own prefix (:func:`atomsnb.architecture.tokenizer_prefix`: ``[<bos>]`` for Gemma,
    nothing for SmolLM2) followed by ``seq_len - len(prefix)`` tokens of the stream of documents (tokenised
    without special tokens, joined with EOS). Documents of ``split`` are shuffled with ``seed`` and tokenised
    only until enough tokens are available, so a large corpus is not tokenised in full. Usable tokens per
    window: ``seq_len - 1`` with ``drop_bos`` (position 0 dropped), else ``seq_len``.

    Raises:
        ValueError: ``seq_len < 2``, ``n_tokens < 1``, a prefix as long as the window, or the split has fewer
            tokens than asked (the message gives both numbers).
    """
    seq_len = _int_field("seq_len", seq_len, 2, " (position 0 is dropped)")
    n_tokens = _int_field("n_tokens", n_tokens, 1)
    prefix = tokenizer_prefix(tokenizer)
    sep = getattr(tokenizer, "eos_token_id", None)
    body_len = seq_len - len(prefix)
    if body_len < 1:
        raise ValueError(f"seq_len={seq_len} leaves no room for text after the tokenizer's {len(prefix)} prefix "
                         f"token(s); use seq_len >= {len(prefix) + 1}")
    per_window = seq_len - 1 if drop_bos else seq_len
    n_windows = math.ceil(n_tokens / per_window)
    docs = corpus.texts(split)
    order = torch.randperm(len(docs), generator=torch.Generator().manual_seed(seed)).tolist()
    stream: list[int] = []
    need = n_windows * body_len
    for start in range(0, len(order), 256):
        batch = [docs[i] for i in order[start:start + 256]]
        for ids in tokenizer(batch, add_special_tokens=False)["input_ids"]:
            stream.extend(ids)
            if sep is not None:
                stream.append(sep)
        if len(stream) >= need:
            break
    if len(stream) < need:
        available = (len(stream) // body_len) * per_window
        raise ValueError(f"corpus {corpus.source!r} split {split!r} has about {available} usable tokens at "
                         f"seq_len={seq_len}; asked for n_tokens={n_tokens}. Lower n_tokens or use a larger corpus.")
    body = torch.tensor(stream[:need], dtype=torch.long).view(n_windows, body_len)
    if prefix:
        body = torch.cat([torch.tensor(prefix, dtype=torch.long).expand(n_windows, len(prefix)), body], dim=1)
    return body


class _StopForward(Exception):
    pass


def capture_residual_stream(lm: LoadedModel, input_ids: torch.Tensor, layers: Sequence[int]) -> dict[int, torch.Tensor]:
    """Run one forward pass and return the residual stream at ``layers``, ``layer -> [batch, seq, d_model]``.

    Hooks: a forward pre-hook on block 0 for layer 0, forward hooks on block ``l-1`` for layer
    ``l >= 1``; the pass stops after the deepest requested block.

    Raises:
        ValueError: a layer outside ``0..n_layers``.
    """
    blocks = decoder_layers(lm.model)
    bad = [l for l in layers if not 0 <= l <= len(blocks)]
    if bad:
        raise ValueError(f"layer(s) {bad} out of range for {lm.name!r}: residual-stream layers are 0..{len(blocks)} "
                         f"(0 = embeddings, l = after block l)")
    out: dict[int, torch.Tensor] = {}
    deepest = max(layers)
    handles = []

    def pre_hook(module, args, kwargs):
        out[0] = (args[0] if args else kwargs["hidden_states"]).detach()
        if deepest == 0:
            raise _StopForward

    def make_hook(layer: int):
        def hook(module, args, output):
            out[layer] = (output[0] if isinstance(output, tuple) else output).detach()
            if layer == deepest:
                raise _StopForward
        return hook

    try:
        if 0 in layers:
            handles.append(blocks[0].register_forward_pre_hook(pre_hook, with_kwargs=True))
        for l in sorted(set(layers) - {0}):
            handles.append(blocks[l - 1].register_forward_hook(make_hook(l)))
        with torch.no_grad():
            try:
                lm.model(input_ids=input_ids.to(lm.device), use_cache=False)
            except _StopForward:
                pass
    finally:
        for h in handles:
            h.remove()
    return out


def _model_fingerprint(lm: LoadedModel) -> str:
    """The loaded model's content fingerprint; for a hand-built :class:`LoadedModel` without one, a digest of its
    tensors and config (slow, but never the folder's name)."""
    if not lm.fingerprint:
        cfg = lm.model.config.to_dict()
        for k in ("_name_or_path", "transformers_version"):
            cfg.pop(k, None)
        h = hashlib.sha256(tensor_digest(dict(lm.model.state_dict())).encode())
        h.update(json.dumps(cfg, sort_keys=True, default=str).encode())
        lm.fingerprint = "tensors-" + h.hexdigest()
    return lm.fingerprint


def _capture_code() -> str:
    """The fingerprint (16 hex digits) of the code that computes a cached entry: the modules
    :func:`collect_activations` imports, transitively, and the library versions (:mod:`atomsnb.codeprint`)."""
    return code_fingerprint(collect_activations).digest[:16]


def _cache_key(lm: LoadedModel, cfg: ActivationConfig, corpus: Corpus, prefix: list[int]) -> str:
    blob = json.dumps({"capture_code": _capture_code(), "model": _model_fingerprint(lm), "dtype": str(lm.dtype),
                       "prefix": prefix, "corpus": corpus.source, "fingerprint": corpus.fingerprint(cfg.split),
                       "split": cfg.split, "n_tokens": cfg.n_tokens, "seq_len": cfg.seq_len, "seed": cfg.seed,
                       "drop_bos": cfg.drop_bos}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _check_model_matches(lm: LoadedModel, config: ActivationConfig, caller: str = "collect_activations") -> None:
    """Refuse a loaded model that is not the one ``config`` names (path, dtype, device); ``caller`` names the
    function the model was passed to, in the message."""
    if not isinstance(lm, LoadedModel):
        raise TypeError(f"model must be a LoadedModel from atomsnb.models.load_model (or None); got "
                        f"{type(lm).__name__}")
    expected = resolve_model_path(config.model, verbose=False)
    same = (os.path.realpath(expected) == os.path.realpath(lm.path)) if os.path.isdir(expected) else expected == lm.path
    if not same:
        raise ValueError(f"the model passed to {caller} was loaded from {lm.path!r} (name {lm.name!r}), but "
                         f"config.model={config.model!r} resolves to {expected!r}; pass the model config.model names, "
                         "or model=None to load it")
    if lm.dtype != resolve_dtype(config.dtype):
        raise ValueError(f"the model passed to {caller} has dtype {lm.dtype}, but config.dtype="
                         f"{config.dtype!r}; load it with dtype={config.dtype!r} or change the config")
    dev = resolve_device(config.device)
    if lm.device.type != dev.type or (dev.index is not None and (lm.device.index or 0) != dev.index):
        raise ValueError(f"the model passed to {caller} is on device {str(lm.device)!r}, but config.device="
                         f"{config.device!r}; load it with device={config.device!r} or change the config")


def checked_request(config: ActivationConfig, model: LoadedModel | None,
                     caller: str = "collect_activations") -> tuple[LoadedModel, tuple[int, ...]]:
    """Check a collection request against the model before any forward pass; shared by :func:`collect_activations`
    and :func:`atomsnb.store.collect_store` (``caller`` names the function in the messages).

    Returns:
        ``(lm, layers)``: ``model`` (or the model ``config.model`` names, loaded) and the layers to collect
        (``config.layers``, default ``1..n_layers``).

    Raises:
        TypeError: ``config`` not an :class:`ActivationConfig`, ``model`` not a :class:`LoadedModel`.
        ValueError: a ``model`` that is not the one ``config`` names (path, dtype, device), a layer above
            ``n_layers``, ``seq_len`` above the model's maximum positions.
    """
    if not isinstance(config, ActivationConfig):
        raise TypeError(f"config must be an ActivationConfig; got {type(config).__name__}")
    if model is not None:
        _check_model_matches(model, config, caller)
    lm = model or load_model(config.model, device=config.device, dtype=config.dtype)
    layers = tuple(range(1, lm.n_layers + 1)) if config.layers is None else config.layers
    bad = [l for l in layers if not 0 <= l <= lm.n_layers]
    if bad:
        raise ValueError(f"layer(s) {bad} out of range for {lm.name!r}: residual-stream layers are 0..{lm.n_layers} "
                         "(0 = embeddings, l = after block l)")
    if lm.max_positions is not None and config.seq_len > lm.max_positions:
        raise ValueError(f"seq_len={config.seq_len} exceeds the maximum positions of {lm.name!r} "
                         f"({lm.max_positions}); use seq_len <= {lm.max_positions}")
    return lm, layers


def _save(path, tensors, meta) -> None:
    """Write one cache file; a failed write (disk full, read-only: :func:`atomsnb.io.is_write_failure`) warns naming
    the file and is not fatal."""
    try:
        save_tensors(path, tensors, meta)
    except Exception as exc:  # noqa: BLE001 - only a failed write is caught (safetensors' I/O error is no OSError)
        if not is_write_failure(exc):
            raise
        why = getattr(exc, "strerror", None) or exc
        warnings.warn(f"could not write the activation cache file {str(path)!r} ({why}); the "
                      "activations are returned but not cached. Free space there, set ATOMSNB_CACHE to another "
                      "directory, or pass cache=False", RuntimeWarning, stacklevel=3)


def collect_activations(config: ActivationConfig, *, model: LoadedModel | None = None, cache: bool = True,
                        progress: bool = True) -> Activations:
    """Collect (or load from cache) residual-stream activations for ``config``.

    Args:
        config: what to collect (:class:`ActivationConfig`, validated when it was built).
        model: an already loaded model to reuse; it must be the one ``config.model`` names, with ``config.dtype``
            and on ``config.device``, else ``ValueError``. Loaded if ``None``.
        cache: read and write the on-disk cache (``$ATOMSNB_CACHE/activations``). A damaged cache
            file is reported and recomputed, never used; a cache file that cannot be written (disk full)
            gives a ``RuntimeWarning`` naming it, and the activations are still returned.
        progress: show a tqdm progress bar (also silenced by ``TQDM_DISABLE=1``).

    Returns:
        :class:`Activations` with ``acts[layer]`` of shape ``[config.n_tokens, d_model]``, float32.

    Raises:
        TypeError: ``config`` is not an :class:`ActivationConfig`, or ``model`` not a :class:`LoadedModel`.
        ValueError: a model that does not match ``config``, a layer out of range, ``seq_len`` above the model's
            maximum positions, an empty corpus, fewer tokens than asked, or NaN/inf in the activations (naming
            the layer).
        RuntimeError: the forward loop did not fill every row (a bug; nothing is cached).
    """
    lm, layers = checked_request(config, model)
    corpus = Corpus(config.corpus)
    prefix = tokenizer_prefix(lm.tokenizer)
    key = _cache_key(lm, config, corpus, prefix)
    folder = cache_dir("activations", key)
    acts: dict[int, torch.Tensor] = {}
    tokens = None
    if cache:
        try:
            tokens, _ = load_tensors(folder / "tokens.safetensors")
        except FileNotFoundError:
            pass
        except CacheCorruptError as exc:
            print(f"[atomsnb] {exc}; recomputing")
        for l in layers:
            try:
                acts[l] = load_tensors(folder / f"layer{l:03d}.safetensors")[0]["acts"]
            except FileNotFoundError:
                pass
            except CacheCorruptError as exc:
                print(f"[atomsnb] {exc}; recomputing")
    missing = [l for l in layers if l not in acts]
    if missing or tokens is None:
        windows = token_windows(lm.tokenizer, corpus, config.split, n_tokens=config.n_tokens, seq_len=config.seq_len,
                                seed=config.seed, drop_bos=config.drop_bos)
        first = 1 if config.drop_bos else 0
        per_window = config.seq_len - first
        pos = torch.arange(first, config.seq_len).repeat(len(windows))[: config.n_tokens]
        win = torch.arange(len(windows)).repeat_interleave(per_window)[: config.n_tokens]
        tokens = {"token_ids": windows[:, first:].reshape(-1)[: config.n_tokens].clone(), "window": win,
                  "position": pos, "windows": windows}
        if missing:
            buf = {l: torch.empty(config.n_tokens, lm.d_model, dtype=torch.float32) for l in missing}
            filled = 0
            bar = tqdm(range(0, len(windows), config.batch_size), desc=f"activations {lm.name} layers {missing}",
                       disable=not progress or None, leave=False)
            for start in bar:
                if filled >= config.n_tokens:
                    break
                ids = windows[start:start + config.batch_size]
                res = capture_residual_stream(lm, ids, missing)
                take = min(len(ids) * per_window, config.n_tokens - filled)
                for l in missing:
                    buf[l][filled:filled + take] = res[l][:, first:].reshape(-1, lm.d_model)[:take].float().cpu()
                filled += take
            if filled != config.n_tokens:
                raise RuntimeError(f"collect_activations filled {filled} of {config.n_tokens} rows for {lm.name!r} "
                                   f"(windows {tuple(windows.shape)}, batch_size {config.batch_size}); nothing was cached")
            for l in missing:
                check_finite(buf[l], name=f"activations of {lm.name!r} at layer {l}")
                acts[l] = buf[l]
                if cache:
                    _save(folder / f"layer{l:03d}.safetensors", {"acts": buf[l]},
                          {"layer": l, "config": asdict(config), "model_path": str(lm.path),
                           "model_fingerprint": lm.fingerprint, "capture_code": _capture_code()})
        if cache:
            _save(folder / "tokens.safetensors", tokens, {"config": asdict(config), "prefix": prefix})
    return Activations(acts={l: acts[l] for l in layers}, token_ids=tokens["token_ids"], window=tokens["window"],
                       position=tokens["position"], windows=tokens["windows"], config=config,
                       meta={"cache_key": key, "n_layers": lm.n_layers, "d_model": lm.d_model, "model_path": str(lm.path),
                             "model_fingerprint": lm.fingerprint, "prefix": prefix})


def next_token_loss(lm: LoadedModel, corpus: str = "docstrings", split: str = "eval", *, n_tokens: int = 8192,
                    seq_len: int = 128, seed: int = 0, batch_size: int = 4) -> dict:
    """Mean next-token cross-entropy (nats/token) of ``lm`` on windows of a corpus split.

    Windows are those of :func:`token_windows` (the model's own prefix first); every position ``t >= 1`` of a
    window is predicted from positions ``< t`` and scored, so a window of ``seq_len`` scores ``seq_len - 1``
    tokens (position 0 has no context and is never scored).

    Args:
        lm: a loaded model.
        corpus, split: the text (:class:`atomsnb.corpus.Corpus`).
        n_tokens: scored tokens (rounded up to whole windows).
        seq_len: window length in tokens.
        seed: document order.
        batch_size: windows per forward pass (Gemma's 262k-token vocabulary makes logits large: keep it small).

    Returns:
        A dict with keys ``loss`` (float, nats/token), ``n_tokens`` (int, tokens scored), ``n_windows`` (int),
        ``seq_len`` (int) and ``perplexity`` (float).

    Raises:
        ValueError: as :func:`token_windows`, or ``seq_len`` above the model's maximum positions.
    """
    if lm.max_positions is not None and seq_len > lm.max_positions:
        raise ValueError(f"seq_len={seq_len} exceeds the maximum positions of {lm.name!r} ({lm.max_positions})")
    batch_size = _int_field("batch_size", batch_size, 1)
    windows = token_windows(lm.tokenizer, Corpus(corpus), split, n_tokens=n_tokens, seq_len=seq_len, seed=seed,
                            drop_bos=True)
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(windows), batch_size):
            ids = windows[start:start + batch_size].to(lm.device)
            logits = lm.model(input_ids=ids, use_cache=False).logits.float()
            loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                     ids[:, 1:].reshape(-1), reduction="sum")
            total += float(loss)
            count += ids[:, 1:].numel()
    return {"loss": total / count, "n_tokens": count, "n_windows": int(len(windows)), "seq_len": seq_len,
            "perplexity": math.exp(total / count)}
