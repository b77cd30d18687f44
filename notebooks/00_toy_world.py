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
# # The toy world: atoms we know
#
# Before we look for atoms inside a language model, we build a world where we *know* them, and check
# that every tool of the paper does what it promises there.
#
# What the paper claims (Hu et al., *Towards Atoms of Large Language Models*, ICML 2026; quoted as the
# paper's, in our words):
#
# - **§3 (geometry).** Hidden states are identified only up to an invertible linear map $A$. The
#   *atomic inner product* $\langle u,v\rangle_S = u^\top S v$ with $S = (E[hh^\top])^{-1}$ is
#   invariant under $A$; the Euclidean inner product is not.
# - **§5 (identifiability).** A threshold-activated SAE (TSAE) with $W_{\rm dec}=D$,
#   $W_{\rm enc}=D^\top S$ and a JumpReLU threshold recovers the atoms of $K$-sparse codes when
#   $\delta_{\min} > \varepsilon(2K-1)\delta_{\max}$, $\varepsilon$ being the AIP coherence of the atoms.
# - **§4, §6 (units).** Neurons are faithful ($R^2 = 100\%$) but not unique ($q^* = 0.5\%$);
#   features of a standard SAE reach $R^2 = 48.8\%$, $q^* = 68.2\%$; trained TSAE atoms reach
#   $R^2 \approx 99.9\%$ and $q^* \approx 99.7\%$ on Gemma2-2B (paper's numbers, on real models).
#
# Here the activations are $m = A(D_0\delta + \beta b)$ (SPEC §7): exactly $K$-sparse non-negative
# codes over a known dictionary $D_0$ (the "two-ortho" dictionary $[I, \mathrm{Had}/\sqrt H]$),
# a common offset $\beta b$, and an ill-conditioned mixing $A$ that plays the role of the model's
# arbitrary parametrisation. All numbers on this page are ours, on this synthetic world.

# %% tags=["parameters"]
seed = 0
d_model = 32
k = 3
n_train = 16000
n_test = 4000
cond = 100.0
gamma = 3.0
beta = 1.0
delta_min = 1.0
delta_max = 2.0
n_pairs = 20000
sae_steps = 2000
batch_size = 1024
lr = 3e-3
l0_coefficient = 0.03
l1_coefficient = 0.03
init_threshold = 0.05
bandwidth = 0.01
phase_families = ["orthonormal", "two_ortho"]
phase_d_models = [32, 64, 128]
phase_ks = [2, 3, 4]
phase_delta_mins = [0.3, 0.8, 1.4, 2.0]
phase_delta_max = 2.0
phase_tokens_per_dim = 40
threads = 1

# %%
import matplotlib.pyplot as plt
import pandas as pd
import torch

import atomsnb.plots as plots
from atomsnb.aip import AIP
from atomsnb.claims import record
from atomsnb.metrics import gram_abs, q_star, r2
from atomsnb.sae import SAEConfig, neuron_baseline, refit_on_support, train_sae
from atomsnb.synthetic import (
    SyntheticConfig, atom_recovery, construction_phase_grid, make_world, mixing_invariance, score_against_truth,
    support_recovery,
)

torch.set_num_threads(threads)  # tiny tensors: one thread is as fast, and immune to a busy machine
CHAPTER = "00_toy_world"

world = make_world(SyntheticConfig(d_model=d_model, k=k, n_tokens=n_train + n_test, family="two_ortho",
                                   delta_min=delta_min, delta_max=delta_max, beta=beta, gamma=gamma, cond=cond, seed=seed))
train, test = world.acts[:n_train], world.acts[n_train:]
aip = AIP.fit(train)  # S is estimated on the training split only (SPEC §1.1)
print(f"H = {d_model}, N = {world.atoms.shape[1]} true atoms, K = {k}; cond(E[mm^T]) = {aip.condition_number:.2e}")

# %% [markdown]
# ## 1. The AIP does not see the mixing; Euclidean geometry does
#
# We take the same pairs of activations before and after the mixing $A$ and measure their angles,
# refitting $S$ on each version of the data (SPEC §1.3). Euclidean angles collapse toward a common
# direction (the "representation shift" of paper §3); AIP angles do not move at all. (They centre
# slightly below 90°: with the uncentred second moment the mean AIP cosine of random pairs is at most
# about $1/H$, SPEC §1.5.)

