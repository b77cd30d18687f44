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
# # Scaling: is the gap a matter of data?
#
# **The question.** Chapters 2 and 4 find TSAE atoms well short of the paper's $R^2$ and $q^*$ near 1. Their
# dictionaries train on tens of thousands of activations; the paper's on billions (the paper's §5). A reader cannot
# tell from those chapters whether the gap is one of **scale** (more data would close it) or of
# **substance** (it would stay). This chapter measures how held-out $R^2$ in the AIP and $q^*$ grow with the training
# data $\lvert M\rvert$ and fits
#
# $$1 - R^2(\lvert M\rvert) = a\,\lvert M\rvert^{-\alpha} + c,$$
#
# whose floor $c$ says where more data stops helping: the fit's ceiling is $1 - c$. The same for $q^*$.
#
# **The study** ({mod}`atomsnb.scaling`): per model (SmolLM2-135M and Gemma 3 270M) and layer (layer 1 and a middle
# layer), a TSAE with $\lvert D\rvert = 4H$ at data sizes over at least 2.5 decades, each **trained until its held-out
# $R^2$ stops improving** (every `eval_every` steps the held-out $R^2$ is measured on one half of the held-out
# activations; training stops once the best of the last `patience` measurements is at most `tol` above the best
# before them; a point that reaches its step cap still rising is marked *not converged*, its numbers lower bounds).
# The reported held-out numbers come from the other half, which the stopping rule never saw. At the largest
# $\lvert M\rvert$ also $\lvert D\rvert \in \{H, 4H, 16H\}$ and a second seed; at the smallest and the largest an
# L0-coefficient sweep (the held-out $(R^2, q^*)$ frontier and its distance from the paper's point).
#
# The full study takes hours, so it does not run in every build: `make scaling` runs it through `atomsnb.runner`
# into a **ledger** committed with the repository (`results/scaling/`, {mod}`atomsnb.ledger`), one checksummed row
# per point with its provenance (the fingerprint of the code the point can run, function by function,
# {mod}`atomsnb.codereach`; model card hash, corpus fingerprint, commit, compute). This chapter
# (1) runs a small subset of the study itself (its parameters below: every kind of point, at layer 1 of SmolLM2), so
# that the study's code runs in every build, and (2) shows the
# ledger's rows, marking any row whose code, model or corpus has changed since as **stale**, with the command that
# refreshes it.

# %% tags=["parameters"]
models = ["smollm2-135m"]
layers = [1]  # block numbers, or "middle" (block n_layers // 2 of each model); the ledger has both layers
m_values = [[2048, 4096, 8192, 16384]]  # |M| per entry of layers; the largest is the fitting pool
corpus = "docstrings"
fit_split = "fit"  # the training pool's split ("fit" or "train"; held-out activations come from "eval")
base_multiple = 4  # |D| of the data-scaling points, in multiples of d_model
d_multiples = [1, 4]  # |D| at the largest |M|
seeds = [0, 1]  # at the largest |M|
l0_coefficient = 3e-3
l0_sweep = [1e-3, 3e-2]  # besides l0_coefficient, at the smallest and the largest |M| (1.5 decades)
n_eval_tokens = 4096  # held-out: half for the learning curves and stopping, half for the reported numbers
n_train_eval = 2048
n_splice_tokens = 256  # held-out tokens for ce_loss_score and kl_div_score; 0 skips the splice
sweep_models = None  # models with the capacity, seed and L0 sweeps (None: every model)
sweep_layers = [1]  # entries of layers with the sweeps (None: every layer); as the full study
export_largest = False  # make scaling's (the full study writes its largest dictionaries into the ledger); not here
batch_size = 256  # the in-build subset is small: the study's own scale is in params/scaling.yaml (the ledger)
max_steps = 60
eval_every = 10
patience = 4
tol = 1e-3
warmup_steps = 30
lr = 3e-3
seq_len = 128
store_dtype = "float32"
device = "cpu"
dtype = "float32"
full_study = "params/scaling.yaml"  # the parameters of the ledger's full study (make scaling)
backend = "sequential"
n_workers = 2
results = None  # results directory of this build's subset; None for build/results/07_scaling
threads = 1

# %%

import os
import shutil
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import torch
from IPython.display import Markdown, display

from atomsnb import claims, plots, scaling, verdicts
from atomsnb.ledger import THIS_BUILD, Ledger, repository_root
from atomsnb.runner import results_dir, run_grid

if threads:
    torch.set_num_threads(threads)
CHAPTER = "07_scaling"
config = scaling.ScalingStudyConfig.from_mapping(dict(
    models=models, layers=layers, m_values=m_values, corpus=corpus, fit_split=fit_split, base_multiple=base_multiple,
    d_multiples=d_multiples, seeds=seeds, l0_coefficient=l0_coefficient, l0_sweep=l0_sweep,
    n_eval_tokens=n_eval_tokens, n_train_eval=n_train_eval, n_splice_tokens=n_splice_tokens, sweep_models=sweep_models,
    sweep_layers=sweep_layers, batch_size=batch_size, max_steps=max_steps,
    eval_every=eval_every, patience=patience, tol=tol, warmup_steps=warmup_steps, lr=lr, seq_len=seq_len,
    store_dtype=store_dtype, device=device, dtype=dtype))
if export_largest is not False:
    raise ValueError(f"export_largest={export_largest!r} is not allowed here: only `make scaling` writes the full "
                     "study's dictionaries into the ledger; this chapter's subset stays in the build")
points = config.points()  # validates the study before any work
print(f"this build's subset: {len(points)} points on {', '.join(models)}, layers {layers}, |M| in {m_values}, "
      f"at most {max_steps} steps of {batch_size} tokens each")


