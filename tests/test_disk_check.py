"""tools/disk_check.py, which `make book` and `make test` run before anything else, against the real free space."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
GIB = 1024 ** 3


def check(repo: Path, need_gib: float, target: str = "test"):
    return subprocess.run([sys.executable, str(REPO / "tools" / "disk_check.py"), target, "--repo", str(repo),
                           "--need-gib", str(need_gib)], capture_output=True, text=True, timeout=120)


def test_a_disk_too_small_is_refused_with_the_numbers_and_a_way_out(tmp_path):
    free = shutil.disk_usage(tmp_path).free / GIB
    done = check(tmp_path, free + 5)
    assert done.returncode == 2
    msg = done.stderr
    assert f"about {free + 5:.1f} GiB under {tmp_path}" in msg and "0.0 GiB of it is already there" in msg
    assert "GiB free" in msg and "DISK_CHECK=0" in msg
    assert check(tmp_path, free / 2).returncode == 0


def test_what_is_already_there_counts_towards_the_need(tmp_path):
    """A warm checkout needs only what is missing: 10 GiB already in .cache (a sparse file: no disk used) lower the
    need of free + 8 GiB to less than what is free; without them the same need is refused."""
    free = shutil.disk_usage(tmp_path).free / GIB
    assert check(tmp_path, free + 8).returncode == 2
    (tmp_path / ".cache" / "atomsnb").mkdir(parents=True)
    with open(tmp_path / ".cache" / "atomsnb" / "activations.bin", "wb") as f:
        f.truncate(10 * GIB)
    (tmp_path / "elsewhere.bin").write_bytes(b"x")  # outside the counted folders: not counted
    done = check(tmp_path, free + 8)
    assert done.returncode == 0, done.stderr


def test_the_make_targets_run_it_first():
    """`make -n` of both commands runs the check before the install (and DISK_CHECK=0 leaves it out). The make
    variables of a `make test` that runs this test are removed: they would make this make a sub-make."""
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")}

    def dry(*args):
        return subprocess.run(["make", "--no-print-directory", "-n", *args], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=120).stdout

    for goal in ("book", "test"):
        out = dry(goal)
        assert out.splitlines()[0].endswith(f"tools/disk_check.py {goal}"), out[:500]
        assert "disk_check.py" not in dry(goal, "DISK_CHECK=0")


def test_bad_values_are_refused_before_any_measurement(tmp_path):
    for need in ("0", "-3", "nan", "inf"):
        done = subprocess.run([sys.executable, str(REPO / "tools" / "disk_check.py"), "test", "--repo", str(tmp_path),
                               "--need-gib", need], capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and f"--need-gib must be a positive number of GiB; got {float(need)}" in done.stderr
    done = subprocess.run([sys.executable, str(REPO / "tools" / "disk_check.py"), "test", "--repo",
                           str(tmp_path / "missing")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "is not a directory" in done.stderr
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL", "MAKEOVERRIDES")}
    done = subprocess.run(["make", "-n", "book", "DISK_CHECK=no"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode != 0 and "DISK_CHECK must be 0 (skip the disk check) or 1 (check); got 'no'" in done.stderr
    assert done.stdout == ""  # refused before any recipe
