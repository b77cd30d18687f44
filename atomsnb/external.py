"""Published sparse autoencoders (SAELens format, Gemma Scope ``params.npz``) as candidate units.

An external SAE loaded here is a *unit set* like the project's own (``codes``, ``reconstruct``,
``dictionary``, ``name``, ``family = "external"``, ``d_model``, ``n_latents``), so it goes through
the same evaluation: ``r2_aip``, ``explained_variance``, ``q_star``, ``l0``, ``frac_dead`` and the
spliced-in scores of :mod:`atomsnb.splice`.

Formats read:

- **SAELens** (``sae_lens`` 6.x ``SAE.save_model``; also the pre-6.0 configs SAELens still reads):
  a directory with ``cfg.json`` and ``sae_weights.safetensors``. SAELens stores ``W_enc`` as
  ``[d_in, d_sae]`` and ``W_dec`` as ``[d_sae, d_in]`` and computes (``sae_lens/saes/sae.py``,
  ``standard_sae.py``, ``jumprelu_sae.py``, ``topk_sae.py``)::

      sae_in = norm_in(x) - b_dec * apply_b_dec_to_input
      pre    = sae_in @ W_enc + b_enc
      f      = relu(pre)                          # architecture "standard"
      f      = relu(pre) * (pre > threshold)      # architecture "jumprelu"
      f      = topk(pre, k) then relu             # architecture "topk" (pre * ||W_dec_i|| first
                                                  #   when rescale_acts_by_decoder_norm)
      x_hat  = norm_out(f @ W_dec + b_dec)        # (f / ||W_dec_i||) @ W_dec for rescaled topk

  ``normalize_activations``: ``"none"``; ``"expected_average_only_in"`` (input multiplied by a
  constant ``s`` and output divided by it, which is exactly SAELens'
  ``fold_activation_norm_scaling_factor``; ``s`` comes from the ``norm_scaling_factor`` argument
  or from the ``activation_scaler.json`` SAELens' trainer writes beside a checkpoint, and the
  loader refuses to guess it: SAELens' ``load_from_disk`` would silently use ``s = 1``);
  ``"constant_norm_rescale"`` (``norm_in(x) = x sqrt(d_in)/||x||``, undone on the output);
  ``"layer_norm"`` (``(x - mean)/(std + 1e-5)`` with the unbiased std, undone with ``std`` and
  ``mean``). ``"covariance_whitening"`` is folded into the weights by SAELens at the end of
  training, so a file that still declares it is a mid-training checkpoint and is refused.
- **EleutherAI/sparsify** (``eai-sparsify`` 1.3.3 ``SparseCoder.save_to_disk``): a directory per hook point with
  ``cfg.json`` and ``sae.safetensors`` (``encoder.weight [d_sae, d_in]``, ``encoder.bias``, ``W_dec [d_sae, d_in]``,
  ``b_dec``). sparsify computes ``f = topk(relu((x - b_dec) @ encoder.weight^T + encoder.bias), k)`` and
  ``x_hat = f @ W_dec + b_dec``: SAELens' "topk" with ``apply_b_dec_to_input`` and no normalisation (taking the
  ReLU before or after the top-k gives the same codes), which is how :func:`load_sparsify` loads it. The directory
  name is sparsify's hook point: ``layers.{i}`` (the output of decoder block ``i``) is read as
  ``blocks.{i}.hook_resid_post``.
- **Gemma Scope** native ``params.npz`` (``google/gemma-scope-*``): ``W_enc [d_in, d_sae]``,
  ``W_dec [d_sae, d_in]``, ``b_enc``, ``b_dec``, ``threshold``; a JumpReLU SAE with
  ``apply_b_dec_to_input = False`` and no normalisation, exactly as SAELens' ``gemma_2``
  conversion loads it. Read with ``numpy.load(..., allow_pickle=False)``.

Computation happens in the SAE's own dtype (the ``dtype`` of ``cfg.json``, float32 for Gemma Scope),
as SAELens does (``process_sae_in`` casts the input to the SAE dtype), so codes and reconstructions
match SAELens' to float32 rounding; ``dtype=torch.float64`` computes in double precision instead.
The unit-set methods return float64 on the SAE's ``device`` (CPU by default).

Layers: a SAELens ``hook_name`` ``blocks.{i}.hook_resid_post`` is the output of (0-based) block
``i``, which is atomsnb's residual-stream layer ``i + 1`` (:mod:`atomsnb.activations`);
``blocks.{i}.hook_resid_pre`` is layer ``i``. So Gemma Scope's ``layer_12`` SAE (hook
``blocks.12.hook_resid_post``) belongs at atomsnb layer **13**.

Hook points and models are checked (:func:`check_target`): an SAE is spliced or loaded for a layer only where its
``hook_name`` is the residual stream at that layer (an SAE trained on ``hook_mlp_out`` or ``attn.hook_z`` reads
other vectors), and used only with the model its config's ``model_name`` names. An SAE whose config names no hook
must be given its ``layer`` at load. ``allow_mismatch=True`` (loaders, :func:`atomsnb.splice.spliced_scores`)
says a mismatch is deliberate.
"""

from __future__ import annotations

import json
import math
import os
import re
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from .io import DTYPES
from .packaged import PACKAGED_MODELS

__all__ = ["ExternalSAE", "TransposedLayoutError", "SUPPORTED_ARCHITECTURES", "SUPPORTED_NORMALIZATIONS",
           "load_saelens", "load_gemma_scope", "load_sparsify", "load_external_sae", "residual_layer_of_hook", "HookMismatchError",
           "check_target", "same_model"]

#: SAELens architectures this module reproduces.
SUPPORTED_ARCHITECTURES = ("jumprelu", "standard", "topk")
#: SAELens ``normalize_activations`` values this module reproduces.
SUPPORTED_NORMALIZATIONS = ("none", "expected_average_only_in", "constant_norm_rescale", "layer_norm")

_SAELENS_CFG = "cfg.json"
_SAELENS_WEIGHTS = "sae_weights.safetensors"
_SAELENS_SCALER = "activation_scaler.json"
_GEMMA_SCOPE_FILE = "params.npz"
_DTYPES = {**DTYPES, **{f"torch.{name}": dt for name, dt in DTYPES.items()}}  # SAELens writes either spelling


class TransposedLayoutError(ValueError):
    """A weight matrix is stored transposed relative to the SAELens layout (``W_enc [d_in, d_sae]``)."""


class HookMismatchError(ValueError):
    """An external SAE is asked to read a hook point or a model other than the one it was trained on.

    Raised by :func:`check_target` (from the loaders' ``layer``/``model`` arguments and from
    :func:`atomsnb.splice.spliced_scores`); ``allow_mismatch=True`` there says the mismatch is deliberate.
    """


#: TransformerLens' names for models whose Hugging Face name differs by more than the organisation prefix.
_MODEL_ALIASES = {"gpt2small": "gpt2"}


def _model_key(name: str) -> str:
    """``"google/Gemma-2-2B"`` -> ``"gemma22b"``: the last path part, lower case, letters and digits only."""
    key = re.sub(r"[^a-z0-9]", "", str(name).replace("\\", "/").rstrip("/").split("/")[-1].lower())
    return _MODEL_ALIASES.get(key, key)


