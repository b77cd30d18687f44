"""The scaling study: the power-law fit recovers known parameters, the stopping rule, the points, one real point."""

import dataclasses
import json
import math
import zipfile

import numpy as np
import pandas as pd
import pytest
import yaml

import atomsnb.ledger as ledger_mod
import atomsnb.scaling as scaling_mod
from atomsnb.io import CacheCorruptError
from atomsnb.ledger import Ledger
from atomsnb.runner import run_grid
from atomsnb.scaling import (ScalingStudyConfig, describe_fit, fit_power_law, fit_table, scaling_point,
                             stopped_improving, study_reading)
from tiny_models import save_tiny


def _synthetic(a, alpha, c, noise, seed=0):
    m = 2.0 ** np.arange(10, 24)
    rng = np.random.default_rng(seed)
    return m, a * m ** (-alpha) + c + noise * rng.standard_normal(len(m))


def test_fit_recovers_a_known_power_law_with_a_floor_and_says_it_levels_off():
    m, y = _synthetic(3.0, 0.4, 0.02, 2e-4)
    f = fit_power_law(m, y, n_boot=300)
    assert f.alpha == pytest.approx(0.4, abs=0.03) and f.c == pytest.approx(0.02, abs=0.002)
    assert f.a == pytest.approx(3.0, rel=0.3)
    assert f.ci["c"][0] < f.c < f.ci["c"][1] and f.ci["ceiling"] == pytest.approx((0.98, 0.98), abs=0.002)
    # the 95 % intervals cover the true values in most noisy repetitions (not only in one)
    covered = {"alpha": 0, "c": 0}
    for seed in range(1, 11):
        g = fit_power_law(*_synthetic(3.0, 0.4, 0.02, 2e-4, seed=seed), n_boot=100, seed=seed)
        covered["alpha"] += g.ci["alpha"][0] <= 0.4 <= g.ci["alpha"][1]
        covered["c"] += g.ci["c"][0] <= 0.02 <= g.ci["c"][1]
    assert min(covered.values()) >= 7, covered
    assert math.isinf(f.m_reach)  # a floor of 0.02 never lets R^2 reach 0.99
    words = describe_fit(f, "held-out R²")
    assert "levels off at 0.98" in words and "not within the fit" in words


def _brute_force_sse(m, y, alpha):
    """The constrained least squares at one alpha by enumeration: the unconstrained numpy lstsq solution if
    a, c >= 0, else the best of the two boundaries (a = 0 or c = 0), each solved by its own 1-D least squares."""
    z = (m / m.min()) ** (-alpha)
    (a, c), *_ = np.linalg.lstsq(np.stack([z, np.ones_like(z)], 1), y, rcond=None)
    cands = [(a, c)] if a >= 0 and c >= 0 else []
    cands += [(0.0, max(y.mean(), 0.0)), (max(z @ y / (z @ z), 0.0), 0.0)]
    return min(float(((ca * z + cc - y) ** 2).sum()) for ca, cc in cands)


@pytest.mark.parametrize("seed", range(6))
def test_the_vectorised_profile_fit_matches_a_brute_force_search(seed):
    """_fit_once solves every alpha of its grid at once; a loop over a finer alpha grid with numpy's lstsq per alpha
    finds no smaller sum of squares, and the returned (a, c) reproduce the returned sum of squares."""
    rng = np.random.default_rng(seed)
    m = 2.0 ** np.sort(rng.choice(np.arange(10, 24), size=6, replace=False))
    y = rng.uniform(0.5, 4) * (m / m.min()) ** (-rng.uniform(0.05, 1.5)) + [0.0, 0.01, 0.2][seed % 3]
    y = y + rng.normal(0, [1e-4, 1e-2, 5e-2][seed % 3], len(m))
    a, alpha, c, sse = scaling_mod._fit_once(m, y)
    assert a >= 0 and c >= 0
    assert float(((a * m ** (-alpha) + c - y) ** 2).sum()) == pytest.approx(sse, rel=1e-9, abs=1e-15)
    brute = min(_brute_force_sse(m, y, al) for al in np.geomspace(0.01, 3.0, 3000))
    assert sse <= brute * (1 + 1e-9) + 1e-15
    assert _brute_force_sse(m, y, alpha) == pytest.approx(sse, rel=1e-7, abs=1e-15)


