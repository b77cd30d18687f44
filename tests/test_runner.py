"""Resumable grids: atomic rows, resume, failures, corruption, and real process-pool and Dask backends."""

import multiprocessing as mp
import time

import pytest

from atomsnb.io import CacheCorruptError
from atomsnb.runner import GridPoint, ResultsStore, execute_point, grid_points, run_grid
from grid_tasks import failing_task, product_task, slow_task

POINTS = grid_points(["m"], layers=[0, 1], n_train=[10, 20], n_latents=[3], steps=5)


def test_sequential_run_then_resume_skips_done(tmp_path):
    df = run_grid(POINTS, product_task, tmp_path, progress=False)
    assert len(df) == 4 and (df["status"] == "ok").all()
    assert sorted(df["product"]) == sorted(p.n_train * p.n_latents + p.layer for p in POINTS)
    stamps = {p.key: ResultsStore(tmp_path).path(p).stat().st_mtime_ns for p in POINTS}
    more = POINTS + grid_points(["m"], layers=[2], n_train=[10], n_latents=[3], steps=5)
    df2 = run_grid(more, product_task, tmp_path, progress=False)
    assert len(df2) == 5
    assert all(ResultsStore(tmp_path).path(p).stat().st_mtime_ns == stamps[p.key] for p in POINTS), "done points re-ran"


def test_failed_point_is_recorded_and_others_go_on(tmp_path):
    df = run_grid(POINTS, failing_task, tmp_path, progress=False)
    bad = df[df["status"] == "error"]
    assert len(bad) == 2 and (bad["layer"] == 1).all()
    assert bad["error"].str.contains("layer 1 is broken").all()
    assert (df[df["layer"] == 0]["status"] == "ok").all()
    # errors are not retried unless asked
    run_grid(POINTS, product_task, tmp_path, progress=False)
    assert (ResultsStore(tmp_path).read()["status"] == "error").sum() == 2
    df3 = run_grid(POINTS, product_task, tmp_path, progress=False, retry_errors=True)
    assert (df3["status"] == "ok").all()


def test_killed_worker_leaves_no_partial_row(tmp_path):
    point = GridPoint("m", 0, 10, 3, 0, (("sleep", 30),))
    ctx = mp.get_context("spawn")
    proc = ctx.Process(target=execute_point, args=(slow_task, point, str(tmp_path)))
    proc.start()
    time.sleep(3)
    proc.kill()
    proc.join()
    assert list(tmp_path.iterdir()) == []
    assert not ResultsStore(tmp_path).has(point)


def test_damaged_results_file_is_detected(tmp_path):
    run_grid(POINTS[:1], product_task, tmp_path, progress=False)
    path = ResultsStore(tmp_path).path(POINTS[0])
    path.write_text(path.read_text().replace('"product": 30', '"product": 31'))
    with pytest.raises(CacheCorruptError, match="checksum"):
        ResultsStore(tmp_path).read()
    assert not ResultsStore(tmp_path).has(POINTS[0])  # so a re-run recomputes it
    with pytest.warns(UserWarning, match=rf"{path.name} fails its checksum.*Recomputing"):
        df = run_grid(POINTS[:1], product_task, tmp_path, progress=False)
    assert df["product"].iloc[0] == 30


def test_bad_backend_and_duplicates(tmp_path):
    with pytest.raises(ValueError, match="unknown backend 'slurm'"):
        run_grid(POINTS, product_task, tmp_path, backend="slurm", progress=False)
    with pytest.raises(ValueError, match="duplicate"):
        run_grid(POINTS + POINTS[:1], product_task, tmp_path, progress=False)


def test_process_pool_backend(tmp_path):
    df = run_grid(POINTS, product_task, tmp_path, backend="processes", max_workers=2, progress=False)
    assert (df["status"] == "ok").all() and len(df) == 4


