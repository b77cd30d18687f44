"""The results ledger: rows with provenance, read back, marked stale when the code / model / corpus moves, damage
detected, no absolute path written."""

import json

import pytest

import atomsnb.ledger as ledger_mod
from atomsnb.io import CacheCorruptError
from atomsnb.ledger import Ledger, check_no_absolute_paths, provenance
from atomsnb.metrics import r2_aip
from atomsnb.runner import GridPoint, ResultsStoreWarning

MODEL_HASH = "ab" * 32


@pytest.fixture
def ledger(tmp_path, monkeypatch):
    # the model card needs a converted model; its hash is a stand-in here (the code and corpus are real)
    monkeypatch.setattr(ledger_mod, "model_hash", lambda model: MODEL_HASH)
    monkeypatch.setattr(ledger_mod, "_LOADED", {})  # a fresh process: no code loaded yet
    return Ledger("study", root=tmp_path / "results")


def _point(**params):
    return GridPoint("smollm2-135m", 1, 1024, 2304, 0, {"corpus": "docstrings", "device": "cpu", **params})


def _write(ledger, point, hours=1.5):
    row = {"status": "ok", "error": None, "heldout_r2_aip": 0.87, "wall_time_s": hours * 3600,
           "provenance": provenance(r2_aip, point)}
    return ledger.store.write(point, row)


def test_a_row_reads_back_current_then_stale_when_the_code_changes(ledger, monkeypatch):
    p = _point()
    _write(ledger, p)
    df = ledger.read()
    assert len(df) == 1 and not df["stale"].iloc[0] and df["refresh"].iloc[0] == ""
    assert df["heldout_r2_aip"].iloc[0] == 0.87 and df["n_train"].iloc[0] == 1024
    prov = df["provenance"].iloc[0]
    assert set(prov) == {*ledger_mod.PROVENANCE_KEYS, "code_scope"} and prov["entry"] == "atomsnb.metrics:r2_aip"
    assert prov["code_scope"] == "functions"
    assert prov["model_sha256"] == MODEL_HASH and len(prov["code"]) == 16
    ev = ledger.evidence(df)
    assert ev.startswith("ledger: commit") and "1.5 h on" in ev and "stale" not in ev

    real = ledger_mod.reach_fingerprint

    class Moved:  # the fingerprint of the same function after an edit of code it reaches
        def __init__(self, fp):
            self.digest = "f" * 64 if fp.digest[0] != "f" else "0" * 64

    monkeypatch.setattr(ledger_mod, "reach_fingerprint", lambda *e, **k: Moved(real(*e, **k)))
    df = ledger.read()
    assert df["stale"].iloc[0] and "code" in df["stale_because"].iloc[0] and df["refresh"].iloc[0] == "make scaling"
    assert "1 of 1 rows stale (refresh: make scaling)" in ledger.evidence(df)


def test_a_row_is_stale_when_the_model_or_the_corpus_changes(ledger, monkeypatch):
    _write(ledger, _point())
    monkeypatch.setattr(ledger_mod, "model_hash", lambda model: "cd" * 32)
    assert "model" in ledger.read()["stale_because"].iloc[0]
    monkeypatch.setattr(ledger_mod, "model_hash", lambda model: MODEL_HASH)
    monkeypatch.setattr(ledger_mod, "corpus_fingerprint", lambda source: "0" * 16)
    df = ledger.read()
    assert df["stale"].iloc[0] and df["stale_because"].iloc[0] == "the corpus changed"


def test_a_damaged_row_is_detected(ledger):
    path = _write(ledger, _point())
    body = json.loads(path.read_text())
    body["content"]["heldout_r2_aip"] = 0.999  # a hand-edited number
    path.write_text(json.dumps(body))
    with pytest.raises(CacheCorruptError, match="fails its checksum"):
        ledger.read()
    with pytest.warns(ResultsStoreWarning, match=path.name):
        assert ledger.read(errors="warn").empty