# %%
inv = mixing_invariance(world, n_pairs=n_pairs, seed=seed)
fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
plots.angle_histograms({"unmixed": inv.euclidean_clean, "mixed": inv.euclidean_mixed}, ax=axes[0], title="Euclidean")
plots.angle_histograms({"unmixed": inv.aip_clean, "mixed": inv.aip_mixed}, ax=axes[1], title="AIP")
plt.tight_layout()
plt.show()
print(f"mean Euclidean angle: unmixed {inv.euclidean_clean.mean():.1f}°, mixed {inv.euclidean_mixed.mean():.1f}°")
print(f"mean AIP angle:       unmixed {inv.aip_clean.mean():.1f}°, mixed {inv.aip_mixed.mean():.1f}°")
aip_change = "< 1e-8 (float64 round-off)" if inv.max_aip_change < 1e-8 else f"{inv.max_aip_change:.1e}"
print(f"largest change of a pair's cosine: Euclidean {inv.max_euclidean_change:.3f}, AIP {aip_change}")

# %%
assert inv.max_aip_change < 1e-8, "AIP cosines must be invariant under the mixing (float64 round-off only)"
assert inv.max_euclidean_change > 0.1, "the mixing should visibly change Euclidean cosines"
assert abs(float(inv.aip_mixed.mean()) - 90.0) < 2.0, "AIP angles of random pairs centre on 90 degrees"
claim = record(CHAPTER, "toy.aip_invariance",
       statement="The AIP is invariant under an invertible re-parametrisation A; Euclidean geometry is not (paper §3).",
       paper="AIP invariant under h -> Ah (theory, §3)",
       ours=f"max AIP cosine change {aip_change}; max Euclidean change {inv.max_euclidean_change:.2f}; "
            f"mean Euclidean angle {inv.euclidean_clean.mean():.1f}° -> {inv.euclidean_mixed.mean():.1f}°",
       model="synthetic world", verdict="reproduced",
       criterion="AIP change < 1e-8 and Euclidean change > 0.1 on the same pairs")

# %% [markdown]
# ## 2. The TSAE construction: exact supports inside the feasible region
#
# With the true atoms normalised to $\|d_j\|_S = 1$, the construction $W_{\rm enc} = D^\top S$
# gives pre-activations $p = G\delta$; any threshold in
# $(\varepsilon K\delta_{\max},\ \delta_{\min} - \varepsilon(K-1)\delta_{\max})$ recovers every support
# (SPEC §5). The interval is non-empty iff $\delta_{\min}/\delta_{\max} > \varepsilon(2K-1)$: the red
# line below. Each point is one synthetic world (orthonormal or two-ortho atoms, size $H$, support $K$,
# coefficient range); $\varepsilon$
# is measured under the *estimated* $S$. Outlined points are feasible and use the interval's midpoint;
# the others use the best threshold of a grid.

# %%
phase_configs = [SyntheticConfig(d_model=h, k=kk, n_tokens=phase_tokens_per_dim * h, family=fam, delta_min=dm,
                                 delta_max=phase_delta_max, cond=cond, gamma=gamma, seed=seed)
                 for fam in phase_families for h in phase_d_models for kk in phase_ks for dm in phase_delta_mins]
phase = construction_phase_grid(phase_configs)
plots.phase_diagram(phase, title="TSAE construction: exact support recovery")
plt.show()
feasible, infeasible = phase[phase.feasible], phase[~phase.feasible]
print(f"{len(feasible)} feasible worlds: support recovery min {feasible.support_recovery.min():.4f}, "
      f"literal R^2_S min {feasible.r2_literal.min():.4f}, refit R^2_S min {feasible.r2_refit.min():.6f}")
print(f"{len(infeasible)} infeasible worlds: best-threshold support recovery "
      f"min {infeasible.support_recovery.min():.3f}, median {infeasible.support_recovery.median():.3f}")

# %% [markdown]
# Inside the region every support is recovered, as the theorem says. Two things the theorem does not say
# show up too (SPEC §5): the construction's own reconstruction $D\,\sigma_\tau(G\delta)$ is *not* exact
# when the atoms of a support are coherent (literal $R^2_S < 1$), and a least-squares refit on the
# recovered support, $\hat\delta_S = G_{SS}^{-1}p_S$, makes it exact. Outside the region the condition is
# sufficient, not necessary: many violated worlds still recover most supports, and recovery degrades
# as the violation grows.

