"""Figures shared by the chapters (matplotlib only; every function draws on axes it is given or creates).

Each helper takes the package's result objects (angles, :class:`~atomsnb.metrics.QStarResult`, the
DataFrame of :func:`~atomsnb.synthetic.construction_phase_grid`) and returns the matplotlib axes, so
the notebooks stay one call per figure.
"""

from __future__ import annotations

import io
from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch
from PIL import Image
from scipy.stats import spearmanr

__all__ = ["angle_histograms", "phase_diagram", "q_star_curves", "match_cosines", "angle_histogram_panels", "angles_by_layer",
           "unit_set_frontier", "grid_heatmaps", "layer_curves", "BOOK_CONTENT_PX", "FIGURE_WIDTH_IN", "MIN_PANEL_PX",
           "MIN_TEXT_PX", "displayed_layout", "scaling_figure"]

#: The least width (CSS px) of a chapter's output column at a 1280 px wide window (``book/_static/atomsnb.css`` gives
#: about 960; ``tests/test_book_browser.py`` checks that it is at least this). A PNG wider than the column is scaled
#: down to it, so the figures' readability is checked at this width (a wider column only shows them larger).
BOOK_CONTENT_PX = 950
#: The widest figure of the book, in inches: at matplotlib's 100 dpi (the inline backend's PNGs) about 1000 px
#: once ``bbox_inches="tight"`` has trimmed it, shown at about 0.95 of its size in :data:`BOOK_CONTENT_PX`.
FIGURE_WIDTH_IN = 10.0
#: What a reader needs at 1280 px: every panel (axes) at least this wide, every text at least this high (CSS px).
MIN_PANEL_PX, MIN_TEXT_PX = 300, 10


def displayed_layout(fig: plt.Figure, *, container_px: float = BOOK_CONTENT_PX) -> dict:
    """How a figure shows in the book: its panels' widths and its smallest text, in CSS px.

    The chapters' figures reach the book as the inline backend's PNG: ``savefig(dpi=fig.dpi, bbox_inches="tight")``,
    shown at its natural width (1 image px = 1 CSS px) or, when wider than the output column, scaled down to the
    column (``max-width: 100%``). So a panel's displayed width is its axes' width in figure pixels times
    ``min(1, container_px / natural_width)``, and a text's displayed height is ``fontsize_pt * dpi / 72`` times the
    same scale. ``tests/test_plots_layout.py`` checks every multi-panel figure of the book with this, and the browser
    test checks that the column is at least :data:`BOOK_CONTENT_PX` wide and that images are not scaled otherwise.

    Args:
        fig: a drawn figure.
        container_px: the output column's width (CSS px).

    Returns:
        ``natural_px`` (PNG width), ``scale``, ``panel_px`` (displayed width of every visible axes that is not
        switched off, in figure order) and ``min_text_px`` (displayed height of the smallest visible non-empty text,
        tick labels included; ``inf`` if none), ``min_text`` (that text).
    """
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=fig.dpi, bbox_inches="tight")
    natural = Image.open(io.BytesIO(buf.getvalue())).size[0]
    scale = min(1.0, container_px / natural)
    renderer = fig.canvas.get_renderer()
    panels = [ax.get_window_extent(renderer).width * scale for ax in fig.axes if ax.get_visible() and ax.axison]
    texts = [t for t in fig.findobj(plt.Text) if t.get_visible() and t.get_text().strip()
             and t.get_window_extent(renderer).width > 0 and fig.bbox.overlaps(t.get_window_extent(renderer))]
    smallest = min(texts, key=lambda t: t.get_fontsize(), default=None)
    px = float("inf") if smallest is None else smallest.get_fontsize() * fig.dpi / 72 * scale
    return {"natural_px": natural, "scale": scale, "panel_px": panels, "min_text_px": px,
            "min_text": None if smallest is None else smallest.get_text()}


def _axes(ax):
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.5))
    return ax


def angle_histograms(angles: Mapping[str, torch.Tensor], *, ax=None, bins: int = 90, title: str | None = None):
    """Overlaid histograms of pair angles in degrees (SPEC §2), with a dashed line at 90 degrees.

    Args:
        angles: label -> ``[n_pairs]`` angles in degrees.
    """
    ax = _axes(ax)
    edges = np.linspace(0, 180, bins + 1)
    for i, (label, a) in enumerate(angles.items()):
        a = torch.as_tensor(a).double().numpy()
        ax.hist(a, bins=edges, histtype="step", density=True, lw=1.5, ls=("-", "--", ":", "-.")[i % 4],
                label=f"{label} (mean {a.mean():.1f}°)")
    ax.axvline(90, color="k", ls="--", lw=0.8)
    ax.set_xlabel("angle between activation pairs (degrees)")
    ax.set_ylabel("density")
    ax.set_xlim(0, 180)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return ax