def test_no_absolute_path_in_a_row(ledger, tmp_path):
    path = _write(ledger, _point())
    text = path.read_text()
    for forbidden in (str(tmp_path), "/home/", "/work/", "/tmp/"):
        assert forbidden not in text
    with pytest.raises(ValueError, match="absolute path"):
        provenance(r2_aip, _point(corpus=f"file:{tmp_path}/text.txt"))
    with pytest.raises(ValueError, match=r"\['a'\]\[1\]"):
        check_no_absolute_paths({"a": ["ok", "/home/me/x"]})


@pytest.mark.parametrize("path", ["/check/work/main/text.txt", "file:/check/x/t.txt", "file:/t.txt", "/t.txt",
                                  "x=/opt2/a/b", "~/corpus.txt", "C:\\corpus.txt"])
def test_any_absolute_path_is_refused_not_a_list_of_usual_directories(path):
    """CI's checkout lives in /check: a check that knew /home, /work and /tmp let its paths through."""
    with pytest.raises(ValueError, match="absolute path"):
        check_no_absolute_paths({"corpus": path})


@pytest.mark.parametrize("text", ["HuggingFaceTB/SmolLM2-135M", "hf:wikitext/wikitext-2-raw-v1", "https://h.org/a/b",
                                  "file:corpus/x.txt", "blocks.1.hook_resid_post", "cuda:0", "tokens/s", "a / b"])
def test_names_that_are_no_paths_pass(text):
    check_no_absolute_paths({"x": text})


def test_evidence_counts_minutes_below_six_minutes(ledger):
    _write(ledger, _point(), hours=0.05)
    assert ", 3 min on " in ledger.evidence()


def test_evidence_of_an_empty_ledger_names_the_command(ledger):
    assert ledger.evidence() == "ledger: no rows (command: make scaling)"
    with pytest.raises(ValueError, match="one folder name"):
        Ledger("../x")


def test_model_hash_is_the_models_content_not_the_cards_bytes(monkeypatch):
    """Two conversions of one GGUF differ in their cards' wall times but not in weights, config or tokenizer: the same
    hash. A changed weights file gives another; the docstring GPT-2's card gives its weights' hash."""
    files = {"model.safetensors": "a" * 64, "config.json": "b" * 64, "tokenizer.json": "c" * 64,
             "tokenizer_config.json": "d" * 64}
    cards = {"one": {"files": files, "conversion_time_s": 20.1}, "two": {"files": dict(files), "conversion_time_s": 61.0},
             "other": {"files": {**files, "model.safetensors": "e" * 64}},
             "flags": {"files": {**files, "tokenizer_config.json": "f" * 64}},
             "gpt2": {"weights_sha256": "9" * 64}, "gpt2b": {"weights_sha256": "8" * 64}}
    monkeypatch.setattr(ledger_mod, "model_card", lambda model: cards[model])
    monkeypatch.setattr(ledger_mod, "REGISTERED_MODELS", tuple(cards))  # registered: hashed from their cards
    monkeypatch.setattr(ledger_mod, "canonical_name", lambda model: model)
    h = {m: ledger_mod.model_hash(m) for m in cards}
    assert h["one"] == h["two"] == h["flags"] and h["one"] != h["other"] and h["gpt2"] != h["gpt2b"]
    assert len(h["one"]) == 64 and h["gpt2"] != h["one"]


def test_a_code_edit_under_a_running_process_is_refused(ledger, monkeypatch):
    """A long run (make scaling) keeps computing with the code it loaded; if the files change under it, a row labelled
    with the new fingerprint would claim code that did not compute it: provenance refuses, naming both."""
    first = provenance(r2_aip, _point())
    real = ledger_mod.reach_fingerprint

    class Edited:
        def __init__(self, fp):
            self.digest = "e" * 64 if fp.digest[0] != "e" else "1" * 64

    assert provenance(r2_aip, _point(n_steps=2))["code"] == first["code"]  # unchanged: fine
    monkeypatch.setattr(ledger_mod, "reach_fingerprint", lambda *e, **k: Edited(real(*e, **k)))
    with pytest.raises(RuntimeError, match=f"fingerprint {first['code']} -> "):
        provenance(r2_aip, _point(n_steps=3))


