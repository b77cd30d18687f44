"""The book's multi-panel figures are readable at 1280 px: every panel at least ``plots.MIN_PANEL_PX`` wide and every
text at least ``plots.MIN_TEXT_PX`` high, as displayed in the book's output column (:func:`atomsnb.plots.displayed_layout`
says how that is computed from the PNG the inline backend writes; ``tests/test_book_browser.py`` checks the column's
width and that images are shown at their natural width or scaled to the column).

Each figure is drawn from synthetic inputs shaped like the chapter's (the chapters' model and layer counts, the number
of unit sets), because the layout, not the numbers, is what is measured.
"""

from __future__ import annotations

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import torch

from atomsnb import plots
from atomsnb.metrics import QStarResult

RNG = np.random.default_rng(0)
LAYERS = {"smollm2-135m": range(1, 31), "gemma3-270m": range(1, 19)}  # chapter 1's two models
UNIT_SETS = [("neurons", "neurons", np.nan, np.nan)] + \
    [(f"features (λ₁={c:g})", "features", np.nan, c) for c in (1e-2, 3e-2, 1e-1)] + \
    [(f"atoms (λ₀={c:g})", "atoms", c, np.nan) for c in (1e-3, 3e-3, 1e-2)] + [("ablation (λ₁=0.1)", "ablation", np.nan, 0.1)]


def _angles(n=2000):
    return torch.tensor(RNG.normal(70, 8, n)), torch.tensor(RNG.normal(90, 3, n))


def _angle_table(layers):
    rows = [{"layer": l, "set": s, "euclidean_mean": 70 + RNG.normal(), "euclidean_std": 8.0,
             "aip_mean": 90 + RNG.normal(), "aip_std": 3.0} for s in ("held-out", "other domain") for l in layers]
    return pd.DataFrame(rows)


def _massive_table(layers):
    return pd.DataFrame([{"layer": l, "cond_kept": 1e6, "cond_excluded": 1e3, "whitened_cond_kept": 50.0,
                          "whitened_cond_excluded": 2.0} for l in layers])


def _held():
    return pd.DataFrame([{"unit set": n, "family": f, "l0_coefficient": c0, "l1_coefficient": c1,
                          "r2_aip": RNG.uniform(0.3, 1), "explained_variance": RNG.uniform(0.3, 1),
                          "q_star": RNG.uniform(0.2, 1), "ce_loss_score": RNG.uniform(0, 1)} for n, f, c0, c1 in UNIT_SETS])


def _curve(q_star):
    q = torch.linspace(0.01, 1, 100, dtype=torch.float64)
    k = torch.ceil(q * 20)
    return QStarResult(q_star, q, 0.05 + 0.3 * q, k, 1 / (2 * k - 1), 100, "pairwise")


def _histories():
    steps = np.arange(0, 300, 10)
    return {n: pd.DataFrame({"step": steps, "loss": 1 / (1 + steps), "l0": 50 - steps / 10, "r2_aip": 1 - 1 / (1 + steps),
                             "frac_dead": steps / 3000}) for n, *_ in UNIT_SETS[1:]}


def _grid():
    return pd.DataFrame([{"n_train": m, "n_latents": d, "train_r2_aip": RNG.uniform(), "heldout_r2_aip": RNG.uniform(),
                          "train_q_star": RNG.uniform(), "heldout_q_star": RNG.uniform()}
                         for m in (512, 2048, 8192, 32768) for d in (576, 2304, 4608)])


def _layers():
    return pd.DataFrame([{"model": m, "layer": l, **{f"{f}_{k}": RNG.uniform() for f in ("neurons", "features", "atoms")
                                                     for k in ("r2_aip", "q_star", "ce_loss_score")}}
                         for m in ("smollm2-135m", "gemma3-270m") for l in (3, 6, 9, 12)])


def _judges(judges=("token concentration", "embedding", "LLM judge")):
    return pd.DataFrame([{"judge": j, "unit set": s, "mean": 0.5, "ci_low": 0.4, "ci_high": 0.6,
                          "chance (shuffled)": 0.3, "chance (random tokens)": 0.2}
                         for j in judges for s in ("neurons", "features", "atoms")])


def _scaling():
    """Chapter 7's inputs: 2 models x 2 layers x 6 |M|, their learning curves, a 4-coefficient sweep, the fits."""
    from atomsnb import scaling

    ms = 2 ** np.arange(14, 24, 2)
    data = pd.DataFrame([{"model": mo, "layer": l, "n_train": m, "n_latents": 2304, "seed": 0, "p_l0_coefficient": 3e-3,
                          "heldout_r2_aip": 0.9 - 0.5 * m ** -0.3, "heldout_q_star": 0.5 - 0.2 * m ** -0.2,
                          "converged": m < 2 ** 22, "curve_steps": [128, 256, 384], "curve_tokens": [1e5, 2e5, 3e5],
                          "curve_r2": [0.5, 0.7, 0.8]}
                         for mo in ("smollm2-135m", "gemma3-270m") for l in (1, 9) for m in ms])
    fits = {(mo, l, k): scaling.fit_power_law(g["n_train"], 1 - g[f"heldout_{k}"] + RNG.normal(0, 1e-3, len(g)), n_boot=0)
            for (mo, l), g in data.groupby(["model", "layer"]) for k in ("r2_aip", "q_star")}
    sweep = pd.concat([data[data["n_train"] == ms[-1]].assign(p_l0_coefficient=c, heldout_r2_aip=0.9 - c,
                                                              heldout_q_star=0.4 + 5 * c) for c in (1e-3, 3e-3, 1e-2, 3e-2)])
    return plots.scaling_figure(data, scaling.learning_curves(data), sweep, fits, target=scaling.PAPER_TARGET,
                                title="the full study (ledger: commit abc1234, 4.0 h on 2 CPU cores)")


