"""The book's generated and hand-written pages stay in step with the package: the API reference lists every public
module, the TOC lists every chapter, and the models page links every packaged model's licence."""

from __future__ import annotations

import io
import re
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def test_api_reference_documents_every_public_module_in_stage_order():
    text = (REPO / "book" / "api.md").read_text()
    documented = re.findall(r"automodule:: atomsnb\.([\w.]+)", text)
    modules = {".".join(p.relative_to(REPO / "atomsnb").with_suffix("").parts) for p in (REPO / "atomsnb").rglob("*.py")
               if not p.name.startswith("_")}
    assert set(documented) == modules, {"undocumented": sorted(modules - set(documented)),
                                        "gone": sorted(set(documented) - modules)}
    sys.path.insert(0, str(REPO / "tools"))
    import api_page

    assert text == api_page.render(), "book/api.md is stale: run .venv/bin/python tools/api_page.py"


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
    # the Text section: every corpus with each tokenizer, counted (not typed), and the domain shift said plainly
    section = text[text.index("## Text"):text.index("## Licences")]
    assert "domain shift" in section and "Wikipedia" in section
    for src, _ in models_page.CORPORA:
        assert sum(line.startswith(f"| `{src}` |") for line in section.splitlines()) == len(PACKAGED_MODELS)
    assert "| `torch` |" in section and "| `stdlib` |" in section


def _docstrings():
    """(where, docstring) of every public module, class, function, method and ``#:`` attribute of atomsnb, as
    autodoc feeds them to the API reference."""
    import importlib
    import inspect

    from sphinx.pycode import ModuleAnalyzer

    for path in sorted((REPO / "atomsnb").glob("*.py")):
        if path.stem.startswith("_"):
            continue
        name = f"atomsnb.{path.stem}"
        mod = importlib.import_module(name)
        yield name, inspect.getdoc(mod) or "", "module"
        for (scope, attr), lines in ModuleAnalyzer.for_module(name).find_attr_docs().items():
            yield f"{name}.{scope + '.' if scope else ''}{attr}", "\n".join(lines), "attribute"
        for attr, obj in vars(mod).items():
            if attr.startswith("_") or getattr(obj, "__module__", None) != name:
                continue
            if inspect.isfunction(obj):
                yield f"{name}.{attr}", inspect.getdoc(obj) or "", "function"
            elif inspect.isclass(obj):
                yield f"{name}.{attr}", inspect.getdoc(obj) or "", "class"
                for m, member in vars(obj).items():
                    fn = member.__func__ if isinstance(member, (classmethod, staticmethod)) else member
                    if (not m.startswith("_") and (inspect.isfunction(fn) or isinstance(member, property))):
                        yield f"{name}.{attr}.{m}", inspect.getdoc(member) or "", "method"


def test_every_docstring_is_valid_restructuredtext():
    """The book build runs with -W: a docstring that docutils cannot parse (``|M|`` read as a substitution, an inline
    literal across lines, a malformed table, a napoleon section with a bad header) fails it after every chapter has
    run. This finds them in seconds, with the object named."""
    import docutils.core
    import docutils.utils
    from docutils.parsers.rst import roles
    from sphinx.ext.napoleon import Config
    from sphinx.ext.napoleon.docstring import GoogleDocstring

    def generic(name, rawtext, text, lineno, inliner, options=None, content=None):
        from docutils import nodes

        return [nodes.literal(rawtext, text)], []

    for role in ("func", "class", "meth", "mod", "data", "attr", "ref", "exc", "obj", "doc", "math", "py:func",
                 "py:class", "py:meth", "cite", "numref", "eq", "term"):
        roles.register_local_role(role, generic)
    from collections import defaultdict

    from docutils import nodes
    from docutils.parsers.rst import Directive, directives

    class SphinxDirective(Directive):  # Sphinx's object directives: parse the body, accept any argument or option
        has_content, optional_arguments, final_argument_whitespace = True, 10, True
        option_spec = defaultdict(lambda: directives.unchanged)

        def run(self):
            node = nodes.container()
            self.state.nested_parse(self.content, self.content_offset, node)
            return [node]

    for name in ("attribute", "method", "function", "class", "data", "seealso", "versionadded", "versionchanged",
                 "deprecated", "todo"):
        directives.register_directive(name, SphinxDirective)
    config = Config(napoleon_use_param=True, napoleon_use_rtype=True)
    bad = []
    for where, doc, what in _docstrings():
        rst = str(GoogleDocstring(doc, config, what=what))
        stream = io.StringIO()  # every message of level >= 2 (warnings, errors), transforms' included
        docutils.core.publish_doctree(rst, settings_overrides={"report_level": 2, "halt_level": 5,
                                                                "warning_stream": stream})
        if stream.getvalue():
            bad.append(f"{where}: {stream.getvalue()[:300]}")
    assert not bad, "\n".join(bad)


@pytest.mark.shared_cache
def test_models_page_marks_committed_corpus_counts_stale_when_what_they_depend_on_changes(monkeypatch):
    sys.path.insert(0, str(REPO / "tools"))
    import corpus_counts
    import models_page

    rec, stale = corpus_counts.load()
    assert rec is not None, "results/corpus/token_counts.json is committed (make corpus-counts)"
    # current or stale, the page says which (whether they are current on this machine is what the page reports)
    assert ("**current**" in "\n".join(models_page.text_section())) == (stale == [])
    text = (REPO / "results" / "corpus" / "token_counts.json").read_text()
    assert str(REPO) not in text and str(Path.home()) not in text
    then = rec["provenance"]  # what the counts were made with, but another python-source and counting code
    moved = {**then, "corpora": {**then["corpora"], "python-source": "0" * 16}, "code": "f" * 64}
    monkeypatch.setattr(corpus_counts, "provenance", lambda: moved)
    _, stale = corpus_counts.load()
    assert stale == ["corpus python-source", "the counting code"]
    section = "\n".join(models_page.text_section())
    assert "**They are stale**: corpus python-source, the counting code changed" in section
    assert "make corpus-counts" in section