def same_model(sae_model: str, model_names) -> bool:
    """Whether an SAE's ``model_name`` (SAELens / TransformerLens spelling) names one of ``model_names``.

    Names are compared by their last path part, case, ``-``/``_``/``.`` ignored (``"gemma-2-2b"`` matches
    ``"google/gemma-2-2b"``; TransformerLens' ``"gpt2-small"`` matches ``"gpt2"``). A registered packaged model
    also answers to its own title and upstream hub name (``"smollm2-135m"`` to ``"SmolLM2-135M-Instruct"``).

    Args:
        sae_model: the SAE's ``model_name``.
        model_names: a name or an iterable of names the target model goes by.
    """
    names = [model_names] if isinstance(model_names, (str, os.PathLike)) else list(model_names)
    keys = set()
    for n in names:
        if not n:
            continue
        keys.add(_model_key(os.fspath(n)))
        spec = PACKAGED_MODELS.get(os.fspath(n))
        if spec is not None:
            keys |= {_model_key(spec.title), _model_key(spec.upstream)}
    return _model_key(sae_model) in keys


def _model_names(model) -> list[str]:
    """The names a target model goes by: a str as given; a LoadedModel's name, directory and config name."""
    if model is None:
        return []
    if isinstance(model, (str, os.PathLike)):
        return [os.fspath(model)]
    cfg = getattr(getattr(model, "model", None), "config", None)
    return [n for n in (getattr(model, "name", None), getattr(model, "path", None),
                        getattr(cfg, "name_or_path", None)) if n]


def check_target(units, *, layer: int | None, model=None, allow_mismatch: bool = False) -> None:
    """Refuse to use an external SAE at another hook point or in another model than the one it was trained on.

    The one check that splicing (:func:`atomsnb.splice.spliced_scores`) and loading for an evaluation
    (the loaders' ``layer`` / ``model`` arguments) go through. It applies to unit sets with a ``hook_name``
    attribute (:class:`ExternalSAE`); others pass unchecked. An SAE is accepted at residual-stream ``layer``
    when its ``hook_name`` is the residual stream at that layer (:func:`residual_layer_of_hook`), or when it
    names no hook and its ``layer`` (declared by the caller at load) is ``layer``; and in ``model`` when its
    ``model_name`` is absent or names that model (:func:`same_model`).

    Args:
        units: the unit set.
        layer: the atomsnb residual-stream layer it is to read and replace (``None``: do not check the hook).
        model: the target model: a name, or a :class:`atomsnb.models.LoadedModel` (``None``: do not check).
        allow_mismatch: accept any hook point and model (the caller says the mismatch is deliberate). An SAE
            loaded with ``allow_mismatch=True`` carries ``mismatch_allowed = True`` and is accepted too.

    Raises:
        HookMismatchError: a non-residual hook (MLP or attention output, ...), another residual layer, no known
            hook point at all, or another model; the message names the SAE, what it was trained on, what was
            asked, and the ``allow_mismatch=True`` override.
    """
    if allow_mismatch or getattr(units, "mismatch_allowed", False) or not hasattr(units, "hook_name"):
        return
    name = getattr(units, "name", type(units).__name__)
    hook, own = units.hook_name, getattr(units, "layer", None)
    override = "pass allow_mismatch=True if you mean it"
    if layer is not None:
        hook_layer = residual_layer_of_hook(hook)
        if hook and hook_layer is None:
            raise HookMismatchError(
                f"SAE {name!r} was trained on hook {hook!r}, which is not the residual stream; it cannot replace the "
                f"residual stream at layer {layer} (atomsnb layers are residual-stream outputs of decoder blocks: "
                f"blocks.<l-1>.hook_resid_post). Use a residual-stream SAE, or {override}")
        if hook and hook_layer != layer:
            raise HookMismatchError(
                f"SAE {name!r} was trained on hook {hook!r}, the residual stream at atomsnb layer {hook_layer}, but "
                f"layer {layer} was asked for; use it at layer {hook_layer}, or {override}")
        if not hook and own is None:
            raise HookMismatchError(
                f"SAE {name!r} does not say which hook point it was trained on (no hook_name in its config"
                f"{', source ' + units.source if getattr(units, 'source', None) else ''}), so it cannot be checked "
                f"against layer {layer}; load it with layer={layer} to declare that it reads the residual stream "
                f"there, or {override}")
        if not hook and own != layer:
            raise HookMismatchError(f"SAE {name!r} was declared for residual-stream layer {own} but layer {layer} was "
                                    f"asked for; use it at layer {own}, or {override}")
    sae_model = getattr(units, "model_name", None)
    names = _model_names(model)
    if sae_model and names and not same_model(sae_model, names):
        raise HookMismatchError(f"SAE {name!r} was trained on model {sae_model!r}, but the target model is "
                                f"{names[0]!r}; an SAE reads only its own model's activations. Use an SAE trained on "
                                f"{names[0]!r}, or {override}")


def residual_layer_of_hook(hook_name: str | None) -> int | None:
    """atomsnb residual-stream layer of a hook name, or ``None`` if it is not the residual stream.

    ``blocks.{i}.hook_resid_post`` (TransformerLens / SAELens) -> ``i + 1``; ``blocks.{i}.hook_resid_pre``
    -> ``i``; the outputs of Hugging Face decoder blocks ``model.layers.{i}``, ``transformer.h.{i}``,
    ``gpt_neox.layers.{i}`` -> ``i + 1``. Anything else (MLP or attention outputs, ``hook_resid_mid``,
    embeddings) -> ``None``.
    """
    if not hook_name:
        return None
    m = re.fullmatch(r"blocks\.(\d+)\.hook_resid_(post|pre)", hook_name)
    if m:
        return int(m.group(1)) + (1 if m.group(2) == "post" else 0)
    m = re.fullmatch(r"(?:model\.layers|transformer\.h|gpt_neox\.layers|model\.decoder\.layers)\.(\d+)", hook_name)
    if m:
        return int(m.group(1)) + 1
    return None


