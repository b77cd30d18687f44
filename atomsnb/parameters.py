"""A chapter's papermill parameters, checked through the package's own configs before the chapter's kernel starts.

``tools/run_notebook.py`` checks names and types against the chapter's ``parameters`` cell; the values themselves
(``n_steps >= 1``, ``n_fit_tokens >= 20 x d_model``, a layer the model has, ...) are the configs' business. So
:func:`validate_parameters` builds, from the parameters, the same configs the chapter builds (:class:`SAEConfig`,
:class:`ActivationConfig`, :class:`CapacityGridConfig`, :class:`LayerStudyConfig`) and lets them validate; the rules
are written once, in those configs. What depends on the model (``d_model``, the number of blocks) is read without
loading weights (:func:`model_shape`): from a packaged model's card when it is converted, else from the model's
``config.json``; where neither can be read (a hub model not downloaded yet, a packaged model not converted yet),
those rules are left to the chapter itself.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import NamedTuple

from ._validate import check_data, check_fields, check_int, check_massive_k
from .activations import ActivationConfig
from .aip import MIN_TOKENS_PER_DIM
from .grid import CapacityGridConfig, layer_study_configs
from .io import CacheCorruptError
from .models import ModelNotFoundError, _looks_local, canonical_name, check_model
from .packaged import PACKAGED_MODELS, packaged_model_path, verified_card
from .sae import SAEConfig
from .scaling import ScalingStudyConfig

__all__ = ["CHAPTERS", "ModelShape", "model_shape", "validate_parameters"]


class ModelShape(NamedTuple):
    """What the parameters' rules need of a model."""

    n_layers: int
    """Decoder blocks (layers ``0..n_layers`` of the residual stream)."""
    d_model: int
    """Width ``H`` of the residual stream."""


def model_shape(model: str) -> ModelShape | None:
    """``(n_layers, d_model)`` of ``model`` without loading its weights (nor converting or downloading anything).

    A packaged model: its card (:func:`atomsnb.packaged.verified_card`) when it is converted, else ``None``; another
    registered model: ``None`` unless built; a local directory: its ``config.json``; a hub id: its config if the
    hub cache has it, else ``None``.

    Raises:
        ModelNotFoundError: a local directory that does not exist or has no model config (the chapter would fail
            the same way).
        UnsupportedModelError: a config that is not a causal language model's.
    """
    canon = canonical_name(model)
    if canon in PACKAGED_MODELS:
        try:
            card = verified_card(packaged_model_path(canon))
            return ModelShape(int(card["n_layers"]), int(card["d_model"]))
        except (OSError, KeyError, TypeError, ValueError, CacheCorruptError):  # not converted yet, or to be rebuilt
            return None
    if canon is not None:  # a registered model built on first use (the docstring GPT-2)
        return None
    try:
        return ModelShape(*check_model(model))
    except ModelNotFoundError:
        if Path(os.path.expanduser(model)).exists() or _looks_local(model):
            raise
        return None  # a hub id not in the local cache: the chapter may still download it


def _sae(p: Mapping, shape: ModelShape | None):
    """The chapter's SAE config (:meth:`SAEConfig.for_model` where ``d_model`` is known)."""
    common = dict(n_steps=p["n_steps"], batch_size=p["batch_size"], seed=p["seed"], device=p["device"])
    if shape is None:
        return SAEConfig(**common)
    return SAEConfig.for_model(shape.d_model, capacity=p["capacity"], **common)


def _coefficients(config, l0: list, l1: list) -> None:
    """Each coefficient of the chapter, set in the SAE config of its kind (which refuses a bad one)."""
    for c in l0:
        config.with_kind("jumprelu", c)
    for c in l1:
        config.with_kind("relu", c)


def _fit_tokens(n_fit_tokens, model: str, shape: ModelShape | None) -> None:
    if shape is not None and n_fit_tokens < MIN_TOKENS_PER_DIM * shape.d_model:
        raise ValueError(f"n_fit_tokens={n_fit_tokens} is below {MIN_TOKENS_PER_DIM} x d_model = "
                         f"{MIN_TOKENS_PER_DIM * shape.d_model} needed to fit S for {model!r} (d_model "
                         f"{shape.d_model}; SPEC §1.1): use n_fit_tokens >= {MIN_TOKENS_PER_DIM * shape.d_model}")


def _layer(layer, model: str, shape: ModelShape | None) -> None:
    if shape is not None and not 0 <= layer <= shape.n_layers:
        raise ValueError(f"layer={layer} is out of range for {model!r}: allowed 0..{shape.n_layers}")




def _threads(t) -> None:
    if t is not None:
        check_int("threads", t, 1)


def _activations(p: Mapping, model: str, layers, shape: ModelShape | None, *, splits=()) -> None:
    """The activation configs of one model (fit and eval of ``corpus``, plus ``splits``), and, where the model's
    shape is known, the corpus holding ``n_fit_tokens`` and ``n_eval_tokens`` (:func:`atomsnb._validate.check_data`)."""
    common = dict(model=model, layers=layers, seq_len=p.get("seq_len", 128), seed=p["seed"], device=p["device"],
                  dtype=p["dtype"])
    for corpus, split, n in ((p["corpus"], "fit", p["n_fit_tokens"]), (p["corpus"], "eval", p["n_eval_tokens"]),
                             *splits):
        ActivationConfig(corpus=corpus, split=split, n_tokens=n, **common)
    _fit_tokens(p["n_fit_tokens"], model, shape)
    if shape is not None:
        check_data(SimpleNamespace(model=model, corpus=p["corpus"], seq_len=common["seq_len"], seed=p["seed"],
                                   n_fit_tokens=p["n_fit_tokens"], n_eval_tokens=p["n_eval_tokens"]))


