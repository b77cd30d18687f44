"""The atom browser (atomsnb.browser): the logit lens against the model's own head, q* contributions against q* of
the dictionary without the unit, the records against direct counts, and the page against an HTML parser."""

import json

import pytest
import torch
from bs4 import BeautifulSoup
from tiny_models import save_tiny

from atomsnb import browser as B
from atomsnb.activations import ActivationConfig, collect_activations
from atomsnb.aip import AIP
from atomsnb.metrics import q_star
from atomsnb.models import load_model
from atomsnb.units import Neurons


@pytest.fixture(scope="module", params=["gpt2", "llama", "gemma2"])
def tiny_lm(request, tmp_path_factory):
    lm = load_model(str(save_tiny(request.param, tmp_path_factory.mktemp(request.param))), verbose=False)
    norm = lm.model.transformer.ln_f if request.param == "gpt2" else lm.model.model.norm
    with torch.no_grad():  # a gain far from 1, so that w and 1 + w (Gemma) and a missing gain all differ
        norm.weight.copy_(torch.randn(norm.weight.shape, generator=torch.Generator().manual_seed(1)))
        if getattr(norm, "bias", None) is not None:
            norm.bias.copy_(torch.randn(norm.bias.shape, generator=torch.Generator().manual_seed(2)))
    return request.param, lm, norm