def phase_diagram(df, *, value: str = "support_recovery", ax=None, title: str | None = None):
    """Support recovery of the TSAE construction over coherence x coefficient spread (paper §5, SPEC §5).

    Each point is one synthetic world at ``x = eps (2K - 1)`` and ``y = delta_min / delta_max``; the
    theorem's boundary ``y = x`` is drawn: above it the threshold interval is non-empty.

    Args:
        df: the DataFrame of :func:`~atomsnb.synthetic.construction_phase_grid`.
        value: the column that colours the points (in ``[0, 1]``).
    """
    ax = _axes(ax)
    sc = ax.scatter(df["coherence_bound"], df["ratio"], c=df[value], cmap="viridis", vmin=0, vmax=1,
                    edgecolors=np.where(df["feasible"], "k", "none"), s=45)
    hi = max(1.0, float(df["coherence_bound"].max()) * 1.05)
    t = np.linspace(0, hi, 50)
    ax.plot(t, t, "r--", lw=1.2, label=r"boundary $\delta_{\min}/\delta_{\max} = \varepsilon(2K-1)$")
    ax.fill_between(t, t, 1.0, where=t < 1.0, color="r", alpha=0.06, label="feasible region")
    ax.set_xlabel(r"$\varepsilon\,(2K-1)$ (AIP coherence of the true atoms)")
    ax.set_ylabel(r"$\delta_{\min}/\delta_{\max}$")
    ax.set_xlim(0, hi)
    ax.set_ylim(0, 1.02)
    plt.colorbar(sc, ax=ax, label=value.replace("_", " "))
    ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2)
    if title:
        ax.set_title(title)
    return ax


def q_star_curves(results: Mapping[str, object], *, ax=None, title: str | None = None):
    """Coherence quantile ``mu_q`` (solid) against the bound ``b(K_q)`` (dashed) per unit set; ``q*`` marked (SPEC §4).

    Args:
        results: label -> :class:`~atomsnb.metrics.QStarResult`.
    """
    ax = _axes(ax)
    for i, (label, r) in enumerate(results.items()):
        c = f"C{i}"
        q = r.q.numpy()
        ax.plot(q, r.mu_q.numpy(), color=c, lw=1.5, label=f"{label}: $\\mu_q$ (q* = {r.q_star:.3f})")
        b = r.bound.numpy().copy()
        b[~np.isfinite(b)] = np.nan
        ax.plot(q, b, color=c, lw=1.0, ls="--")
        ax.axvline(r.q_star, color=c, lw=0.8, ls=":")
    ax.set_yscale("log")
    ax.set_xlabel("quantile level q")
    ax.set_ylabel(r"$\mu_q$ (solid), $1/(2K_q-1)$ (dashed)")
    ax.set_xlim(0, 1)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return ax


def match_cosines(cosines: Mapping[str, torch.Tensor], *, threshold: float = 0.9, ax=None, title: str | None = None):
    """Sorted AIP ``|cos|`` of each true atom with its matched learned atom, per unit set (SPEC §7).

    Args:
        cosines: label -> ``[n_true]`` matched cosines (:attr:`~atomsnb.synthetic.AtomRecovery.cosines`).
        threshold: the recovery threshold, drawn as a horizontal line.
    """
    ax = _axes(ax)
    for label, c in cosines.items():
        c = np.sort(torch.as_tensor(c).double().numpy())[::-1]
        ax.plot(np.arange(1, len(c) + 1) / len(c), c, lw=1.5, label=label)
    ax.axhline(threshold, color="k", ls="--", lw=0.8, label=f"threshold {threshold}")
    ax.set_xlabel("fraction of true atoms (sorted)")
    ax.set_ylabel("AIP |cos| with matched unit")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return ax


# --- representation shift (chapter 1) ---
_COLORS = {"euclidean": "#d95f02", "aip": "#1b9e77"}


