"""One point of the scaling study: a TSAE trained until its held-out ``R^2`` stops improving, then evaluated.

This is the computation behind every row of the scaling ledger (``results/scaling/``, :mod:`atomsnb.scaling`), kept
in a module of its own that imports only what the computation runs: activation stores, the AIP, the TSAE trainer,
the metrics and the spliced-in scores. A row's code fingerprint (:func:`atomsnb.codeprint.code_fingerprint` of
:func:`train_point`) is the import closure of this module, so editing the study's configuration, its power-law
fits, its words, the chapter, the grid experiments or the verdicts leaves the committed rows current; editing the
trainer, the metrics or the activation capture makes them stale (``tests/test_scaling.py`` checks which modules
the closure holds).

**Training and the stopping rule.** Constant learning rate (no decay: a point may stop at any step), the L0
coefficient warmed up over ``warmup_steps``. Every ``eval_every`` steps the held-out ``R^2`` is measured on the
*validation* half of the held-out activations (the learning curve); training stops once the best of the last
``patience`` evaluations is no more than ``tol`` above the best before them (:func:`stopped_improving`, after the
warm-up), or at ``max_steps``. A point that hits ``max_steps`` with its curve still rising is recorded
``converged = False`` (its numbers are lower bounds on what more training would give). The reported held-out
numbers come from the other half (the *test* half), which the stopping rule never saw; ``ce_loss_score`` and
``kl_div_score`` (SAELens' definitions, :func:`atomsnb.splice.spliced_scores`) from ``n_splice_tokens`` held-out
tokens of the same ``eval`` split.
"""

from __future__ import annotations

import functools
from dataclasses import replace
from typing import Sequence

import torch

from .activations import ActivationConfig
from .metrics import evaluate_dictionary, r2_aip
from .models import load_model
from .sae import SAEConfig, train_sae
from .splice import eval_windows, spliced_scores
from .store import collect_store, fit_aip_from_store
from .units import SAEUnits, check_activations

__all__ = ["train_point", "stopped_improving", "POINT_COLUMNS"]

#: The metric columns of a row (fractions; ``l0`` in latents per token; ``ce_loss_score`` a fraction of the CE
#: gap between zero ablation and the clean model; ``kl_div_score`` likewise for the KL divergence).
POINT_COLUMNS = ("heldout_r2_aip", "heldout_q_star", "heldout_l0", "heldout_explained_variance", "train_r2_aip",
                 "train_q_star", "train_l0", "train_explained_variance", "frac_dead", "ce_loss_score", "kl_div_score")


def stopped_improving(r2s: Sequence[float], patience: int, tol: float) -> bool:
    """The stopping rule: True once the best of the last ``patience`` values is no more than ``tol`` above the best of
    all the values before them (needs more than ``patience`` values)."""
    if len(r2s) <= patience:
        return False
    return max(r2s[-patience:]) <= max(r2s[:-patience]) + tol


@functools.lru_cache(maxsize=1)
def _model(name: str, device: str, dtype: str):
    """One loaded model per process: the points of a study share it (a worker runs them one after another)."""
    return load_model(name, device=device, dtype=dtype)


def _stores(point):
    """The point's training pool (``fit_split``, its first ``n_fit_tokens``) and held-out (``eval``) activation stores
    (:func:`atomsnb.store.collect_store`, seed 0: every seed and every point of a model and layer share them)."""
    p = dict(point.params)
    lm = _model(point.model, p["device"], p["dtype"])
    out = []
    for split, n in ((p["fit_split"], p["n_fit_tokens"]), ("eval", p["n_eval_tokens"])):
        cfg = ActivationConfig(model=point.model, layers=(point.layer,), corpus=p["corpus"], split=split, n_tokens=n,
                               seq_len=int(p["seq_len"]), seed=0, device=p["device"], dtype=p["dtype"])
        out.append(collect_store(cfg, model=lm, store_dtype=p["store_dtype"], progress=False)[point.layer])
    return lm, out[0], out[1]