def test_fit_without_a_floor_reaches_099_where_the_law_says():
    a, alpha = 2.0, 0.5
    m, y = _synthetic(a, alpha, 0.0, 1e-5)
    f = fit_power_law(m, y, n_boot=300)
    true_m = (a / 0.01) ** (1 / alpha)  # a m^-alpha = 0.01
    assert f.m_reach == pytest.approx(true_m, rel=0.1)
    lo, hi = f.ci["m_reach"]
    assert lo <= true_m <= hi
    words = describe_fit(f, "held-out R²")
    assert "reaches 0.99 at about 40K tokens" in words and "extrapolation" not in words
    with pytest.raises(ValueError, match="at least 4 distinct"):
        fit_power_law([1, 2, 3], [0.1, 0.05, 0.03])


def test_stopping_rule():
    assert not stopped_improving([0.5, 0.6, 0.7], patience=2, tol=1e-3)
    assert not stopped_improving([0.5, 0.6, 0.7, 0.8], patience=2, tol=1e-3)
    assert stopped_improving([0.5, 0.8, 0.8005, 0.7], patience=2, tol=1e-3)  # +0.0005 <= tol
    assert stopped_improving([0.5, 0.8, 0.7, 0.6], patience=2, tol=1e-3)  # falling (over-fitting) counts as stopped


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    save_tiny("llama", root / "tiny")
    return root


def test_points_cover_every_part_once_and_bad_studies_fail_before_work(tiny_dir, monkeypatch):
    monkeypatch.chdir(tiny_dir)
    cfg = ScalingStudyConfig(models=("tiny",), layers=(1, 2), m_values=((640, 800, 1000, 1200), (640, 900)),
                             d_multiples=(1, 4), seeds=(0, 1), l0_sweep=(1e-3, 3e-3, 1e-2))
    pts = cfg.points()
    per_layer = {l: [p for p in pts if p.layer == l] for l in {p.layer for p in pts}}
    # layer 1: 4 data + 1 capacity (H; 4H is the data point) + 1 seed + 2 x 2 sweep (3e-3 is the data point) = 10
    assert sorted(len(v) for v in per_layer.values()) == [8, 10]
    assert len({p.key for p in pts}) == len(pts)
    with pytest.raises(ValueError, match="one list of |M| per layer"):
        ScalingStudyConfig(models=("tiny",), layers=(1,), m_values=((640,), (640,))).points()
    with pytest.raises(ValueError, match=r"layers=\(1, 'top'\) is not allowed"):
        ScalingStudyConfig(models=("tiny",), layers=(1, "top")).points()
    with pytest.raises(ValueError, match="fit_split='eval' is not allowed"):
        ScalingStudyConfig(models=("tiny",), layers=(1,), m_values=((640, 800),), fit_split="eval").points()
    with pytest.raises(ValueError, match=r"the largest \|M\| 10000000 of m_values: corpus 'docstrings' split 'fit'"):
        ScalingStudyConfig(models=("tiny",), layers=(1,), m_values=((640, 10_000_000),)).points()
    assert len(ScalingStudyConfig(models=("tiny",), layers=(1,), m_values=((640, 10_000_000),)).points(
        check_corpus=False)) == 11
    with pytest.raises(ValueError, match=r"below 20 x d_model"):
        ScalingStudyConfig(models=("tiny",), layers=(1,), m_values=((100, 200),)).points()


