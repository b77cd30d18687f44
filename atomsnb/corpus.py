"""Text for training the default model and for collecting activations, with no network.

Sources (the ``source`` string of :class:`Corpus`):

- ``"docstrings"`` (default): docstrings of the Python standard library and of the pinned
  ``numpy`` and ``scipy``, read with :mod:`ast` from their source files (nothing is imported).
  English technical prose with code fragments; every Python install has the standard library.
- ``"stdlib-code"``: the standard library's *code* (functions and classes re-printed by
  :func:`ast.unparse`, docstrings removed): a second domain for out-of-domain tests of ``S``.
- ``"file:/path/to/text.txt"``: a local UTF-8 text file, one document per blank-line-separated block.
- ``"hf:NAME[:CONFIG[:SPLIT[:COLUMN]]]"``: a Hugging Face dataset (e.g. ``hf:wikitext:wikitext-103-raw-v1``),
  which needs the ``datasets`` package and a reachable hub.

Every document has a stable id; its split (``train`` / ``fit`` / ``eval``: 80/10/10 %) is a
hash of that id, so splits are disjoint and identical across runs and machines. The default
model trains on ``train``; ``S`` and dictionaries are fitted on ``fit``; metrics use ``eval``.
"""

from __future__ import annotations

import ast
import hashlib
import sysconfig
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

__all__ = ["Corpus", "Document", "SPLITS", "split_of", "iter_hf_documents"]

SPLITS = ("train", "fit", "eval")
_SPLIT_EDGES = (80, 90)  # percent: [0,80) train, [80,90) fit, [90,100) eval
_MIN_DOC_CHARS = 20
_SKIP_PARTS = ("test", "tests", "idle_test", "site-packages", "__pycache__")


@dataclass(frozen=True)
class Document:
    """One text with a stable identifier (e.g. ``"stdlib:json/decoder.py::JSONDecoder.decode"``)."""

    doc_id: str
    text: str


def split_of(doc_id: str) -> str:
    """Split (``"train"``, ``"fit"`` or ``"eval"``) of a document id: 80/10/10 by SHA-1 of the id."""
    bucket = int(hashlib.sha1(doc_id.encode()).hexdigest()[:8], 16) % 100
    return "train" if bucket < _SPLIT_EDGES[0] else "fit" if bucket < _SPLIT_EDGES[1] else "eval"


def _unique(docs: list[Document]) -> tuple[Document, ...]:
    """Make ids unique: a name defined twice (e.g. in both branches of an ``if``) gets ``#2``, ``#3``..."""
    seen: dict[str, int] = {}
    out = []
    for d in docs:
        k = seen[d.doc_id] = seen.get(d.doc_id, 0) + 1
        out.append(d if k == 1 else Document(f"{d.doc_id}#{k}", d.text))
    return tuple(out)


def _python_roots() -> list[tuple[str, Path]]:
    roots = [("stdlib", Path(sysconfig.get_paths()["stdlib"]))]
    for name in ("numpy", "scipy"):
        mod = __import__(name)
        roots.append((f"{name}-{mod.__version__}", Path(mod.__file__).parent))
    return roots


def _source_files(root: Path):
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if any(part in _SKIP_PARTS for part in rel.parts[:-1]) or rel.name.startswith("test_"):
            continue
        try:
            yield rel.as_posix(), ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue


