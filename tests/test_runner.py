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
