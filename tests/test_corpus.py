"""The offline corpus: deterministic, disjoint splits."""

import pytest

from atomsnb.corpus import SPLITS, Corpus, split_of


def test_docstring_corpus_splits_are_disjoint_and_cover():
    c = Corpus("docstrings")
    ids = {s: {d.doc_id for d in c.documents(s)} for s in SPLITS}
    assert all(ids.values())
    assert not (ids["train"] & ids["fit"]) and not (ids["fit"] & ids["eval"]) and not (ids["train"] & ids["eval"])
    total = len(c.documents())
    assert sum(map(len, ids.values())) == total
    assert 0.75 < len(ids["train"]) / total < 0.85
    assert sum(len(t) for t in c.texts()) > 1_000_000  # enough text to train the default model


def test_split_is_a_stable_hash():
    assert split_of("stdlib:json/__init__.py::dumps") == split_of("stdlib:json/__init__.py::dumps")
    assert {split_of(f"doc{i}") for i in range(200)} == set(SPLITS)


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
