"""The built book in a real browser: headless Chromium (Debian's) driven through Playwright.

For every page of ``_toc.yml``: HTTP 200, no console errors, no failed request to our server, every image
loaded, MathJax (served from ``_static/mathjax``, no CDN) has typeset every math element, and every internal
link resolves with HTTP 200. Screenshots of the landing page and chapter 1 go to ``test-artifacts/``.

Layout, at a 1280 px window, on every chapter page: the output column is at least ``atomsnb.plots.BOOK_CONTENT_PX``
wide (the width the figures are drawn for; ``tests/test_plots_layout.py`` checks, from that width, that every panel is
at least 300 px wide and every text at least 10 px high); no table is wider than its output box (``scrollWidth <=
clientWidth``, nothing to scroll sideways); every figure is shown at its natural width, or scaled down to the column
when wider, never cut off and never scaled otherwise (the assumption of ``atomsnb.plots.displayed_layout``).

Chapter 6's atom-browser pages (``_static/browser/<unit set>.html``): every unit's card shows contexts and logit-lens
tokens, typing a token into the search box narrows the list, the sort menu orders it, and nothing is loaded.

Without a browser, from the built HTML: no page and no executed chapter notebook names a path of the build machine
(the repository's absolute path, the cache's, the home directory); every chapter page links Binder and Colab to its executed notebook
``book/chapters/<chapter>.ipynb`` on the repository and branch of ``_config.yml`` (the branch the workflow publishes
those notebooks to), and that notebook carries the hidden install cell and the version; every page's footer
carries the package version, the licences and the "How to cite" link; the landing page has both BibTeX entries.

The book is built first if ``book/_build/html/index.html`` is missing (``make test`` builds it before pytest).
The browser is ``/usr/bin/chromium`` (``apt-get install -y chromium``; ``make test`` installs it if missing), or
``$ATOMSNB_CHROMIUM``. Every wait is bounded; the whole module takes well under two minutes.
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import subprocess
import sys
import threading
import tomllib
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urldefrag, urlsplit

import nbformat
import pytest
import yaml

from atomsnb.paths import cache_dir
from atomsnb.plots import BOOK_CONTENT_PX

REPO = Path(__file__).resolve().parents[1]
HTML = REPO / "book" / "_build" / "html"
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = os.environ.get("ATOMSNB_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 30_000  # any single navigation or wait
LINK_TIMEOUT_S = 10
BUILD_TIMEOUT_S = 900


def toc_pages(toc: Path = REPO / "_toc.yml") -> list[str]:
    """Every page of a jupyter-book ``_toc.yml`` (root first), as paths without suffix."""
    data = yaml.safe_load(toc.read_text())
    pages = [data["root"]]

    def walk(entries):
        for e in entries or []:
            if "file" in e:
                pages.append(e["file"])
            walk(e.get("sections"))
            walk(e.get("chapters"))

    for part in data.get("parts", []):
        walk(part.get("chapters"))
    walk(data.get("chapters"))
    return pages


PAGES = toc_pages()
CHAPTERS = [p for p in PAGES if p.startswith("book/chapters/")]


@pytest.fixture(scope="module")
def site() -> Path:
    """The built HTML; built here (book only, chapters as executed) if it is missing."""
    if not (HTML / "index.html").is_file():
        jb = Path(sys.executable).parent / "jupyter-book"
        try:
            r = subprocess.run([str(jb), "build", ".", "--path-output", "book", "-W", "--keep-going"], cwd=REPO,
                               capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            pytest.fail(f"jupyter-book build did not finish in {BUILD_TIMEOUT_S} s")
        if r.returncode != 0 or not (HTML / "index.html").is_file():
            pytest.fail(f"jupyter-book build failed (run `make book`):\n{(r.stdout + r.stderr)[-3000:]}")
    return HTML


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest's output clean
        pass


@pytest.fixture(scope="module")
def server(site):
    """``http.server`` on 127.0.0.1, a free port, in a thread; shut down after the module."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(site)))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("the Playwright client is missing: pip install -r requirements.lock (make install does)")
    if not Path(CHROMIUM).is_file():
        pytest.fail(f"no Chromium at {CHROMIUM}: apt-get install -y chromium (make test does), or set ATOMSNB_CHROMIUM")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True, timeout=TIMEOUT_MS)
        try:
            yield b
        finally:
            b.close()


