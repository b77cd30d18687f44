"""One loader for every causal LM: a registered name, a local directory, or a hub id.

Registered names (:data:`REGISTERED_MODELS`):

- ``"smollm2-135m"`` (the book's default, :data:`DEFAULT_MODEL_NAME`; ``"default"`` resolves to it) and
  ``"gemma3-270m"``: real pretrained LLMs shipped as GGUF files in PyPI packages, converted once into a
  safetensors model directory in the cache (:mod:`atomsnb.packaged`, :data:`PACKAGED_MODELS`);
- ``"docstring-gpt2"``: the small GPT-2 trained here on docstrings (:mod:`atomsnb.default_model`), built on
  demand (a few minutes); for teachers who want a model they can rebuild, and as a fixture.

Everything then goes through ``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained`` of a
directory. Any other name is a local directory saved with ``save_pretrained`` or, if it does not look like a
local path, a hub id (``"google/gemma-2-2b"``), which needs a reachable hub.

A :class:`LoadedModel` carries a ``fingerprint`` of the files it was loaded from (SHA-256 over weights,
config and tokenizer, :func:`atomsnb.fingerprints.directory_fingerprint`): the activation cache is keyed
by it, never by the folder's name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError

from .architecture import UnsupportedModelError, decoder_layers, max_positions
from .default_model import MODEL_NAME as DOCSTRING_GPT2_NAME
from .default_model import ensure_default_model
from .fingerprints import directory_fingerprint
from .io import DTYPES, CacheCorruptError, tensor_digest
from .packaged import (
    CARD_FILE,
    PACKAGED_MODELS,
    PackageNotInstalledError,
    ensure_packaged_model,
    read_card,
    verified_card,
)

__all__ = ["DEFAULT_MODEL_NAME", "DOCSTRING_GPT2_NAME", "REGISTERED_MODELS", "PACKAGED_MODELS", "LoadedModel",
           "ModelNotFoundError", "load_model", "resolve_dtype", "resolve_device",
           "resolve_model_path", "canonical_name", "check_model", "model_card"]

#: The book's default model; ``load_model("default")`` loads it.
DEFAULT_MODEL_NAME = "smollm2-135m"
#: Every registered name (``"default"`` and the old ``"atomsnb/docstring-gpt2"`` are aliases).
REGISTERED_MODELS = (*PACKAGED_MODELS, DOCSTRING_GPT2_NAME)
_ALIASES = {"default": DEFAULT_MODEL_NAME, "atomsnb/docstring-gpt2": DOCSTRING_GPT2_NAME}

_DTYPES = {**{name: DTYPES[name] for name in ("float32", "bfloat16", "float16")},
           "fp32": DTYPES["float32"], "bf16": DTYPES["bfloat16"], "fp16": DTYPES["float16"]}
_DEVICE_TYPES = ("cpu", "cuda", "mps")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?$")


class ModelNotFoundError(OSError):
    """A model name that is neither registered, nor a usable local directory, nor loadable from the hub."""


@dataclass
class LoadedModel:
    """A causal LM ready for activation collection.

    Attributes:
        model: the ``transformers`` model, in eval mode, on ``device``.
        tokenizer: its tokenizer.
        name: the name it was asked for, registered names in canonical form (``"default"`` is shown as
            :data:`DEFAULT_MODEL_NAME`).
        path: the local directory (absolute) or hub id it was loaded from.
        n_layers: number of decoder blocks (residual-stream layers are ``0..n_layers``).
        d_model: residual-stream width ``H``.
        device: torch device.
        dtype: the model's parameter dtype.
        fingerprint: SHA-256 (hex) of the files the model and tokenizer were loaded from (empty if unknown).
        max_positions: the longest input the model accepts (``max_position_embeddings``), ``None`` if unknown.
    """

    model: torch.nn.Module
    tokenizer: object
    name: str
    path: str
    n_layers: int
    d_model: int
    device: torch.device
    dtype: torch.dtype
    fingerprint: str = ""
    max_positions: int | None = None


def resolve_dtype(dtype: str | torch.dtype) -> torch.dtype:
    """Map ``"float32"``/``"fp32"``, ``"bfloat16"``/``"bf16"``, ``"float16"``/``"fp16"`` (or a dtype) to a ``torch.dtype``.

    Raises:
        ValueError: an unknown name, with the allowed names.
    """
    if isinstance(dtype, torch.dtype):
        if dtype not in _DTYPES.values():
            raise ValueError(f"unsupported dtype {dtype}; use one of {sorted(_DTYPES)}")
        return dtype
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(_DTYPES)}") from None


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> CUDA if available else CPU; otherwise the named device, which must exist.

    Raises:
        ValueError: an unparsable device string, a device type other than cpu/cuda/mps, or CUDA asked for but
            not available here.
    """
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}; use 'cpu', 'cuda', 'cuda:N', 'mps' or 'auto'") from None
    if dev.type not in _DEVICE_TYPES:
        raise ValueError(f"unsupported device {device!r}; use 'cpu', 'cuda', 'cuda:N', 'mps' or 'auto'")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(device)!r} requested but CUDA is not available here; use device='cpu'")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device {str(device)!r} does not exist: {torch.cuda.device_count()} CUDA device(s) here")
    return dev