def show(df: pd.DataFrame, cfg: scaling.ScalingStudyConfig, title: str, n_boot: int = 1000):
    """Tables, figure, fits and readings of a study's rows; returns the fits."""
    data, sweep = cfg.part(df, "data"), cfg.part(df, "sweep")
    capacity = pd.concat([cfg.part(df, "capacity"), cfg.part(df, "seeds")]).drop_duplicates("key")
    for what, rows, table in (("data scaling", data, scaling.data_table), ("capacity and seeds", capacity,
                              scaling.capacity_table), ("L0 sweep", sweep, scaling.frontier_table)):
        display(table(rows) if len(rows) else Markdown(f"*{what}: no row yet.*"))
    table, fits = scaling.fit_table(data, n_boot=n_boot)
    display(table.drop(columns=["reading"]))
    plots.scaling_figure(data, scaling.learning_curves(data), sweep, fits, target=scaling.PAPER_TARGET, title=title)
    plt.show()
    print("\n".join(scaling.describe_scaling(cfg, df, fits)))
    return fits


# %% [markdown]
# ## This build's subset
#
# A few thousand activations per layer and a few dozen steps (the parameters above): the numbers below test the code,
# not the question (their fits extrapolate from about one decade of $\lvert M\rvert$). The full study's rows follow.

# %% tags=["nbval-ignore-output"]
df = run_grid(points, scaling.scaling_point, results_dir(CHAPTER, results), backend=backend, max_workers=n_workers,
              threads=threads)
print(f"{(df['status'] == 'ok').sum()} of {len(points)} points ok, {df['wall_time_s'].sum():.0f} s of compute "
      f"({THIS_BUILD})")

# %%
failed = df[df["status"] != "ok"]
assert failed.empty, f"{len(failed)} points failed: {failed.get('error', failed['status']).tolist()}"
subset_fits = show(df, config, f"this build's subset ({THIS_BUILD})", n_boot=200)

# %% [markdown]
# ## The full study (the ledger)

# %%
full_path = repository_root() / full_study
full = scaling.config_from_yaml(str(full_path))
ledger = Ledger("scaling")
rows = ledger.read(errors="warn")
wanted = {p.key for p in full.points(check_corpus=False)}  # the corpus is checked by make scaling, not here
rows = rows[rows["key"].isin(wanted)] if len(rows) else rows
ok = rows[(rows["status"] == "ok")] if len(rows) else rows
current = ok[~ok["stale"].astype(bool)] if len(ok) else ok
evidence = ledger.evidence(ok) if len(ok) else None
if ok.empty:
    display(Markdown(f"**The full study has not been run**: the ledger `results/scaling/` holds none of its "
                     f"{len(wanted)} points. Command: `make scaling` (parameters "
                     f"`{full_study}`). No number of the full study is shown."))
else:
    stale = ok[ok["stale"].astype(bool)]
    display(Markdown(f"The ledger holds {len(ok)} of the full study's {len(wanted)} points ({evidence})."
                     + (f" **{len(stale)} of them are stale** (their code, model or corpus has changed since) and are "
                        f"shown below but not used; refresh them with `{ledger.refresh}`." if len(stale) else "")))
    display(Ledger.reader_table(ok))

# %% [markdown]
# **Downloads.** The dictionary of the data-scaling point at the largest $\lvert M\rvert$ of every model and layer,
# as a SAELens directory (zip) with its model card (model, layer, corpus, tokens, steps, coefficient, held-out
# metrics, atomsnb version and commit): `SAE.load_from_disk` in SAELens reads it, and it takes raw residual-stream
# activations (the AIP whitening is folded into the weights). Each zip is checked against the SHA-256 its ledger row
# recorded before it is offered; stale rows offer none.

# %%
BUILD = Path(os.environ.get("ATOMSNB_BUILD", "build"))
DOWNLOADS = Path(os.environ.get("ATOMSNB_DOWNLOADS_DIR") or BUILD / "downloads") / CHAPTER
zips = scaling.dictionary_downloads(current, ledger=ledger) if len(current) else {}
links = []
for key, z in zips.items():
    DOWNLOADS.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(z, DOWNLOADS / z.name)
    r = current.set_index("key").loc[key]
    links.append(f"- [{z.name}](../../_static/downloads/{CHAPTER}/{z.name}) ({z.stat().st_size / 1e6:.1f} MB): "
                 f"{r['model']} layer {int(r['layer'])}, |M| = {int(r['n_train']):,}, |D| = {int(r['n_latents'])}, "
                 f"held-out R² {r['heldout_r2_aip']:.3f}, q* {r['heldout_q_star']:.3f}")
display(Markdown("\n".join(links) if links else "No dictionary of the full study is in the ledger yet "
                 f"(`{ledger.refresh}` writes them)."))

# %%
full_fits = {}
if len(current):
    full_fits = show(current, full, f"the full study ({evidence})")

# %% [markdown]
# ## Claim check

# %%
scope = (f"{', '.join(sorted(current['model'].unique()))}; layers {sorted(int(l) for l in current['layer'].unique())}; "
         f"|M| up to {int(current['n_train'].max()):,} tokens; {len(current)} of the {len(wanted)} points"
         if len(current) else f"{', '.join(full.models)} (not run)")
verdict = claims.record(verdicts.check_scaling_near_one(full_fits, model=scope, evidence=evidence,
                                                        n_rows=len(current)))

# %% [markdown]
# **Reading the study.** Where a fitted ceiling's whole interval lies below 0.99, more activations of the same kind
# do not bring the dictionary to the paper's numbers within the fit: the gap is not one of scale on these models and
# this training recipe. Where the interval reaches 0.99, the fit gives the $\lvert M\rvert$ at which it would, which
# can be compared with the number of activations the paper trained on (the claim's row above). Points that did not converge make a curve's right end a lower
# bound.
