"""An atom browser: one static HTML page per unit set, a card per unit (paper §7; issue 17).

What `Neuronpedia <https://www.neuronpedia.org>`_ and ``sae-dashboard`` show for a latent, offline and lean. For each
unit of a sample: its top-activating contexts with every token shaded by the unit's activation there, a histogram of
its positive activations, how often it fires, the output tokens its decoder direction promotes and suppresses
through the unembedding (the logit lens), and its contribution to the unit set's ``q*``.

Two steps, tested apart:

- **data** (:func:`browser_data`): a :class:`atomsnb.units.UnitSet`, held-out activations with their tokens and
  windows, the loaded model and the AIP -> :class:`BrowserData` (plain numbers and strings);
- **rendering** (:func:`render_page`): :class:`BrowserData` -> one HTML string with inline CSS and JavaScript and the
  records embedded as JSON: no server, no network, no CDN. A search box filters cards by the tokens and contexts they
  show; a menu sorts them by firing frequency or by ``q*`` contribution. Cards are plain HTML, readable without
  JavaScript.

Definitions (each also stated on the page):

- **firing frequency**: the fraction of the held-out tokens (massive tokens left out, as for every metric) on which
  the unit's code is > 0. For neurons (signed coordinates) that is the positive half, the direction in which
  contexts are read (:mod:`atomsnb.contexts`).
- **logit lens** (:func:`logit_lens`): ``W_U (g * P d_j) / ||d_j||``, with ``d_j`` the unit's dictionary column (raw
  coordinates), ``g`` the final norm's effective gain (RMSNorm: its weight; Gemma's RMSNorm: ``1 + weight``, read off
  the module by probing it, :func:`final_norm_gain`), ``P`` the centring of a LayerNorm (identity for RMSNorm) and
  ``W_U`` the unembedding. This is the linear part of ``logits(norm(h))`` in the direction ``d_j``; the norm's
  division by the residual's RMS is one positive number per token, so it changes no ranking, and a norm bias or a
  logit soft-cap (Gemma) is the same for every unit and is left out.
- **q* contribution** (:func:`q_star_contributions`): ``q*(D) - q*(D without unit j)`` on the same held-out codes
  (the pairwise estimator of :func:`atomsnb.metrics.q_star`): how much ``q*`` would drop if the unit were removed
  (its pairs leave the coherence sample, it leaves the support of every token it fires on). Negative: the set is
  more stable without it. Exact (the counts below each bound are exact), not a linearisation.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import NamedTuple

import pandas as pd
import torch

from ._validate import positive_int
from .activations import Activations
from .aip import AIP
from .architecture import UnsupportedModelError
from .contexts import sample_units, top_contexts
from .metrics import q_star_from_samples, uniqueness_bound, whitened_atoms
from .units import is_unit_set

__all__ = ["FinalNorm", "final_norm_gain", "LogitLens", "logit_lens", "QStarContributions", "q_star_contributions",
           "UnitRecord", "BrowserData", "browser_data", "render_page", "SHADES", "shade", "summary_table", "summary_reader_table", "describe"]


# ---------------------------------------------------------------------------------------------------------------------
# The logit lens
# ---------------------------------------------------------------------------------------------------------------------
_FINAL_NORMS = ("model.norm", "transformer.ln_f", "gpt_neox.final_layer_norm", "model.decoder.final_layer_norm",
                "model.language_model.norm")


class FinalNorm(NamedTuple):
    """The linear part of a model's final norm (what the logit lens applies before ``W_U``)."""

    gain: torch.Tensor
    """``[d_model]`` float64 effective elementwise gain ``g`` (ones when the model has no final norm)."""
    centre: bool
    """True for a LayerNorm (the mean over ``d_model`` is subtracted first), False for an RMSNorm."""
    how: str
    """One sentence for a reader: which module, which kind, how ``g`` was read."""


