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
# # Atoms of real models, layer by layer
#
# **The paper's claim** (Hu et al., §6; the paper's numbers): TSAE atoms with $\lvert D\rvert = 4H$, averaged over
# layers, are both faithful and stable:

# %% tags=["remove-input"]
from atomsnb import paper

paper.paper_atoms_table()

# %% [markdown]
# **What this chapter does.** For each of the book's two real LLMs (SmolLM2-135M and Gemma 3 270M, {doc}`../models`;
# far smaller than the paper's models, whose sizes the table below shows) it runs, at several layers, the comparison of chapter 2: neurons,
# standard-SAE features and TSAE atoms, trained on the same activations and evaluated on held-out ones, and each
# also spliced into the model (`ce_loss_score`); with them TopK SAEs (Euclidean and in AIP coordinates) at $k$ equal to
# the atoms' L0 at that layer, so that the two ways of getting sparse codes meet at the same sparsity. Every layer is one row in a resumable results store
# (`atomsnb.runner`); the activations come from the activation stores of {mod}`atomsnb.store`. The rows are averaged
# into the paper's table format, beside the paper's own rows. The book build cannot afford every layer of both models
# on two CPU cores: it runs the layers listed in the parameters below (a quarter, half and three quarters of each
# model's depth) and says so in the table; the paper's models are one parameter file away on a GPU:
#
# ```bash
# .venv/bin/python tools/run_notebook.py notebooks/04_per_model_results.py out/04_gemma-2-2b.ipynb -f params/gemma-2-2b.yaml
# ```
#
# The parameter files in `params/` state the disk, memory and time they need.

# %% tags=["parameters"]
models = ["smollm2-135m", "gemma3-270m"]  # registered names, local directories or hub ids
layers = [[8, 23], [5, 14]]  # per model, in the same order; None for every layer of a model
corpus = "docstrings"
n_fit_tokens = 13_000  # per layer, fit S (at least 20 x d_model, 12,800 for Gemma 3); the SAEs train on the first n_train_tokens of these
n_train_tokens = 13_000
n_eval_tokens = 4_000
n_splice_tokens = 256  # held-out tokens for the spliced-in scores; 0 skips them
n_steps = 150
batch_size = 1024
capacity = 4
l0_coefficient = 3e-3
l1_coefficient = 3e-2
topk = True  # also TopK SAEs (Euclidean and in AIP coordinates) with k set to the atoms' L0 at each layer
massive_k = 20.0  # leave out tokens whose norm exceeds massive_k x the median (chapter 1); None keeps all
seeds = [0]
backend = "sequential"  # "sequential", "processes" or "dask"
dask_scheduler = None
n_workers = 2
results = None  # results directory; None for build/results/04_per_model_results
seq_len = 128
store_dtype = "float32"
device = "cpu"
dtype = "float32"
threads = 1  # torch CPU threads; None for torch's default

# %%
import matplotlib.pyplot as plt
import torch

from atomsnb import claims, grid, layer_ledger, plots, scaling, verdicts
from atomsnb.runner import results_dir, run_grid

if threads:
    torch.set_num_threads(threads)
CHAPTER = "04_per_model_results"
configs = grid.layer_study_configs(dict(
    models=models, layers=layers, corpus=corpus, n_fit_tokens=n_fit_tokens, n_train_tokens=n_train_tokens,
    n_eval_tokens=n_eval_tokens, n_splice_tokens=n_splice_tokens, n_steps=n_steps, batch_size=batch_size,
    capacity=capacity, l0_coefficient=l0_coefficient, l1_coefficient=l1_coefficient, massive_k=massive_k, topk=topk,
    seeds=seeds, seq_len=seq_len, store_dtype=store_dtype, device=device, dtype=dtype))
points = [p for c in configs for p in c.points()]  # validates every model, layer and size before any work
for c in configs:
    ls = [p.layer for p in points if p.model == c.model]
    print(f"{c.model}: layers {ls}, |D| = {next(p.n_latents for p in points if p.model == c.model)}, "
          f"|M| = {n_train_tokens:,}, {n_steps} steps per SAE")

# %% tags=["nbval-ignore-output"]
df = run_grid(points, grid.layer_point, results_dir(CHAPTER, results), backend=backend, dask_scheduler=dask_scheduler,
              max_workers=n_workers, threads=threads)
print(f"{(df['status'] == 'ok').sum()} of {len(points)} layers ok, {df['wall_time_s'].sum():.0f} s of compute")

# %%
failed = df[df["status"] != "ok"]
assert failed.empty, f"{len(failed)} layers failed: {failed.get('error', failed['status']).tolist()}"
grid.layer_reader_table(df)

# %% [markdown]
# The TopK SAEs of each layer beside its atoms, trained at $k$ = the atoms' L0 (Euclidean loss on raw activations,
# and the AIP loss on whitened ones):

# %%
grid.layer_topk_reader_table(df)

# %%
fig = plots.layer_curves(df, metrics=("r2_aip", "q_star", "ce_loss_score"),
                         title="Held-out R² and q*, and the loss kept when spliced in, per layer")
plt.show()

# %% [markdown]
# ## The paper's table beside ours
#
# Ours is computed in this build and averaged over the layers that ran; the paper's rows are quoted. The paper's
# models need a GPU and the model hub, which the book's build has not: whoever has them runs
# `make layers-ledger PARAMS=params/gemma-2-2b.yaml` ({mod}`atomsnb.layer_ledger`, the same computation per layer)
# and commits the rows (`results/layers/`); the table then shows them with where they come from (commit, hours,
# device). A stale row (code, model or corpus changed since) is not shown. Rows neither run here nor in the ledger say
# so, with the command.

# %%
table = grid.paper_table(df)
sizes = df.groupby("model", sort=False)["n_parameters"].first().to_dict()
committed, evidence = layer_ledger.read_layers()
ledger_table = grid.paper_table(committed) if len(committed) else None
print(f"the ledger results/layers/: {evidence or 'no current row'}")
grid.compare_with_paper(table, sizes=sizes, ledger=ledger_table, evidence=evidence)

# %%
grid.paper_reader_table(table)

# %% [markdown]
# ## Claim checks

# %%
label = "; ".join(f"{m} (layers {', '.join(str(p.layer) for p in points if p.model == m)})" for m in models)
# The verdict is on this build's numbers; it cites the committed scaling study (chapter 7's ledger).
claims.record(verdicts.check_layers_atoms_near_one(table, model=f"{label}, {n_steps} steps of {batch_size} on "
                                                                f"{n_train_tokens:,} tokens", at_scale=scaling.study_reading()))
for verdict in verdicts.check_layers_paper_models(table, ledger_table=ledger_table, evidence=evidence):
    claims.record(verdict)

# %% [markdown]
# ## Verdict

# %%
print("\n".join(grid.describe_layers(df)))
