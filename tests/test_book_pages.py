"""The book's generated and hand-written pages stay in step with the package: the API reference lists every public
module, the TOC lists every chapter, and the models page links every packaged model's licence."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def test_api_reference_documents_every_public_module():
    documented = set(re.findall(r"automodule:: atomsnb\.(\w+)", (REPO / "book" / "api.md").read_text()))
    modules = {p.stem for p in (REPO / "atomsnb").glob("*.py") if not p.stem.startswith("_")}
    assert documented == modules, {"undocumented": sorted(modules - documented), "gone": sorted(documented - modules)}


def test_toc_lists_every_chapter_and_the_generated_pages():
    toc = yaml.safe_load((REPO / "_toc.yml").read_text())
    files = {c["file"] for part in toc["parts"] for c in part["chapters"]}
    chapters = {f"book/chapters/{p.stem}" for p in (REPO / "notebooks").glob("*.py")}
    assert chapters <= files and {"book/status", "book/models", "book/api"} <= files


@pytest.mark.shared_cache
def test_models_page_links_every_licence_from_the_cards():
    sys.path.insert(0, str(REPO / "tools"))
    import models_page

    from atomsnb.models import PACKAGED_MODELS, model_card

    text = models_page.render()
    for name in PACKAGED_MODELS:
        card = model_card(name)
        assert f"`{name}`" in text and card["licence"]["url"] in text and card["licence"]["notice"] in text
        assert f"{card['n_parameters']:,}" in text and card["source"]["gguf_sha256"][:16] in text
