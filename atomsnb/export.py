"""Our unit sets as SAELens SAEs, and downloadable bundles with a model card.

:func:`export_saelens` writes a trained unit set (:class:`~atomsnb.units.SAEUnits`: a whitened JumpReLU TSAE, a
ReLU + L1 SAE in raw or whitened coordinates, the constructed TSAE) as a directory that SAELens 6
(``sae_lens`` 6.54.12, ``SAE.load_from_disk``) loads: ``cfg.json`` and ``sae_weights.safetensors``, as SAELens'
``SAE.save_model`` writes them. :func:`zip_export` zips such a directory with a model card (``model_card.json`` and
``README.md``) for a chapter's download link.

**Folding.** Our SAE reads ``x = A m / c`` (``A`` the AIP whitening ``W``, ``W^T W = S``, or the identity for a raw
SAE; ``c`` the ``input_scale``) and computes ``f = sigma(E x + b_e)`` (``E`` the ``[N, H]`` encoder, ``sigma`` a
JumpReLU at ``tau`` or a ReLU) and ``x_hat = D~ f + b_d``; in raw coordinates (:class:`~atomsnb.units.SAEUnits`)
``codes = c f`` and ``m_hat = c A^{-1} (D~ f + b_d)``. SAELens computes, with ``apply_b_dec_to_input = False`` and
``normalize_activations = "none"`` (``sae_lens/saes/sae.py`` ``process_sae_in``, ``jumprelu_sae.py``,
``standard_sae.py``)::

    pre = m @ W_enc + b_enc;   acts = relu(pre) * (pre > threshold)  (or relu(pre));   out = acts @ W_dec + b_dec

Since ``c > 0``, ``c f = sigma_{c tau}(c (E A m / c + b_e)) = sigma_{c tau}(m (E A)^T + c b_e)``, so the exported SAE
with ::

    W_enc = (E A)^T  [H, N]      b_enc = c b_e      threshold = c tau
    W_dec = (A^{-1} D~)^T  [N, H]      b_dec = c A^{-1} b_d

takes raw residual-stream activations ``m`` and gives SAELens' ``encode(m) = codes(m)`` (the same latents fire) and
``decode(encode(m)) = reconstruct(m)`` exactly in real arithmetic; on disk the weights are rounded once to the
exported dtype. ``A`` and ``A^{-1}`` are the AIP's own maps (:meth:`~atomsnb.aip.AIP.whiten` and
:meth:`~atomsnb.aip.AIP.unwhiten` of the identity), folded in float64. ``apply_b_dec_to_input = False`` (the
setting SAELens uses for Gemma Scope) keeps ``b_enc`` free of a ``b_dec @ W_enc`` term; the result is the same SAE.

**Hook.** atomsnb's layer ``l`` is the residual stream after block ``l`` (:mod:`atomsnb.activations`), TransformerLens'
``blocks.{l-1}.hook_resid_post``; layer ``0`` (the input to the first block) is ``blocks.0.hook_resid_pre``
(:func:`saelens_hook_name`; :func:`atomsnb.external.residual_layer_of_hook` is its inverse). SAELens 6 keeps
``hook_name`` and ``model_name`` in the config's ``metadata``.

**Architectures** (:data:`ARCHITECTURES`): our ``"jumprelu"`` is SAELens' ``"jumprelu"``, our ``"relu"`` SAELens'
``"standard"``, our ``"topk"`` SAELens' ``"topk"`` (``k``, ``rescale_acts_by_decoder_norm = False``) and our
``"batchtopk"`` at inference SAELens' ``"jumprelu"`` with every threshold ``c theta`` (SAELens also saves its own
BatchTopK SAEs as JumpReLU). A TopK kind's encoder reads ``x - b_d``; with ``apply_b_dec_to_input = False`` that term
is folded into the encoder bias, ``b_enc = c (b_e - E b_d)``. SAELens' TopK takes the top ``k`` of ``pre`` and then
the ReLU, ours the top ``k`` of ``relu(pre)``: the same codes (they differ only in which zero codes are "selected"),
and top-k selection commutes with the scaling by ``c > 0``. A new kind is exported by adding one
:class:`SAELensArchitecture` entry; anything else is refused before anything is written.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import tempfile
import zipfile
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any, Callable, Mapping

import pandas as pd
import torch
from safetensors.torch import save_file

from . import __version__
from .external import residual_layer_of_hook
from .io import atomic_write
from .sae import SparseAutoencoder
from .units import SAEUnits

__all__ = ["export_results", "SAELENS_VERSION", "EXPORT_DTYPES", "ARCHITECTURES", "SAELensArchitecture", "saelens_hook_name",
           "saelens_weights", "export_saelens", "zip_export", "MODEL_CARD_JSON", "MODEL_CARD_README"]

#: The SAELens release whose format :func:`export_saelens` writes (its ``metadata.sae_lens_version``) and against
#: which ``make test-compat`` checks it (``tools/saelens.lock``).
SAELENS_VERSION = "6.54.12"
#: Weight dtypes an export can be written in (SAELens' ``cfg.dtype``; it computes in that dtype).
EXPORT_DTYPES = ("float32", "float64")
_CFG, _WEIGHTS = "cfg.json", "sae_weights.safetensors"
#: Model card files :func:`zip_export` adds beside the SAELens files.
MODEL_CARD_JSON, MODEL_CARD_README = "model_card.json", "README.md"
_OWN_FILES = (_CFG, _WEIGHTS, MODEL_CARD_JSON, MODEL_CARD_README)
_TORCH_DTYPES = {"float32": torch.float32, "float64": torch.float64}
_RESERVED_METADATA = ("sae_lens_version", "sae_lens_training_version", "model_name", "hook_name", "hook_head_index",
                      "atomsnb")


@dataclass(frozen=True)
class SAELensArchitecture:
    """How one kind of our SAEs is written in SAELens' format (an entry of :data:`ARCHITECTURES`)."""

    saelens: str
    """SAELens' ``architecture`` (the ``cfg.json`` field that picks the SAE class)."""
    extra_tensors: Callable[[SparseAutoencoder, float], dict[str, torch.Tensor]]
    """``(sae, input_scale) -> {name: float64 tensor}``: tensors beyond ``W_enc, b_enc, W_dec, b_dec``, already in raw
    coordinates (the JumpReLU threshold ``c tau``), or one that replaces the default fold (TopK's ``b_enc``)."""
    extra_cfg: Callable[[SparseAutoencoder], dict[str, Any]]
    """``sae -> {field: value}``: ``cfg.json`` fields of that SAELens config class beyond the base ``SAEConfig``."""