# %%
assert len(feasible) >= 3 and len(infeasible) >= 3, "the grid must cover both sides of the boundary"
assert (feasible.support_recovery == 1.0).all(), "inside the feasible region every support must be recovered exactly"
assert (feasible.r2_refit > 1 - 1e-9).all(), "refit on the recovered supports must reconstruct exactly"
assert (feasible.r2_literal < 1 - 1e-4).any(), "coherent atoms: the literal construction is not an exact reconstruction"
assert infeasible.support_recovery.min() < 0.9, "far outside the region supports are lost"
claim = record(CHAPTER, "toy.construction_supports",
       statement="The TSAE with W_dec = D, W_enc = D^T S recovers supports exactly when delta_min > eps(2K-1) delta_max (paper §5).",
       paper="exact recovery inside the condition (theorem, §5)",
       ours=f"{len(feasible)}/{len(feasible)} feasible worlds at 100% support recovery; "
            f"infeasible worlds {infeasible.support_recovery.min():.2f}-{infeasible.support_recovery.max():.2f}",
       model="synthetic world", verdict="reproduced",
       criterion="support recovery == 1 in every feasible world of the grid")
claim = record(CHAPTER, "toy.construction_reconstruction",
       statement="The theorem's TSAE also reconstructs the activations (R^2 = 1), as the summaries imply (paper §5); "
                 "SPEC §5: only after a least-squares refit on the recovered support.",
       paper="TSAE construction recovers the atom set (§5); exact reconstruction implied",
       ours=f"literal R^2_S min {feasible.r2_literal.min():.4f}; after refit {feasible.r2_refit.min():.6f}",
       model="synthetic world", verdict="partly reproduced",
       criterion="literal R^2_S < 1 - 1e-4 in some feasible world, refit R^2_S > 1 - 1e-9 in all")

# %% [markdown]
# ## 3. A trained TSAE finds the atoms; a standard SAE and the neurons do not
#
# Three unit sets, scored on held-out activations:
#
# - **TSAE atoms**: JumpReLU SAE with an L0 penalty trained in whitened coordinates (SPEC §6),
#   capacity $|D| = 4H$;
# - **features**: a standard ReLU + L1 SAE trained with the Euclidean MSE on raw activations (the usual recipe);
# - **neurons**: the identity dictionary with the activations as dense codes.
#
# A true atom counts as recovered if a unit matches it (Hungarian matching) with AIP $|\cos| \ge 0.9$.

