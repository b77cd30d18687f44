"""Small fixes to the HTML of the book, found by the real-browser test (tests/test_book_browser.py).

sphinx-thebe 0.3.1 registers its inline configuration script (``const THEBE_JS_URL = ...``) from an
``env-before-read-docs`` handler, after the HTML builder exists; Sphinx 7 then emits the inline script twice on
every page and the browser reports ``SyntaxError: Identifier 'THEBE_JS_URL' has already been declared``. This
extension drops exact duplicates from each page's script list (same file, same inline body, same attributes).
"""

from __future__ import annotations


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


def setup(app):
    # Early: html-page-context stops at the first handler that returns a template name.
    app.connect("html-page-context", _dedupe_scripts, priority=100)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
