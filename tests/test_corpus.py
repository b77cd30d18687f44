"""The offline corpus: deterministic, disjoint splits."""

import os

import pytest

from atomsnb.corpus import CORPUS_SPLITS, Corpus, split_of


def test_docstring_corpus_splits_are_disjoint_and_cover():
    c = Corpus("docstrings")
    ids = {s: {d.doc_id for d in c.documents(s)} for s in CORPUS_SPLITS}
    assert all(ids.values())
    assert not (ids["train"] & ids["fit"]) and not (ids["fit"] & ids["eval"]) and not (ids["train"] & ids["eval"])
    total = len(c.documents())
    assert sum(map(len, ids.values())) == total
    assert 0.75 < len(ids["train"]) / total < 0.85
    assert sum(len(t) for t in c.texts()) > 1_000_000  # enough text to train the default model


def test_split_is_a_stable_hash():
    assert split_of("stdlib:json/__init__.py::dumps") == split_of("stdlib:json/__init__.py::dumps")
    assert {split_of(f"doc{i}") for i in range(200)} == set(CORPUS_SPLITS)


def test_fingerprint_stable_and_split_specific():
    c = Corpus("docstrings")
    assert c.fingerprint("fit") == Corpus("docstrings").fingerprint("fit")
    assert c.fingerprint("fit") != c.fingerprint("eval")


def test_other_domain_has_no_docstrings():
    docs = Corpus("stdlib-code").documents("eval")
    assert docs and all('"""' not in d.text[:200] for d in docs[:200])


def test_bad_sources():
    with pytest.raises(ValueError, match="unknown corpus source 'wikipedia'"):
        Corpus("wikipedia")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Corpus("file:/no/such/file.txt").documents()
    with pytest.raises(ValueError, match="split must be one of"):
        Corpus().documents("test")


def test_pydoc_topics_is_prose_split_by_section_with_stable_ids():
    from pydoc_data.topics import topics

    c = Corpus("pydoc-topics")
    docs = c.documents()
    ids = [d.doc_id for d in docs]
    assert len(ids) == len(set(ids)) and len(docs) > len(topics)  # one document per section
    assert all(i.startswith("pydoc:") for i in ids)
    # every topic's text is covered: its sections joined give back the topic (modulo the whitespace stripped at cuts)
    for topic in ("assert", "compound", "specialnames"):
        joined = "".join(d.text for d in docs if d.doc_id.startswith(f"pydoc:{topic}::"))
        assert "".join(topics[topic].split()) == "".join(joined.split())
    by_id = {d.doc_id: d.text for d in docs}
    exc = by_id['pydoc:compound::Compound statements/The "try" statement/"except" clause']
    assert exc.startswith('"except" clause\n---------------')
    # prose, not code: most lines are sentences
    words = sum(len(d.text.split()) for d in docs)
    assert words > 50_000
    assert Corpus("pydoc-topics").fingerprint("eval") == c.fingerprint("eval")
    assert {s: len(c.documents(s)) for s in CORPUS_SPLITS} == {s: sum(1 for i in ids if split_of(i) == s) for s in CORPUS_SPLITS}


def test_file_corpus_errors_name_the_file(tmp_path):
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("Caf\xe9 au lait, enough text for a document.\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.txt.*not UTF-8"):
        Corpus(f"file:{latin}").documents()
    with pytest.raises(IsADirectoryError, match=rf"{tmp_path.name}'? is a directory"):
        Corpus(f"file:{tmp_path}")


