"""Figures of the book (matplotlib/seaborn). Each function returns the ``Figure`` it drew."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch

__all__ = ["angle_histograms", "angles_by_layer"]

_COLORS = {"euclidean": "#d95f02", "aip": "#1b9e77"}


def angle_histograms(angles: dict[str, tuple[torch.Tensor, torch.Tensor]], *, title: str = "") -> plt.Figure:
    """One panel per entry: 1-degree histograms of Euclidean and AIP pair angles (SPEC §2).

    Args:
        angles: panel title -> ``(euclidean [n_pairs], aip [n_pairs])`` angles in degrees.
    """
    fig, axes = plt.subplots(1, len(angles), figsize=(4.2 * len(angles), 3.2), sharey=True, squeeze=False)
    bins = np.arange(0, 181, 1.0)
    for ax, (name, (e, a)) in zip(axes[0], angles.items()):
        ax.hist(e.numpy(), bins=bins, color=_COLORS["euclidean"], alpha=0.6, density=True, label="Euclidean")
        ax.hist(a.numpy(), bins=bins, color=_COLORS["aip"], alpha=0.6, density=True, label="AIP")
        ax.axvline(90, color="k", lw=0.8, ls="--")
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("angle between random pairs (degrees)")
        ax.set_xlim(0, 180)
        ax.set_xticks(range(0, 181, 30))
    axes[0][0].set_ylabel("density")
    axes[0][0].legend(frameon=False, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def angles_by_layer(table: pd.DataFrame, *, title: str = "") -> plt.Figure:
    """Mean pair angle per layer for Euclidean and AIP, one line style per evaluation set (band: ± 1 std of the first set).

    Args:
        table: the table of :func:`atomsnb.shift.angle_study` (columns ``layer``, ``set``, ``*_mean``, ``*_std``).
    """
    fig, ax = plt.subplots(figsize=(7, 3.6))
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
    ax.set_xticks(sorted(table["layer"].unique()))
    ax.legend(frameon=False, fontsize=7, ncol=2, loc="lower right")
    if title:
        ax.set_title(title, fontsize=11)
    sns.despine(fig)
    fig.tight_layout()
    return fig
