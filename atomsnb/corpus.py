"""Text for training the default model and for collecting activations, with no network.

Sources (the ``source`` string of :class:`Corpus`):

- ``"docstrings"`` (default): docstrings of the Python standard library and of the pinned
  ``numpy`` and ``scipy``, read with :mod:`ast` from their source files (nothing is imported).
  English technical prose with code fragments; every Python install has the standard library.
- ``"pydoc-topics"``: natural-language prose, the Python language reference's topics as every Python
  install ships them offline (``pydoc_data.topics.topics``, what ``help("assert")`` prints). Each topic
  is split at its section headings (reST underlines ``*``, ``=``, ``-``, ``~``) into one document per
  section, heading included; ids are ``pydoc:<topic>::<heading>/<subheading>`` (about 200 documents,
  0.46 M characters, about 110 k tokens).
- ``"stdlib-code"``: the standard library's *code* (functions and classes re-printed by
  :func:`ast.unparse`, docstrings removed): a second domain for out-of-domain tests of ``S``.
- ``"site-docstrings"``: the docstrings of the standard library and of every distribution that atomsnb
  requires at run time (the closure of its ``Requires-Dist``, extras it names included; ``requirements.lock`` pins
  their versions, so the lock determines the text): about 38 M characters, 11 M tokens (the book's models
  page counts them per split and tokenizer).
- ``"python-source"``: the same files' code as written, one document per top-level class or function (decorators,
  docstrings and comments included; other module-level code is left out): about 170 M characters, 46 M SmolLM2
  tokens, 36 M of them in ``train``. In both site sources an exact duplicate (code and docstrings copied between
  the models of ``transformers``, for instance) is kept once, at its first id in document order, so no text is in
  two splits.
- ``"file:/path/to/text.txt"``: a local UTF-8 text file, one document per blank-line-separated block.
- ``"hf:NAME[:CONFIG[:SPLIT[:COLUMN]]]"``: a Hugging Face dataset (e.g. ``hf:wikitext:wikitext-103-raw-v1``),
  which needs the ``datasets`` package and a reachable hub.

The parsed built-in sources are kept in ``$ATOMSNB_CACHE/corpus`` (JSON), keyed by the path, size and
mtime of every source file parsed, the Python version and :data:`PARSER_VERSION`: a later process reads
them in seconds instead of re-parsing (10-20 s), and any change to a source file re-parses.
Each site source is read from a checksummed index (:func:`site_index`), keyed by the distributions'
names and versions, the size and mtime of every file read, the Python version and the extraction code itself;
it records the distributions' names and versions, the counts and the build time, never a machine's paths.

Every document has a stable id (``stdlib:json/decoder.py::JSONDecoder.decode``; in the site sources a
distribution's is ``numpy:numpy/linalg/_linalg.py::norm``: canonical distribution name, path inside site-packages,
qualified name, no version, whereas ``"docstrings"`` keeps its ``numpy-<version>:`` tags); its split (``train`` /
``fit`` / ``eval``: 80/10/10 %) is a hash of that id, so splits are disjoint and identical across runs and
machines, and adding or upgrading a distribution never moves another document from one split to another. The default
model trains on ``train``; ``S`` and dictionaries are fitted on ``fit``; metrics use ``eval``.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
import sys
import sysconfig
import time
import warnings
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from pathlib import Path
from pydoc_data.topics import topics

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from .codeprint import code_fingerprint
from .io import CacheCorruptError, load_json, save_json
from .paths import cache_dir

__all__ = ["Corpus", "Document", "CORPUS_SPLITS", "SOURCES", "SITE_SOURCES", "split_of", "iter_hf_documents",
           "site_distributions", "site_index", "token_counts", "TOKEN_COUNT_VERSION", "content_key"]

#: The corpus' document splits: the default model's training text, the text ``S`` and the dictionaries are fitted on,
#: the evaluation text (not :data:`atomsnb.evaluation.SPLITS`, the held-out/train evaluations of a unit set).
CORPUS_SPLITS = ("train", "fit", "eval")
#: Bump when the parsing of the built-in sources changes (enters the key of the parsed-corpus cache).
PARSER_VERSION = 1
#: Built-in sources (besides ``file:PATH`` and ``hf:NAME``).
SOURCES = ("docstrings", "pydoc-topics", "stdlib-code", "site-docstrings", "python-source")
#: The sources read from the standard library and the installed distributions atomsnb requires (:func:`site_index`).
SITE_SOURCES = ("site-docstrings", "python-source")
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


def _candidate_files(root: Path):
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if any(part in _SKIP_PARTS for part in rel.parts[:-1]) or rel.name.startswith("test_"):
            continue
        yield path, rel


def _source_files(root: Path):
    for path, rel in _candidate_files(root):
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


def _cached_documents(kind: str, roots: list[tuple[str, Path]], build) -> tuple[Document, ...]:
    """``build()``'s documents, stored in ``$ATOMSNB_CACHE/corpus`` under a key of :data:`PARSER_VERSION`, the
    Python version and the path, size and mtime of every source file parsed (a 1 s directory walk instead of a
    10-20 s parse); any change to a source file changes the key. A damaged file is rebuilt; a failed write only
    warns (naming the file)."""
    h = hashlib.sha256(f"{kind}|{PARSER_VERSION}|{sys.version}".encode())
    for tag, root in roots:
        for path, rel in _candidate_files(root):
            st = path.stat()
            h.update(f"{tag}|{rel.as_posix()}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    key = h.hexdigest()[:20]
    path = cache_dir("corpus") / f"{kind}-{key}.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data["key"] == key:
            return tuple(Document(str(i), str(t)) for i, t in data["documents"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    docs = build()
    try:
        save_json(path, {"key": key, "kind": kind, "documents": [[d.doc_id, d.text] for d in docs]})
    except OSError as exc:
        warnings.warn(f"could not write the corpus cache file {str(path)!r} ({exc.strerror or exc}); the corpus is "
                      "parsed again next time", RuntimeWarning, stacklevel=2)
    return docs


@lru_cache(maxsize=None)
def _docstring_documents() -> tuple[Document, ...]:
    return _cached_documents("docstrings", _python_roots(), _parse_docstrings)


def _parse_docstrings() -> tuple[Document, ...]:
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
    return _cached_documents("stdlib-code", _python_roots()[:1], _parse_code)


def _parse_code() -> tuple[Document, ...]:
    tag, root = _python_roots()[0]
    docs = []
    for rel, tree in _source_files(root):
        for node in tree.body:
            if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                text = ast.unparse(_StripDocstrings().visit(node))
                if len(text) >= _MIN_DOC_CHARS:
                    docs.append(Document(f"{tag}-code:{rel}::{node.name}", text))
    return _unique(docs)


# --- the site sources: the standard library and the distributions atomsnb requires --------------------------------

@dataclass(frozen=True)
class _SiteSpec:
    """What the site sources read: the runtime-requirement closure of ``roots`` (excluded themselves), looked up in
    ``paths`` (None: ``sys.path``, as ``import`` does), and the standard library if ``stdlib``. Tests point it at a
    fake site-packages tree."""

    roots: tuple[str, ...] = ("atomsnb",)
    paths: tuple[str, ...] | None = None
    stdlib: bool = True


def _site_spec() -> _SiteSpec:
    return _SiteSpec()


def _installed(paths: tuple[str, ...] | None) -> dict[str, metadata.Distribution]:
    """Installed distributions by canonical name; where one is installed twice, the first on the path (as import)."""
    found: dict[str, metadata.Distribution] = {}
    for d in metadata.distributions(**({} if paths is None else {"path": list(paths)})):
        name = d.metadata["Name"] if d.metadata is not None else None
        if name:
            found.setdefault(canonicalize_name(name), d)
    return found


def site_distributions(roots: tuple[str, ...] = ("atomsnb",), paths: tuple[str, ...] | None = None
                       ) -> tuple[list[tuple[str, str, metadata.Distribution]], list[str]]:
    """The installed distributions that ``roots`` need at run time: the closure of their ``Requires-Dist``.

    A requirement counts when its environment marker holds here with no extra, or with an extra that the requiring
    side asked for (``dask[distributed]`` brings ``distributed``); optional extras of ``roots`` (``book``, ``test``)
    do not count. The roots themselves are not in the list (atomsnb's own code is not corpus text).

    Args:
        roots: distribution names, e.g. ``("atomsnb",)``.
        paths: directories to look in (None: ``sys.path``).

    Returns:
        ``(found, missing)``: ``found`` lists ``(canonical name, version, distribution)`` sorted by name; ``missing``
        the sorted names of required distributions that are not installed (their text is absent).

    Raises:
        LookupError: a root is not installed (naming it; ``pip install -e .`` installs atomsnb).
    """
    installed = _installed(paths)
    want: dict[str, set[str]] = {}
    todo = []
    for root in roots:
        key = canonicalize_name(root)
        if key not in installed:
            raise LookupError(f"distribution {root!r} is not installed, so the site corpora cannot read what it "
                              "requires; install it (for atomsnb: pip install -e .)")
        todo.append((key, set()))
    missing: set[str] = set()
    while todo:
        key, extras = todo.pop()
        if key in want and extras <= want[key]:
            continue
        want[key] = want.get(key, set()) | extras
        for line in installed[key].requires or []:
            try:
                req = Requirement(line)
            except InvalidRequirement:
                continue
            if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in ("", *sorted(want[key]))):
                continue
            dep = canonicalize_name(req.name)
            if dep in installed:
                todo.append((dep, set(req.extras)))
            else:
                missing.add(dep)
    skip = {canonicalize_name(r) for r in roots}
    found = [(k, installed[k].version, installed[k]) for k in sorted(want) if k not in skip]
    return found, sorted(missing - set(want))


def _site_files(spec: _SiteSpec) -> tuple[list[tuple[str, str]], list[tuple[str, str, Path]]]:
    """``(distributions, files)``: ``[name, version]`` of every distribution read, and ``(tag, relative path,
    path)`` of every ``.py`` file read, in document order (standard library first, then distributions by name,
    files by relative path). Test directories and ``test_*.py`` files are left out, as for ``"docstrings"``."""
    dists, files = [], []
    if spec.stdlib:
        dists.append(["stdlib", sys.version.split()[0]])
        files += [("stdlib", rel.as_posix(), path) for path, rel in _candidate_files(Path(sysconfig.get_paths()["stdlib"]))]
    found, _ = site_distributions(spec.roots, spec.paths)
    for name, version, dist in found:
        dists.append([name, version])
        rels = sorted({f.as_posix() for f in dist.files or [] if f.suffix == ".py"})
        for rel in rels:
            parts = rel.split("/")
            if parts[0] == ".." or any(p in _SKIP_PARTS for p in parts[:-1]) or parts[-1].startswith("test_"):
                continue
            files.append((name, rel, Path(dist.locate_file(rel))))
    return dists, files


def _site_file_documents(kind: str, tag: str, rel: str, source: str) -> list[Document]:
    """The documents of one parsed file: every docstring (``site-docstrings``) or every top-level class and function
    as written, from its first decorator to its last line (``python-source``). A file that does not parse gives none."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    docs = []
    if kind == "site-docstrings":
        for name, node in [("<module>", tree), *_walk_named(tree)]:
            text = ast.get_docstring(node, clean=True)
            if text and len(text) >= _MIN_DOC_CHARS:
                docs.append(Document(f"{tag}:{rel}::{name}", text))
    else:
        lines = source.splitlines()
        for node in tree.body:
            if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                start = min([node.lineno, *(d.lineno for d in node.decorator_list)])
                text = "\n".join(lines[start - 1:node.end_lineno]).strip()
                if len(text) >= _MIN_DOC_CHARS:
                    docs.append(Document(f"{tag}:{rel}::{node.name}", text))
    return docs


def _build_site_documents(kind: str, files: list[tuple[str, str, Path]]) -> tuple[Document, ...]:
    docs = []
    for tag, rel, path in files:
        try:
            source = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        docs += _site_file_documents(kind, tag, rel, source)
    docs = _unique(docs)
    seen: set[str] = set()
    out = []
    for d in docs:  # an exact duplicate is kept at its first id only, so no text is in two splits
        if d.text not in seen:
            seen.add(d.text)
            out.append(d)
    return tuple(out)


def _extraction_code() -> str:
    """The code fingerprint of the extraction (:func:`atomsnb.codeprint.code_fingerprint`: this module's import
    closure and the library versions), part of the index key."""
    return code_fingerprint(__name__).digest


def content_key(source: str) -> str:
    """What determines a corpus' documents, computed without reading them: for the site sources the SHA-256 of the
    distributions read (names and versions), those required but missing, the Python version and the extraction code
    (:func:`_extraction_code`); for the other sources :meth:`Corpus.fingerprint`. A committed result that records
    it (``results/corpus/``) is stale when it no longer matches.

    Raises:
        ValueError: an unknown source (naming the allowed ones).
    """
    if source in SITE_SOURCES:
        spec = _site_spec()
        dists, missing = site_distributions(spec.roots, spec.paths)
        names = [[name, version] for name, version, _ in dists]
        blob = json.dumps([source, sys.version.split()[0], _extraction_code(), names, missing])
        return hashlib.sha256(blob.encode()).hexdigest()[:16]
    return Corpus(source).fingerprint()


def site_index(source: str, spec: _SiteSpec | None = None) -> tuple[tuple[Document, ...], dict]:
    """The documents of a site source and the record of how they were built, from a cached index.

    The index (``$ATOMSNB_CACHE/corpus/<source>-<key>.json``, checksummed, written atomically) is keyed by the
    names and versions of the distributions read, the relative path, size and ``mtime`` of every file read, the
    Python version and the SHA-256 of the extraction code: a lock change, an upgrade, an edited file or a change to
    the extraction rebuilds it; otherwise it is read back (a few seconds) and its checksum verified. A damaged index
    is rebuilt; one that cannot be written only warns (naming the file, not its directory).

    Args:
        source: ``"site-docstrings"`` or ``"python-source"``.
        spec: what to read (default: the standard library and atomsnb's runtime requirements).

    Returns:
        ``(documents, record)``; ``record`` has ``source``, ``distributions`` (``[name, version]``, ``stdlib``
        first), ``missing`` (required but not installed), ``n_files``, ``n_documents``, ``characters`` and
        ``build_s`` (wall seconds of the build that wrote the index). No absolute path appears in either.

    Raises:
        ValueError: ``source`` is not a site source (naming the allowed ones).
        LookupError: atomsnb (a root of ``spec``) is not installed.
    """
    if source not in SITE_SOURCES:
        raise ValueError(f"source={source!r} is not a site source; use one of {', '.join(map(repr, SITE_SOURCES))}")
    return _site_index(source, spec or _site_spec())


@lru_cache(maxsize=4)
def _site_index(source: str, spec: _SiteSpec) -> tuple[tuple[Document, ...], dict]:
    dists, files = _site_files(spec)
    _, missing = site_distributions(spec.roots, spec.paths)
    h = hashlib.sha256(json.dumps([source, sys.version, _extraction_code(), dists, missing]).encode())
    for tag, rel, path in files:
        try:
            st = path.stat()
            h.update(f"{tag}|{rel}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{tag}|{rel}|absent\n".encode())
    key = h.hexdigest()[:20]
    path = cache_dir("corpus") / f"{source}-{key}.json"
    try:
        data = load_json(path, checksum=True)
        if data["key"] == key:
            return tuple(Document(str(i), str(t)) for i, t in data["documents"]), data["record"]
    except (OSError, CacheCorruptError, KeyError, TypeError, ValueError):
        pass
    t0 = time.perf_counter()
    docs = _build_site_documents(source, files)
    record = {"source": source, "distributions": dists, "missing": missing, "n_files": len(files),
              "n_documents": len(docs), "characters": sum(len(d.text) for d in docs),
              "build_s": round(time.perf_counter() - t0, 1)}
    try:
        save_json(path, {"key": key, "record": record, "documents": [[d.doc_id, d.text] for d in docs]}, checksum=True)
    except OSError as exc:
        warnings.warn(f"could not write the corpus index {path.name!r} in $ATOMSNB_CACHE/corpus "
                      f"({exc.strerror or exc}); it is built again next time", RuntimeWarning, stacklevel=2)
    return docs, record


_HEADING_UNDERLINE = re.compile(r"([*=\-~^\"])\1{2,}")
_HEADING_LEVEL = {"*": 0, "=": 1, "-": 2, "~": 3, "^": 4, '"': 5}


@lru_cache(maxsize=None)
def _pydoc_documents() -> tuple[Document, ...]:
    docs = []
    for topic in sorted(topics):
        lines = topics[topic].split("\n")
        heads = [i - 1 for i in range(1, len(lines))
                 if _HEADING_UNDERLINE.fullmatch(lines[i]) and lines[i - 1].strip() and len(lines[i]) == len(lines[i - 1])]
        starts = heads if heads and heads[0] == 0 else [0, *heads]
        path: dict[int, str] = {}
        for k, start in enumerate(starts):
            end = starts[k + 1] if k + 1 < len(starts) else len(lines)
            text = "\n".join(lines[start:end]).strip()
            if start in heads:
                level = _HEADING_LEVEL[lines[start + 1][0]]
                path = {lv: t for lv, t in path.items() if lv < level}
                path[level] = lines[start].strip()
            title = "/".join(path[lv] for lv in sorted(path)) or "(untitled)"
            if len(text) >= _MIN_DOC_CHARS:
                docs.append(Document(f"pydoc:{topic}::{title}", text))
    return _unique(docs)


def _check_file_source(path: Path, source: str) -> None:
    if path.is_dir():
        raise IsADirectoryError(f"corpus {source!r}: {str(path)!r} is a directory; 'file:PATH' takes one UTF-8 text "
                                "file (documents separated by blank lines)")
    if not path.exists():
        raise FileNotFoundError(f"corpus {source!r}: file {str(path)!r} does not exist; 'file:PATH' takes an existing "
                                "UTF-8 text file")
    if not path.is_file():
        raise ValueError(f"corpus {source!r}: {str(path)!r} is not a regular file; 'file:PATH' takes a UTF-8 text file")


def _file_documents(path: Path) -> tuple[Document, ...]:
    _check_file_source(path, f"file:{path}")
    try:
        raw = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"corpus file {str(path)!r} is not UTF-8 text (byte {exc.start}: {exc.reason}); "
                         "'file:PATH' takes a UTF-8 text file (convert it, e.g. iconv -t UTF-8)") from None
    except OSError as exc:
        raise OSError(exc.errno, f"cannot read corpus file {str(path)!r}: {exc.strerror or exc}") from exc
    blocks = [b.strip() for b in raw.split("\n\n")]
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
    if split is not None and split not in CORPUS_SPLITS:
        raise ValueError(f"split must be one of {CORPUS_SPLITS} or None; got {split!r}")
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
        source: ``"docstrings"`` (default), ``"pydoc-topics"``, ``"stdlib-code"``, ``"site-docstrings"``,
            ``"python-source"``, ``"file:PATH"`` or ``"hf:NAME[:CONFIG[:SPLIT[:COLUMN]]]"``.

    Raises:
        TypeError: ``source`` is not a string.
        ValueError: an unknown source string, an empty ``file:`` or ``hf:`` name, or a ``file:`` path that is
            not a regular file.
        FileNotFoundError: a ``file:`` path that does not exist.
        IsADirectoryError: a ``file:`` path that is a directory.
        LookupError: (from :meth:`documents`) a site source when atomsnb is not installed as a distribution.

    A site source reads its documents once per process (:func:`site_index`); a package edited meanwhile is read
    again by the next process.
    """

    def __init__(self, source: str = "docstrings"):
        if not isinstance(source, str):
            raise TypeError(f"corpus source must be a string ({', '.join(map(repr, SOURCES))}, 'file:PATH' or "
                            f"'hf:NAME'); got {source!r}")
        if not (source in SOURCES or source.startswith(("file:", "hf:"))):
            raise ValueError(f"unknown corpus source {source!r}; use one of {', '.join(map(repr, SOURCES))}, "
                             "'file:PATH' or 'hf:NAME[:CONFIG]'")
        if source in ("file:", "hf:"):
            raise ValueError(f"corpus source {source!r} names no file or dataset; use 'file:PATH' or 'hf:NAME[:CONFIG]'")
        if source.startswith("file:"):
            _check_file_source(Path(source[5:]).expanduser(), source)
        self.source = source

    def documents(self, split: str | None = None) -> list[Document]:
        """All documents, or those of one split (``"train"``, ``"fit"``, ``"eval"``), in a fixed order."""
        if split is not None and split not in CORPUS_SPLITS:
            raise ValueError(f"split must be one of {CORPUS_SPLITS} or None; got {split!r}")
        if self.source == "docstrings":
            docs = _docstring_documents()
        elif self.source == "stdlib-code":
            docs = _code_documents()
        elif self.source == "pydoc-topics":
            docs = _pydoc_documents()
        elif self.source in SITE_SOURCES:
            docs = site_index(self.source)[0]
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


#: Bump when :func:`token_counts` counts differently (enters its cache key).
TOKEN_COUNT_VERSION = 1


def _tokenizer_digest(tokenizer) -> str:
    """SHA-256 of a fast tokenizer's full definition (vocabulary, merges, normaliser, pre-tokeniser)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise TypeError(f"token_counts needs a fast (Rust) Hugging Face tokenizer; got {type(tokenizer).__name__}, "
                        "which has no backend_tokenizer")
    return hashlib.sha256(backend.to_str().encode()).hexdigest()