def test_parsed_sources_are_cached_and_a_changed_file_is_parsed_again(tmp_path):
    from atomsnb import corpus as cmod

    root = tmp_path / "lib"
    (root / "pkg").mkdir(parents=True)
    mod = root / "pkg" / "m.py"
    mod.write_text('def f():\n    """First version of a docstring."""\n')
    calls = []

    def build():  # an independent parse: ast on the file as it is now
        import ast

        calls.append(1)
        return (cmod.Document("x", ast.get_docstring(ast.parse(mod.read_text()).body[0])),)

    roots = [("t", root)]
    assert cmod._cached_documents("t", roots, build)[0].text == "First version of a docstring."
    assert cmod._cached_documents("t", roots, build)[0].text == "First version of a docstring." and len(calls) == 1
    mod.write_text('def f():\n    """Second version, longer than the first."""\n')
    assert cmod._cached_documents("t", roots, build)[0].text == "Second version, longer than the first."
    assert len(calls) == 2
    for f in cmod.cache_dir("corpus").glob("t-*.json"):
        f.write_text('{"key": ')  # damaged: rebuilt, not used
    assert cmod._cached_documents("t", roots, build)[0].text == "Second version, longer than the first."
    assert len(calls) == 3


# --- the site sources, on a tiny fake site-packages tree ------------------------------------------------------------

def _dist(site, name, version, requires=(), files=None):
    """Install a fake distribution: its files and a ``.dist-info`` with METADATA and RECORD."""
    files = files or {}
    for rel, text in files.items():
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_text(text)
    info = site / f"{name}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\n" f"Name: {name}\nVersion: {version}\n"
                                   + "".join(f"Requires-Dist: {r}\n" for r in requires))
    (info / "RECORD").write_text("".join(f"{rel},,\n" for rel in [*files, f"{info.name}/METADATA", f"{info.name}/RECORD"]))


_ALPHA = {
    "alpha/__init__.py": '"""Alpha: a package of the fake site, with a module docstring."""\n',
    "alpha/core.py": ('"""Core of alpha, where the things are."""\n\nimport functools\n\n\n'
                      '@functools.lru_cache\ndef helper(x):\n    """Return x unchanged; a helper of alpha."""\n    return x  # same\n\n\n'
                      'class Thing:\n    """A thing with one method, documented."""\n\n'
                      '    def method(self):\n        """The method of the thing, documented too."""\n        return 1\n'),
    "alpha/tests/test_core.py": 'def test_it():\n    """A test docstring that the corpus leaves out."""\n',
    "alpha/test_more.py": 'def test_more():\n    """Another test docstring that is left out."""\n',
}


def _site(tmp_path, monkeypatch, *, with_beta=True, requires=("alpha", "beta[fast]", "gamma; extra == 'docs'")):
    from atomsnb import corpus as cmod

    site = tmp_path / "site"
    _dist(site, "app", "1.0", requires if with_beta else ("alpha",))
    _dist(site, "alpha", "2.0", files=_ALPHA)
    if with_beta:
        _dist(site, "Beta", "0.1", ("delta; extra == 'fast'",),
              {"beta.py": '"""Beta, one module, enough text."""\n\nimport functools\n\n\n@functools.lru_cache\ndef helper(x):\n    """Return x unchanged; a helper of alpha."""\n'
                          '    return x  # same\n'})
        _dist(site, "delta", "3.0", files={f"delta/m{i}.py": f'def f{i}():\n    """Function number {i} of delta, documented."""\n'
                                           for i in range(60)})
    _dist(site, "gamma", "1.0", files={"gamma.py": '"""Gamma is only an optional extra of app."""\n'})
    spec = cmod._SiteSpec(roots=("app",), paths=(str(site),), stdlib=False)
    monkeypatch.setattr(cmod, "_site_spec", lambda: spec)
    cmod._site_index.cache_clear()
    return site, spec


def test_site_distributions_follow_requirements_markers_and_extras(tmp_path, monkeypatch):
    from atomsnb.corpus import site_distributions

    site, spec = _site(tmp_path, monkeypatch)
    found, missing = site_distributions(spec.roots, spec.paths)
    assert [(n, v) for n, v, _ in found] == [("alpha", "2.0"), ("beta", "0.1"), ("delta", "3.0")]  # not gamma, not app
    assert missing == []
    _dist(site, "app2", "1.0", ("alpha", "epsilon>=1"))
    assert site_distributions(("app2",), spec.paths)[1] == ["epsilon"]
    with pytest.raises(LookupError, match="'nothere' is not installed"):
        site_distributions(("nothere",), spec.paths)