class PageVisit:
    """A page opened in a fresh browser context, with its console errors and failed requests recorded."""

    def __init__(self, browser, origin: str, width: int = 1280):
        self.origin = origin
        self.context = browser.new_context(viewport={"width": width, "height": 900})
        self.context.set_default_timeout(TIMEOUT_MS)
        self.context.set_default_navigation_timeout(TIMEOUT_MS)
        self.page = self.context.new_page()
        self.console_errors: list[str] = []
        self.failed: list[str] = []
        self.foreign: list[str] = []
        self.page.on("console", lambda m: m.type == "error" and self.console_errors.append(f"{m.text} ({m.location})"))
        self.page.on("pageerror", lambda e: self.console_errors.append(f"uncaught: {e}"))
        self.page.on("requestfailed", self._request_failed)
        self.page.on("response", self._response)
        self.page.on("request", self._request)

    def _ours(self, url: str) -> bool:
        return url.startswith(self.origin + "/")

    def _request(self, req):
        if not self._ours(req.url) and urlsplit(req.url).scheme in ("http", "https"):
            self.foreign.append(req.url)

    def _request_failed(self, req):
        if self._ours(req.url):
            self.failed.append(f"{req.url}: {req.failure}")

    def _response(self, resp):
        if self._ours(resp.url) and resp.status >= 400:
            self.failed.append(f"{resp.url}: HTTP {resp.status}")

    def close(self):
        self.context.close()


def _wait_for_images(page) -> list[str]:
    """Load every image (lazy ones too) and return those that did not load."""
    page.evaluate("() => document.querySelectorAll('img[loading=lazy]').forEach(i => { i.loading = 'eager'; })")
    page.wait_for_function("() => Array.from(document.images).every(i => i.complete)", timeout=TIMEOUT_MS)
    return page.evaluate("() => Array.from(document.images).filter(i => !(i.naturalWidth > 0))"
                         ".map(i => i.currentSrc || i.src)")


def _wait_for_mathjax(page) -> dict:
    """Wait until MathJax has typeset the page; report the math elements and how many it rendered."""
    page.wait_for_function("() => window.MathJax && MathJax.startup && MathJax.startup.promise", timeout=TIMEOUT_MS)
    page.evaluate("() => { MathJax.startup.promise.then(() => { window.__atomsnb_typeset = true; }); }")
    page.wait_for_function("() => window.__atomsnb_typeset === true", timeout=TIMEOUT_MS)
    return page.evaluate("""() => {
        const math = Array.from(document.querySelectorAll('.math'));
        return {
            math: math.length,
            rendered: math.filter(m => m.querySelector('mjx-container')).length,
            containers: document.querySelectorAll('mjx-container').length,
            errors: Array.from(document.querySelectorAll('mjx-merror')).map(e => e.textContent).slice(0, 5),
            script: Array.from(document.scripts).map(s => s.src).filter(s => s.includes('mathjax')),
        };
    }""")


_checked_links: dict[str, int | str] = {}


def _http_status(url: str) -> int | str:
    if url not in _checked_links:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, method="GET"), timeout=LINK_TIMEOUT_S) as r:
                _checked_links[url] = r.status
        except urllib.error.HTTPError as e:
            _checked_links[url] = e.code
        except (urllib.error.URLError, TimeoutError, OSError) as e:
            _checked_links[url] = f"{type(e).__name__}: {e}"
    return _checked_links[url]


@pytest.mark.parametrize("page_path", PAGES)
def test_page_in_browser(browser, server, page_path):
    visit = PageVisit(browser, server)
    try:
        page = visit.page
        resp = page.goto(f"{server}/{page_path}.html", wait_until="load")
        assert resp is not None and resp.status == 200, f"{page_path}: HTTP {resp and resp.status}"

        broken = _wait_for_images(page)
        assert not broken, f"{page_path}: images that did not load: {broken}"

        has_math = page.evaluate("() => document.querySelectorAll('.math').length") > 0
        if has_math:
            mj = _wait_for_mathjax(page)
            assert mj["containers"] > 0, f"{page_path}: MathJax rendered nothing: {mj}"
            assert mj["rendered"] == mj["math"], f"{page_path}: math elements left untypeset: {mj}"
            assert not mj["errors"], f"{page_path}: MathJax errors: {mj['errors']}"
            assert mj["script"] and all(s.startswith(server + "/_static/mathjax/") for s in mj["script"]), mj["script"]

        links = page.evaluate("() => Array.from(document.querySelectorAll('a[href]')).map(a => a.href)")
        internal = sorted({urldefrag(u)[0] for u in links if u.startswith(server + "/")})
        assert internal, f"{page_path}: no internal links at all"
        bad = {u: s for u in internal if (s := _http_status(u)) != 200}
        assert not bad, f"{page_path}: internal links that do not resolve: {bad}"

        assert not visit.console_errors, f"{page_path}: console errors: {visit.console_errors}"
        assert not visit.failed, f"{page_path}: failed requests to our server: {visit.failed}"
        assert not visit.foreign, f"{page_path}: requests outside the book's server (CDN?): {visit.foreign}"
    finally:
        visit.close()


