"""The offline corpus: deterministic, disjoint splits."""

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
