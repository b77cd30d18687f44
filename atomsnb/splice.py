"""Spliced-in faithfulness: what happens to the model when a unit set's reconstruction replaces the residual stream.

The field judges a sparse autoencoder first by its *downstream* faithfulness (SAELens
``sae_lens/evals.py``: ``get_downstream_reconstruction_metrics`` / ``get_recons_loss``; SAEBench's
core metrics; dictionary_learning's ``frac_recovered``). On held-out text the residual stream after
decoder block ``l`` (atomsnb's layer ``l``, :mod:`atomsnb.activations`) is replaced by

- the unit set's reconstruction ``units.reconstruct(x)`` (*spliced*),
- zeros (*zero ablation*, SAELens' baseline) or the mean of given activations (*mean ablation*),

through a forward hook on block ``l`` (``decoder_layers(model)[l - 1]``) that returns the replaced
output, and the next-token predictions are compared with the clean model's. With SAELens' names:

- ``ce_loss_without_sae``, ``ce_loss_with_sae``, ``ce_loss_with_ablation``: mean next-token
  cross-entropy (nats) of the clean, spliced and ablated model;
- ``ce_loss_score = (ce_loss_with_ablation - ce_loss_with_sae) / (ce_loss_with_ablation - ce_loss_without_sae)``
  (1 = the splice loses nothing, 0 = as bad as the ablation);
- ``kl_div_with_sae``, ``kl_div_with_ablation``: mean ``KL(clean || spliced)`` of the next-token
  distributions (nats);
- ``kl_div_score = (kl_div_with_ablation - kl_div_with_sae) / kl_div_with_ablation``.

A denominator of exactly 0 (the ablation does not change the model) makes the score NaN.

**Skipped positions, as SAELens does** (``run_evals(exclude_special_tokens=True)``, its default): a
position whose *input* token is a special token of the tokenizer (BOS, EOS, PAD, UNK, ... as
SAELens' ``get_special_token_ids``) keeps its clean activation in the spliced pass and is left out
of every average: its KL term and the cross-entropy of the prediction made *from* it. Every window
of :func:`atomsnb.activations.token_windows` starts with BOS, so position 0 (the attention sink,
whose massive activation an SAE would destroy) is never spliced and the prediction of token 1 from
BOS is not scored; this module treats position 0 as skipped even for a tokenizer without BOS. The
EOS tokens that join documents inside a window are skipped likewise. The last position has no
next token: it enters the KL average but not the cross-entropy one (as in SAELens, whose per-token
CE has ``seq_len - 1`` entries). Averages pool all scored tokens of all windows (SAELens
concatenates per-token values over batches and takes one mean), and the scores are formed from
those pooled means.

One deliberate default differs from SAELens: its ``standard_zero_ablate_hook`` zeroes *every*
position, BOS included, while the splice keeps special positions clean. Here the ablation replaces
exactly the positions the splice replaces, so a zero reconstruction scores exactly 0 and the
baseline differs from the splice only in the replaced values; ``ablate_special_tokens=True``
reproduces SAELens (BOS zeroed too, which in a real LLM makes the ablation far worse and every
``ce_loss_score`` higher).

Precision: the model runs in its own dtype on its device; the hook hands the selected activations
``[n, d_model]`` to ``units.reconstruct`` on the CPU (the unit-set contract; an external SAE moves
them to its own device), and casts the float64 reconstruction back to the model's dtype and
device. Log-softmax, CE and KL are computed in float32 and accumulated in float64.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from scipy.stats import rankdata, spearmanr
from tqdm import tqdm

from .activations import token_windows
from .architecture import decoder_layers
from .corpus import Corpus
from .external import check_target
from .models import LoadedModel

__all__ = ["SpliceScores", "spliced_scores", "special_token_ids", "eval_windows", "scores_table",
           "FaithfulnessVerdict", "faithfulness_correlations", "SCORE_NAMES"]

#: The spliced-in scores, SAELens' names, in the order of :class:`SpliceScores`.
SCORE_NAMES = ("ce_loss_with_sae", "ce_loss_without_sae", "ce_loss_with_ablation", "ce_loss_score",
               "kl_div_with_sae", "kl_div_with_ablation", "kl_div_score")
_ABLATIONS = ("zero", "mean")


@dataclass(frozen=True)
class SpliceScores:
    """Spliced-in scores of one unit set at one layer (SAELens' names; module docstring for the definitions).

    Attributes:
        ce_loss_with_sae: mean next-token cross-entropy with the reconstruction spliced in (nats).
        ce_loss_without_sae: the clean model's (nats).
        ce_loss_with_ablation: with the residual stream ablated (nats).
        ce_loss_score: ``(ce_ablation - ce_sae) / (ce_ablation - ce_clean)``.
        kl_div_with_sae: mean ``KL(clean || spliced)`` of the next-token distribution (nats).
        kl_div_with_ablation: mean ``KL(clean || ablated)`` (nats).
        kl_div_score: ``(kl_ablation - kl_sae) / kl_ablation``.
        n_tokens: number of scored predictions in the cross-entropy averages.
        n_tokens_kl: number of scored positions in the KL averages (``n_tokens`` plus the last position
            of each window when it is not special).
        layer: the residual-stream layer that was replaced.
        ablation: ``"zero"`` or ``"mean"``.
    """

    ce_loss_with_sae: float
    ce_loss_without_sae: float
    ce_loss_with_ablation: float
    ce_loss_score: float
    kl_div_with_sae: float
    kl_div_with_ablation: float
    kl_div_score: float
    n_tokens: int
    n_tokens_kl: int
    layer: int
    ablation: str

    def as_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (one table row)."""
        return asdict(self)


def special_token_ids(tokenizer) -> list[int]:
    """Token ids SAELens treats as special (``sae_lens.util.get_special_token_ids``).

    Every ``*_token_id`` attribute that is set (BOS, EOS, PAD, UNK, SEP, CLS, MASK) and every id in
    ``tokenizer.all_special_ids`` (which covers the special-tokens map, additional special tokens
    included). Sorted.
    """
    ids: set[int] = set()
    for attr in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id", "sep_token_id", "cls_token_id",
                 "mask_token_id"):
        v = getattr(tokenizer, attr, None)
        if isinstance(v, int):
            ids.add(v)
    for v in getattr(tokenizer, "all_special_ids", None) or []:
        if isinstance(v, int):
            ids.add(v)
    return sorted(ids)