def test_screenshots(browser, server):
    """Screenshots of the landing page (through the root redirect) and of chapter 1, for a human to look at."""
    ARTIFACTS.mkdir(exist_ok=True)
    chapter = next(p for p in PAGES if Path(p).name.startswith("01_"))
    shots = {"landing.png": f"{server}/", "chapter01.png": f"{server}/{chapter}.html"}
    for name, url in shots.items():
        visit = PageVisit(browser, server)
        try:
            visit.page.goto(url, wait_until="load")
            visit.page.wait_for_url(f"{server}/**/*.html", timeout=TIMEOUT_MS)  # index.html redirects to the root page
            visit.page.wait_for_load_state("load")
            _wait_for_images(visit.page)
            if visit.page.evaluate("() => document.querySelectorAll('.math').length") > 0:
                _wait_for_mathjax(visit.page)
            visit.page.screenshot(path=str(ARTIFACTS / name), timeout=TIMEOUT_MS)
            if name == "chapter01.png":  # the re-run box, and the chapter's first figure scrolled into view
                box = visit.page.locator(".admonition", has_text="Re-run this chapter").first
                box.screenshot(path=str(ARTIFACTS / "chapter01_rerun_box.png"), timeout=TIMEOUT_MS)
                fig = visit.page.locator(".cell_output img").first
                fig.scroll_into_view_if_needed(timeout=TIMEOUT_MS)
                visit.page.screenshot(path=str(ARTIFACTS / "chapter01_figure.png"), timeout=TIMEOUT_MS)
        finally:
            visit.close()
        assert (ARTIFACTS / name).stat().st_size > 10_000, f"{name} looks empty"


# ------------------------------------------------------------------------ the atom browser (chapter 6's pages)
BROWSER_SETS = ("atoms", "features", "neurons")  # the unit sets chapter 6 writes a page for


def _search_token(units: list[dict], search: list[str]) -> str:
    """A context or logit-lens token (stripped, lowercased, 2+ characters) that some cards hold and others do not."""
    for u in units:
        for tok in [t for c in u["contexts"] for t, _ in c] + [t for t, _ in u["promoted"] + u["suppressed"]]:
            t = tok.strip().lower()
            if len(t) >= 2 and 0 < sum(t in s for s in search) < len(search):
                return t
    pytest.fail("no token tells the cards apart: the page cannot show that search narrows the list")


