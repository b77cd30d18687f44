"""What the package reads off a causal LM's architecture and tokenizer, whatever loaded it.

The decoder blocks whose outputs are the residual stream (:func:`decoder_layers`), the longest input a config
allows (:func:`max_positions`) and the special tokens a tokenizer puts before a text (:func:`tokenizer_prefix`).
These sit below both :mod:`atomsnb.models` (which loads models) and :mod:`atomsnb.packaged` (which converts the
packaged GGUF models and checks the conversion with them), so neither imports the other for them.
"""

from __future__ import annotations

import torch

__all__ = ["UnsupportedModelError", "decoder_layers", "max_positions", "tokenizer_prefix"]


class UnsupportedModelError(ValueError):
    """A model whose architecture ``transformers`` cannot load as a causal LM, or whose decoder blocks are not found."""


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The list of decoder blocks whose outputs are the residual stream (GPT-2, Pythia, Llama, Gemma 2/3, ...).

    Raises:
        UnsupportedModelError: no block list of length ``config.num_hidden_layers`` is found.
    """
    for attr in ("transformer.h", "model.layers", "gpt_neox.layers", "model.decoder.layers",
                 "model.language_model.layers"):
        obj = model
        try:
            for part in attr.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        if isinstance(obj, torch.nn.ModuleList):
            return obj
    n = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    for _, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n:
            return module
    raise UnsupportedModelError(f"cannot find the decoder blocks of {type(model).__name__}: no ModuleList of length "
                                f"num_hidden_layers={n}; supported are models whose blocks sit at transformer.h, "
                                "model.layers, gpt_neox.layers or model.decoder.layers")


def max_positions(config) -> int | None:
    """The longest input (tokens) a model config allows: ``max_position_embeddings`` / ``n_positions`` / ... or ``None``."""
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx"):
        v = getattr(config, attr, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def tokenizer_prefix(tokenizer) -> list[int]:
    """The token ids a tokenizer puts before a text's first token when it encodes a text on its own
    (``add_special_tokens=True``): ``[bos]`` for Gemma, ``[]`` for SmolLM2.

    Raises:
        ValueError: the tokenizer's special tokens do not wrap the plain encoding (cannot tell the prefix).
    """
    probe = "Return the value."
    full = list(tokenizer(probe, add_special_tokens=True)["input_ids"])
    bare = list(tokenizer(probe, add_special_tokens=False)["input_ids"])
    for k in range(len(full) - len(bare) + 1):
        if full[k:k + len(bare)] == bare:
            return full[:k]
    raise ValueError(f"cannot tell which special tokens {type(tokenizer).__name__} adds: {full} vs {bare}")
