"""Count the offline corpora's documents and tokens with each packaged model's tokenizer, and commit the result.

    .venv/bin/python tools/corpus_counts.py            # writes results/corpus/token_counts.json (make corpus-counts)

Counting the two site corpora means parsing every installed package and tokenising about 60 M tokens (over ten
minutes on one core), more than a book build can afford; so the counts are a committed result with their provenance,
and the book's models page (tools/models_page.py) shows them with it, marked stale when what they depend on has
changed: each corpus' content key (:func:`atomsnb.corpus.content_key`: the distributions and their versions, the
Python version, the extraction code), each tokenizer (its ``tokenizer.json`` as the model card records it), and the code fingerprint of the counting
(:func:`atomsnb.codeprint.code_fingerprint` of :func:`atomsnb.corpus.token_counts`).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from transformers import AutoTokenizer  # noqa: E402

import atomsnb  # noqa: E402
from atomsnb.codeprint import code_fingerprint  # noqa: E402
from atomsnb.corpus import SITE_SOURCES, content_key, site_index, token_counts  # noqa: E402
from atomsnb.io import load_json, save_json  # noqa: E402
from atomsnb.models import PACKAGED_MODELS, model_card  # noqa: E402
from atomsnb.packaged import ensure_packaged_model  # noqa: E402

OUT = REPO / "results" / "corpus" / "token_counts.json"
#: The corpora counted, with what each is (the models page's words).
CORPORA = (
    ("docstrings", "docstrings of the standard library, NumPy and SciPy: the text of the book's chapters"),
    ("pydoc-topics", "the Python language reference's topics (prose)"),
    ("site-docstrings", "docstrings of the standard library and of every distribution atomsnb requires"),
    ("python-source", "the same files' code as written, one document per top-level class or function"),
)
REFRESH = "make corpus-counts"


def provenance() -> dict:
    """What the counts depend on, computed without counting (seconds): the corpora's content keys, the tokenizers'
    ``tokenizer.json`` SHA-256 (from the model cards), the counting code's fingerprint."""
    return {"corpora": {src: content_key(src) for src, _ in CORPORA},
            "tokenizers": {name: model_card(name)["files"]["tokenizer.json"] for name in PACKAGED_MODELS},
            "code": code_fingerprint(token_counts).digest}


def _commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except OSError:
        return None


def count() -> dict:
    """Count every corpus with every tokenizer (cached by :func:`atomsnb.corpus.token_counts`) and return the
    committed record: counts, the site corpora's composition and build records, and the provenance."""
    t0 = time.perf_counter()
    tokenizers = {name: AutoTokenizer.from_pretrained(ensure_packaged_model(name, verbose=False))
                  for name in PACKAGED_MODELS}
    counts = {src: {name: token_counts(src, tok) for name, tok in tokenizers.items()} for src, _ in CORPORA}
    records = {src: site_index(src)[1] for src in SITE_SOURCES}
    return {"counts": counts, "site_records": records, "provenance": provenance(),
            "made": {"atomsnb": atomsnb.__version__, "commit": _commit(),
                     "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
                     "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores", "threads": 1,
                     "wall_s": round(time.perf_counter() - t0, 1), "command": REFRESH}}


def load() -> tuple[dict | None, list[str]]:
    """The committed record (None if there is none) and the names of what no longer matches it (empty: current)."""
    if not OUT.is_file():
        return None, []
    rec = load_json(OUT, checksum=True)
    now, then = provenance(), rec["provenance"]
    stale = [f"corpus {s}" for s in now["corpora"] if then["corpora"].get(s) != now["corpora"][s]]
    stale += [f"tokenizer {n}" for n in now["tokenizers"] if then["tokenizers"].get(n) != now["tokenizers"][n]]
    stale += ["the counting code"] if then["code"] != now["code"] else []
    return rec, stale


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args(argv)
    rec = count()
    save_json(args.out, rec, checksum=True)
    print(f"wrote {args.out.relative_to(REPO) if args.out.is_relative_to(REPO) else args.out.name} "
          f"({rec['made']['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
