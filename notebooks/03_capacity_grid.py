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
# # The capacity grid: data size against dictionary size
#
# **The paper's claim** (Hu et al., §5; the numbers are the paper's):

# %% tags=["remove-input"]
from IPython.display import Markdown

from atomsnb import paper

c = paper.PAPER_CAPACITY
Markdown(f"On Gemma2-2B layer {c['layer']}, with up to {c['max_tokens'] / 1e9:g}B activations, a grid "
         f"over the data size |M| and the dictionary size |D| (in steps of {c['d_step']} = 4H) shows R² jumping to "
         f"about {c['r2_above_critical']:g} only once |D| passes a critical value matched to |M|; below it, R² stays "
         f"at {c['r2_below_critical'][0]:g}-{c['r2_below_critical'][1]:g}.")

# %% [markdown]
# **The question the paper leaves open.** With $\lvert D\rvert \ge \lvert M\rvert$ a dictionary can memorise its
# training data (one latent per activation, $K = 1$), which gives $R^2 = 1$ and $q^* = 1$ trivially
# ({ref}`tsae-memorisation`). So this chapter evaluates every point of the grid twice: on the TSAE's own training
# activations, and on **held-out** activations from text it never saw. A jump that appears only on the training
# data is memorisation, not atoms.
#
# The book runs the grid at layer 1 of SmolLM2-135M (a real LLM of the Llama family, {doc}`../models`), the paper's
# layer. The grid streams every token of its stores: the count of massive tokens (chapter 1's criterion) is printed
# below instead of being excluded. Each point trains one TSAE
# (JumpReLU, AIP coordinates) on the first $\lvert M\rvert$ activations of one **activation store**
# ({mod}`atomsnb.store`): the stores of the fitting and held-out text are collected once, in checksummed shards, and
# every point streams a prefix of them, so the same code reaches the paper's billions of activations with memory that
# does not grow with $\lvert M\rvert$. $S$ is fitted once, by streaming the whole fitting store. The grid runs through
# `atomsnb.runner`: every point is one row in a results store, written atomically, so an interrupted run resumes where
# it stopped, on one machine or on a Dask cluster (see {doc}`../rerun`).

# %% tags=["parameters"]
model = "smollm2-135m"
layer = 1
corpus = "docstrings"
m_values = [512, 2048, 8192]  # the data sizes |M| (chapter 7 goes to 2^23)
d_multiples = [1, 4, 8]  # |D| in multiples of d_model (paper: steps of 4H); 8H exceeds an |M| of 2048
n_fit_tokens = 16384  # the fitting store: S is fitted on all of it, the points train on its first |M| rows
n_eval_tokens = 4096  # held-out activations for every metric
n_steps = 150  # TSAE training steps per point
batch_size = 1024  # tokens per step (at most |M|)
l0_coefficient = 3e-3
seeds = [0]
backend = "sequential"  # "sequential", "processes" or "dask"
dask_scheduler = None  # address of a running Dask scheduler; None starts a LocalCluster
n_workers = 2
results = None  # results directory; None for build/results/03_capacity_grid
seq_len = 128
store_dtype = "float32"  # "bfloat16" halves the stores on disk
device = "cpu"
dtype = "float32"
threads = 1  # torch CPU threads; None for torch's default

# %%
import matplotlib.pyplot as plt
import torch

from atomsnb import claims, grid, paper, plots, verdicts
from atomsnb.massive import DEFAULT_K
from atomsnb.runner import results_dir, run_grid

if threads:
    torch.set_num_threads(threads)
CHAPTER = "03_capacity_grid"
config = grid.CapacityGridConfig(model=model, layer=layer, corpus=corpus, m_values=tuple(m_values),
                                 d_multiples=tuple(d_multiples), n_fit_tokens=n_fit_tokens, n_eval_tokens=n_eval_tokens,
                                 n_steps=n_steps, batch_size=batch_size, l0_coefficient=l0_coefficient,
                                 seeds=tuple(seeds), seq_len=seq_len, store_dtype=store_dtype, device=device,
                                 dtype=dtype)
points = config.points()  # validates the grid before any work
print(f"{len(points)} points: |M| in {list(m_values)}, |D| in {sorted({p.n_latents for p in points})}, "
      f"{n_steps} steps each, layer {layer} of {model}")
n_massive, n_fit = grid.massive_tokens(points[0], k=DEFAULT_K)
print(f"massive tokens (norm > {DEFAULT_K:g} x the median) among the {n_fit:,} fitting activations: {n_massive}")

# %% tags=["nbval-ignore-output"]
df = run_grid(points, grid.capacity_point, results_dir(CHAPTER, results), backend=backend,
              dask_scheduler=dask_scheduler, max_workers=n_workers, threads=threads)
print(f"{(df['status'] == 'ok').sum()} of {len(points)} points ok, {df['wall_time_s'].sum():.0f} s of compute")

# %%
failed = df[df["status"] != "ok"]
assert failed.empty, f"{len(failed)} grid points failed: {failed.get('error', failed['status']).tolist()}"
grid.capacity_reader_table(df)

# %%
fig = plots.grid_heatmaps(
    df, {"train_r2_aip": "R² in the AIP, training activations", "heldout_r2_aip": "R² in the AIP, held-out",
         "train_q_star": "q*, training activations", "heldout_q_star": "q*, held-out"},
    critical=grid.critical_capacity(df, value="train_r2_aip").to_dict(),
    title=f"{model}, layer {layer}: red = smallest |D| with training R² >= {paper.CAPACITY_R2_THRESHOLD} "
          "(colour scale clipped to [0, 1])")
plt.show()

# %%
grid.critical_capacity_table(df)

# %% [markdown]
# ## Claim check and the memorisation question

# %%
claims.record(verdicts.check_grid_critical_capacity(df, model=f"{model}, layer {layer}, {n_steps} steps per point"))
print("\n".join(grid.describe_capacity(df)))

# %% [markdown]
# **Reading the grid.** Where the training $R^2$ reaches 1 only for $\lvert D\rvert \gtrsim \lvert M\rvert$ while the
# held-out $R^2$ falls, the "jump" is the dictionary storing its training set. Where more data ($\lvert M\rvert$ down the
# rows) raises the held-out $R^2$ at a fixed $\lvert D\rvert$, the dictionary is learning structure that transfers. The
# paper's grid reaches billions of activations, far beyond $\lvert D\rvert$; at that scale memorisation is impossible, and the
# held-out column is the one to compare. The paper's setting runs through the same stores on a GPU
# (`params/capacity_gemma-2-2b.yaml` states its disk, memory and time):
#
# ```bash
# .venv/bin/python tools/run_notebook.py notebooks/03_capacity_grid.py out/03_gemma.ipynb -f params/capacity_gemma-2-2b.yaml
# ```