def _jumprelu_tensors(sae: SparseAutoencoder, scale: float) -> dict[str, torch.Tensor]:
    # sae.threshold is the tau our forward compares with (exp of the float32 log threshold, in the weight dtype).
    return {"threshold": scale * sae.threshold.detach().to(torch.float64)}


def _no_tensors(sae: SparseAutoencoder, scale: float) -> dict[str, torch.Tensor]:
    return {}


def _no_cfg(sae: SparseAutoencoder) -> dict[str, Any]:
    return {}


def _centred_bias(sae: SparseAutoencoder, scale: float) -> torch.Tensor:
    """TopK kinds encode ``x - b_d``: ``c (b_e - E b_d)`` ``[N]`` float64, the encoder bias of raw ``m`` with
    ``apply_b_dec_to_input = False``."""
    E = sae.encoder_weight.detach().to(torch.float64)
    return scale * (sae.b_enc.detach().to(torch.float64) - E @ sae.b_dec.detach().to(torch.float64))


def _topk_tensors(sae: SparseAutoencoder, scale: float) -> dict[str, torch.Tensor]:
    return {"b_enc": _centred_bias(sae, scale)}


def _batchtopk_tensors(sae: SparseAutoencoder, scale: float) -> dict[str, torch.Tensor]:
    # inference: relu(pi) > theta with theta > 0 is pi > theta, a JumpReLU with every threshold theta
    theta = sae.threshold.detach().to(torch.float64)
    return {"b_enc": _centred_bias(sae, scale), "threshold": scale * theta}


#: Our SAE kinds (``SparseAutoencoder.kind``) -> their SAELens architecture (module docstring).
ARCHITECTURES: dict[str, SAELensArchitecture] = {
    "jumprelu": SAELensArchitecture("jumprelu", _jumprelu_tensors, _no_cfg),
    "relu": SAELensArchitecture("standard", _no_tensors, _no_cfg),
    "topk": SAELensArchitecture("topk", _topk_tensors, lambda sae: {"k": sae.k, "rescale_acts_by_decoder_norm": False}),
    "batchtopk": SAELensArchitecture("jumprelu", _batchtopk_tensors, _no_cfg),
}


