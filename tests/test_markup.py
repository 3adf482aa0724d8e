"""Text a user, a URL, a corpus or a store controls is shown as text, never markup (issue 12, item 4).

- `dashboard.text.md` in the real frontend: Chromium renders random strings (hypothesis) through
  st.markdown / caption / warning / title and shows exactly the text: no link, emphasis, KaTeX,
  colour, emoji or icon (skipped without /usr/bin/chromium, like tests/test_e2e_browser.py);
- every page through AppTest with the issue's payloads in its URL parameters, a store whose
  model name, corpus spec and folder name are payloads, and SQL errors that echo corpus text:
  every Markdown body on the page holds the payload only escaped;
- hypothesis drives random URL parameters through every page: every stretch of a Markdown body
  that came from a parameter (between two sentinels) is escaped as `text.md` escapes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs
from streamlit.testing.v1 import AppTest

from dashboard import nav, text
from dashboard.synthetic import write_synthetic_store

REPO = Path(__file__).resolve().parents[1]
APP = str(REPO / "dashboard" / "app.py")
CHROMIUM = Path("/usr/bin/chromium")
PAYLOAD = "**bold** [x](http://evil.example) $\\frac{1}{2}$ :red[x] :smile: <b>h</b> www.evil.example `t`"
# What a payload must never be in a Markdown body (each is markup when it reaches the renderer raw).
RAW_MARKERS = ("**bold**", "[x](http", "$\\frac", ":red[", ":smile:", "<b>", "www.evil", "`t`")
MARKUP_CHARS = "*_[]()<>#|~$&!+-{}:.@`\\'\" \n/=%^"
PAGES = (nav.OVERVIEW, nav.CATALOGUE, nav.NEURON, nav.DELETION, nav.HEADS, nav.HEAD, nav.CIRCUITS, nav.SQL)
# Every URL parameter a page reads (the list, and the rest of the same pages).
PAGE_PARAMS = {
    nav.NEURON: ("layer", "neuron"), nav.DELETION: ("n", "threshold", "layers"),
    nav.CATALOGUE: ("deletion_cos", "max", "density_frac", "kv_agreement_frac", "promotes", "fires_on"),
    nav.HEADS: ("score", "layers"), nav.HEAD: ("layer", "head"), nav.CIRCUITS: ("kind", "margin", "n"),
    nav.OVERVIEW: ("store",), nav.SQL: ("store",),
}
SUBJECT = {nav.NEURON: {"layer": "0", "neuron": "0"}, nav.HEAD: {"layer": "0", "head": "0"}}  # the other one valid
MARKDOWN_KINDS = ("markdown", "caption", "warning", "error", "info", "success", "title", "header", "subheader")


def bodies(at: AppTest) -> list[str]:
    """Every Markdown source the page sent: elements, expander labels, widget help."""
    out = [e.value for kind in MARKDOWN_KINDS for e in at.get(kind)]
    out += [e.label for e in at.expander]
    return out


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return write_synthetic_store(tmp_path_factory.mktemp("markup") / "a")


def run_page(store: Path, page: str, query: dict, monkeypatch) -> AppTest:
    monkeypatch.setenv(nav.ENV_VAR, str(store))
    at = AppTest.from_file(APP, default_timeout=60).run()
    at.query_params.update(query)
    at.switch_page(page).run()
    assert not at.exception, (page, query, at.exception)
    return at


# --- the helper ----------------------------------------------------------------------------------


@given(hs.text())
def test_md_round_trips_and_escapes_every_markup_character(s):
    m = text.md(s)
    assert text.is_escaped(m)
    plain = re.sub(r"[\r\n\u2028\u2029\x0b\x0c\x85]+", " ", s.replace(text.WORD_JOINER, ""))
    assert text.unescape(m) == re.sub(r"[ \t]{2,}", " ", plain)
    assert not re.search(r"(?<!\\)[*_\[\]()<>|~$&!`{}]", m.replace("\\\\", ""))  # each one escaped
    assert not re.match(r"\s*[-+#]", m)  # no list item or heading at the start
    assert not re.search(r":\w|@\w|\w\.|www\.", m)  # shortcodes, mails, bare URLs broken by U+2060


def test_code_span_holds_any_backticks():
    assert text.code("a`b") == "`` a`b ``"
    assert text.code("``x") == "``` ``x ```"
    assert text.code("p:q") == "` p:\u2060q `"


# --- every page, the payloads ------------------------------------------------------------


@pytest.mark.parametrize("page", [p for p in PAGES if p not in (nav.OVERVIEW, nav.SQL)])
def test_every_url_parameter_payload_is_text(store, page, monkeypatch):
    """The issue's payload in each parameter of the page: notices say what was wrong, as text."""
    names = PAGE_PARAMS[page]
    for name in names:
        at = run_page(store, page, {**SUBJECT.get(page, {}), name: PAYLOAD}, monkeypatch)
        found = bodies(at)
        for body in found:
            assert not any(marker in body for marker in RAW_MARKERS), (page, name, body)
        shown = (text.md(PAYLOAD), text.md(repr(PAYLOAD)))  # as it is, or as the value in a notice
        assert any(form in body for body in found for form in shown), (page, name, found)  # shown, escaped


