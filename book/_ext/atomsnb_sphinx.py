"""Small fixes to the HTML of the book, found by the real-browser test (tests/test_book_browser.py).

sphinx-thebe 0.3.1 registers its inline configuration script (``const THEBE_JS_URL = ...``) from an
``env-before-read-docs`` handler, after the HTML builder exists; Sphinx 7 then emits the inline script twice on
every page and the browser reports ``SyntaxError: Identifier 'THEBE_JS_URL' has already been declared``. This
extension drops exact duplicates from each page's script list (same file, same inline body, same attributes).

It also renders the footer (``html.extra_footer`` in ``_config.yml``, a template): the package version
(``atomsnb.__version__``, read from ``pyproject.toml``) and the git commit are known only at build time, and its
links must be relative to each page. Sphinx's ``version``/``release`` are set to the package version too.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from sphinx.errors import ExtensionError

FOOTER_FIELDS = ("version", "commit", "repository", "cite", "models")
MODELS_DOC = "book/models"  # the page listing each model and where its licence text lives (when the book has it)
CITE_ANCHOR = "how-to-cite"  # the label of "How to cite" on the landing page


def _dedupe_scripts(app, pagename, templatename, context, doctree):
    scripts = context.get("script_files")
    if not scripts:
        return
    seen, unique = set(), []
    for js in scripts:
        # an inline script has filename None when added to the builder and "" when added to the registry
        key = (str(getattr(js, "filename", js) or ""), repr(sorted(getattr(js, "attributes", {}).items())))
        if key in seen:
            continue
        seen.add(key)
        unique.append(js)
    scripts[:] = unique


def git_commit(where: Path) -> str:
    """``"<12 hex digits>"`` of HEAD, with ``"+dirty"`` appended if tracked files differ from it; ``""`` outside git."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, check=True,
                             timeout=30).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True, check=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return sha[:12] + ("+dirty" if dirty else "")


def _package_version(app, config):
    """``config-inited``: the package version into Sphinx's ``version``/``release``; the footer template checked."""
    try:
        import atomsnb
    except ImportError as e:  # the book documents the package: it must be importable in the build
        raise ExtensionError(f"atomsnb is not importable in the book build ({e}); run `make install`") from e
    config.version = config.release = atomsnb.__version__
    template = config.html_theme_options.get("extra_footer") or ""
    try:
        template.format(**dict.fromkeys(FOOTER_FIELDS, ""))
    except (KeyError, IndexError, ValueError) as e:
        raise ExtensionError(f"html.extra_footer in _config.yml: bad placeholder {e}; allowed: "
                             f"{', '.join('{' + f + '}' for f in FOOTER_FIELDS)}") from e
    app.atomsnb_commit = git_commit(Path(app.srcdir))


def _doc_url(pathto, docname: str) -> str:
    """URL of ``docname`` relative to the page being written (``""`` on that page itself; pathto gives ``"#"``)."""
    url = pathto(docname)
    return "" if url.startswith("#") else url


def _footer(app, pagename, templatename, context, doctree):
    """``html-page-context``: render ``extra_footer`` for this page (see ``_config.yml``)."""
    template = context.get("theme_extra_footer")
    if not template:
        return
    pathto = context["pathto"]
    commit = app.atomsnb_commit
    models = ""
    if MODELS_DOC in app.env.found_docs:
        models = f' Models: <a href="{_doc_url(pathto, MODELS_DOC) or "#"}">their own licences</a>.'
    context["theme_extra_footer"] = template.format(
        version=app.config.release,
        commit=f" (commit {commit})" if commit else "",
        repository=app.config.html_theme_options.get("repository_url", "").rstrip("/"),
        cite=f"{_doc_url(pathto, app.config.root_doc)}#{CITE_ANCHOR}",
        models=models,
    )


def setup(app):
    app.connect("config-inited", _package_version)
    # Early: html-page-context stops at the first handler that returns a template name.
    app.connect("html-page-context", _dedupe_scripts, priority=100)
    app.connect("html-page-context", _footer, priority=100)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