def eval_windows(lm: LoadedModel, *, corpus: str = "docstrings", n_tokens: int = 10_000, seq_len: int = 128,
                 seed: int = 0) -> torch.Tensor:
    """Held-out token windows ``[n_windows, seq_len]`` for the spliced-in scores.

    The ``"eval"`` split of ``corpus`` cut exactly as :func:`atomsnb.activations.collect_activations`
    cuts it with ``split="eval"`` and the same ``seq_len`` and ``seed`` (BOS first, documents joined with
    EOS), so the spliced-in scores and the activation metrics see the same text; an eval
    :class:`~atomsnb.activations.Activations` object's ``windows`` can be passed instead.

    Args:
        lm: the loaded model (its tokenizer cuts the text).
        corpus: corpus source (:class:`atomsnb.corpus.Corpus`).
        n_tokens: usable tokens (positions 1.. of every window) to cover.
        seq_len: window length, BOS included.
        seed: document order.

    Raises:
        ValueError: as :func:`atomsnb.activations.token_windows` (too few tokens, ``seq_len < 2``).
    """
    return token_windows(lm.tokenizer, Corpus(corpus), "eval", n_tokens=n_tokens, seq_len=seq_len, seed=seed,
                         drop_bos=True)


def _as_unit_map(units) -> tuple[dict[str, Any], bool]:
    if isinstance(units, Mapping):
        out = dict(units)
        single = False
    elif isinstance(units, (list, tuple)):
        out = {}
        for u in units:
            name = getattr(u, "name", None)
            if not isinstance(name, str):
                raise ValueError(f"every unit set in a list needs a str attribute 'name'; got {type(u).__name__} "
                                 f"with name={name!r} (or pass a dict name -> unit set)")
            if name in out:
                raise ValueError(f"two unit sets are named {name!r}; names must be unique (or pass a dict)")
            out[name] = u
        single = False
    else:
        out = {getattr(units, "name", "units"): units}
        single = True
    if not out:
        raise ValueError("no unit set given: pass one unit set, a list of them or a dict name -> unit set")
    return out, single


