"""Scoring and comparing unit sets: every metric of paper §4, held-out and on training activations (SPEC §3-4).

:func:`evaluate_unit_set` scores any :class:`~atomsnb.units.UnitSet` with every metric of :mod:`atomsnb.metrics`;
:func:`compare_unit_sets` trains the SAE unit sets of :class:`~atomsnb.units.UnitSetSpec` s on one set of
activations (through :func:`atomsnb.sae_cache.train_sae_cached`; ready unit sets are taken as they are), and scores
them all on held-out activations and on (a sample of) the training activations, the latter to expose memorisation
(SPEC §3). The reader tables and the readings of chapter 2 (:func:`reader_table`, :func:`describe`, the spliced-in
scores beside them) are produced here from those numbers.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Sequence

import pandas as pd
import torch

from ._validate import positive_int
from .aip import AIP
from .metrics import METRIC_LABELS, QStarResult, evaluate_dictionary
from .paper import EUCLIDEAN_AIP_GAP
from .sae import SAEConfig, SparseAutoencoder
from .sae_cache import train_sae_cached
from .store import ActivationStore
from .units import Neurons, SAEUnits, UnitSet, UnitSetSpec, _sae_config, check_activations, is_unit_set
from .wording import value_range

__all__ = ["SPLITS", "evaluate_unit_set", "compare_unit_sets", "UnitSetResults", "reader_table",
           "train_vs_heldout_table", "describe", "with_spliced_scores", "spliced_reader_table"]

#: The evaluation splits of :func:`compare_unit_sets`.
SPLITS = ("held-out", "train")


def evaluate_unit_set(units: UnitSet, x: torch.Tensor, aip: AIP, *, estimator: str = "pairwise",
                      return_q_star: bool = False):
    """Every metric of paper §4 for one unit set on activations ``x`` (SPEC §3-4).

    Args:
        units: any :class:`UnitSet`.
        x: activations ``[n_tokens, d_model]``, raw coordinates (held out from training for held-out numbers).
        aip: the fitted AIP (``S`` from data disjoint from ``x`` for held-out numbers).
        estimator: the ``q*`` estimator, ``"pairwise"`` (P, default), ``"support"`` or ``"joint"`` (SPEC §4).
        return_q_star: also return the :class:`~atomsnb.metrics.QStarResult` (its curves, for plots).

    Returns:
        ``{"r2_aip", "explained_variance", "r2_per_dim", "r2_uncentred", "q_star", "l0", "frac_dead",
        "n_dead", "n_latents", "n_alive"}`` (fractions, counts, ``l0`` in latents per token); with
        ``return_q_star`` the tuple ``(that dict, QStarResult)``.

    Raises:
        TypeError: ``units`` does not present the :class:`UnitSet` interface, or ``aip`` is not an AIP.
        ValueError: widths disagree, NaN/inf activations, or a unit set that returns arrays of the wrong shape.
    """
    if not is_unit_set(units):
        raise TypeError(f"units must present the UnitSet interface (name, family, d_model, n_latents, codes, "
                        f"reconstruct, dictionary); got {type(units).__name__}")
    if not isinstance(aip, AIP):
        raise TypeError(f"aip must be a fitted atomsnb.aip.AIP; got {type(aip).__name__}")
    if aip.d_model != units.d_model:
        raise ValueError(f"{units.name!r} reads d_model={units.d_model} but the AIP was fitted on d_model={aip.d_model}")
    x = check_activations(x, units.d_model, units.name)
    codes, x_hat, D = units.codes(x), units.reconstruct(x), units.dictionary
    for what, t, shape in (("codes", codes, (x.shape[0], units.n_latents)), ("reconstruct", x_hat, tuple(x.shape)),
                           ("dictionary", D, (units.d_model, units.n_latents))):
        if tuple(t.shape) != shape:
            raise ValueError(f"{units.name!r}.{what} has shape {tuple(t.shape)}; the UnitSet contract asks {shape}")
    return evaluate_dictionary(x, codes, x_hat, D, aip, estimator=estimator, return_q_star=return_q_star)


@dataclass
class UnitSetResults:
    """What :func:`compare_unit_sets` returns.

    Attributes:
        table: one row per unit set and split (:data:`SPLITS`: ``"held-out"``, ``"train"``) with ``unit set``,
            ``family``, ``l0_coefficient``, ``l1_coefficient``, ``k`` (TopK; NaN where not applicable), ``split``, the metrics
            of :func:`evaluate_unit_set` and ``train_seconds`` (NaN for unit sets given ready).
        q_star_curves: unit-set name -> :class:`QStarResult` on held-out activations (for plots).
        units: unit-set name -> the :class:`UnitSet` (trained ones are :class:`SAEUnits`).
        histories: unit-set name -> the training history of :func:`~atomsnb.sae.train_sae` (trained sets only).
        cached: the trained sets that were loaded from the cache of :func:`train_sae_cached` instead of trained now.
    """

    table: pd.DataFrame
    q_star_curves: dict[str, QStarResult]
    units: dict[str, UnitSet]
    histories: dict[str, pd.DataFrame] = field(default_factory=dict)
    cached: list[str] = field(default_factory=list)

    @property
    def saes(self) -> dict[str, SparseAutoencoder]:
        """Unit-set name -> trained :class:`SparseAutoencoder` (the trained sets only)."""
        return {n: u.sae for n, u in self.units.items() if n in self.histories}

    def extend(self, other: "UnitSetResults") -> "UnitSetResults":
        """These results followed by ``other``'s (e.g. unit sets whose settings depend on the first results, as
        chapter 2's TopK ``k`` on the atoms' and features' L0).

        Raises:
            ValueError: a unit-set name in both.
        """
        if not isinstance(other, UnitSetResults):
            raise TypeError(f"other must be a UnitSetResults; got {type(other).__name__}")
        both = sorted(set(self.units) & set(other.units))
        if both:
            raise ValueError(f"unit sets {both} are in both results; names must be unique")
        return UnitSetResults(pd.concat([self.table, other.table], ignore_index=True),
                              {**self.q_star_curves, **other.q_star_curves}, {**self.units, **other.units},
                              {**self.histories, **other.histories}, self.cached + other.cached)

    def summary(self) -> str:
        """One sentence: how many SAEs were trained, in what time, and how many unit sets were evaluated."""
        trained = list(self.histories)
        held = self.table[self.table["split"] == "held-out"]
        n_eval = len(held)
        once = self.table.drop_duplicates("unit set")
        secs = float(once.loc[~once["unit set"].isin(self.cached), "train_seconds"].sum(skipna=True))
        fresh = [n for n in trained if n not in self.cached]
        if not trained:
            first = "trained no SAE"
        elif not fresh:
            first = (f"loaded {len(trained)} SAE{'s' if len(trained) > 1 else ''} ({', '.join(trained)}) from the cache "
                     "of SAEs trained earlier on the same activations with the same settings and code")
        else:
            first = (f"trained {len(fresh)} SAE{'s' if len(fresh) > 1 else ''} ({', '.join(fresh)}) in {secs:.0f} s"
                     + (f" and loaded {len(self.cached)} from the cache ({', '.join(self.cached)})" if self.cached
                        else ""))
        return f"{first}; evaluated {n_eval} unit set{'s' if n_eval != 1 else ''} on held-out activations"


def compare_unit_sets(train_acts: torch.Tensor, eval_acts: torch.Tensor, aip: AIP,
                      specs: Sequence[UnitSetSpec | UnitSet], config: SAEConfig | None = None, *,
                      n_train_eval: int = 10_000, estimator: str = "pairwise", progress: bool = True,
                      cache: bool = True, n_train: int | None = None) -> UnitSetResults:
    """Train every SAE unit set on ``train_acts``; evaluate all on held-out and on training activations.

    Args:
        train_acts: ``[n_train, d_model]`` activations for SAE training (the paper's ``M``), or an
            :class:`atomsnb.store.ActivationStore` streamed by the trainer (paper scale: memory independent of ``|M|``).
        eval_acts: ``[n_eval, d_model]`` held-out activations (disjoint text).
        aip: the AIP fitted on training activations (SPEC §1).
        specs: :class:`UnitSetSpec` s to train (:func:`default_unit_sets`), and/or ready :class:`UnitSet` s
            (a constructed TSAE, an external SAE, ...) evaluated as they are.
        config: base :class:`SAEConfig` (:meth:`SAEConfig.for_model`); the kind, coordinates and coefficient
            come from each spec. Needed only when some spec must be trained.
        n_train_eval: training activations (the first ones) also evaluated, to expose memorisation (0: none).
        estimator: the ``q*`` estimator (SPEC §4).
        progress: show the trainer's progress bar.
        cache: reuse an SAE trained before on the same data with the same settings and code
            (:func:`train_sae_cached`), and store the ones trained now.
        n_train: with a store as ``train_acts``, train on its first ``n_train`` rows (``|M|``; default all of it).

    Returns:
        :class:`UnitSetResults`.

    Raises:
        ValueError: no spec, duplicated names, widths that disagree, a negative ``n_train_eval``, or a spec to train
            without a ``config``.
        TypeError: a spec that is neither a :class:`UnitSetSpec` nor a :class:`UnitSet`.
    """
    if not specs:
        raise ValueError("no unit set to compare: give at least one spec")
    for s in specs:
        if not (isinstance(s, UnitSetSpec) or is_unit_set(s)):
            raise TypeError(f"a spec must be a UnitSetSpec or a UnitSet; got {type(s).__name__}")
    names = [s.name for s in specs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"unit-set names must be unique (they label the table rows); duplicated: {dup}")
    if any(isinstance(s, UnitSetSpec) and s.kind != "neurons" for s in specs) and config is None:
        raise ValueError("some specs must be trained: pass the base SAEConfig (e.g. SAEConfig.for_model(d_model))")
    n_train_eval = positive_int("n_train_eval", n_train_eval, 0)
    d_model = aip.d_model

    if isinstance(train_acts, ActivationStore):
        n_avail = train_acts.n_tokens if n_train is None else positive_int("n_train", n_train)
        if n_avail > train_acts.n_tokens or train_acts.d_model != d_model:
            raise ValueError(f"n_train={n_train} and d_model={train_acts.d_model} of the store must be at most "
                             f"{train_acts.n_tokens} and equal to the AIP's {d_model}")
        train_first = train_acts.read(0, min(int(n_train_eval), n_avail)) if n_train_eval else None
    else:
        if n_train is not None:
            raise ValueError("n_train is for a store as training source; slice an in-memory tensor instead")
        train_acts = check_activations(train_acts, d_model, "the training activations")
        n_avail, train_first = None, train_acts[: int(n_train_eval)]
    eval_acts = check_activations(eval_acts, d_model, "the held-out activations")
    splits = [("held-out", eval_acts)] + ([("train", train_first)] if n_train_eval else [])
    rows, curves, units, histories, cached = [], {}, {}, {}, []
    for spec in specs:
        t0 = time.perf_counter()
        if isinstance(spec, UnitSetSpec):
            if spec.kind == "neurons":
                u, seconds = Neurons(d_model, name=spec.name), math.nan
            else:
                sae, hist, from_cache = train_sae_cached(train_acts, aip, _sae_config(spec, config), n_tokens=n_avail,
                                                         cache=cache, progress=progress)
                if from_cache:
                    cached.append(spec.name)
                u = SAEUnits(sae, aip, name=spec.name, family=spec.family, l0_coefficient=spec.l0_coefficient,
                             l1_coefficient=spec.l1_coefficient)
                histories[spec.name], seconds = hist, time.perf_counter() - t0
        else:
            u, seconds = spec, math.nan
        if u.d_model != d_model:
            raise ValueError(f"{u.name!r} reads d_model={u.d_model} but the activations have d_model={d_model}")
        units[u.name] = u
        for split, x in splits:
            metrics, qs = evaluate_unit_set(u, x, aip, estimator=estimator, return_q_star=True)
            if split == "held-out":
                curves[u.name] = qs
            rows.append({"unit set": u.name, "family": u.family,
                         "l0_coefficient": float(getattr(u, "l0_coefficient", math.nan)),
                         "l1_coefficient": float(getattr(u, "l1_coefficient", math.nan)),
                         "k": float(math.nan if getattr(u, "k", None) is None else u.k),  # ExternalSAE: None
                         "split": split, **metrics, "train_seconds": seconds})
    return UnitSetResults(pd.DataFrame(rows), curves, units, histories, cached)


def _fmt_coef(v) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:g}"


def reader_table(table: pd.DataFrame, split: str = "held-out") -> pd.DataFrame:
    """A reader's version of :func:`compare_unit_sets`' table: one row per unit set, rounded, units in headers.

    The unit set's name carries its family and coefficient (``"atoms (TSAE, L0 coefficient 0.003)"``), so the table
    shows only the metrics (the columns ``family``, ``l0_coefficient``, ``l1_coefficient`` stay in ``table``).

    Args:
        table: :attr:`UnitSetResults.table`.
        split: ``"held-out"`` or ``"train"``.

    Returns:
        Index ``unit set``; columns ``R² (AIP)``, ``explained variance (Euclidean)``, ``q*`` (3 decimals),
        ``L0 (latents/token)`` (1 decimal), ``dead latents (%)`` (1 decimal).

    Raises:
        ValueError: an unknown split or missing columns.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}; got {split!r}")
    need = ["unit set", "split", "r2_aip", "explained_variance", "q_star", "l0", "frac_dead"]
    missing = [c for c in need if c not in table]
    if missing:
        raise ValueError(f"the unit-set table lacks {missing}; pass UnitSetResults.table")
    t = table[table["split"] == split].set_index("unit set")
    return pd.DataFrame({
        METRIC_LABELS["r2_aip"]: t["r2_aip"].round(3),
        METRIC_LABELS["explained_variance"]: t["explained_variance"].round(3),
        METRIC_LABELS["q_star"]: t["q_star"].round(3),
        METRIC_LABELS["l0"]: t["l0"].round(1),
        "dead latents (%)": (100 * t["frac_dead"]).round(1),
    })