def test_site_docstrings_ids_are_stable_and_splits_disjoint(tmp_path, monkeypatch):
    import hashlib

    from atomsnb import corpus as cmod

    _site(tmp_path, monkeypatch)
    c = Corpus("site-docstrings")
    docs = c.documents()
    ids = [d.doc_id for d in docs]
    assert ids[:4] == ["alpha:alpha/__init__.py::<module>", "alpha:alpha/core.py::<module>", "alpha:alpha/core.py::helper",
                       "alpha:alpha/core.py::Thing"]
    assert "alpha:alpha/core.py::Thing.method" in ids and not any("test" in i for i in ids)
    assert not any(i.startswith("gamma:") for i in ids)
    # the duplicate docstring of beta.helper is kept once, at its first id (alpha's)
    assert "beta:beta.py::helper" not in ids and len({d.text for d in docs}) == len(docs)
    # a second build (index removed, in-process cache cleared) gives the same ids in the same order
    for f in cmod.cache_dir("corpus").glob("site-docstrings-*.json"):
        f.unlink()
    cmod._site_index.cache_clear()
    assert [d.doc_id for d in Corpus("site-docstrings").documents()] == ids
    # splits: disjoint, covering, each the SHA-1 bucket of the id (80/10/10)
    by_split = {s: [d.doc_id for d in c.documents(s)] for s in CORPUS_SPLITS}
    assert sum(map(len, by_split.values())) == len(ids) and set().union(*map(set, by_split.values())) == set(ids)
    for s, members in by_split.items():
        for i in members:
            bucket = int(hashlib.sha1(i.encode()).hexdigest()[:8], 16) % 100
            assert s == ("train" if bucket < 80 else "fit" if bucket < 90 else "eval")
    assert all(by_split.values())  # 60 delta documents reach every split


def test_a_documents_split_does_not_depend_on_other_packages(tmp_path, monkeypatch):
    _site(tmp_path / "small", monkeypatch, with_beta=False)
    alone = {s: [(d.doc_id, d.text) for d in Corpus("site-docstrings").documents(s)] for s in CORPUS_SPLITS}
    assert {i.split(":")[0] for docs in alone.values() for i, _ in docs} == {"alpha"}
    _site(tmp_path / "big", monkeypatch)
    together = {s: [(i, t) for i, t in ((d.doc_id, d.text) for d in Corpus("site-docstrings").documents(s))
                    if i.startswith("alpha:")] for s in CORPUS_SPLITS}
    assert together == alone


def test_site_fingerprint_changes_with_a_document_and_the_index_is_cached(tmp_path, monkeypatch):
    from atomsnb import corpus as cmod

    private = os.environ["ATOMSNB_CACHE"]
    site, _ = _site(tmp_path, monkeypatch)
    c = Corpus("site-docstrings")
    before = {s: c.fingerprint(s) for s in (*CORPUS_SPLITS, None)}
    index = list(cmod.cache_dir("corpus").glob("site-docstrings-*.json"))
    assert len(index) == 1 and str(tmp_path) not in index[0].read_text()  # no machine path in the index
    # read back from the index: no parse (a context of its own: undoing the test's monkeypatch would also undo
    # the private ATOMSNB_CACHE and point the rest of the test at the shared cache)
    cmod._site_index.cache_clear()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cmod, "_build_site_documents", lambda *a: pytest.fail("rebuilt although the index is valid"))
        assert {s: Corpus("site-docstrings").fingerprint(s) for s in (*CORPUS_SPLITS, None)} == before
    # one docstring changes: the fingerprint of its split and of the whole corpus change, the others' do not
    core = site / "alpha" / "core.py"
    core.write_text(core.read_text().replace("A thing with one method", "A thing with a single method"))
    cmod._site_index.cache_clear()
    after = {s: Corpus("site-docstrings").fingerprint(s) for s in (*CORPUS_SPLITS, None)}
    changed = split_of("alpha:alpha/core.py::Thing")
    assert after[changed] != before[changed] and after[None] != before[None]
    assert all(after[s] == before[s] for s in CORPUS_SPLITS if s != changed)
    # a damaged index is rebuilt, not used
    assert os.environ["ATOMSNB_CACHE"] == private  # never damage an index of the shared cache
    for f in cmod.cache_dir("corpus").glob("site-docstrings-*.json"):
        f.write_text(f.read_text().replace("single", "lonely"))
    cmod._site_index.cache_clear()
    assert Corpus("site-docstrings").fingerprint() == after[None]


