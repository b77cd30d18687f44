"""One loader for every causal LM: the offline default, a local directory, or a hub name.

Everything goes through ``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained``;
the only special case is that the default model's registered name (:data:`DEFAULT_MODEL_NAME`, or
``"default"``) resolves to the directory :func:`atomsnb.default_model.ensure_default_model` builds.
Hub names such as ``"google/gemma-2-2b"``, ``"meta-llama/Llama-3.1-8B"``, ``"gpt2"`` need a
reachable hub (or a local copy passed as a path).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .default_model import DEFAULT_MODEL_NAME, ensure_default_model

__all__ = ["DEFAULT_MODEL_NAME", "LoadedModel", "ModelNotFoundError", "load_model", "resolve_dtype", "resolve_device",
           "decoder_layers", "check_model"]

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


class ModelNotFoundError(OSError):
    """A model name that is neither registered, nor a local directory, nor loadable from the hub."""


@dataclass
class LoadedModel:
    """A causal LM ready for activation collection.

    Attributes:
        model: the ``transformers`` model, in eval mode, on ``device``.
        tokenizer: its tokenizer.
        name: the name it was asked for (a registered name, a path or a hub id; ``"default"`` is shown as
            :data:`DEFAULT_MODEL_NAME`).
        path: the local directory or hub id it was loaded from.
        n_layers: number of decoder blocks (residual-stream layers are ``0..n_layers``).
        d_model: residual-stream width ``H``.
        device: torch device.
        dtype: the model's parameter dtype.
    """

    model: torch.nn.Module
    tokenizer: object
    name: str
    path: str
    n_layers: int
    d_model: int
    device: torch.device
    dtype: torch.dtype


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """Map ``"float32"``/``"fp32"``, ``"bfloat16"``/``"bf16"``, ``"float16"``/``"fp16"`` (or a dtype) to a ``torch.dtype``.

    Raises:
        ValueError: an unknown name, with the allowed names.
    """
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPES)}") from None


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> CUDA if available else CPU; otherwise the named device, which must exist.

    Raises:
        ValueError: CUDA was asked for but is not available.
    """
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} requested but CUDA is not available here; use device='cpu'")
    return dev


def _resolve_path(name: str) -> str:
    if name in ("default", DEFAULT_MODEL_NAME):
        return str(ensure_default_model())
    if os.path.isdir(os.path.expanduser(name)):
        return os.path.expanduser(name)
    return name


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The list of decoder blocks whose outputs are the residual stream (GPT-2, Pythia, Llama, Gemma2, ...).

    Raises:
        ValueError: no block list of length ``config.num_hidden_layers`` is found.
    """
    for attr in ("transformer.h", "model.layers", "gpt_neox.layers", "model.decoder.layers"):
        obj = model
        try:
            for part in attr.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        if isinstance(obj, torch.nn.ModuleList):
            return obj
    n = getattr(model.config, "num_hidden_layers", None)
    for _, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n:
            return module
    raise ValueError(f"cannot find the decoder blocks of {type(model).__name__}: no ModuleList of length {n}")


def _not_found(name: str, exc: Exception) -> ModelNotFoundError:
    return ModelNotFoundError(
        f"model {name!r} is not a registered name ('default', {DEFAULT_MODEL_NAME!r}), not a local directory, and "
        f"the Hugging Face hub did not provide it (the hub is unreachable from here, or the name is unknown or "
        f"gated). Download it where the hub is reachable (huggingface-cli download {name} --local-dir DIR) and pass "
        f"the local directory instead, e.g. load_model('DIR') or -p model DIR with papermill. ({type(exc).__name__})")


def check_model(name: str) -> tuple[int, int]:
    """Check that ``name`` resolves to a causal LM config without loading its weights.

    Returns:
        ``(n_layers, d_model)`` from the model's config.

    Raises:
        ModelNotFoundError: as :func:`load_model`.
    """
    from transformers import AutoConfig

    path = _resolve_path(name)
    try:
        cfg = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as exc:
        if os.path.isdir(path):
            raise ModelNotFoundError(f"local directory {path!r} holds no model config: {exc}") from exc
        raise _not_found(name, exc) from exc
    return int(cfg.num_hidden_layers), int(cfg.hidden_size)


def load_model(name: str = "default", *, device: str = "cpu", dtype: str | torch.dtype = "float32") -> LoadedModel:
    """Load a causal LM and its tokenizer by registered name, local path or hub id.

    Args:
        name: ``"default"`` / ``"atomsnb/docstring-gpt2"`` (the offline default, built on first use),
            a local directory saved with ``save_pretrained``, or a hub id (``"google/gemma-2-2b"``).
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``"auto"``.
        dtype: model dtype, ``"float32"`` (default) or ``"bfloat16"`` / ``"float16"``.

    Returns:
        A :class:`LoadedModel` in eval mode.

    Raises:
        ModelNotFoundError: the name is not registered, not a local directory and could not be
            fetched from the hub (offline, unknown or gated); the message says how to pass a local path.
        ValueError: an unknown dtype or an unavailable device.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype, dev = resolve_dtype(dtype), resolve_device(device)
    path = _resolve_path(name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
    except OSError as exc:
        if os.path.isdir(path):
            raise ModelNotFoundError(f"could not load a causal LM from local directory {path!r}: {exc}") from exc
        raise _not_found(name, exc) from exc
    model.to(dev).eval()
    n_layers = len(decoder_layers(model))
    display = DEFAULT_MODEL_NAME if name == "default" else name
    return LoadedModel(model=model, tokenizer=tokenizer, name=display, path=str(path), n_layers=n_layers,
                       d_model=int(model.config.hidden_size), device=dev, dtype=torch_dtype)