def test_a_real_point_runs_into_the_ledger_with_its_learning_curve(tiny_dir, tmp_path, monkeypatch, one_thread):
    monkeypatch.chdir(tiny_dir)
    monkeypatch.setattr(ledger_mod, "model_hash", lambda model: "ab" * 32)  # a tiny model has no card
    cfg = ScalingStudyConfig(models=("tiny",), layers=(1,), m_values=((640, 800, 960, 1200),), d_multiples=(4,),
                             seeds=(0,), l0_sweep=(3e-3,), n_eval_tokens=400, n_train_eval=200, batch_size=128,
                             max_steps=40, eval_every=10, patience=2, warmup_steps=10, store_dtype="float32",
                             n_splice_tokens=256, export_largest=True)
    monkeypatch.setattr(scaling_mod, "ledger_root", lambda: tmp_path)  # the dictionary zips go beside the rows
    ledger = Ledger("scaling", root=tmp_path)
    df = run_grid(cfg.points(), scaling_point, ledger.store, progress=False)
    assert (df["status"] == "ok").all(), df.get("error")
    r = df.iloc[0]
    assert r["curve_steps"][0] == 10 and r["steps"] == r["curve_steps"][-1] <= 40
    assert r["epochs"] == pytest.approx(r["steps"] * 128 / r["n_train"])
    assert r["converged"] == stopped_improving(r["curve_r2"], 2, 1e-3)
    assert -1 < r["heldout_r2_aip"] <= 1 and 0 <= r["heldout_q_star"] <= 1
    assert np.isfinite(r["ce_loss_score"]) and r["ce_loss_score"] <= 1 and r["kl_div_score"] <= 1
    assert r["provenance"]["entry"] == "atomsnb.scaling_train:train_point"
    read = ledger.read()
    assert not read["stale"].any() and len(read) == 4

    # the largest |M|'s dictionary is a download: a SAELens zip whose card carries the row's held-out numbers
    downloads = scaling_mod.dictionary_downloads(read, ledger=ledger)
    largest = read.loc[read["n_train"].idxmax()]
    assert list(downloads) == [largest["key"]] and downloads[largest["key"]].parent == tmp_path / "scaling" / "dictionaries"
    with zipfile.ZipFile(downloads[largest["key"]]) as zf:
        card = json.loads(zf.read(next(n for n in zf.namelist() if n.endswith("model_card.json"))))
        assert {n.rsplit("/", 1)[1] for n in zf.namelist()} >= {"cfg.json", "sae_weights.safetensors"}
    assert card["metrics"]["r2_aip"] == pytest.approx(largest["heldout_r2_aip"]) and card["n_tokens"] == 1200
    assert card["layer"] == 1 and card["coefficients"] == {"l0_coefficient": 3e-3}
    downloads[largest["key"]].write_bytes(downloads[largest["key"]].read_bytes()[:-1] + b"x")  # damaged: refused
    with pytest.raises(CacheCorruptError, match="not the file its ledger row"):
        scaling_mod.dictionary_downloads(read, ledger=ledger)
    table, fits = fit_table(cfg.part(read, "data"), n_boot=50)
    assert list(table["metric"]) == ["held-out R² (AIP)", "held-out q*"] and len(table) == 2

    # what chapters 2 and 4 cite: words computed from these rows, the same fits, and stale rows never used
    params = tmp_path / "study.yaml"
    params.write_text(yaml.safe_dump({f.name: (list(map(list, v)) if f.name == "m_values" else
                                               list(v) if isinstance(v, tuple) else v)
                                      for f in dataclasses.fields(cfg) for v in [getattr(cfg, f.name)]}))
    reading = study_reading(str(params), ledger=ledger, n_boot=50)
    data = cfg.part(read, "data").sort_values("n_train")
    first, last = data.iloc[0], data.iloc[-1]
    assert reading.n_points == reading.n_current == 4 and reading.evidence == ledger.evidence(read)
    assert f"R² {first['heldout_r2_aip']:.3f} at 640 to {last['heldout_r2_aip']:.3f} at 1.2K tokens" in reading.sentence
    c = fits[("tiny", 1, "r2_aip")]
    assert f"fitted R² ceiling {c.ceiling:.3f}" in reading.sentence and "all 4 points" in reading.sentence
    held = pd.DataFrame({"family": ["atoms"], "r2_aip": [0.8], "q_star": [0.5], "l0": [12.0], "l0_coefficient": [3e-3],
                         "explained_variance": [0.9], "unit set": ["atoms"]})
    from atomsnb.verdicts import check_units_atoms_near_one

    v = check_units_atoms_near_one(held, model="tiny", at_scale=reading)
    assert v.verdict == "not reproduced" and v.interpretation.endswith("At scale: " + reading.sentence)
    with pytest.raises(TypeError, match="StudyReading"):
        check_units_atoms_near_one(held, model="tiny", at_scale=reading.sentence)
    monkeypatch.setattr(ledger_mod, "model_hash", lambda model: "cd" * 32)  # the model changed: every row stale
    stale = study_reading(str(params), ledger=ledger, n_boot=50)
    assert stale.n_current == 0 and "all 4 of its ledger rows are stale (refresh: make scaling)" in stale.sentence
    assert "R²" not in stale.sentence