def test_the_reader_table_is_narrow_and_says_which_rows_are_stale(ledger, monkeypatch):
    _write(ledger, _point(), hours=0.5)
    _write(ledger, GridPoint("smollm2-135m", 1, 4096, 2304, 1, {"corpus": "docstrings", "device": "cpu"}), hours=0.1)
    df = ledger.read()
    t = Ledger.reader_table(df)
    assert list(t.columns) == ["minutes", "commit", "date", "state"] and list(t.index.names)[2:4] == ["|M|", "|D|"]
    assert sorted(t["minutes"]) == [6.0, 30.0] and set(t["state"]) == {"current"}
    monkeypatch.setattr(ledger_mod, "model_hash", lambda model: "cd" * 32)
    assert all(s.startswith("stale: ") and "model" in s for s in Ledger.reader_table(ledger.read())["state"])
    with pytest.raises(ValueError, match="lack"):
        Ledger.reader_table(df.drop(columns=["provenance"]))


# ------------------------------------------------------------------------------------ rows labelled by module
def _as_module_scope(path, code=None):
    """Rewrite a row as a row of before ``code_scope`` existed: module-scope ``code`` (the current one, or ``code``)."""
    from atomsnb.codeprint import code_fingerprint
    from atomsnb.io import load_json, save_json

    row = load_json(path, checksum=True)
    prov = {k: v for k, v in row["provenance"].items() if k != "code_scope"}
    prov["code"] = code or code_fingerprint(r2_aip).digest[:16]
    save_json(path, {**row, "provenance": prov}, checksum=True)


def test_a_row_labelled_by_module_is_checked_by_module_then_narrowed_while_its_code_is_current(ledger, monkeypatch):
    current, moved = _write(ledger, _point()), _write(ledger, _point(n_steps=2))
    _as_module_scope(current)
    _as_module_scope(moved, code="0" * 16)  # computed by code that has moved on since
    df = ledger.read().set_index("key")
    assert not df.loc[current.stem, "stale"] and df.loc[moved.stem, "stale"]  # each checked by module, as written
    before = {p: p.read_bytes() for p in (current, moved)}
    assert ledger.narrow_code(dry_run=True) == {current.stem: "to narrow", moved.stem: "stale: left as it is"}
    assert all(p.read_bytes() == b for p, b in before.items())  # a dry run writes nothing
    assert ledger.narrow_code() == {current.stem: "narrowed", moved.stem: "stale: left as it is"}
    assert moved.read_bytes() == before[moved]
    prov = ledger.read().set_index("key").loc[current.stem, "provenance"]
    from atomsnb.codeprint import code_fingerprint
    from atomsnb.codereach import reach_fingerprint

    assert prov["code_scope"] == "functions" and prov["code"] == ledger_mod.row_code(r2_aip)
    assert prov["code_by_module"] == code_fingerprint(r2_aip).digest[:16] and prov["code"] != prov["code_by_module"]
    df = ledger.read().set_index("key")
    assert not df.loc[current.stem, "stale"] and df.loc[moved.stem, "stale"]
    assert ledger.narrow_code()[current.stem] == "already narrow"
    # a narrowed row answers to the function scope: an edit of its module it never runs stales it no more
    real = ledger_mod.code_fingerprint
    monkeypatch.setattr(ledger_mod, "code_fingerprint", lambda *e: type("M", (), {"digest": "f" * 64})())
    assert not ledger.read().set_index("key").loc[current.stem, "stale"]
    monkeypatch.setattr(ledger_mod, "code_fingerprint", real)


def test_an_unknown_code_scope_is_stale(ledger):
    from atomsnb.io import load_json, save_json

    path = _write(ledger, _point())
    row = load_json(path, checksum=True)
    save_json(path, {**row, "provenance": {**row["provenance"], "code_scope": "lines"}}, checksum=True)
    assert "code_scope 'lines' is unknown" in ledger.read()["stale_because"].iloc[0]
    with pytest.raises(ValueError, match="code_scope must be"):
        Ledger.current("atomsnb.metrics:r2_aip", "smollm2-135m", "docstrings", "lines")
