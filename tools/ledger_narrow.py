"""Move a ledger's rows labelled by module onto the function-scope code fingerprint (:meth:`atomsnb.ledger.Ledger.narrow_code`).

    .venv/bin/python tools/ledger_narrow.py scaling [--dry-run]

Rows written before ``code_scope`` existed carry the module-scope fingerprint (:func:`atomsnb.codeprint.code_fingerprint`):
any statement edited in any module their entry imports makes them stale. Where that fingerprint still equals the
current code's, the row was computed by exactly this code, and is relabelled with the function-scope fingerprint
(:func:`atomsnb.codereach.reach_fingerprint`), keeping the old one as ``code_by_module``. Rows whose code has moved on
are left stale. Commit the rewritten rows.
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from atomsnb.ledger import Ledger  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("study", help="the ledger's folder under results/, e.g. scaling")
    ap.add_argument("--dry-run", action="store_true", help="say what would be done; write nothing")
    args = ap.parse_args(argv)
    ledger = Ledger(args.study)
    if not ledger.exists():
        ap.error(f"results/{args.study} holds no row (a study's folder: {sorted(p.name for p in ledger.dir.parent.iterdir() if p.is_dir())})")
    done = ledger.narrow_code(dry_run=args.dry_run)
    counts = collections.Counter(done.values())
    print(f"{ledger.dir.relative_to(REPO) if ledger.dir.is_relative_to(REPO) else ledger.dir}: "
          + ", ".join(f"{n} {what}" for what, n in sorted(counts.items())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