def final_norm_gain(model: torch.nn.Module) -> FinalNorm:
    """The final norm's effective gain, read off the module (GPT-2, Llama/SmolLM2, Gemma 2/3, Pythia).

    A ``torch.nn.LayerNorm`` gives its ``weight`` and ``centre=True``. Any other norm is probed as an RMSNorm: applied
    to ``c * 1`` (``c = 1000``, so its epsilon is negligible) it returns its effective gain, whatever the convention
    (Llama's ``weight``, Gemma's ``1 + weight``); the probe is then checked on a random vector, ``norm(v)`` against
    ``g * v / rms(v)``.

    Args:
        model: a ``transformers`` causal LM (``LoadedModel.model``).

    Returns:
        :class:`FinalNorm`.

    Raises:
        UnsupportedModelError: no final norm at the known places (``model.norm``, ``transformer.ln_f``, ...) and no
            ``get_output_embeddings``, or a final norm that behaves like neither a LayerNorm nor an RMSNorm.
    """
    norm, where = None, None
    for path in _FINAL_NORMS:
        obj = model
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        if isinstance(obj, torch.nn.Module):
            norm, where = obj, path
            break
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        raise UnsupportedModelError(f"{type(model).__name__} has no output embedding (get_output_embeddings): no "
                                    "unembedding to read a logit lens through")
    d = int(head.weight.shape[1])
    if norm is None:
        raise UnsupportedModelError(f"cannot find the final norm of {type(model).__name__} at "
                                    f"{', '.join(_FINAL_NORMS)}")
    p = next(norm.parameters(), head.weight)
    if isinstance(norm, torch.nn.LayerNorm):
        gain = (norm.weight.detach().double() if norm.weight is not None else torch.ones(d, dtype=torch.float64))
        return FinalNorm(gain, True, f"final norm {where} (LayerNorm): g = its weight, centred direction")
    with torch.no_grad():
        gain = norm(torch.full((1, d), 1000.0, dtype=p.dtype, device=p.device)).double().cpu()[0]
        v = torch.randn(1, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        got = norm(v.to(dtype=p.dtype, device=p.device)).double().cpu()[0]
    want = gain * v[0] / v[0].pow(2).mean().sqrt()
    tol = 1e-4 if p.dtype == torch.float32 or p.dtype == torch.float64 else 3e-2
    if not torch.isfinite(gain).all() or (got - want).norm() > tol * want.norm():
        raise UnsupportedModelError(f"the final norm {where} ({type(norm).__name__}) is neither a LayerNorm nor an "
                                    "RMSNorm (norm(v) is not g * v / rms(v)): its logit lens is not supported")
    return FinalNorm(gain, False, f"final norm {where} ({type(norm).__name__}, an RMSNorm): g = its effective gain, "
                                  "read by applying it to a constant vector")


class LogitLens(NamedTuple):
    """Tokens each direction promotes and suppresses most (:func:`logit_lens`)."""

    promoted_ids: torch.Tensor
    """``[n_directions, k]`` int64 token ids, largest logit change first."""
    promoted: torch.Tensor
    """``[n_directions, k]`` float64 their logit changes (per unit norm of the direction)."""
    suppressed_ids: torch.Tensor
    """``[n_directions, k]`` int64 token ids, most negative first."""
    suppressed: torch.Tensor
    """``[n_directions, k]`` float64 their logit changes."""
    how: str
    """One sentence: what was computed (the norm's part, :attr:`FinalNorm.how`)."""


def logit_lens(model: torch.nn.Module, directions: torch.Tensor, *, k: int = 10) -> LogitLens:
    """The logit lens of residual-stream directions: ``W_U (g * P d / ||d||)`` and its top and bottom ``k`` tokens.

    Args:
        model: the causal LM (``LoadedModel.model``); its unembedding is ``get_output_embeddings().weight``
            ``[vocab, d_model]`` and its final norm is read by :func:`final_norm_gain`.
        directions: ``[d_model, n_directions]`` (a unit set's dictionary columns, or some of them), raw coordinates.
        k: tokens per side.

    Returns:
        :class:`LogitLens`.

    Raises:
        ValueError: ``directions`` not 2-D with ``d_model`` rows, a zero or non-finite direction, or ``k`` not in
            ``1..vocab``.
        UnsupportedModelError: as :func:`final_norm_gain`.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        raise UnsupportedModelError(f"{type(model).__name__} has no output embedding (get_output_embeddings): no "
                                    "unembedding to read a logit lens through")
    W_U = head.weight.detach()
    vocab, d_model = W_U.shape
    k = positive_int("k", k)
    if k > vocab:
        raise ValueError(f"k={k} is not allowed: the vocabulary has {vocab} tokens")
    if not isinstance(directions, torch.Tensor) or directions.ndim != 2 or directions.shape[0] != d_model:
        shape = list(directions.shape) if isinstance(directions, torch.Tensor) else type(directions).__name__
        raise ValueError(f"directions must be [d_model={d_model}, n_directions]; got {shape}")
    D = directions.detach().double().cpu()
    norms = D.norm(dim=0)
    bad = ~torch.isfinite(norms) | (norms == 0)
    if bool(bad.any()):
        raise ValueError(f"direction {int(bad.nonzero()[0])} is zero or not finite: it has no logit lens")
    D = D / norms
    fn = final_norm_gain(model)
    if fn.centre:
        D = D - D.mean(dim=0, keepdim=True)
    # float32 (a float64 copy of W_U would be 8 x vocab x d_model bytes: 226 MB for SmolLM2)
    logits = (W_U.float().cpu() @ (fn.gain[:, None] * D).float()).double()  # [vocab, n]
    top = torch.topk(logits, k, dim=0)
    bottom = torch.topk(-logits, k, dim=0)
    how = (f"W_U (g * d / ||d||), W_U the unembedding [{vocab} x {d_model}]; {fn.how}"
           + ("; the direction centred as LayerNorm centres" if fn.centre else ""))
    return LogitLens(top.indices.T.contiguous(), top.values.T.contiguous(), bottom.indices.T.contiguous(),
                     -bottom.values.T.contiguous(), how)


# ---------------------------------------------------------------------------------------------------------------------
# Per-unit contribution to q*
# ---------------------------------------------------------------------------------------------------------------------
class QStarContributions(NamedTuple):
    """Leave-one-out contributions to ``q*`` (:func:`q_star_contributions`)."""

    q_star: float
    """``q*`` of the whole unit set (pairwise estimator; equals :func:`atomsnb.metrics.q_star`)."""
    contributions: torch.Tensor
    """``[len(units)]`` float64, ``q*(D) - q*(D without unit j)``; 0 for a dead unit."""
    without: torch.Tensor
    """``[len(units)]`` float64, ``q*(D without unit j)``."""


def q_star_contributions(codes: torch.Tensor, dictionary: torch.Tensor, aip: AIP, units: Sequence[int], *,
                         block_size: int = 1024) -> QStarContributions:
    """Each unit's leave-one-out contribution to ``q*``: ``q*(D) - q*(D without j)`` (pairwise estimator, SPEC §4).

    ``q* = sup {q : Q_mu(q) < b(Q_K(q))}``, with ``mu`` the pairwise ``|G|`` over the alive atoms and ``K`` the support
    sizes. Removing unit ``j`` removes its ``n_alive - 1`` pairs from the coherence sample and lowers ``K_n`` by one on
    every token where it is active. The exact counts ``#{|G_jk| < b}`` needed by
    :func:`atomsnb.metrics.q_star_from_samples` are the whole set's minus row ``j``'s, so one blockwise pass over
    ``|G|`` serves every unit (memory ``8 * block_size * n_alive`` bytes), and the result equals ``q_star`` of the
    dictionary with column ``j`` deleted (tested), up to round-off at a bound.

    Args:
        codes: ``[n_tokens, n_latents]`` codes on held-out activations; support = non-zero entries.
        dictionary: ``[d_model, n_latents]`` raw-coordinate atoms.
        aip: the fitted AIP.
        units: the units (columns) whose contributions are wanted.
        block_size: rows of ``|G|`` built at once.

    Returns:
        :class:`QStarContributions`.

    Raises:
        ValueError: 2-D shapes that disagree, a unit outside ``0..n_latents-1``, or an alive atom of zero AIP norm.
    """
    if not isinstance(codes, torch.Tensor) or codes.ndim != 2:
        raise ValueError(f"codes must be a 2-D tensor [n_tokens, n_latents]; got {getattr(codes, 'shape', codes)!r}")
    if not isinstance(dictionary, torch.Tensor) or dictionary.ndim != 2 or dictionary.shape[1] != codes.shape[1]:
        raise ValueError(f"dictionary must be [d_model, n_latents={codes.shape[1]}]; got "
                         f"{list(getattr(dictionary, 'shape', []))}")
    units = list(units)
    n_latents = codes.shape[1]
    bad = [u for u in units if isinstance(u, bool) or not isinstance(u, int) or not 0 <= u < n_latents]
    if bad:
        raise ValueError(f"unit {bad[0]!r} is out of range: allowed integers 0..{n_latents - 1}")
    block_size = positive_int("block_size", block_size)
    active = codes != 0
    K = active.sum(dim=1).to(torch.int64)
    alive = active.any(dim=0)
    alive_idx = alive.nonzero().flatten()
    n_alive = int(alive_idx.numel())
    pos_in_alive = torch.full((n_latents,), -1, dtype=torch.int64)
    pos_in_alive[alive_idx] = torch.arange(n_alive)
    ks = torch.unique(torch.cat([K, (K - 1).clamp_min(0)]))
    thr = uniqueness_bound(ks)  # decreasing in k; b(0) = inf
    thr_sorted, order = torch.sort(thr)
    T = thr.numel()
    total = torch.zeros(T + 1, dtype=torch.int64)  # pairs j < k by searchsorted position
    want = sorted({int(pos_in_alive[u]) for u in units if pos_in_alive[u] >= 0})
    rows = torch.zeros(len(want), T + 1, dtype=torch.int64)
    want_t = torch.tensor(want, dtype=torch.int64)
    if n_alive:
        Dt = whitened_atoms(dictionary[:, alive_idx], aip)
        for s in range(0, n_alive, block_size):
            e = min(n_alive, s + block_size)
            blk = (Dt[s:e] @ Dt.T).abs_().clamp_(max=1.0)  # [b, n_alive], as metrics.coherence builds it
            upper = blk[:, s:][torch.arange(n_alive - s)[None, :] > torch.arange(e - s)[:, None]]
            total += torch.bincount(torch.searchsorted(thr_sorted, upper, right=True), minlength=T + 1)
            sel = want_t[(want_t >= s) & (want_t < e)]
            if sel.numel():
                r = blk[sel - s].clone()
                r[torch.arange(sel.numel()), sel] = math.inf  # the diagonal is no pair
                pos = torch.searchsorted(thr_sorted, r, right=True)
                counts = torch.zeros(sel.numel(), T + 2, dtype=torch.int64)
                counts.scatter_add_(1, pos, torch.ones_like(pos))
                rows[torch.searchsorted(want_t, sel)] = counts[:, :T + 1]
    # v < t_i (sorted index i) iff searchsorted(t, v, right) <= i: counts below are cumulative sums
    below_all = torch.empty(T, dtype=torch.int64)
    below_all[order] = torch.cumsum(total, 0)[:T]
    below_rows = torch.empty(len(want), T, dtype=torch.int64)
    below_rows[:, order] = torch.cumsum(rows, 1)[:, :T]
    index = {float(t): i for i, t in enumerate(thr.tolist())}
    n_pairs = n_alive * (n_alive - 1) // 2

    def q(below: torch.Tensor, n_mu: int, k: torch.Tensor) -> float:
        return q_star_from_samples(lambda t: below[[index[float(v)] for v in t.tolist()]], n_mu, k)

    full = q(below_all, n_pairs, K) if n_alive else 0.0
    contrib, without = [], []
    for u in units:
        p = int(pos_in_alive[u])
        if p < 0:  # a dead unit: removing it changes nothing
            contrib.append(0.0)
            without.append(full)
            continue
        w = (q(below_all - below_rows[want.index(p)], n_pairs - (n_alive - 1), K - active[:, u].to(torch.int64))
             if n_alive > 1 else 0.0)
        without.append(w)
        contrib.append(full - w)
    return QStarContributions(full, torch.tensor(contrib, dtype=torch.float64),
                              torch.tensor(without, dtype=torch.float64))


# ---------------------------------------------------------------------------------------------------------------------
# Records
# ---------------------------------------------------------------------------------------------------------------------
@dataclass
class UnitRecord:
    """What a card shows for one unit (plain numbers and strings, JSON-ready).

    Attributes:
        unit: the unit's index (column of the codes / dictionary).
        frequency: fraction of the held-out tokens with code > 0.
        n_active: number of those tokens.
        max_activation: the largest code.
        q_star_contribution: ``q*(D) - q*(D without this unit)`` (:func:`q_star_contributions`).
        contexts: the top contexts, largest first; each a list of ``[token text, activation]`` over the window
            around the peak token (same document), the activation being this unit's code at that token (0 for a
            token left out: BOS, a massive token).
        peaks: for each context, the position in its list of the token it was chosen for.
        origins: for each context, ``[window, position]`` of that token in the activations.
        histogram: counts of the positive codes in ``len(histogram)`` equal bins over ``(0, max_activation]``.
        promoted, suppressed: ``[token text, logit change]`` of the logit lens, strongest first.
    """

    unit: int
    frequency: float
    n_active: int
    max_activation: float
    q_star_contribution: float
    contexts: list[list[list]] = field(default_factory=list)
    peaks: list[int] = field(default_factory=list)
    origins: list[list[int]] = field(default_factory=list)
    histogram: list[int] = field(default_factory=list)
    promoted: list[list] = field(default_factory=list)
    suppressed: list[list] = field(default_factory=list)


@dataclass
class BrowserData:
    """One unit set's browser page, before rendering.

    Attributes:
        unit_set: its name (``"atoms"``, ...).
        model: the model's name; layer: the residual-stream layer.
        source: one line on the tokens read (corpus, split, counts).
        n_tokens: held-out tokens the frequencies, histograms and ``q*`` are measured on.
        n_latents: units in the set; q_star: its ``q*`` on those tokens.
        logit_lens: how the logit lens was computed (:attr:`LogitLens.how`).
        units: one :class:`UnitRecord` per shown unit, by unit index.
    """

    unit_set: str
    model: str
    layer: int
    source: str
    n_tokens: int
    n_latents: int
    q_star: float
    logit_lens: str
    units: list[UnitRecord] = field(default_factory=list)

    def to_json(self) -> str:
        """The records as JSON (what the page embeds)."""
        return json.dumps(asdict(self), ensure_ascii=False, separators=(",", ":"))


class _ShadedContexts:
    """The tokens around a context's peak (same document), each with one unit's code there."""

    def __init__(self, activations: Activations, tokenizer, width_left: int, width_right: int):
        self.acts, self.tok, self.width_left, self.width_right = activations, tokenizer, width_left, width_right
        n_windows, self.seq_len = activations.windows.shape
        # row of each (window, position) in the activations (-1: not collected, e.g. position 0)
        self.where = torch.full((n_windows, self.seq_len), -1, dtype=torch.int64)
        self.where[activations.window, activations.position] = torch.arange(len(activations.token_ids))
        self.special = set(getattr(tokenizer, "all_special_ids", []) or [])
        self._memo: dict[int, str] = {}

    def decode(self, tid: int) -> str:
        """One token decoded alone (remembered)."""
        if tid not in self._memo:
            self._memo[tid] = self.tok.decode([tid])
        return self._memo[tid]

    def tokens(self, c, values: torch.Tensor) -> tuple[list[list], int]:
        """``([[token, value], ...], index of the peak)`` for :class:`atomsnb.contexts.Context` ``c``; ``values`` is
        ``[n_collected]``, the unit's code at every collected token. A special token (BOS, EOS) ends the context."""
        window = self.acts.windows[c.window].tolist()
        left = list(range(max(0, c.position - self.width_left), c.position))
        cut = [j for j, p in enumerate(left) if window[p] in self.special]
        if cut:
            left = left[cut[-1] + 1:]
        right = []
        for p in range(c.position + 1, min(self.seq_len, c.position + self.width_right + 1)):
            if window[p] in self.special:
                break
            right.append(p)
        out = []
        for p in left + [c.position] + right:
            r = int(self.where[c.window, p])
            out.append([self.decode(window[p]), round(float(values[r]), 4) if r >= 0 else 0.0])
        return out, len(left)