def test_the_verdict_follows_the_fitted_ceilings_and_names_its_evidence():
    from atomsnb.verdicts import check_scaling_near_one

    capped = fit_power_law(*_synthetic(3.0, 0.4, 0.05, 2e-4), n_boot=100)  # levels off at 0.95
    free = fit_power_law(*_synthetic(2.0, 0.5, 0.0, 1e-5), n_boot=100)  # reaches 0.99
    ev = "ledger: commit abc1234, 3.2 h on 2 CPU cores"
    v = check_scaling_near_one({("m", 1, "r2_aip"): free, ("m", 1, "q_star"): free}, model="m", evidence=ev)
    assert v.verdict == "reproduced" and v.evidence == ev and f"evidence: {ev}" in str(v)
    v = check_scaling_near_one({("m", 1, "r2_aip"): capped, ("m", 1, "q_star"): free, ("m", 9, "r2_aip"): free},
                               model="m", evidence=ev)
    assert v.verdict == "partly reproduced" and "m layer 1: R^2" in v.interpretation
    v = check_scaling_near_one({("m", 1, "r2_aip"): capped}, model="m", evidence=ev)
    assert v.verdict == "not reproduced" and "ceiling 0.95" in v.ours
    v = check_scaling_near_one({}, model="m", evidence=None)
    assert v.verdict == "not run here" and v.command == "make scaling" and "no current row" in v.ours
    v = check_scaling_near_one({}, model="m", evidence=ev, n_rows=2)
    assert v.verdict == "not run here" and "holds 2 current rows" in v.ours and "4 data sizes" in v.ours


def test_a_rows_code_fingerprint_is_the_training_code_only():
    """Editing the study's configuration, fits and words, the grid experiments, the chapter's verdicts or figures
    leaves the ledger current; the trainer, the metrics, the capture and the splice are in the fingerprint, function
    by function (:func:`atomsnb.ledger.row_code`), and the model conversion is pinned by the model's hash."""
    from atomsnb.codereach import reach_fingerprint
    from atomsnb.ledger import PINNED
    from atomsnb.scaling_train import train_point

    inputs = set(reach_fingerprint(train_point, pinned=PINNED).modules)
    modules = {k for k in inputs if ":" not in k and " " not in k and not k.endswith("__all__")}
    assert {"atomsnb.sae:train_sae", "atomsnb.metrics:r2_aip", "atomsnb.store:fit_aip_from_store",
            "atomsnb.splice:spliced_scores", "atomsnb.aip:AIP", "atomsnb.scaling_train:train_point"} <= inputs
    assert not modules & {"atomsnb.scaling", "atomsnb.grid", "atomsnb.paper", "atomsnb.wording", "atomsnb.ledger",
                          "atomsnb.runner", "atomsnb.evaluation", "atomsnb.pipeline", "atomsnb.verdicts",
                          "atomsnb.plots", "atomsnb.stages", "atomsnb.sae_cache", "atomsnb.codereach"}
    assert inputs >= {"atomsnb.packaged:ensure_packaged_model"} and not {
        "atomsnb.packaged:_convert", "atomsnb.packaged:_verify_copy"} & inputs
    assert "atomsnb.activations:_save" not in inputs  # the activation cache's writer: a point reads a store


def test_sweeps_run_only_where_asked_and_the_first_layer_comes_first(tiny_dir, monkeypatch):
    monkeypatch.chdir(tiny_dir)
    cfg = ScalingStudyConfig(models=("tiny",), layers=(1, 2), m_values=((640, 800, 1000), (640, 900)),
                             d_multiples=(1, 4), seeds=(0, 1), l0_sweep=(1e-3, 3e-3), sweep_layers=(1,))
    pts = cfg.points()
    # layer 1: 3 data, then its sweeps (H, seed 1, 1e-3 at the smallest and largest |M|); layer 2: data only
    assert [p.layer for p in pts] == [1] * 3 + [1] * 4 + [2] * 2
    assert [p.n_train for p in pts[:3]] == [640, 800, 1000]
    with pytest.raises(ValueError, match=r"sweep_layers=\(3,\) is not allowed"):
        ScalingStudyConfig(models=("tiny",), layers=(1,), m_values=((640, 800),), sweep_layers=(3,)).points()
    with pytest.raises(ValueError, match=r"sweep_models=\('other',\) is not allowed"):
        ScalingStudyConfig(models=("tiny",), layers=(1,), m_values=((640, 800),), sweep_models=("other",)).points()
    with pytest.raises(ValueError, match=r"n_splice_tokens=-1 is not allowed"):
        ScalingStudyConfig(models=("tiny",), layers=(1,), m_values=((640, 800),), n_splice_tokens=-1).points()
    with pytest.raises(ValueError, match=r"export_largest='yes' is not allowed"):
        ScalingStudyConfig(models=("tiny",), layers=(1,), m_values=((640, 800),), export_largest="yes").points()