def _metrics(units: SAEUnits, x: torch.Tensor, aip) -> dict:
    """``r2_aip``, ``q_star``, ``l0``, ``explained_variance``, ``frac_dead`` of ``units`` on ``x`` ``[n, d_model]``
    (:func:`atomsnb.metrics.evaluate_dictionary`, SPEC §3-4)."""
    x = check_activations(x, units.d_model, units.name)
    return evaluate_dictionary(x, units.codes(x), units.reconstruct(x), units.dictionary, aip)


def train_point(point, *, return_units: bool = False) -> dict | tuple[dict, SAEUnits]:
    """Train one TSAE of the scaling study until its held-out ``R^2`` stops improving; evaluate it.

    Args:
        point: an :class:`atomsnb.runner.GridPoint` of :meth:`atomsnb.scaling.ScalingStudyConfig.points` (its params
            hold ``corpus``, ``fit_split``, ``n_fit_tokens``, ``n_eval_tokens``, ``n_train_eval``, ``batch_size``,
            ``max_steps``, ``eval_every``, ``patience``, ``tol``, ``warmup_steps``, ``lr``, ``l0_coefficient``,
            ``seq_len``, ``store_dtype``, ``device``, ``dtype`` and ``n_splice_tokens``; 0 skips the splice).

        return_units: also return the trained unit set (for a download of the dictionary).

    Returns:
        The row, or ``(row, units)`` with ``return_units``. The row: :data:`POINT_COLUMNS` (``ce_loss_score`` and ``kl_div_score`` only with ``n_splice_tokens > 0``); ``steps``,
        ``tokens_seen``, ``epochs`` (tokens seen / ``|M|``), ``converged``; the learning curve ``curve_steps``,
        ``curve_tokens``, ``curve_r2`` (validation-half held-out ``R^2``); ``d_model``.

    Raises:
        ValueError: as :func:`atomsnb.store.collect_store` (a corpus too small) and :func:`atomsnb.sae.train_sae`.
    """
    p = dict(point.params)
    lm, fit, held = _stores(point)
    aip = fit_aip_from_store(fit, p["n_fit_tokens"], cache=True)
    x = held.read(0, p["n_eval_tokens"]).float()
    val, test = x[: len(x) // 2], x[len(x) // 2:]
    batch = min(p["batch_size"], point.n_train)
    cfg = SAEConfig.for_model(lm.d_model, n_steps=p["max_steps"], batch_size=batch, seed=point.seed,
                              device=p["device"], coefficient=p["l0_coefficient"], lr=p["lr"],
                              sparsity_warmup_steps=p["warmup_steps"], lr_decay_steps=0, log_every=p["eval_every"])
    cfg = replace(cfg, n_latents=point.n_latents)
    steps, r2s = [], []

    def watch(done: int, sae) -> bool:
        steps.append(done)
        r2s.append(r2_aip(val, sae.reconstruct_raw(val, aip), aip))
        return done >= p["warmup_steps"] and stopped_improving(r2s, p["patience"], p["tol"])

    sae, _ = train_sae(fit, aip, cfg, n_tokens=point.n_train, progress=False, monitor=(p["eval_every"], watch))
    units = SAEUnits(sae, aip, name="atoms", family="atoms", l0_coefficient=p["l0_coefficient"])
    row: dict = {"d_model": lm.d_model}
    for split, data in (("heldout", test), ("train", fit.read(0, min(p["n_train_eval"], point.n_train)).float())):
        m = _metrics(units, data, aip)
        row.update({f"{split}_{k}": float(m[k]) for k in ("r2_aip", "q_star", "l0", "explained_variance")})
        if split == "heldout":
            row["frac_dead"] = float(m["frac_dead"])
    if p.get("n_splice_tokens", 0):
        windows = eval_windows(lm, corpus=p["corpus"], n_tokens=p["n_splice_tokens"], seq_len=int(p["seq_len"]))
        sc = spliced_scores(lm, units, windows, point.layer, progress=False)
        row.update(ce_loss_score=float(sc.ce_loss_score), kl_div_score=float(sc.kl_div_score))
    done = steps[-1] if steps else p["max_steps"]
    row.update(steps=int(done), tokens_seen=int(done * batch), epochs=done * batch / point.n_train,
               converged=bool(stopped_improving(r2s, p["patience"], p["tol"])),
               curve_steps=steps, curve_tokens=[s * batch for s in steps], curve_r2=[float(v) for v in r2s])
    return (row, units) if return_units else row
