"""The paper's numbers, the claims the book tests, and the thresholds that decide each verdict.

Hu et al., *Towards Atoms of Large Language Models* (ICML 2026). This module sits at the bottom of the package
(it imports only :mod:`atomsnb.wording`) and is the one place where

- the paper's numbers live (:data:`PAPER_NEURONS`, :data:`PAPER_FEATURES`, :data:`PAPER_ATOMS`,
  :data:`PAPER_UNITS`, :data:`PAPER_CAPACITY`, :data:`PAPER_ABLATIONS`): quote them as the paper's;
- every claim the book tests is stated (:data:`CLAIMS`: id, chapter, section, statement in our words,
  the paper's number);
- every threshold that decides *reproduced / partly reproduced / not reproduced* is a named constant
  (the ``UPPER_CASE`` names below), and nowhere else.

The checks that turn our numbers into verdicts and words, one per claim, are in :mod:`atomsnb.verdicts`, which
sits above the modules whose tables it reads. Readings of our numbers that are not claims of the paper live beside
the computation they read (:func:`atomsnb.shift.describe`, :func:`atomsnb.evaluation.describe`,
:func:`atomsnb.grid.describe_capacity`, :func:`atomsnb.grid.describe_layers`,
:func:`atomsnb.monosemanticity.describe`); their thresholds are here too.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from .wording import percent

__all__ = [
    # the paper's numbers
    "PAPER_NEURONS", "PAPER_FEATURES", "PAPER_ATOMS", "PAPER_MODEL_SIZES", "PAPER_UNITS", "PAPER_CAPACITY",
    "PAPER_ABLATIONS", "PAPER_S_ESTIMATE", "paper_units_table", "paper_atoms_table", "paper_unit_points",
    # thresholds
    "AIP_INVARIANCE_TOL", "EUCLIDEAN_CHANGE_MIN", "ANGLE_NOISE_SE", "SUPPORTS_PARTLY_MIN", "EXACT_R2_TOL", "TREND_RHO_MIN",
    "ATOM_RECOVERY_MIN", "NEAR_ONE", "L0_MATCH_TOL", "TOY_NEURON_Q_STAR_MAX", "TOY_FEATURE_RECOVERY_MAX", "EUCLIDEAN_AIP_GAP",
    "SHIFT_MIN_DEG", "AIP_CENTRE_TOL_DEG", "RELATED_GAP_MIN_DEG", "NEURON_R2_MIN", "NEURON_Q_STAR_MAX",
    "FEATURES_TOL", "FEATURES_UNFAITHFUL_R2", "CAPACITY_R2_THRESHOLD", "MONO_CI",
    # claims
    "PaperClaim", "CLAIMS", "ATOMS_PAPER_SUMMARY", "rerun_command",
]

# =====================================================================================================================
# The paper's numbers (fractions, not percentages). Quote them as the paper's.
# =====================================================================================================================
#: Neurons as units (paper §4): perfectly faithful, almost never unique.
PAPER_NEURONS = {"r2_aip": 1.0, "q_star": 0.005, "section": "§4"}
#: Features of a standard SAE (paper §4).
PAPER_FEATURES = {"r2_aip": 0.488, "q_star": 0.682, "section": "§4"}
#: TSAE atoms with ``|D| = 4H``, averaged over layers (paper §6), and the parameter file that runs each model here.
PAPER_ATOMS = (
    {"model": "google/gemma-2-2b", "label": "Gemma2-2B", "layers": "1-26", "r2_aip": 0.9992, "q_star": 0.9974,
     "params": "params/gemma-2-2b.yaml"},
    {"model": "google/gemma-2-9b", "label": "Gemma2-9B", "layers": "1-42", "r2_aip": 0.9993, "q_star": 0.9987,
     "params": "params/gemma-2-9b.yaml"},
    {"model": "meta-llama/Llama-3.1-8B", "label": "Llama3.1-8B", "layers": "1-30", "r2_aip": 0.9985,
     "q_star": 0.9995, "params": "params/llama-3.1-8b.yaml"},
)
#: The paper's models' nominal sizes (their names'), shown beside ours in chapter 4's table.
PAPER_MODEL_SIZES = {"google/gemma-2-2b": "2B", "google/gemma-2-9b": "9B", "meta-llama/Llama-3.1-8B": "8B"}
#: The three unit sets as points for figures and tables: neurons and features (§4), atoms on Gemma2-2B (§6).
PAPER_UNITS = (
    {"label": "neurons", "family": "neurons", "r2_aip": PAPER_NEURONS["r2_aip"], "q_star": PAPER_NEURONS["q_star"],
     "section": "§4", "model": "the paper's models"},
    {"label": "features", "family": "features", "r2_aip": PAPER_FEATURES["r2_aip"],
     "q_star": PAPER_FEATURES["q_star"], "section": "§4", "model": "the paper's models"},
    {"label": "atoms, Gemma2-2B", "family": "atoms", "r2_aip": PAPER_ATOMS[0]["r2_aip"],
     "q_star": PAPER_ATOMS[0]["q_star"], "section": "§6", "model": "google/gemma-2-2b, layers 1-26"},
)
#: The capacity grid (paper §5): Gemma2-2B layer 1, up to 1.9B activations, ``|D|`` in steps of 9216 = 4H.
PAPER_CAPACITY = {"model": "google/gemma-2-2b", "layer": 1, "max_tokens": 1.9e9, "d_step": 9216,
                  "r2_below_critical": (0.6, 0.8), "r2_above_critical": 1.0, "section": "§5",
                  "params": "params/capacity_gemma-2-2b.yaml"}
#: The ablations the paper reports (§6): metric x capacity.
PAPER_ABLATIONS = (
    {"setting": "Euclidean metric + TSAE", "result": "low scores, off-centre angle distribution"},
    {"setting": "AIP + too little TSAE capacity", "result": "R^2 0.6-0.8, unstable q*"},
    {"setting": "AIP + matched capacity", "r2_aip": 0.999, "q_star": 0.998},
)
#: How the paper estimated S (§3).
PAPER_S_ESTIMATE = "about 100K Wikipedia activations"


def paper_units_table() -> pd.DataFrame:
    """The paper's unit-set numbers (:data:`PAPER_UNITS`) as a table for a reader, labelled as the paper's:
    columns ``unit set``, ``R² (AIP), paper``, ``q*, paper`` (percent strings), ``model``, ``section``."""
    return pd.DataFrame([{"unit set": u["label"], "R² (AIP), paper": f"{100 * u['r2_aip']:.4g}%",
                          "q*, paper": f"{100 * u['q_star']:.4g}%", "model": u["model"], "section": u["section"]}
                         for u in PAPER_UNITS]).set_index("unit set")


def paper_atoms_table() -> pd.DataFrame:
    """The paper's per-model atoms table (:data:`PAPER_ATOMS`, paper §6) for a reader, labelled as the paper's."""
    return pd.DataFrame([{"model": r["label"], "layers": r["layers"], "R² (AIP), paper": f"{100 * r['r2_aip']:.2f}%",
                          "q*, paper": f"{100 * r['q_star']:.2f}%"} for r in PAPER_ATOMS]).set_index("model")


def paper_unit_points() -> dict[str, tuple[float, float]]:
    """The paper's unit-set points as ``{label: (q*, R^2)}`` (the argument ``paper=`` of
    :func:`atomsnb.plots.unit_set_frontier`), from :data:`PAPER_UNITS`."""
    return {u["label"]: (u["q_star"], u["r2_aip"]) for u in PAPER_UNITS}


# =====================================================================================================================
# Thresholds: every number that decides a verdict or chooses a word. Nowhere else.
# =====================================================================================================================
#: Chapter 0: an AIP cosine that moves by less than this under the mixing is invariant (float64 round-off).
AIP_INVARIANCE_TOL = 1e-8
#: Chapter 0: the mixing visibly changes Euclidean geometry when some pair's cosine moves by more than this.
EUCLIDEAN_CHANGE_MIN = 0.1
#: Chapter 0 (a reading, :func:`atomsnb.synthetic.describe`): a mean angle within this many standard errors of a
#: reference is "within sampling noise" of it.
ANGLE_NOISE_SE = 3.0
#: Chapter 0: "partly" when every feasible world recovers at least this fraction of supports (reproduced: all).
SUPPORTS_PARTLY_MIN = 0.9
#: Chapters 0, 2: ``R^2 >= 1 - EXACT_R2_TOL`` counts as an exact reconstruction.
EXACT_R2_TOL = 1e-9
#: Chapter 0: a Spearman correlation of margin and recovery at least this reads as "degrades with the violation".
TREND_RHO_MIN = 0.5
#: Chapter 0: a trained TSAE "recovers the atoms" when it matches at least this fraction of them (AIP ``|cos| >= 0.9``).
ATOM_RECOVERY_MIN = 0.9
#: Chapters 0, 2, 4: ``R^2`` and ``q*`` "near 1", as the paper's 99.9% / 99.7%.
NEAR_ONE = 0.99
#: Chapter 0: a trained TSAE's L0 within this of K (latents per token) "matches K"; further away it is below/above.
L0_MATCH_TOL = 0.05
#: Chapter 0: neurons are "not unique" on the toy world when their q* is at most this.
TOY_NEURON_Q_STAR_MAX = 0.1
#: Chapter 0: standard-SAE features "are not the atoms" when they recover at most this fraction of them.
TOY_FEATURE_RECOVERY_MAX = 0.5
#: Chapters 0, 2: a Euclidean explained variance this much above R^2 in the AIP reads as "neglects low-variance directions".
EUCLIDEAN_AIP_GAP = 0.05
#: Chapter 1: "well below 90 degrees" means a mean Euclidean angle at least this many degrees below 90.
SHIFT_MIN_DEG = 5.0
#: Chapter 1: "re-centred on 90 degrees" means a mean AIP angle within this many degrees of 90.
AIP_CENTRE_TOL_DEG = 2.0
#: Chapter 1 (our test): same-token pairs this many degrees below random pairs "stay together" under the AIP.
RELATED_GAP_MIN_DEG = 5.0
#: Chapter 2: neurons "reconstruct exactly" above this R^2 ...
NEURON_R2_MIN = 0.9999
#: ... and are "not unique" below this q* (the paper: 0.5%).
NEURON_Q_STAR_MAX = 0.05
#: Chapter 2: a feature point within this of both of the paper's numbers (48.8%, 68.2%) matches them.
FEATURES_TOL = 0.15
#: Chapter 2: features are "unfaithful in the AIP" below this R^2 at every coefficient.
FEATURES_UNFAITHFUL_R2 = 0.9
#: Chapter 3: "R^2 near 1" for the critical capacity (training R^2 at least this).
CAPACITY_R2_THRESHOLD = 0.95
#: Chapter 5: level of the bootstrap confidence intervals that decide "more monosemantic".
MONO_CI = 0.95


# =====================================================================================================================
# The claims
# =====================================================================================================================
@dataclass(frozen=True)
class PaperClaim:
    """One claim of the paper as the book tests it.

    Attributes:
        claim_id: stable id, unique across the book (the prefix names the chapter's topic).
        chapter: the notebook that tests it.
        section: the paper's section.
        statement: the claim in our words.
        paper: the paper's number(s) or wording.
    """

    claim_id: str
    chapter: str
    section: str
    statement: str
    paper: str


#: The paper's atoms rows in one line (per model: R^2 / q*, layers).
ATOMS_PAPER_SUMMARY = "; ".join(f"{r['label']} {percent(r['r2_aip'], 2)} / {percent(r['q_star'], 2)} (layers {r['layers']})"
                         for r in PAPER_ATOMS)

_CLAIM_LIST = [
    PaperClaim("toy.aip_invariance", "00_toy_world", "§3",
               "The AIP is invariant under an invertible re-parametrisation A; Euclidean geometry is not.",
               "AIP invariant under h -> Ah (theory)"),
    PaperClaim("toy.construction_supports", "00_toy_world", "§5",
               "The TSAE with W_dec = D, W_enc = D^T S recovers supports exactly when delta_min > eps(2K-1) delta_max.",
               "exact recovery inside the condition (theorem)"),
    PaperClaim("toy.construction_reconstruction", "00_toy_world", "§5",
               "The theorem's TSAE also reconstructs the activations exactly (R^2 = 1), as the summaries imply.",
               "the construction recovers the atom set; exact reconstruction implied"),
    PaperClaim("toy.trained_tsae", "00_toy_world", "§6",
               "A trained JumpReLU TSAE in the AIP recovers the atoms, with R^2 and q* near 1.",
               f"TSAE atoms R^2 {percent(PAPER_ATOMS[0]['r2_aip'], 2)}, q* {percent(PAPER_ATOMS[0]['q_star'], 2)} "
               f"({PAPER_ATOMS[0]['label']})"),
    PaperClaim("toy.baselines", "00_toy_world", "§4",
               "Neurons are faithful but not unique; standard-SAE features are not the atoms.",
               f"neurons R^2 {percent(PAPER_NEURONS['r2_aip'], 0)}, q* {percent(PAPER_NEURONS['q_star'])}; "
               f"features R^2 {percent(PAPER_FEATURES['r2_aip'])}, q* {percent(PAPER_FEATURES['q_star'])}"),
    PaperClaim("shift.euclidean_below_90", "01_representation_shift", "§3",
               "Euclidean angles between random activation pairs sit well below 90 degrees in every layer.",
               "well below 90 degrees in every layer of GPT / Pythia / Llama / Gemma (figure, no single number)"),
    PaperClaim("shift.aip_recentres", "01_representation_shift", "§3",
               "Under the AIP the angle distribution re-centres on 90 degrees.",
               f"re-centred on 90 degrees (S from {PAPER_S_ESTIMATE})"),
    PaperClaim("units.neurons", "02_neurons_features_atoms", "§4",
               "Neurons are faithful (R^2 = 100%) but not unique (q* = 0.5%).",
               f"R^2 = {percent(PAPER_NEURONS['r2_aip'], 0)}, q* = {percent(PAPER_NEURONS['q_star'])}"),
    PaperClaim("units.features", "02_neurons_features_atoms", "§4",
               "Features of a standard SAE are unfaithful in the AIP (R^2 = 48.8%) and only partly stable (q* = 68.2%).",
               f"R^2 = {percent(PAPER_FEATURES['r2_aip'])}, q* = {percent(PAPER_FEATURES['q_star'])}"),
    PaperClaim("units.atoms_beat_features", "02_neurons_features_atoms", "§4-6",
               "TSAE atoms are more stable than standard-SAE features at matched or better faithfulness.",
               f"atoms R^2 {percent(PAPER_ATOMS[0]['r2_aip'])} / q* {percent(PAPER_ATOMS[0]['q_star'])} vs features "
               f"{percent(PAPER_FEATURES['r2_aip'])} / {percent(PAPER_FEATURES['q_star'])}"),
    PaperClaim("units.atoms_near_one", "02_neurons_features_atoms", "§6",
               "TSAE atoms reach R^2 and q* near 1.",
               f"R^2 = {percent(PAPER_ATOMS[0]['r2_aip'], 2)}, q* = {percent(PAPER_ATOMS[0]['q_star'], 2)} "
               f"({PAPER_ATOMS[0]['label']}, layers {PAPER_ATOMS[0]['layers']})"),
    PaperClaim("grid.critical_capacity", "03_capacity_grid", "§5",
               "R^2 jumps to about 1 once |D| passes a critical value matched to |M|; below it R^2 stays at 0.6-0.8.",
               "Gemma2-2B layer 1, |M| up to 1.9B, |D| in steps of 9216: jump to ~1 at a critical |D| growing with |M|"),
    PaperClaim("scaling.atoms_near_one_with_data", "07_scaling", "§5-6",
               "With enough training data (the paper's up to 1.9B activations) TSAE atoms reach R^2 and q* near 1: "
               "the gap of a small run is one of scale.",
               f"R^2 = {percent(PAPER_ATOMS[0]['r2_aip'], 2)}, q* = {percent(PAPER_ATOMS[0]['q_star'], 2)} "
               f"({PAPER_ATOMS[0]['label']}, up to 1.9B activations)"),
    PaperClaim("layers.atoms_near_one", "04_per_model_results", "§6",
               "TSAE atoms averaged over layers reach R^2 and q* near 1.", ATOMS_PAPER_SUMMARY),
    *[PaperClaim(f"layers.{r['model'].split('/')[-1]}", "04_per_model_results", "§6",
                 f"Per-layer TSAE results on {r['model']}.",
                 f"R^2 = {percent(r['r2_aip'], 2)}, q* = {percent(r['q_star'], 2)} (layers {r['layers']})")
      for r in PAPER_ATOMS],
    PaperClaim("mono.atoms_more_monosemantic", "05_monosemanticity", "§7",
               "Atoms are more monosemantic than neurons and features (judged here by offline judges).",
               "atoms more monosemantic than neurons and features (GPT-5.2 judge plus human checks)"),
    PaperClaim("mono.llm_human_judgement", "05_monosemanticity", "§7",
               "An LLM judge with human checks finds atoms more monosemantic than neurons and features.",
               "GPT-5.2 judge plus human checks: atoms more monosemantic"),
]
#: Every claim the book tests, by id.
CLAIMS: dict[str, PaperClaim] = {c.claim_id: c for c in _CLAIM_LIST}
assert len(CLAIMS) == len(_CLAIM_LIST), "claim ids must be unique"


def rerun_command(chapter: str, params: str | None = None, **parameters) -> str:
    """The command that runs ``notebooks/<chapter>.py`` with a parameter file and/or ``-p`` parameters."""
    cmd = f".venv/bin/python tools/run_notebook.py notebooks/{chapter}.py out/{chapter}.ipynb"
    if params:
        cmd += f" -f {params}"
    for k, v in parameters.items():
        cmd += f" -p {k} {v}"
    return cmd