def test_dask_local_cluster_on_loopback(tmp_path):
    distributed = pytest.importorskip("dask.distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None, silence_logs=40) as cluster, distributed.Client(cluster) as client:
        df = run_grid(POINTS, failing_task, tmp_path, backend="dask", client=client, progress=False)
        assert len(df) == 4 and (df["status"] == "error").sum() == 2
        assert df["worker_pid"].nunique() >= 1
        df = run_grid(POINTS, product_task, tmp_path, backend="dask", client=client, retry_errors=True, progress=False)
        assert (df["status"] == "ok").all()


def test_dask_backend_starts_and_closes_its_own_local_cluster(tmp_path):
    pytest.importorskip("dask.distributed")
    df = run_grid(POINTS[:2], product_task, tmp_path, backend="dask", max_workers=2, progress=False)
    assert (df["status"] == "ok").all() and len(df) == 2


def test_returns_only_this_grids_rows(tmp_path):
    run_grid(POINTS, product_task, tmp_path, progress=False)
    df = run_grid(POINTS[:1], product_task, tmp_path, progress=False)
    assert list(df["key"]) == [POINTS[0].key]


# ---------------------------------------------------------------------------------------------------------------------
# issue 9 §4.3 and §4.7: rows are checked against their file name and point; unrelated files are skipped
# ---------------------------------------------------------------------------------------------------------------------
def test_row_copied_under_another_points_name_is_not_that_points_result(tmp_path):
    run_grid(POINTS, product_task, tmp_path, progress=False)
    store = ResultsStore(tmp_path)
    src, dst = store.path(POINTS[0]), store.path(POINTS[1])
    dst.write_bytes(src.read_bytes())  # a row copied under another point's name (checksum still valid)
    assert not store.has(POINTS[1])
    with pytest.raises(CacheCorruptError, match=rf"holds the row of point {POINTS[0].key}"):
        store.load(POINTS[1])
    with pytest.warns(UserWarning, match=dst.name):
        df = run_grid(POINTS, product_task, tmp_path, progress=False)
    assert sorted(df["key"]) == sorted(p.key for p in POINTS), "one key returned twice and a point dropped"
    got = dict(zip(df["key"], df["product"]))
    assert all(got[p.key] == p.n_train * p.n_latents + p.layer for p in POINTS)


def test_row_of_another_point_with_the_same_key_name_is_refused(tmp_path):
    """A row whose stored point differs from the point asked for (e.g. a hand-made store) is not its result."""
    from atomsnb.io import save_json

    store = ResultsStore(tmp_path)
    store.write(POINTS[0], {"status": "ok", "product": 1})
    row = __import__("atomsnb.io", fromlist=["load_json"]).load_json(store.path(POINTS[0]), checksum=True)
    row["point"]["n_train"] = 999
    save_json(store.path(POINTS[0]), row, checksum=True)
    with pytest.raises(CacheCorruptError, match="another point"):
        store.load(POINTS[0])


def test_unrelated_and_damaged_files_do_not_break_run_grid(tmp_path):
    run_grid(POINTS, product_task, tmp_path, progress=False)
    store = ResultsStore(tmp_path)
    (tmp_path / "notes.json").write_text('["not", "a", "row"]')
    (tmp_path / "garbage.json").write_bytes(b"\x00\xff not json")
    (tmp_path / "folder.json").mkdir()
    damaged = store.path(POINTS[2])
    damaged.write_text(damaged.read_text().replace('"status": "ok"', '"status": "okay"'))
    with pytest.warns(UserWarning) as rec:
        df = run_grid(POINTS, product_task, tmp_path, progress=False)
    assert len(df) == 4 and (df["status"] == "ok").all()
    assert sorted(df["key"]) == sorted(p.key for p in POINTS)
    assert any(damaged.name in str(w.message) and "recomput" in str(w.message) for w in rec)
    # reading the whole store: unrelated files are reported by name and skipped
    with pytest.warns(UserWarning) as rec:
        table = store.read()
    text = " ".join(str(w.message) for w in rec)
    assert "notes.json" in text and "garbage.json" in text and "folder.json" in text and "not a results row" in text
    assert len(table) == 4


def test_run_grid_never_raises_after_the_work_for_a_missing_row(tmp_path, monkeypatch):
    import atomsnb.runner as R

    monkeypatch.setattr(R, "execute_point", lambda fn, p, root, threads=None: "ok")  # a worker that wrote nothing
    with pytest.warns(UserWarning, match="no results row"):
        df = run_grid(POINTS[:2], product_task, tmp_path, progress=False)
    assert list(df["status"]) == ["missing", "missing"] and sorted(df["key"]) == sorted(p.key for p in POINTS[:2])


def test_a_generator_of_points_is_run_not_silently_dropped(tmp_path):
    df = run_grid((p for p in POINTS), product_task, tmp_path, progress=False)
    assert len(df) == 4 and (df["status"] == "ok").all()


def test_metric_values_are_plain_json_numbers_or_refused(tmp_path):
    from grid_tasks import numpy_task, reserved_task, scalar_task, tensor_task

    df = run_grid(POINTS[2:3], numpy_task, tmp_path / "a", progress=False)
    r = df.iloc[0]
    assert r["status"] == "ok" and r["np_float"] == 0.5 and r["np_int"] == POINTS[2].n_train and r["t"] == 2.0
    assert type(r["np_int"]) is not str
    assert r["nested"] == {"a": [1.5]}
    df = run_grid(POINTS[:1], tensor_task, tmp_path / "b", progress=False)
    assert df["status"].iloc[0] == "error" and "'codes'" in df["error"].iloc[0] and "Tensor" in df["error"].iloc[0]
    df = run_grid(POINTS[:1], reserved_task, tmp_path / "c", progress=False)
    assert df["status"].iloc[0] == "error" and "reserved" in df["error"].iloc[0] and "'key'" in df["error"].iloc[0]
    assert df["key"].iloc[0] == POINTS[0].key
    df = run_grid(POINTS[:1], scalar_task, tmp_path / "d", progress=False)
    assert df["status"].iloc[0] == "error" and "must return a dict" in df["error"].iloc[0]


def test_params_order_does_not_change_the_key():
    a = GridPoint("m", 0, 10, 3, 0, (("b", 1), ("a", 2)))
    b = GridPoint("m", 0, 10, 3, 0, (("a", 2), ("b", 1)))
    assert a.key == b.key and a == b


@pytest.mark.parametrize("backend", ["sequential", "processes"])
def test_threads_are_passed_down_to_every_point_and_restored(tmp_path, backend):
    """run_grid(threads=n) sets torch's thread count around each point in whichever process runs it (a worker
    process would otherwise use torch's default, whatever the notebook's cell set), and restores it after."""
    import torch

    from grid_tasks import threads_task

    before = torch.get_num_threads()
    target = 1 if before != 1 else 2
    pts = grid_points(["m"], layers=[1, 2], n_train=[10], n_latents=[4])
    df = run_grid(pts, threads_task, tmp_path / backend, backend=backend, max_workers=2, progress=False,
                  threads=target)
    assert (df["status"] == "ok").all() and df["threads"].tolist() == [target, target]
    assert torch.get_num_threads() == before
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match=rf"threads must be None .* or an integer >= 1; got {bad!r}"):
            run_grid(pts, threads_task, tmp_path / "bad", threads=bad, progress=False)


def test_progress_line_shows_the_store_without_absolute_paths(tmp_path, monkeypatch, capsys):
    """Chapter 3 printed 'grid: 12 points, 0 already in /home/.../build/results/03_capacity_grid'."""
    monkeypatch.setenv("ATOMSNB_BUILD", str(tmp_path / "build"))
    monkeypatch.chdir(tmp_path / "..")
    pts = grid_points(["m"], [1], [10], [2], seeds=[0])
    run_grid(pts, product_task, tmp_path / "build" / "results" / "03_capacity_grid")
    line = capsys.readouterr().out.splitlines()[0]
    assert line.startswith("grid: 1 points, 0 already in build/results/03_capacity_grid, 1 to run"), line
    run_grid(pts, product_task, tmp_path / "elsewhere")  # below the working directory: relative to it
    line = capsys.readouterr().out.splitlines()[0]
    assert f"already in {tmp_path.name}/elsewhere," in line and str(tmp_path) not in line, line