@pytest.mark.parametrize("unit_set", BROWSER_SETS)
def test_atom_browser_page(browser, server, unit_set):
    """Chapter 6's page of one unit set, served by the book: every unit's card shows contexts with shaded tokens and
    logit-lens tokens, typing a token into the search box narrows the list to the cards holding it, the sort menu
    orders the cards, and the page loads nothing from anywhere (no console error, no request outside the page)."""
    visit = PageVisit(browser, server)
    try:
        page = visit.page
        resp = page.goto(f"{server}/_static/browser/{unit_set}.html", wait_until="load")
        assert resp is not None and resp.status == 200, (f"{unit_set}: HTTP {resp and resp.status} (chapter 6 writes "
                                                         "the pages: make book)")
        data = json.loads(page.locator("#atomsnb-data").text_content())
        units = data["units"]
        cards = page.locator(".card")
        assert units and cards.count() == len(units), (cards.count(), len(units))
        per_card = page.evaluate("""() => Array.from(document.querySelectorAll('.card')).map(c => ({
            unit: +c.dataset.unit, contexts: c.querySelectorAll('.ctx').length,
            shaded: Array.from(c.querySelectorAll('.ctx span'))
                .filter(s => getComputedStyle(s).backgroundColor !== 'rgba(0, 0, 0, 0)').length,
            promoted: Array.from(c.querySelectorAll('.lens td.pos')).map(t => t.textContent),
            suppressed: Array.from(c.querySelectorAll('.lens td.neg')).map(t => t.textContent),
            bars: c.querySelectorAll('svg.hist rect').length}))""")
        assert sorted(c["unit"] for c in per_card) == sorted(u["unit"] for u in units)
        empty = [c["unit"] for c in per_card if not (c["contexts"] and c["shaded"] and c["promoted"]
                                                     and c["suppressed"] and c["bars"])]
        assert not empty, f"{unit_set}: cards without contexts, shading, logit-lens tokens or histogram: {empty}"
        assert page.locator("#count").text_content() == f"{len(units)} of {len(units)} units shown"

        search = page.evaluate("() => Array.from(document.querySelectorAll('.card')).map(c => c.dataset.search)")
        token = _search_token(units, search)
        page.locator("#search").press_sequentially(token, delay=5)
        expected = sum(token in s for s in search)
        page.wait_for_function("n => document.querySelectorAll('.card:not(.hidden)').length === n", arg=expected)
        assert 0 < expected < len(units)
        assert page.locator("#count").text_content() == f"{expected} of {len(units)} units shown"
        shown = page.evaluate("() => Array.from(document.querySelectorAll('.card:not(.hidden)'))"
                              ".map(c => c.dataset.search)")
        assert all(token in s for s in shown), token
        page.locator("#search").fill("")
        page.wait_for_function("n => document.querySelectorAll('.card:not(.hidden)').length === n", arg=len(units))

        for key, field in (("frequency", "frequency"), ("contribution", "contribution")):
            page.select_option("#sort", key)
            order = page.evaluate(f"() => Array.from(document.querySelectorAll('.card')).map(c => +c.dataset.{field})")
            assert order == sorted(order, reverse=True), f"{unit_set}: sort by {key} gave {order[:10]}..."

        assert not visit.console_errors, f"{unit_set}: console errors: {visit.console_errors}"
        assert not visit.failed, f"{unit_set}: failed requests: {visit.failed}"
        assert not visit.foreign, f"{unit_set}: requests outside the book's server: {visit.foreign}"
        urls = page.evaluate("() => Array.from(document.querySelectorAll('[src], link[href]'))"
                             ".map(e => e.src || e.href)")
        assert all(u.startswith("data:") for u in urls), f"{unit_set}: the page loads {urls}"
    finally:
        visit.close()


#: What a chapter page's outputs measure in the browser: the output column, every table's output box, every figure.
LAYOUT_JS = """() => {
    const box = el => el.closest('div.output') || el.closest('div.cell_output');
    const column = document.querySelector('div.cell_output') || document.querySelector('article.bd-article');
    const tables = Array.from(document.querySelectorAll('div.cell_output table')).map(t => {
        const b = box(t);
        return {scroll: b.scrollWidth, client: b.clientWidth, right: t.getBoundingClientRect().right,
                box_right: b.getBoundingClientRect().right, head: t.innerText.slice(0, 60)};
    });
    const images = Array.from(document.querySelectorAll('div.cell_output img')).map(i => {
        const b = box(i);
        return {natural: i.naturalWidth, shown: i.getBoundingClientRect().width, box: b.clientWidth,
                right: i.getBoundingClientRect().right, box_right: b.getBoundingClientRect().right,
                src: (i.currentSrc || i.src).split('/').pop()};
    });
    return {column: column ? column.clientWidth : 0, tables, images,
            page_scroll: document.documentElement.scrollWidth, page_client: document.documentElement.clientWidth};
}"""


def layout_problems(m: dict, min_column: float | None = BOOK_CONTENT_PX) -> list[str]:
    """What in a :data:`LAYOUT_JS` measurement does not fit: a narrow column, a table wider than its box, a figure cut
    off or scaled other than to fit the column, a page that scrolls sideways."""
    problems = []
    if min_column is not None and m["column"] < min_column:
        problems.append(f"output column {m['column']} px < {min_column} px (atomsnb.plots.BOOK_CONTENT_PX)")
    for t in m["tables"]:
        if t["scroll"] > t["client"] or t["right"] > t["box_right"] + 0.5:
            problems.append(f"table wider than its box ({t['scroll']} > {t['client']} px): {t['head']!r}")
    for i in m["images"]:
        expected = min(i["natural"], i["box"])
        if i["right"] > i["box_right"] + 0.5 or abs(i["shown"] - expected) > 1:
            problems.append(f"figure {i['src']} shown {i['shown']:.0f} px, natural {i['natural']} px, box {i['box']} px")
    if m["page_scroll"] > m["page_client"]:
        problems.append(f"the page scrolls sideways ({m['page_scroll']} > {m['page_client']} px)")
    return problems