def test_python_source_is_top_level_code_as_written(tmp_path, monkeypatch):
    _site(tmp_path, monkeypatch)
    by_id = {d.doc_id: d.text for d in Corpus("python-source").documents()}
    assert by_id["alpha:alpha/core.py::helper"].startswith("@functools.lru_cache\ndef helper(x):")
    assert "# same" in by_id["alpha:alpha/core.py::helper"]  # comments kept
    assert by_id["alpha:alpha/core.py::Thing"].endswith("return 1") and "alpha:alpha/core.py::Thing.method" not in by_id
    assert "beta:beta.py::helper" not in by_id  # the same code as alpha's helper: kept once


def test_bad_sources_name_the_allowed_ones():
    from atomsnb._validate import check_corpus
    from atomsnb.corpus import site_index

    with pytest.raises(ValueError, match="unknown corpus source 'site-doc'.*'site-docstrings'.*'python-source'"):
        Corpus("site-doc")
    with pytest.raises(ValueError, match="corpus='wikipedia' is not a corpus source.*'site-docstrings'.*'python-source'"):
        check_corpus("wikipedia")
    with pytest.raises(ValueError, match="source='docstrings' is not a site source.*'site-docstrings', 'python-source'"):
        site_index("docstrings")
    assert check_corpus("python-source") == "python-source"


def test_token_counts_match_an_independent_count_and_are_cached(tmp_path, monkeypatch):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from atomsnb import corpus as cmod

    _site(tmp_path, monkeypatch)
    backend = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]")
    counts = cmod.token_counts("site-docstrings", tok, batch_size=7)
    c = Corpus("site-docstrings")
    assert counts["tokens"] == {s: sum(len(t.split()) for t in c.texts(s)) for s in CORPUS_SPLITS}
    assert counts["documents"] == {s: len(c.documents(s)) for s in CORPUS_SPLITS}
    assert sum(g["train"] for g in counts["by_group"].values()) == counts["tokens"]["train"]
    assert set(counts["by_group"]) == {"alpha", "beta", "delta"} and counts["fingerprint"] == c.fingerprint()
    monkeypatch.setattr(tok, "__call__", None, raising=False)
    assert cmod.token_counts("site-docstrings", tok) == counts  # from the cache: the tokenizer is not called
    with pytest.raises(TypeError, match="fast"):
        cmod.token_counts("site-docstrings", object())


@pytest.mark.slow
@pytest.mark.shared_cache
def test_python_source_is_large_enough_for_the_scaling_study():
    """The real corpus, from its committed counts (``results/corpus/token_counts.json``, ``make corpus-counts``; counting
    it here would take over ten minutes): when they are current for this installation (the same distributions and
    versions, Python, extraction and counting code, tokenizers), at least 20 M SmolLM2 tokens, 2^23 of them in
    ``train`` (the scaling study's largest run at layer 1), the big packages in it, and no machine path recorded."""
    import sys
    import sysconfig
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
    import corpus_counts

    rec, stale = corpus_counts.load()
    assert rec is not None and stale == [], f"the committed corpus counts are stale here ({stale}): make corpus-counts"
    counts, record = rec["counts"]["python-source"]["smollm2-135m"], rec["site_records"]["python-source"]
    assert sum(counts["tokens"].values()) >= 20_000_000 and counts["tokens"]["train"] >= 2**23
    assert sum(counts["documents"].values()) == record["n_documents"]
    machine = (sysconfig.get_paths()["purelib"], sysconfig.get_paths()["stdlib"])
    assert not any(p in str(rec) for p in machine)
    assert {"stdlib", "numpy", "torch", "transformers"} <= {name for name, _ in record["distributions"]}
