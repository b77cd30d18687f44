"""Spliced-in scores (atomsnb.splice) on tiny models, against exact properties and an independent implementation."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from tiny_models import TEXTS, save_tiny

from atomsnb.architecture import decoder_layers
from atomsnb.models import load_model
from atomsnb.splice import SCORE_NAMES, eval_windows, faithfulness_correlations, scores_table, special_token_ids, spliced_scores


# ------------------------------------------------------------------ unit sets for the tests
class Identity:
    """The neurons: the residual stream itself."""

    name = "neurons"

    def __init__(self, d_model=32):
        self.d_model = d_model

    def reconstruct(self, x):
        return x.to(torch.float64)


class Constant:
    """Reconstructs every token as the same vector (zeros by default)."""

    def __init__(self, value=None, d_model=32, name="zero"):
        self.value, self.d_model, self.name = value, d_model, name

    def reconstruct(self, x):
        out = torch.zeros(x.shape, dtype=torch.float64)
        return out if self.value is None else out + self.value


class Perturbed:
    """``x + sigma * rms(x) * sin(x R)``: a fixed, row-wise (so batching-independent) distortion."""

    def __init__(self, sigma, d_model=32, seed=0):
        self.sigma, self.d_model, self.name = sigma, d_model, f"perturbed {sigma}"
        self.R = torch.randn(d_model, d_model, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)

    def reconstruct(self, x):
        x = x.to(torch.float64)
        rms = x.pow(2).mean(-1, keepdim=True).sqrt()
        return x + self.sigma * rms * torch.sin(x @ self.R)


# ------------------------------------------------------------------ models and text
@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 2-block GPT-2 (d_model 32) fitted for 150 Adam steps to the four tiny texts: clean CE is low,
    so ablating its residual stream hurts (a random model's near-uniform predictions would not)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        path = save_tiny("gpt2", tmp_path_factory.mktemp("trained-gpt2"), seed=0)
        tok, model = AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path)
        stream = []
        for t in TEXTS[:4]:
            stream += tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        stream = stream * 4
        w = torch.tensor([[tok.bos_token_id] + stream[i:i + 23] for i in range(0, len(stream) - 24, 7)])
        torch.manual_seed(0)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        model.train()
        for _ in range(150):
            loss = model(input_ids=w, labels=w).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        model.save_pretrained(path)
        lm = load_model(str(path))
    finally:
        torch.set_num_threads(n)
    return lm


def _windows(tok, n_windows=3, seq_len=20, offset=0):
    """BOS + the tiny texts joined with EOS (so EOS sits inside windows), cut into windows."""
    ids = []
    for t in TEXTS[:4] * 2:
        ids += tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    body = torch.tensor(ids[offset:offset + n_windows * (seq_len - 1)]).view(n_windows, seq_len - 1)
    return torch.cat([torch.full((n_windows, 1), tok.bos_token_id), body], dim=1)


@pytest.fixture(scope="module")
def random_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("random-tiny")
    return {arch: load_model(str(save_tiny(arch, root / arch, seed=1))) for arch in ("gpt2", "llama", "gemma2")}


# ------------------------------------------------------------------ an independent reference implementation
def _reference(lm, fn, windows, layer, *, skip_ids, replace_skipped=False, norm_above=None):
    """Second implementation: a forward *pre*-hook on the module after block ``layer`` (the next block, or
    the final norm), a per-position loop for the replacement, and per-position float64 log-softmax loops
    for CE and KL. Returns (ce_clean, ce_new, kl_new, n_ce, n_kl)."""
    model = lm.model
    nxt = decoder_layers(model)[layer] if layer < lm.n_layers else model.transformer.ln_f
    keep = [[t > 0 and int(tok) not in skip_ids for t, tok in enumerate(row)] for row in windows.tolist()]
    if norm_above is not None:  # positions whose clean activation is larger stay clean and unscored
        seen = {}

        def record(module, a, kw):
            seen["h"] = (a[0] if a else kw["hidden_states"]).clone()

        handle = nxt.register_forward_pre_hook(record, with_kwargs=True)
        with torch.no_grad():
            model(input_ids=windows)
        handle.remove()
        for b in range(windows.shape[0]):
            for t in range(windows.shape[1]):
                if float(seen["h"][b, t].double().norm()) > norm_above:
                    keep[b][t] = False

    def pre_hook(module, args, kwargs):
        h = args[0] if args else kwargs["hidden_states"]
        h = h.clone()
        for b in range(h.shape[0]):
            for t in range(h.shape[1]):
                if keep[b][t] or replace_skipped:
                    h[b, t] = fn(h[b, t][None].clone())[0].to(h.dtype)
        if args:
            return (h,) + tuple(args[1:]), kwargs
        return args, {**kwargs, "hidden_states": h}

    with torch.no_grad():
        clean = model(input_ids=windows).logits.double()
        handle = nxt.register_forward_pre_hook(pre_hook, with_kwargs=True)
        try:
            new = model(input_ids=windows).logits.double()
        finally:
            handle.remove()
    ce_c = ce_n = kl = 0.0
    n_ce = n_kl = 0
    for b in range(windows.shape[0]):
        for t in range(windows.shape[1]):
            if not keep[b][t]:
                continue
            lp_c = clean[b, t] - torch.logsumexp(clean[b, t], 0)
            lp_n = new[b, t] - torch.logsumexp(new[b, t], 0)
            kl += float((lp_c.exp() * (lp_c - lp_n)).sum())
            n_kl += 1
            if t + 1 < windows.shape[1]:
                target = int(windows[b, t + 1])
                ce_c += float(-lp_c[target])
                ce_n += float(-lp_n[target])
                n_ce += 1
    return ce_c / n_ce, ce_n / n_ce, kl / n_kl, n_ce, n_kl


# ------------------------------------------------------------------ exact properties
@pytest.mark.parametrize("arch", ["gpt2", "llama", "gemma2"])
@pytest.mark.parametrize("layer", [1, 2])
def test_neurons_score_exactly_one_and_zero_kl(random_models, arch, layer, one_thread):
    lm = random_models[arch]
    w = _windows(lm.tokenizer)
    s = spliced_scores(lm, Identity(), w, layer, batch_size=2)
    assert s.ce_loss_with_sae == s.ce_loss_without_sae
    assert s.ce_loss_score == 1.0 and s.kl_div_with_sae == 0.0 and s.kl_div_score == 1.0
    assert s.ce_loss_with_ablation != s.ce_loss_without_sae  # the denominator is not 0: the test is meaningful


@pytest.mark.parametrize("layer", [1, 2])
def test_zero_reconstruction_scores_exactly_zero(trained, layer, one_thread):
    s = spliced_scores(trained, Constant(), _windows(trained.tokenizer), layer)
    assert s.ce_loss_with_sae == s.ce_loss_with_ablation
    assert s.ce_loss_score == 0.0 and s.kl_div_score == 0.0
    assert s.ce_loss_with_ablation > s.ce_loss_without_sae + 1  # ablation really hurts this model


@pytest.mark.parametrize("layer", [1, 2])
def test_perturbed_reconstruction_lies_strictly_between(trained, layer, one_thread):
    out = spliced_scores(trained, [Perturbed(0.5), Perturbed(2.0)], _windows(trained.tokenizer), layer, batch_size=2)
    for s in out.values():
        assert 0 < s.ce_loss_score < 1 and 0 < s.kl_div_score < 1
        assert s.ce_loss_without_sae < s.ce_loss_with_sae < s.ce_loss_with_ablation
        assert 0 < s.kl_div_with_sae < s.kl_div_with_ablation
    # more distortion, less faithful
    assert out["perturbed 2.0"].ce_loss_score < out["perturbed 0.5"].ce_loss_score


# ------------------------------------------------------------------ against the independent reference
@pytest.mark.parametrize("layer", [1, 2])
def test_matches_independent_reference(trained, layer, one_thread):
    tok = trained.tokenizer
    w = _windows(tok, n_windows=3, seq_len=20, offset=5)
    assert (w[:, 1:] == tok.eos_token_id).any()  # an EOS inside a window: skipped like BOS
    skip_ids = {tok.bos_token_id, tok.eos_token_id}
    units = Perturbed(1.0)
    s = spliced_scores(trained, units, w, layer, batch_size=2)
    ce_c, ce_n, kl_n, n_ce, n_kl = _reference(trained, units.reconstruct, w, layer, skip_ids=skip_ids)
    _, ce_z, kl_z, _, _ = _reference(trained, lambda x: torch.zeros_like(x), w, layer, skip_ids=skip_ids)
    # float32 log-softmax in the implementation vs float64 here, on the same float32 logits
    assert (s.n_tokens, s.n_tokens_kl) == (n_ce, n_kl)
    for got, want in [(s.ce_loss_without_sae, ce_c), (s.ce_loss_with_sae, ce_n), (s.ce_loss_with_ablation, ce_z),
                      (s.kl_div_with_sae, kl_n), (s.kl_div_with_ablation, kl_z)]:
        assert got == pytest.approx(want, rel=1e-5, abs=1e-6)
    assert s.ce_loss_score == pytest.approx((ce_z - ce_n) / (ce_z - ce_c), rel=1e-5)
    assert s.kl_div_score == pytest.approx((kl_z - kl_n) / kl_z, rel=1e-5)


@pytest.mark.parametrize("layer", [1, 2])
def test_massive_positions_stay_clean_and_unscored(trained, layer, one_thread):
    from atomsnb.activations import capture_residual_stream

    tok = trained.tokenizer
    w = _windows(tok, n_windows=3, seq_len=20, offset=5)
    norms = capture_residual_stream(trained, w, [layer])[layer].double().norm(dim=-1)
    thr = float(norms[:, 1:].median())  # half of the positions count as "massive"
    skip_ids = {tok.bos_token_id, tok.eos_token_id}
    units = Perturbed(1.0)
    s = spliced_scores(trained, units, w, layer, batch_size=2, keep_clean_above=thr)
    full = spliced_scores(trained, units, w, layer, batch_size=2)
    ce_c, ce_n, kl_n, n_ce, n_kl = _reference(trained, units.reconstruct, w, layer, skip_ids=skip_ids, norm_above=thr)
    _, ce_z, kl_z, _, _ = _reference(trained, lambda x: torch.zeros_like(x), w, layer, skip_ids=skip_ids, norm_above=thr)
    assert (s.n_tokens, s.n_tokens_kl) == (n_ce, n_kl) and n_ce < full.n_tokens
    for got, want in [(s.ce_loss_without_sae, ce_c), (s.ce_loss_with_sae, ce_n), (s.ce_loss_with_ablation, ce_z),
                      (s.kl_div_with_sae, kl_n), (s.kl_div_with_ablation, kl_z)]:
        assert got == pytest.approx(want, rel=1e-5, abs=1e-6)
    with pytest.raises(ValueError, match="keep_clean_above must be None or a finite norm > 0"):
        spliced_scores(trained, units, w, layer, keep_clean_above=-1.0)
    with pytest.raises(ValueError, match="nothing was spliced"):
        spliced_scores(trained, units, w, layer, keep_clean_above=1e-9)


def test_counts_follow_saelens_masking(trained):
    tok = trained.tokenizer
    w = _windows(tok, n_windows=3, seq_len=20, offset=5)
    special = torch.isin(w, torch.tensor([tok.bos_token_id, tok.eos_token_id]))
    s = spliced_scores(trained, Identity(), w, 1)
    # KL: every non-special position; CE: every non-special position that has a next token
    assert s.n_tokens_kl == int((~special).sum())
    assert s.n_tokens == int((~special[:, :-1]).sum())
    assert special_token_ids(tok) == sorted({tok.bos_token_id, tok.eos_token_id})
    # exclude_special_tokens=False: only position 0 is skipped
    s_all = spliced_scores(trained, Identity(), w, 1, exclude_special_tokens=False)
    assert s_all.n_tokens == 3 * 18 and s_all.n_tokens_kl == 3 * 19


def test_ablate_special_tokens_reproduces_saelens_zero_ablation(trained, one_thread):
    tok = trained.tokenizer
    w = _windows(tok)
    skip_ids = {tok.bos_token_id, tok.eos_token_id}
    s = spliced_scores(trained, Constant(), w, 1, ablate_special_tokens=True)
    _, ce_z_all, kl_z_all, _, _ = _reference(trained, lambda x: torch.zeros_like(x), w, 1, skip_ids=skip_ids,
                                             replace_skipped=True)
    assert s.ce_loss_with_ablation == pytest.approx(ce_z_all, rel=1e-5)
    assert s.kl_div_with_ablation == pytest.approx(kl_z_all, rel=1e-5)
    # zeroing BOS too is a different (worse) baseline than the splice's, so the zero splice no longer scores 0
    assert s.ce_loss_with_ablation != s.ce_loss_with_sae and s.ce_loss_score != 0.0


def test_mean_ablation_replaces_with_the_mean(trained, one_thread):
    g = torch.Generator().manual_seed(0)
    acts = torch.randn(50, 32, generator=g, dtype=torch.float64) * 3 + 1
    m = acts.mean(0)
    w = _windows(trained.tokenizer)
    s = spliced_scores(trained, Constant(value=m, name="the mean"), w, 2, ablation="mean", ablation_activations=acts)
    assert s.ablation == "mean"
    assert s.ce_loss_with_sae == s.ce_loss_with_ablation and s.ce_loss_score == 0.0
    z = spliced_scores(trained, Constant(), w, 2)
    assert z.ce_loss_with_ablation != s.ce_loss_with_ablation


def test_batching_does_not_change_the_scores(trained, one_thread):
    w = _windows(trained.tokenizer, n_windows=4)
    a = spliced_scores(trained, Perturbed(1.0), w, 2, batch_size=1)
    b = spliced_scores(trained, Perturbed(1.0), w, 2, batch_size=3)
    for name in SCORE_NAMES:
        assert getattr(a, name) == pytest.approx(getattr(b, name), rel=1e-6, abs=1e-9)
    assert (a.n_tokens, a.n_tokens_kl) == (b.n_tokens, b.n_tokens_kl)


def test_many_unit_sets_share_the_clean_and_ablated_passes(trained):
    w = _windows(trained.tokenizer)
    many = spliced_scores(trained, {"id": Identity(), "p": Perturbed(1.0)}, w, 1)
    one = spliced_scores(trained, Perturbed(1.0), w, 1)
    assert many["p"] == one
    t = scores_table(many)
    assert list(t["unit set"]) == ["id", "p"] and set(SCORE_NAMES) <= set(t.columns)


def test_eval_windows_are_the_eval_activations_windows(random_models):
    from atomsnb.activations import ActivationConfig, collect_activations

    lm = random_models["gpt2"]
    w = eval_windows(lm, corpus="docstrings", n_tokens=300, seq_len=16, seed=3)
    acts = collect_activations(ActivationConfig(model=lm.path, layers=(1,), split="eval", n_tokens=300, seq_len=16,
                                                seed=3), model=lm, cache=False, progress=False)
    assert torch.equal(w, acts.windows)
    assert (w[:, 0] == lm.tokenizer.bos_token_id).all()


# ------------------------------------------------------------------ which metric predicts faithfulness
def _brute_spearman(a, b):
    """Spearman by hand: average ranks by counting, then Pearson."""
    def ranks(v):
        v = list(v)
        return [sum(1 for u in v if u < x) + (sum(1 for u in v if u == x) + 1) / 2 for x in v]
    ra, rb = np.array(ranks(a)), np.array(ranks(b))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / math.sqrt((ra ** 2).sum() * (rb ** 2).sum()))


def test_faithfulness_verdict_names_the_better_predictor():
    rng = np.random.default_rng(0)
    ce = np.linspace(0.2, 0.99, 12)
    t = pd.DataFrame({"ce_loss_score": ce, "r2_aip": ce ** 2 + 0.001 * rng.standard_normal(12),
                      "explained_variance": rng.permutation(ce)})
    v = faithfulness_correlations(t)
    assert v.n == 12
    assert v.rho["r2_aip"] == pytest.approx(_brute_spearman(t["ce_loss_score"], t["r2_aip"]), abs=1e-12)
    assert v.rho["explained_variance"] == pytest.approx(_brute_spearman(t["ce_loss_score"], t["explained_variance"]),
                                                        abs=1e-12)
    assert v.winner == "r2_aip" and v.ci[0] > 0
    assert "R²_AIP predicts downstream faithfulness better than explained variance" in v.sentence
    assert f"{v.rho['r2_aip']:+.2f}" in v.sentence and "12 unit sets" in v.sentence
    # the other way round
    t2 = t.rename(columns={"r2_aip": "explained_variance", "explained_variance": "r2_aip"})
    assert faithfulness_correlations(t2).winner == "explained_variance"
    # deterministic
    assert faithfulness_correlations(t).ci == v.ci


def test_faithfulness_verdict_tie_and_too_small():
    ce = np.linspace(0.1, 0.9, 8)
    t = pd.DataFrame({"ce_loss_score": ce, "r2_aip": ce * 2, "explained_variance": ce - 5})
    v = faithfulness_correlations(t)
    assert v.rho == {"r2_aip": 1.0, "explained_variance": 1.0} and v.winner is None
    assert "neither predicts downstream faithfulness clearly better" in v.sentence
    small = pd.DataFrame({"ce_loss_score": [0.1, 0.5, 0.9, np.nan], "r2_aip": [0.2, 0.4, 0.8, 0.9],
                          "explained_variance": [0.3, 0.1, 0.2, 0.5]})
    v = faithfulness_correlations(small)
    assert v.n == 3 and v.winner is None and "too few (fewer than 5)" in v.sentence and "Only 3 unit sets" in v.sentence


# ------------------------------------------------------------------ against SAELens itself
def test_matches_saelens_get_recons_loss():
    """SAELens 6.54.12's get_recons_loss on a TransformerLens copy of a tiny trained GPT-2 with a JumpReLU SAE
    (tests/data/saelens_splice/make_reference.py). SAELens' zero ablation zeroes BOS too: ablate_special_tokens=True.
    The two GPT-2 implementations' logits differ by float32 rounding only (recorded in reference.json)."""
    import json
    from pathlib import Path

    from atomsnb.external import load_saelens

    here = Path(__file__).resolve().parent / "data" / "saelens_splice"
    ref = json.loads((here / "reference.json").read_text())
    assert ref["max_abs_logit_gap_transformer_lens_vs_transformers"] < 1e-5
    lm = load_model(str(here / "model"))
    sae = load_saelens(here / "sae")
    assert sae.layer == ref["layer"] == 1
    s = spliced_scores(lm, sae, torch.tensor(ref["tokens"]), sae.layer, ablate_special_tokens=True)
    m = ref["metrics"]
    for name in SCORE_NAMES:
        assert getattr(s, name) == pytest.approx(m[name], rel=1e-6, abs=1e-7), name
    assert s.n_tokens == m["n_ce_loss_with_sae"] and s.n_tokens_kl == m["n_kl_div_with_sae"]
    # the default keeps BOS in the ablation too; only the ablation baseline moves
    d = spliced_scores(lm, sae, torch.tensor(ref["tokens"]), 1)
    assert d.ce_loss_with_sae == s.ce_loss_with_sae and d.ce_loss_with_ablation != s.ce_loss_with_ablation


def test_ce_loss_score_scatter_shows_the_verdicts_correlations():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from atomsnb.plots import ce_loss_score_scatter

    t = pd.DataFrame({"family": ["neurons"] + ["features"] * 3 + ["atoms"] * 3,
                      "ce_loss_score": [1, .6, .7, .8, .9, .93, np.nan], "r2_aip": [1, .3, .5, .7, .9, .95, .99],
                      "explained_variance": [1, .8, .85, .9, .7, .75, .8]})
    v = faithfulness_correlations(t, min_n=3)
    axes = ce_loss_score_scatter(t, verdict=v)
    assert [ax.get_title() for ax in axes] == [f"Spearman ρ = {v.rho['r2_aip']:+.2f} (n = 6)",
                                               f"Spearman ρ = {v.rho['explained_variance']:+.2f} (n = 6)"]
    assert sum(len(c.get_offsets()) for c in axes[0].collections) == 6  # the NaN row is not drawn
    plt.close("all")
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['r2_aip'\]"):
        ce_loss_score_scatter(t.drop(columns="r2_aip"))