def test_layout_problems_catches_overflow():
    """The checks themselves, on the measurements the reviewer reported (700 px column, cut-off table, squeezed figure)."""
    ok = {"column": 960, "tables": [{"scroll": 900, "client": 900, "right": 1200, "box_right": 1200, "head": "t"}],
          "images": [{"natural": 990, "shown": 960, "box": 960, "right": 1190, "box_right": 1200, "src": "a.png"}],
          "page_scroll": 1280, "page_client": 1280}
    assert layout_problems(ok, min_column=950) == []
    bad = {"column": 700, "tables": [{"scroll": 812, "client": 700, "right": 1312, "box_right": 1200, "head": "L0"}],
           "images": [{"natural": 1291, "shown": 600, "box": 700, "right": 1200, "box_right": 1200, "src": "b.png"}],
           "page_scroll": 1300, "page_client": 1280}
    assert len(layout_problems(bad, min_column=950)) == 4


@pytest.mark.parametrize("page_path", CHAPTERS)
def test_chapter_outputs_fit_at_1280(browser, server, page_path):
    visit = PageVisit(browser, server, width=1280)
    try:
        visit.page.goto(f"{server}/{page_path}.html", wait_until="load")
        _wait_for_images(visit.page)
        m = visit.page.evaluate(LAYOUT_JS)
        # the page's contents, out of the column's way, are one click away (the theme's "Contents" dialog)
        toggle = visit.page.locator(".bd-header-article button.secondary-toggle")
        toggle.click(timeout=TIMEOUT_MS)
        toc = visit.page.locator("dialog#pst-secondary-sidebar-modal nav.page-toc a")
        toc.first.wait_for(state="visible", timeout=TIMEOUT_MS)
        n_toc = toc.count()
    finally:
        visit.close()
    assert n_toc >= 1, f"{page_path}: the Contents dialog lists no section"
    assert m["tables"] or m["images"], f"{page_path}: no table and no figure measured"
    assert not layout_problems(m), f"{page_path} at 1280 px: {layout_problems(m)}"


@pytest.mark.parametrize("page_path", CHAPTERS)
def test_chapter_readable_at_1024(browser, server, page_path):
    """At 1024 px the column is narrower (about 820 px): figures are scaled to it, and a table wider than it scrolls
    inside its own box; nothing is cut off and the page itself never scrolls sideways."""
    visit = PageVisit(browser, server, width=1024)
    try:
        visit.page.goto(f"{server}/{page_path}.html", wait_until="load")
        _wait_for_images(visit.page)
        m = visit.page.evaluate(LAYOUT_JS)
        scrollable = visit.page.evaluate("""() => Array.from(document.querySelectorAll('div.cell_output table'))
            .map(t => t.closest('div.output') || t.closest('div.cell_output'))
            .filter(b => b.scrollWidth > b.clientWidth)
            .every(b => ['auto', 'scroll'].includes(getComputedStyle(b).overflowX))""")
    finally:
        visit.close()
    problems = [p for p in layout_problems(m, min_column=800) if not p.startswith("table wider")]
    assert not problems, f"{page_path} at 1024 px: {problems}"
    assert scrollable, f"{page_path} at 1024 px: a table wider than its box cannot be scrolled"


# ------------------------------------------------------------------------ launch links, footer, citation (no browser)

CONFIG = yaml.safe_load((REPO / "_config.yml").read_text())
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def _soup(html: str):
    from bs4 import BeautifulSoup

    return BeautifulSoup(html, "html.parser")


def launch_links(html: str) -> list[str]:
    """The hrefs of the page's launch buttons (sphinx-book-theme's "launch" dropdown), in order."""
    return [a["href"] for a in _soup(html).select(".dropdown-launch-buttons a[href]")]