def _toy_world(p: Mapping) -> None:
    _threads(p["threads"])
    d_model = check_int("d_model", p["d_model"], 2)
    for name in ("n_train_tokens", "n_eval_tokens", "n_pairs"):
        check_int(name, p[name], 1)
    if p["n_train_tokens"] < MIN_TOKENS_PER_DIM * d_model:
        raise ValueError(f"n_train_tokens={p['n_train_tokens']} is below {MIN_TOKENS_PER_DIM} x d_model = "
                         f"{MIN_TOKENS_PER_DIM * d_model} needed to fit S (SPEC §1.1)")
    n_steps = p["n_steps"]
    config = SAEConfig(n_steps=n_steps, batch_size=p["batch_size"], lr=p["lr"], seed=p["seed"],
                       sparsity_warmup_steps=n_steps // 5, lr_decay_steps=n_steps // 5,
                       init_threshold=p["init_threshold"], bandwidth=p["bandwidth"])
    _coefficients(config, [p["l0_coefficient"]], [p["l1_coefficient"]])


def _representation_shift(p: Mapping) -> None:
    _threads(p["threads"])
    check_massive_k(p["massive_k"])
    check_int("n_pairs", p["n_pairs"], 1)
    for model in p["models"]:
        shape = model_shape(model)
        _activations(p, model, None, shape, splits=((p["other_corpus"], p["other_split"], p["n_eval_tokens"]),))


def _units_chapter(p: Mapping, l0: list, l1: list, **extra_activations) -> None:
    """Chapters 2 and 5: one layer of one model, its SAEs trained with ``l0`` / ``l1`` coefficients."""
    _threads(p["threads"])
    check_massive_k(p["massive_k"])
    check_int("layer", p["layer"], 0)
    shape = model_shape(p["model"])
    _layer(p["layer"], p["model"], shape)
    _coefficients(_sae(p, shape), l0, l1)
    _activations(p, p["model"], (p["layer"],), shape, **extra_activations)


def _neurons_features_atoms(p: Mapping) -> None:
    check_int("n_splice_tokens", p["n_splice_tokens"], 0)
    ablation = [] if p["ablation_l1_coefficient"] is None else [p["ablation_l1_coefficient"]]
    _units_chapter(p, list(p["l0_coefficients"]), list(p["l1_coefficients"]) + ablation)


def _monosemanticity(p: Mapping) -> None:
    _units_chapter(p, [p["l0_coefficient"]], [p["l1_coefficient"]],
                   splits=((p["reading_corpus"], p["reading_split"], p["n_reading_tokens"]),))


def _atom_browser(p: Mapping) -> None:
    for name in ("n_units", "k", "n_bins", "n_logits"):
        check_int(name, p[name], 1)
    for name in ("width_left", "width_right"):
        check_int(name, p[name], 0)
    _units_chapter(p, [p["l0_coefficient"]], [p["l1_coefficient"]])


def _grid_config(config) -> None:
    """A grid config's full :meth:`validate` where the model's shape is known, else the checks of its fields."""
    if model_shape(config.model) is None:
        check_fields(config)
    else:
        config.validate()


def _capacity_grid(p: Mapping) -> None:
    _threads(p["threads"])
    _grid_config(CapacityGridConfig(
        model=p["model"], layer=p["layer"], corpus=p["corpus"], m_values=tuple(p["m_values"]),
        d_multiples=tuple(p["d_multiples"]), n_fit_tokens=p["n_fit_tokens"], n_eval_tokens=p["n_eval_tokens"],
        n_steps=p["n_steps"], batch_size=p["batch_size"], l0_coefficient=p["l0_coefficient"], seeds=tuple(p["seeds"]),
        seq_len=p["seq_len"], store_dtype=p["store_dtype"], device=p["device"], dtype=p["dtype"]))


def _per_model_results(p: Mapping) -> None:
    _threads(p["threads"])
    for config in layer_study_configs(p):
        _grid_config(config)


def _scaling(p: Mapping) -> None:
    _threads(p["threads"])
    ScalingStudyConfig.from_mapping(dict(p)).validate()


#: Chapter (the notebook's stem) -> the check of its parameters.
CHAPTERS: dict[str, Callable[[Mapping], None]] = {
    "00_toy_world": _toy_world,
    "01_representation_shift": _representation_shift,
    "02_neurons_features_atoms": _neurons_features_atoms,
    "03_capacity_grid": _capacity_grid,
    "04_per_model_results": _per_model_results,
    "05_monosemanticity": _monosemanticity,
    "06_atom_browser": _atom_browser,
    "07_scaling": _scaling,
}


def validate_parameters(chapter: str, params: Mapping) -> None:
    """Refuse parameter values chapter ``chapter`` cannot run with, before any model is loaded or work is done.

    Args:
        chapter: the chapter's notebook stem, e.g. ``"02_neurons_features_atoms"``; a name not in :data:`CHAPTERS`
            (a notebook of one's own) is not checked.
        params: every parameter of the chapter, name -> value (its defaults updated with the overrides). Types are
            assumed checked already (``tools/run_notebook.py``'s ``check_parameters``).

    Raises:
        ValueError, TypeError: from the configs, naming the parameter, its value and what is allowed.
        ModelNotFoundError, UnsupportedModelError: a model that cannot be found or is not a causal LM
            (:func:`model_shape`, the grid configs' ``validate``).
        KeyError: ``params`` lacks a parameter the chapter has.
    """
    check = CHAPTERS.get(chapter)
    if check is not None:
        check(params)
