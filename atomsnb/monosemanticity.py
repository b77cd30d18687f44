"""Are atoms more monosemantic than neurons and features? Comparisons and readings of the judges' scores (paper §7).

Chapter 5 scores sampled units of each unit set with several judges (:mod:`atomsnb.judges`: token
concentration, embedding coherence, optionally an LLM and human ratings), each beside its chance
baselines. This module turns those scores into what the chapter reports:

- :func:`unit_set_differences`: ``mean(atoms) - mean(other)`` per judge with a bootstrap confidence
  interval over units (:func:`atomsnb.judges.bootstrap_difference`, each set resampled separately);
- :func:`format_differences`: the same as one line of text, for the claim record;
- :func:`describe`: the chapter's verdict lines (per judge: the ranking, the comparisons, which sets
  beat both chance levels; the judges' agreement; whether ``q*`` orders the sets as the judges do),
  every number-dependent word chosen from the numbers;
- :func:`reader_summary`, :func:`reader_differences`, :func:`reader_agreement`, :func:`stability_table`: the tables
  for a reader.

And it runs the chapter's pipeline from unit sets to judged scores:

- :func:`reading_contexts`: every unit set's codes on the reading text (massive tokens zeroed, so that they are never
  a top context), ``n_units`` units sampled per set, their top contexts, and a pool of contexts at random tokens;
- :func:`make_judges`: the offline judges (token concentration with base rates of the reading text, embedding
  coherence) and, when an endpoint is configured, the LLM judge;
- :func:`judge_units`: every judge on every sampled unit and on the chance pools, with human ratings appended;
- :func:`contexts_html`: what the judges read, one HTML block per unit set, each unit with its offline scores.

The verdicts on the paper's claims are :func:`atomsnb.verdicts.check_mono_atoms_more_monosemantic` and
:func:`atomsnb.verdicts.check_mono_llm_human_judgement`, which read :func:`unit_set_differences`' table.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import pandas as pd
import torch

from . import judges as J
from ._validate import check_massive_k
from .contexts import (
    Context,
    UnitContexts,
    random_contexts,
    render_html,
    sample_units,
    top_contexts,
)
from .massive import massive_token_mask
from .metrics import METRIC_LABELS
from .paper import MONO_CI
from .units import is_unit_set

__all__ = ["SETS", "unit_set_differences", "format_differences", "describe", "reader_summary", "reader_differences",
           "reader_agreement", "stability_table", "ReadingContexts", "reading_contexts", "make_judges", "judge_units",
           "contexts_html", "OFFLINE_JUDGES"]

#: Names of the judges that run offline (the others are the LLM and human judges).
OFFLINE_JUDGES = (J.TokenConcentrationJudge.name, J.EmbeddingJudge.name)

#: The unit sets of chapter 5, in the paper's order.
SETS = ("neurons", "features", "atoms")


def _need(df: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"{what} must be a pandas DataFrame; got {type(df).__name__}")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what} lacks the column(s) {missing}; it has {list(df.columns)}")


def unit_set_differences(scores: pd.DataFrame, *, reference: str = "atoms", others: Sequence[str] = ("features", "neurons"),
                         n_boot: int = 2000, ci: float | None = None, seed: int = 0) -> pd.DataFrame:
    """``mean(reference) - mean(other)`` per judge, with a bootstrap CI over units (paper §7).

    Args:
        scores: :func:`atomsnb.judges.score_table` output (``unit set``, ``unit``, ``judge``, ``score``), possibly
            with human ratings appended.
        reference: the unit set compared with the others (the atoms).
        others: the unit sets it is compared with.
        n_boot: bootstrap resamples.
        ci: confidence level (default :data:`atomsnb.paper.MONO_CI`).
        seed: bootstrap seed (the same for every judge and pair, so results are reproducible).

    Returns:
        One row per (judge, other): ``judge``, ``difference`` (``"atoms - features"``), ``value``, ``ci_low``,
        ``ci_high``, ``ci_above_0``, ``ci_below_0`` (bool; both False when the CI contains 0 or is undefined),
        ``ci_level`` and ``n``.

    Raises:
        ValueError: missing columns, ``n_boot < 1``, a level outside ``(0, 1)``, or a judge without scores for
            the reference or one of the other sets.
    """
    ci = MONO_CI if ci is None else ci
    _need(scores, ["unit set", "judge", "score"], "the scores table (atomsnb.judges.score_table)")
    if isinstance(n_boot, bool) or not isinstance(n_boot, int) or n_boot < 1:
        raise ValueError(f"n_boot must be an integer >= 1; got {n_boot!r}")
    if not 0 < ci < 1:
        raise ValueError(f"ci must be in (0, 1); got {ci!r}")
    rows = []
    for judge, g in scores.groupby("judge", sort=False):
        present = set(g["unit set"])
        missing = [s for s in (reference, *others) if s not in present]
        if missing:
            raise ValueError(f"judge {judge!r} has no scores for the unit set(s) {missing}; present: {sorted(present)}")
        ref = g.loc[g["unit set"] == reference, "score"]
        for other in others:
            d = J.bootstrap_difference(ref, g.loc[g["unit set"] == other, "score"], n_boot=n_boot, ci=ci, seed=seed)
            rows.append({"judge": judge, "difference": f"{reference} - {other}", "value": d.value, "ci_low": d.low,
                         "ci_high": d.high, "ci_above_0": bool(d.low > 0), "ci_below_0": bool(d.high < 0),
                         "ci_level": ci, "n": d.n})
    return pd.DataFrame(rows, columns=["judge", "difference", "value", "ci_low", "ci_high", "ci_above_0", "ci_below_0",
                                       "ci_level", "n"])


def format_differences(diffs: pd.DataFrame) -> str:
    """``"judge: atoms - features = +0.120 [+0.050, +0.190]; ..."`` for the rows of :func:`unit_set_differences`."""
    _need(diffs, ["judge", "difference", "value", "ci_low", "ci_high"], "the differences table")
    return "; ".join(f"{r['judge']}: {r['difference']} = {r['value']:+.3f} [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}]"
                     for _, r in diffs.iterrows())


def _level(diffs: pd.DataFrame) -> str:
    levels = set(diffs["ci_level"]) if "ci_level" in diffs else {MONO_CI}
    return "/".join(f"{lv:.0%}" for lv in sorted(levels))


def _relation(row: pd.Series) -> str:
    return "above" if row["ci_above_0"] else "below" if row["ci_below_0"] else "not separable from"


def describe(summary: pd.DataFrame, diffs: pd.DataFrame, *, metrics: pd.DataFrame | None = None,
             agreement: pd.DataFrame | None = None, offline_judges: Sequence[str] = (),
             sets: Sequence[str] = SETS, reference: str = "atoms") -> list[str]:
    """Chapter 5's verdict lines, every number-dependent word chosen from the numbers.

    Args:
        summary: :func:`atomsnb.judges.summary_table` output (``judge``, ``unit set``, ``mean``, ``ci_low`` and the
            chance columns ``chance (random tokens)``, ``chance (shuffled)``).
        diffs: :func:`unit_set_differences` output.
        metrics: held-out rows of :attr:`atomsnb.evaluation.UnitSetResults.table` indexed by unit set (``q_star``), for
            the "does q* order the sets as the judges do" line; None to skip it.
        agreement: :func:`atomsnb.judges.judge_agreement` output; None or empty to skip.
        offline_judges: the judges whose order is compared with ``q*``'s.
        sets: the unit sets, in display order.
        reference: the set the differences are taken from.

    Returns:
        One line per judge, then the agreement line, the ``q*`` ordering line and the count of comparisons with a CI
        above 0.
    """
    _need(summary, ["judge", "unit set", "mean", "ci_low"], "the summary table (atomsnb.judges.summary_table)")
    _need(diffs, ["judge", "difference", "ci_above_0", "ci_below_0"], "the differences table")
    s = summary.set_index(["judge", "unit set"])
    lines = []
    for judge in dict.fromkeys(summary["judge"]):
        row = {n: s.loc[(judge, n)] for n in sets}
        chance_cols = [c for c in ("chance (random tokens)", "chance (shuffled)") if c in summary]
        above = [n for n in sets if chance_cols and row[n]["ci_low"] > max(row[n][c] for c in chance_cols)]
        ranking = sorted(sets, key=lambda n: -row[n]["mean"])
        d = diffs[diffs["judge"] == judge].set_index("difference")
        words = [f"{_relation(d.loc[k])} {k.split(' - ', 1)[1]}" for k in d.index]
        chance = (f" (chance {row[reference]['chance (random tokens)']:.2f} at random tokens)"
                  if "chance (random tokens)" in summary else "")
        line = (f"{judge}: " + ", ".join(f"{n} {row[n]['mean']:.2f}" for n in sets) + f"{chance}. Ranking: "
                f"{' > '.join(ranking)}")
        if words:
            line += f"; {reference} are {' and '.join(words)} ({_level(d)} CIs)"
        if chance_cols:
            line += f". Above both chance levels: {', '.join(above) or 'none'}"
        lines.append(line + ".")
    if agreement is not None and len(agreement):
        lines.append("Agreement between judges: " + "; ".join(
            f"{r['judge a']} vs {r['judge b']}: rho = {r['spearman_rho']:.2f}" for _, r in agreement.iterrows()) + ".")
    if metrics is not None and len(offline_judges):
        order_q = sorted(sets, key=lambda n: -float(metrics.loc[n, "q_star"]))
        same = [j for j in offline_judges if sorted(sets, key=lambda n: -s.loc[(j, n), "mean"]) == order_q]
        noisy = [j for j in same if not (diffs.loc[diffs["judge"] == j, ["ci_above_0", "ci_below_0"]].to_numpy().any())]
        caveat = (f" ({' and '.join(noisy)} cannot separate {reference} from the other sets: "
                  f"{'its' if len(noisy) == 1 else 'their'} order is within the noise)" if noisy else "")
        lines.append(f"q* orders the sets {' > '.join(order_q)}; "
                     + (f"the same order as {' and '.join(same)}{caveat}." if same else
                        "no offline judge orders them the same way."))
    n_up, n_all = int(diffs["ci_above_0"].sum()), len(diffs)
    lines.append(f"{n_up} of {n_all} comparisons of {reference} with another set have a {_level(diffs)} CI above 0.")
    return lines


def reader_summary(summary: pd.DataFrame, *, ci: float | None = None) -> pd.DataFrame:
    """:func:`atomsnb.judges.summary_table` for a reader: index (judge, unit set); ``mean score``, ``<level> CI``
    (``"[low, high]"``), the chance columns and ``units`` (3 decimals).

    Args:
        ci: the level the summary was computed at (default :data:`atomsnb.paper.MONO_CI`), for the header.
    """
    _need(summary, ["judge", "unit set", "mean", "ci_low", "ci_high", "n"], "the summary table")
    out = summary.set_index(["judge", "unit set"])
    res = pd.DataFrame({"mean score": out["mean"].round(3),
                        f"{MONO_CI if ci is None else ci:.0%} CI": [f"[{lo:.3f}, {hi:.3f}]"
                                                                    for lo, hi in zip(out["ci_low"], out["ci_high"])]},
                       index=out.index)
    for c in ("chance (random tokens)", "chance (shuffled)"):
        if c in out:
            res[c] = out[c].round(3)
    res["units"] = out["n"]
    return res


def reader_differences(diffs: pd.DataFrame) -> pd.DataFrame:
    """:func:`unit_set_differences` for a reader: index (judge, difference); ``difference of means``, ``95% CI``
    and ``reading`` (``"atoms higher"``, ``"atoms lower"`` or ``"not separable"``)."""
    _need(diffs, ["judge", "difference", "value", "ci_low", "ci_high", "ci_above_0", "ci_below_0"],
          "the differences table")
    out = diffs.set_index(["judge", "difference"])
    ref = [d.split(" - ", 1)[0] for d in diffs["difference"]]
    reading = [f"{r} higher" if up else f"{r} lower" if down else "not separable"
               for r, up, down in zip(ref, diffs["ci_above_0"], diffs["ci_below_0"])]
    return pd.DataFrame({"difference of means": out["value"].round(3),
                         f"{_level(diffs)} CI": [f"[{lo:+.3f}, {hi:+.3f}]" for lo, hi in zip(out["ci_low"], out["ci_high"])],
                         "reading": reading}, index=out.index)


def stability_table(metrics: pd.DataFrame, summary: pd.DataFrame, sets: Sequence[str] = SETS) -> pd.DataFrame:
    """Each set's ``q*``, ``R²`` (AIP) and L0 beside its mean judged monosemanticity (the paper's argument that
    a unique decomposition is necessary for monosemanticity): index unit set, 2-3 decimals.

    Args:
        metrics: held-out rows of the unit-set table indexed by unit set (``q_star``, ``r2_aip``, ``l0``).
        summary: :func:`atomsnb.judges.summary_table` output.
    """
    means = summary.pivot_table(index="unit set", columns="judge", values="mean").reindex(
        index=list(sets), columns=list(dict.fromkeys(summary["judge"])))  # judges in the summary's order
    means.columns = [f"{c} (mean score)" for c in means.columns]
    m = metrics.loc[list(sets)]
    base = pd.DataFrame({METRIC_LABELS["q_star"]: m["q_star"].round(3), METRIC_LABELS["r2_aip"]: m["r2_aip"].round(3),
                         METRIC_LABELS["l0"]: m["l0"].round(1)})
    return pd.concat([base, means.round(3)], axis=1)


def reader_agreement(agreement: pd.DataFrame) -> pd.DataFrame:
    """:func:`atomsnb.judges.judge_agreement` for a reader: index (judge a, judge b); ``Spearman rho`` (2 decimals),
    ``p-value`` (3 significant digits) and ``units`` (scored by both)."""
    _need(agreement, ["judge a", "judge b", "spearman_rho", "p_value", "n"], "the agreement table")
    out = agreement.set_index(["judge a", "judge b"])
    return pd.DataFrame({"Spearman rho": out["spearman_rho"].round(2),
                         "p-value": [f"{p:.3g}" for p in out["p_value"]], "units": out["n"]}, index=out.index)


# ---------------------------------------------------------------------------------------------------------------------
# From unit sets to judged contexts
# ---------------------------------------------------------------------------------------------------------------------
def _count(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")
    return int(value)


@dataclass
class ReadingContexts:
    """What the judges read: top contexts of sampled units of every unit set on the reading text (paper §7).

    Attributes:
        units: unit-set name -> one :class:`~atomsnb.contexts.UnitContexts` per sampled unit (sorted unit indices).
        random_pool: contexts at random (non-massive) tokens of the reading text: the "random tokens" chance pool.
        table: one row per unit set: ``unit set``, ``latents`` (``|D|``), ``eligible`` (units active in at least ``k``
            distinct windows), ``sampled``, ``contexts`` (shown in all), ``tokens active per unit (median)`` (among
            the sampled units).
        n_tokens: tokens of the reading text.
        excluded: ``[n_tokens]`` bool, the massive tokens whose codes were set to zero (all False without
            ``massive_k``).
        massive_k: the criterion (:func:`atomsnb.massive.massive_token_mask`), or None.
        k: contexts per unit.
    """

    units: dict[str, list[UnitContexts]]
    random_pool: list[Context]
    table: pd.DataFrame
    n_tokens: int
    excluded: torch.Tensor
    massive_k: float | None = None
    k: int = 8
    pools: dict[str, list[Context]] = field(init=False)

    def __post_init__(self):
        self.pools = {"random tokens": self.random_pool,
                      **{name: [c for u in us for c in u.contexts] for name, us in self.units.items()}}

    @property
    def n_excluded(self) -> int:
        """Massive tokens whose codes were set to zero."""
        return int(self.excluded.sum())


def reading_contexts(unit_sets: Mapping[str, object], reading, layer: int, tokenizer, *, n_units: int, k: int = 8,
                     width_left: int = 12, width_right: int = 4, max_per_window: int | None = 1,
                     massive_k: float | None = None, n_random: int | None = None, seed: int = 0,
                     batch_size: int = 8192) -> ReadingContexts:
    """Sample units of every unit set and collect their top contexts on the reading text (paper §7).

    For each unit set (in the order given; set ``i`` samples with seed ``seed + i``):

    1. its codes on the reading activations, ``[n_tokens, n_latents]`` float32, computed in batches of ``batch_size``
       tokens; with ``massive_k`` the rows of massive tokens (norm above ``massive_k`` times the median token norm of
       the reading text, :func:`atomsnb.massive.massive_token_mask`) are set to zero, so a massive token is never a
       top context (the unit sets were neither trained nor evaluated on such tokens);
    2. ``n_units`` units drawn among those active in at least ``k`` distinct windows
       (:func:`~atomsnb.contexts.sample_units`);
    3. their ``k`` top contexts, at most ``max_per_window`` per window (:func:`~atomsnb.contexts.top_contexts`).

    The codes of one set are dropped before the next set's are computed. The "random tokens" chance pool holds
    ``n_random`` contexts (default ``20 k``) at tokens drawn uniformly among the non-massive ones.

    Args:
        unit_sets: name -> :class:`atomsnb.units.UnitSet` (e.g. :attr:`atomsnb.evaluation.UnitSetResults.units`).
        reading: :class:`atomsnb.activations.Activations` of the reading text holding ``layer``.
        layer: the residual-stream layer the unit sets read.
        tokenizer: the LM's tokenizer.
        n_units: units sampled per set (fewer when fewer are eligible).
        k, width_left, width_right, max_per_window: as :func:`~atomsnb.contexts.top_contexts`.
        massive_k: the massive-token criterion (a number > 1), or None to keep every token.
        n_random: contexts in the random-token pool (default ``20 k``).
        seed: seed of the unit samples and of the random pool.
        batch_size: tokens per batch when computing codes.

    Returns:
        :class:`ReadingContexts`.

    Raises:
        ValueError: no unit set, a layer the reading activations do not hold, a unit set of another width, a bad count
            or ``massive_k`` (before any work).
        TypeError: a unit set that does not present the :class:`atomsnb.units.UnitSet` interface.
    """
    if not unit_sets:
        raise ValueError("no unit set to read: give at least one")
    if layer not in reading.acts:
        raise ValueError(f"the reading activations hold layers {sorted(reading.acts)}, not layer {layer!r}")
    x = reading.acts[layer]
    for name, u in unit_sets.items():
        if not is_unit_set(u):
            raise TypeError(f"unit set {name!r} does not present the UnitSet interface; got {type(u).__name__}")
        if u.d_model != x.shape[1]:
            raise ValueError(f"unit set {name!r} reads d_model={u.d_model} but the reading activations have "
                             f"d_model={x.shape[1]}")
    n_units, k = _count("n_units", n_units, 1), _count("k", k, 1)
    batch_size = _count("batch_size", batch_size, 1)
    n_random = 20 * k if n_random is None else _count("n_random", n_random, 0)
    check_massive_k(massive_k)
    excluded = (massive_token_mask(x, float(massive_k)) if massive_k is not None
                else torch.zeros(x.shape[0], dtype=torch.bool))
    keep = (~excluded).to(torch.float32)[:, None]
    units, rows = {}, []
    for i, (name, u) in enumerate(unit_sets.items()):
        codes = torch.cat([u.codes(x[s:s + batch_size]).to(torch.float32) * keep[s:s + batch_size]
                           for s in range(0, x.shape[0], batch_size)])
        eligible = sample_units(codes, codes.shape[1], seed + i, min_active=k, window=reading.window)
        chosen = sample_units(codes, n_units, seed + i, min_active=k, window=reading.window)
        units[name] = top_contexts(codes, reading, tokenizer, chosen, k=k, width_left=width_left,
                                   width_right=width_right, max_per_window=max_per_window, unit_set=name)
        del codes
        active = [uc.n_active for uc in units[name]]
        rows.append({"unit set": name, "latents": int(u.n_latents), "eligible": len(eligible), "sampled": len(chosen),
                     "contexts": sum(len(uc) for uc in units[name]),
                     "tokens active per unit (median)": float(pd.Series(active).median()) if active else math.nan})
    pool = random_contexts(reading, tokenizer, n_random, seed, width_left=width_left, width_right=width_right,
                           exclude=excluded)
    return ReadingContexts(units, pool, pd.DataFrame(rows).set_index("unit set"), int(x.shape[0]), excluded,
                           None if massive_k is None else float(massive_k), k)


def make_judges(reading, tokenizer, *, lm=None, layer: int | None = None, llm_base_url: str | None = None,
                llm_model: str | None = None) -> tuple[list[J.Judge], list[str]]:
    """The judges of chapter 5 and one line about each.

    - token concentration (:class:`atomsnb.judges.TokenConcentrationJudge`), base rates from the tokens of the
      reading text ``reading``;
    - embedding coherence (:class:`atomsnb.judges.EmbeddingJudge`) with :func:`atomsnb.judges.default_embedder`
      (all-MiniLM-L6-v2 if installed, else the LM's own states at ``layer``);
    - the LLM judge (:class:`atomsnb.judges.LLMJudge`) when an endpoint and a model are given here or in the
      environment (``ATOMSNB_LLM_BASE_URL``, ``ATOMSNB_LLM_MODEL``); its API key comes from ``OPENAI_API_KEY`` only.

    Returns:
        ``(judges, notes)``: the judges in that order and one line per judge (the LLM line says how to configure it
        when it is not).

    Raises:
        ValueError: from :class:`atomsnb.judges.LLMJudge` (a bad endpoint), before any request.
    """
    tc = J.TokenConcentrationJudge.from_activations(reading, tokenizer)
    embedder = J.default_embedder(lm, layer)
    out: list[J.Judge] = [tc, J.EmbeddingJudge(embedder)]
    notes = [f"{tc.name}: base rates of {len(tc.base_rates):,} normalised token types in the reading text",
             f"{J.EmbeddingJudge.name}: {embedder.name}"]
    if J.LLMJudge.configured(llm_base_url, llm_model):
        llm = J.LLMJudge(llm_base_url, llm_model)
        out.append(llm)
        notes.append(f"{llm.name}: at {J.redact(llm.base_url)}")
    else:
        notes.append("LLM judge: not configured, skipped (pass -p llm_base_url URL -p llm_model NAME, or set "
                     "ATOMSNB_LLM_BASE_URL and ATOMSNB_LLM_MODEL; an API key is read from OPENAI_API_KEY only)")
    return out, notes


def judge_units(judges: Sequence[J.Judge], contexts: ReadingContexts, *, n_chance: int, seed: int = 0,
                ratings: pd.DataFrame | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every judge on every sampled unit, and on ``n_chance`` pseudo-units of each chance pool (paper §7).

    The chance pools are :attr:`ReadingContexts.pools`: contexts at random tokens, and each set's own top contexts
    (shuffled across its units by :func:`atomsnb.judges.chance_table`).

    Args:
        judges: e.g. :func:`make_judges`' list.
        contexts: :func:`reading_contexts` output.
        n_chance: pseudo-units per chance pool.
        seed: seed of the pseudo-units.
        ratings: :func:`atomsnb.ratings.read_ratings` output (``unit set``, ``unit``, ``score``), appended as the
            judge ``"human"``; None for none.

    Returns:
        ``(scores, chance)``: :func:`atomsnb.judges.score_table` (with the human rows) and
        :func:`atomsnb.judges.chance_table` outputs.

    Raises:
        ValueError: ``n_chance < 1``; ratings without the columns ``unit set, unit, score``, or of units that were not
            sampled here (the sheet of another run).
    """
    n_chance = _count("n_chance", n_chance, 1)
    scores = J.score_table(judges, contexts.units)
    chance = J.chance_table(judges, contexts.pools, n_chance, contexts.k, seed)
    if ratings is not None:
        _need(ratings, ["unit set", "unit", "score"], "the ratings (atomsnb.ratings.read_ratings)")
        sampled = {(name, u.unit) for name, us in contexts.units.items() for u in us}
        foreign = [(s, int(u)) for s, u in zip(ratings["unit set"], ratings["unit"]) if (s, int(u)) not in sampled]
        if foreign:
            raise ValueError(f"the ratings hold {len(foreign)} unit(s) that this run did not sample, e.g. {foreign[:3]}: "
                             "the sheet comes from a run with other parameters")
        human = ratings.assign(judge="human")[["unit set", "unit", "judge", "score"]]
        scores = pd.concat([scores, human], ignore_index=True)
    return scores, chance


def contexts_html(contexts: ReadingContexts, scores: pd.DataFrame, *, n_show: int,
                  judges: Sequence[str] = OFFLINE_JUDGES) -> list[str]:
    """What the judges read: for each unit set, its first ``n_show`` sampled units with their contexts (HTML, the
    token highlighted by :func:`atomsnb.contexts.render_html`) and, beside each unit, its scores by ``judges``
    (``"0.25 / 0.61"``, in the order of ``judges``; ``"-"`` where a judge has no score).

    Raises:
        ValueError: ``n_show < 1`` or a scores table without the columns of :func:`atomsnb.judges.score_table`.
    """
    n_show = _count("n_show", n_show, 1)
    _need(scores, ["unit set", "unit", "judge", "score"], "the scores table")
    wide = scores.pivot_table(index=["unit set", "unit"], columns="judge", values="score", dropna=False)
    shown_judges = [j for j in judges if j in wide.columns]
    out = []
    for name, us in contexts.units.items():
        shown = us[:n_show]
        notes = {}
        for u in shown:
            vals = [wide.loc[(name, u.unit), j] if (name, u.unit) in wide.index else math.nan for j in shown_judges]
            notes[u.unit] = " / ".join("-" if not math.isfinite(v) else f"{v:.2f}" for v in vals)
        title = (f"{name}: {len(shown)} of {len(us)} sampled units"
                 + (f" (scores: {' / '.join(shown_judges)})" if shown_judges else ""))
        out.append(render_html(shown, title=title, scores=notes))
    return out