@dataclass(eq=False)
class ExternalSAE:
    """A published SAE as a unit set (the SAELens forward pass, see the module docstring).

    Build it with :func:`load_saelens`, :func:`load_gemma_scope` or :func:`load_external_sae`.

    Attributes:
        name: row label.
        architecture: ``"jumprelu"``, ``"standard"`` or ``"topk"``.
        W_enc: ``[d_model, n_latents]`` (SAELens layout), in the compute dtype.
        b_enc: ``[n_latents]``.
        W_dec: ``[n_latents, d_model]``.
        b_dec: ``[d_model]``.
        threshold: ``[n_latents]`` JumpReLU thresholds (``None`` for other architectures).
        k: active latents per token for ``"topk"``.
        rescale_acts_by_decoder_norm: SAELens' TopK option (selection on ``pre * ||W_dec_i||``).
        apply_b_dec_to_input: subtract ``b_dec`` from the (normalised) input before encoding.
        normalize_activations: one of :data:`SUPPORTED_NORMALIZATIONS`.
        norm_scaling_factor: the constant ``s`` of ``"expected_average_only_in"`` (else ``None``).
        hook_name: the hook point the SAE was trained on, as its config names it (``None`` if absent).
        layer: the atomsnb residual-stream layer (:func:`residual_layer_of_hook`), or ``None``.
        model_name: the model the SAE was trained on, if its config (or Gemma Scope path) says.
        source: where it was loaded from.
        mismatch_allowed: the loader was told ``allow_mismatch=True``: :func:`check_target` accepts it anywhere.
        family: always ``"external"``.
    """

    name: str
    architecture: str
    W_enc: torch.Tensor
    b_enc: torch.Tensor
    W_dec: torch.Tensor
    b_dec: torch.Tensor
    threshold: torch.Tensor | None = None
    k: int | None = None
    rescale_acts_by_decoder_norm: bool = False
    apply_b_dec_to_input: bool = True
    normalize_activations: str = "none"
    norm_scaling_factor: float | None = None
    hook_name: str | None = None
    layer: int | None = None
    model_name: str | None = None
    source: str | None = None
    mismatch_allowed: bool = False
    family: str = field(default="external")

    def __post_init__(self):
        _check_params(self)

    # -------------------------------------------------------------- sizes
    @property
    def d_model(self) -> int:
        """Input width ``d_in`` (the residual stream's ``d_model``)."""
        return int(self.W_enc.shape[0])

    @property
    def n_latents(self) -> int:
        """Number of latents ``d_sae``."""
        return int(self.W_enc.shape[1])

    @property
    def dtype(self) -> torch.dtype:
        """The compute dtype (that of the weights)."""
        return self.W_enc.dtype

    @property
    def device(self) -> torch.device:
        """Where the weights live and the computation happens."""
        return self.W_enc.device

    # -------------------------------------------------------------- SAELens forward pass
    def _check_x(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.as_tensor(x)
        if x.ndim != 2 or x.shape[1] != self.d_model:
            raise ValueError(f"{self.name!r}: x must be [n_tokens, d_model={self.d_model}]; got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"{self.name!r}: x must be a float tensor; got dtype {x.dtype}")
        return x.to(device=self.device, dtype=self.dtype)

    def _norm_in(self, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        mode = self.normalize_activations
        if mode == "none":
            return x, None
        if mode == "expected_average_only_in":
            return x * self.norm_scaling_factor, None
        if mode == "constant_norm_rescale":
            coeff = (self.d_model ** 0.5) / x.norm(dim=-1, keepdim=True)
            return x * coeff, coeff
        mu = x.mean(dim=-1, keepdim=True)  # layer_norm
        xc = x - mu
        std = xc.std(dim=-1, keepdim=True)
        return xc / (std + 1e-5), (mu, std)

    def _norm_out(self, y: torch.Tensor, state: Any) -> torch.Tensor:
        mode = self.normalize_activations
        if mode == "none":
            return y
        if mode == "expected_average_only_in":
            return y / self.norm_scaling_factor
        if mode == "constant_norm_rescale":
            return y / state
        mu, std = state
        return y * std + mu

    def _encode(self, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        sae_in, state = self._norm_in(x)
        if self.apply_b_dec_to_input:
            sae_in = sae_in - self.b_dec
        pre = sae_in @ self.W_enc + self.b_enc
        if self.architecture == "standard":
            f = torch.relu(pre)
        elif self.architecture == "jumprelu":
            f = torch.relu(pre) * (pre > self.threshold).to(pre.dtype)
        else:  # topk
            if self.rescale_acts_by_decoder_norm:
                pre = pre * self.W_dec.norm(dim=-1)
            vals, idx = torch.topk(pre, k=self.k, dim=-1, sorted=False)
            f = torch.zeros_like(pre).scatter_(-1, idx, vals.relu())
        return f, state

    def _decode(self, f: torch.Tensor, state: Any) -> torch.Tensor:
        if self.architecture == "topk" and self.rescale_acts_by_decoder_norm:
            f = f * (1 / self.W_dec.norm(dim=-1))
        return self._norm_out(f @ self.W_dec + self.b_dec, state)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """SAELens' ``sae.encode(x)``: feature activations ``[n_tokens, n_latents]`` in the compute dtype.

        Raises:
            ValueError: ``x`` is not ``[n_tokens, d_model]`` floats.
        """
        return self._encode(self._check_x(x))[0]

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """SAELens' ``sae.decode(sae.encode(x))``: the reconstruction ``[n_tokens, d_model]`` in the compute dtype.

        Raises:
            ValueError: ``x`` is not ``[n_tokens, d_model]`` floats.
        """
        f, state = self._encode(self._check_x(x))
        return self._decode(f, state)

    # -------------------------------------------------------------- unit-set interface
    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """Codes ``[n_tokens, n_latents]`` float64: SAELens' feature activations ``encode(x)``.

        ``x`` is ``[n_tokens, d_model]`` raw residual-stream activations (any float dtype). For
        ``"none"`` and ``"expected_average_only_in"`` normalisation ``reconstruct(x) = codes(x) @
        dictionary.T + b`` with a constant ``b``; for the per-token normalisations the atoms are
        additionally scaled per token (``||x|| / sqrt(d_model)``, or the token's std), which leaves
        the support (L0, dead latents, ``q*``) unchanged.

        Raises:
            ValueError: ``x`` is not ``[n_tokens, d_model]`` floats.
        """
        return self.encode(x).to(torch.float64)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction ``[n_tokens, d_model]`` float64 in raw coordinates (SAELens' ``decode(encode(x))``).

        Raises:
            ValueError: ``x`` is not ``[n_tokens, d_model]`` floats.
        """
        return self.forward(x).to(torch.float64)

    @property
    def dictionary(self) -> torch.Tensor:
        """``[d_model, n_latents]`` float64 atoms (columns) in raw activation coordinates.

        ``W_dec^T``; divided by ``s`` under ``"expected_average_only_in"`` (SAELens' folding), and with
        unit-norm columns for TopK with ``rescale_acts_by_decoder_norm`` (whose codes carry the norms).
        """
        D = self.W_dec.to(torch.float64).T
        if self.architecture == "topk" and self.rescale_acts_by_decoder_norm:
            D = D / D.norm(dim=0, keepdim=True)
        if self.normalize_activations == "expected_average_only_in":
            D = D / self.norm_scaling_factor
        return D.contiguous()

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> "ExternalSAE":
        """Move the weights (in place) to ``device`` and/or compute in ``dtype``; returns ``self``."""
        for attr in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"):
            t = getattr(self, attr)
            if t is not None:
                setattr(self, attr, t.to(device=device or t.device, dtype=dtype or t.dtype))
        return self

    def __repr__(self) -> str:
        return (f"ExternalSAE(name={self.name!r}, architecture={self.architecture!r}, d_model={self.d_model}, "
                f"n_latents={self.n_latents}, hook_name={self.hook_name!r}, layer={self.layer}, dtype={self.dtype})")


def _check_params(sae: ExternalSAE) -> None:
    if sae.architecture not in SUPPORTED_ARCHITECTURES:
        raise ValueError(f"SAE architecture {sae.architecture!r} is not supported; supported: {list(SUPPORTED_ARCHITECTURES)}")
    if sae.normalize_activations not in SUPPORTED_NORMALIZATIONS:
        raise ValueError(f"normalize_activations={sae.normalize_activations!r} is not supported; supported: "
                         f"{list(SUPPORTED_NORMALIZATIONS)}")
    if sae.W_enc.ndim != 2:
        raise ValueError(f"W_enc must be a matrix [d_in, d_sae]; got shape {tuple(sae.W_enc.shape)}")
    d_in, d_sae = sae.W_enc.shape
    _check_shapes({"W_enc": sae.W_enc, "W_dec": sae.W_dec, "b_enc": sae.b_enc, "b_dec": sae.b_dec,
                   **({"threshold": sae.threshold} if sae.threshold is not None else {})}, d_in, d_sae, sae.source)
    if sae.architecture == "jumprelu" and sae.threshold is None:
        raise ValueError("architecture 'jumprelu' needs a per-latent 'threshold' [d_sae]; none was given")
    if sae.architecture == "topk":
        if not isinstance(sae.k, int) or isinstance(sae.k, bool) or not 1 <= sae.k <= d_sae:
            raise ValueError(f"architecture 'topk' needs an integer k in 1..d_sae={d_sae}; got k={sae.k!r}")
    if sae.normalize_activations == "expected_average_only_in":
        s = sae.norm_scaling_factor
        if s is None or not (isinstance(s, (int, float)) and math.isfinite(s) and s > 0):
            raise ValueError(f"normalize_activations='expected_average_only_in' needs a finite norm_scaling_factor > 0; "
                             f"got {s!r}")
    for key in ("W_enc", "W_dec", "b_enc", "b_dec", "threshold"):
        t = getattr(sae, key)
        if t is not None and not bool(torch.isfinite(t).all()):
            raise ValueError(f"{key} of SAE {sae.name!r} holds NaN or inf values")


def _declare_target(sae: ExternalSAE, layer, model, allow_mismatch: bool) -> ExternalSAE:
    """The loaders' ``layer`` / ``model`` / ``allow_mismatch``: check them against the SAE's own hook and model."""
    if layer is not None and (isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or layer < 1):
        raise ValueError(f"layer must be an atomsnb residual-stream layer, an integer >= 1; got {layer!r}")
    if not isinstance(allow_mismatch, bool):
        raise ValueError(f"allow_mismatch must be True or False; got {allow_mismatch!r}")
    check_target(sae, layer=None if layer is None else int(layer), model=model, allow_mismatch=allow_mismatch)
    if allow_mismatch:
        sae.mismatch_allowed = True
        if layer is not None:
            sae.layer = int(layer)
    return sae


def _check_shapes(weights: Mapping[str, torch.Tensor], d_in: int, d_sae: int, source: str | None) -> None:
    where = f" in {source}" if source else ""
    expected = {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_in), "b_enc": (d_sae,), "b_dec": (d_in,),
                "threshold": (d_sae,)}
    for key in [k for k in expected if k in weights]:  # W_enc first: the message names the encoder when both are off
        want, got = expected[key], tuple(weights[key].shape)
        if got == want:
            continue
        if len(want) == 2 and got == want[::-1]:
            layout = "[d_in, d_sae]" if key == "W_enc" else "[d_sae, d_in]"
            raise TransposedLayoutError(
                f"{key}{where} has shape {got}, the transpose of the SAELens layout {layout} = {want} "
                f"(d_in={d_in}, d_sae={d_sae}). This file stores {key} as a torch.nn.Linear weight "
                f"[out_features, in_features]; SAELens stores W_enc as [d_in, d_sae] and W_dec as [d_sae, d_in]. "
                f"Transpose it (e.g. W.T.contiguous()) before saving, or convert with SAELens' own loader.")
        raise ValueError(f"{key}{where} has shape {got}; expected {want} for d_in={d_in}, d_sae={d_sae} "
                         f"(SAELens layout: W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc/threshold [d_sae], b_dec [d_in])")


def _majority_sizes(arrays: Mapping[str, Any]) -> tuple[int, int]:
    """``(d_in, d_sae)`` of a file without a config: each size as most of the five arrays give it.

    Every size appears in three or four places (``d_in``: ``W_enc`` rows, ``W_dec`` columns, ``b_dec``; ``d_sae``:
    ``W_enc`` columns, ``W_dec`` rows, ``b_enc``, ``threshold``), so one array of a wrong length, or one transposed
    matrix, is outvoted and :func:`_check_shapes` then names that array rather than one that is right.
    """
    d_in = Counter([arrays["W_enc"].shape[0], arrays["W_dec"].shape[1], arrays["b_dec"].shape[0]])
    d_sae = Counter([arrays["W_enc"].shape[1], arrays["W_dec"].shape[0], arrays["b_enc"].shape[0],
                     arrays["threshold"].shape[0]])
    return int(d_in.most_common(1)[0][0]), int(d_sae.most_common(1)[0][0])


def _resolve_dtype(dtype, default: str) -> torch.dtype:
    if dtype is None:
        dtype = default
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[str(dtype)]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(k for k in _DTYPES if '.' not in k)}") from None


def _version_tuple(v: str | None) -> tuple[int, ...] | None:
    if not v:
        return None
    m = re.match(r"(\d+)(?:\.(\d+))?(?:\.(\d+))?", str(v))
    return tuple(int(g or 0) for g in m.groups()) if m else None


def _normalise_cfg(cfg: dict) -> dict:
    """SAELens' ``handle_config_defaulting``: configs written before 6.0 get 6.0 names and defaults."""
    meta = cfg.get("metadata") or {}
    version = cfg.get("sae_lens_version") or meta.get("sae_lens_version")
    vt = _version_tuple(version)
    if vt is not None and vt >= (6, 0, 0):
        return dict(cfg)
    new = {{"hook_point": "hook_name", "hook_point_head_index": "hook_head_index",
             "activation_fn_str": "activation_fn"}.get(k, k): v for k, v in cfg.items()}
    new.setdefault("apply_b_dec_to_input", True)
    new.setdefault("activation_fn", "relu")
    new.setdefault("architecture", "standard")
    new.setdefault("reshape_activations", "hook_z" if "hook_z" in str(new.get("hook_name", "")) else "none")
    if new.get("activation_fn") == "topk" and (new.get("activation_fn_kwargs") or {}).get("k") is not None:
        new["architecture"] = "topk"
        new["k"] = new["activation_fn_kwargs"]["k"]
    if isinstance(new.get("normalize_activations"), bool):
        new["normalize_activations"] = "expected_average_only_in" if new["normalize_activations"] else "none"
    if new.get("normalize_activations") is None:
        new["normalize_activations"] = "none"
    return new


def _cfg_get(cfg: dict, key: str, default=None):
    meta = cfg.get("metadata") or {}
    if meta.get(key) is not None:
        return meta[key]
    return cfg.get(key, default)


def _read_scaler(folder: Path) -> float | None:
    """The ``scaling_factor`` of SAELens' ``activation_scaler.json`` in ``folder`` (``None`` if there is no file).

    Raises:
        ValueError: the file is not JSON, not an object ``{"scaling_factor": s}``, or ``s`` is not a finite number
            > 0 (the message names the file).
    """
    path = folder / _SAELENS_SCALER
    if not path.is_file():
        return None
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid UTF-8 JSON ({exc}); SAELens writes it as {{\"scaling_factor\": s}} "
                         f"with a number s > 0. Fix or delete it and pass norm_scaling_factor=s") from exc
    value = obj.get("scaling_factor") if isinstance(obj, dict) else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        shown = obj.get("scaling_factor") if isinstance(obj, dict) else obj
        raise ValueError(f"{path} must hold {{\"scaling_factor\": s}} with a finite number s > 0 (as SAELens writes it); "
                         f"got {shown!r}. Fix or delete it and pass norm_scaling_factor=s")
    return float(value)


def _read_saelens_cfg(folder: Path) -> dict:
    """The normalised ``cfg.json`` of a SAELens directory, after checking the directory, ``d_in``/``d_sae``, the
    architecture, the normalisation and the reshape (each error names the file and what is allowed)."""
    if not folder.is_dir():
        raise FileNotFoundError(f"SAELens SAE directory {str(folder)!r} does not exist or is not a directory; "
                                f"expected a directory holding {_SAELENS_CFG} and {_SAELENS_WEIGHTS}")
    missing = [f for f in (_SAELENS_CFG, _SAELENS_WEIGHTS) if not (folder / f).is_file()]
    if missing:
        present = sorted(p.name for p in folder.iterdir())
        raise FileNotFoundError(f"{str(folder)!r} is missing {missing}: a SAELens SAE directory holds {_SAELENS_CFG} "
                                f"and {_SAELENS_WEIGHTS} (found: {present})")
    with open(folder / _SAELENS_CFG) as fh:
        try:
            raw_cfg = json.load(fh)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{folder / _SAELENS_CFG} is not valid JSON: {exc}") from exc
    if not isinstance(raw_cfg, dict):
        raise ValueError(f"{folder / _SAELENS_CFG} must hold a JSON object; got {type(raw_cfg).__name__}")
    cfg = _normalise_cfg(raw_cfg)
    for key in ("d_in", "d_sae"):
        v = cfg.get(key)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{folder / _SAELENS_CFG}: {key} must be a positive integer; got {v!r}")
    arch = cfg.get("architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise ValueError(f"{folder / _SAELENS_CFG}: architecture {arch!r} is not supported; supported: "
                         f"{list(SUPPORTED_ARCHITECTURES)} (SAELens' 'batchtopk' saves as 'jumprelu' for inference)")
    norm = cfg.get("normalize_activations", "none")
    if norm == "covariance_whitening":
        raise ValueError(f"{folder / _SAELENS_CFG}: normalize_activations='covariance_whitening' is not supported: SAELens "
                         f"folds the whitening into the weights when training ends, so this is an unfolded checkpoint; "
                         f"fold it with SAELens (fold_activation_whitening) and save again. Supported: "
                         f"{list(SUPPORTED_NORMALIZATIONS)}")
    if norm not in SUPPORTED_NORMALIZATIONS:
        raise ValueError(f"{folder / _SAELENS_CFG}: normalize_activations={norm!r} is not supported; supported: "
                         f"{list(SUPPORTED_NORMALIZATIONS)}")
    reshape = cfg.get("reshape_activations", "none")
    if reshape not in ("none", None):
        raise ValueError(f"{folder / _SAELENS_CFG}: reshape_activations={reshape!r} is not supported (an attention hook_z "
                         f"SAE, not the residual stream); supported: ['none']")
    return cfg


def _saelens_scaling_factor(folder: Path, norm: str, norm_scaling_factor: float | None) -> float | None:
    """The constant ``s`` of ``normalize_activations = "expected_average_only_in"`` (given, or read from
    ``activation_scaler.json``); None for the other normalisations, which must not be given one."""
    if norm == "expected_average_only_in":
        s = norm_scaling_factor if norm_scaling_factor is not None else _read_scaler(folder)
        if s is None:
            raise ValueError(f"{folder / _SAELENS_CFG}: normalize_activations='expected_average_only_in' means the SAE was "
                             f"trained on activations multiplied by a constant s = sqrt(d_in) / E||x||, which is not in "
                             f"this directory ({_SAELENS_SCALER} absent); pass norm_scaling_factor=s (SAELens' "
                             f"pretrained_saes.yaml lists it as norm_scaling_factor)")
    elif norm_scaling_factor is not None:
        raise ValueError(f"norm_scaling_factor={norm_scaling_factor!r} was given but {folder / _SAELENS_CFG} has "
                         f"normalize_activations={norm!r}; it applies only to 'expected_average_only_in'")
    else:
        s = None
    return s


def _read_saelens_weights(folder: Path, arch: str, d_in: int, d_sae: int) -> dict[str, torch.Tensor]:
    """The tensors of ``sae_weights.safetensors`` an ``arch`` SAE uses (``log_threshold`` as ``threshold``), checked:
    none missing, none unknown, shapes as ``d_in``/``d_sae``, no finetuning scaling factor other than ones."""
    try:
        state = load_file(str(folder / _SAELENS_WEIGHTS), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"{folder / _SAELENS_WEIGHTS} is not a readable safetensors file: {exc}") from exc
    if "threshold" not in state and "log_threshold" in state:
        state["threshold"] = state.pop("log_threshold").double().exp()
    if "scaling_factor" in state:
        sf = state.pop("scaling_factor")
        if not torch.allclose(sf, torch.ones_like(sf)):
            raise ValueError(f"{folder / _SAELENS_WEIGHTS} holds a finetuning 'scaling_factor' that is not all ones; "
                             f"such pre-6.0 SAEs are not supported (supported tensors: W_enc, W_dec, b_enc, b_dec, "
                             f"threshold)")
    required = ["W_enc", "W_dec", "b_enc", "b_dec"] + (["threshold"] if arch == "jumprelu" else [])
    allowed = set(required) | ({"threshold"} if arch == "jumprelu" else set())
    absent = [k for k in required if k not in state]
    if absent:
        raise ValueError(f"{folder / _SAELENS_WEIGHTS} lacks {absent} needed by architecture {arch!r}; it holds "
                         f"{sorted(state)} (a {arch!r} SAE needs {required})")
    unknown = sorted(set(state) - allowed)
    if unknown:
        raise ValueError(f"{folder / _SAELENS_WEIGHTS} holds tensors {unknown} that a {arch!r} SAE does not use "
                         f"(allowed: {sorted(allowed)}); refusing to guess their role")
    _check_shapes(state, d_in, d_sae, str(folder / _SAELENS_WEIGHTS))
    return state


def load_saelens(path: str | os.PathLike, *, dtype: str | torch.dtype | None = None, device: str | torch.device = "cpu",
                 norm_scaling_factor: float | None = None, layer: int | None = None, model: str | None = None,
                 allow_mismatch: bool = False, name: str | None = None) -> ExternalSAE:
    """Load an SAE saved in the SAELens format (a directory with ``cfg.json`` and ``sae_weights.safetensors``).

    Reproduces SAELens 6.x's ``SAE.load_from_disk`` followed by ``encode``/``decode`` for the
    architectures in :data:`SUPPORTED_ARCHITECTURES` and the normalisations in
    :data:`SUPPORTED_NORMALIZATIONS` (module docstring).

    Args:
        path: the SAE's directory.
        dtype: compute dtype; default: the config's ``dtype`` (SAELens' behaviour).
        device: where to keep the weights and compute.
        norm_scaling_factor: the constant ``s`` for ``normalize_activations = "expected_average_only_in"``
            (SAELens' pretrained directory lists it as ``norm_scaling_factor``); default: read from
            ``activation_scaler.json`` in ``path``. Ignored (must be ``None``) for other normalisations.
        layer: the atomsnb residual-stream layer the SAE is to be used at. Checked against the config's
            ``hook_name`` (:func:`residual_layer_of_hook`; :class:`HookMismatchError` if it is another layer or
            not the residual stream); a config without ``hook_name`` takes it as the SAE's layer.
        model: the model the SAE is to be used with (a name); checked against the config's ``model_name``.
        allow_mismatch: accept a ``layer`` / ``model`` the config disagrees with (recorded: the SAE gets
            ``layer`` and ``mismatch_allowed = True``, so splicing accepts it there too). Default ``False``.
        name: row label (default ``"external: <directory name>"``).

    Returns:
        An :class:`ExternalSAE`.

    Raises:
        FileNotFoundError: ``path`` is not a directory, or ``cfg.json`` / ``sae_weights.safetensors`` is missing.
        HookMismatchError: ``layer`` or ``model`` disagrees with the config (and ``allow_mismatch`` is ``False``).
        TransposedLayoutError: ``W_enc`` or ``W_dec`` is stored transposed (``[d_sae, d_in]`` / ``[d_in, d_sae]``).
        ValueError: an unsupported architecture, ``normalize_activations``, ``reshape_activations`` or
            dtype; missing config fields or tensors; unknown tensors; shapes that disagree with ``d_in``/
            ``d_sae``; a missing or invalid scaling factor (also a damaged activation_scaler.json); a non-trivial finetuning scaling factor;
            NaN/inf weights. Each message names the bad value and what is allowed.
    """
    folder = Path(path).expanduser()
    cfg = _read_saelens_cfg(folder)
    d_in, d_sae, arch = cfg["d_in"], cfg["d_sae"], cfg.get("architecture")
    norm = cfg.get("normalize_activations", "none")
    s = _saelens_scaling_factor(folder, norm, norm_scaling_factor)
    state = _read_saelens_weights(folder, arch, d_in, d_sae)
    compute_dtype = _resolve_dtype(dtype, cfg.get("dtype") or "float32")

    hook_name = _cfg_get(cfg, "hook_name")
    t = {k: v.to(device=device, dtype=compute_dtype) for k, v in state.items()}
    sae = ExternalSAE(
        name=name or f"external: {folder.name}", architecture=arch, W_enc=t["W_enc"], b_enc=t["b_enc"],
        W_dec=t["W_dec"], b_dec=t["b_dec"], threshold=t.get("threshold"),
        k=cfg.get("k") if arch == "topk" else None,
        rescale_acts_by_decoder_norm=bool(cfg.get("rescale_acts_by_decoder_norm", False)) if arch == "topk" else False,
        apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)), normalize_activations=norm,
        norm_scaling_factor=s, hook_name=hook_name,
        layer=residual_layer_of_hook(hook_name) if hook_name else layer,
        model_name=_cfg_get(cfg, "model_name"), source=str(folder))
    return _declare_target(sae, layer, model, allow_mismatch)


_SPARSIFY_WEIGHTS = "sae.safetensors"
#: sparsify ``cfg.json`` keys and the values :func:`load_sparsify` can express (None: any value).
_SPARSIFY_CFG = {"activation": ("topk",), "expansion_factor": None, "normalize_decoder": None, "num_latents": None,
                 "k": None, "multi_topk": None, "skip_connection": (False,), "transcode": (False,), "d_in": None}
_SPARSIFY_RESIDUAL_HOOK = re.compile(r"^(?:model\.|gpt_neox\.|transformer\.)?(?:layers|h)\.(\d+)$")


def load_sparsify(path: str | os.PathLike, *, dtype: str | torch.dtype | None = None, device: str | torch.device = "cpu",
                  layer: int | None = None, model: str | None = None, allow_mismatch: bool = False,
                  name: str | None = None) -> ExternalSAE:
    """Load a TopK SAE saved by EleutherAI/sparsify (``SparseCoder.save_to_disk``: ``cfg.json`` + ``sae.safetensors``).

    Reproduces sparsify 1.3.3's ``SparseCoder.load_from_disk`` followed by ``encode``/``decode``
    (``sparse_coder.py``, ``fused_encoder.py``): the codes are the ``k`` largest of
    ``relu((x - b_dec) W_enc^T + b_enc)`` and ``x_hat = f W_dec + b_dec``, an :class:`ExternalSAE` of architecture
    ``"topk"`` (``tests/test_sparsify.py`` checks it against sparsify's own outputs). ``multi_topk`` changes only
    sparsify's training loss and is accepted. The directory's name is sparsify's hook point; ``layers.{i}``
    (also ``model.layers.{i}``, ``gpt_neox.layers.{i}``, ``transformer.h.{i}``) is the residual stream after decoder
    block ``i``, i.e. atomsnb layer ``i + 1``; any other hook point (``layers.3.mlp``, ...) is kept as the SAE's
    ``hook_name`` so that :func:`check_target` refuses it at a residual-stream layer. sparsify's config names no
    model: pass ``model`` only to record it.

    Args:
        path: the hook point's directory.
        dtype: compute dtype; default: that of the stored weights (sparsify's behaviour).
        device: where to keep the weights and compute.
        layer, allow_mismatch, name: as :func:`load_saelens`.
        model: the model the SAE was trained on (recorded as its ``model_name``; sparsify does not store it).

    Returns:
        An :class:`ExternalSAE`.

    Raises:
        FileNotFoundError: ``path`` is not a directory, or ``cfg.json`` / ``sae.safetensors`` is missing.
        HookMismatchError: ``layer`` disagrees with the hook point (and ``allow_mismatch`` is ``False``).
        ValueError: what the loader cannot express: ``activation = "groupmax"``, ``skip_connection`` (a ``W_skip``
            term), ``transcode`` (a transcoder predicts another site's activations), an unknown config key or tensor;
            a missing ``d_in`` or ``k``; shapes that disagree with ``d_in``/``num_latents``; NaN/inf weights; an
            unreadable file. Each message names the bad value and what is allowed.
    """
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"{str(folder)!r} is not a directory (a sparsify SAE is a directory per hook point)")
    for f in (_SAELENS_CFG, _SPARSIFY_WEIGHTS):
        if not (folder / f).is_file():
            raise FileNotFoundError(f"{str(folder / f)!r} is missing: a sparsify SAE directory holds {_SAELENS_CFG} "
                                    f"and {_SPARSIFY_WEIGHTS}")
    try:
        cfg = json.loads((folder / _SAELENS_CFG).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{str(folder / _SAELENS_CFG)!r} is not valid JSON ({exc})") from exc
    if not isinstance(cfg, dict):
        raise ValueError(f"{str(folder / _SAELENS_CFG)!r} must hold a JSON object; got {type(cfg).__name__}")
    unknown = sorted(set(cfg) - set(_SPARSIFY_CFG))
    if unknown:
        raise ValueError(f"sparsify cfg.json in {str(folder)!r} has keys {unknown} this loader does not know (known: "
                         f"{sorted(_SPARSIFY_CFG)}; sparsify 1.3.3 writes those)")
    for key, allowed in _SPARSIFY_CFG.items():
        if allowed is not None and key in cfg and cfg[key] not in allowed:
            raise ValueError(f"sparsify cfg.json in {str(folder)!r}: {key}={cfg[key]!r} cannot be expressed here; "
                             f"allowed: {list(allowed)}")
    for key in ("d_in", "k"):
        v = cfg.get(key)
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"sparsify cfg.json in {str(folder)!r}: {key}={v!r}; need an integer >= 1")
    try:
        state = load_file(str(folder / _SPARSIFY_WEIGHTS), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"{str(folder / _SPARSIFY_WEIGHTS)!r} could not be read as safetensors ({exc})") from exc
    want = {"encoder.weight", "encoder.bias", "W_dec", "b_dec"}
    if set(state) != want:
        raise ValueError(f"{str(folder / _SPARSIFY_WEIGHTS)!r} holds tensors {sorted(state)}; a sparsify TopK SAE "
                         f"this loader can express holds exactly {sorted(want)}")
    d_in = cfg["d_in"]
    d_sae = int(state["encoder.weight"].shape[0]) if state["encoder.weight"].ndim == 2 else -1
    n_cfg = cfg.get("num_latents") or d_in * cfg.get("expansion_factor", 32)
    if d_sae != n_cfg:
        raise ValueError(f"encoder.weight in {str(folder)!r} has shape {tuple(state['encoder.weight'].shape)}; cfg.json "
                         f"gives [num_latents={n_cfg}, d_in={d_in}]")
    weights = {"W_enc": state["encoder.weight"].T, "b_enc": state["encoder.bias"], "W_dec": state["W_dec"],
               "b_dec": state["b_dec"]}
    _check_shapes(weights, d_in, d_sae, str(folder))
    compute_dtype = _resolve_dtype(dtype, str(state["W_dec"].dtype).removeprefix("torch."))
    m = _SPARSIFY_RESIDUAL_HOOK.match(folder.name)
    hook_name = f"blocks.{m.group(1)}.hook_resid_post" if m else (folder.name if "." in folder.name else None)
    t = {k: v.to(device=device, dtype=compute_dtype).contiguous() for k, v in weights.items()}
    sae = ExternalSAE(name=name or f"external: {folder.name}", architecture="topk", W_enc=t["W_enc"], b_enc=t["b_enc"],
                      W_dec=t["W_dec"], b_dec=t["b_dec"], k=cfg["k"], apply_b_dec_to_input=True,
                      hook_name=hook_name, layer=residual_layer_of_hook(hook_name) if hook_name else layer,
                      model_name=model, source=str(folder))
    return _declare_target(sae, layer, model, allow_mismatch)


def load_gemma_scope(path: str | os.PathLike, *, dtype: str | torch.dtype | None = None,
                     device: str | torch.device = "cpu", layer: int | None = None, model: str | None = None,
                     allow_mismatch: bool = False, name: str | None = None) -> ExternalSAE:
    """Load a Gemma Scope SAE from its native ``params.npz`` (a JumpReLU SAE, no normalisation).

    The keys are ``W_enc [d_in, d_sae]``, ``W_dec [d_sae, d_in]``, ``b_enc``, ``b_dec``,
    ``threshold`` (SAELens' ``gemma_2`` conversion also accepts a lower-case ``w_`` prefix, and so does
    this). The hub lays them out as ``<repo>/layer_<i>/width_<w>/average_l0_<n>/params.npz``; for a
    residual-stream repository (``gemma-scope-*-res``) ``layer_<i>`` is hook
    ``blocks.<i>.hook_resid_post``, i.e. atomsnb layer ``i + 1``; for ``-mlp`` / ``-att`` / ``-transcoders``
    repositories it is ``blocks.<i>.hook_mlp_out`` / ``blocks.<i>.attn.hook_z`` / ``blocks.<i>.ln2.hook_normalized``
    (SAELens' ``pretrained_saes.yaml``), which are not the residual stream. The model is read from the repository
    name: ``gemma-scope-2b-pt-*`` -> ``gemma-2-2b``, ``gemma-scope-9b-it-*`` -> ``gemma-2-9b-it``.

    Args:
        path: the ``params.npz`` file or the directory holding it.
        dtype: compute dtype (default float32, as SAELens loads Gemma Scope).
        device: where to keep the weights and compute.
        layer: the atomsnb residual-stream layer the SAE is to be used at: checked against the hook derived from
            the path (:class:`HookMismatchError` if it disagrees); taken as the SAE's layer when the path says nothing.
        model: the model it is to be used with (a name), checked against the one derived from the path.
        allow_mismatch: accept a ``layer`` / ``model`` that disagrees (as :func:`load_saelens`).
        name: row label (default ``"Gemma Scope <layer_i/width_w/average_l0_n>"``).

    Returns:
        An :class:`ExternalSAE` with ``architecture = "jumprelu"``, ``apply_b_dec_to_input = False``.

    Raises:
        FileNotFoundError: no ``params.npz`` at ``path``.
        HookMismatchError: ``layer`` or ``model`` disagrees with the path (and ``allow_mismatch`` is ``False``).
        TransposedLayoutError: ``W_enc``/``W_dec`` stored transposed.
        ValueError: missing or unknown arrays, inconsistent shapes, an embedding SAE (which SAELens rescales
            by ``sqrt(d_in)``; not supported), a file numpy cannot read without pickle, a damaged or truncated archive.
    """
    p = Path(path).expanduser()
    file = p / _GEMMA_SCOPE_FILE if p.is_dir() else p
    if not file.is_file():
        raise FileNotFoundError(f"no Gemma Scope {_GEMMA_SCOPE_FILE} at {str(p)!r}; pass the file or the directory "
                                f"holding it (hub layout: layer_<i>/width_<w>/average_l0_<n>/{_GEMMA_SCOPE_FILE})")
    parts = file.parent.as_posix()
    if re.search(r"(^|/)embedding(/|$)", parts):
        raise ValueError(f"{str(file)!r} is a Gemma Scope embedding SAE, which SAELens rescales by sqrt(d_in) on load; "
                         f"not supported here (supported: the residual-stream SAEs layer_<i>/...)")
    try:
        with np.load(file, allow_pickle=False) as data:
            arrays = {("W_" + k[2:] if k.startswith("w_") else k): np.asarray(data[k]) for k in data.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, AttributeError, TypeError) as exc:  # .npy: no .files
        raise ValueError(f"{str(file)!r} is not a numpy .npz archive readable without pickle ({type(exc).__name__}: "
                         f"{exc}); the download may be incomplete or damaged: download {_GEMMA_SCOPE_FILE} again") from exc
    required = ["W_enc", "W_dec", "b_enc", "b_dec", "threshold"]
    absent = [k for k in required if k not in arrays]
    unknown = sorted(set(arrays) - set(required))
    if absent or unknown:
        raise ValueError(f"{str(file)!r} holds {sorted(arrays)}; a Gemma Scope SAE has exactly {required} "
                         f"(missing: {absent}, unexpected: {unknown})")
    for key, ndim, layout in (("W_enc", 2, "[d_in, d_sae]"), ("W_dec", 2, "[d_sae, d_in]"), ("b_enc", 1, "[d_sae]"),
                              ("b_dec", 1, "[d_in]"), ("threshold", 1, "[d_sae]")):
        if arrays[key].ndim != ndim:
            raise ValueError(f"{key} in {str(file)!r} must be {'a matrix' if ndim == 2 else 'a vector'} {layout}; got "
                             f"shape {arrays[key].shape}")
    d_in, d_sae = _majority_sizes(arrays)
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}
    _check_shapes(state, d_in, d_sae, str(file))
    m = re.search(r"(?:^|/)layer_(\d+)(?:/|$)", parts)
    kind = re.search(r"gemma-scope-[^/]*-(res|mlp|att|transcoders?)(?:/|-|$)", parts)
    hooks = {"res": "hook_resid_post", "mlp": "hook_mlp_out", "att": "attn.hook_z", "transcoder": "ln2.hook_normalized",
             "transcoders": "ln2.hook_normalized"}
    hook_name = f"blocks.{m.group(1)}.{hooks[kind.group(1) if kind else 'res']}" if m else None
    repo = re.search(r"gemma-scope-(2b|9b|27b)-(pt|it)-", parts)
    model_name = f"gemma-2-{repo.group(1)}{'-it' if repo.group(2) == 'it' else ''}" if repo else None
    compute_dtype = _resolve_dtype(dtype, "float32")
    t = {k: v.to(device=device, dtype=compute_dtype) for k, v in state.items()}
    label = "/".join(file.parent.parts[-3:]) if m else file.parent.name
    sae = ExternalSAE(
        name=name or f"Gemma Scope {label}", architecture="jumprelu", W_enc=t["W_enc"], b_enc=t["b_enc"],
        W_dec=t["W_dec"], b_dec=t["b_dec"], threshold=t["threshold"], apply_b_dec_to_input=False,
        normalize_activations="none", hook_name=hook_name,
        layer=residual_layer_of_hook(hook_name) if hook_name else layer, model_name=model_name, source=str(file))
    return _declare_target(sae, layer, model, allow_mismatch)


def load_external_sae(source: str | os.PathLike, *, dtype: str | torch.dtype | None = None,
                      device: str | torch.device = "cpu", layer: int | None = None, name: str | None = None,
                      norm_scaling_factor: float | None = None, cache_dir: str | os.PathLike | None = None,
                      model: str | None = None, allow_mismatch: bool = False) -> ExternalSAE:
    """Load an external SAE from a local directory / file or from the Hugging Face hub.

    Local: a SAELens directory (``cfg.json`` + ``sae_weights.safetensors``, :func:`load_saelens`), a sparsify
    directory (``cfg.json`` + ``sae.safetensors``, :func:`load_sparsify`) or a
    Gemma Scope ``params.npz`` / its directory (:func:`load_gemma_scope`). Hub: ``"<owner>/<repo>/<folder>"``,
    e.g. ``"google/gemma-scope-2b-pt-res/layer_12/width_16k/average_l0_82"``; the folder's files are
    downloaded with ``huggingface_hub.snapshot_download`` (needs the hub; a gated repository also needs its
    licence accepted and ``HF_TOKEN``) and then read as above.

    Args:
        source: local path or hub spec.
        dtype, device, layer, model, allow_mismatch, name: as :func:`load_saelens` / :func:`load_gemma_scope`
            (``layer`` and ``model`` are checked against the SAE's own hook point and model).
        norm_scaling_factor: as :func:`load_saelens` (SAELens directories only).
        cache_dir: the hub download cache (default: huggingface_hub's).

    Returns:
        An :class:`ExternalSAE`.

    Raises:
        FileNotFoundError: a local path that holds neither format, or a hub spec that could not be
            downloaded (offline, unknown repository or folder); the message says how to download by hand.
        HookMismatchError: ``layer`` or ``model`` disagrees with the SAE's own (and ``allow_mismatch`` is ``False``).
        ValueError: as the format's loader.
    """
    p = Path(source).expanduser()
    if p.exists():
        if p.is_dir() and (p / _SAELENS_CFG).is_file() and (p / _SPARSIFY_WEIGHTS).is_file() \
                and not (p / _SAELENS_WEIGHTS).is_file():
            if norm_scaling_factor is not None:
                raise ValueError(f"norm_scaling_factor={norm_scaling_factor!r} does not apply to a sparsify SAE "
                                 f"(no normalisation)")
            return load_sparsify(p, dtype=dtype, device=device, layer=layer, model=model,
                                 allow_mismatch=allow_mismatch, name=name)
        if p.is_dir() and (p / _SAELENS_CFG).is_file():
            return load_saelens(p, dtype=dtype, device=device, norm_scaling_factor=norm_scaling_factor, layer=layer,
                                model=model, allow_mismatch=allow_mismatch, name=name)
        if (p.is_dir() and (p / _GEMMA_SCOPE_FILE).is_file()) or (p.is_file() and p.suffix == ".npz"):
            if norm_scaling_factor is not None:
                raise ValueError(f"norm_scaling_factor={norm_scaling_factor!r} does not apply to a Gemma Scope "
                                 f"params.npz (no normalisation)")
            return load_gemma_scope(p, dtype=dtype, device=device, layer=layer, model=model,
                                    allow_mismatch=allow_mismatch, name=name)
        raise FileNotFoundError(f"{str(p)!r} holds neither a SAELens SAE ({_SAELENS_CFG} + {_SAELENS_WEIGHTS}) nor a "
                                f"Gemma Scope {_GEMMA_SCOPE_FILE}")
    spec = str(source).strip("/")
    parts = spec.split("/")
    if len(parts) < 3 or os.path.isabs(str(source)) or str(source).startswith("."):
        raise FileNotFoundError(f"{str(source)!r} is not a local SAE directory or file, nor a hub spec "
                                f"'<owner>/<repo>/<folder>' such as 'google/gemma-scope-2b-pt-res/layer_12/width_16k/"
                                f"average_l0_82'")
    repo_id, folder = "/".join(parts[:2]), "/".join(parts[2:])
    try:
        # huggingface_hub: only when the hub is asked
        from huggingface_hub import snapshot_download

        root = snapshot_download(repo_id=repo_id, allow_patterns=[f"{folder}/*"], cache_dir=cache_dir)
    except Exception as exc:  # offline, unknown repo, gated: all end the same way for the user
        raise FileNotFoundError(
            f"could not download {folder!r} from the hub repository {repo_id!r} ({type(exc).__name__}: {exc}). Where the "
            f"hub is reachable, run: huggingface-cli download {repo_id} --include '{folder}/*' --local-dir DIR and pass "
            f"DIR/{folder} instead") from exc
    local = Path(root) / folder
    if not local.exists():
        raise FileNotFoundError(f"the hub repository {repo_id!r} has no folder {folder!r} (downloaded nothing)")
    return load_external_sae(local, dtype=dtype, device=device, layer=layer, name=name,
                             norm_scaling_factor=norm_scaling_factor, model=model, allow_mismatch=allow_mismatch)