def canonical_name(name: str) -> str | None:
    """The registered name ``name`` stands for (``"default"`` -> :data:`DEFAULT_MODEL_NAME`), or ``None``."""
    name = _ALIASES.get(name, name)
    return name if name in REGISTERED_MODELS else None


def _looks_local(name: str) -> bool:
    """A name that can only be a filesystem path (never a hub id ``org/name``)."""
    if name.startswith(("/", "~", ".", "\\")) or "\\" in name or name.endswith("/") or name.count("/") > 1:
        return True
    if not _HUB_ID.match(name):
        return True
    first = name.split("/")[0]
    return "/" in name and os.path.isdir(first)  # "runA/final" with ./runA present is a path


def _check_model_dir(path: Path, name: str) -> None:
    entries = sorted(p.name for p in path.iterdir())
    if not entries:
        raise ModelNotFoundError(f"local directory {name!r} is empty: expected a model saved with save_pretrained "
                                 "(config.json, model.safetensors or pytorch_model.bin, tokenizer files)")
    if "config.json" not in entries:
        shown = ", ".join(entries[:8]) + (", ..." if len(entries) > 8 else "")
        hint = (" It holds a GGUF file: registered packaged models are converted for you (load_model('smollm2-135m'))."
                if any(e.endswith(".gguf") for e in entries) else "")
        raise ModelNotFoundError(f"local directory {name!r} holds no config.json (it holds: {shown}); expected a model "
                                 f"saved with save_pretrained (config.json, model.safetensors, tokenizer files).{hint}")


def resolve_model_path(name: str, *, verbose: bool = True) -> str:
    """Where ``name`` loads from: a registered model's directory (built/converted on first use), a local
    directory (absolute path), or a hub id (returned unchanged).

    Raises:
        TypeError: ``name`` is not a string.
        ModelNotFoundError: a local-looking path that does not exist, a file instead of a directory, an empty
            directory or one without ``config.json``; a registered model whose package is missing.
    """
    if not isinstance(name, (str, os.PathLike)):
        raise TypeError(f"model must be a registered name, a local directory or a hub id (str); got {name!r}")
    name = os.fspath(name)
    if not name.strip():
        raise ModelNotFoundError(f"model name is empty; use one of {list(REGISTERED_MODELS)}, 'default', "
                                 "a local directory or a hub id")
    canon = canonical_name(name)
    if canon in PACKAGED_MODELS:
        try:
            return str(ensure_packaged_model(canon, verbose=verbose))
        except PackageNotInstalledError as exc:
            raise ModelNotFoundError(str(exc)) from exc
    if canon == DOCSTRING_GPT2_NAME:
        return str(ensure_default_model(verbose=verbose))
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelNotFoundError(f"model path {name!r} is a file, not a directory; pass the directory saved with "
                                     "save_pretrained (config.json, weights, tokenizer files)")
        _check_model_dir(path, name)
        return str(path.resolve())
    if _looks_local(name):
        raise ModelNotFoundError(f"local model directory {name!r} does not exist (resolved to {str(path.resolve())!r}); "
                                 f"pass an existing directory saved with save_pretrained, a registered name "
                                 f"{list(REGISTERED_MODELS)} or a hub id 'org/name'")
    return name