def _check_inputs(lm: LoadedModel, units: Mapping[str, Any], windows, layer, batch_size, ablation,
                  ablation_activations, allow_mismatch: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    n_layers = lm.n_layers
    if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not 1 <= int(layer) <= n_layers:
        raise ValueError(f"layer {layer!r} cannot be spliced in {lm.name!r}: allowed 1..{n_layers} (layer l = the "
                         f"residual stream after decoder block l; layer 0, the embeddings, is not supported)")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
    if ablation not in _ABLATIONS:
        raise ValueError(f"ablation {ablation!r} is not supported; use one of {list(_ABLATIONS)}")
    if not isinstance(allow_mismatch, bool):
        raise ValueError(f"allow_mismatch must be True or False; got {allow_mismatch!r}")
    for name, u in units.items():
        if not callable(getattr(u, "reconstruct", None)):
            raise ValueError(f"unit set {name!r} ({type(u).__name__}) has no reconstruct(x) method; a unit set maps "
                             f"[n, d_model] -> [n, d_model] (atomsnb.units)")
        d = getattr(u, "d_model", None)
        if d is not None and int(d) != lm.d_model:
            raise ValueError(f"unit set {name!r} has d_model={d} but {lm.name!r} has d_model={lm.d_model}: it was made "
                             f"for another model or hook point")
        check_target(u, layer=int(layer), model=lm, allow_mismatch=allow_mismatch)  # an external SAE's hook and model
        ul = getattr(u, "layer", None)
        if isinstance(ul, int) and ul != int(layer) and not (allow_mismatch or getattr(u, "mismatch_allowed", False)):
            raise ValueError(f"unit set {name!r} was trained on residual-stream layer {ul} but layer={layer} was asked "
                             f"for; splice it at layer {ul}")
    w = torch.as_tensor(windows)
    if w.ndim != 2 or w.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
        raise ValueError(f"windows must be an integer tensor [n_windows, seq_len] of token ids; got shape "
                         f"{tuple(w.shape)} dtype {w.dtype}")
    if w.shape[0] < 1 or w.shape[1] < 3:
        raise ValueError(f"windows must hold at least 1 window of at least 3 tokens (BOS, a scored prediction, its "
                         f"target); got shape {tuple(w.shape)}")
    vocab = int(lm.model.get_output_embeddings().weight.shape[0]) if lm.model.get_output_embeddings() is not None \
        else int(lm.model.config.vocab_size)
    lo, hi = int(w.min()), int(w.max())
    if lo < 0 or hi >= vocab:
        raise ValueError(f"windows hold token ids in [{lo}, {hi}] but {lm.name!r} has a vocabulary of {vocab} "
                         f"(allowed 0..{vocab - 1}): tokens from another tokenizer?")
    mean = None
    if ablation == "mean":
        if ablation_activations is None:
            raise ValueError("ablation='mean' needs ablation_activations [n, d_model] to take the mean of")
        a = torch.as_tensor(ablation_activations)
        if a.ndim != 2 or a.shape[1] != lm.d_model or a.shape[0] < 1 or not a.is_floating_point():
            raise ValueError(f"ablation_activations must be float [n >= 1, d_model={lm.d_model}]; got shape "
                             f"{tuple(a.shape)} dtype {a.dtype}")
        if not bool(torch.isfinite(a).all()):
            raise ValueError("ablation_activations hold NaN or inf values")
        mean = a.to(torch.float64).mean(0)
    elif ablation_activations is not None:
        raise ValueError("ablation_activations were given but ablation='zero'; use ablation='mean' to use them")
    return w.to(torch.int64), mean


class _Splice:
    """A forward hook on one decoder block that replaces its output at the masked positions."""

    def __init__(self, block: torch.nn.Module):
        self.block = block
        self.mask: torch.Tensor | None = None
        self.replace = None
        self.handle = None
        self.record = False
        self.norms: torch.Tensor | None = None

    def __enter__(self):
        self.handle = self.block.register_forward_hook(self._hook)
        return self

    def __exit__(self, *exc):
        self.handle.remove()

    def _hook(self, module, args, output):
        h = output[0] if isinstance(output, tuple) else output
        if self.record:
            self.norms = h.detach().float().norm(dim=-1)
        if self.replace is None:
            return None
        new = h.clone()
        new[self.mask] = self.replace(h[self.mask])
        return (new,) + tuple(output[1:]) if isinstance(output, tuple) else new


def _reconstruction_fn(name: str, units, d_model: int):
    def replace(x: torch.Tensor) -> torch.Tensor:
        out = units.reconstruct(x.detach().cpu())
        out = torch.as_tensor(out)
        if out.shape != x.shape:
            raise ValueError(f"unit set {name!r}: reconstruct(x) returned shape {tuple(out.shape)} for x of shape "
                             f"{tuple(x.shape)}; it must return [n, d_model={d_model}]")
        if not bool(torch.isfinite(out).all()):
            raise ValueError(f"unit set {name!r}: reconstruct(x) returned NaN or inf values")
        return out.to(device=x.device, dtype=x.dtype)
    return replace


def _constant_fn(value: torch.Tensor | None):
    def replace(x: torch.Tensor) -> torch.Tensor:
        if value is None:
            return torch.zeros_like(x)
        return value.to(device=x.device, dtype=x.dtype).expand_as(x)
    return replace


def _log_probs(lm: LoadedModel, ids: torch.Tensor) -> torch.Tensor:
    logits = lm.model(input_ids=ids, use_cache=False).logits
    return torch.log_softmax(logits.float(), dim=-1)


def _ce_per_token(logp: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``[b, seq-1]``: -log p(token t+1 | ..t) from the prediction at position t."""
    return -logp[:, :-1].gather(-1, ids[:, 1:, None]).squeeze(-1)


def _kl_per_token(logp_clean: torch.Tensor, logp_new: torch.Tensor) -> torch.Tensor:
    """``[b, seq]``: ``KL(clean || new) = sum_v p_clean (log p_clean - log p_new)`` in nats."""
    return torch.nn.functional.kl_div(logp_new, logp_clean, reduction="none", log_target=True).sum(-1)


def spliced_scores(lm: LoadedModel, units, windows: torch.Tensor, layer: int, *, batch_size: int = 8,
                   ablation: str = "zero", ablation_activations: torch.Tensor | None = None,
                   exclude_special_tokens: bool | Sequence[int] = True, ablate_special_tokens: bool = False,
                   keep_clean_above: float | None = None, allow_mismatch: bool = False,
                   progress: bool = True) -> SpliceScores | dict[str, SpliceScores]:
    """Spliced-in scores (SAELens' ``ce_loss_score``, ``kl_div_score`` and their parts) of unit sets at one layer.

    The clean and the ablated passes are run once per batch and shared by every unit set.

    Args:
        lm: a causal LM from :func:`atomsnb.models.load_model`, on CPU or CUDA, any dtype.
        units: one unit set, a list of unit sets (keyed by their ``name``) or a dict name -> unit set.
            A unit set is any object with ``reconstruct(x: [n, d_model]) -> [n, d_model]`` (atomsnb.units'
            contract: CPU input, float64 output); ``d_model`` and ``layer`` attributes, when present, are
            checked against the model and ``layer``.
        windows: ``[n_windows, seq_len]`` token ids of held-out text (:func:`eval_windows`, or an eval
            :class:`~atomsnb.activations.Activations`' ``windows``).
        layer: residual-stream layer to replace, ``1..n_layers`` (the output of decoder block ``layer``).
        batch_size: windows per forward pass.
        ablation: ``"zero"`` (SAELens) or ``"mean"`` (the mean of ``ablation_activations``).
        ablation_activations: ``[n, d_model]`` activations at ``layer`` whose mean replaces the residual
            stream for ``ablation="mean"`` (e.g. the fit split's activations).
        exclude_special_tokens: as SAELens' ``run_evals``: ``True`` skips the tokenizer's special tokens
            (:func:`special_token_ids`), a sequence of ids skips those, ``False`` skips only position 0.
            Position 0 is skipped in every case (module docstring).
        ablate_special_tokens: ablate the skipped positions too, as SAELens' zero-ablation hook does
            (default ``False``: the ablation replaces exactly the spliced positions).
        keep_clean_above: a residual-stream norm (the model's units): positions whose clean activation at ``layer``
            is larger are treated like special tokens: kept clean in every pass and left out of the scores. The
            book passes ``massive_k`` times the median token norm of the fitting activations, so that massive
            tokens (:mod:`atomsnb.massive`), which the unit sets were neither trained nor evaluated on, are not
            spliced either. None (default) splices every non-special position.
        allow_mismatch: splice unit sets even where their own hook point, layer or model disagrees
            (:func:`atomsnb.external.check_target`: an external SAE trained on an MLP output, another layer or
            another model; a unit set whose ``layer`` is another). Default ``False``: refused.
        progress: show a tqdm progress bar (also silenced by ``TQDM_DISABLE=1``).

    Returns:
        A :class:`SpliceScores` for a single unit set; a dict name -> :class:`SpliceScores` for a list or dict.

    Raises:
        ValueError: before any forward pass, for a layer outside ``1..n_layers``, a unit set without
            ``reconstruct`` or whose ``d_model`` or ``layer`` disagrees, windows that are not integer
            ``[n >= 1, seq_len >= 3]`` or hold ids outside the vocabulary, an unknown ablation, missing or
            malformed ``ablation_activations``, ``batch_size < 1``, or windows with no scored position; an
            external SAE trained on another hook point or model (:class:`atomsnb.external.HookMismatchError`);
            during the passes, a reconstruction of the wrong shape or with NaN/inf (naming the unit set).
    """
    unit_map, single = _as_unit_map(units)
    w, mean = _check_inputs(lm, unit_map, windows, layer, batch_size, ablation, ablation_activations, allow_mismatch)
    layer = int(layer)
    if exclude_special_tokens is True:
        skip_ids = special_token_ids(lm.tokenizer)
    elif exclude_special_tokens is False or exclude_special_tokens is None:
        skip_ids = []
    else:
        skip_ids = sorted({int(t) for t in exclude_special_tokens})
    skip = torch.isin(w, torch.tensor(skip_ids, dtype=torch.int64)) if skip_ids else torch.zeros_like(w, dtype=torch.bool)
    skip[:, 0] = True
    keep = ~skip
    n_ce, n_kl = int(keep[:, :-1].sum()), int(keep.sum())
    if keep_clean_above is not None and (isinstance(keep_clean_above, bool) or not isinstance(keep_clean_above, (int, float))
                                         or not math.isfinite(keep_clean_above) or keep_clean_above <= 0):
        raise ValueError(f"keep_clean_above must be None or a finite norm > 0; got {keep_clean_above!r}")
    if n_ce == 0:
        raise ValueError(f"no position of the {tuple(w.shape)} windows can be scored: every token but the last of each "
                         f"window is position 0 or a skipped special token {skip_ids}")

    block = decoder_layers(lm.model)[layer - 1]
    ce_sum = {"clean": 0.0, "ablation": 0.0, **{n: 0.0 for n in unit_map}}
    kl_sum = {"ablation": 0.0, **{n: 0.0 for n in unit_map}}
    fns = {n: _reconstruction_fn(n, u, lm.d_model) for n, u in unit_map.items()}
    ablate_fn = _constant_fn(mean)
    bar = tqdm(range(0, len(w), batch_size), desc=f"spliced scores {lm.name} layer {layer} ({len(unit_map)} unit sets)",
               disable=not progress or None, leave=False)
    with torch.no_grad(), _Splice(block) as splice:
        for start in bar:
            ids = w[start:start + batch_size].to(lm.device)
            k = keep[start:start + batch_size].to(lm.device)
            splice.replace, splice.record = None, keep_clean_above is not None
            logp_clean = _log_probs(lm, ids)
            splice.record = False
            if keep_clean_above is not None:  # massive positions: kept clean and unscored, like special tokens
                gone = k & (splice.norms > keep_clean_above)
                n_ce -= int(gone[:, :-1].sum())
                n_kl -= int(gone.sum())
                k = k & ~gone
            ce_mask, kl_mask = k[:, :-1], k
            ce_sum["clean"] += float(_ce_per_token(logp_clean, ids)[ce_mask].double().sum())
            for key, fn, mask in [("ablation", ablate_fn, torch.ones_like(k) if ablate_special_tokens else k)] + \
                                 [(n, fns[n], k) for n in unit_map]:
                splice.mask, splice.replace = mask, fn
                logp = _log_probs(lm, ids)
                splice.replace = None
                ce_sum[key] += float(_ce_per_token(logp, ids)[ce_mask].double().sum())
                kl_sum[key] += float(_kl_per_token(logp_clean, logp)[kl_mask].double().sum())
                del logp

    if n_ce == 0 or n_kl == 0:
        raise ValueError(f"every scored position's activation norm exceeds keep_clean_above={keep_clean_above}: nothing "
                         "was spliced; raise the threshold")
    ce_clean, ce_abl, kl_abl = ce_sum["clean"] / n_ce, ce_sum["ablation"] / n_ce, kl_sum["ablation"] / n_kl
    out = {}
    for n in unit_map:
        ce_sae, kl_sae = ce_sum[n] / n_ce, kl_sum[n] / n_kl
        den = ce_abl - ce_clean
        out[n] = SpliceScores(
            ce_loss_with_sae=ce_sae, ce_loss_without_sae=ce_clean, ce_loss_with_ablation=ce_abl,
            ce_loss_score=(ce_abl - ce_sae) / den + 0.0 if den != 0 else math.nan,  # + 0.0: no -0.0
            kl_div_with_sae=kl_sae, kl_div_with_ablation=kl_abl,
            kl_div_score=(kl_abl - kl_sae) / kl_abl + 0.0 if kl_abl != 0 else math.nan,
            n_tokens=n_ce, n_tokens_kl=n_kl, layer=layer, ablation=ablation)
    return next(iter(out.values())) if single else out


def scores_table(scores: Mapping[str, SpliceScores]) -> pd.DataFrame:
    """One row per unit set: ``unit set`` and every field of :class:`SpliceScores`."""
    return pd.DataFrame([{"unit set": name, **s.as_dict()} for name, s in scores.items()])


# ---------------------------------------------------------------- which metric predicts faithfulness?
_LABELS = {"r2_aip": "R²_AIP", "explained_variance": "explained variance", "ce_loss_score": "ce_loss_score",
           "kl_div_score": "kl_div_score"}


@dataclass(frozen=True)
class FaithfulnessVerdict:
    """Rank correlations of a downstream score with two activation-space metrics, and the verdict.

    Attributes:
        score: the downstream column (``"ce_loss_score"``).
        predictors: the two activation-space columns compared (``("r2_aip", "explained_variance")``).
        rho: predictor -> Spearman rank correlation with ``score`` over the unit sets.
        p_value: predictor -> two-sided p-value of that correlation (``scipy.stats.spearmanr``).
        n: number of unit sets with all three numbers finite.
        difference: ``rho[predictors[0]] - rho[predictors[1]]``.
        ci: ``confidence`` paired-bootstrap interval of ``difference`` (resampling unit sets).
        winner: the predictor whose correlation is higher with the interval excluding 0, else ``None``.
        sentence: the verdict in words, generated from these numbers.
    """

    score: str
    predictors: tuple[str, str]
    rho: dict[str, float]
    p_value: dict[str, float]
    n: int
    difference: float
    ci: tuple[float, float]
    winner: str | None
    sentence: str


def _spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman correlation of each row pair of ``a``, ``b`` ``[m, n]`` (average ranks; NaN for a constant row)."""
    ra, rb = rankdata(a, axis=1), rankdata(b, axis=1)
    ra -= ra.mean(1, keepdims=True)
    rb -= rb.mean(1, keepdims=True)
    den = np.sqrt((ra ** 2).sum(1) * (rb ** 2).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (ra * rb).sum(1) / np.where(den > 0, den, 1), np.nan)


def faithfulness_correlations(table: pd.DataFrame, *, score: str = "ce_loss_score",
                              predictors: tuple[str, str] = ("r2_aip", "explained_variance"), min_n: int = 5,
                              n_boot: int = 2000, confidence: float = 0.95, seed: int = 0) -> FaithfulnessVerdict:
    """Which activation-space metric predicts downstream faithfulness better, decided from the numbers.

    Computes the Spearman rank correlation of ``score`` with each predictor over the rows (unit sets,
    coefficients, layers) of ``table``, and a paired bootstrap (``n_boot`` resamples of the rows, seeded)
    of the difference of the two correlations. The verdict names a predictor only when the
    ``confidence`` interval of the difference excludes 0; otherwise the two tie at this sample size.
    With fewer than ``min_n`` complete rows it says the sample is too small. The neurons score 1 on all
    three columns by construction; include them or not, but say which (they add one concordant point to
    both correlations).

    Args:
        table: one row per unit set with the columns ``score`` and ``predictors`` (NaN rows are dropped).
        score: the downstream score (``"ce_loss_score"`` or ``"kl_div_score"``).
        predictors: the two columns to compare.
        min_n: fewest complete rows for a verdict (at least 3).
        n_boot: bootstrap resamples (resamples where a column is constant are left out).
        confidence: level of the bootstrap interval, in (0, 1).
        seed: bootstrap seed.

    Returns:
        A :class:`FaithfulnessVerdict` whose ``sentence`` is ready to print in a chapter.

    Raises:
        ValueError: a missing column, two identical predictors, ``min_n < 3``, ``n_boot < 100`` or
            ``confidence`` outside (0, 1).
    """
    a, b = predictors
    missing = [c for c in (score, a, b) if c not in table.columns]
    if missing:
        raise ValueError(f"table lacks column(s) {missing}; it has {list(table.columns)}")
    if a == b:
        raise ValueError(f"the two predictors must differ; got {predictors}")
    if min_n < 3:
        raise ValueError(f"min_n must be >= 3 (a rank correlation of fewer points says nothing); got {min_n}")
    if n_boot < 100:
        raise ValueError(f"n_boot must be >= 100; got {n_boot}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1); got {confidence}")
    df = table[[score, a, b]].apply(pd.to_numeric, errors="coerce")
    df = df[np.isfinite(df.to_numpy()).all(1)]
    n = len(df)
    la, lb, ls = (_LABELS.get(c, c) for c in (a, b, score))
    nan2 = (math.nan, math.nan)
    if n < min_n:
        rho = {c: float(spearmanr(df[score], df[c]).statistic) if n >= 3 else math.nan for c in (a, b)}
        sentence = (f"Only {n} unit set{'s' if n != 1 else ''} {'have' if n != 1 else 'has'} {ls}, {la} and {lb}: "
                    f"too few (fewer than {min_n}) to say which of {la} and {lb} predicts downstream faithfulness better.")
        return FaithfulnessVerdict(score, (a, b), rho, {a: math.nan, b: math.nan}, n, rho[a] - rho[b], nan2, None,
                                   sentence)
    rho, pv = {}, {}
    for c in (a, b):
        r = spearmanr(df[score], df[c])
        rho[c], pv[c] = float(r.statistic), float(r.pvalue)
    diff = rho[a] - rho[b]
    x = df.to_numpy()
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    ra = _spearman_rows(x[idx, 0], x[idx, 1])
    rb = _spearman_rows(x[idx, 0], x[idx, 2])
    d = (ra - rb)[np.isfinite(ra) & np.isfinite(rb)]
    alpha = (1 - confidence) / 2
    ci = (float(np.quantile(d, alpha)), float(np.quantile(d, 1 - alpha))) if len(d) else nan2
    pct = f"{confidence:.0%}"
    head = (f"Across {n} unit sets, the rank correlation (Spearman) of {ls} with {la} is {rho[a]:+.2f} and with "
            f"{lb} {rho[b]:+.2f}")
    if not len(d) or not all(math.isfinite(v) for v in (rho[a], rho[b])):
        winner = None
        sentence = f"{head}: a column is constant, so neither predicts downstream faithfulness better here."
    elif ci[0] > 0 or ci[1] < 0:
        winner = a if diff > 0 else b
        other = b if winner == a else a
        sentence = (f"{head}: {_LABELS.get(winner, winner)} predicts downstream faithfulness better than "
                    f"{_LABELS.get(other, other)} (difference {diff:+.2f}, {pct} bootstrap interval "
                    f"[{ci[0]:+.2f}, {ci[1]:+.2f}] over the unit sets).")
    else:
        winner = None
        sentence = (f"{head}: neither predicts downstream faithfulness clearly better (difference {diff:+.2f}, "
                    f"{pct} bootstrap interval [{ci[0]:+.2f}, {ci[1]:+.2f}] contains 0): a tie at this sample size.")
    return FaithfulnessVerdict(score, (a, b), rho, pv, n, diff, ci, winner, sentence)
