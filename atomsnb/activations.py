"""Residual-stream activations ``[n_tokens, d_model]`` from any causal LM, through forward hooks.

Layer convention (paper §5 reports "layers 1-26" for Gemma2-2B's 26 blocks): layer ``l`` for
``1 <= l <= n_layers`` is the residual stream *after* decoder block ``l`` (the block's raw
output, before any final norm); layer ``0`` is the input to the first block (the embeddings,
as the model scales them). For ``0 <= l < n_layers`` this equals ``hidden_states[l]`` of
``output_hidden_states=True``; for ``l = n_layers`` it differs, because ``transformers``
returns the *final-norm* output there. Hooks stop the forward pass after the deepest
requested block, so early layers cost only what they compute.

Text comes from :class:`atomsnb.corpus.Corpus`: documents of one split are shuffled with the
seed, tokenised, joined with EOS and cut into windows of ``seq_len`` tokens, each starting
with the tokenizer's BOS token (when it has one). Position 0 (the BOS / attention-sink token,
whose massive activations dominate second moments in real LLMs) is dropped by default.

Results are cached per layer as checksummed safetensors (:mod:`atomsnb.io`) under a key of
model, dtype, corpus split fingerprint, token count, window length, seed and BOS handling.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from tqdm import tqdm

from .aip import check_finite
from .corpus import Corpus
from .io import CacheCorruptError, load_tensors, save_tensors
from .models import LoadedModel, decoder_layers, load_model
from .paths import cache_dir

__all__ = ["ActivationConfig", "Activations", "collect_activations", "token_windows", "capture_residual_stream"]


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

    Documents of ``split`` are shuffled with ``seed`` and tokenised only until enough tokens are
    available, so a large corpus is not tokenised in full.

    Raises:
        ValueError: ``seq_len < 2``, ``n_tokens < 1``, or the split has fewer tokens than asked
            (the message gives both numbers).
    """
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2; got {seq_len}")
    if n_tokens < 1:
        raise ValueError(f"n_tokens must be >= 1; got {n_tokens}")
    bos = getattr(tokenizer, "bos_token_id", None)
    sep = getattr(tokenizer, "eos_token_id", None)
    body_len = seq_len - 1 if bos is not None else seq_len
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
    if bos is not None:
        body = torch.cat([torch.full((n_windows, 1), bos, dtype=torch.long), body], dim=1)
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


def _model_id(lm: LoadedModel) -> str:
    cfg = lm.model.config.to_dict()
    for k in ("_name_or_path", "transformers_version", "torch_dtype", "dtype"):
        cfg.pop(k, None)
    digest = hashlib.sha256(json.dumps(cfg, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return f"{Path(str(lm.path)).name}-{digest}"


def _cache_key(lm: LoadedModel, cfg: ActivationConfig, corpus: Corpus) -> str:
    blob = json.dumps({"model": _model_id(lm), "dtype": str(lm.dtype), "corpus": corpus.source,
                       "fingerprint": corpus.fingerprint(cfg.split), "split": cfg.split, "n_tokens": cfg.n_tokens,
                       "seq_len": cfg.seq_len, "seed": cfg.seed, "drop_bos": cfg.drop_bos}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def collect_activations(config: ActivationConfig, *, model: LoadedModel | None = None, cache: bool = True,
                        progress: bool = True) -> Activations:
    """Collect (or load from cache) residual-stream activations for ``config``.

    Args:
        config: what to collect (:class:`ActivationConfig`).
        model: an already loaded model to reuse (must match ``config.model``); loaded if ``None``.
        cache: read and write the on-disk cache (``$ATOMSNB_CACHE/activations``). A damaged cache
            file is reported and recomputed, never used.
        progress: show a tqdm progress bar (also silenced by ``TQDM_DISABLE=1``).

    Returns:
        :class:`Activations` with ``acts[layer]`` of shape ``[config.n_tokens, d_model]``, float32.

    Raises:
        ValueError: a layer out of range, an empty corpus, fewer tokens than asked, or NaN/inf in the
            activations (naming the layer).
    """
    lm = model or load_model(config.model, device=config.device, dtype=config.dtype)
    layers = tuple(range(1, lm.n_layers + 1)) if config.layers is None else tuple(sorted(set(config.layers)))
    bad = [l for l in layers if not 0 <= l <= lm.n_layers]
    if bad or not layers:
        raise ValueError(f"layer(s) {bad or list(layers)} out of range for {config.model!r}: allowed 0..{lm.n_layers}")
    corpus = Corpus(config.corpus)
    key = _cache_key(lm, config, corpus)
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
                ids = windows[start:start + config.batch_size]
                res = capture_residual_stream(lm, ids, missing)
                take = min(len(ids) * per_window, config.n_tokens - filled)
                for l in missing:
                    buf[l][filled:filled + take] = res[l][:, first:].reshape(-1, lm.d_model)[:take].float().cpu()
                filled += take
            for l in missing:
                check_finite(buf[l], name=f"activations of {lm.name!r} at layer {l}")
                acts[l] = buf[l]
                if cache:
                    save_tensors(folder / f"layer{l:03d}.safetensors", {"acts": buf[l]},
                                 {"layer": l, "config": asdict(config), "model_path": str(lm.path)})
        if cache:
            save_tensors(folder / "tokens.safetensors", tokens, {"config": asdict(config)})
    return Activations(acts={l: acts[l] for l in layers}, token_ids=tokens["token_ids"], window=tokens["window"],
                       position=tokens["position"], windows=tokens["windows"], config=config,
                       meta={"cache_key": key, "n_layers": lm.n_layers, "d_model": lm.d_model, "model_path": str(lm.path)})
