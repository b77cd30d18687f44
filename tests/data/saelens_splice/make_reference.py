"""SAELens' own spliced-in scores on a tiny trained GPT-2, as a reference for atomsnb.splice.

Not part of the test suite (it needs ``sae-lens`` and ``transformer-lens``). Run once in the separate
environment described in ``tests/data/saelens/make_fixtures.py`` and commit the output::

    /tmp/saelens-venv/bin/python tests/data/saelens_splice/make_reference.py

Writes, next to this file:

- ``model/``: a 2-block GPT-2 (d_model 32, the tokenizer of ``tests/tiny_models.py``) fitted for 150 Adam
  steps to the tiny texts, saved with ``save_pretrained``;
- ``sae/``: a JumpReLU SAE (d_in 32, d_sae 96) for ``blocks.0.hook_resid_post`` (atomsnb layer 1), written by
  SAELens' ``save_model``: ``W_enc = [I, -I, R]``, ``W_dec = [I; -I; 0.1 R^T]`` with thresholds that cut small
  coordinates, so its reconstruction is partial;
- ``reference.json``: the token windows and SAELens' ``ce_loss_*`` / ``kl_div_*`` numbers, computed by
  ``sae_lens.evals.get_recons_loss`` on a TransformerLens ``HookedTransformer`` holding the same weights
  (``convert_gpt2_weights``), masked and averaged exactly as ``get_downstream_reconstruction_metrics``
  does, with ``ignore_tokens`` = the tokenizer's special ids (BOS 0, EOS 1: what ``run_evals`` passes for
  ``exclude_special_tokens=True``).
"""

import json
import sys
from pathlib import Path

import sae_lens
import torch
import transformer_lens
from importlib.metadata import version
from sae_lens import JumpReLUSAE, JumpReLUSAEConfig
from sae_lens.evals import get_recons_loss
from sae_lens.training.activation_scaler import ActivationScaler
from transformer_lens import HookedTransformer, HookedTransformerConfig
from transformer_lens.pretrained.weight_conversions.gpt2 import convert_gpt2_weights
from transformers import AutoModelForCausalLM, AutoTokenizer

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
from tiny_models import TEXTS, save_tiny  # noqa: E402


def train_model(path: Path):
    torch.manual_seed(0)
    save_tiny("gpt2", path, seed=0)
    tok, model = AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path)
    stream = []
    for t in TEXTS[:4]:
        stream += tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    stream = stream * 4
    w = torch.tensor([[tok.bos_token_id] + stream[i:i + 23] for i in range(0, len(stream) - 24, 7)])
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(150):
        loss = model(input_ids=w, labels=w).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    model.save_pretrained(path)
    return tok, model, stream


def main():
    torch.set_num_threads(1)
    print("sae_lens", sae_lens.__version__, "transformer_lens", version("transformer-lens"), "torch", torch.__version__)
    tok, hf, stream = train_model(HERE / "model")
    c = hf.config
    cfg = HookedTransformerConfig(n_layers=c.n_layer, d_model=c.n_embd, n_ctx=c.n_positions, d_head=c.n_embd // c.n_head,
                                  n_heads=c.n_head, d_mlp=4 * c.n_embd, d_vocab=c.vocab_size, act_fn="gelu_new",
                                  normalization_type="LN", eps=c.layer_norm_epsilon, positional_embedding_type="standard",
                                  original_architecture="GPT2LMHeadModel", default_prepend_bos=False)
    model = HookedTransformer(cfg)
    model.load_state_dict(convert_gpt2_weights(hf, cfg), strict=False)
    model.eval()

    d = c.n_embd
    g = torch.Generator().manual_seed(0)
    R = torch.randn(d, d, generator=g) / d ** 0.5
    sae = JumpReLUSAE(JumpReLUSAEConfig(d_in=d, d_sae=3 * d, apply_b_dec_to_input=False,
                                        metadata=sae_lens.saes.sae.SAEMetadata(hook_name="blocks.0.hook_resid_post")))
    with torch.no_grad():
        eye = torch.eye(d)
        sae.W_enc.copy_(torch.cat([eye, -eye, R], 1))
        sae.W_dec.copy_(torch.cat([eye, -eye, 0.1 * R.T], 0))
        sae.b_enc.zero_()
        sae.b_dec.zero_()
        sae.threshold.copy_(0.3 + 0.4 * torch.rand(3 * d, generator=g))
    sae.save_model(HERE / "sae")

    ids = []
    for t in TEXTS[:4] * 2:
        ids += tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    n_windows, seq_len = 4, 20
    body = torch.tensor(ids[3:3 + n_windows * (seq_len - 1)]).view(n_windows, seq_len - 1)
    tokens = torch.cat([torch.full((n_windows, 1), tok.bos_token_id), body], 1)
    ignore = sorted({tok.bos_token_id, tok.eos_token_id})

    with torch.no_grad():
        # TransformerLens and transformers compute the same clean logits (up to float32 rounding)
        gap = (model(tokens) - hf(input_ids=tokens).logits).abs().max().item()
        per_token = get_recons_loss(sae, model, ActivationScaler(), tokens, compute_kl=True, compute_ce_loss=True,
                                    ignore_tokens=ignore)
    # get_downstream_reconstruction_metrics' masking and averaging
    mask = ~torch.isin(tokens, torch.tensor(ignore))
    out = {}
    for name, value in per_token.items():
        m = mask if value.shape[1] == mask.shape[1] else mask[:, :-1]
        out[name] = value[m].mean().item()
        out[f"n_{name}"] = int(m.sum())
    out["kl_div_score"] = (out["kl_div_with_ablation"] - out["kl_div_with_sae"]) / out["kl_div_with_ablation"]
    out["ce_loss_score"] = (out["ce_loss_with_ablation"] - out["ce_loss_with_sae"]) / (
        out["ce_loss_with_ablation"] - out["ce_loss_without_sae"])
    ref = {"sae_lens_version": sae_lens.__version__, "transformer_lens_version": version("transformer-lens"),
           "layer": 1, "hook_name": "blocks.0.hook_resid_post", "ignore_tokens": ignore,
           "max_abs_logit_gap_transformer_lens_vs_transformers": gap, "tokens": tokens.tolist(), "metrics": out}
    (HERE / "reference.json").write_text(json.dumps(ref, indent=1))
    print(json.dumps(out, indent=1), "logit gap", gap)


if __name__ == "__main__":
    main()