def browser_data(unit_set, x: torch.Tensor, activations: Activations, rows: torch.Tensor, lm, aip: AIP, *,
                 n_units: int = 64, units: Sequence[int] | None = None, k: int = 8, width_left: int = 12,
                 width_right: int = 4, n_bins: int = 24, n_logits: int = 10, seed: int = 0, source: str = "",
                 layer: int = -1) -> BrowserData:
    """Per-unit records of one unit set for :func:`render_page`.

    Args:
        unit_set: a :class:`atomsnb.units.UnitSet` (``codes``, ``dictionary``, ``name``).
        x: ``[n_tokens, d_model]`` held-out activations (e.g. ``LayerData.eval``: massive tokens left out).
        activations: the :class:`Activations` ``x`` was taken from (every collected token, with windows).
        rows: ``[n_tokens]`` rows of ``activations`` that ``x`` holds (``LayerData.eval_rows``).
        lm: the loaded model (:class:`atomsnb.models.LoadedModel`: ``model``, ``tokenizer``, ``name``).
        aip: the AIP fitted on the training activations (for ``q*``).
        n_units: units drawn at random (seeded, :func:`atomsnb.contexts.sample_units`) among those active in at least
            ``k`` windows; ignored when ``units`` is given.
        units: explicit unit indices instead of a draw.
        k: top contexts per unit (from ``k`` different windows).
        width_left, width_right: tokens shown before and after each peak token.
        n_bins: histogram bins; n_logits: logit-lens tokens per side.
        seed: the draw's seed.
        source: one line naming the tokens read, shown on the page.
        layer: the layer, shown on the page.

    Returns:
        :class:`BrowserData`, units by index.

    Raises:
        TypeError: ``unit_set`` is not a UnitSet, or ``activations`` not :class:`Activations`.
        ValueError: ``x`` and ``rows`` disagree, a row outside the activations, a bad count, or a unit out of range
            (all before any work); as :func:`logit_lens` and :func:`q_star_contributions`.
    """
    if not is_unit_set(unit_set):
        raise TypeError(f"unit_set must be a UnitSet (codes, reconstruct, dictionary); got {type(unit_set).__name__}")
    if not isinstance(activations, Activations):
        raise TypeError(f"activations must be the Activations x was taken from (tokens, windows; LayerData."
                        f"eval_activations, collected without store=True); got {type(activations).__name__}")
    rows = torch.as_tensor(rows, dtype=torch.int64).reshape(-1)
    n_collected = len(activations.token_ids)
    if not isinstance(x, torch.Tensor) or x.ndim != 2 or x.shape[0] != rows.numel():
        raise ValueError(f"x must be [n_tokens={rows.numel()}, d_model] (one row per entry of rows); got "
                         f"{list(getattr(x, 'shape', []))}")
    if rows.numel() and (int(rows.min()) < 0 or int(rows.max()) >= n_collected):
        raise ValueError(f"rows must index the {n_collected} collected tokens (0..{n_collected - 1}); got "
                         f"{int(rows.min())}..{int(rows.max())}")
    n_units = positive_int("n_units", n_units)
    k = positive_int("k", k)
    width_left = positive_int("width_left", width_left, 0)
    width_right = positive_int("width_right", width_right, 0)
    n_bins = positive_int("n_bins", n_bins)
    n_logits = positive_int("n_logits", n_logits)
    n_latents = int(unit_set.n_latents)
    if units is not None:
        units = list(units)
        bad = [u for u in units if isinstance(u, bool) or not isinstance(u, int) or not 0 <= u < n_latents]
        if bad:
            raise ValueError(f"unit {bad[0]!r} is out of range: allowed integers 0..{n_latents - 1}")

    codes64 = unit_set.codes(x).detach().cpu()  # [n_tokens, n_latents] float64, as the metrics read them
    dictionary = unit_set.dictionary.detach().cpu()  # [d_model, n_latents]
    codes = codes64.to(torch.float32)
    full = torch.zeros(n_collected, n_latents, dtype=torch.float32)  # left-out tokens: code 0
    full[rows] = codes
    if units is None:
        units = sample_units(full, n_units, seed, min_active=k, window=activations.window)
    units = sorted(units)
    sel = full[:, units]  # [n_collected, n_shown]
    tops = top_contexts(sel, activations, lm.tokenizer, range(len(units)), k=k, width_left=width_left,
                        width_right=width_right, max_per_window=1, unit_set=unit_set.name)
    contrib = q_star_contributions(codes64, dictionary, aip, units)
    del codes64
    lens = logit_lens(lm.model, dictionary[:, units], k=n_logits)

    shaded = _ShadedContexts(activations, lm.tokenizer, width_left, width_right)
    records = []
    for i, (u, tc) in enumerate(zip(units, tops)):
        col = codes[:, u]
        pos = col[col > 0].double()
        amax = float(pos.max()) if pos.numel() else 0.0
        hist = (torch.histc(pos, bins=n_bins, min=0.0, max=amax).to(torch.int64).tolist() if pos.numel()
                else [0] * n_bins)
        ctxs = [shaded.tokens(c, sel[:, i]) for c in tc.contexts]
        records.append(UnitRecord(
            unit=int(u), frequency=float((col > 0).double().mean()) if col.numel() else 0.0,
            n_active=int((col > 0).sum()), max_activation=round(amax, 4),
            q_star_contribution=float(contrib.contributions[i]), contexts=[t for t, _ in ctxs],
            peaks=[p for _, p in ctxs], origins=[[int(c.window), int(c.position)] for c in tc.contexts],
            histogram=hist,
            promoted=[[shaded.decode(int(t)), round(float(v), 4)]
                      for t, v in zip(lens.promoted_ids[i], lens.promoted[i])],
            suppressed=[[shaded.decode(int(t)), round(float(v), 4)]
                        for t, v in zip(lens.suppressed_ids[i], lens.suppressed[i])]))
    return BrowserData(unit_set=unit_set.name, model=getattr(lm, "name", ""), layer=int(layer), source=source,
                       n_tokens=int(codes.shape[0]), n_latents=n_latents, q_star=contrib.q_star,
                       logit_lens=lens.how, units=records)


