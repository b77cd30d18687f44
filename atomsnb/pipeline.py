"""The prologue every experiment shares: activations of one layer, held-out activations, the fitted AIP.

:func:`layer_data` collects the fitting and held-out activations of one layer (through the per-call activation
cache or the activation store), leaves out massive tokens if asked, and fits ``S`` on the fitting split only
(SPEC §1.1). Chapters 2, 4 and 5 and the grids start here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ._validate import check_massive_k, positive_int
from .activations import ActivationConfig, Activations, collect_activations
from .aip import AIP
from .massive import massive_token_mask
from .models import load_model
from .store import collect_store

__all__ = ["LayerData", "layer_data", "collect_sets"]


@dataclass
class LayerData:
    """Activations of one layer for an experiment, and the AIP fitted on the fitting split.

    Attributes:
        fit: ``[n_fit_tokens, d_model]`` float32 activations of the ``"fit"`` split: ``S`` is fitted on them and
            SAEs train on (the first ones of) them.
        eval: ``[n_eval_tokens, d_model]`` float32 held-out activations (the ``"eval"`` split, disjoint text).
        aip: the :class:`AIP` fitted on ``fit``.
        lm: the loaded model (:class:`atomsnb.models.LoadedModel`).
        layer: the residual-stream layer.
        fit_activations, eval_activations: the :class:`atomsnb.activations.Activations` (token ids, windows,
            positions: what contexts need), with every collected token, massive ones included.
        fit_rows, eval_rows: ``[n]`` int64 rows of ``fit_activations`` / ``eval_activations`` that ``fit`` / ``eval``
            hold (all rows unless massive tokens were excluded).
        massive_k: the criterion used to exclude massive tokens (:func:`atomsnb.massive.massive_token_mask`), or None.
        fit_store, eval_store: the :class:`atomsnb.store.ActivationStore` s the activations were read from
            (``store=True``; then ``fit_activations`` / ``eval_activations`` are None).
        n_collected: activations collected per split, ``(fit, eval)``, before any exclusion.
    """

    fit: torch.Tensor
    eval: torch.Tensor
    aip: AIP
    lm: object
    layer: int
    fit_activations: object = None
    eval_activations: object = None
    fit_rows: torch.Tensor | None = None
    eval_rows: torch.Tensor | None = None
    massive_k: float | None = None
    fit_store: object = None
    eval_store: object = None
    n_collected: tuple[int, int] = (0, 0)

    @property
    def n_excluded(self) -> tuple[int, int]:
        """Massive tokens left out of ``(fit, eval)``."""
        return (self.n_collected[0] - int(self.fit.shape[0]), self.n_collected[1] - int(self.eval.shape[0]))

    @property
    def d_model(self) -> int:
        """Width of the activations."""
        return int(self.fit.shape[1])

    def describe(self, n_latents: int) -> str:
        """One line for a reader: model, layer, ``d_model``, ``|D| = n_latents``, the training (``|M|``) and held-out
        counts, the massive tokens left out of each and cond(E[hh^T]) (chapters 2 and 5 print it)."""
        return (f"{self.lm.name}, layer {self.layer}: d_model = {self.d_model}, |D| = {int(n_latents)}; |M| = "
                f"{len(self.fit):,} training and {len(self.eval):,} held-out activations (massive tokens left out: "
                f"{self.n_excluded[0]} and {self.n_excluded[1]}); cond(E[hh^T]) = {self.aip.condition_number:.2e}")




def layer_data(model: str, layer: int, corpus: str, n_fit_tokens: int, n_eval_tokens: int, seed: int = 0,
               device: str = "cpu", dtype: str = "float32", lm=None, *, seq_len: int = 128, ridge: float = 0.0,
               cache: bool = True, progress: bool = False, massive_k: float | None = None,
               store: bool = False, store_dtype: str = "float32") -> LayerData:
    """Collect fitting and held-out activations of one layer and fit the AIP: every experiment's prologue.

    Activations come from :func:`atomsnb.activations.collect_activations` (cached on disk); ``S`` is fitted
    on the ``"fit"`` split only, never on the held-out one (SPEC §1.1). With ``massive_k``, massive tokens
    (norm above ``massive_k`` times the median token norm of their own split,
    :func:`atomsnb.massive.massive_token_mask`) are treated like the BOS token: left out of both splits, so that
    ``S`` is neither fitted on them nor evaluated on them (chapter 1 shows what this choice changes).

    Args:
        model: registered name, local directory or hub id.
        layer: residual-stream layer (after decoder block ``layer``; 0 = embeddings).
        corpus: text source (:class:`atomsnb.corpus.Corpus`), ``"fit"`` and ``"eval"`` splits.
        n_fit_tokens: activations of the fitting split (fits ``S``; the SAEs' training pool).
        n_eval_tokens: held-out activations.
        seed, device, dtype: as :class:`atomsnb.activations.ActivationConfig`.
        lm: an already loaded model to reuse (loaded from ``model`` if None).
        seq_len: window length in tokens, BOS included.
        ridge: relative ridge of the AIP (0: none, SPEC §1.4).
        cache: use the on-disk activation cache.
        progress: show progress bars.
        massive_k: exclude massive tokens with this criterion (a number > 1, e.g. 20); None keeps every token.
        store: collect through the activation store (:func:`atomsnb.store.collect_store`: sharded, resumable,
            shared by every experiment that reads a prefix of it) instead of the per-call activation cache, and read
            the first ``n_fit_tokens`` / ``n_eval_tokens`` rows into memory.
        store_dtype: the store's storage dtype (with ``store``).

    Returns:
        :class:`LayerData`.

    Raises:
        ValueError: a bad size or layer (before any work), or from collection.
        InsufficientTokensError, SingularSecondMomentError: from :meth:`AIP.fit` (too few fitting tokens, a
            singular second moment).
    """

    if not isinstance(model, str) or not model:
        raise ValueError(f"model must be a non-empty string; got {model!r}")
    layer = positive_int("layer", layer, 0)
    n_fit_tokens = positive_int("n_fit_tokens", n_fit_tokens)
    n_eval_tokens = positive_int("n_eval_tokens", n_eval_tokens)
    seq_len = positive_int("seq_len", seq_len, 2)
    check_massive_k(massive_k)
    lm = lm if lm is not None else load_model(model, device=device, dtype=dtype)
    if layer > lm.n_layers:
        raise ValueError(f"layer {layer} out of range for {model!r}: allowed 0..{lm.n_layers}")
    common = dict(model=model, layers=(layer,), corpus=corpus, seq_len=seq_len, seed=seed, device=device, dtype=dtype)
    stores = {}
    if store:

        for split, n in (("fit", n_fit_tokens), ("eval", n_eval_tokens)):
            stores[split] = collect_store(ActivationConfig(split=split, n_tokens=n, **common), model=lm,
                                          store_dtype=store_dtype, progress=progress)[layer]
        fit = held = None
        x_fit = stores["fit"].read(0, n_fit_tokens).float()
        x_eval = stores["eval"].read(0, n_eval_tokens).float()
    else:
        fit = collect_activations(ActivationConfig(split="fit", n_tokens=n_fit_tokens, **common), model=lm,
                                  cache=cache, progress=progress)
        held = collect_activations(ActivationConfig(split="eval", n_tokens=n_eval_tokens, **common), model=lm,
                                   cache=cache, progress=progress)
        x_fit, x_eval = fit.acts[layer], held.acts[layer]
    n_collected = (int(x_fit.shape[0]), int(x_eval.shape[0]))
    if massive_k is None:
        fit_rows, eval_rows = torch.arange(x_fit.shape[0]), torch.arange(x_eval.shape[0])
    else:

        fit_rows = (~massive_token_mask(x_fit, float(massive_k))).nonzero().flatten()
        eval_rows = (~massive_token_mask(x_eval, float(massive_k))).nonzero().flatten()
        x_fit, x_eval = x_fit[fit_rows], x_eval[eval_rows]
    aip = AIP.fit(x_fit, ridge=ridge)
    return LayerData(x_fit, x_eval, aip, lm, layer, fit, held, fit_rows, eval_rows,
                     None if massive_k is None else float(massive_k), stores.get("fit"), stores.get("eval"),
                     n_collected)


def collect_sets(lm, *, corpus: str, other_corpus: str, other_split: str = "train", n_fit_tokens: int,
                 n_eval_tokens: int, seq_len: int = 128, seed: int = 0, device: str = "cpu",
                 dtype: str = "float32") -> dict[str, Activations]:
    """Every layer's residual stream of one model on chapter 1's three sets (paper §3, SPEC §1.1): the every-layer
    counterpart of :func:`layer_data`, chapter 1's prologue.

    Args:
        lm: a loaded model (:func:`atomsnb.models.load_model`); its ``name`` is the model collected.
        corpus: the text ``S`` is fitted on (split ``"fit"``) and its held-out split (``"eval"``).
        other_corpus, other_split: the other domain.
        n_fit_tokens: tokens per layer for fitting ``S``; n_eval_tokens: tokens per layer of each other set.
        seq_len, seed, device, dtype: as :class:`atomsnb.activations.ActivationConfig`.

    Returns:
        ``{"fit", "held-out", "other"}`` (the values of :data:`atomsnb.shift.SET_KEYS`) -> :class:`Activations` of every layer
        ``1..n_layers``, ``[n_tokens, d_model]`` each.

    Raises:
        Whatever :func:`atomsnb.activations.collect_activations` raises (unknown corpus, too few tokens).
    """
    common = dict(model=lm.name, layers=None, seq_len=seq_len, seed=seed, device=device, dtype=dtype)
    configs = {"fit": ActivationConfig(corpus=corpus, split="fit", n_tokens=n_fit_tokens, **common),
               "held-out": ActivationConfig(corpus=corpus, split="eval", n_tokens=n_eval_tokens, **common),
               "other": ActivationConfig(corpus=other_corpus, split=other_split, n_tokens=n_eval_tokens, **common)}
    return {key: collect_activations(cfg, model=lm) for key, cfg in configs.items()}