def test_logit_lens_matches_the_models_own_norm_and_head(tiny_lm):
    arch, lm, norm = tiny_lm
    d = torch.randn(32, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    lens = B.logit_lens(lm.model, d, k=7)
    head = lm.model.get_output_embeddings()
    eps = getattr(norm, "eps", None) or norm.variance_epsilon
    for i in range(5):
        u = (d[:, i] / d[:, i].norm()).float()[None]
        with torch.no_grad():
            if arch == "gpt2":  # LayerNorm: (ln(u) - b) * sqrt(var(u) + eps) = (u - mean u) * w
                lin = (norm(u) - norm.bias) * (u.var(unbiased=False) + eps).sqrt()
            else:  # RMSNorm: norm(u) * rms(u) = g * u, whatever g is (w, or 1 + w for Gemma)
                lin = norm(u) * (u.pow(2).mean() + eps).sqrt()
            ref = head(lin)[0].double()
        assert lens.promoted_ids[i].tolist() == torch.topk(ref, 7).indices.tolist()
        assert lens.suppressed_ids[i].tolist() == torch.topk(-ref, 7).indices.tolist()
        torch.testing.assert_close(lens.promoted[i], ref[lens.promoted_ids[i]], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(lens.suppressed[i], ref[lens.suppressed_ids[i]], rtol=1e-4, atol=1e-5)
    assert ("LayerNorm" in lens.how) == (arch == "gpt2")


def test_logit_lens_bad_input_is_named(tiny_lm):
    _, lm, _ = tiny_lm
    with pytest.raises(ValueError, match=r"directions must be \[d_model=32"):
        B.logit_lens(lm.model, torch.ones(31, 2))
    with pytest.raises(ValueError, match="direction 1 is zero"):
        B.logit_lens(lm.model, torch.cat([torch.ones(32, 1), torch.zeros(32, 1)], 1))
    with pytest.raises(ValueError, match="k must be an integer >= 1; got 0"):
        B.logit_lens(lm.model, torch.ones(32, 1), k=0)


def _sparse_problem(seed: int, d: int = 8, n_latents: int = 20, n_tokens: int = 400, p: float = 0.12):
    g = torch.Generator().manual_seed(seed)
    aip = AIP.fit(torch.randn(n_tokens, d, generator=g, dtype=torch.float64) * torch.linspace(0.5, 2, d))
    D = torch.randn(d, n_latents, generator=g, dtype=torch.float64)
    codes = torch.rand(n_tokens, n_latents, generator=g, dtype=torch.float64)
    codes = codes * (torch.rand(n_tokens, n_latents, generator=g) < p)
    codes[:, 3] = 0  # a dead unit
    return codes, D, aip


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_q_star_contributions_equal_q_star_without_the_unit(seed):
    codes, D, aip = _sparse_problem(seed, p=[0.05, 0.12, 0.2, 0.3][seed])
    units = list(range(codes.shape[1]))
    got = B.q_star_contributions(codes, D, aip, units, block_size=7)  # blocks that cut rows and the diagonal
    full = q_star(codes, D, aip).q_star
    assert got.q_star == pytest.approx(full, abs=1e-12)
    for j in units:
        keep = [c for c in units if c != j]
        without = q_star(codes[:, keep], D[:, keep], aip).q_star
        assert got.without[j] == pytest.approx(without, abs=1e-12), j
        assert got.contributions[j] == pytest.approx(full - without, abs=1e-12), j
    assert got.contributions[3] == 0
    assert (got.contributions != 0).any(), "a test where no unit matters tests nothing"


def test_q_star_contributions_bad_units():
    codes, D, aip = _sparse_problem(0)
    with pytest.raises(ValueError, match="unit 20 is out of range: allowed integers 0..19"):
        B.q_star_contributions(codes, D, aip, [0, 20])
    with pytest.raises(ValueError, match=r"dictionary must be \[d_model, n_latents=20\]"):
        B.q_star_contributions(codes, D[:, :5], aip, [0])


@pytest.fixture(scope="module")
def neuron_data(tmp_path_factory):
    path = save_tiny("llama", tmp_path_factory.mktemp("llama-data"), add_bos=False)
    lm = load_model(str(path), verbose=False)
    acts = collect_activations(ActivationConfig(model=str(path), layers=(1,), split="eval", n_tokens=700, seq_len=16),
                               model=lm, cache=False, progress=False)
    x_all = acts.acts[1]
    rows = torch.arange(0, len(x_all), 3)  # keep every sixth token: the others are left out, as massive tokens are
    rows = rows[rows % 2 == 0]
    aip = AIP.fit(x_all)
    units = Neurons(32)
    data = B.browser_data(units, x_all[rows], acts, rows, lm, aip, n_units=10, k=3, width_left=4, width_right=2,
                          n_bins=8, n_logits=5, seed=0, source="tiny test text", layer=1)
    return data, acts, x_all, rows, lm, aip, units


def test_browser_data_against_direct_counts(neuron_data):
    data, acts, x_all, rows, lm, aip, units = neuron_data
    x = x_all[rows]
    assert data.n_tokens == len(rows) and data.n_latents == 32 and len(data.units) == 10
    assert [u.unit for u in data.units] == sorted(u.unit for u in data.units)
    kept = torch.zeros(len(x_all), dtype=torch.bool)
    kept[rows] = True
    where = {(int(w), int(p)): r for r, (w, p) in enumerate(zip(acts.window, acts.position))}
    for u in data.units:
        col = x[:, u.unit]
        assert u.n_active == int((col > 0).sum()) and u.frequency == pytest.approx(float((col > 0).float().mean()))
        assert sum(u.histogram) == u.n_active and len(u.histogram) == 8
        assert u.max_activation == pytest.approx(float(col.max()), abs=1e-4)
        assert len(u.contexts) == 3 and len(u.promoted) == 5 and len(u.suppressed) == 5
        peaks = [c[p][1] for c, p in zip(u.contexts, u.peaks)]
        assert peaks == sorted(peaks, reverse=True) and peaks[0] == pytest.approx(float(col.max()), abs=1e-4)
        assert len({w for w, _ in u.origins}) == len(u.origins), "one context per window"
        # every shaded token's activation is the unit's signed code there (0 where the token was left out)
        for c, p, (w, pos) in zip(u.contexts, u.peaks, u.origins):
            for j, (tok, a) in enumerate(c):
                r = where.get((w, pos - p + j))
                want = float(x_all[r, u.unit]) if r is not None and kept[r] else 0.0
                assert a == pytest.approx(want, abs=1e-4)
                assert tok == lm.tokenizer.decode([int(acts.windows[w, pos - p + j])])
    contrib = B.q_star_contributions(units.codes(x), units.dictionary, aip, [u.unit for u in data.units])
    assert [u.q_star_contribution for u in data.units] == pytest.approx(contrib.contributions.tolist())
    assert data.q_star == pytest.approx(q_star(units.codes(x), units.dictionary, aip).q_star)


def test_browser_data_bad_input_before_work(neuron_data):
    _, acts, x_all, rows, lm, aip, units = neuron_data
    x = x_all[rows]
    with pytest.raises(ValueError, match="k must be an integer >= 1; got 0"):
        B.browser_data(units, x, acts, rows, lm, aip, k=0)
    with pytest.raises(ValueError, match=r"x must be \[n_tokens="):
        B.browser_data(units, x[:-1], acts, rows, lm, aip)
    with pytest.raises(ValueError, match="unit 32 is out of range: allowed integers 0..31"):
        B.browser_data(units, x, acts, rows, lm, aip, units=[0, 32])
    with pytest.raises(TypeError, match="must be a UnitSet"):
        B.browser_data("atoms", x, acts, rows, lm, aip)


def test_page_parses_and_holds_every_unit(neuron_data):
    data = neuron_data[0]
    page = B.render_page(data)
    soup = BeautifulSoup(page, "html.parser")
    cards = soup.select(".card")
    assert [int(c["data-unit"]) for c in cards] == [u.unit for u in data.units]
    for card, u in zip(cards, data.units):
        assert len(card.select(".ctx")) == len(u.contexts) and card.select("svg.hist rect")
        assert len(card.select(".lens td.pos")) == len(u.promoted)
        assert float(card["data-contribution"]) == pytest.approx(u.q_star_contribution, abs=1e-6)
        assert float(card["data-frequency"]) == pytest.approx(u.frequency, rel=1e-5)
    embedded = json.loads(soup.find("script", id="atomsnb-data").string)
    assert embedded["units"][0]["unit"] == data.units[0].unit and len(embedded["units"]) == len(data.units)
    assert not soup.find_all(src=True), "the page must load nothing"
    assert [link["href"] for link in soup.find_all("link")] == ["data:,"], "not even a favicon"


def test_shade_levels():
    levels = [B.shade(a, 2.0) for a in (-1.0, 0.0, 1e-6, 0.2, 0.21, 1.0, 1.99, 2.0, 3.0)]
    assert levels == [0, 0, 1, 1, 2, 5, 10, 10, 10]
    assert B.shade(1.0, 0.0) == 0


def test_page_highlight_strength_and_escaping():
    rec = B.UnitRecord(unit=7, frequency=0.25, n_active=5, max_activation=2.0, q_star_contribution=-0.01,
                       contexts=[[["<script>", 0.0], ["</script><b>", 1.0], [" x", 2.0]]], peaks=[2],
                       histogram=[1, 4], promoted=[["<i>", 1.5], [" the", 1.0]],
                       suppressed=[["&", -1.0], ["\n", -2.0]])
    data = B.BrowserData("atoms", "m", 3, "src", 20, 64, 0.5, "W_U d", [rec])
    page = B.render_page(data)
    soup = BeautifulSoup(page, "html.parser")
    spans = soup.select(".ctx span")
    assert [s.get_text() for s in spans] == ["<script>", "</script><b>", " x"]
    assert not spans[0].get("class") and not spans[0].get("title")  # activation 0: unshaded
    assert spans[1]["class"] == ["s5"] and spans[2]["class"] == ["s10", "peak"] and spans[1]["title"] == "1"
    assert ".s5{background:rgba(255,140,0,0.5)}" in page and ".s10{background:rgba(255,140,0,1.0)}" in page
    assert [t.get_text() for t in soup.select(".lens td.pos, .lens td.neg")] == ["<i>", "&", "␣the", "⏎"]
    assert len(soup.find_all("script")) == 2 and soup.find("i") is None and soup.find("b", string=None) is not None
    with pytest.raises(TypeError, match="must be a BrowserData"):
        B.render_page({"units": []})


def test_summary_and_sentences_against_counts():
    recs = [B.UnitRecord(unit=i, frequency=f, n_active=1, max_activation=1.0, q_star_contribution=c)
            for i, (f, c) in enumerate([(0.1, 0.02), (0.2, 0.0), (0.3, -0.01), (0.4, 0.05)])]
    pages = {"atoms": B.BrowserData("atoms", "m", 1, "", 100, 40, 0.75, "", recs),
             "neurons": B.BrowserData("neurons", "m", 1, "", 100, 8, 0.0, "", recs[1:2])}
    t = B.summary_table(pages)
    assert t.loc["atoms", ["q* contribution > 0", "q* contribution = 0", "q* contribution < 0"]].tolist() == [2, 1, 1]
    assert t.loc["atoms", "largest q* contribution"] == 0.05 and t.loc["atoms", "median firing frequency (%)"] == 25.0
    assert t.loc["atoms", "rank correlation (frequency, contribution)"] == pytest.approx(0.2)  # 1 - 6 * 8 / 60
    r = B.summary_reader_table(pages)
    assert r.loc["atoms", "units shown"] == "4 of 40" and r.loc["atoms", "q* contributions > 0 / = 0 / < 0"] == "2 / 1 / 1"
    assert len(r.columns) == 6  # narrow enough for the book's column (tests/test_book_browser.py measures it)
    text = B.describe(pages)
    assert text[0].startswith("atoms (q* = 0.7500): of the 4 units shown (of 40), the q* contribution is > 0 for 2, "
                              "0 for 1 and < 0 for 1; the largest is +0.05;")
    assert "rho = +0.20" in text[0]
    assert "> 0 for 0, 0 for 1 and < 0 for 0" in text[1] and "undefined" in text[1] and "largest" not in text[1]
    with pytest.raises(TypeError, match="pages must be a non-empty mapping"):
        B.summary_table({})