# ---------------------------------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------------------------------
#: Shading levels of a context token: level ``n`` (1..10) is orange at opacity ``n / 10`` (CSS classes ``s1``..``s10``).
SHADES = 10


def shade(a: float, amax: float) -> int:
    """Shading level of a token of activation ``a`` in a unit whose largest activation is ``amax``:
    ``ceil(SHADES * a / amax)`` clipped to ``0..SHADES`` (0, unshaded, for ``a <= 0``; ``SHADES`` at the peak)."""
    if amax <= 0 or a <= 0:
        return 0
    return min(SHADES, max(1, math.ceil(SHADES * a / amax - 1e-9)))


_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:0;padding:1em 1.5em;color:#222;background:#fff}
h1{font-size:1.4em;margin:.2em 0}.note{color:#555;font-size:.9em;max-width:70em}
#controls{position:sticky;top:0;background:#fff;padding:.6em 0;border-bottom:1px solid #ddd;z-index:1}
#controls input{width:22em;padding:.3em}#controls select{padding:.3em}#count{margin-left:1em;color:#555}
.card{border:1px solid #ccc;border-radius:6px;margin:.8em 0;padding:.6em .9em}
.card h2{font-size:1.05em;margin:0 0 .3em 0}.stats{color:#555;font-size:.9em}
.row{display:flex;gap:1.5em;flex-wrap:wrap;align-items:flex-start}
.ctx{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:.82em;white-space:pre;line-height:1.6}
.ctx span{border-radius:2px}.ctx .peak{outline:1px solid #c60}
""" + "".join(f".s{n}{{background:rgba(255,140,0,{n / SHADES:.1f})}}" for n in range(1, SHADES + 1)) + """
.lens{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:.82em}
.lens td{padding:0 .5em 0 0}.pos{color:#0a5}.neg{color:#c22}.hidden{display:none}
"""

_JS = """
(function(){
  var cards=Array.prototype.slice.call(document.querySelectorAll('.card'));
  var list=document.getElementById('units'),q=document.getElementById('search'),
      s=document.getElementById('sort'),n=document.getElementById('count');
  function update(){
    var t=q.value.trim().toLowerCase(),key=s.value,shown=0;
    var sorted=cards.slice().sort(function(a,b){
      if(key==='unit')return +a.dataset.unit-(+b.dataset.unit);
      if(key==='rare')return +a.dataset.frequency-(+b.dataset.frequency)||a.dataset.unit-b.dataset.unit;
      var f=key==='frequency'?'frequency':'contribution';
      return +b.dataset[f]-(+a.dataset[f])||a.dataset.unit-b.dataset.unit;});
    sorted.forEach(function(c){
      var hit=!t||c.dataset.search.indexOf(t)>=0;
      c.classList.toggle('hidden',!hit);if(hit)shown++;list.appendChild(c);});
    n.textContent=shown+' of '+cards.length+' units shown';
  }
  q.addEventListener('input',update);s.addEventListener('change',update);update();
})();
"""


def _text(s: str) -> str:
    """Escaped for HTML, a new line shown as ⏎ (a context is one line)."""
    return html.escape(s).replace("\n", "⏎").replace("\r", "")


def _lens_token(s: str) -> str:
    """A logit-lens token on its own: spaces shown as ␣ (``" the"`` -> ``␣the``), since no context shows them."""
    return _text(s.replace(" ", "␣"))


def _histogram_svg(counts: Sequence[int], amax: float, width: int = 220, height: int = 60) -> str:
    n = max(len(counts), 1)
    top = max(max(counts, default=0), 1)
    bw = width / n
    bars = "".join(f"<rect x='{i * bw:.1f}' y='{height - h:.1f}' width='{max(bw - 1, 0.5):.1f}' height='{h:.1f}'>"
                   f"<title>{c} tokens in ({i * amax / n:.3g}, {(i + 1) * amax / n:.3g}]</title></rect>"
                   for i, c in enumerate(counts) for h in [height * c / top])
    return (f"<svg class='hist' width='{width}' height='{height + 14}' role='img' aria-label='activation histogram'>"
            f"<g fill='#e8820c'>{bars}</g><line x1='0' y1='{height}' x2='{width}' y2='{height}' stroke='#888'/>"
            f"<text x='0' y='{height + 12}' font-size='10'>0</text>"
            f"<text x='{width}' y='{height + 12}' font-size='10' text-anchor='end'>{amax:.3g}</text></svg>")


def _context_html(tokens: Sequence[Sequence], peak: int, amax: float) -> str:
    out = []
    for j, (tok, a) in enumerate(tokens):
        level = shade(a, amax)
        cls = " ".join(c for c in (f"s{level}" if level else "", "peak" if j == peak else "") if c)
        attrs = (f" class='{cls}'" if cls else "") + (f" title='{a:.4g}'" if a != 0 else "")
        out.append(f"<span{attrs}>{_text(tok)}</span>")
    return "".join(out)


def render_page(data: BrowserData, *, title: str | None = None) -> str:
    """One standalone HTML page (inline CSS and JavaScript, data as embedded JSON) for a :class:`BrowserData`.

    Every card carries ``data-unit``, ``data-frequency``, ``data-contribution`` and ``data-search`` (its contexts' text
    and logit-lens tokens, lowercased): the script filters and sorts on them. A context token's background is orange
    with opacity ``shade(a, a_max) / SHADES``, about ``a / a_max`` (``a`` its activation, ``a_max`` the unit's largest
    code on the held-out tokens; :func:`shade`, so that a token costs a short class name, not an inline style); its
    exact activation is its tooltip; the peak token is outlined. All text is escaped, so contexts holding code or HTML
    cannot break the page.

    Args:
        data: from :func:`browser_data`.
        title: the page title (default: "<unit set>: <model>, layer <layer>").

    Returns:
        The HTML text (UTF-8).

    Raises:
        TypeError: ``data`` is not a :class:`BrowserData`.
    """
    if not isinstance(data, BrowserData):
        raise TypeError(f"data must be a BrowserData (from browser_data); got {type(data).__name__}")
    title = title or f"{data.unit_set}: {data.model}, layer {data.layer}"
    cards = []
    for u in data.units:
        search = " ".join([f"#{u.unit}"] + ["".join(t for t, _ in c) for c in u.contexts]
                          + [t for t, _ in u.promoted + u.suppressed]).lower()
        ctx = "\n".join(f"<div class='ctx'>{_context_html(c, p, u.max_activation)}</div>"
                        for c, p in zip(u.contexts, u.peaks)) or "<div class='note'>no context</div>"
        lens = "".join(f"<tr><td class='pos'>{_lens_token(a)}</td><td>{va:+.3g}</td>"
                       f"<td class='neg'>{_lens_token(b)}</td>"
                       f"<td>{vb:+.3g}</td></tr>" for (a, va), (b, vb) in zip(u.promoted, u.suppressed))
        cards.append(
            f"<div class='card' id='unit-{u.unit}' data-unit='{u.unit}' data-frequency='{u.frequency:.6g}' "
            f"data-contribution='{u.q_star_contribution:.6g}' data-search='{html.escape(search, quote=True)}'>"
            f"<h2>{html.escape(data.unit_set)} #{u.unit}</h2>"
            f"<div class='stats'>fires on {u.frequency:.2%} of tokens ({u.n_active:,} of {data.n_tokens:,}); "
            f"largest activation {u.max_activation:.3g}; q* contribution {u.q_star_contribution:+.3g}</div>"
            f"<div class='row'><div><b>top contexts</b>{ctx}</div>"
            f"<div><b>activations &gt; 0</b><br>{_histogram_svg(u.histogram, u.max_activation)}</div>"
            f"<div><b>logit lens</b><table class='lens'><tr><th>promotes</th><th></th><th>suppresses</th><th></th></tr>"
            f"{lens}</table></div></div></div>")
    payload = data.to_json().replace("</", "<\\/")
    note = (f"{len(data.units)} of {data.n_latents:,} units; held-out tokens: {data.n_tokens:,}. {data.source} "
            f"q* of the whole set: {data.q_star:.4f}. <b>Firing frequency</b>: share of the held-out tokens with code "
            "&gt; 0. <b>q* contribution</b>: q*(all units) &minus; q*(all units but this one), same tokens, pairwise "
            "estimator (negative: the set is more stable without the unit). <b>Contexts</b>: the unit's top "
            "activations, one per window, each token shaded by the unit's activation there (peak outlined; hover for "
            f"the value). <b>Logit lens</b>: {html.escape(data.logit_lens)}.")
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>"
        "<link rel='icon' href='data:,'>"  # no favicon request

        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{html.escape(title)}</h1><p class='note'>{note}</p>"
        "<div id='controls'><label>search tokens and contexts <input id='search' type='search' "
        "placeholder='e.g. return'></label> <label>sort by <select id='sort'>"
        "<option value='contribution'>q* contribution (largest first)</option>"
        "<option value='frequency'>firing frequency (most frequent first)</option>"
        "<option value='rare'>firing frequency (rarest first)</option>"
        "<option value='unit'>unit index</option></select></label><span id='count'></span></div>"
        f"<div id='units'>{''.join(cards)}</div>"
        f"<script type='application/json' id='atomsnb-data'>{payload}</script>"
        f"<script>{_JS}</script></body></html>\n")


# ---------------------------------------------------------------------------------------------------------------------
# What the chapter prints
# ---------------------------------------------------------------------------------------------------------------------
def _check_pages(pages) -> None:
    if not isinstance(pages, Mapping) or not pages or not all(isinstance(d, BrowserData) for d in pages.values()):
        raise TypeError("pages must be a non-empty mapping of unit-set name -> BrowserData (from browser_data)")


def _rank_correlation(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rho (Pearson correlation of average ranks); NaN with fewer than 3 values or a constant one."""
    if len(a) < 3:
        return math.nan
    ra, rb = pd.Series(a).rank(), pd.Series(b).rank()
    if ra.nunique() < 2 or rb.nunique() < 2:
        return math.nan
    return float(ra.corr(rb))


def summary_table(pages: Mapping[str, BrowserData]) -> pd.DataFrame:
    """One row per unit set: units shown, ``q*``, firing frequencies and the signs of the ``q*`` contributions.

    Columns: ``units shown``, ``of``, ``held-out tokens``, ``q*``, ``median firing frequency (%)``, ``q* contribution
    > 0`` / ``= 0`` / ``< 0`` (counts of shown units), ``largest q* contribution``, ``rank correlation (frequency,
    contribution)`` (Spearman's rho over the shown units; NaN when undefined).

    Raises:
        TypeError: ``pages`` is not a non-empty mapping of name -> :class:`BrowserData`.
    """
    _check_pages(pages)
    rows = []
    for name, d in pages.items():
        c = [u.q_star_contribution for u in d.units]
        f = [u.frequency for u in d.units]
        rows.append({"unit set": name, "units shown": len(d.units), "of": d.n_latents, "held-out tokens": d.n_tokens,
                     "q*": round(d.q_star, 4),
                     "median firing frequency (%)": round(100 * float(pd.Series(f).median()), 2) if f else math.nan,
                     "q* contribution > 0": sum(v > 0 for v in c), "q* contribution = 0": sum(v == 0 for v in c),
                     "q* contribution < 0": sum(v < 0 for v in c),
                     "largest q* contribution": max(c) if c else math.nan,
                     "rank correlation (frequency, contribution)": round(_rank_correlation(f, c), 3)})
    return pd.DataFrame(rows).set_index("unit set")


def summary_reader_table(pages: Mapping[str, BrowserData]) -> pd.DataFrame:
    """:func:`summary_table` for a reader, narrow enough for the book's column: units shown of ``|D|``, ``q*``, the
    median firing frequency, the contributions' signs in one column (``> 0 / = 0 / < 0``), the largest contribution
    and the rank correlation of frequency with contribution."""
    t = summary_table(pages)
    return pd.DataFrame({
        "units shown": [f"{int(a)} of {int(b):,}" for a, b in zip(t["units shown"], t["of"])],
        "q*": t["q*"],
        "median firing frequency (%)": t["median firing frequency (%)"],
        "q* contributions > 0 / = 0 / < 0": [f"{int(a)} / {int(b)} / {int(c)}" for a, b, c in
                                             zip(t["q* contribution > 0"], t["q* contribution = 0"],
                                                 t["q* contribution < 0"])],
        "largest q* contribution": t["largest q* contribution"],
        "rank correlation (frequency, contribution)": t["rank correlation (frequency, contribution)"],
    }, index=t.index)


def describe(pages: Mapping[str, BrowserData]) -> list[str]:
    """Sentences for a reader, every number computed from ``pages`` (one per unit set).

    Raises:
        TypeError: as :func:`summary_table`.
    """
    table = summary_table(pages)
    out = []
    for name, r in table.iterrows():
        n = int(r["units shown"])
        pos, zero, neg = (int(r[f"q* contribution {s} 0"]) for s in (">", "=", "<"))
        s = (f"{name} (q* = {r['q*']:.4f}): of the {n} units shown (of {int(r['of']):,}), the q* contribution is > 0 "
             f"for {pos}, 0 for {zero} and < 0 for {neg}")
        if pos:
            s += f"; the largest is {r['largest q* contribution']:+.3g}"
        rho = r["rank correlation (frequency, contribution)"]
        s += (f"; firing frequency and contribution rank-correlate at rho = {rho:+.2f}." if not math.isnan(rho) else
              "; the rank correlation of frequency and contribution is undefined (fewer than 3 units, or one of them "
              "constant).")
        out.append(s)
    return out