def expected_launch_links(page_path: str, config: dict) -> list[str]:
    """Binder's and Colab's documented URL schemes for the notebook ``<page_path>.ipynb`` of the configured repo."""
    url, branch = config["repository"]["url"].rstrip("/"), config["repository"]["branch"]
    owner, name = url.removeprefix("https://github.com/").split("/")
    buttons = config["launch_buttons"]
    ui = {"jupyterlab": "lab/tree", "classic": "tree"}[buttons.get("notebook_interface", "classic")]
    return [f"{buttons['binderhub_url'].rstrip('/')}/v2/gh/{owner}/{name}/{branch}?urlpath={ui}/{page_path}.ipynb",
            f"{buttons['colab_url'].rstrip('/')}/github/{owner}/{name}/blob/{branch}/{page_path}.ipynb"]


def footer_problems(html: str, config: dict, version: str, has_models_page: bool) -> list[str]:
    """What is wrong with a page's footer: version, code and text licences, models' licences, How to cite."""
    footer = _soup(html).select_one(".extra_footer")
    if footer is None:
        return ["no footer"]
    text = footer.get_text(" ", strip=True)
    links = {a.get_text(" ", strip=True): a.get("href", "") for a in footer.find_all("a")}
    problems = []
    if f"atomsnb {version}" not in text:
        problems.append(f"no 'atomsnb {version}' in {text!r}")
    if links.get("MIT licence") != config["repository"]["url"].rstrip("/") + "/blob/main/LICENSE":
        problems.append(f"MIT licence link: {links.get('MIT licence')!r}")
    if links.get("CC BY 4.0") != "https://creativecommons.org/licenses/by/4.0/":
        problems.append(f"CC BY 4.0 link: {links.get('CC BY 4.0')!r}")
    if not links.get("How to cite", "").endswith("#how-to-cite"):
        problems.append(f"How to cite link: {links.get('How to cite')!r}")
    if has_models_page and "their own licences" not in links:
        problems.append("no link to the models' licences")
    return problems


@pytest.mark.parametrize("page_path", CHAPTERS)
def test_chapter_launch_links(site, page_path):
    html = (site / f"{page_path}.html").read_text()
    assert launch_links(html) == expected_launch_links(page_path, CONFIG)
    assert "Installs atomsnb where it is missing" not in html, "the install cell must be hidden in the book"
    # What the links open is this file, which the workflow pushes to the launch branch (tests/test_publish.py).
    nb = nbformat.read(REPO / f"{page_path}.ipynb", as_version=4)
    first_code = next(c for c in nb.cells if c.cell_type == "code")
    assert {"launch-install", "remove-cell"} <= set(first_code.metadata.get("tags", []))
    assert f"git+{CONFIG['repository']['url'].rstrip('/')}@" in first_code.source
    assert nb.metadata["atomsnb"]["version"] == VERSION


@pytest.mark.parametrize("page_path", PAGES)
def test_page_footer(site, page_path):
    html = (site / f"{page_path}.html").read_text()
    assert not footer_problems(html, CONFIG, VERSION, "book/models" in PAGES), page_path


def machine_paths() -> list[str]:
    """Absolute paths of this build machine that must not appear in the book: the repository, the cache, home."""
    paths = {str(REPO), str(REPO.resolve()), str(cache_dir().resolve()), str(Path.home())}
    return sorted(p.rstrip("/") + "/" for p in paths if p not in ("", "/"))


def test_no_build_machine_paths(site):
    """The built HTML and the executed chapters name no path of the machine that built them."""
    paths = machine_paths()
    files = sorted(site.rglob("*.html")) + [REPO / f"{p}.ipynb" for p in CHAPTERS if (REPO / f"{p}.ipynb").is_file()]
    assert files, "nothing to search"
    found = {}
    for f in files:
        text = f.read_text(errors="replace")
        hits = [p for p in paths if p in text]
        if hits:
            i = text.index(hits[0])
            found[str(f.relative_to(REPO))] = f"{hits}: ...{text[max(0, i - 60):i + 80]!r}..."
    assert not found, f"{len(found)} files name a build-machine path: {dict(list(found.items())[:5])}"


def test_landing_page_how_to_cite(site):
    section = _soup((site / f"{PAGES[0]}.html").read_text()).find(id="how-to-cite")
    assert section is not None, "no 'How to cite' section on the landing page"
    text = section.get_text()
    assert "@inproceedings{hu2026atoms," in text and "2509.20784" in text
    assert "@software{atomsnb," in text and f"version = {{{VERSION}}}" in text