def _not_found(name: str, exc: Exception) -> ModelNotFoundError:
    return ModelNotFoundError(
        f"model {name!r} is not a registered name ({', '.join(repr(n) for n in REGISTERED_MODELS)} or 'default'), "
        f"not a local directory, and the Hugging Face hub did not provide it (the hub is unreachable from here, or "
        f"the name is unknown or gated). Download it where the hub is reachable (huggingface-cli download {name} "
        f"--local-dir DIR) and pass the local directory instead, e.g. load_model('DIR') or -p model DIR with "
        f"papermill. ({type(exc).__name__})")


def _causal_lm_types() -> set[str]:
    # transformers: heavy (seconds to import): only where a model or tokenizer is loaded
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)


def _load_config(path: str, name: str):
    """AutoConfig of ``path``, with unknown architectures and non-causal models turned into clear errors."""
    # transformers: heavy (seconds to import): only where a model or tokenizer is loaded
    from transformers import AutoConfig

    local = os.path.isdir(path)
    try:
        cfg = AutoConfig.from_pretrained(path)
    except (OSError, ValueError, KeyError) as exc:
        if not local:
            raise _not_found(name, exc) from exc
        model_type = _declared_model_type(path)
        if model_type is not None and model_type not in _causal_lm_types():
            raise _unsupported(name, model_type) from exc
        raise ModelNotFoundError(f"local directory {name!r} has no readable model config ({type(exc).__name__}: "
                                 f"{str(exc)[:300]})") from exc
    if cfg.model_type not in _causal_lm_types():
        raise _unsupported(name, cfg.model_type)
    return cfg


def _declared_model_type(path: str) -> str | None:
    try:
        return json.loads((Path(path) / "config.json").read_text()).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None


def _unsupported(name: str, model_type: str) -> UnsupportedModelError:
    # transformers: heavy (seconds to import): only where a model or tokenizer is loaded
    import transformers

    known = sorted(_causal_lm_types())
    examples = ", ".join(t for t in ("llama", "gemma3_text", "gemma2", "gpt2", "gpt_neox", "qwen2", "mistral") if t in known)
    return UnsupportedModelError(
        f"model {name!r} has architecture model_type={model_type!r}, which transformers {transformers.__version__} "
        f"cannot load as a causal LM; allowed are its {len(known)} causal-LM model types (e.g. {examples})")


def check_model(name: str) -> tuple[int, int]:
    """Check that ``name`` resolves to a causal LM config without loading its weights.

    Returns:
        ``(n_layers, d_model)`` from the model's config.

    Raises:
        ModelNotFoundError, UnsupportedModelError: as :func:`load_model`.
    """
    cfg = _load_config(resolve_model_path(name), name)
    return int(cfg.num_hidden_layers), int(cfg.hidden_size)


def _fingerprint(path: str, model: torch.nn.Module, tokenizer) -> str:
    """Content fingerprint of what was loaded: the directory's files, or (hub id) the snapshot's / the tensors."""
    if os.path.isdir(path):
        return directory_fingerprint(path)
    try:
        # huggingface_hub: only when the hub is asked
        from huggingface_hub import snapshot_download

        return directory_fingerprint(snapshot_download(path, local_files_only=True))
    except Exception:  # no local snapshot to hash: hash the loaded tensors and the tokenizer instead
        h = hashlib.sha256(tensor_digest(dict(model.state_dict())).encode())
        backend = getattr(tokenizer, "backend_tokenizer", None)
        h.update((backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))).encode())
        return h.hexdigest()


@contextlib.contextmanager
def loading_bars_off():
    """transformers' "Loading weights" progress bar off while loading, when ``TQDM_DISABLE`` is set (the book build
    sets it): that bar does not read ``TQDM_DISABLE`` and would print into every chapter. Restored on exit."""
    # transformers: heavy (seconds to import): only where a model or tokenizer is loaded
    from transformers.utils import logging as hf_logging

    if not os.environ.get("TQDM_DISABLE") or not hf_logging.is_progress_bar_enabled():
        yield
        return
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.enable_progress_bar()


