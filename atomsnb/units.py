"""Neurons, features and atoms as candidate units, trained and evaluated the same way (paper §4-6).

A *unit set* is a dictionary with an encoder: the neurons (identity dictionary, dense codes), the
"features" of a standard sparse autoencoder (ReLU + L1, trained on raw activations with a
Euclidean loss, the paper's baseline), and the "atoms" of a threshold-activated SAE (JumpReLU,
trained in whitened AIP coordinates, SPEC §6). :func:`compare_unit_sets` trains the SAEs on one
set of activations and evaluates every unit set with the same metrics (:func:`atomsnb.metrics.evaluate_dictionary`)
on held-out activations and on (a sample of) the training activations, the latter to expose
memorisation (SPEC §3).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from typing import Sequence

import pandas as pd
import torch

from .aip import AIP
from .metrics import QStarResult, evaluate_dictionary
from .sae import SAEConfig, SparseAutoencoder, neuron_baseline, train_sae

__all__ = ["UnitSetSpec", "default_sae_config", "default_unit_sets", "compare_unit_sets", "UnitSetResults"]


@dataclass(frozen=True)
class UnitSetSpec:
    """One unit set to compare.

    Attributes:
        name: row label, e.g. ``"atoms (TSAE, lambda=0.003)"``.
        family: ``"neurons"``, ``"features"`` or ``"atoms"`` (what the paper's table calls it).
        kind: ``"neurons"``, ``"relu"`` (ReLU + L1) or ``"jumprelu"`` (TSAE).
        whiten: train in whitened AIP coordinates (True for the TSAE, False for the standard SAE).
        sparsity_coefficient: L0 (jumprelu) or L1 (relu) coefficient ``lambda``.
    """

    name: str
    family: str
    kind: str
    whiten: bool = True
    sparsity_coefficient: float = 0.0


def default_sae_config(d_model: int, *, n_steps: int = 1000, batch_size: int = 2048, capacity: int = 4, seed: int = 0,
                       device: str = "cpu") -> SAEConfig:
    """Training settings used by the chapters for a model of width ``d_model``.

    ``|D| = capacity * d_model`` (paper: 4). In whitened coordinates scaled to ``E||x||^2 = 1`` a
    coordinate is about ``1/sqrt(d_model)``, so the initial JumpReLU threshold (``0.8/sqrt(d)``) and the
    bandwidth (``0.16/sqrt(d)``) scale with it: 0.05 and 0.01 at ``d = 256``. SAELens' defaults
    (1e-3, SPEC §6) leave the threshold too small to move within a CPU-sized budget. Adam
    ``betas=(0, 0.999)``, lr 3e-3 with linear decay over the last 20 % of steps, ``lambda`` warm-up
    over the first 20 %.
    """
    return SAEConfig(n_latents=capacity * d_model, init_threshold=0.8 / math.sqrt(d_model),
                     bandwidth=0.16 / math.sqrt(d_model), lr=3e-3, n_steps=n_steps, batch_size=batch_size,
                     sparsity_warmup_steps=n_steps // 5, lr_decay_steps=n_steps // 5, seed=seed, device=device)


def default_unit_sets(atom_coefficients: Sequence[float] = (1e-3, 3e-3, 1e-2),
                      feature_coefficients: Sequence[float] = (1e-2, 3e-2, 1e-1),
                      whitened_relu_coefficient: float | None = 0.1) -> list[UnitSetSpec]:
    """Neurons, the standard-SAE features at each L1 coefficient, the TSAE atoms at each L0 coefficient,
    and (optionally) the ablation "ReLU + L1 in whitened coordinates" (AIP without the threshold)."""
    specs = [UnitSetSpec("neurons", "neurons", "neurons")]
    specs += [UnitSetSpec(f"features (ReLU+L1, lambda={c:g})", "features", "relu", False, c) for c in feature_coefficients]
    specs += [UnitSetSpec(f"atoms (TSAE, lambda={c:g})", "atoms", "jumprelu", True, c) for c in atom_coefficients]
    if whitened_relu_coefficient is not None:
        specs.append(UnitSetSpec(f"ablation: ReLU+L1 in AIP coordinates, lambda={whitened_relu_coefficient:g}",
                                 "ablation", "relu", True, whitened_relu_coefficient))
    return specs


@dataclass
class UnitSetResults:
    """What :func:`compare_unit_sets` returns.

    Attributes:
        table: one row per unit set and evaluation split (``"held-out"``, ``"train"``) with
            ``r2_aip, explained_variance, r2_per_dim, r2_uncentred, q_star, l0, dead_latents, n_latents, n_alive``
            and ``train_seconds``.
        q_star_curves: unit-set name -> :class:`QStarResult` on held-out activations (for plots).
        saes: unit-set name -> trained :class:`SparseAutoencoder` (absent for neurons).
    """

    table: pd.DataFrame
    q_star_curves: dict[str, QStarResult]
    saes: dict[str, SparseAutoencoder]


def _codes(spec: UnitSetSpec, sae: SparseAutoencoder | None, x: torch.Tensor, aip: AIP):
    if sae is None:
        nb = neuron_baseline(x)
        return nb.codes, nb.x_hat, nb.dictionary
    return sae.encode_raw(x, aip), sae.reconstruct_raw(x, aip), sae.dictionary_raw(aip)


def compare_unit_sets(train_acts: torch.Tensor, eval_acts: torch.Tensor, aip: AIP, specs: Sequence[UnitSetSpec],
                      config: SAEConfig, *, n_train_eval: int = 10_000, progress: bool = True) -> UnitSetResults:
    """Train every SAE unit set on ``train_acts`` and evaluate all on held-out and training activations.

    Args:
        train_acts: ``[n_train, d_model]`` activations for SAE training (the paper's ``M``).
        eval_acts: ``[n_eval, d_model]`` held-out activations (disjoint text).
        aip: the AIP fitted on training activations (SPEC §1).
        specs: the unit sets (:func:`default_unit_sets`).
        config: base :class:`SAEConfig` (:func:`default_sae_config`); ``kind``, ``whiten`` and
            ``sparsity_coefficient`` are taken from each spec.
        n_train_eval: training activations (the first ones) evaluated to expose memorisation.

    Returns:
        :class:`UnitSetResults`.

    Raises:
        ValueError: an unknown ``kind`` in a spec.
    """
    rows, curves, saes = [], {}, {}
    train_eval = train_acts[:n_train_eval]
    for spec in specs:
        t0 = time.time()
        if spec.kind == "neurons":
            sae = None
        elif spec.kind in ("relu", "jumprelu"):
            cfg = replace(config, kind=spec.kind, whiten=spec.whiten, sparsity_coefficient=spec.sparsity_coefficient)
            sae, _ = train_sae(train_acts, aip, cfg, progress=progress)
            saes[spec.name] = sae
        else:
            raise ValueError(f"unknown unit-set kind {spec.kind!r}; use 'neurons', 'relu' or 'jumprelu'")
        seconds = time.time() - t0
        for split, x in (("held-out", eval_acts), ("train", train_eval)):
            codes, x_hat, dictionary = _codes(spec, sae, x, aip)
            metrics, qs = evaluate_dictionary(x, codes, x_hat, dictionary, aip, return_q_star=True)
            if split == "held-out":
                curves[spec.name] = qs
            rows.append({"unit set": spec.name, "family": spec.family, "lambda": spec.sparsity_coefficient,
                         "split": split, **metrics, "train_seconds": seconds})
    return UnitSetResults(pd.DataFrame(rows), curves, saes)