def _walk_named(node: ast.AST, prefix: str = ""):
    """Yield (qualified name, node) for every class/function below ``node``, at any depth
    (also those defined inside ``if``/``try`` blocks)."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            name = f"{prefix}.{child.name}" if prefix else child.name
            yield name, child
            yield from _walk_named(child, name)
        else:
            yield from _walk_named(child, prefix)


@lru_cache(maxsize=None)
def _docstring_documents() -> tuple[Document, ...]:
    docs = []
    for tag, root in _python_roots():
        for rel, tree in _source_files(root):
            for name, node in [("<module>", tree), *_walk_named(tree)]:
                text = ast.get_docstring(node, clean=True)
                if text and len(text) >= _MIN_DOC_CHARS:
                    docs.append(Document(f"{tag}:{rel}::{name}", text))
    return _unique(docs)


class _StripDocstrings(ast.NodeTransformer):
    def _strip(self, node):
        self.generic_visit(node)
        body = node.body
        if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
                and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
        return node

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _strip


@lru_cache(maxsize=None)
def _code_documents() -> tuple[Document, ...]:
    tag, root = _python_roots()[0]
    docs = []
    for rel, tree in _source_files(root):
        for node in tree.body:
            if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                text = ast.unparse(_StripDocstrings().visit(node))
                if len(text) >= _MIN_DOC_CHARS:
                    docs.append(Document(f"{tag}-code:{rel}::{node.name}", text))
    return _unique(docs)


def _file_documents(path: Path) -> tuple[Document, ...]:
    if not path.is_file():
        raise FileNotFoundError(f"corpus file {str(path)!r} does not exist")
    blocks = [b.strip() for b in path.read_text(encoding="utf-8").split("\n\n")]
    return tuple(Document(f"file:{path.name}:{i}", b) for i, b in enumerate(blocks) if len(b) >= _MIN_DOC_CHARS)


def _hf_documents(spec: str) -> tuple[Document, ...]:
    parts = spec.split(":")
    name, config = parts[0], (parts[1] if len(parts) > 1 and parts[1] else None)
    hf_split = parts[2] if len(parts) > 2 else "train"
    column = parts[3] if len(parts) > 3 else "text"
    try:
        import datasets  # type: ignore
    except ImportError as exc:
        raise ImportError(f"corpus 'hf:{spec}' needs the 'datasets' package (pip install datasets)") from exc
    try:
        ds = datasets.load_dataset(name, config, split=hf_split)
    except Exception as exc:  # network, unknown name: say which
        raise OSError(f"could not load Hugging Face dataset {name!r} (config {config!r}, split {hf_split!r}): {exc}. "
                      "Offline, use the default 'docstrings' corpus or 'file:/path/to/text.txt'.") from exc
    return tuple(Document(f"hf:{name}:{i}", t) for i, t in enumerate(ds[column]) if t and len(t.strip()) >= _MIN_DOC_CHARS)


def iter_hf_documents(spec: str, split: str | None = None):
    """Stream the documents of a Hugging Face dataset (``hf:`` source without the prefix) without downloading it whole.

    ``datasets.load_dataset(NAME, CONFIG, split=SPLIT, streaming=True)``: rows arrive as the dataset's files are
    read, so a billion-token corpus is never held on disk or in memory. Document ids, the minimum length and the
    ``train``/``fit``/``eval`` split by id hash are those of the non-streaming ``hf:`` source. ``NAME`` may be a local
    dataset directory (e.g. holding ``train.jsonl``), which is how the tests exercise this path offline.

    Args:
        spec: ``NAME[:CONFIG[:SPLIT[:COLUMN]]]`` (SPLIT defaults to ``train``, COLUMN to ``text``).
        split: ``"train"``, ``"fit"``, ``"eval"`` or None (all documents).

    Yields:
        :class:`Document` s in the dataset's order.

    Raises:
        ImportError: ``datasets`` is not installed (``pip install -e .[hub]`` or ``make install-hub``).
        OSError: the dataset cannot be opened (offline, unknown name), naming it.
        KeyError: the column does not exist, naming the columns there are.
    """
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS} or None; got {split!r}")
    parts = spec.split(":")
    name, config = parts[0], (parts[1] if len(parts) > 1 and parts[1] else None)
    hf_split = parts[2] if len(parts) > 2 and parts[2] else "train"
    column = parts[3] if len(parts) > 3 and parts[3] else "text"
    try:
        import datasets  # type: ignore
    except ImportError as exc:
        raise ImportError(f"corpus 'hf:{spec}' needs the optional 'hub' extra (the 'datasets' package): "
                          "pip install -e .[hub], or make install-hub") from exc
    try:
        ds = datasets.load_dataset(name, config, split=hf_split, streaming=True)
    except Exception as exc:  # network, unknown name: say which
        raise OSError(f"could not stream Hugging Face dataset {name!r} (config {config!r}, split {hf_split!r}): {exc}. "
                      "Offline, use the default 'docstrings' corpus or 'file:/path/to/text.txt'.") from exc
    for i, row in enumerate(ds):
        if column not in row:
            raise KeyError(f"dataset {name!r} has no column {column!r}; columns: {sorted(row)} "
                           "(give it as hf:NAME:CONFIG:SPLIT:COLUMN)")
        text = row[column]
        if not text or len(text.strip()) < _MIN_DOC_CHARS:
            continue
        doc = Document(f"hf:{name}:{i}", text)
        if split is None or split_of(doc.doc_id) == split:
            yield doc


class Corpus:
    """A text source split deterministically into ``train`` / ``fit`` / ``eval``.

    Args:
        source: ``"docstrings"`` (default), ``"stdlib-code"``, ``"file:PATH"`` or ``"hf:NAME[:CONFIG[:SPLIT[:COLUMN]]]"``.

    Raises:
        ValueError: an unknown source string.
        FileNotFoundError: a ``file:`` path that does not exist.
    """

    def __init__(self, source: str = "docstrings"):
        if not (source in ("docstrings", "stdlib-code") or source.startswith(("file:", "hf:"))):
            raise ValueError(f"unknown corpus source {source!r}; use 'docstrings', 'stdlib-code', 'file:PATH' or 'hf:NAME[:CONFIG]'")
        self.source = source

    def documents(self, split: str | None = None) -> list[Document]:
        """All documents, or those of one split (``"train"``, ``"fit"``, ``"eval"``), in a fixed order."""
        if split is not None and split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS} or None; got {split!r}")
        if self.source == "docstrings":
            docs = _docstring_documents()
        elif self.source == "stdlib-code":
            docs = _code_documents()
        elif self.source.startswith("file:"):
            docs = _file_documents(Path(self.source[5:]).expanduser())
        else:
            docs = _hf_documents(self.source[3:])
        if not docs:
            raise ValueError(f"corpus {self.source!r} is empty (no document of at least {_MIN_DOC_CHARS} characters)")
        return [d for d in docs if split is None or split_of(d.doc_id) == split]

    def texts(self, split: str | None = None) -> list[str]:
        """The documents' texts (see :meth:`documents`)."""
        return [d.text for d in self.documents(split)]

    def fingerprint(self, split: str | None = None) -> str:
        """SHA-256 (first 16 hex digits) of the ids and texts of a split: the cache key of anything built from it."""
        h = hashlib.sha256(self.source.encode())
        for d in self.documents(split):
            h.update(d.doc_id.encode())
            h.update(b"\0")
            h.update(d.text.encode())
            h.update(b"\1")
        return h.hexdigest()[:16]

    def __repr__(self) -> str:
        return f"Corpus({self.source!r})"