def train_vs_heldout_table(table: pd.DataFrame) -> pd.DataFrame:
    """``R²`` (AIP) and ``q*`` on held-out and on training activations side by side, per unit set (3 decimals).

    A held-out number far below its training number is memorisation (SPEC §3).

    Raises:
        ValueError: the table has no ``"train"`` split (``n_train_eval=0``).
    """
    if not (table["split"] == "train").any():
        raise ValueError("the table has no 'train' rows: run compare_unit_sets with n_train_eval > 0")
    held = table[table["split"] == "held-out"].set_index("unit set")
    trn = table[table["split"] == "train"].set_index("unit set")
    return pd.DataFrame({f"{METRIC_LABELS['r2_aip']}, held-out": held["r2_aip"],
                         f"{METRIC_LABELS['r2_aip']}, train": trn["r2_aip"],
                         f"{METRIC_LABELS['q_star']}, held-out": held["q_star"],
                         f"{METRIC_LABELS['q_star']}, train": trn["q_star"]}).round(3)


def _span(values, fmt: str = "{:.3f}") -> str:
    """``"a-b"`` (``"a to b"`` when an end is negative), or one number when both ends print the same."""

    return value_range(values, fmt)


def describe(held: pd.DataFrame, *, condition_number: float | None = None) -> list[str]:
    """Readings of chapter 2's held-out table that are not claims of the paper (those are in :mod:`atomsnb.paper`).

    Every number-dependent word is chosen from the numbers:

    - features: Euclidean explained variance against ``R^2`` in the AIP; the explanation "a Euclidean loss
      neglects the low-variance directions that the AIP weighs" is given only where the gap exceeds
      :data:`atomsnb.paper.EUCLIDEAN_AIP_GAP` at every coefficient;
    - atoms: whether larger L0 coefficients trade faithfulness for stability monotonically;
    - the ablation (ReLU + L1 in AIP coordinates): whether the AIP lifts ``R^2`` above every Euclidean feature
      point, and whether the threshold adds stability at matched ``R^2``;
    - TopK (families ``"topk"``, Euclidean, and ``"topk-aip"``): their spans; whether training in the AIP lifts ``R^2``
      at every ``k`` both were trained at; and whether some atom point dominates some TopK point (higher ``q*`` with
      ``R^2`` at least as high) or the reverse.

    Args:
        held: held-out rows of :attr:`UnitSetResults.table` (``family``, ``l0_coefficient``, ``r2_aip``,
            ``explained_variance``, ``q_star``, ``l0``).
        condition_number: ``cond(E[hh^T])`` of the AIP, quoted in the features sentence.

    Returns:
        The sentences, one per unit-set family present.
    """

    lines = []
    feats = held[held["family"] == "features"]
    atoms = held[held["family"] == "atoms"].sort_values("l0_coefficient")
    abl = held[held["family"] == "ablation"]
    if len(feats):
        gap = feats["explained_variance"] - feats["r2_aip"]
        line = (f"Standard-SAE features: Euclidean explained variance {_span(feats['explained_variance'])}, R² in the "
                f"AIP {_span(feats['r2_aip'], '{:.3g}')}. ")
        cond = f" (cond(E[hh^T]) = {condition_number:.1e} here)" if condition_number is not None else ""
        if (gap > EUCLIDEAN_AIP_GAP).all():
            line += (f"At every coefficient the Euclidean score is higher: a Euclidean loss neglects the low-variance "
                     f"directions that the AIP weighs equally{cond}.")
        elif (gap > EUCLIDEAN_AIP_GAP).any():
            line += (f"The Euclidean score is higher at {int((gap > EUCLIDEAN_AIP_GAP).sum())} of {len(feats)} "
                     f"coefficients only, so the neglect of low-variance directions explains part of the gap at most.")
        else:
            line += "The two scores agree, so the Euclidean loss has not neglected the directions the AIP weighs."
        lines.append(line)
    if len(atoms) >= 2:
        q_up, r_down = atoms["q_star"].is_monotonic_increasing, atoms["r2_aip"].is_monotonic_decreasing
        trend = ("larger L0 coefficients (sparser codes) buy stability at the cost of faithfulness" if q_up and r_down
                 else "larger L0 coefficients raise q* without a steady cost in R²" if q_up
                 else "larger L0 coefficients lower R² without a steady gain in q*" if r_down
                 else "no monotone trade-off between R² and q* across L0 coefficients")
        lines.append(f"TSAE atoms: R² {_span(atoms['r2_aip'])}, q* {_span(atoms['q_star'])}, L0 "
                     f"{_span(atoms['l0'], '{:.1f}')} latents/token: {trend}.")
    if len(abl) and len(feats):
        a = abl.iloc[0]
        lifts = a["r2_aip"] > feats["r2_aip"].max()
        dominated = bool(((atoms["q_star"] > a["q_star"]) & (atoms["r2_aip"] >= a["r2_aip"])).any()) if len(atoms) else False
        lines.append(f"Ablation, ReLU + L1 in AIP coordinates: R² = {a['r2_aip']:.3f}, q* = {a['q_star']:.3f}. Training "
                     f"in the AIP {'lifts' if lifts else 'does not lift'} R² above every Euclidean feature point, and "
                     f"the JumpReLU threshold {'adds' if dominated else 'does not add'} stability at matched R² ("
                     + ("some atom point has a higher q* with R² at least as high)." if dominated else
                        "no atom point has a higher q* with R² at least as high)."))
    lines += _describe_topk(held, atoms)
    return lines