FIGURES = {
    "ch1 massive choice": lambda: plots.massive_choice_by_layer({m: _massive_table(l) for m, l in LAYERS.items()},
                                                                title="Fitting S with or without massive tokens"),
    "ch1 angles by layer": lambda: plots.angles_by_layer_models({m: _angle_table(l) for m, l in LAYERS.items()},
                                                                title="Mean random-pair angle by layer"),
    "ch1 histograms": lambda: plots.angle_histogram_panels({f"layer {l}": _angles() for l in (1, 15, 30)},
                                                           title="smollm2-135m: random-pair angles on held-out text"),
    "ch2 training": lambda: plots.training_histories(_histories(), title="smollm2-135m, layer 15: SAE training"),
    "ch2 frontier": lambda: plots.faithfulness_stability(
        _held(), {n: _curve(0.5) for n, *_ in UNIT_SETS}, paper={"features": (0.682, 0.488), "atoms": (0.95, 0.99)},
        title="smollm2-135m, layer 15: faithfulness vs stability (held-out)"),
    "ch2 ce_loss_score": lambda: plots.ce_loss_score_scatter(
        _held().query("family != 'neurons'"), title="smollm2-135m, layer 15: what predicts downstream faithfulness?"
    )[0].figure,
    "ch3 grid": lambda: plots.grid_heatmaps(
        _grid(), {"train_r2_aip": "R² in the AIP, training activations", "heldout_r2_aip": "R² in the AIP, held-out",
                  "train_q_star": "q*, training activations", "heldout_q_star": "q*, held-out"},
        critical={512: 576.0}, title="smollm2-135m, layer 1: red = smallest |D| with training R² >= 0.99"),
    "ch4 layer curves": lambda: plots.layer_curves(_layers(), metrics=("r2_aip", "q_star", "ce_loss_score"),
                                                   title="Held-out R² and q*, and the loss kept when spliced in"),
    "ch7 scaling": _scaling,
    "ch5 judges": lambda: plots.judge_scores(_judges(), order=("neurons", "features", "atoms"),
                                             title="smollm2-135m, layer 15: 64 units per set, top 20 contexts each"
                                             )[0].figure,
}


@pytest.mark.parametrize("name", list(FIGURES))
def test_figure_readable_in_the_book(name):
    fig = FIGURES[name]()
    try:
        lay = plots.displayed_layout(fig)
    finally:
        plt.close(fig)
    assert len(lay["panel_px"]) >= 2, f"{name}: expected a multi-panel figure, got {lay}"
    assert min(lay["panel_px"]) >= plots.MIN_PANEL_PX, \
        f"{name}: a panel is {min(lay['panel_px']):.0f} px wide at {plots.BOOK_CONTENT_PX} px (PNG {lay['natural_px']} px)"
    assert lay["min_text_px"] >= plots.MIN_TEXT_PX, \
        f"{name}: text {lay['min_text']!r} is {lay['min_text_px']:.1f} px high (scale {lay['scale']:.2f})"


def test_displayed_layout_measures_what_it_says():
    """The measurement itself: a 1 x 4 figure 16 inches wide (the old training history) in the old 700 px column is
    scaled down and fails both limits (the reviewer saw about 170 px panels); the same panels 2 x 2 in 10 inches, in
    the book's column, are shown unscaled and pass."""
    wide, axes = plt.subplots(1, 4, figsize=(16, 3.6))
    for ax in axes:
        ax.plot([0, 1], [0, 1])
        ax.set_xlabel("step")
    lay = plots.displayed_layout(wide, container_px=700)
    plt.close(wide)
    assert lay["natural_px"] > plots.BOOK_CONTENT_PX
    assert lay["scale"] == pytest.approx(700 / lay["natural_px"])
    assert max(lay["panel_px"]) < plots.MIN_PANEL_PX and lay["min_text_px"] < plots.MIN_TEXT_PX
    # the smallest text is a tick label at matplotlib's default size: pt x dpi / 72 x scale
    tick_pt = matplotlib.font_manager.FontProperties(size=plt.rcParams["xtick.labelsize"]).get_size_in_points()
    assert lay["min_text_px"] == pytest.approx(tick_pt * wide.dpi / 72 * lay["scale"])
    square, axes = plt.subplots(2, 2, figsize=(plots.FIGURE_WIDTH_IN, 6.8))
    for ax in axes.flat:
        ax.plot([0, 1], [0, 1])
    lay = plots.displayed_layout(square)
    plt.close(square)
    assert lay["scale"] == 1.0 and min(lay["panel_px"]) >= plots.MIN_PANEL_PX