def token_counts(source: str, tokenizer, *, batch_size: int = 256) -> dict:
    """Documents and tokens of every split of a corpus with one tokenizer, counted once and cached.

    Tokens are counted as :func:`atomsnb.activations.token_windows` makes them (``add_special_tokens=False``); the
    one separator per document that the windows add is not counted. The result is stored in
    ``$ATOMSNB_CACHE/corpus/tokens-<key>.json`` (checksummed, atomic) under a key of the corpus content
    (:meth:`Corpus.fingerprint`), the tokenizer's full definition and :data:`TOKEN_COUNT_VERSION`.

    Args:
        source: a corpus source (:class:`Corpus`).
        tokenizer: a fast Hugging Face tokenizer.
        batch_size: documents per tokenizer call (does not change the counts).

    Returns:
        A dict: ``source``; ``fingerprint`` (of the whole corpus); ``documents`` and ``tokens``, each
        ``{split: count}``; ``by_group``, ``{group: {split: tokens}}``, where a group is the part of a document id
        before its first ``:`` (``stdlib``, a distribution's name, ``pydoc``); ``tokenize_s``, the wall time of
        the counting that wrote the cache.

    Raises:
        TypeError: the tokenizer is not a fast tokenizer.
        ValueError: an unknown source, or ``batch_size < 1``.
    """
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} is not allowed: use a positive integer")
    corpus = Corpus(source)
    tok = _tokenizer_digest(tokenizer)
    fingerprint = corpus.fingerprint()
    key = hashlib.sha256(f"{TOKEN_COUNT_VERSION}|{fingerprint}|{tok}".encode()).hexdigest()[:20]
    path = cache_dir("corpus") / f"tokens-{key}.json"
    try:
        data = load_json(path, checksum=True)
        if data["key"] == key:
            return data["counts"]
    except (OSError, CacheCorruptError, KeyError, TypeError):
        pass
    t0 = time.perf_counter()
    docs = corpus.documents()
    counts = {"source": source, "fingerprint": fingerprint, "documents": dict.fromkeys(CORPUS_SPLITS, 0),
              "tokens": dict.fromkeys(CORPUS_SPLITS, 0), "by_group": {}}
    for start in range(0, len(docs), batch_size):
        batch = docs[start:start + batch_size]
        lengths = map(len, tokenizer([d.text for d in batch], add_special_tokens=False)["input_ids"])
        for d, n in zip(batch, lengths):
            split = split_of(d.doc_id)
            group = counts["by_group"].setdefault(d.doc_id.split(":", 1)[0], dict.fromkeys(CORPUS_SPLITS, 0))
            counts["documents"][split] += 1
            counts["tokens"][split] += n
            group[split] += n
    counts["tokenize_s"] = round(time.perf_counter() - t0, 1)
    try:
        save_json(path, {"key": key, "counts": counts}, checksum=True)
    except OSError as exc:
        warnings.warn(f"could not write the token counts {path.name!r} in $ATOMSNB_CACHE/corpus "
                      f"({exc.strerror or exc}); they are counted again next time", RuntimeWarning, stacklevel=2)
    return counts