def saelens_hook_name(layer: int) -> str:
    """TransformerLens / SAELens hook name of atomsnb's residual-stream layer ``layer``.

    ``layer >= 1`` (after block ``layer``) -> ``blocks.{layer-1}.hook_resid_post``; ``0`` (the embeddings, the input to
    block 0) -> ``blocks.0.hook_resid_pre``. The inverse of :func:`atomsnb.external.residual_layer_of_hook`.

    Raises:
        ValueError: ``layer`` is not an integer ``>= 0`` (the message names it).
    """
    if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
        raise ValueError(f"layer must be an atomsnb residual-stream layer, an integer >= 0 (0 = embeddings, l = after "
                         f"block l); got {layer!r}")
    return "blocks.0.hook_resid_pre" if layer == 0 else f"blocks.{layer - 1}.hook_resid_post"


def _check_units(units) -> SparseAutoencoder:
    if not isinstance(units, SAEUnits):
        hint = ""
        if type(units).__name__ == "Neurons":
            hint = " (the neurons are the identity dictionary: there is no SAE to export)"
        elif type(units).__name__ == "ExternalSAE":
            hint = " (an external SAE already has its own published files)"
        raise TypeError(f"export_saelens writes an atomsnb.units.SAEUnits (a trained or constructed SparseAutoencoder); "
                        f"got {type(units).__name__}{hint}")
    sae = units.sae
    if sae.kind not in ARCHITECTURES:
        raise ValueError(f"{units.name!r}: SAE kind {sae.kind!r} has no SAELens export; exportable kinds: "
                         f"{sorted(ARCHITECTURES)} (add an entry to atomsnb.export.ARCHITECTURES for a new kind)")
    c = sae.input_scale
    if not (math.isfinite(c) and c > 0):
        raise ValueError(f"{units.name!r}: input_scale must be a finite number > 0 to fold into the weights; got {c!r}")
    if sae.whitened and units.aip.rank != sae.d_in:
        raise ValueError(f"{units.name!r}: the AIP has rank {units.aip.rank} < d_model={sae.d_in} (pinv=True on a "
                         f"rank-deficient second moment); its whitening is not invertible, so the SAE cannot be "
                         f"written in raw coordinates. Export SAEs trained with a full-rank AIP")
    return sae