def load_model(name: str = "default", *, device: str = "cpu", dtype: str | torch.dtype = "float32",
               verbose: bool = True) -> LoadedModel:
    """Load a causal LM and its tokenizer by registered name, local path or hub id.

    Args:
        name: ``"default"`` (= :data:`DEFAULT_MODEL_NAME`, ``"smollm2-135m"``), ``"gemma3-270m"``,
            ``"docstring-gpt2"``, a local directory saved with ``save_pretrained``, or a hub id
            (``"google/gemma-2-2b"``). Registered models are converted/built on first use.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ``"mps"`` or ``"auto"``.
        dtype: model dtype, ``"float32"`` (default) or ``"bfloat16"`` / ``"float16"``.
        verbose: print progress of a first-use conversion or build.

    Returns:
        A :class:`LoadedModel` in eval mode.

    Raises:
        ModelNotFoundError: the name is not registered, a local-looking path does not exist, a local directory is
            empty or holds no model, or a hub id could not be fetched (offline, unknown or gated); the message says
            what is allowed.
        UnsupportedModelError: an architecture ``transformers`` cannot load as a causal LM.
        ValueError: an unknown dtype or an unavailable device; a local directory whose safetensors weights are
            damaged (the message names the file).
        CacheCorruptError: a registered model's converted weights are damaged (the message says how to rebuild).
    """
    # transformers: heavy (seconds to import): only where a model or tokenizer is loaded
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch_dtype, dev = resolve_dtype(dtype), resolve_device(device)
    path = resolve_model_path(name, verbose=verbose)
    _load_config(path, name)
    local = os.path.isdir(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, TypeError) as exc:
        if not local:
            raise _not_found(name, exc) from exc
        raise ModelNotFoundError(f"could not load a tokenizer from local directory {name!r} ({type(exc).__name__}: "
                                 f"{str(exc)[:300]}); save it next to the model with tokenizer.save_pretrained") from exc
    try:
        with loading_bars_off():
            model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
    except SafetensorError as exc:  # a truncated or overwritten weights file (the message never names it)
        weights = sorted(str(p) for p in Path(path).glob("*.safetensors")) if local else [path]
        if canonical_name(name):
            raise CacheCorruptError(f"the converted weights of {name!r} ({', '.join(weights)}) are damaged ({exc}); "
                                    f"delete the directory {path!r} and load {name!r} again to rebuild it") from exc
        raise ValueError(f"the weights of model {name!r} ({', '.join(weights)}) are not a readable safetensors file "
                         f"({exc}); the file is damaged or truncated: save the model again with save_pretrained") from exc
    except OSError as exc:
        if not local:
            raise _not_found(name, exc) from exc
        raise ModelNotFoundError(f"could not load model weights from local directory {name!r} "
                                 f"({type(exc).__name__}: {str(exc)[:300]}); expected model.safetensors or "
                                 "pytorch_model.bin saved with save_pretrained") from exc
    model.to(dev).eval()
    n_layers = len(decoder_layers(model))
    return LoadedModel(model=model, tokenizer=tokenizer, name=canonical_name(name) or name, path=str(path),
                       n_layers=n_layers, d_model=int(model.config.hidden_size), device=dev, dtype=torch_dtype,
                       fingerprint=_fingerprint(path, model, tokenizer), max_positions=max_positions(model.config))


def model_card(name_or_path: str | os.PathLike) -> dict:
    """The JSON model card of a registered model (converting/building it first if needed) or of its directory.

    Packaged models' cards hold source package and version, GGUF file and SHA-256, quantisation types,
    licence (name, URL, installed text, notice), parameters, blocks, ``d_model``, vocabulary size, conversion
    time and versions (:mod:`atomsnb.packaged`); the docstring GPT-2's hold its training record
    (:mod:`atomsnb.default_model`).

    Raises:
        ModelNotFoundError: no card there (only registered models have one), or a missing package.
    """
    name = os.fspath(name_or_path)
    path = Path(resolve_model_path(name)) if canonical_name(name) else Path(name).expanduser()
    card = path / CARD_FILE
    if not card.is_file():
        raise ModelNotFoundError(f"{name!r} has no model card ({str(card)!r} does not exist); only registered models "
                                 f"{list(REGISTERED_MODELS)} have one")
    card = read_card(path)
    # a packaged model's card is the trust anchor of its conversion: checked (checksum, required files) before use
    return verified_card(path) if "converter_version" in card else card
