"""End to end in Chromium (as `tests/test_e2e_browser.py`, whose server and page fixtures this
reuses): the catalogue's artefact switch in the URL, a neuron page that names a position artefact,
whitespace-only and split-character tokens as the browser draws them (screenshots in
tests/artifacts/), tab titles, a favicon served locally, SQL results that link to neuron pages."""

from __future__ import annotations

import pytest
from test_e2e_browser import CHROMIUM, _open, _shot, page, server  # noqa: F401  (fixtures)

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's Chromium at /usr/bin/chromium")


def test_artefact_neuron_page_and_legible_tokens(page, server):  # noqa: F811
    _open(page, f"{server}/neuron?layer=1&neuron=6", "Layer 1, neuron 6")
    page.get_by_text("Position artefact.", exact=False).first.wait_for()
    assert page.get_by_text("Massive Activations in Large Language Models", exact=False).count() >= 1
    assert page.title() == "L1/N6 · neuron · mechscope"
    first, second = page.locator(".ms-focus").nth(0), page.locator(".ms-focus").nth(1)
    first.wait_for()
    rows = page.locator('[data-testid="stHtml"]').all_inner_texts()
    text = "\n".join(rows)
    assert "\ufffd" not in text and " c.—" in text  # the split em dash, merged
    assert "·" in text  # the whitespace-only token of window 1, visible
    spans = page.locator("span[title]").evaluate_all("els => els.map(e => e.textContent)")
    assert "" not in spans  # no token drawn as an empty box
    _shot(page, "neuron_artefact_tokens")
    assert first.inner_text() and second.inner_text()


def test_catalogue_artefact_switch_is_in_the_url(page, server):  # noqa: F811
    _open(page, f"{server}/neurons?show=position", "1 neuron ·")
    page.get_by_text("position artefacts only").wait_for()
    assert page.title() == "Neuron catalogue · mechscope"
    _shot(page, "catalogue_artefacts")
    page.get_by_text("all", exact=True).click()
    page.get_by_text("16 neurons").wait_for()
    page.wait_for_url("**show=all**")


def test_favicon_is_served_locally(page, server):  # noqa: F811
    _open(page, server, "synthetic-2x8")
    icons = page.locator('link[rel~="icon"]').evaluate_all("els => els.map(e => e.href)")
    assert icons and all(h.startswith(server) or h.startswith("data:") for h in icons), icons


def test_sql_results_link_to_neuron_pages(page, server):  # noqa: F811
    _open(page, f"{server}/sql", "SQL console")
    box = page.get_by_role("textbox", name="SQL")
    box.fill("SELECT layer, neuron, max FROM neurons ORDER BY max DESC LIMIT 3")
    page.get_by_role("button", name="Run query").click()
    page.get_by_text("3 rows in").wait_for()
    page.wait_for_timeout(800)
    _shot(page, "sql_links")
    grid = page.locator('[data-testid="stDataFrame"]').first
    assert grid.is_visible()


def test_unknown_page_path_says_so(page, server):  # noqa: F811
    """Streamlit itself (1.67) answers an unknown path with a "Page not found" dialog over the
    default page: the path does not land there silently."""
    _open(page, f"{server}/neuronz?layer=1", "Page not found")
    assert page.get_by_text("does not seem to exist", exact=False).count() == 1
    _shot(page, "unknown_page")


NAV_LINKS_JS = """() => [...document.querySelectorAll('[data-testid="stMain"] [data-testid="stPageLink"] *')]
  .filter(e => e.children.length === 0 && /^(← |.* →$|back to the catalogue$|head catalogue$|circuits graph$|try it)/
                                         .test(e.innerText.trim()))
  .map(e => [e.innerText.trim(), e.scrollWidth, e.clientWidth])"""


@pytest.mark.parametrize("url, title", [("neuron?layer=1&neuron=4", "Layer 1, neuron 4"),
                                        ("head?layer=1&head=2", "Layer 1, head 2")])
def test_previous_and_next_links_are_whole_in_a_narrow_window(page, server, url, title):  # noqa: F811
    """The links above a neuron or head page, in a 1,050 px window: none is cut (the old labels,
    "← previous (L0/N1)" in a sixth of the row, were cut below ~1,400 px on the demo store)."""
    page.set_viewport_size({"width": 1050, "height": 900})
    try:
        _open(page, f"{server}/{url}", title)
        links = page.evaluate(NAV_LINKS_JS)
        assert len(links) >= 4 and any(text.startswith("← ") for text, _, _ in links), links
        assert [text for text, scroll, client in links if scroll > client] == [], links
        _shot(page, f"nav_1050_{url.split('?')[0]}")
    finally:
        page.set_viewport_size({"width": 1440, "height": 1800})