def angle_histogram_panels(angles: dict[str, tuple[torch.Tensor, torch.Tensor]], *, title: str = "") -> plt.Figure:
    """One panel per entry: 1-degree histograms of Euclidean and AIP pair angles (SPEC §2).

    Args:
        angles: panel title -> ``(euclidean [n_pairs], aip [n_pairs])`` angles in degrees.
    """
    cols = min(len(angles), 2)  # two panels a row: each at least MIN_PANEL_PX wide in the book
    rows = -(-len(angles) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(FIGURE_WIDTH_IN, 3.3 * rows), sharey=True, squeeze=False)
    bins = np.arange(0, 181, 1.0)
    for ax in axes.flat[len(angles):]:
        ax.axis("off")
    for ax, (name, (e, a)) in zip(axes.flat, angles.items()):
        ax.hist(e.numpy(), bins=bins, color=_COLORS["euclidean"], alpha=0.6, density=True, label="Euclidean")
        ax.hist(a.numpy(), bins=bins, color=_COLORS["aip"], alpha=0.6, density=True, label="AIP")
        ax.axvline(90, color="k", lw=0.8, ls="--")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("angle between random pairs (degrees)")
        ax.set_xlim(0, 180)
        ax.set_xticks(range(0, 181, 30))
    for row in axes:
        row[0].set_ylabel("density")
    axes[0][0].legend(frameon=False, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def _layer_ticks(ax, layers) -> None:
    layers = sorted(set(int(l) for l in layers))
    step = 1 if len(layers) <= 12 else 2 if len(layers) <= 24 else 5
    ax.set_xticks([l for l in layers if l == layers[0] or l % step == 0])


def angles_by_layer(table: pd.DataFrame, *, title: str = "", ax=None) -> plt.Figure:
    """Mean pair angle per layer for Euclidean and AIP, one line style per evaluation set (band: ± 1 std of the first set).

    Args:
        table: the table of :func:`atomsnb.shift.angle_study` (columns ``layer``, ``set``, ``*_mean``, ``*_std``).
        title: the panel's title.
        ax: an axes to draw into (a new 7 x 3.6 inch figure if None).

    Returns:
        The figure.
    """
    fig, ax = (plt.subplots(figsize=(7, 3.6)) if ax is None else (ax.figure, ax))
    styles = ["-", "--", ":", "-."]
    for k, (name, df) in enumerate(table.groupby("set", sort=False)):
        for metric, label in (("euclidean", "Euclidean"), ("aip", "AIP")):
            m, s = df[f"{metric}_mean"].to_numpy(), df[f"{metric}_std"].to_numpy()
            ax.plot(df["layer"], m, styles[k % 4], color=_COLORS[metric], marker="o", ms=3, label=f"{label}, {name}")
            if k == 0:
                ax.fill_between(df["layer"], m - s, m + s, color=_COLORS[metric], alpha=0.08)
    ax.axhline(90, color="k", lw=0.8, ls="--")
    ax.set_xlabel("layer (residual stream after block)")
    ax.set_ylabel("mean pair angle (degrees)")
    _layer_ticks(ax, table["layer"])
    ax.legend(frameon=False, fontsize=8, ncol=2, loc="lower right")
    if title:
        ax.set_title(title, fontsize=11)
    sns.despine(fig)
    fig.tight_layout()
    return fig


def angles_by_layer_models(tables: Mapping[str, pd.DataFrame], *, title: str = "") -> plt.Figure:
    """:func:`angles_by_layer` for several models side by side, one panel per model (shared y axis).

    Args:
        tables: model name -> its :func:`atomsnb.shift.angle_study` table.
    """
    cols = min(len(tables), 2)
    rows = -(-len(tables) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(FIGURE_WIDTH_IN if cols > 1 else 7, 4.2 * rows), sharey=True,
                             squeeze=False)
    for ax in axes.flat[len(tables):]:
        ax.axis("off")
    for ax, (name, t) in zip(axes.flat, tables.items()):
        angles_by_layer(t, title=name, ax=ax)
    if title:
        fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    return fig


def massive_choice_by_layer(tables: Mapping[str, pd.DataFrame], *, title: str = "") -> plt.Figure:
    """What fitting ``S`` with or without massive tokens changes, per layer and model (chapter 1).

    Left: condition number of ``E[hh^T]`` with every fitting token (solid) and without the massive ones (dashed).
    Right: condition number of held-out ordinary tokens after whitening with each ``S`` (1 = perfect whitening).

    Args:
        tables: model name -> :func:`atomsnb.shift.massive_choice` table.
    """
    fig, axes = plt.subplots(1, 2, figsize=(FIGURE_WIDTH_IN, 4.2))
    palette = sns.color_palette("dark", len(tables))
    for colour, (name, t) in zip(palette, tables.items()):
        for ax, stem in zip(axes, ("cond", "whitened_cond")):
            ax.plot(t["layer"], t[f"{stem}_kept"], "-", color=colour, marker="o", ms=3, label=f"{name}, all tokens")
            ax.plot(t["layer"], t[f"{stem}_excluded"], "--", color=colour, marker="x", ms=4,
                    label=f"{name}, massive tokens excluded")
    layers = pd.concat([t["layer"] for t in tables.values()])
    for ax, ylabel, sub in ((axes[0], "cond(E[hh$^T$]) of the fitting tokens", "second moment"),
                            (axes[1], "cond after whitening (held-out ordinary tokens)", "whitening of held-out text")):
        ax.set_yscale("log")
        ax.set_xlabel("layer (residual stream after block)")
        ax.set_ylabel(ylabel)
        ax.set_title(sub, fontsize=10)
        _layer_ticks(ax, layers)
    axes[1].legend(frameon=False, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=12)
    sns.despine(fig)
    fig.tight_layout()
    return fig


# --- neurons, features, atoms (chapter 2) ---
_FAMILY_STYLE = {"neurons": ("#7570b3", "s"), "features": ("#d95f02", "o"), "atoms": ("#1b9e77", "D"),
                 "ablation": ("#666666", "^"), "topk": ("#e7298a", "v"), "topk-aip": ("#66a61e", "P")}


def unit_set_frontier(table: pd.DataFrame, *, paper: Mapping[str, tuple[float, float]] | None = None, ax=None,
                      title: str | None = None, r2_floor: float = -0.1):
    """Faithfulness (``R^2`` in the AIP) against stability (``q*``) of every unit set, by family.

    Points with ``R^2 < r2_floor`` are drawn at the floor with a downward arrow and their value printed.

    Args:
        table: held-out rows of :func:`atomsnb.evaluation.compare_unit_sets` (columns ``family``, ``r2_aip``, ``q_star`` and,
            optionally, ``l0_coefficient`` / ``l1_coefficient`` / ``k``, NaN where not applicable).
        paper: label -> ``(q*, R^2)`` points of the paper, drawn hollow and labelled as the paper's.
    """
    ax = _axes(ax)
    for family, df in table.groupby("family", sort=False):
        color, marker = _FAMILY_STYLE.get(family, ("k", "o"))
        r2 = df["r2_aip"].clip(lower=r2_floor)
        ax.scatter(df["q_star"], r2, color=color, marker=marker, s=45, label=family, zorder=3)
        l0c = df["l0_coefficient"] if "l0_coefficient" in df else pd.Series(np.nan, index=df.index)
        l1c = df["l1_coefficient"] if "l1_coefficient" in df else pd.Series(np.nan, index=df.index)
        ks = df["k"] if "k" in df else pd.Series(np.nan, index=df.index)
        for i, (q, r, raw, c0, c1, k) in enumerate(zip(df["q_star"], r2, df["r2_aip"], l0c, l1c, ks)):
            note = (f"λ₀={c0:g}" if np.isfinite(c0) else f"λ₁={c1:g}" if np.isfinite(c1) else f"k={k:g}"
                    if np.isfinite(k) else "")
            if raw < r2_floor:
                ax.annotate("", xy=(q, r2_floor - 0.05), xytext=(q, r2_floor), arrowprops=dict(arrowstyle="->", color=color))
                note += f" (R²={raw:.3g})"
            if note:
                ax.annotate(note, (q, r), textcoords="offset points", xytext=(5, 4 + (10 * (i % 3) if raw < r2_floor else 0)),
                            fontsize=8, color=color)
    for label, (q, r) in (paper or {}).items():
        ax.scatter([q], [r], facecolors="none", edgecolors="k", s=60, zorder=2)
        ax.annotate(f"paper: {label}", (q, r), textcoords="offset points", xytext=(-4, -12), fontsize=8, ha="right")
    ax.axhline(1, color="k", lw=0.5, ls=":")
    ax.set_xlim(-0.02, 1.05)
    ax.set_ylim(r2_floor - 0.1, 1.05)
    ax.set_xlabel("stability q* (fraction)")
    ax.set_ylabel("faithfulness R² in the AIP (held-out)")
    ax.legend(fontsize=8, loc="lower left")
    if title:
        ax.set_title(title, fontsize=10)
    return ax


# --- capacity grid and per-layer results (chapters 3-4) ---
def grid_heatmaps(df: pd.DataFrame, values: Mapping[str, str], *, critical: Mapping[int, float] | None = None,
                  title: str | None = None) -> plt.Figure:
    """One heatmap per metric over data size ``|M|`` (rows) and capacity ``|D|`` (columns).

    Args:
        df: capacity-grid rows (columns ``n_train``, ``n_latents`` and the metric columns).
        values: column -> panel title, e.g. ``{"train_r2_aip": "R² (train)", "heldout_r2_aip": "R² (held-out)"}``.
        critical: ``|M|`` -> critical ``|D|`` (NaN if none), outlined in every panel.
    """
    n = len(values)
    cols = min(n, 2)
    fig, axes = plt.subplots((n + cols - 1) // cols, cols, figsize=(FIGURE_WIDTH_IN / 2 * cols, 3.6 * ((n + cols - 1) // cols)),
                             squeeze=False)
    for ax, (col, name) in zip(axes.flat, values.items()):
        piv = df.pivot_table(index="n_train", columns="n_latents", values=col, aggfunc="mean").sort_index(ascending=False)
        sns.heatmap(piv, ax=ax, annot=True, fmt=".2f", cmap="viridis", vmin=0, vmax=1, cbar=False,
                    annot_kws={"fontsize": 8})
        if critical:
            for i, m in enumerate(piv.index):
                d = critical.get(m)
                if d is not None and np.isfinite(d) and d in list(piv.columns):
                    j = list(piv.columns).index(d)
                    ax.add_patch(plt.Rectangle((j, i), 1, 1, fill=False, edgecolor="red", lw=2))
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("|D| (dictionary size)")
        ax.set_ylabel("|M| (training activations)")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def layer_curves(df: pd.DataFrame, *, metrics: Sequence[str] = ("r2_aip", "q_star"), title: str | None = None) -> plt.Figure:
    """Per-layer held-out metrics (``R^2`` in the AIP, ``q*``, ...) of neurons, features, atoms and (where the study
    has them) the TopK families from a layer study, one row of panels per model.

    Args:
        df: rows of :func:`atomsnb.grid.layer_point` (columns ``layer``, ``<family>_<metric>``, optionally ``model``).
        metrics: the metrics, one panel each (missing ones are skipped).
    """
    metrics = [m for m in metrics if f"atoms_{m}" in df]
    groups = list(df.groupby("model", sort=False)) if "model" in df else [("", df)]
    n = len(groups) * len(metrics)
    cols = min(n, 2)  # (model, metric) panels two a row: each at least MIN_PANEL_PX wide in the book
    rows = -(-n // cols)
    fig, grid = plt.subplots(rows, cols, figsize=(FIGURE_WIDTH_IN if cols > 1 else 6, 3.4 * rows), squeeze=False)
    for ax in grid.flat[n:]:
        ax.axis("off")
    panels = iter(grid.flat)
    labels = {"r2_aip": "R² in the AIP (held-out)", "q_star": "q* (held-out)", "ce_loss_score": "ce_loss_score (spliced)"}
    for model, g in groups:
        g = g.sort_values("layer")
        for ax, metric in zip(panels, metrics):
            for fam in ("neurons", "features", "atoms", "topk", "topk-aip"):
                if f"{fam}_{metric}" not in g:  # TopK columns only in studies that train it
                    continue
                color, marker = _FAMILY_STYLE[fam]
                ax.plot(g["layer"], g[f"{fam}_{metric}"], marker=marker, color=color, label=fam)
            ax.set_xlabel("layer")
            ax.set_ylabel(labels.get(metric, metric))
            _layer_ticks(ax, g["layer"])
            ax.axhline(1, color="k", lw=0.5, ls=":")
            if model:
                ax.set_title(model, fontsize=10)
    grid[0][0].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


# --- monosemanticity (chapter 5) ---
def judge_scores(summary: pd.DataFrame, *, axes=None, title: str | None = None, order: Sequence[str] | None = None):
    """Mean judge score per unit set with its bootstrap CI, one panel per judge, beside the chance levels.

    Args:
        summary: :func:`atomsnb.judges.summary_table` output (``judge, unit set, mean, ci_low, ci_high`` and
            optionally ``chance (shuffled)``, ``chance (random tokens)``).
        axes: one axes per judge (created if ``None``).
        order: unit sets from left to right (default: as they appear).

    Returns:
        The array of axes.
    """
    judges = list(dict.fromkeys(summary["judge"]))
    created = axes is None
    if axes is None:
        cols = min(len(judges), 2)  # two panels a row: each at least MIN_PANEL_PX wide in the book
        rows = -(-len(judges) // cols)
        _, grid = plt.subplots(rows, cols, figsize=(FIGURE_WIDTH_IN if cols > 1 else 5, 3.8 * rows), squeeze=False)
        for ax in grid.flat[len(judges):]:
            ax.axis("off")
        axes = list(grid.flat)
    sets = list(order or dict.fromkeys(summary["unit set"]))
    for ax, judge in zip(axes, judges):
        df = summary[summary["judge"] == judge].set_index("unit set").reindex(sets)
        x = np.arange(len(sets))
        for i, (name, row) in enumerate(df.iterrows()):
            color, marker = _FAMILY_STYLE.get(name, ("k", "o"))
            ax.errorbar([i], [row["mean"]], yerr=[[row["mean"] - row["ci_low"]], [row["ci_high"] - row["mean"]]],
                        fmt=marker, color=color, capsize=4, ms=7, zorder=3)
            if "chance (shuffled)" in df and np.isfinite(row["chance (shuffled)"]):
                ax.plot([i - 0.25, i + 0.25], [row["chance (shuffled)"]] * 2, color=color, ls="--", lw=1.2, zorder=2)
        if "chance (shuffled)" in df and np.isfinite(df["chance (shuffled)"]).any():
            ax.plot([], [], color="0.4", ls="--", lw=1.2, label="chance: the set's contexts shuffled across its units")
        if "chance (random tokens)" in df and np.isfinite(df["chance (random tokens)"].iloc[0]):
            ax.axhline(df["chance (random tokens)"].iloc[0], color="0.4", ls=":", lw=1.2,
                       label="chance: random tokens")
        ax.set_xticks(x, sets)
        ax.set_xlim(-0.6, len(sets) - 0.4)
        cols = [c for c in ("ci_high", "chance (shuffled)", "chance (random tokens)") if c in df]
        ax.set_ylim(0, min(1.05, max(1e-3, float(np.nanmax(df[cols].to_numpy())) * 1.15 + 0.02)))
        ax.set_title(judge, fontsize=10)
        ax.set_ylabel("mean score (95% CI)")
    axes[0].legend(fontsize=8, loc="upper left")
    if title:
        axes[0].figure.suptitle(title, fontsize=10)
    if created:
        axes[0].figure.tight_layout()
    return axes


__all__.append("judge_scores")


# --- spliced-in faithfulness (issue 11) ---
def ce_loss_score_scatter(table: pd.DataFrame, *, verdict=None, score: str = "ce_loss_score",
                          predictors: Sequence[str] = ("r2_aip", "explained_variance"), axes=None,
                          title: str | None = None):
    """Downstream faithfulness (``ce_loss_score``) against each activation-space metric, one panel per metric.

    One point per row of ``table`` (unit sets, coefficients, layers), coloured by ``family`` when the
    column exists; each panel's title gives the Spearman rank correlation over the finite rows (from
    ``verdict`` when given, so figure and text agree). The verdict sentence itself belongs in the
    chapter's text (:func:`atomsnb.splice.faithfulness_correlations`).

    Args:
        table: rows with the columns ``score`` and ``predictors`` (and optionally ``family``).
        verdict: a :class:`atomsnb.splice.FaithfulnessVerdict` for the same table, or ``None``.
        score: the downstream column on the y axis.
        predictors: the columns on the x axes.
        axes: one axes per predictor (created if ``None``).

    Returns:
        The array of axes.

    Raises:
        ValueError: a missing column.
    """
    missing = [c for c in (score, *predictors) if c not in table.columns]
    if missing:
        raise ValueError(f"table lacks column(s) {missing}; it has {list(table.columns)}")
    if axes is None:
        _, axes = plt.subplots(1, len(predictors), figsize=(4.4 * len(predictors), 3.8), squeeze=False)
        axes = axes[0]
    labels = {"r2_aip": "R² in the AIP (held-out)", "explained_variance": "explained variance (Euclidean)",
              "ce_loss_score": "ce_loss_score (spliced in)", "kl_div_score": "kl_div_score (spliced in)"}
    for ax, pred in zip(axes, predictors):
        df = table[[score, pred] + (["family"] if "family" in table.columns else [])].copy()
        df = df[np.isfinite(df[[score, pred]].astype(float).to_numpy()).all(1)]
        families = list(dict.fromkeys(df["family"])) if "family" in df else [None]
        for fam in families:
            sub = df if fam is None else df[df["family"] == fam]
            color, marker = _FAMILY_STYLE.get(fam, ("k", "o"))
            ax.scatter(sub[pred], sub[score], color=color, marker=marker, s=36, label=fam, zorder=3)
        if verdict is not None and pred in verdict.rho:
            rho, n = verdict.rho[pred], verdict.n
        else:
            n = len(df)
            rho = float(spearmanr(df[pred], df[score]).statistic) if n >= 3 else float("nan")
        ax.set_title(f"Spearman ρ = {rho:+.2f} (n = {n})", fontsize=10)
        ax.set_xlabel(labels.get(pred, pred))
        ax.set_ylabel(labels.get(score, score))
        ax.axhline(1, color="k", lw=0.5, ls=":")
        ax.axhline(0, color="k", lw=0.5, ls=":")
    if "family" in table.columns:
        axes[0].legend(fontsize=8)
    if title:
        axes[0].figure.suptitle(title, fontsize=11)
    axes[0].figure.tight_layout()
    return axes


__all__.append("ce_loss_score_scatter")


def training_histories(histories: Mapping[str, pd.DataFrame], *, title: str | None = None) -> plt.Figure:
    """SAE training curves, one line per unit set: loss, L0, the batch R² and the fraction of dead latents.

    Args:
        histories: unit-set name -> the history of :func:`atomsnb.sae.train_sae` (columns ``step``, ``loss``, ``l0``,
            ``batch_r2_aip`` (whitened training) or ``batch_r2_uncentred`` (raw coordinates), ``frac_dead_recent``).
        title: the figure's title.

    Returns:
        A figure with four panels, two by two.

    Raises:
        ValueError: no history, or a history without ``step``.
    """
    if not histories:
        raise ValueError("no training history to plot (no SAE was trained)")
    fig, axes = plt.subplots(2, 2, figsize=(FIGURE_WIDTH_IN, 6.8))  # 2 x 2: each panel readable in the book
    axes = list(axes.flat)
    panels = (("loss", "loss (MSE + sparsity)", True), ("l0", "L0 (latents/token)", True),
              ("r2", "batch R² (AIP if whitened, else uncentred)", False), ("frac_dead_recent", "dead latents (fraction, recent window)", False))
    colours = sns.color_palette("tab10", len(histories))
    for colour, (name, h) in zip(colours, histories.items()):
        if "step" not in h:
            raise ValueError(f"history of {name!r} has no 'step' column")
        for ax, (col, label, logy) in zip(axes, panels):
            y = h["batch_r2_aip"] if col == "r2" and "batch_r2_aip" in h else h["batch_r2_uncentred"] \
                if col == "r2" and "batch_r2_uncentred" in h else h[col] if col in h else None
            if y is None:
                continue
            ax.plot(h["step"], y, color=colour, lw=1.2, label=name)
            ax.set_ylabel(label)
            ax.set_xlabel("step")
            if logy:
                ax.set_yscale("log")
    axes[2].set_ylim(top=1.02)
    axes[0].legend(frameon=False, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=12)
    sns.despine(fig)
    fig.tight_layout()
    return fig


def faithfulness_stability(held: pd.DataFrame, curves: Mapping[str, object], *,
                           paper: Mapping[str, tuple[float, float]] | None = None, title: str | None = None) -> plt.Figure:
    """Chapter 2's figure: :func:`unit_set_frontier` (left) beside :func:`q_star_curves` of the most stable unit set
    of each family, TopK families included when the table has them (right).

    Args:
        held: held-out rows of :func:`atomsnb.evaluation.compare_unit_sets` (columns ``unit set``, ``family``,
            ``r2_aip``, ``q_star``).
        curves: unit set -> its :class:`~atomsnb.metrics.QStarResult` (:attr:`UnitSetResults.q_star_curves`).
        paper: the paper's points for the frontier (:func:`atomsnb.paper.paper_unit_points`).
        title: the left panel's title.

    Returns:
        The figure (:data:`FIGURE_WIDTH_IN` wide, two panels).

    Raises:
        ValueError: a family of neurons, features and atoms without rows, or a best unit set without curves.
    """
    best = []
    for family in ("neurons", "features", "atoms", "topk", "topk-aip"):  # TopK only where the table has it
        rows = held[held["family"] == family]
        if rows.empty and family in ("neurons", "features", "atoms"):
            raise ValueError(f"no {family!r} rows in the held-out table")
        if not rows.empty:
            best.append(rows.sort_values("q_star").iloc[-1]["unit set"])
    missing = [n for n in best if n not in curves]
    if missing:
        raise ValueError(f"no q* curves for {missing}")
    fig, axes = plt.subplots(1, 2, figsize=(FIGURE_WIDTH_IN, 4.8))
    unit_set_frontier(held, paper=paper, ax=axes[0], title=title)
    q_star_curves({n: curves[n] for n in best}, ax=axes[1], title="where q* falls: coherence quantile vs uniqueness bound")
    fig.tight_layout()
    return fig


__all__.append("faithfulness_stability")


def scaling_figure(data: pd.DataFrame, curves: pd.DataFrame, sweep: pd.DataFrame, fits: Mapping, *,
                   target: tuple[float, float], title: str = "") -> plt.Figure:
    """The scaling study (:mod:`atomsnb.scaling`) in three panels (two a row, :data:`FIGURE_WIDTH_IN` wide): held-out ``R^2`` and ``q*`` against ``|M|`` with
    the fitted power laws (points that did not converge hollow), the learning curves of the data-scaling points
    (validation-half held-out ``R^2`` against tokens seen), and the L0 frontier (held-out ``q*`` against ``R^2``) with
    the paper's point.

    Args:
        data: the data-scaling rows; curves: :func:`atomsnb.scaling.learning_curves` of them; sweep: the sweep rows;
        fits: ``{(model, layer, metric): PowerLawFit}``; target: the paper's ``(R^2, q*)``.
    """
    fig, grid = plt.subplots(2, 2, figsize=(FIGURE_WIDTH_IN, 8.6))  # two panels a row (book layout)
    axes = list(grid.flat[:3])
    grid.flat[3].axis("off")
    groups = list(data.groupby(["model", "layer"], sort=True))
    colours = dict(zip([k for k, _ in groups], sns.color_palette("tab10", max(len(groups), 1))))
    ax = axes[0]
    for (model, layer), g in groups:
        g = g.sort_values("n_train")
        for metric, marker, ls in (("r2_aip", "o", "-"), ("q_star", "s", "--")):
            conv = g["converged"].astype(bool)
            label = f"{model} L{layer} {'R²' if metric == 'r2_aip' else 'q*'}"
            ax.scatter(g.loc[conv, "n_train"], g.loc[conv, f"heldout_{metric}"], marker=marker,
                       color=colours[(model, layer)], label=label)
            ax.scatter(g.loc[~conv, "n_train"], g.loc[~conv, f"heldout_{metric}"], marker=marker, facecolors="none",
                       edgecolors=colours[(model, layer)])
            f = fits.get((model, int(layer), metric))
            if f is not None:
                mm = np.geomspace(f.m_min, f.m_max * 100, 100)
                ax.plot(mm, f.predict(mm), ls=ls, color=colours[(model, layer)], lw=1)
    ax.axhline(0.99, color="grey", lw=0.8, ls=":")
    ax.set(xscale="log", xlabel="|M| (training tokens)", ylabel="held-out value",
           title="R² (circles) and q* (squares); lines: fits; hollow: not converged")
    ax.legend(fontsize=8)
    ax = axes[1]
    for (model, layer, m), g in curves.groupby(["model", "layer", "n_train"], sort=True):
        ax.plot(g["tokens"], g["r2"], color=colours.get((model, layer), "k"),
                alpha=0.3 + 0.7 * (m / curves["n_train"].max()), lw=1)
    ax.set(xscale="log", xlabel="tokens seen", ylabel="held-out R² (validation half)",
           title="learning curves (darker: larger |M|)")
    ax.xaxis.set_minor_formatter(plt.NullFormatter())  # within a decade the minor labels overlap
    ax = axes[2]
    for (model, layer, m), g in sweep.groupby(["model", "layer", "n_train"], sort=True):
        g = g.sort_values("p_l0_coefficient")
        ax.plot(g["heldout_r2_aip"], g["heldout_q_star"], marker="o", color=colours.get((model, layer), "k"),
                ls="-" if m == sweep["n_train"].max() else "--", label=f"{model} L{layer} |M|={m}")
    ax.scatter([target[0]], [target[1]], marker="*", s=150, color="black", label=f"paper's {target}")
    ax.set(xlabel="held-out R² (AIP)", ylabel="held-out q*", title="L0-coefficient frontier")
    ax.legend(fontsize=8)
    for a in axes:
        a.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
