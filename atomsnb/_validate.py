"""Checks of a grid config's fields, run by the configs' ``validate()`` before any work (issue 9 §4).

Every error is a ``ValueError`` (or ``TypeError`` for a value of the wrong type) that names the field, the value
given and what is allowed. Fields are read with ``getattr``, so a config that lacks one (or names it differently)
is checked for the fields it has.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import fields
from pathlib import Path
from typing import Any

import torch

from .activations import token_windows
from .architecture import max_positions
from .corpus import SOURCES, Corpus
from .models import _DTYPES, resolve_model_path
from .store import STORE_DTYPES

#: Integer fields of the grid configs and their smallest allowed value.
INT_FIELDS = {"n_fit_tokens": 1, "n_eval_tokens": 2, "n_train_tokens": 1, "n_steps": 1, "batch_size": 1,
              "n_train_eval": 1, "capacity": 1, "seq_len": 2, "layer": 0}
DEVICE_TYPES = ("cpu", "cuda", "mps")
DEFAULT_SEQ_LEN = 128


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def check_int(name: str, value: Any, minimum: int | None) -> int:
    """``value`` as an ``int >= minimum`` (any int if ``None``); floats (which would be truncated), bools and strings
    are refused."""
    if not _is_int(value):
        hint = " (YAML reads 4e4 as a string: write 40000)" if isinstance(value, str) else ""
        what = "an integer" if minimum is None else f"an integer >= {minimum}"
        raise TypeError(f"{name}={value!r} ({type(value).__name__}) is not allowed: it must be {what}{hint}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name}={value!r} is not allowed: it must be an integer >= {minimum}")
    return int(value)


def positive_int(name: str, v, minimum: int = 1) -> int:
    """``v`` as an ``int >= minimum``; anything else (a bool, a float, a string) is a ``ValueError`` naming ``name``."""
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {v!r}")
    return int(v)


def check_massive_k(value: Any) -> float | None:
    """The massive-token criterion (:func:`atomsnb.massive.massive_token_mask`): None keeps every token, else a finite
    number > 1, a multiple of the median token norm. Raises ``ValueError`` naming the value otherwise."""
    if value is not None and (not _is_real(value) or not math.isfinite(value) or value <= 1):
        raise ValueError(f"massive_k={value!r} is not allowed: massive_k must be None (keep every token) or a finite "
                         "number > 1 (a multiple of the median token norm)")
    return None if value is None else float(value)


def check_coefficient(name: str, value: Any) -> float:
    """A sparsity coefficient: a finite number ``>= 0``."""
    if not _is_real(value) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name}={value!r} is not allowed: a sparsity coefficient must be a finite number >= 0")
    return float(value)


def check_list(name: str, values: Any, check, *, allow_empty: bool = False) -> list:
    """A list (or tuple) of values each passing ``check(f"{name}[i]", v)``, without duplicates."""
    if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)):
        raise TypeError(f"{name}={values!r} is not allowed: it must be a list, e.g. [{values!r}]")
    if not values and not allow_empty:
        raise ValueError(f"{name}=[] is not allowed: it must hold at least one value (the grid would be empty)")
    out = [check(f"{name}[{i}]", v) for i, v in enumerate(values)]
    twice = sorted({v for v in out if out.count(v) > 1})
    if twice:
        raise ValueError(f"{name}={list(values)!r} is not allowed: {twice} given twice (the same point twice)")
    return out


def check_device(device: Any) -> str:
    """``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` (N a present GPU) or ``"mps"``, available on this machine."""
    allowed = "'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"
    if not isinstance(device, str):
        raise TypeError(f"device={device!r} is not allowed: it must be a string, one of {allowed}")
    if device == "auto":
        return device
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"device={device!r} is not a device name: use {allowed}") from None
    if dev.type not in DEVICE_TYPES:
        raise ValueError(f"device={device!r} is not allowed: use {allowed}")
    if dev.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise ValueError(f"device={device!r} requested but CUDA is not available here; use device='cpu' or 'auto'")
        if dev.index is not None and dev.index >= n:
            raise ValueError(f"device={device!r} does not exist: this machine has {n} CUDA device(s), cuda:0..cuda:{n - 1}")
    if dev.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ValueError(f"device={device!r} requested but MPS is not available here; use device='cpu' or 'auto'")
    return device


def check_dtype(dtype: Any) -> str:
    """A model dtype name that :func:`atomsnb.models.resolve_dtype` knows."""
    if not isinstance(dtype, str) or dtype.lower() not in _DTYPES:
        raise ValueError(f"dtype={dtype!r} is not allowed: use one of {sorted(_DTYPES)}")
    return dtype


def check_corpus(corpus: Any) -> str:
    """A corpus source :class:`atomsnb.corpus.Corpus` accepts (a ``file:`` path must be an existing file)."""
    allowed = f"{', '.join(map(repr, SOURCES))}, 'file:PATH' or 'hf:NAME[:CONFIG[:SPLIT[:COLUMN]]]'"
    if not isinstance(corpus, str):
        raise TypeError(f"corpus={corpus!r} is not allowed: it must be a string, {allowed}")
    try:
        Corpus(corpus)
    except ValueError:
        raise ValueError(f"corpus={corpus!r} is not a corpus source: use {allowed}") from None
    if corpus.startswith("file:"):
        p = Path(corpus[5:]).expanduser()
        if not p.is_file():
            what = "is a directory, not a file" if p.is_dir() else "does not exist"
            raise ValueError(f"corpus={corpus!r}: {str(p)!r} {what}; 'file:PATH' needs a UTF-8 text file")
    return corpus


def check_fields(cfg: Any) -> None:
    """Types and ranges of every field of a grid config (no model or corpus is loaded)."""
    names = {f.name for f in fields(cfg)}
    model = getattr(cfg, "model", None)
    if not isinstance(model, str) or not model.strip():
        raise TypeError(f"model={model!r} is not allowed: it must be a registered name, a local directory or a hub id")
    for name, minimum in INT_FIELDS.items():
        if name in names:
            check_int(name, getattr(cfg, name), minimum)
    for name in sorted(names):
        value = getattr(cfg, name)
        if name.endswith("_coefficient"):
            check_coefficient(name, value)
        elif name.endswith("_coefficients"):
            check_list(name, value, check_coefficient)
    if "seeds" in names:
        check_list("seeds", cfg.seeds, lambda n, v: check_int(n, v, 0))
    if "m_values" in names:
        check_list("m_values", cfg.m_values, lambda n, v: check_int(n, v, None))  # range: validate() vs the pool
    if "d_multiples" in names:
        def positive(n, v):
            if not _is_real(v) or not math.isfinite(v) or v < 0:  # 0: validate() says "size < 1" for d_model
                raise ValueError(f"{n}={v!r} is not allowed: a capacity multiple must be a finite number > 0")
            return float(v)
        check_list("d_multiples", cfg.d_multiples, positive)
    if "layers" in names and cfg.layers is not None:
        check_list("layers", cfg.layers, lambda n, v: check_int(n, v, 0))
    if "store_dtype" in names:
        if cfg.store_dtype not in STORE_DTYPES:
            raise ValueError(f"store_dtype={cfg.store_dtype!r} is not allowed: one of {sorted(STORE_DTYPES)}")
    if "device" in names:
        check_device(cfg.device)
    if "dtype" in names:
        check_dtype(cfg.dtype)
    if "corpus" in names:
        check_corpus(cfg.corpus)


def model_max_positions(model: str) -> int | None:
    """The longest window a model accepts, from its config (:func:`atomsnb.architecture.max_positions`; None if unknown)."""
    # transformers: heavy (seconds to import): only where a model or tokenizer is loaded
    from transformers import AutoConfig

    return max_positions(AutoConfig.from_pretrained(resolve_model_path(model)))


def check_data(cfg: Any) -> None:
    """What needs the model's config and tokenizer and the corpus: ``seq_len`` within the model's positions, and
    enough tokens in the corpus for ``n_fit_tokens`` (``fit`` split) and ``n_eval_tokens`` (``eval`` split).

    Tokenises the corpus only as far as needed (:func:`atomsnb.activations.token_windows`)."""
    # transformers: heavy (seconds to import): only where a model or tokenizer is loaded
    from transformers import AutoTokenizer

    seq_len = getattr(cfg, "seq_len", DEFAULT_SEQ_LEN)
    limit = model_max_positions(cfg.model)
    if limit is not None and seq_len > limit:  # activation collection refuses it too (atomsnb.activations)
        raise ValueError(f"seq_len={seq_len} is longer than the {limit} positions of model {cfg.model!r}; use seq_len "
                         f"<= {limit}")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(cfg.model))
    corpus = Corpus(cfg.corpus)
    seed = (list(getattr(cfg, "seeds", ())) or [getattr(cfg, "seed", 0)])
    for field_name, split in (("n_fit_tokens", "fit"), ("n_eval_tokens", "eval")):
        n = getattr(cfg, field_name, None)
        if n is None:
            continue
        try:
            token_windows(tokenizer, corpus, split, n_tokens=n, seq_len=seq_len, seed=seed[0])
        except ValueError as exc:
            raise ValueError(f"{field_name}={n}: {exc}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ValueError(f"corpus={cfg.corpus!r} cannot be read ({type(exc).__name__}: {exc})") from None