def test_the_frontier_shift_is_read_from_the_pairs():
    from atomsnb.scaling import describe_frontier_shift

    def sweep(r2_large, q_large):
        rows = [{"model": "m", "layer": 1, "n_train": m, "p_l0_coefficient": c, "heldout_r2_aip": r, "heldout_q_star": q}
                for m, rs, qs in ((1024, (0.5, 0.4), (0.4, 0.5)), (2**20, r2_large, q_large))
                for c, r, q in zip((1e-3, 1e-2), rs, qs)]
        return pd.DataFrame(rows)

    out = describe_frontier_shift(sweep((0.7, 0.6), (0.45, 0.55)))
    assert out == ["m, layer 1: from |M| = 1K to 1M tokens, at every L0 coefficient both held-out R² and q* rise (R² by "
                   "+0.200 to +0.200, q* by +0.050 to +0.050): the whole frontier moves outward."]
    assert "along the frontier, not the frontier" in describe_frontier_shift(sweep((0.4, 0.3), (0.5, 0.6)))[0]
    assert "1 of 2 L0 coefficients" in describe_frontier_shift(sweep((0.7, 0.3), (0.45, 0.6)))[0]
    assert describe_frontier_shift(sweep((0.7, 0.6), (0.45, 0.55)).query("n_train == 1024")) == []


def test_the_full_studys_parameters_give_its_33_points_at_layer_1_and_each_models_middle_block():
    """params/scaling.yaml (what `make scaling` runs and the ledger holds): "middle" is block 15 of SmolLM2-135M's 30
    and block 9 of Gemma 3 270M's 18; data scaling at both layers of both models, the sweeps at SmolLM2 layer 1."""
    cfg = scaling_mod.config_from_yaml(str(ledger_mod.repository_root() / scaling_mod.FULL_STUDY))
    pts = cfg.points(check_corpus=False)
    assert len(pts) == 33 and len({p.key for p in pts}) == 33
    layers = {m: sorted({p.layer for p in pts if p.model == m}) for m in cfg.models}
    assert layers == {"smollm2-135m": [1, 15], "gemma3-270m": [1, 9]}
    d_model = {"smollm2-135m": 576, "gemma3-270m": 640}
    data = cfg.part(pd.DataFrame([{"key": p.key, "model": p.model, "layer": p.layer, "n_train": p.n_train,
                                   "n_latents": p.n_latents, "seed": p.seed, "d_model": d_model[p.model],
                                   "p_l0_coefficient": dict(p.params)["l0_coefficient"]} for p in pts]), "data")
    assert data.groupby(["model", "layer"]).size().to_dict() == {(m, l): 6 for m in layers for l in layers[m]}
    swept = [p for p in pts if p.key not in set(data["key"])]
    assert {(p.model, p.layer) for p in swept} == {("smollm2-135m", 1)}


def test_a_fit_does_not_depend_on_the_order_of_its_rows():
    """The residual bootstrap draws residuals by position; the same points given in another order (as two tables of
    the same ledger rows may give them) must give the same fit and the same intervals."""
    m, y = _synthetic(3.0, 0.4, 0.02, 2e-3, seed=5)
    perm = np.random.default_rng(0).permutation(len(m))
    f, g = fit_power_law(m, y, n_boot=200), fit_power_law(m[perm], y[perm], n_boot=200)
    assert (f.a, f.alpha, f.c) == (g.a, g.alpha, g.c) and f.ci == g.ci


@pytest.mark.shared_cache
def test_the_committed_scaling_ledger_is_current():
    """The book's scaling evidence is the committed ledger (results/scaling/). An edit to code ``train_point`` runs
    (its function-scope fingerprint, :func:`atomsnb.ledger.row_code`) makes every row stale, and the verdicts of
    chapters 2, 4 and 7 fall back to "not run here". That once happened unnoticed (a disk-full fix in ``atomsnb.io``,
    when the fingerprint was module-wide); this test makes it loud. If the edit is meant, rerun `make scaling` and
    commit the rows. (:func:`atomsnb.codereach.reach_reasons` says why a function is in the fingerprint.)"""
    from atomsnb.ledger import row_code
    from atomsnb.parameters import model_shape
    from atomsnb.scaling_train import train_point

    if any(model_shape(m) is None for m in ("smollm2-135m", "gemma3-270m")):
        pytest.skip("the packaged models are not converted in the repository cache (make model)")
    rows = Ledger("scaling").read()
    assert len(rows) == 33
    stale = rows[rows["stale"].astype(bool)]
    assert stale.empty, (
        f"{len(stale)} of {len(rows)} committed scaling rows are stale ({sorted(set(stale['stale_because']))}); the "
        f"training code's fingerprint is now {row_code(train_point)}: revert the edit to the code it reaches "
        "(atomsnb.codereach.reach_reasons(train_point, pinned=atomsnb.ledger.PINNED) lists it), or rerun "
        "`make scaling` and commit results/scaling/")