def test_store_controlled_strings_are_text(tmp_path, monkeypatch):
    """Model name, corpus spec, build date and the folder's name (a backtick) from a store."""
    store = write_synthetic_store(tmp_path / "st`ore **x** [y](http://evil.example)")
    manifest = json.loads((store / "manifest.json").read_text())
    manifest["model"]["name"] = PAYLOAD
    manifest["corpus"]["spec"] = PAYLOAD + " $x$"
    manifest["created_at"] = ":red[now]"
    (store / "manifest.json").write_text(json.dumps(manifest))
    at = run_page(store, nav.OVERVIEW, {}, monkeypatch)
    assert text.code(store) in at.caption[0].value  # a code span shows its text literally (test below)
    found = [body.replace(text.code(store), "") for body in bodies(at)]
    for body in found:
        assert not any(marker in body for marker in (*RAW_MARKERS, "$x$", ":red[now]", "[y](")), body
    assert text.md(PAYLOAD) in at.title[0].value


def test_sql_errors_echoing_corpus_text_are_text(store, monkeypatch):
    at = run_page(store, nav.SQL, {}, monkeypatch)
    for sql in ("SELECT CAST(token AS INTEGER) FROM tokens WHERE token = '<img src=x onerror=alert(1)>'",
                f"SELECT CAST('{PAYLOAD}' AS INTEGER)", f"SELECT * FROM \"{PAYLOAD}\""):
        at.text_area(key="sql_text").input(sql).run()
        at.button(key="run").click().run()
        assert not at.exception and at.error, sql
        message = at.error[0].value
        assert text.is_escaped(message) and not any(m in message for m in RAW_MARKERS), message
        assert not re.search(r"(?<!\\)<", message), message  # the corpus's <img ...> escaped, if echoed


def test_error_about_the_store_path_is_text(tmp_path, monkeypatch):
    monkeypatch.setenv(nav.ENV_VAR, str(tmp_path / "[x](http://evil.example) **no**"))
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception and "does not exist" in at.error[0].value
    assert "[x](" not in at.error[0].value and "**no**" not in at.error[0].value


# --- random URL parameters -----------------------------------------------------------------------

SENTINEL_A, SENTINEL_B = "QZX", "XZQ"
_values = hs.text(alphabet=hs.sampled_from(MARKUP_CHARS) | hs.characters(codec="utf-8", exclude_categories=("Cs",)),
                  max_size=24).map(lambda v: f"{SENTINEL_A}{v}{SENTINEL_B}")


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(page=hs.sampled_from(PAGES), data=hs.data())
def test_random_url_parameters_render_as_text(store, monkeypatch, page, data):
    names = PAGE_PARAMS[page]
    query = data.draw(hs.dictionaries(hs.sampled_from(names), _values, min_size=1, max_size=len(names)))
    at = run_page(store, page, query, monkeypatch)
    for body in bodies(at):
        for stretch in re.findall(f"{SENTINEL_A}(.*?){SENTINEL_B}", body, flags=re.S):
            assert text.is_escaped(SENTINEL_A + stretch), (page, query, body)


# --- the real frontend ---------------------------------------------------------------------------