def _dominates(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    """Some row of ``a`` has a higher ``q*`` than some row of ``b`` with ``R^2`` at least as high."""
    return any(bool(((a["q_star"] > q) & (a["r2_aip"] >= r)).any()) for q, r in zip(b["q_star"], b["r2_aip"]))


def _describe_topk(held: pd.DataFrame, atoms: pd.DataFrame) -> list[str]:
    lines = []
    fams = {"topk": "TopK, Euclidean loss on raw activations", "topk-aip": "TopK in AIP coordinates"}
    for fam, label in fams.items():
        t = held[held["family"] == fam]
        if len(t):
            lines.append(f"{label}: k {_span(t['k'], '{:.0f}')}, R² {_span(t['r2_aip'])}, q* {_span(t['q_star'])}, "
                         f"explained variance (Euclidean) {_span(t['explained_variance'])}.")
    euc, aip = held[held["family"] == "topk"], held[held["family"] == "topk-aip"]
    if len(euc) and len(aip):
        both = euc.merge(aip, on="k", suffixes=("_e", "_a"))
        if len(both):
            lifted = int((both["r2_aip_a"] > both["r2_aip_e"]).sum())
            n = len(both)
            where = ("lifts R² at every shared k" if lifted == n else "does not lift R² at any shared k" if lifted == 0
                     else f"lifts R² at {lifted} of {n} shared k only")
            lines.append(f"Training TopK in the AIP {where} (R² in the AIP of the Euclidean TopK "
                         f"{_span(both['r2_aip_e'])}, of the AIP TopK {_span(both['r2_aip_a'])}).")
    tk = held[held["family"].isin(list(fams))]
    if len(tk) and len(atoms):
        a_over, t_over = _dominates(atoms, tk), _dominates(tk, atoms)
        lines.append("Against the TSAE atoms: " + (
            "some atom point dominates some TopK point and some TopK point dominates some atom point (higher q* with "
            "R² at least as high), so neither frontier lies above the other." if a_over and t_over else
            "some atom point dominates some TopK point (higher q* with R² at least as high), and no TopK point "
            "dominates an atom point: the JumpReLU threshold's frontier lies above TopK's here." if a_over else
            "some TopK point dominates some atom point (higher q* with R² at least as high), and no atom point "
            "dominates a TopK point: TopK's frontier lies above the TSAE's here." if t_over else
            "no point of either family dominates a point of the other."))
    return lines


def with_spliced_scores(held: pd.DataFrame, spliced: dict) -> pd.DataFrame:
    """Held-out rows of :func:`compare_unit_sets` joined with :func:`atomsnb.splice.spliced_scores` per unit set.

    Args:
        held: rows with a ``unit set`` column (e.g. the ``"held-out"`` split of :attr:`UnitSetResults.table`).
        spliced: unit-set name -> :class:`atomsnb.splice.SpliceScores`.

    Returns:
        ``held`` with the score columns (``ce_loss_score``, ``kl_div_score``, ``ce_loss_with_sae``, ...) added.

    Raises:
        ValueError: a unit set of ``held`` without spliced scores, or scores of a unit set not in ``held``.
    """
    names = list(held["unit set"])
    if set(names) != set(spliced):
        raise ValueError(f"spliced scores are for {sorted(spliced)} but the table has unit sets {sorted(names)}")
    scores = pd.DataFrame([{"unit set": n, **spliced[n].as_dict()} for n in names])
    return held.merge(scores.drop(columns=["layer"], errors="ignore"), on="unit set", how="left", validate="one_to_one")


def spliced_reader_table(table: pd.DataFrame) -> pd.DataFrame:
    """:func:`with_spliced_scores` for a reader: per unit set, the activation-space metrics beside the spliced-in ones.

    The clean and zero-ablated losses are the same for every unit set (one model, one set of windows); they are given
    once, in the header of the spliced loss, rather than repeated in two columns.

    Returns:
        Index ``unit set``; ``R² (AIP)``, ``explained variance (Euclidean)``, ``q*``, ``ce_loss_score``,
        ``kl_div_score`` (3 decimals) and ``CE spliced (nats; clean <c>, zero-ablated <z>)`` (3 decimals).

    Raises:
        ValueError: missing columns, or clean / zero-ablated losses that differ between rows (more than one model or
            set of windows: show those tables separately).
    """
    need = ["unit set", "r2_aip", "explained_variance", "q_star", "ce_loss_score", "kl_div_score", "ce_loss_with_sae",
            "ce_loss_without_sae", "ce_loss_with_ablation"]
    missing = [c for c in need if c not in table.columns]
    if missing:
        raise ValueError(f"the table lacks columns {missing}; build it with with_spliced_scores")
    shared = {}
    for col in ("ce_loss_without_sae", "ce_loss_with_ablation"):
        values = table[col].round(3).unique()
        if len(values) != 1:
            raise ValueError(f"{col} differs between rows ({sorted(values)}): one table per model and set of windows")
        shared[col] = float(values[0])
    spliced = (f"CE spliced (nats; clean {shared['ce_loss_without_sae']:.3f}, zero-ablated "
               f"{shared['ce_loss_with_ablation']:.3f})")
    return pd.DataFrame({
        METRIC_LABELS["r2_aip"]: table["r2_aip"].round(3).to_numpy(),
        METRIC_LABELS["explained_variance"]: table["explained_variance"].round(3).to_numpy(),
        METRIC_LABELS["q_star"]: table["q_star"].round(3).to_numpy(),
        "ce_loss_score": table["ce_loss_score"].round(3).to_numpy(),
        "kl_div_score": table["kl_div_score"].round(3).to_numpy(),
        spliced: table["ce_loss_with_sae"].round(3).to_numpy(),
    }, index=pd.Index(table["unit set"].to_numpy(), name="unit set"))
