"""End to end: `mechscope serve` on a synthetic store, driven by Debian's Chromium via Playwright.

Catches what AppTest cannot: the real server, routing by URL (deep links), the browser's own
rendering of token HTML (an XSS token must show as text and fire nothing), the SQL console
round trip, widgets writing their values into the URL, and the charts' links (a head-matrix
cell or a circuits-graph node opens its head page). Screenshots go to tests/artifacts/
(gitignored). Skipped only when /usr/bin/chromium is absent (`make browser` installs it).
Headless AppTest coverage is `tests/test_dashboard.py`.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from dashboard.synthetic import XSS_TOKEN, write_synthetic_store

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "tests" / "artifacts"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_MS = 30_000

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's Chromium at /usr/bin/chromium "
                                "(apt-get install chromium, or `make browser`)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_healthy(url: str, proc: subprocess.Popen, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {proc.stdout.read()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.3)
    raise RuntimeError(f"server at {url} not healthy after {timeout_s:.0f} s")


def _serve(path: Path):
    """`mechscope serve PATH --port P` (through the CLI module); yields the base URL."""
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.cli", "serve", str(path), "--port", str(port), "--host", "127.0.0.1"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, proc)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C does: serve and streamlit stop cleanly
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The dashboard on one synthetic store."""
    yield from _serve(write_synthetic_store(tmp_path_factory.mktemp("e2e") / "store"))


@pytest.fixture(scope="module")
def multi_server(tmp_path_factory):
    """The dashboard on a folder of two stores, `a` and `b` (the picker)."""
    root = tmp_path_factory.mktemp("e2e_multi")
    write_synthetic_store(root / "a")
    write_synthetic_store(root / "b", name="second-model", seed=1)
    yield from _serve(root)


@pytest.fixture(scope="module")
def page(server):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        pg = browser.new_page(viewport={"width": 1440, "height": 1800})
        pg.set_default_timeout(TIMEOUT_MS)
        pg.dialogs = []  # any alert() here would be an XSS
        pg.on("dialog", lambda d: (pg.dialogs.append(d.message), d.dismiss()))
        yield pg
        browser.close()


def _open(page, url: str, expect: str) -> None:
    page.goto(url)
    page.get_by_text(expect, exact=False).first.wait_for(state="visible")
    page.wait_for_timeout(800)  # let charts and late elements settle before a screenshot


def _shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_overview(page, server):
    _open(page, server, "synthetic-2x8")
    assert page.get_by_text("Rows per table").is_visible()
    page.locator("canvas, svg.marks").nth(1).wait_for()  # the two per-layer charts
    _shot(page, "overview")


def test_catalogue(page, server):
    _open(page, f"{server}/neurons", "15 neurons")  # the position artefact L1/N6 is one switch away
    _shot(page, "catalogue")
    page.get_by_role("textbox", name="promotes token").fill("Paris")
    page.get_by_role("textbox", name="promotes token").press("Enter")
    page.get_by_text("promoting “Paris”").wait_for()
    assert "promotes=Paris" in page.url  # the filter is in the shareable URL


def test_catalogue_score_range_from_the_url(page, server):
    _open(page, f"{server}/neurons?deletion_cos=-1&deletion_cos=-0.8", "1 neuron ·")
    page.get_by_text("deletion cos -1 to -0.8").wait_for()
    _shot(page, "catalogue_range")


def test_deletion_page(page, server):
    _open(page, f"{server}/deletion", "Deletion neurons")
    first = page.get_by_role("link", name="#1 · layer 1, neuron 5", exact=False)
    first.wait_for()
    page.locator("svg.marks, canvas").first.wait_for()  # the per-layer chart
    page.locator(".ms-focus").nth(16 * 3 - 1).wait_for()  # each card's examples arrive after its link
    assert page.locator(".ms-focus").count() == 16 * 3  # three examples per neuron, inline
    assert page.locator('img[src="x"]').count() == 0 and page.dialogs == []  # L1/N3's token is text here too
    _shot(page, "deletion")
    first.click()
    page.wait_for_url("**/neuron?layer=1&neuron=5")
    page.get_by_text("Layer 1, neuron 5").wait_for()


def test_neuron_deep_link_escapes_tokens(page, server):
    _open(page, f"{server}/neuron?layer=1&neuron=3", "Layer 1, neuron 3")
    page.get_by_text("Top activating examples").wait_for()
    page.locator("svg.marks, canvas").nth(2).wait_for()  # kv charts and histogram drawn
    token = page.locator(".ms-focus").first
    assert token.inner_text() == XSS_TOKEN  # shown as text...
    assert page.locator('img[src="x"]').count() == 0  # ...never as an element
    assert page.dialogs == []
    _shot(page, "neuron")
    page.get_by_role("link", name="L1/N4 →", exact=True).click()
    page.get_by_text("Layer 1, neuron 4").wait_for()
    page.wait_for_url("**/neuron?layer=1&neuron=4", timeout=5000)  # the URL follows: still shareable


def test_bad_neuron_link_is_a_notice(page, server):
    _open(page, f"{server}/neuron?layer=abc&neuron=1", "not a whole number")
    assert page.get_by_text("Traceback").count() == 0


def test_head_page_escapes_tokens_and_links_partners(page, server):
    _open(page, f"{server}/head?layer=0&head=3", "Layer 0, head 3")
    page.get_by_text("Top examples").wait_for()
    page.locator("svg.marks, canvas").nth(1).wait_for()  # the block heatmap and attention by offset
    source = page.locator(".ms-src").first  # example #0 attends to the XSS token
    assert source.inner_text() == XSS_TOKEN and page.locator(".ms-dest").count() == 5
    assert page.locator('img[src="x"]').count() == 0 and page.dialogs == []
    _shot(page, "head")
    page.get_by_role("link", name="L1/H0 reads this head with its V: 0.410", exact=False).click()
    page.wait_for_url("**/head?layer=1&head=0")
    page.get_by_text("Layer 1, head 0").wait_for()