BROWSER_APP = """
import json, os, sys
sys.path.insert(0, {repo!r})
import streamlit as st
from dashboard import text
for i, s in enumerate(json.loads(open(os.environ["MARKUP_STRINGS"]).read())):
    st.markdown(f"M{{i}}M " + text.md(s))
    st.warning(f"W{{i}}W " + text.md(s))
    st.caption(f"C{{i}}C " + text.md(s))
    st.markdown(f"K{{i}}K " + text.code(s))
st.markdown("DONE")
"""
_browser = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's Chromium at /usr/bin/chromium")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def frontend(tmp_path_factory):
    """A Streamlit server rendering the strings in a JSON file through `text.md` / `text.code`,
    and a Chromium page on it: yields a function strings -> [(kind, index, innerText, tags)]."""
    from playwright.sync_api import sync_playwright

    folder = tmp_path_factory.mktemp("frontend")
    (folder / "app.py").write_text(BROWSER_APP.format(repo=str(REPO)))
    strings = folder / "strings.json"
    strings.write_text("[]")
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(folder / "app.py"), "--server.port",
                             str(port), "--server.address", "127.0.0.1", "--server.headless", "true",
                             "--browser.gatherUsageStats", "false", "--server.runOnSave", "false"],
                            env={**os.environ, "MARKUP_STRINGS": str(strings)}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/_stcore/health", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None, "streamlit did not start"
                time.sleep(0.3)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--headless", "--no-sandbox"])
            page = browser.new_page()

            def render(items: list[str]) -> list[tuple[str, int, str, list[str]]]:
                strings.write_text(json.dumps(items))
                page.goto(url)
                page.get_by_text("DONE", exact=True).wait_for(timeout=30_000)
                # "DONE" can be drawn before every earlier element is (a test run once missed K0):
                # read again until each of the 4 x len(items) markers is there, for up to 15 s
                deadline = time.monotonic() + 15
                while True:
                    rows = read()
                    markers = {m.group(0) for inner, _ in rows if (m := re.match(r"([MWCK])(\d+)\1", inner))}
                    if len(markers) >= 4 * len(items) or time.monotonic() > deadline:
                        return rows
                    page.wait_for_timeout(200)

            def read() -> list:
                return page.evaluate("""() => [...document.querySelectorAll(
                    '[data-testid="stMarkdownContainer"], [data-testid="stCaptionContainer"]')]
                    .map(e => [e.innerText, [...e.querySelectorAll('*')].map(n => n.tagName.toLowerCase()
                        + (n.className && n.className.baseVal === undefined && /katex|emoji/.test(n.className)
                           ? '.math' : '') + (n.getAttribute('style') || '').replace(/.*color.*/, '.colour')
                        + (n.getAttribute('data-testid') === 'stIconMaterial' ? '.icon' : ''))])""")

            yield render
            browser.close()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)


def _shown(s: str) -> str:
    """What a browser shows for text `s` in a paragraph: whitespace runs collapsed, ends trimmed."""
    return " ".join(s.replace(text.WORD_JOINER, "").split())


@_browser
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(hs.lists(hs.text(alphabet=hs.sampled_from(MARKUP_CHARS + "abcw:@.1")
                        | hs.characters(exclude_categories=("Cs", "Cc", "Cf", "Zl", "Zp", "Co", "Cn")),
                        max_size=40), min_size=10, max_size=25))
def test_md_renders_as_exactly_its_text_in_chromium(frontend, items):
    items = [PAYLOAD, ":material/home: www.x.org a@b.org https://x.org &amp; \\$ ~~s~~ 1. # h", *items]
    rendered = frontend(items)
    seen = {}
    for inner, tags in rendered:
        m = re.match(r"([MWCK])(\d+)\1 ?", inner)
        if m:
            seen[(m.group(1), int(m.group(2)))] = (inner[m.end():], tags)
    for i, s in enumerate(items):
        for kind in "MWCK":
            inner, tags = seen[(kind, i)]
            assert _shown(inner) == _shown(s), (kind, s, inner)
            allowed = {"p", "code"} if kind == "K" else {"p"}
            assert set(tags) <= allowed, (kind, s, tags)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow])
@given(name=_values, spec=_values, created=_values)
def test_random_store_strings_render_as_text(store, tmp_path_factory, monkeypatch, name, spec, created):
    """Model name, corpus spec and build date a store holds, random, on the overview."""
    copy = Path(shutil.copytree(store, tmp_path_factory.mktemp("strings") / "s"))
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["model"]["name"], manifest["corpus"]["spec"], manifest["created_at"] = name, spec, created
    (copy / "manifest.json").write_text(json.dumps(manifest))
    at = run_page(copy, nav.OVERVIEW, {}, monkeypatch)
    stretches = [s for body in bodies(at) for s in re.findall(f"{SENTINEL_A}(.*?){SENTINEL_B}", body, flags=re.S)]
    assert len(stretches) >= 3  # each string is shown
    for stretch in stretches:
        assert text.is_escaped(SENTINEL_A + stretch), stretch
