"""Top-activating contexts of units: what a judge (a person, an LLM, an offline score) reads (paper §7).

The paper judges monosemanticity from the texts on which a unit fires most strongly. For a unit set's
codes ``[n_tokens, n_units]`` on held-out activations (:class:`atomsnb.activations.Activations` records,
for every activation, its token, its window and its position there), :func:`top_contexts` returns, for
unit ``j``, the ``k`` tokens with the largest activation, each with its activation value, the token and a
window of surrounding tokens decoded with the tokenizer (:class:`Context`). :func:`sample_units` picks
which units to show, deterministically for a seed and only among units active often enough to have
``k`` contexts; :func:`random_contexts` draws contexts at random tokens (a chance baseline for the judges,
:mod:`atomsnb.judges`); :func:`render_html` shows contexts with the token highlighted for the book.

"Largest activation" means the largest *positive* code value: SAE codes are non-negative, and for
neurons (residual-stream dimensions, signed) we follow the usual convention of reading the positive
direction. Ties are broken by token index (a stable sort), so results are deterministic.
"""

from __future__ import annotations

import html
import numbers
import operator
from dataclasses import dataclass, field
from typing import Sequence

import torch

from .activations import Activations

__all__ = ["Context", "UnitContexts", "sample_units", "top_contexts", "random_contexts", "context_for_token",
           "render_html", "normalise_token", "MARK_LEFT", "MARK_RIGHT"]

#: Markers around the highlighted token in plain-text renderings (:meth:`Context.marked`).
MARK_LEFT, MARK_RIGHT = "[[", "]]"


@dataclass(frozen=True)
class Context:
    """One token on which a unit fires, with the text around it.

    Attributes:
        index: row of the token in the activations ``[n_tokens, ...]`` (its identity; unique per token).
        activation: the unit's code value at this token (for random contexts: 0).
        token_id: the token's id.
        token: the token decoded alone (e.g. ``" widget"``; a leading space is kept).
        left: decoded text of up to ``width_left`` tokens before it, in the same window and document (it stops
            at a special token such as the BOS or the EOS that separates documents).
        right: decoded text of up to ``width_right`` tokens after it, in the same window and document.
        window: index of the window (context of the LM) the token comes from.
        position: position of the token in its window.
    """

    index: int
    activation: float
    token_id: int
    token: str
    left: str
    right: str
    window: int
    position: int

    @property
    def text(self) -> str:
        """The plain context text ``left + token + right`` (what the embedding judge embeds)."""
        return self.left + self.token + self.right

    def marked(self, left: str = MARK_LEFT, right: str = MARK_RIGHT) -> str:
        """The context with the token marked, e.g. ``"... the [[ widget]] is ..."`` (for the LLM judge and raters)."""
        return f"{self.left}{left}{self.token}{right}{self.right}"


@dataclass
class UnitContexts:
    """The top contexts of one unit of one unit set.

    Attributes:
        unit_set: name of the unit set (``"neurons"``, ``"features"``, ``"atoms"``...).
        unit: the unit's index (column of the codes).
        contexts: up to ``k`` :class:`Context`, largest activation first.
        n_active: number of tokens on which the unit is active (code > 0) in the whole sample.
    """

    unit_set: str
    unit: int
    contexts: list[Context] = field(default_factory=list)
    n_active: int = 0

    def __len__(self) -> int:
        return len(self.contexts)


