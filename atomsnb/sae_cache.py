"""Trained SAEs, cached by what determines their weights (paper §6, SPEC §6).

:func:`train_sae_cached` is :func:`atomsnb.sae.train_sae` with a cache of trained SAEs under
``$ATOMSNB_CACHE/saes/<key>``, so that a chapter that trains the SAE another chapter trained (chapter 5 reuses
chapter 2's) loads it instead, and any change to the data, the settings or the code trains afresh.
"""

from __future__ import annotations

import hashlib
import json
import warnings

import pandas as pd
import torch
from safetensors import SafetensorError

from .aip import AIP
from .codeprint import code_fingerprint
from .io import CacheCorruptError, is_write_failure, load_json, save_json, tensor_digest
from .paths import cache_dir
from .sae import SAEConfig, SparseAutoencoder, load_sae, save_sae, train_sae

__all__ = ["train_sae_cached", "SAE_CACHE_VERSION"]

#: Bump when what :func:`train_sae_cached` stores changes (the code's own hash is part of the key too).
SAE_CACHE_VERSION = 1


def _sae_cache_key(train_acts, aip: AIP | None, config: SAEConfig, n_tokens: int | None = None) -> str:
    # the code that trains, saves and loads (their modules' import closure and the library versions): other code
    # never shares a cached SAE
    code = code_fingerprint(train_sae, save_sae, load_sae).digest
    parts = {"version": SAE_CACHE_VERSION, "code": code, "config": config.to_dict(),
             "threads": torch.get_num_threads(),
             "data": (tensor_digest({"acts": train_acts}) if isinstance(train_acts, torch.Tensor)
                      else [train_acts.fingerprint(), int(train_acts.n_tokens if n_tokens is None else n_tokens)]),
             "aip": None if aip is None else [tensor_digest({"sum": aip._sum}), aip.n_tokens, aip.ridge, aip.pinv]}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def train_sae_cached(train_acts, aip: AIP | None, config: SAEConfig, *, n_tokens: int | None = None, cache: bool = True,
                     progress: bool = True) -> tuple[SparseAutoencoder, pd.DataFrame, bool]:
    """:func:`atomsnb.sae.train_sae` with a cache of trained SAEs (paper §6, SPEC §6).

    The cache (``$ATOMSNB_CACHE/saes/<key>``) is keyed by everything that determines the trained weights: the
    training activations' bytes (a store's key and the prefix used), the AIP's accumulated second moment, the full
    :class:`SAEConfig`, the torch thread count, and the code that trains (:func:`atomsnb.codeprint.code_fingerprint`
    of :func:`atomsnb.sae.train_sae`, ``save_sae`` and ``load_sae``: their modules' import closure, and the
    torch/transformers/safetensors versions). So a chapter that
    trains the SAE another chapter trained (chapter 5 reuses chapter 2's) loads it instead, and any change to the
    data, the settings or the code trains afresh. Entries are written atomically and checksummed; a damaged one is
    reported and retrained. An entry that cannot be written (disk full, read-only cache) gives a ``RuntimeWarning``
    naming its folder, and the trained SAE is still returned.

    Args:
        train_acts: ``[n_tokens, d_model]`` raw activations, or an :class:`atomsnb.store.ActivationStore`.
        aip: the fitted AIP (required when ``config.whiten``).
        config: the :class:`SAEConfig`.
        n_tokens: train on the first ``n_tokens`` rows only (default all; ``|M|`` for grid points sharing a store).
        cache: False trains without reading or writing the cache.
        progress: show the trainer's progress bar.

    Returns:
        ``(sae, history, from_cache)``.

    Raises:
        ValueError: as :func:`atomsnb.sae.train_sae`.
    """


    if not cache:
        sae, hist = train_sae(train_acts, aip, config, n_tokens=n_tokens, progress=progress)
        return sae, hist, False
    folder = cache_dir("saes") / _sae_cache_key(train_acts, aip, config, n_tokens)
    try:
        sae = load_sae(folder / "sae.safetensors")
        saved = load_json(folder / "history.json", checksum=True)
        hist = pd.DataFrame(saved["data"], columns=saved["columns"])
        return sae, hist, True
    except FileNotFoundError:
        pass
    except (CacheCorruptError, KeyError, ValueError) as exc:
        warnings.warn(f"cached SAE in {folder} is damaged ({exc}); training it again", UserWarning, stacklevel=2)
    sae, hist = train_sae(train_acts, aip, config, n_tokens=n_tokens, progress=progress)
    try:  # the SAE is written last: a folder without it is a miss, never a half hit
        save_json(folder / "history.json", {"columns": list(hist.columns), "data": hist.to_dict(orient="list")},
                  checksum=True)
        save_sae(sae, folder / "sae.safetensors")
    except (OSError, SafetensorError) as exc:  # disk full, read-only cache: the trained SAE is returned, not lost
        if not is_write_failure(exc):  # a SafetensorError that is not the disk's: a bug, raised as it is
            raise
        warnings.warn(f"could not write the SAE cache in {str(folder)!r} ({getattr(exc, 'strerror', None) or exc}); "
                      "the trained SAE is returned but not cached. Free space there, set ATOMSNB_CACHE to another "
                      "directory, or pass cache=False", RuntimeWarning, stacklevel=2)
    return sae, hist, False
