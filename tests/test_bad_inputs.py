"""Bad inputs to io, runner, the ledger and its code fingerprint, judges, ratings, contexts, the grid configs' validate() and the notebook CLI, table-driven.

Each case: ``pytest.param(call, exception type, [substrings], id=...)``. ``call()`` must raise the exception before
any work starts, and the message must contain every substring: the offending value as the message names it and
what is allowed (issue 9 §4). The cases share one lazily built environment (tiny models, sheets, files): :func:`E`.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import torch

from atomsnb import judges as J
from atomsnb.activations import Activations, ActivationConfig
from atomsnb.contexts import Context, UnitContexts, context_for_token, random_contexts, render_html, sample_units, top_contexts
from atomsnb.codereach import reach_fingerprint
from atomsnb.grid import CapacityGridConfig, LayerStudyConfig
from atomsnb.io import CacheCorruptError, load_json, load_tensors, save_json, save_tensors
from atomsnb.ledger import Ledger
from atomsnb.metrics import r2_aip
from atomsnb.ratings import RatingError, export_for_rating, read_ratings
from atomsnb.runner import GridPoint, ResultsStore, grid_points, results_dir, run_grid
from grid_tasks import product_task
from tiny_models import save_tiny

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tools"))
import run_notebook as RN  # noqa: E402

CH02 = str(REPO / "notebooks" / "02_neurons_features_atoms.py")
POINTS = grid_points(["m"], layers=[0, 1], n_train=[10], n_latents=[3])


@functools.lru_cache(maxsize=None)
def E() -> dict:
    """Paths the cases need, built once: tiny models, a small corpus file, a rating sheet, odd files."""
    root = Path(tempfile.mkdtemp(prefix="atomsnb-bad-inputs-"))
    atexit.register(shutil.rmtree, root, True)
    e = {"root": root, "llama": str(save_tiny("llama", root / "llama")), "gpt2": str(save_tiny("gpt2", root / "gpt2"))}
    e["corpus"] = root / "small.txt"
    e["corpus"].write_text("\n\n".join(f"Document number {i} says a few words about topic {i % 7}." for i in range(60)))
    e["afile"] = root / "afile.txt"
    e["afile"].write_text("a file, not a directory")
    e["text.safetensors"] = root / "text.safetensors"
    e["text.safetensors"].write_text("not a safetensors file")
    e["bad.json"] = root / "bad.json"
    e["bad.json"].write_bytes(b"\xff\xfe not utf-8")
    e["plain.json"] = root / "plain.json"
    save_json(e["plain.json"], {"score": 7})
    e["list.yaml"] = root / "list.yaml"
    e["list.yaml"].write_text("- model: gpt2\n- layer: 1\n")
    return e


def _fresh() -> Path:
    return Path(tempfile.mkdtemp(dir=E()["root"]))


# ------------------------------------------------------------------------------------------------------------------- io
def _write_then(fn):
    def call():
        p = _fresh() / "x.safetensors"
        return fn(p)
    return call


# ----------------------------------------------------------------------------------------------------------- contexts
class _Tok:
    all_special_ids = [0]

    def decode(self, ids):
        return "".join(f" w{i}" for i in ids)


def _acts() -> Activations:
    n_windows, seq_len = 4, 6
    windows = torch.arange(n_windows * seq_len).view(n_windows, seq_len) % 9 + 1
    n = n_windows * (seq_len - 1)
    return Activations(acts={}, token_ids=windows[:, 1:].reshape(-1), window=torch.arange(n_windows).repeat_interleave(seq_len - 1),
                       position=torch.arange(1, seq_len).repeat(n_windows), windows=windows, config=ActivationConfig())


CODES = torch.rand(20, 3, generator=torch.Generator().manual_seed(0))
NAN_CODES = CODES.clone()
NAN_CODES[4, 1] = float("nan")


def _ctx(i: int = 0) -> Context:
    return Context(index=i, activation=1.0, token_id=1, token=" t", left="x = ", right=" y", window=i, position=1)


class _NaNEmbedder(J.Embedder):
    name = "nan-embedder"

    def embed(self, texts):
        return torch.full((len(texts), 3), float("nan"))


# ------------------------------------------------------------------------------------------------------------ ratings
def _units(n_sets: int = 2):
    return {f"set{s}": [UnitContexts(f"set{s}", u, [_ctx(i) for i in range(3)], 5) for u in range(2)]
            for s in range(n_sets)}


def _sheet(edit) -> tuple[Path, Path]:
    """An exported sheet whose rows are passed through ``edit(rows) -> (header, rows)`` before reading."""
    import csv

    path, key = export_for_rating(_fresh() / "ratings.csv", _units(), seed=0)
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    header, rows = edit(list(rows[0]), rows)
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=header, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    return path, key


def _rate(value, row: int = 0):
    def edit(header, rows):
        rows[row]["rating"] = value
        return header, rows
    return lambda: read_ratings(_sheet(edit)[0])


def _cp1252():
    path, _ = export_for_rating(_fresh() / "ratings.csv", _units(), seed=0)
    path.write_bytes(path.read_bytes().replace("⏎".encode(), b"") + "café".encode("cp1252"))
    return read_ratings(path)


# --------------------------------------------------------------------------------------------------------------- grid
SMALL = dict(n_fit_tokens=1000, n_eval_tokens=300, n_steps=20, batch_size=128)


def cap(**kw):
    return lambda: CapacityGridConfig(**{"model": E()["llama"], "m_values": (100,), **SMALL, **kw}).validate()


def layers(**kw):
    return lambda: LayerStudyConfig(**{"model": E()["llama"], "n_train_tokens": 500, **SMALL, **kw}).validate()


@dataclass
class _WithSeqLen(CapacityGridConfig):
    """A grid config with a ``seq_len`` field (validate() reads it when present)."""

    seq_len: int = 128


CUDA_DEVICE = "cuda:99" if torch.cuda.is_available() else "cuda"
CUDA_WORDS = ["cuda:99", "does not exist"] if torch.cuda.is_available() else ["'cuda'", "not available here", "'cpu'"]


# ------------------------------------------------------------------------------------------------------ notebook CLI
def cli(*argv):
    return lambda: RN.main([CH02, str(_fresh() / "out.ipynb"), *argv])


def _no_kernel(*a, **k):
    raise AssertionError("a kernel was started for a bad input")


CASES = [
    # ---- io: tensors and JSON caches
    pytest.param(_write_then(lambda p: save_tensors(p, {"a": torch.zeros(2)}, {"scale": torch.tensor(2.0)})), TypeError,
                 ["metadata 'scale'", "Tensor", "numbers, strings, lists or dicts"], id="io metadata tensor"),
    pytest.param(_write_then(lambda p: save_tensors(p, {"a": [1.0, 2.0]})), TypeError, ["tensor 'a'", "list", "torch.Tensor"],
                 id="io tensor is a list"),
    pytest.param(_write_then(lambda p: save_tensors(p, {"a": torch.zeros(2)}, {"atomsnb_sha256_v2": "x"})), ValueError,
                 ["'atomsnb_sha256_v2'", "reserved", "another name"], id="io reserved metadata key"),
    pytest.param(_write_then(lambda p: save_tensors(p, {"a": torch.zeros(2)}, {3: "x"})), TypeError,
                 ["3 (int)", "must be strings"], id="io metadata key not str"),
    pytest.param(lambda: load_tensors(E()["text.safetensors"]), CacheCorruptError,
                 ["text.safetensors", "unreadable", "delete it to recompute"], id="io not a safetensors file"),
    pytest.param(lambda: load_json(E()["bad.json"]), CacheCorruptError, ["bad.json", "not valid UTF-8 JSON"],
                 id="io json not utf-8"),
    pytest.param(lambda: load_json(E()["plain.json"], checksum=True), CacheCorruptError,
                 ["plain.json", "no checksum", "'atomsnb_sha256'"], id="io json without checksum"),
    # ---- runner: points, grids, runs, stores
    pytest.param(lambda: GridPoint("m", -1, 10, 3), ValueError, ["layer", "-1", ">= 0"], id="GridPoint negative layer"),
    pytest.param(lambda: GridPoint("m", 1, 1.5, 3), TypeError, ["n_train", "1.5", "integer"], id="GridPoint float n_train"),
    pytest.param(lambda: GridPoint("m", 1, 10, 0), ValueError, ["n_latents", "0", ">= 1"], id="GridPoint n_latents 0"),
    pytest.param(lambda: GridPoint("", 1, 10, 3), TypeError, ["model", "''", "non-empty string"], id="GridPoint empty model"),
    pytest.param(lambda: GridPoint("m", 1, 10, 3, 0, (("a", 1), ("a", 2))), ValueError, ["['a']", "given twice"],
                 id="GridPoint param twice"),
    pytest.param(lambda: GridPoint("m", 1, 10, 3, 0, (1, 2)), TypeError, ["(1, 2)", "(name, value) pairs"],
                 id="GridPoint params not pairs"),
    pytest.param(lambda: grid_points("gpt2", [1], [10], [3]), TypeError, ["'gpt2'", "must be a list", "['gpt2']"],
                 id="grid_points models a string"),
    pytest.param(lambda: grid_points(["m"], [1.7], [10], [3]), TypeError, ["1.7", "must be integers"],
                 id="grid_points float layer"),
    pytest.param(lambda: grid_points(["m"], [1], [10], [3], seeds=[]), ValueError, ["seeds", "is empty", "no points"],
                 id="grid_points no seeds"),
    pytest.param(lambda: grid_points(["m"], 3, [10], [3]), TypeError, ["layers", "3", "[3]"], id="grid_points layers int"),
    pytest.param(lambda: run_grid(POINTS, product_task, _fresh(), backend="slurm"), ValueError,
                 ["'slurm'", "'sequential', 'processes' or 'dask'"], id="run_grid backend"),
    pytest.param(lambda: run_grid(POINTS, product_task, _fresh(), threads=0), ValueError,
                 ["threads", "got 0", "integer >= 1"], id="run_grid threads zero"),
    pytest.param(lambda: run_grid([{"layer": 1}], product_task, _fresh()), TypeError, ["points[0]", "dict", "GridPoint"],
                 id="run_grid point is a dict"),
    pytest.param(lambda: run_grid(POINTS, 42, _fresh()), TypeError, ["fn", "42", "GridPoint -> dict"],
                 id="run_grid fn not callable"),
    pytest.param(lambda: run_grid(POINTS, product_task, _fresh(), backend="processes", max_workers=0), ValueError,
                 ["max_workers", "0", ">= 1"], id="run_grid max_workers 0"),
    pytest.param(lambda: run_grid(POINTS, product_task, _fresh(), client=object()), ValueError,
                 ["client", "backend='dask'", "'sequential'"], id="run_grid client without dask"),
    pytest.param(lambda: run_grid(POINTS, lambda p: {}, _fresh(), backend="processes"), ValueError,
                 ["<lambda>", "module-level function"], id="run_grid lambda to processes"),
    pytest.param(lambda: run_grid(POINTS, product_task, E()["afile"]), NotADirectoryError,
                 ["afile.txt", "is a file, not a directory"], id="run_grid store is a file"),
    pytest.param(lambda: run_grid(POINTS + POINTS[:1], product_task, _fresh()), ValueError,
                 ["duplicate points", "GridPoint(model='m'"], id="run_grid duplicate points"),
    pytest.param(lambda: ResultsStore(_fresh()).read(errors="ignore"), ValueError, ["'ignore'", "'raise', 'warn' or 'skip'"],
                 id="ResultsStore.read errors"),
    # ---- judges
    pytest.param(lambda: J.LLMJudge("file:///etc/passwd", "m"), ValueError, ["file:///etc/passwd", "http:// or https://"],
                 id="LLM file URL"),
    pytest.param(lambda: J.LLMJudge("ftp://example.com/v1", "m"), ValueError, ["ftp://example.com/v1", "http:// or https://"],
                 id="LLM ftp URL"),
    pytest.param(lambda: J.LLMJudge("localhost:11434/v1", "m"), ValueError, ["localhost:11434/v1", "http://localhost:11434/v1"],
                 id="LLM URL without scheme"),
    pytest.param(lambda: J.LLMJudge("https://bob:hunter2@api.example.com/v1", "m"), ValueError,
                 ["https://***@api.example.com/v1", "credentials", "api_key"], id="LLM URL credentials"),
    pytest.param(lambda: J.LLMJudge("http://127.0.0.1:9/v1", "m", timeout=0), ValueError, ["timeout", "0", "> 0"],
                 id="LLM timeout 0"),
    pytest.param(lambda: J.LLMJudge("http://127.0.0.1:9/v1", "m", max_retries=-1), ValueError,
                 ["max_retries", "-1", ">= 0"], id="LLM max_retries -1"),
    pytest.param(lambda: J.LLMJudge("http://127.0.0.1:9/v1", "m", backoff=float("nan")), ValueError,
                 ["backoff", "nan", ">= 0"], id="LLM backoff nan"),
    pytest.param(lambda: J.LLMJudge("http://127.0.0.1:9/v1", "m", max_tokens=0), ValueError, ["max_tokens", "0", ">= 1"],
                 id="LLM max_tokens 0"),
    pytest.param(lambda: J.LLMJudge("http://127.0.0.1:9/v1", "m", prompt="Rate this unit."), ValueError,
                 ["prompt template", "{contexts}"], id="LLM prompt without placeholder"),
    pytest.param(lambda: J.parse_score("7", scale=0), ValueError, ["scale", "0", "> 0"], id="parse_score scale 0"),
    pytest.param(lambda: J.parse_score("no idea"), J.LLMResponseError, ["'no idea'", "no score"], id="parse_score none"),
    pytest.param(lambda: J.parse_score('{"score": 11}'), J.LLMResponseError, ["11", "[0, 10]"], id="parse_score 11"),
    pytest.param(lambda: J.parse_score(None), TypeError, ["NoneType", "string"], id="parse_score None"),
    pytest.param(lambda: J.bootstrap_mean([0.1, 0.2, 0.3], ci=95), ValueError, ["95", "(0, 1)", "0.95"],
                 id="bootstrap ci in percent"),
    pytest.param(lambda: J.bootstrap_mean([0.1, 0.2], n_boot=0), ValueError, ["n_boot", "0", ">= 1"], id="bootstrap n_boot 0"),
    pytest.param(lambda: J.bootstrap_difference([0.1, 0.2], [0.3, 0.4], ci=1.0), ValueError, ["1.0", "(0, 1)"],
                 id="bootstrap_difference ci 1"),
    pytest.param(lambda: J.shuffled_units([_ctx(i) for i in range(10)], 3, 0, seed=0), ValueError, ["k", "0", ">= 1"],
                 id="shuffled_units k 0"),
    pytest.param(lambda: J.shuffled_units([_ctx(i) for i in range(3)], 3, 8, seed=0), ValueError, ["3 contexts", "k=8"],
                 id="shuffled_units pool too small"),
    pytest.param(lambda: J.TokenConcentrationJudge({"the": 50, "cat": 10}), ValueError, ["'the'", "50", "[0, 1]"],
                 id="base rates are counts"),
    pytest.param(lambda: J.TokenConcentrationJudge({"a": 0.9, "b": 0.6}), ValueError, ["1.5", "frequencies"],
                 id="base rates sum above 1"),
    pytest.param(lambda: J.TokenConcentrationJudge.from_token_ids(torch.tensor([], dtype=torch.long), _Tok()), ValueError,
                 ["no token ids", "non-empty"], id="base rates from no tokens"),
    pytest.param(lambda: J.judge_agreement(pd.DataFrame({"unit set": ["a"], "unit": [0], "judge": ["x"]})), ValueError,
                 ["['score']", "'unit set', 'unit', 'judge', 'score'"], id="judge_agreement columns"),
    pytest.param(lambda: J.summary_table(pd.DataFrame({"judge": ["x"], "score": [0.5]})), ValueError,
                 ["['unit set']", "expected"], id="summary_table columns"),
    pytest.param(lambda: J.MiniLMEmbedder(batch_size=0), ValueError, ["batch_size", "0", ">= 1"], id="MiniLM batch_size 0"),
    pytest.param(lambda: J.EmbeddingJudge(_NaNEmbedder()).score([_ctx(0), _ctx(1)]), ValueError,
                 ["'nan-embedder'", "NaN"], id="embedder returns NaN"),
    # ---- ratings
    pytest.param(lambda: export_for_rating(_fresh() / "r.csv", {}), ValueError, ["unit_contexts is empty", "no unit sets"],
                 id="ratings export nothing"),
    pytest.param(lambda: export_for_rating(_fresh() / "r.csv", _units(), max_contexts=0), ValueError,
                 ["max_contexts", "0", ">= 1"], id="ratings max_contexts 0"),
    pytest.param(lambda: export_for_rating(_fresh() / "r.csv", _units(27)), ValueError, ["27", "at most 26"],
                 id="ratings 27 sets"),
    pytest.param(_rate("7"), RatingError, ["rating 7", "outside 1..5", "line 2"], id="rating 7"),
    pytest.param(_rate("good"), RatingError, ["'good'", "integer from 1 to 5"], id="rating not a number"),
    pytest.param(_rate("nan"), RatingError, ["nan", "1..5"], id="rating nan"),
    pytest.param(lambda: read_ratings(_sheet(lambda h, rows: (h, [{**rows[0], "item": "u999"}]))[0]), RatingError,
                 ["'u999'", "unknown item", "key"], id="rating unknown item"),
    pytest.param(lambda: read_ratings(_sheet(lambda h, rows: ([c for c in h if c != "rating"], rows))[0]), RatingError,
                 ["['rating']", "expected"], id="rating column missing"),
    pytest.param(_cp1252, RatingError, ["not UTF-8", "'CSV UTF-8'"], id="rating sheet cp1252"),
    pytest.param(lambda: read_ratings(_sheet(lambda h, rows: (h, [{**rows[0], "set": "set Z"}]))[0]), RatingError,
                 ["'set Z'", "different exports"], id="rating sheet and key disagree"),
    # ---- contexts
    pytest.param(lambda: top_contexts(CODES, _acts(), _Tok(), [-1]), ValueError, ["unit -1", "0..2"], id="contexts unit -1"),
    pytest.param(lambda: top_contexts(CODES, _acts(), _Tok(), [3]), ValueError, ["unit 3", "0..2"], id="contexts unit 3"),
    pytest.param(lambda: top_contexts(CODES, _acts(), _Tok(), [0], k=0), ValueError, ["k=0", ">= 1"], id="contexts k 0"),
    pytest.param(lambda: top_contexts(NAN_CODES, _acts(), _Tok(), [1]), ValueError, ["NaN", "token 4, unit 1"],
                 id="contexts NaN codes"),
    pytest.param(lambda: top_contexts(CODES[:5], _acts(), _Tok(), [0]), ValueError, ["5 rows", "20 tokens"],
                 id="contexts rows mismatch"),
    pytest.param(lambda: top_contexts(CODES, _acts(), _Tok(), [0], max_per_window=0), ValueError,
                 ["max_per_window=0", ">= 1"], id="contexts max_per_window 0"),
    pytest.param(lambda: sample_units(CODES, 2, seed=0, min_active=0), ValueError, ["min_active=0", ">= 1"],
                 id="sample_units min_active 0"),
    pytest.param(lambda: sample_units(CODES[0], 2, seed=0), ValueError, ["[3]", "2-D tensor [n_tokens, n_units]"],
                 id="sample_units 1-D codes"),
    pytest.param(lambda: random_contexts(_acts(), _Tok(), 21, seed=0), ValueError, ["n=21", "only 20 tokens"],
                 id="random_contexts too many"),
    pytest.param(lambda: random_contexts(_acts(), _Tok(), -3, seed=0), ValueError, ["n=-3", ">= 0"],
                 id="random_contexts negative"),
    pytest.param(lambda: context_for_token(_acts(), _Tok(), 20), ValueError, ["index 20", "0..19"],
                 id="context_for_token out of range"),
    pytest.param(lambda: render_html([], max_contexts=-1), ValueError, ["max_contexts=-1", ">= 1"], id="render_html -1"),
    # ---- grid configs: validate() before any work
    pytest.param(cap(device="gpu"), ValueError, ["'gpu'", "'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'"], id="grid device gpu"),
    pytest.param(cap(device=CUDA_DEVICE), ValueError, CUDA_WORDS, id="grid device cuda"),
    pytest.param(cap(dtype="float64"), ValueError, ["'float64'", "'bfloat16'"], id="grid dtype"),
    pytest.param(cap(corpus="wikipedia"), ValueError, ["'wikipedia'", "'docstrings'"], id="grid corpus unknown"),
    pytest.param(lambda: cap(corpus=f"file:{E()['root']}/nope.txt")(), (ValueError, FileNotFoundError),
                 ["nope.txt", "does not exist"], id="grid corpus file missing"),
    pytest.param(lambda: cap(corpus=f"file:{E()['corpus']}")(), ValueError,
                 ["n_fit_tokens=1000", "usable tokens", "Lower n_tokens"], id="grid corpus too small"),
    pytest.param(cap(n_steps="1e3"), TypeError, ["n_steps='1e3'", "integer >= 1", "YAML"], id="grid n_steps string"),
    pytest.param(cap(n_fit_tokens=1000.0), TypeError, ["n_fit_tokens=1000.0", "integer >= 1"], id="grid float tokens"),
    pytest.param(cap(l0_coefficient=-1e-3), ValueError, ["l0_coefficient=-0.001", "finite number >= 0"],
                 id="grid negative coefficient"),
    pytest.param(cap(l0_coefficient=float("nan")), ValueError, ["l0_coefficient=nan", "finite number >= 0"],
                 id="grid NaN coefficient"),
    pytest.param(layers(l0_coefficient=float("inf")), ValueError, ["l0_coefficient=inf", "finite number >= 0"],
                 id="layer study inf coefficient"),
    pytest.param(cap(seeds=()), ValueError, ["seeds=[]", "at least one value"], id="grid no seeds"),
    pytest.param(cap(seeds=(0, 0)), ValueError, ["seeds=[0, 0]", "[0] given twice"], id="grid seeds twice"),
    pytest.param(cap(seeds=0), TypeError, ["seeds=0", "must be a list"], id="grid seeds not a list"),
    pytest.param(cap(m_values=(256.5,)), TypeError, ["m_values[0]=256.5", "an integer"], id="grid float |M|"),
    pytest.param(cap(m_values=(100, 100)), ValueError, ["[100] given twice"], id="grid |M| twice"),
    pytest.param(cap(d_multiples=(1, 1.01)), ValueError, ["[32, 32]", "twice"], id="grid |D| sizes twice"),
    pytest.param(cap(d_multiples=(-1,)), ValueError, ["d_multiples[0]=-1", "finite number > 0"], id="grid negative |D|"),
    pytest.param(layers(layers=()), ValueError, ["layers=[]", "at least one value"], id="layer study no layers"),
    pytest.param(layers(capacity=2.5), TypeError, ["capacity=2.5", "integer >= 1"], id="layer study float capacity"),
    pytest.param(cap(model=""), TypeError, ["model=''", "registered name, a local directory or a hub id"], id="grid model ''"),
    pytest.param(lambda: _WithSeqLen(model=E()["gpt2"], m_values=(100,), **SMALL).validate(), ValueError,
                 ["seq_len=128", "64 positions", "seq_len <= 64"], id="grid seq_len above positions"),
    pytest.param(lambda: _WithSeqLen(model=E()["gpt2"], m_values=(100,), seq_len=1, **SMALL).validate(), ValueError,
                 ["seq_len=1", ">= 2"], id="grid seq_len 1"),
    # ---- the notebook CLI: refused before a kernel starts
    pytest.param(cli("-p", "leyer", "1"), SystemExit, ["'leyer'", "did you mean 'layer'", "Its parameters"],
                 id="cli unknown parameter"),
    pytest.param(cli("-p", "layer", "1.5"), SystemExit, ["'layer'", "1.5 (float)", "int"], id="cli float for int"),
    pytest.param(cli("-p", "n_steps", "1e3"), SystemExit, ["'1e3'", "int", "YAML reads 1e3 as a string"],
                 id="cli YAML exponent"),
    pytest.param(cli("-p", "model", "123"), SystemExit, ["'model'", "123 (int)", "str", "quote it"], id="cli int for str"),
    pytest.param(cli("-p", "l0_coefficients", "0.01"), SystemExit, ["0.01", "not a list", "[0.01]"],
                 id="cli scalar for list"),
    pytest.param(cli("-p", "model", "[unclosed"), SystemExit, ["'model'", "'[unclosed'", "not a valid YAML value"],
                 id="cli value not YAML"),
    pytest.param(lambda: cli("-f", str(E()["list.yaml"]))(), SystemExit, ["list.yaml", "YAML list", "mapping of name: value"],
                 id="cli -f not a mapping"),
    pytest.param(lambda: cli("-f", str(E()["root"] / "none.yaml"))(), SystemExit, ["none.yaml", "cannot be read"],
                 id="cli -f missing"),
    pytest.param(lambda: RN.main([CH02, CH02]), SystemExit, ["02_neurons_features_atoms.py", ".ipynb file",
                                                             "not the chapter source"], id="cli output is the source"),
    pytest.param(lambda: RN.main([CH02, str(_fresh())]), SystemExit, ["atomsnb-bad-inputs", ".ipynb file"],
                 id="cli output is a directory"),
    pytest.param(lambda: RN.main([str(REPO / "notebooks" / "07_scaling.py"), str(_fresh() / "out.ipynb"), "-p", "layers",
                                  "[1, top]"]), SystemExit, ["'layers'", "['top']", "list of numbers or 'middle'"],
                 id="cli word its comment does not name"),
    pytest.param(lambda: Ledger("scaling").narrow_code(dry_run="yes"), ValueError, ["'yes'", "True or False"],
                 id="narrow_code dry_run"),
    pytest.param(lambda: Ledger.current("atomsnb.metrics:r2_aip", "m", "docstrings", "lines"), ValueError,
                 ["'lines'", "code_scope must be 'functions' or None"], id="ledger code_scope"),
    pytest.param(lambda: reach_fingerprint(r2_aip, pinned="atomsnb.packaged:ensure_packaged_model"), TypeError,
                 ["atomsnb.packaged:ensure_packaged_model", "collection of 'module:name' strings"],
                 id="reach pinned string"),
    pytest.param(lambda: reach_fingerprint(r2_aip, pinned=("atomsnb.packaged",)), ValueError,
                 ["'atomsnb.packaged'", "give 'module:name'"], id="reach pinned module"),
    pytest.param(lambda: reach_fingerprint("numpy:sum"), ValueError, ["'numpy'", "outside package 'atomsnb'"],
                 id="reach entry outside"),
    pytest.param(lambda: results_dir(".."), ValueError, ["'..'", "one folder name"], id="results_dir .."),
    pytest.param(lambda: results_dir(""), ValueError, ["''", "one folder name"], id="results_dir empty"),
    pytest.param(lambda: J.bootstrap_mean([0.5, float("inf")]), ValueError, ["inf", "finite numbers"],
                 id="bootstrap inf score"),
]


@pytest.mark.parametrize("call, exc_type, words", CASES)
def test_bad_input_is_refused_with_a_clear_message(call, exc_type, words, monkeypatch):
    monkeypatch.setattr(RN, "run", _no_kernel)
    for v in ("ATOMSNB_LLM_BASE_URL", "ATOMSNB_LLM_MODEL", "OPENAI_API_KEY"):
        monkeypatch.delenv(v, raising=False)
    with pytest.raises(exc_type) as info:
        call()
    msg = str(info.value.code if isinstance(info.value, SystemExit) else info.value)
    missing = [w for w in words if w not in msg]
    assert not missing, f"the message lacks {missing}: {msg}"


def test_enough_cases():
    assert len(CASES) >= 40
