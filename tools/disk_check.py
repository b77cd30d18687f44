"""Refuse to start `make book` or `make test` on a disk that cannot hold what they write, before any work starts.

What a run writes lives under the repository (README: nothing is written outside it): the venv, the converted models,
the activation, store and SAE caches (``.cache/``), the executed notebooks and pytest's temporary files (``build/``)
and the HTML book (``book/_build``). The sizes below were measured on a fresh clone (2026-12-06, the clone's whole
folder: 8.2 GiB after `make book`, 12.2 GiB after `make test`); what is already there counts towards them, so a
second run on a warm checkout needs only what is missing.

A CI run of `make test` once died after 18 minutes, in chapter 1, with "No space left on device"; this check turns
that into a one-line refusal naming the numbers. `make ... DISK_CHECK=0` skips it.

Usage: ``python tools/disk_check.py {book,test}`` (standard library only: it runs before the venv exists).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

GIB = 1024 ** 3
# The measured sizes above, with a margin of about 10 % (book) and 15 % (test).
NEEDS_GIB = {"book": 9.0, "test": 14.0}
# The folders a run fills (their current size counts as already written).
COUNTED = (".venv", ".cache", "build", "book/_build")


def tree_bytes(path: Path) -> int:
    """Bytes of the regular files under ``path`` (links not followed; 0 if it does not exist)."""
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:  # removed while walking
                continue
            if not os.path.islink(os.path.join(root, name)):
                total += st.st_size
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", choices=sorted(NEEDS_GIB), help="the make target about to run")
    parser.add_argument("--repo", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--need-gib", type=float, default=None,
                        help="what the target writes, in GiB (default: the measured size of NEEDS_GIB)")
    args = parser.parse_args(argv)
    if args.need_gib is not None and not (args.need_gib > 0 and args.need_gib < float("inf")):
        parser.error(f"--need-gib must be a positive number of GiB; got {args.need_gib}")
    if not args.repo.is_dir():
        parser.error(f"--repo {args.repo} is not a directory")
    need = (NEEDS_GIB[args.target] if args.need_gib is None else args.need_gib) * GIB
    present = sum(tree_bytes(args.repo / p) for p in COUNTED)
    missing = max(0.0, need - present)
    free = shutil.disk_usage(args.repo).free
    if free >= missing:
        return 0
    print(f"disk_check: `make {args.target}` writes about {need / GIB:.1f} GiB under {args.repo} (the venv, the "
          f"converted models, the caches, the executed notebooks{', pytest temporary files' if args.target == 'test' else ''} "
          f"and the HTML book); {present / GIB:.1f} GiB of it is already there, so {missing / GIB:.1f} GiB more is "
          f"needed, but the disk has {free / GIB:.1f} GiB free. Free at least {(missing - free) / GIB:.1f} GiB, or run "
          f"`make {args.target} DISK_CHECK=0` to try anyway.", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
