"""The docstring GPT-2 (registered name ``"docstring-gpt2"``): a small causal LM trained here, on CPU.

It was the book's default before real pretrained LLMs came in (:mod:`atomsnb.packaged`); it stays as a
model a teacher can rebuild from scratch in a few minutes, and as a fixture. A byte-level BPE tokenizer
(``tokenizers``) and a ``transformers`` ``GPT2LMHeadModel`` are trained with a fixed seed on the ``train``
split of the offline docstring corpus (:mod:`atomsnb.corpus`). Every training window starts with
``<|endoftext|>`` as BOS, and the saved tokenizer adds that BOS itself when it encodes a text
(``add_special_tokens=True``), so :func:`atomsnb.activations.token_windows` begins windows the way the
model was trained. It is saved with ``save_pretrained`` (safetensors and tokenizer files) into
``$ATOMSNB_CACHE/models/docstring-gpt2-<key>``, where ``key`` hashes the corpus, the config and
:data:`RECIPE_VERSION`, next to a model card (``atomsnb_card.json``) recording corpus hash and size, tokens
seen, train/validation loss and wall time. Later runs load it through the same ``from_pretrained`` path as
any local model (:func:`atomsnb.models.load_model`). Computing the key parses the whole corpus (seconds), so
this model is built on demand, outside the book's default path.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import platform
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from .corpus import Corpus
from .fingerprints import file_sha256
from .io import CacheCorruptError, save_json
from .packaged import CARD_FILE, read_card
from .paths import cache_dir

__all__ = ["MODEL_NAME", "RECIPE_VERSION", "DefaultModelConfig", "ensure_default_model", "default_model_path"]

#: The registered name under which :func:`atomsnb.models.load_model` finds this model.
MODEL_NAME = "docstring-gpt2"
#: Bump when the training recipe changes in a way the config does not capture
#: (2: the saved tokenizer adds the BOS itself).
RECIPE_VERSION = 2


@dataclass(frozen=True)
class DefaultModelConfig:
    """Architecture and training recipe of the docstring GPT-2 (all fields enter the cache key)."""

    corpus: str = "docstrings"
    """Corpus source (:class:`atomsnb.corpus.Corpus`); the model trains on its ``train`` split."""
    vocab_size: int = 4096
    """Byte-level BPE vocabulary size, special token ``<|endoftext|>`` included."""
    n_embd: int = 256
    """Residual-stream width ``d_model`` (``H``)."""
    n_layer: int = 4
    """Number of transformer blocks."""
    n_head: int = 4
    """Attention heads per block."""
    n_ctx: int = 128
    """Training context length in tokens (the first is always ``<|endoftext|>``, used as BOS)."""
    batch_size: int = 32
    """Sequences per optimisation step."""
    n_steps: int = 300
    """Optimisation steps (fixed, not wall-clock, so the result is deterministic)."""
    lr: float = 3e-3
    """Peak AdamW learning rate (linear warm-up, cosine decay to 10 %)."""
    warmup_steps: int = 30
    """Linear warm-up steps."""
    weight_decay: float = 0.1
    """AdamW weight decay on matrices."""
    seed: int = 0
    """Seed for initialisation and batch sampling."""
    n_val_sequences: int = 64
    """Held-out sequences (``eval`` split) for the validation loss."""

    def key(self, corpus_fingerprint: str) -> str:
        """Cache key: SHA-256 of corpus fingerprint, this config and the recipe version (12 hex digits)."""
        blob = json.dumps({"corpus": corpus_fingerprint, "config": asdict(self), "recipe": RECIPE_VERSION}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def default_model_path(config: DefaultModelConfig | None = None) -> Path:
    """Directory where the docstring GPT-2 for ``config`` lives (whether or not it is built yet)."""
    config = config or DefaultModelConfig()
    key = config.key(Corpus(config.corpus).fingerprint("train"))
    return cache_dir("models") / f"docstring-gpt2-{key}"


def _is_valid(path: Path) -> bool:
    try:
        card = read_card(path)
        return file_sha256(path / "model.safetensors") == card["weights_sha256"]
    except (FileNotFoundError, NotADirectoryError, CacheCorruptError, KeyError, TypeError):
        return False


@contextlib.contextmanager
def _file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_default_model(config: DefaultModelConfig | None = None, *, verbose: bool = True) -> Path:
    """Return the directory of the docstring GPT-2, building it first if it is not cached.

    The build takes a few minutes on 2 CPU cores; a cached model is verified (weights
    checksum against the model card) and rebuilt if damaged. Concurrent callers wait on a
    file lock instead of building twice.

    Args:
        config: architecture and recipe; default :class:`DefaultModelConfig`.
        verbose: print progress of a build.

    Returns:
        A directory loadable with ``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained``.
    """
    config = config or DefaultModelConfig()
    path = default_model_path(config)
    with _file_lock(path.with_suffix(".lock")):
        if _is_valid(path):
            return path
        if path.exists():
            shutil.rmtree(path)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        try:
            _build(config, tmp, verbose=verbose)
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp)
    return path


def _train_tokenizer(texts: list[str], vocab_size: int):
    # tokenizers: only when a tokenizer is trained or built
    from tokenizers import ByteLevelBPETokenizer

    # transformers: heavy (seconds to import): only where a model or tokenizer is loaded
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=vocab_size, min_frequency=2, special_tokens=["<|endoftext|>"],
                            show_progress=False)
    # tokenizers: only when a tokenizer is trained or built
    from tokenizers.processors import TemplateProcessing

    eot = "<|endoftext|>"
    backend = bpe._tokenizer
    backend.post_processor = TemplateProcessing(single=f"{eot} $A", pair=f"{eot} $A {eot} $B",
                                                special_tokens=[(eot, backend.token_to_id(eot))])
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=eot, eos_token=eot, unk_token=eot)
    return tok


def _token_stream(tok, texts: list[str]) -> torch.Tensor:
    eos = tok.eos_token_id
    ids: list[int] = []
    for enc in tok(texts, add_special_tokens=False)["input_ids"]:
        ids.extend(enc)
        ids.append(eos)
    return torch.tensor(ids, dtype=torch.long)


def _windows(stream: torch.Tensor, starts: torch.Tensor, n_ctx: int, bos: int) -> torch.Tensor:
    idx = starts[:, None] + torch.arange(n_ctx - 1)[None, :]
    body = stream[idx]
    return torch.cat([torch.full((len(starts), 1), bos, dtype=torch.long), body], dim=1)


def _train_lm(model, train_stream: torch.Tensor, bos: int, config: DefaultModelConfig, g: torch.Generator, *,
              verbose: bool, t0: float) -> list[float]:
    """Train ``model`` in place: AdamW (no decay on biases and norms), linear warmup then cosine decay to 10 % of
    ``config.lr``, gradient clipping at 1, random windows of ``train_stream`` drawn with ``g``. Returns the losses
    (nats per token), one per step."""
    model.train()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=config.lr, betas=(0.9, 0.95))

    def lr_at(step: int) -> float:
        if step < config.warmup_steps:
            return config.lr * (step + 1) / config.warmup_steps
        frac = (step - config.warmup_steps) / max(1, config.n_steps - config.warmup_steps)
        return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))

    max_start = len(train_stream) - config.n_ctx
    losses: list[float] = []
    for step in range(config.n_steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        starts = torch.randint(0, max_start, (config.batch_size,), generator=g)
        batch = _windows(train_stream, starts, config.n_ctx, bos)
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        if verbose and (step + 1) % 50 == 0:
            print(f"[docstring-gpt2] step {step + 1}/{config.n_steps} loss {sum(losses[-50:]) / len(losses[-50:]):.3f} "
                  f"({time.time() - t0:.0f} s)", flush=True)

    return losses


def _validation_loss(model, val_stream: torch.Tensor, bos: int, config: DefaultModelConfig) -> float:
    """Mean next-token loss (nats per token) of ``model`` on ``config.n_val_sequences`` random windows of
    ``val_stream`` (seed ``config.seed + 1``)."""
    model.eval()
    gv = torch.Generator().manual_seed(config.seed + 1)
    vstarts = torch.randint(0, len(val_stream) - config.n_ctx, (config.n_val_sequences,), generator=gv)
    vbatch = _windows(val_stream, vstarts, config.n_ctx, bos)
    with torch.no_grad():
        return float(sum(model(input_ids=vbatch[i:i + 16], labels=vbatch[i:i + 16]).loss * len(vbatch[i:i + 16])
                             for i in range(0, len(vbatch), 16)) / len(vbatch))



def _build(config: DefaultModelConfig, out: Path, *, verbose: bool) -> None:
    import transformers  # heavy: only when the model is built
    from transformers import GPT2Config, GPT2LMHeadModel

    t0 = time.time()
    corpus = Corpus(config.corpus)
    train_texts, val_texts = corpus.texts("train"), corpus.texts("eval")
    torch.manual_seed(config.seed)
    tok = _train_tokenizer(train_texts, config.vocab_size)
    train_stream, val_stream = _token_stream(tok, train_texts), _token_stream(tok, val_texts)
    if verbose:
        print(f"[docstring-gpt2] tokenizer trained ({time.time() - t0:.0f} s); train tokens {len(train_stream):,}, "
              f"val tokens {len(val_stream):,}", flush=True)

    cfg = GPT2Config(vocab_size=len(tok), n_positions=config.n_ctx, n_embd=config.n_embd, n_layer=config.n_layer,
                     n_head=config.n_head, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, loss_type="ForCausalLM")
    g = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    model = GPT2LMHeadModel(cfg)
    bos = tok.bos_token_id
    losses = _train_lm(model, train_stream, bos, config, g, verbose=verbose, t0=t0)
    val_loss = _validation_loss(model, val_stream, bos, config)

    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)

    card = {
        "name": MODEL_NAME,
        "architecture": "GPT2LMHeadModel",
        "config": asdict(config),
        "recipe_version": RECIPE_VERSION,
        "corpus": {"source": config.corpus, "train_fingerprint": corpus.fingerprint("train"),
                   "train_documents": len(train_texts), "train_characters": sum(map(len, train_texts)),
                   "train_tokens": int(len(train_stream)), "val_tokens": int(len(val_stream))},
        "n_parameters": sum(p.numel() for p in model.parameters()),
        "tokens_seen": config.n_steps * config.batch_size * config.n_ctx,
        "train_loss_last50": sum(losses[-50:]) / len(losses[-50:]),
        "val_loss": val_loss,
        "val_loss_uniform_baseline": math.log(len(tok)),
        "wall_time_s": time.time() - t0,
        "weights_sha256": file_sha256(out / "model.safetensors", use_stamp=False),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "python": platform.python_version()},
    }
    save_json(out / CARD_FILE, card)
    if verbose:
        print(f"[docstring-gpt2] built in {card['wall_time_s']:.0f} s: {card['n_parameters']:,} parameters, "
              f"val loss {val_loss:.3f} nats/token (uniform: {math.log(len(tok)):.2f})", flush=True)
