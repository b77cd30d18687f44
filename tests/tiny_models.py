"""Tiny random-weight causal LMs of the paper's architectures, saved locally (no hub needed)."""

from pathlib import Path

import torch

TEXTS = [
    "Return the sum of the numbers in the iterable.",
    "Open the file and return a stream; raise OSError on failure.",
    "The residual stream carries information between blocks of a transformer.",
    "Compute the inverse of a matrix with a Cholesky factorisation.",
] * 8


def tiny_tokenizer(add_bos: bool = True):
    """Byte-level BPE (vocabulary 300) with ``<bos>``/``<eos>``; with ``add_bos`` it puts ``<bos>`` before every
    text it encodes with ``add_special_tokens=True`` (as Gemma's does), else nothing (as SmolLM2's)."""
    from tokenizers import ByteLevelBPETokenizer
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(TEXTS, vocab_size=300, min_frequency=1, special_tokens=["<bos>", "<eos>"], show_progress=False)
    backend = bpe._tokenizer
    if add_bos:
        backend.post_processor = TemplateProcessing(single="<bos> $A", pair="<bos> $A <bos> $B",
                                                    special_tokens=[("<bos>", backend.token_to_id("<bos>"))])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>")


def save_tiny(arch: str, path: Path, seed: int = 0, add_bos: bool = True) -> Path:
    """Save a 2-block, d_model=32 random model of ``arch`` ('gpt2', 'llama', 'gemma2') with a tokenizer
    (``add_bos``: whether the tokenizer starts every text with ``<bos>``, see :func:`tiny_tokenizer`)."""
    from transformers import (AutoModelForCausalLM, Gemma2Config, GPT2Config, LlamaConfig)

    tok = tiny_tokenizer(add_bos)
    common = dict(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    if arch == "gpt2":
        cfg = GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=64, **common)
    elif arch == "llama":
        cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=2, max_position_embeddings=256, **common)
    elif arch == "gemma2":
        cfg = Gemma2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, head_dim=8, max_position_embeddings=256, sliding_window=16, **common)
    else:
        raise ValueError(arch)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
