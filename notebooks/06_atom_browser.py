# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#   kernelspec:
#     display_name: atomsnb
#     language: python
#     name: atomsnb
# ---

# %% [markdown]
# # Atom browser
#
# Tables of $R^2$ and $q^*$ say how a unit set behaves as a whole. This chapter shows its units one by one, as
# Neuronpedia and `sae-dashboard` show the latents of published SAEs: for each of a sample of units of chapter 2's
# three unit sets (the residual-stream dimensions or "neurons", the features of a standard SAE, the atoms of a TSAE,
# trained on the same docstring activations), a card with
#
# - its **top-activating contexts** in held-out docstrings, one per window, every token shaded by the unit's activation
#   there (the peak token outlined; hover a token for its value);
# - a **histogram** of its positive activations and its **firing frequency** (the share of held-out tokens on which its
#   code is > 0; for neurons, signed, that is the positive half);
# - the output tokens its decoder direction **promotes and suppresses** through the model's unembedding (the logit
#   lens, below);
# - its **contribution to $q^*$**: $q^*$ of the set minus $q^*$ of the set without the unit, on the same held-out
#   tokens.
#
# No claim of the paper is tested here: the chapter is a tool for reading units. Each page is one static HTML file
# (inline style and script, the records embedded as JSON): it needs no server and no network, so it works offline and
# on the published book. A search box filters the cards by their tokens and contexts; a menu sorts them by firing
# frequency or by $q^*$ contribution.
#
# ```{admonition} Why not sae-dashboard
# :class: note
# `sae-dashboard` (PyPI, 0.8) builds such pages from a TransformerLens model and a SAELens SAE: it depends on
# `sae-lens`, `transformer-lens`, `datasets`, `decode-clt` and `hf-transfer`, and pins `transformers<4.57` (this
# project runs 5.x). It expects models and SAEs by hub name, and its pages load their JavaScript from a CDN. This
# chapter builds lean pages from the package's own contexts code (`atomsnb.browser`) instead.
# ```

# %% tags=["parameters"]
model = "smollm2-135m"  # registered name, local directory or hub id
layer = 15  # residual stream after this block (SmolLM2 has 30)
corpus = "docstrings"  # S is fitted and the SAEs trained on its fit split; the pages read its eval split
n_fit_tokens = 30_000  # fit S and train the SAEs (as chapter 2, so its SAEs are reused)
n_eval_tokens = 8_000  # held-out activations: contexts, frequencies, histograms and q*
capacity = 4  # dictionary size in units of d_model (paper: 4)
n_steps = 150  # SAE training steps (as chapter 2)
batch_size = 1024  # tokens per step (as chapter 2)
l1_coefficient = 0.03  # standard SAE (features): one of chapter 2's L1 coefficients
l0_coefficient = 0.003  # TSAE (atoms): one of chapter 2's L0 coefficients
massive_k = 20.0  # leave out tokens whose norm exceeds massive_k x the median (see chapter 1); None keeps all
n_units = 64  # units per page, drawn at random (seeded) among those active in at least k windows
k = 8  # top contexts per unit, from k different windows
width_left = 12  # context tokens shown before the peak token
width_right = 4  # ... and after it
n_bins = 24  # histogram bins
n_logits = 10  # logit-lens tokens per side
seed = 0
device = "cpu"
dtype = "float32"
threads = 1  # torch CPU threads (as chapter 2, whose cached SAEs were trained with 1); None: torch's default

# %%
import os
import time
from pathlib import Path

import torch
from IPython.display import HTML, display

from atomsnb import browser, evaluation, pipeline, units
from atomsnb.sae import SAEConfig

if threads:
    torch.set_num_threads(threads)
CHAPTER = "06_atom_browser"
# Where the pages go: the book's static files in a `make book` run (the Makefile sets ATOMSNB_BROWSER_DIR), else
# $ATOMSNB_BUILD/browser. The chapter page links them at ../../_static/browser/ (where the book serves them).
PAGES = Path(os.environ.get("ATOMSNB_BROWSER_DIR") or Path(os.environ.get("ATOMSNB_BUILD", "build")) / "browser")

# %% [markdown]
# ## Three unit sets
#
# As in chapter 5: $S$ is fitted on the docstring training activations and the SAEs are trained on them exactly as in
# chapter 2, so when chapter 2 has run with the same data, settings and code its trained SAEs are loaded from the
# cache (the line below says which). Massive tokens (chapter 1) are left out, like the BOS token; on the pages they
# have code zero.

# %%
data = pipeline.layer_data(model, layer, corpus, n_fit_tokens, n_eval_tokens, seed, device, dtype, massive_k=massive_k)
lm = data.lm
print(data.describe(capacity * data.d_model))

