"""Chapter 4's ledger (atomsnb.layer_ledger): a parameter file's models run layer by layer into results/layers/, rows
with provenance, read back as current until the model changes, and the paper-model verdicts say where they come from."""

from __future__ import annotations

import pandas as pd
import pytest
import yaml

import atomsnb.ledger as ledger_mod
from atomsnb import grid, layer_ledger, verdicts
from atomsnb.fingerprints import directory_fingerprint
from atomsnb.ledger import Ledger
from tiny_models import save_tiny


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    save_tiny("llama", root / "tiny")
    return root


def test_a_params_file_runs_into_the_ledger_and_is_read_back(tiny_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tiny_dir)  # a relative model directory: a committed row names no machine path
    params = tmp_path / "tiny.yaml"
    params.write_text(yaml.safe_dump({"models": ["tiny"], "layers": [[1, 2]], "n_fit_tokens": 1000,
                                      "n_train_tokens": 800, "n_eval_tokens": 300, "n_steps": 20, "batch_size": 128,
                                      "device": "cpu"}))
    assert layer_ledger.main(["-f", str(params), "--ledger", str(tmp_path), "--dry-run"]) == 0
    assert "2 layers of ['tiny']" in capsys.readouterr().out
    assert layer_ledger.main(["-f", str(params), "--ledger", str(tmp_path), "--threads", "1"]) == 0
    ledger = Ledger("layers", root=tmp_path, refresh=layer_ledger.refresh_command(str(params)))
    rows, evidence = layer_ledger.read_layers(ledger)
    assert sorted(rows["layer"]) == [1, 2] and "code" not in rows.columns.str.replace("p_", "")
    prov = rows["provenance"].iloc[0]
    assert prov["entry"] == "atomsnb.grid:layer_point" and prov["model_sha256"] == directory_fingerprint("tiny")
    assert evidence.startswith("ledger: commit") and "CPU cores" in evidence
    # a second run finds every row current and computes nothing
    capsys.readouterr()
    assert layer_ledger.main(["-f", str(params), "--ledger", str(tmp_path), "--threads", "1"]) == 0
    assert "0 stale rows removed" in capsys.readouterr().out
    # a dry run lists what a run would do and deletes nothing, stale rows included (it once deleted them)
    files = sorted(p.name for p in ledger.dir.glob("*.json"))
    assert layer_ledger.main(["-f", str(params), "--ledger", str(tmp_path), "--dry-run"]) == 0
    assert "2 done, 0 stale" in capsys.readouterr().out
    import atomsnb.ledger as ledger_mod
    with monkeypatch.context() as m:
        m.setattr(ledger_mod, "model_hash", lambda model: "ef" * 32)  # the model changed: both rows stale
        assert layer_ledger.main(["-f", str(params), "--ledger", str(tmp_path), "--dry-run"]) == 0
        out = capsys.readouterr().out
        assert "0 done, 2 stale (a run recomputes them), 0 to run" in out and out.count("  stale  ") == 2, out
        assert sorted(p.name for p in ledger.dir.glob("*.json")) == files
    # the rows as chapter 4 shows them: "ours (ledger: ...)" for a model this build did not run
    table = grid.paper_table(rows).assign(model="google/gemma-2-2b")
    shown = grid.compare_with_paper(table.iloc[:0], ledger=table, evidence=evidence)
    assert f"ours ({evidence})" in set(shown["source"])
    assert "make layers-ledger PARAMS=params/gemma-2-9b.yaml" in set(shown.get("command", pd.Series()).dropna())
    vs = verdicts.check_layers_paper_models(None, ledger_table=table, evidence=evidence)
    assert vs[0].evidence == evidence and vs[0].verdict != "not run here" and vs[1].verdict == "not run here"
    with pytest.raises(ValueError, match="needs its evidence"):
        verdicts.check_layers_paper_models(None, ledger_table=table)
    # the model changed: every row stale, none used, and the next run recomputes them
    monkeypatch.setattr(ledger_mod, "model_hash", lambda model: "ef" * 32)
    stale_rows, stale_evidence = layer_ledger.read_layers(ledger)
    assert stale_rows.empty and stale_evidence is None
    assert ledger.drop_stale({k for k in rows["key"]}) == 2 and not ledger.exists()


def test_a_bad_params_file_fails_before_any_work(tmp_path):
    params = tmp_path / "bad.yaml"
    params.write_text(yaml.safe_dump({"models": ["smollm2-135m", "gemma3-270m"], "layers": [[1]]}))
    with pytest.raises(ValueError, match="one list .or None. per model: 2 models, 1 lists"):
        layer_ledger.main(["-f", str(params), "--ledger", str(tmp_path)])
    params.write_text(yaml.safe_dump({"models": "smollm2-135m"}))
    with pytest.raises(ValueError, match="models='smollm2-135m' is not allowed"):
        layer_ledger.main(["-f", str(params), "--ledger", str(tmp_path)])
    assert not (tmp_path / "layers").exists()