# %%
common = dict(n_steps=sae_steps, batch_size=batch_size, lr=lr, seed=seed, sparsity_warmup_steps=sae_steps // 5,
              lr_decay_steps=sae_steps // 5, init_threshold=init_threshold, bandwidth=bandwidth)
tsae, tsae_hist = train_sae(train, aip, SAEConfig(kind="jumprelu", sparsity_coefficient=l0_coefficient, **common))
relu, relu_hist = train_sae(train, aip, SAEConfig(kind="relu", whiten=False, sparsity_coefficient=l1_coefficient, **common))
neurons = neuron_baseline(test)

units = {
    "TSAE atoms": (tsae.encode_raw(test, aip), tsae.reconstruct_raw(test, aip), tsae.dictionary_raw(aip)),
    "SAE features": (relu.encode_raw(test, aip), relu.reconstruct_raw(test, aip), relu.dictionary_raw(aip)),
    "neurons": (neurons.codes, neurons.x_hat, neurons.dictionary),
}
scores = pd.DataFrame({name: score_against_truth(test, c, xh, D, aip, world.mixed_atoms) for name, (c, xh, D) in units.items()}).T
cols = ["atom_recovery", "r2_aip", "explained_variance", "q_star", "l0", "dead_latents", "n_latents"]
# SPEC §4: the neurons' q* is the fraction of neuron pairs with AIP coherence below 1/(2H - 1); report their spread
G_neurons = gram_abs(neurons.dictionary, aip)
off = G_neurons[~torch.eye(d_model, dtype=torch.bool)]
print(f"neuron AIP coherence |G_ij|: median {off.median():.3f}, max {off.max():.3f}; bound 1/(2H-1) = {1 / (2 * d_model - 1):.4f}")
scores[cols].astype(float).round(4)

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
plots.match_cosines({name: atom_recovery(D, world.mixed_atoms, aip).cosines for name, (_, _, D) in units.items()}, ax=axes[0],
                    title="matching the true atoms")
plots.q_star_curves({name: q_star(c, D, aip) for name, (c, _, D) in units.items()}, ax=axes[1], title="stability q*")
plt.tight_layout()
plt.show()

# %%
codes_t, _, D_t = units["TSAE atoms"]
match = atom_recovery(D_t, world.mixed_atoms, aip)  # every true atom is matched: 128 units for 64 atoms
refit = refit_on_support(test - tsae.bias_raw(aip), codes_t, D_t, aip) @ D_t.T + tsae.bias_raw(aip)
print(f"TSAE supports exactly right on {support_recovery(codes_t[:, match.assignment], world.codes[n_train:]):.3f} "
      f"of held-out activations; R^2_S after a refit on its own supports {r2(test, refit, aip):.4f}; "
      f"{int((codes_t != 0).any(0).sum())} latents alive for {world.atoms.shape[1]} atoms")

# %% [markdown]
# The TSAE recovers every atom and is far more stable than the baselines, but it does not reach the
# paper's $R^2 \approx q^* \approx 0.999$ here. Its supports are not always exact (the L0 penalty
# drops small coefficients: $L_0$ is a little below $K$), its codes are thresholded pre-activations that
# carry the cross-talk of coherent atoms (the same effect as the construction's literal reconstruction in
# section 2; a refit on its own supports recovers part of the gap), and the spare capacity
# ($|D| = 4H$ for $2H$ atoms) leaves extra latents alive, which enter the coherence quantiles of $q^*$. The Euclidean ReLU SAE spends its capacity on the high-variance directions that
# the mixing created: it explains the Euclidean variance well but not the AIP norm, and its units are
# not the atoms. The neurons reconstruct perfectly ($R^2 = 1$) but are dense and coherent under the AIP,
# so $q^*$ is near 0: faithful, not unique. This is the ordering the paper reports (its numbers are on
# real models and are not comparable with these).

# %%
t, f, n = scores.loc["TSAE atoms"], scores.loc["SAE features"], scores.loc["neurons"]
assert t.atom_recovery >= 0.9, "the trained TSAE should recover at least 90% of the true atoms"
assert t.r2_aip >= 0.9, "TSAE held-out R^2_S should be at least 0.9"
assert t.q_star >= 0.7, "TSAE atoms should be stable (q* >= 0.7)"
assert f.atom_recovery <= 0.5, "the Euclidean ReLU SAE should not recover the atoms"
assert n.atom_recovery <= 0.5 and n.r2_aip > 1 - 1e-9 and n.q_star <= 0.1, "neurons: faithful but not unique"
near_paper = t.r2_aip >= 0.99 and t.q_star >= 0.99
claim = record(CHAPTER, "toy.trained_tsae",
       statement="A trained JumpReLU TSAE in the AIP recovers the atoms, with R^2 and q* near 1 (paper §6).",
       paper="TSAE atoms R^2 99.92%, q* 99.74% (Gemma2-2B, §6)",
       ours=f"recovery {t.atom_recovery:.3f}, R^2_S {t.r2_aip:.3f}, q* {t.q_star:.3f}",
       model="synthetic world", verdict="reproduced" if near_paper else "partly reproduced",
       criterion="reproduced: recovery >= 0.9 with R^2_S >= 0.99 and q* >= 0.99; partly: recovery >= 0.9 only")
claim = record(CHAPTER, "toy.baselines",
       statement="Neurons are faithful but not unique; standard SAE features are neither the atoms nor faithful in the AIP (paper §4).",
       paper="neurons R^2 100%, q* 0.5%; features R^2 48.8%, q* 68.2% (§4)",
       ours=f"neurons R^2_S {n.r2_aip:.3f}, q* {n.q_star:.3f}; features R^2_S {f.r2_aip:.3f}, q* {f.q_star:.3f}, "
            f"recovery {f.atom_recovery:.3f}",
       model="synthetic world", verdict="partly reproduced",
       criterion="qualitative ordering only: neurons q* <= 0.1 with R^2 = 1; features recover <= 50% of atoms")
