"""Tiny random-weight causal LMs of the paper's architectures, saved locally (no hub needed)."""

from pathlib import Path

import torch

TEXTS = [
    "Return the sum of the numbers in the iterable.",
    "Open the file and return a stream; raise OSError on failure.",
    "The residual stream carries information between blocks of a transformer.",
    "Compute the inverse of a matrix with a Cholesky factorisation.",
] * 8


def tiny_tokenizer():
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(TEXTS, vocab_size=300, min_frequency=1, special_tokens=["<bos>", "<eos>"], show_progress=False)
    return PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<bos>", eos_token="<eos>")


def save_tiny(arch: str, path: Path, seed: int = 0) -> Path:
    """Save a 2-block, d_model=32 random model of ``arch`` ('gpt2', 'llama', 'gemma2') with a tokenizer."""
    from transformers import (AutoModelForCausalLM, Gemma2Config, GPT2Config, LlamaConfig)

    tok = tiny_tokenizer()
    common = dict(vocab_size=len(tok), bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    if arch == "gpt2":
        cfg = GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=64, **common)
    elif arch == "llama":
        cfg = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                          num_key_value_heads=2, max_position_embeddings=64, **common)
    elif arch == "gemma2":
        cfg = Gemma2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, head_dim=8, max_position_embeddings=64, sliding_window=16, **common)
    else:
        raise ValueError(arch)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