def _check_int(name: str, value, minimum: int) -> int:
    """An integer ``>= minimum`` (bools and floats refused), or ``ValueError`` naming ``name`` and its value."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name}={value!r} is not allowed: it must be an integer >= {minimum}")
    return int(value)


def _check_codes(codes: torch.Tensor) -> None:
    if not isinstance(codes, torch.Tensor) or codes.ndim != 2:
        shape = list(codes.shape) if isinstance(codes, torch.Tensor) else type(codes).__name__
        raise ValueError(f"codes must be a 2-D tensor [n_tokens, n_units]; got {shape}")
    if codes.is_floating_point() and not torch.isfinite(codes).all():
        bad = torch.nonzero(~torch.isfinite(codes))[0].tolist()
        raise ValueError(f"codes contain NaN or inf (first at token {bad[0]}, unit {bad[1]}); a NaN would sort above "
                         "every real activation")


def normalise_token(token: str) -> str:
    """Lemma-ish normal form of a decoded token: strip surrounding white space (and a byte-level ``Ġ``), lowercase.

    ``" Widget"``, ``"Ġwidget"`` and ``"widget"`` all become ``"widget"``; a token that is only white
    space keeps a visible name (``"\\n"`` -> ``"⏎"``, ``" "`` -> ``"␣"``) so it is still one type.
    """
    t = token.replace("Ġ", " ").replace("Ċ", "\n")
    s = t.strip().lower()
    if s:
        return s
    return "⏎" if "\n" in t else "␣" if t else ""


def sample_units(codes: torch.Tensor, n: int, seed: int, *, min_active: int = 8,
                 window: torch.Tensor | None = None) -> list[int]:
    """``n`` units drawn at random (seeded) among those active (code > 0) on at least ``min_active`` tokens.

    Args:
        codes: ``[n_tokens, n_units]`` codes of one unit set.
        n: how many units; fewer are returned when fewer qualify.
        seed: seed of the draw (``torch.Generator``), so the same units are drawn on every run.
        min_active: a unit must be active on at least this many tokens (use the number of contexts shown).
        window: ``[n_tokens]`` window index of each token (``Activations.window``); if given, ``min_active``
            counts distinct windows instead of tokens (use with ``top_contexts(..., max_per_window=1)``).

    Returns:
        Sorted unit indices.

    Raises:
        ValueError: ``codes`` not 2-D or with NaN/inf, ``n < 0``, ``min_active < 1``, or ``window`` not one entry
            per token.
    """
    _check_codes(codes)
    _check_int("n", n, 0)
    _check_int("min_active", min_active, 1)
    if window is not None and tuple(window.shape) != (codes.shape[0],):
        raise ValueError(f"window has shape {list(window.shape)}; expected [{codes.shape[0]}] (one per token of codes)")
    on = codes > 0
    if window is None:
        active = on.sum(0)
    else:
        per_window = torch.zeros(int(window.max()) + 1, codes.shape[1]).index_add_(0, window.long(), on.float())
        active = (per_window > 0).sum(0)
    eligible = torch.nonzero(active >= min_active).flatten()
    order = torch.randperm(len(eligible), generator=torch.Generator().manual_seed(seed))
    return sorted(eligible[order[:n]].tolist())


class _Decoder:
    """Decodes pieces of windows, remembering what it has decoded; contexts stop at special tokens."""

    def __init__(self, tokenizer, activations: Activations):
        self.tok = tokenizer
        self.acts = activations
        self.special = set(getattr(tokenizer, "all_special_ids", []) or [])
        self._memo: dict[tuple[int, ...], str] = {}

    def decode(self, ids: Sequence[int]) -> str:
        key = tuple(ids)
        if key not in self._memo:
            self._memo[key] = self.tok.decode(list(key)) if key else ""
        return self._memo[key]

    def token(self, token_id: int) -> str:
        key = (int(token_id), -1)
        if key not in self._memo:
            self._memo[key] = self.tok.decode([int(token_id)])
        return self._memo[key]

    def context(self, index: int, activation: float, width_left: int, width_right: int) -> Context:
        a = self.acts
        w, p = int(a.window[index]), int(a.position[index])
        row = a.windows[w].tolist()
        tid = int(a.token_ids[index])
        left = row[max(0, p - width_left):p]
        right = row[p + 1:p + 1 + width_right]
        cut = [i for i, t in enumerate(left) if t in self.special]
        if cut:  # a special token (BOS, EOS between documents) ends the left context: same document only
            left = left[cut[-1] + 1:]
        cut = [i for i, t in enumerate(right) if t in self.special]
        if cut:
            right = right[:cut[0]]
        left, right = self.decode(left), self.decode(right)
        return Context(index=int(index), activation=float(activation), token_id=tid, token=self.token(tid), left=left,
                       right=right, window=w, position=p)


def context_for_token(activations: Activations, tokenizer, index: int, *, activation: float = 0.0, width_left: int = 12,
                      width_right: int = 4) -> Context:
    """The :class:`Context` of the token at row ``index`` of ``activations``.

    Raises:
        ValueError: ``index`` outside ``0..n_tokens-1`` (a negative index is not counted from the end), or a
            negative width.
    """
    n = len(activations.token_ids)
    if isinstance(index, bool) or not isinstance(index, numbers.Integral) or not 0 <= index < n:
        raise ValueError(f"token index {index!r} is out of range: allowed 0..{n - 1}")
    _check_int("width_left", width_left, 0)
    _check_int("width_right", width_right, 0)
    return _Decoder(tokenizer, activations).context(index, activation, width_left, width_right)


def top_contexts(codes: torch.Tensor, activations: Activations, tokenizer, units: Sequence[int], *, k: int = 8,
                 width_left: int = 12, width_right: int = 4, max_per_window: int | None = None,
                 unit_set: str = "") -> list[UnitContexts]:
    """The ``k`` top-activating contexts of each unit in ``units``.

    Args:
        codes: ``[n_tokens, n_units]`` codes on the tokens of ``activations`` (same row order).
        activations: the :class:`Activations` the codes were computed from (tokens, windows, positions).
        tokenizer: the LM's tokenizer (``decode``).
        units: unit indices (columns of ``codes``), e.g. from :func:`sample_units`.
        k: contexts per unit; only tokens with a positive code count, so a rarely active unit may get fewer.
        width_left, width_right: tokens of context shown before and after the token (within its window).
        max_per_window: at most this many contexts from one window (``None``: no limit). With ``1`` the
            contexts come from ``k`` different windows, so they cannot be overlapping pieces of one text.
        unit_set: name stored in each :class:`UnitContexts`.

    Returns:
        One :class:`UnitContexts` per unit, in the order of ``units``, contexts by decreasing activation
        (ties: lower token index first).

    Raises:
        ValueError: ``codes`` and ``activations`` disagree on the number of tokens, ``codes`` hold NaN/inf, a unit
            outside ``0..n_units-1`` (a negative unit is not counted from the end), ``k < 1``, a negative width,
            or ``max_per_window < 1``.
    """
    _check_codes(codes)
    if codes.shape[0] != len(activations.token_ids):
        raise ValueError(f"codes have {codes.shape[0]} rows but the activations hold {len(activations.token_ids)} tokens")
    _check_int("k", k, 1)
    _check_int("width_left", width_left, 0)
    _check_int("width_right", width_right, 0)
    if max_per_window is not None:
        _check_int("max_per_window", max_per_window, 1)
    n_units = codes.shape[1]
    units = list(units)

    def _ok(j) -> bool:
        try:
            return not isinstance(j, bool) and 0 <= operator.index(j) < n_units
        except TypeError:
            return False

    bad = [j for j in units if not _ok(j)]
    if bad:
        raise ValueError(f"unit {bad[0]!r} is out of range: the codes have units 0..{n_units - 1}")
    dec = _Decoder(tokenizer, activations)
    window = activations.window
    out = []
    for j in units:
        col = codes[:, int(j)].detach().to(torch.float64).cpu()
        n_active = int((col > 0).sum())
        values, order = torch.sort(col, descending=True, stable=True)
        chosen: list[Context] = []
        per_window: dict[int, int] = {}
        for v, i in zip(values.tolist(), order.tolist()):
            if v <= 0 or len(chosen) == k:
                break
            if max_per_window is not None:
                w = int(window[i])
                if per_window.get(w, 0) >= max_per_window:
                    continue
                per_window[w] = per_window.get(w, 0) + 1
            chosen.append(dec.context(i, v, width_left, width_right))
        out.append(UnitContexts(unit_set=unit_set, unit=int(j), contexts=chosen, n_active=n_active))
    return out


def random_contexts(activations: Activations, tokenizer, n: int, seed: int, *, width_left: int = 12,
                    width_right: int = 4, exclude: torch.Tensor | None = None) -> list[Context]:
    """``n`` contexts at tokens drawn uniformly without replacement (seeded): the "random tokens" chance pool.

    Args:
        activations, tokenizer: as :func:`top_contexts`.
        n: number of contexts.
        seed: seed of the draw.
        width_left, width_right: context tokens before and after the token.
        exclude: optional ``[n_tokens]`` bool, tokens never drawn (e.g. massive tokens,
            :func:`atomsnb.massive.massive_token_mask`); the draw is uniform over the others.

    Raises:
        ValueError: ``n`` negative or larger than the number of tokens that may be drawn, a negative width, or an
            ``exclude`` that is not one bool per token.
    """
    n_tokens = len(activations.token_ids)
    _check_int("n", n, 0)
    allowed = torch.arange(n_tokens)
    if exclude is not None:
        exclude = torch.as_tensor(exclude)
        if exclude.dtype != torch.bool or tuple(exclude.shape) != (n_tokens,):
            raise ValueError(f"exclude must be a bool tensor of shape [{n_tokens}] (one per token); got "
                             f"{exclude.dtype} {list(exclude.shape)}")
        allowed = allowed[~exclude]
    if n > len(allowed):
        raise ValueError(f"n={n} contexts drawn without replacement, but the activations hold only {len(allowed)} "
                         f"tokens{'' if exclude is None else ' that are not excluded'}")
    _check_int("width_left", width_left, 0)
    _check_int("width_right", width_right, 0)
    idx = allowed[torch.randperm(len(allowed), generator=torch.Generator().manual_seed(seed))[:n]].tolist()
    dec = _Decoder(tokenizer, activations)
    return [dec.context(i, 0.0, width_left, width_right) for i in idx]


def _shown(s: str) -> str:
    """Escape for HTML and make new lines visible inside one line of context."""
    return html.escape(s).replace("\n", "⏎")


def render_html(units: Sequence[UnitContexts], *, max_contexts: int | None = None, title: str | None = None,
                scores: dict[int, str] | None = None) -> str:
    """HTML of the units' contexts, the token highlighted with a background whose intensity is its activation.

    Intensity is the activation relative to the unit's largest one (``alpha = 0.15 + 0.85 a / a_max``). All
    text is escaped (``html.escape``), so code in the contexts cannot break the page. Wrap the result in
    ``IPython.display.HTML`` to show it in a notebook.

    Args:
        units: the :class:`UnitContexts` to show, one block each.
        max_contexts: show at most this many contexts per unit.
        title: optional heading.
        scores: optional ``unit -> text`` shown next to the unit's name (e.g. the judges' scores).

    Raises:
        ValueError: ``max_contexts < 1`` (``None`` shows all).
    """
    if max_contexts is not None:
        _check_int("max_contexts", max_contexts, 1)
    parts = ['<div style="font-family: ui-monospace, SFMono-Regular, Menlo, monospace; font-size: 0.85em; '
             'line-height: 1.5">']
    if title:
        parts.append(f"<div style='font-weight: bold; margin: 0.4em 0'>{html.escape(title)}</div>")
    for u in units:
        ctxs = u.contexts[:max_contexts] if max_contexts is not None else u.contexts
        amax = max((c.activation for c in ctxs), default=0.0)
        extra = f" &middot; {html.escape(scores[u.unit])}" if scores and u.unit in scores else ""
        parts.append(f"<div style='margin-top: 0.5em'><b>{html.escape(u.unit_set)} #{u.unit}</b> "
                     f"<span style='color: #666'>(active on {u.n_active} tokens{extra})</span></div>")
        parts.append("<table style='border-collapse: collapse; margin: 0'>")
        for c in ctxs:
            alpha = 0.15 + 0.85 * (c.activation / amax if amax > 0 else 0.0)
            parts.append(
                "<tr><td style='text-align: right; color: #888; padding: 0 0.6em 0 0'>"
                f"{c.activation:.3g}</td><td style='white-space: pre; text-align: left'>"
                f"<span style='color: #555'>{_shown(c.left)}</span>"
                f"<span style='background: rgba(255, 140, 0, {alpha:.2f}); font-weight: bold; "
                f"border-radius: 2px'>{_shown(c.token)}</span>"
                f"<span style='color: #555'>{_shown(c.right)}</span></td></tr>")
        parts.append("</table>")
    parts.append("</div>")
    return "\n".join(parts)