def _check_metadata(metadata) -> dict:
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping) or not all(isinstance(k, str) for k in metadata):
        raise ValueError(f"metadata must be a mapping of str keys to JSON values; got {metadata!r}")
    taken = sorted(set(metadata) & set(_RESERVED_METADATA))
    if taken:
        raise ValueError(f"metadata keys {taken} are set by export_saelens (reserved: {list(_RESERVED_METADATA)}); "
                         f"pass them as arguments (layer, model_name) instead")
    try:
        return json.loads(json.dumps(dict(metadata), allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"metadata must be JSON-serialisable with finite numbers: {exc}") from exc


def _check_destination(path, overwrite) -> Path:
    if not isinstance(overwrite, bool):
        raise ValueError(f"overwrite must be True or False; got {overwrite!r}")
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise ValueError(f"path must be a directory path (str or PathLike); got {path!r}")
    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        raise FileExistsError(f"{str(folder)!r} exists and is not a directory; export_saelens writes a directory")
    if folder.is_dir():
        present = sorted(p.name for p in folder.iterdir())
        if present and not overwrite:
            raise FileExistsError(f"{str(folder)!r} is not empty (holds {present}); pass overwrite=True to replace an "
                                  f"earlier export, or choose an empty or new directory")
        foreign = [p for p in present if p not in _OWN_FILES]
        if foreign:
            raise FileExistsError(f"{str(folder)!r} holds files an export does not write ({foreign}); overwrite=True "
                                  f"replaces only an earlier export ({list(_OWN_FILES)}), so choose another directory")
    return folder


def _identity_maps(units: SAEUnits) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, A^{-1})`` as ``[H, H]`` float64 row maps: inputs ``x = m @ A`` (before ``/ c``), raw ``m = y @ A^{-1}``."""
    H = units.sae.d_in
    eye = torch.eye(H, dtype=torch.float64)
    if not units.sae.whitened:
        return eye, eye
    return units.aip.whiten(eye), units.aip.unwhiten(eye)


def saelens_weights(units: SAEUnits) -> dict[str, torch.Tensor]:
    """The SAELens tensors of a unit set in raw coordinates, float64 (module docstring: Folding).

    Returns:
        ``W_enc [H, N]``, ``b_enc [N]``, ``W_dec [N, H]``, ``b_dec [H]`` and the architecture's extra tensors
        (``threshold [N]`` for JumpReLU).

    Raises:
        TypeError, ValueError: as :func:`export_saelens` for a unit set it cannot express.
    """
    sae = _check_units(units)
    c = float(sae.input_scale)
    A, A_inv = _identity_maps(units)
    with torch.no_grad():
        E = sae.encoder_weight.detach().to(torch.float64)  # [N, H]
        out = {"W_enc": A @ E.T, "b_enc": c * sae.b_enc.detach().to(torch.float64),
               "W_dec": sae.W_dec.detach().to(torch.float64).T @ A_inv,
               "b_dec": c * (sae.b_dec.detach().to(torch.float64) @ A_inv)}
        out.update(ARCHITECTURES[sae.kind].extra_tensors(sae, c))
    bad = [k for k, t in out.items() if not bool(torch.isfinite(t).all())]
    if bad:
        raise ValueError(f"{units.name!r}: the folded SAELens tensors {bad} hold NaN or inf (non-finite weights or an "
                         f"AIP that cannot be inverted); nothing was written")
    return out


def export_saelens(units: SAEUnits, path: str | os.PathLike, *, layer: int, model_name: str,
                   dtype: str = "float32", metadata: Mapping[str, Any] | None = None,
                   overwrite: bool = False) -> Path:
    """Write a unit set as a SAELens 6 SAE directory that reads raw residual-stream activations.

    The files are those of SAELens' ``SAE.save_model`` (``cfg.json``, ``sae_weights.safetensors``) for SAELens
    6.54.12 (:data:`SAELENS_VERSION`), with the AIP whitening and the input scale folded into the weights (module
    docstring), so ``SAE.load_from_disk(path)`` gives ``encode(m) = units.codes(m)`` and
    ``decode(encode(m)) = units.reconstruct(m)`` up to the exported dtype's round-off. Paper §6 (the TSAE), SPEC §6.

    Args:
        units: the unit set, an :class:`~atomsnb.units.SAEUnits` of an SAE kind in :data:`ARCHITECTURES`.
        path: the directory to write (created; it must be new or empty unless ``overwrite``).
        layer: atomsnb residual-stream layer the SAE reads (``cfg.metadata.hook_name``, :func:`saelens_hook_name`).
        model_name: the model it was trained on (``cfg.metadata.model_name``), e.g. ``"HuggingFaceTB/SmolLM2-135M"``.
        dtype: weight dtype, one of :data:`EXPORT_DTYPES` (``"float32"``, SAELens' default).
        metadata: further JSON fields for ``cfg.metadata`` (SAELens reads e.g. ``context_size``, ``prepend_bos``,
            ``dataset_path``); may not set the reserved keys ``sae_lens_version``, ``model_name``, ``hook_name``, ...
        overwrite: replace an earlier export in ``path`` (only the files an export writes may be there).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        TypeError: ``units`` is not an :class:`~atomsnb.units.SAEUnits` (the neurons, an external SAE).
        ValueError: an SAE kind with no SAELens architecture, a rank-deficient AIP, a bad ``layer``, ``model_name``,
            ``dtype``, ``metadata`` or ``overwrite``, or non-finite folded weights.
        FileExistsError: ``path`` is a file, a non-empty directory without ``overwrite=True``, or holds other files.

    Every check runs before anything is written; the files are written to a temporary directory beside ``path`` and
    moved into place together.
    """
    sae = _check_units(units)
    hook_name = saelens_hook_name(layer)
    if not isinstance(model_name, str) or not model_name.strip():
        raise ValueError(f"model_name must be a non-empty string naming the model the SAE reads; got {model_name!r}")
    if dtype not in EXPORT_DTYPES:
        raise ValueError(f"dtype must be one of {EXPORT_DTYPES}; got {dtype!r}")
    extra = _check_metadata(metadata)
    folder = _check_destination(path, overwrite)
    arch = ARCHITECTURES[sae.kind]
    tensors = {k: v.to(_TORCH_DTYPES[dtype]).contiguous() for k, v in saelens_weights(units).items()}
    cfg = {"d_in": sae.d_in, "d_sae": sae.n_latents, "dtype": dtype, "device": "cpu", "apply_b_dec_to_input": False,
           "normalize_activations": "none", "reshape_activations": "none", **arch.extra_cfg(sae),
           "metadata": {"sae_lens_version": SAELENS_VERSION, "sae_lens_training_version": None,
                        "model_name": model_name, "hook_name": hook_name, "hook_head_index": None, **extra,
                        "atomsnb": {"version": __version__, "unit_set": units.name, "family": units.family,
                                    "kind": sae.kind, "whitened": sae.whitened, "input_scale": sae.input_scale,
                                    "layer": layer}},
           "architecture": arch.saelens}
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        save_file(tensors, str(tmp / _WEIGHTS))
        (tmp / _CFG).write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
        if folder.is_dir():  # empty, or an earlier export (checked above)
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return folder


# ---------------------------------------------------------------------------------------------------------------------
# Downloads: an export and its model card in one zip
# ---------------------------------------------------------------------------------------------------------------------
def _git_commit() -> str | None:
    """The commit of the source tree this package is imported from, or None (no git, not a checkout of atomsnb)."""
    root = Path(__file__).resolve().parent.parent
    if not (root / "pyproject.toml").is_file():
        return None
    try:
        top = subprocess.run(["git", "-C", str(root), "rev-parse", "--show-toplevel", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=True).stdout.split()
    except (OSError, subprocess.SubprocessError):
        return None
    if len(top) != 2 or Path(top[0]).resolve() != root or not re.fullmatch(r"[0-9a-f]{40}", top[1]):
        return None  # a git repository around an installed copy, not this source tree
    return top[1]


def _looks_like_path(s: str) -> bool:
    return os.path.isabs(s) or s.startswith("~") or bool(re.match(r"^[A-Za-z]:[\\/]", s))


def _check_numbers(name: str, values) -> dict[str, float]:
    if not isinstance(values, Mapping) or not values:
        raise ValueError(f"{name} must be a non-empty mapping of names to numbers; got {values!r}")
    out = {}
    for k, v in values.items():
        if not isinstance(k, str) or not k:
            raise ValueError(f"{name}: keys must be non-empty strings; got {k!r}")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{name}[{k!r}] must be a finite number; got {v!r}")
        out[k] = float(v)
    return out


def _check_count(name: str, v) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ValueError(f"{name} must be an integer >= 1; got {v!r}")
    return v


def _readme(card: dict, folder: str) -> str:
    rows = [("model", card["model"]), ("hook", f"`{card['hook_name']}` (atomsnb layer {card['layer']})"),
            ("unit set", card["unit_set"]), ("SAELens architecture", card["architecture"]),
            ("d_in x d_sae", f"{card['d_in']} x {card['d_sae']}"), ("corpus", card["corpus"]),
            ("training tokens", f"{card['n_tokens']:,}"), ("training steps", f"{card['n_steps']:,}")]
    rows += [(f"coefficient `{k}`", f"{v:g}") for k, v in card["coefficients"].items()]
    rows += [(f"held-out `{k}`", f"{v:.6g}") for k, v in card["metrics"].items()]
    rows += [("atomsnb", card["atomsnb_version"]), ("git commit", card["git_commit"] or "unknown")]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    return (f"# {card['unit_set']}: {card['model']}, layer {card['layer']}\n\n"
            f"A sparse autoencoder trained with atomsnb (\"Towards Atoms of Large Language Models\"), saved in "
            f"SAELens {card['format']['sae_lens_version']} format. Any AIP whitening and input scaling are folded "
            f"into the weights: it reads raw residual-stream activations, like other SAELens SAEs.\n\n"
            f"| field | value |\n|---|---|\n{table}\n\n"
            f"Load it with SAELens:\n\n```python\nfrom sae_lens import SAE\nsae = SAE.load_from_disk(\"{folder}\")\n"
            f"codes = sae.encode(acts)        # acts: [n_tokens, {card['d_in']}] residual stream at {card['hook_name']}\n"
            f"recon = sae.decode(codes)\n```\n\nor with atomsnb:\n\n```python\nfrom atomsnb.external import "
            f"load_saelens\nunits = load_saelens(\"{folder}\")\n```\n\n"
            f"The numbers above are in {MODEL_CARD_JSON}, with the SHA-256 of each file.\n")


def zip_export(export_dir: str | os.PathLike, zip_path: str | os.PathLike, *, corpus: str, n_tokens: int,
               n_steps: int, coefficients: Mapping[str, float], metrics: Mapping[str, float],
               overwrite: bool = False) -> Path:
    """Zip a directory written by :func:`export_saelens` with a model card, for a chapter's download link.

    The zip holds one folder (named after ``export_dir``) with ``cfg.json``, ``sae_weights.safetensors``,
    ``model_card.json`` and ``README.md``. The card gives the model, hook and layer, architecture and sizes (read
    from ``cfg.json``), the arguments below, the atomsnb version and the git commit of the source tree (``None``
    outside a git checkout), and the SHA-256 of the two SAELens files; it holds no absolute path. The zip is
    byte-for-byte reproducible (sorted entries, fixed timestamps) and written atomically.

    Args:
        export_dir: a directory written by :func:`export_saelens`.
        zip_path: the ``.zip`` file to write.
        corpus: the training corpus by name (e.g. ``"wikitext-103 (train)"``); not a filesystem path.
        n_tokens: training tokens, ``>= 1``.
        n_steps: training steps, ``>= 1``.
        coefficients: the sparsity coefficients, e.g. ``{"l0_coefficient": 0.003}``.
        metrics: held-out metrics, e.g. ``{"r2_aip": 0.91, "explained_variance": 0.88, "l0": 31.5, "q_star": 0.7}``.
        overwrite: replace an existing ``zip_path``.

    Returns:
        ``zip_path`` as a :class:`~pathlib.Path`.

    Raises:
        FileNotFoundError: ``export_dir`` lacks ``cfg.json`` or ``sae_weights.safetensors``.
        FileExistsError: ``zip_path`` exists and ``overwrite`` is False.
        ValueError: a damaged ``cfg.json``, an export not written by :func:`export_saelens` (no
            ``metadata.atomsnb``), a ``zip_path`` not ending in ``.zip``, a ``corpus`` that is empty or an absolute
            path, counts below 1, or coefficients or metrics that are not finite numbers. Nothing is written then.
    """
    folder = Path(export_dir).expanduser()
    missing = [f for f in (_CFG, _WEIGHTS) if not (folder / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{str(folder)!r} lacks {missing}: pass a directory written by export_saelens")
    try:
        cfg = json.loads((folder / _CFG).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{str(folder / _CFG)!r} is not valid UTF-8 JSON ({exc}); export the SAE again") from exc
    meta = (cfg.get("metadata") if isinstance(cfg, dict) else None) or {}
    own = meta.get("atomsnb")
    if not isinstance(own, dict):
        raise ValueError(f"{str(folder / _CFG)!r} has no metadata.atomsnb: zip_export packs exports written by "
                         f"atomsnb.export.export_saelens, whose card it can fill in")
    out = Path(zip_path).expanduser()
    if out.suffix != ".zip":
        raise ValueError(f"zip_path must end in .zip; got {os.fspath(zip_path)!r}")
    if not isinstance(overwrite, bool):
        raise ValueError(f"overwrite must be True or False; got {overwrite!r}")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{str(out)!r} exists; pass overwrite=True to replace it")
    if not isinstance(corpus, str) or not corpus.strip() or _looks_like_path(corpus):
        raise ValueError(f"corpus must name the training corpus (a non-empty string, not an absolute path, which "
                         f"would leak this machine's layout into the card); got {corpus!r}")
    card = {
        "format": {"saelens_files": [_CFG, _WEIGHTS], "sae_lens_version": meta.get("sae_lens_version")},
        "model": meta.get("model_name"), "hook_name": meta.get("hook_name"),
        "layer": residual_layer_of_hook(meta.get("hook_name")), "unit_set": own.get("unit_set"),
        "family": own.get("family"), "kind": own.get("kind"), "whitened": own.get("whitened"),
        "architecture": cfg.get("architecture"), "d_in": cfg.get("d_in"), "d_sae": cfg.get("d_sae"),
        "dtype": cfg.get("dtype"), "corpus": corpus, "n_tokens": _check_count("n_tokens", n_tokens),
        "n_steps": _check_count("n_steps", n_steps), "coefficients": _check_numbers("coefficients", coefficients),
        "metrics": _check_numbers("metrics", metrics), "atomsnb_version": __version__, "git_commit": _git_commit(),
        "sha256": {f: hashlib.sha256((folder / f).read_bytes()).hexdigest() for f in (_CFG, _WEIGHTS)},
    }
    files = {_CFG: (folder / _CFG).read_bytes(), _WEIGHTS: (folder / _WEIGHTS).read_bytes(),
             MODEL_CARD_JSON: (json.dumps(card, indent=2) + "\n").encode(),
             MODEL_CARD_README: _readme(card, folder.name).encode()}
    buf = BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(files):
            info = zipfile.ZipInfo(f"{folder.name}/{name}", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type, info.external_attr = zipfile.ZIP_DEFLATED, 0o644 << 16
            zf.writestr(info, files[name])
    with atomic_write(out) as tmp:
        tmp.write_bytes(buf.getvalue())
    return out


def _slug(name: str) -> str:
    """A file name for a unit set's name: lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def export_results(units: Mapping[str, object], table: pd.DataFrame, out_dir: str | os.PathLike, *, layer: int,
                   model_name: str, corpus: str, n_tokens: int, n_steps: int,
                   work_dir: str | os.PathLike | None = None) -> dict[str, Path]:
    """Every exportable unit set of a comparison as a SAELens zip with its model card: a chapter's downloads.

    For each unit set in ``units`` that :func:`export_saelens` can express (trained SAEs of the kinds in
    :data:`ARCHITECTURES`; the neurons and external SAEs are skipped), writes the SAELens directory
    ``<work_dir>/<slug>/`` and the zip ``<out_dir>/<slug>.zip`` (:func:`zip_export`) with the coefficients and
    held-out metrics of its row in ``table``.

    Args:
        units: unit-set name -> unit set (:attr:`atomsnb.evaluation.UnitSetResults.units`).
        table: :attr:`atomsnb.evaluation.UnitSetResults.table` (the ``"held-out"`` rows give the metrics).
        out_dir: the downloads directory (created): the zips only.
        work_dir: where the SAELens directories are written (default ``out_dir``).
        layer, model_name: as :func:`export_saelens`.
        corpus, n_tokens, n_steps: as :func:`zip_export` (the training corpus by name, tokens and steps).

    Returns:
        unit-set name -> its zip, in the order of ``units``.

    Raises:
        ValueError: ``table`` has no held-out row for an exported unit set; as :func:`export_saelens` and
            :func:`zip_export` (checked before anything is written for that unit set).
    """
    held = table[table["split"] == "held-out"].drop_duplicates("unit set").set_index("unit set")
    out_dir = Path(out_dir)
    work_dir = out_dir if work_dir is None else Path(work_dir)
    zips = {}
    for name, unit_set in units.items():
        if not isinstance(unit_set, SAEUnits) or unit_set.sae.kind not in ARCHITECTURES:
            continue
        if name not in held.index:
            raise ValueError(f"no held-out row for unit set {name!r} in the table; its metrics go into the model card")
        row = held.loc[name]
        coefficients = {c: float(row[c]) for c in ("l0_coefficient", "l1_coefficient", "k")
                        if c in row and pd.notna(row[c])}
        metrics = {m: float(row[m]) for m in ("r2_aip", "explained_variance", "q_star", "l0", "frac_dead")
                   if m in row and pd.notna(row[m])}
        folder = export_saelens(unit_set, work_dir / _slug(name), layer=layer, model_name=model_name, overwrite=True)
        zips[name] = zip_export(folder, out_dir / f"{_slug(name)}.zip", corpus=corpus, n_tokens=n_tokens,
                                n_steps=n_steps, coefficients=coefficients, metrics=metrics, overwrite=True)
    return zips