def test_head_catalogue_cell_opens_its_head(page, server):
    _open(page, f"{server}/heads?score=prev_token_score", "sorted by prev_token_score")
    cells = page.locator('[data-testid="stVegaLiteChart"] svg.marks g.mark-rect path')
    cells.nth(7).wait_for()  # 2 layers x 4 heads, in (layer, head) order
    _shot(page, "heads")
    page.locator('[data-testid="stMain"] [data-testid="stSelectbox"]').click()  # choose another score
    page.get_by_role("option", name="bos_score", exact=True).click()
    page.wait_for_url("**/heads?score=bos_score")  # the chosen score is in the shareable URL
    page.get_by_text("sorted by bos_score").wait_for()
    cells.nth(1).click()  # layer 0, head 1: the previous-token head
    page.wait_for_url("**/head?layer=0&head=1")
    page.get_by_text("Layer 0, head 1").wait_for()


def test_circuits_filters_in_the_url_and_nodes_link(page, server):
    _open(page, f"{server}/circuits?kind=k&kind=v&margin=0.2", "2 edges")
    nodes = page.locator('[data-testid="stVegaLiteChart"] svg.marks g.mark-symbol path')
    nodes.nth(7).wait_for()  # every head is a node
    _shot(page, "circuits")
    page.get_by_role("slider").press("ArrowRight")  # margin 0.20 -> 0.21: the URL follows
    page.wait_for_url("**margin=0.21**")
    page.get_by_text("score − baseline ≥ 0.21").wait_for()
    nodes.nth(6).click()  # layer 1, head 2: the induction head
    page.wait_for_url("**/head?layer=1&head=2")
    page.get_by_text("Layer 1, head 2").wait_for()


def test_logit_lens_grid_and_colour_in_the_url(page, server):
    _open(page, f"{server}/lens?window=4", "Over the corpus")
    cells = page.locator('[data-testid="stVegaLiteChart"] svg.marks g.mark-rect path')
    cells.nth(5 * 15 - 1).wait_for()  # 5 residual states x positions 1-15 of window 4
    texts = page.locator('[data-testid="stVegaLiteChart"] svg.marks g.mark-text text')
    assert texts.count() >= 5 * 15  # each cell names its top-1 token
    _shot(page, "lens")
    page.get_by_text("kl", exact=True).click()  # colour by KL to the output: the URL follows
    page.wait_for_url("**colour=kl**")
    assert "window=4" in page.url
    page.locator('[data-testid="stVegaLiteChart"]').first.hover()


def test_residual_stream_page(page, server):
    _open(page, f"{server}/residual", "The PCA experiment")
    page.get_by_text("1 of 2").wait_for()  # planted: the MLP writes more than attention in one layer
    bars = page.locator('[data-testid="stVegaLiteChart"] svg.marks g.mark-rect path')
    bars.nth(3).wait_for()
    _shot(page, "residual")


def test_live_prompt_ablate_and_patch(page, server):
    _open(page, f"{server}/live?model=tiny-gpt2", "Interventions")
    box = page.get_by_role("textbox", name="prompt", exact=True)
    box.fill("The cat sat on the mat")
    box.press("Control+Enter")  # a text area commits on Ctrl+Enter
    page.wait_for_url("**prompt=The+cat+sat**")
    page.get_by_role("spinbutton", name="layer", exact=True).fill("1")
    page.get_by_role("spinbutton", name="head / neuron").fill("2")
    page.get_by_role("button", name="Add").click()
    page.get_by_role("button", name="✕ zero L1H2").wait_for()  # the chip
    assert "iv=" in page.url
    page.get_by_text("With the interventions", exact=True).wait_for()
    page.wait_for_timeout(800)
    _shot(page, "live")
    corrupt = page.get_by_role("textbox", name="corrupted prompt")
    corrupt.fill("The dog sat on the mat")
    corrupt.press("Enter")
    page.get_by_role("button", name="Run the patching grid").click()
    page.get_by_text("Logit difference after patching").wait_for()
    page.wait_for_timeout(800)
    _shot(page, "live_patching")


def test_sql_console(page, server):
    _open(page, f"{server}/sql", "SQL console")
    page.get_by_role("button", name="Run query").click()
    page.get_by_text(" rows in ").first.wait_for()
    page.get_by_text("Download CSV").wait_for()
    page.wait_for_timeout(800)
    _shot(page, "sql")
    assert page.dialogs == []


def test_store_picker_keeps_the_store_in_every_url(page, multi_server):
    _open(page, f"{multi_server}/neuron?layer=1&neuron=5&store=b", "Layer 1, neuron 5")
    assert page.get_by_text("Deletion score -0.900").count() == 1
    page.get_by_role("link", name="L1/N6 →", exact=True).click()
    page.wait_for_url("**/neuron?layer=1&neuron=6&store=b")
    page.get_by_role("link", name="back to the catalogue").click()
    page.wait_for_url("**/neurons?store=b")
    page.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"]').click()  # open the picker
    page.get_by_role("option", name="a", exact=True).click()
    page.wait_for_url("**/neurons?store=a")
    page.locator('[data-testid="stSidebarNav"]').get_by_text("Overview").click()
    page.get_by_text("synthetic-2x8").first.wait_for()
    assert page.url.endswith("?store=a")