# %% tags=["nbval-ignore-output"]
config = SAEConfig.for_model(data.d_model, n_steps=n_steps, batch_size=batch_size, capacity=capacity, seed=seed,
                             device=device)
specs = [units.UnitSetSpec.neurons(), units.UnitSetSpec.features(l1_coefficient, "features"),
         units.UnitSetSpec.atoms(l0_coefficient, "atoms")]
results = evaluation.compare_unit_sets(data.fit, data.eval, data.aip, specs, config, n_train_eval=0, progress=False)
print(results.summary())

# %%
evaluation.reader_table(results.table)

# %% [markdown]
# ## The logit lens
#
# A unit's decoder direction $d_j$ (its dictionary column, raw coordinates) is read through the model's output: the
# logits of the final residual $h$ are $W_U\,\mathrm{norm}(h)$, and the linear part of that in the direction $d_j$ is
#
# $$
# \ell_j = W_U \left(g \odot P\,\frac{d_j}{\lVert d_j\rVert}\right),
# $$
#
# with $g$ the final norm's effective gain (for an RMSNorm its weight; Gemma's RMSNorm multiplies by $1 + w$, so $g$ is
# read off the module by applying it to a constant vector) and $P$ the centring of a LayerNorm (the identity for an
# RMSNorm, as here). The norm also divides by the residual's RMS, one positive number per token, which changes no
# ranking. The cards list the tokens with the largest (promoted) and smallest (suppressed) $\ell_j$. The direction is
# read at layer `layer`, not at the last layer: later blocks still act on it, so the lens is what the unit would write
# if nothing came after it.
#
# ## The contribution to $q^*$
#
# $q^*$ is a property of the whole set ({ref}`theory-atoms`): the largest share $q$ of tokens for which the
# $q$-quantile of the pairwise coherence stays below the uniqueness bound of the $q$-quantile of the support size. A
# unit's contribution is what removing it changes: $\Delta_j = q^*(D) - q^*(D \setminus \{j\})$ on the same held-out
# codes. Removing a unit takes its pairs out of the coherence sample and lowers the support size of every token it
# fires on; $\Delta_j > 0$ means the set is less stable without it, $\Delta_j < 0$ more. It is computed exactly
# (`atomsnb.browser.q_star_contributions`, tested against $q^*$ of the dictionary with the column deleted), not
# linearised.

# %% tags=["nbval-ignore-output"]
pages, seconds = {}, {}
for name, unit_set in results.units.items():
    t0 = time.perf_counter()
    pages[name] = browser.browser_data(
        unit_set, data.eval, data.eval_activations, data.eval_rows, lm, data.aip, n_units=n_units, k=k,
        width_left=width_left, width_right=width_right, n_bins=n_bins, n_logits=n_logits, seed=seed, layer=layer,
        source=f"Contexts: held-out {corpus} (eval split) at layer {layer} of {lm.name}.")
    seconds[name] = time.perf_counter() - t0
print("records: " + ", ".join(f"{n} {s:.1f} s" for n, s in seconds.items()))

# %%
held = results.table[results.table["split"] == "held-out"].set_index("unit set")
for name, page in pages.items():  # the pages' q* is the table's: same codes, same estimator
    assert abs(page.q_star - held.loc[name, "q_star"]) < 1e-12, (name, page.q_star, held.loc[name, "q_star"])
browser.summary_reader_table(pages)

# %%
print("\n".join(browser.describe(pages)))

# %% [markdown]
# ## The pages

# %% tags=["nbval-ignore-output"]
PAGES.mkdir(parents=True, exist_ok=True)
for name, page in pages.items():
    text = browser.render_page(page)
    (PAGES / f"{name}.html").write_text(text, encoding="utf-8")
    print(f"{name}.html: {len(text.encode()) / 1e3:,.0f} kB, {len(page.units)} units")
display(HTML("<p>Open a page: " + " &middot; ".join(
    f"<a href='../../_static/browser/{name}.html'>{name} ({len(page.units)} units)</a>" for name, page in pages.items())
    + "</p><iframe src='../../_static/browser/atoms.html' title='atom browser: atoms' "
      "style='width: 100%; height: 720px; border: 1px solid #ccc'></iframe>"))

# %% [markdown]
# ## Reading the pages
#
# The units on each page are a random sample (seeded) of the units active in at least `k` held-out windows, not a
# selection of good ones; sorting by $q^*$ contribution puts first the units the set's stability rests on. The
# contexts are docstrings, the text the SAEs were trained on (its held-out split): chapter 5 reads the units on prose
# they were not trained on.
#
# What would change the pages: longer training (`-p n_fit_tokens 200000 -p n_steps 4000`, run in chapter 2 first so
# that its SAEs are reused), another layer (`-p layer 6`), other sparsity coefficients, more units per page
# (`-p n_units 200`), or another model (`-p model gemma3-270m`).
