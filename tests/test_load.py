"""Load: 20 concurrent browser sessions on one real `mechscope serve` (loopback only), four of them
running runaway queries, while the server's memory is sampled (issue 12, "Done when").

Every ordinary session must get its own correct result (it clicks again on a "busy, try again"
notice, as its user would), every runaway one a one-line refusal, and the server's peak memory
must stay under its budget: the Streamlit process alone under SERVER_BUDGET, and the Streamlit
process plus its query workers under SERVER_BUDGET + MAX_CONCURRENT x the worker cap. Prints the
numbers it measured. Skipped without /usr/bin/chromium (like tests/test_e2e_browser.py).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from dashboard.synthetic import write_synthetic_store
from store import sqlworker

CHROMIUM = Path("/usr/bin/chromium")
REPO = Path(__file__).resolve().parents[1]
SESSIONS = 20
SERVER_BUDGET = 1024 * 2**20  # the Streamlit process: its own memory plus results kept (each < 256 MiB)
RUNAWAY = {  # session -> (query, words of its refusal)
    0: ("SELECT len(range(100000000)) AS x", "memory limit"),
    1: ("SELECT count(DISTINCT range) FROM range(500000000)", "memory limit"),
    2: ("SELECT sum(a.range * b.range) FROM range(1000000) a CROSS JOIN range(1000000) b", "time limit"),
    3: ("SELECT repeat('y', 250000) AS s FROM range(10000)", "larger than 256 MiB"),
}
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's Chromium at /usr/bin/chromium")]


def _rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def _children(pid: int) -> list[int]:
    out = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            out += [int(c) for c in (task / "children").read_text().split()]
    except (FileNotFoundError, ProcessLookupError):
        pass
    return out


class Sampler(threading.Thread):
    """Peak RSS of the Streamlit process and of it plus its workers, every 20 ms."""

    def __init__(self, server_pid: int):
        super().__init__(daemon=True)
        self.pid, self.stop, self.server_peak, self.tree_peak, self.workers_seen = server_pid, False, 0, 0, set()

    def run(self) -> None:
        while not self.stop:
            server = _rss(self.pid)
            workers = _children(self.pid)
            self.workers_seen.update(workers)
            self.server_peak = max(self.server_peak, server)
            self.tree_peak = max(self.tree_peak, server + sum(_rss(w) for w in workers))
            time.sleep(0.02)


@contextlib.contextmanager
def served(store: Path):
    """`mechscope serve STORE` on a free loopback port: yields (url, the Streamlit process's pid)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "serve", str(store), "--port", str(port),
                              "--host", "127.0.0.1"], cwd=REPO, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/_stcore/health", timeout=2)
                break
            except OSError:
                assert serve.poll() is None and time.monotonic() < deadline
                time.sleep(0.3)
        (server_pid,) = _children(serve.pid)
        yield url, server_pid
    finally:
        os.killpg(serve.pid, signal.SIGTERM)
        try:
            serve.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(serve.pid, signal.SIGKILL)
            serve.wait()


def _running(page) -> bool:
    return page.locator('[data-testid="stSpinner"]').count() > 0


def _finished(page) -> tuple[str, list[str]] | None | bool:
    """(its notice, the result's cells) once a session's query ended; True when it was told busy."""
    alerts = page.locator('[data-testid="stAlert"]')
    texts = [alerts.nth(k).inner_text() for k in range(alerts.count())]
    done = [t for t in texts if any(w in t for w in ("rows in", "limit", "larger", "failed", "Error"))]
    if not done:
        return any("busy" in t for t in texts) or None
    cells = page.locator('[role="gridcell"]')
    if "rows in" in done[0]:
        cells.first.wait_for(state="attached", timeout=30_000)
    return done[0], [cells.nth(k).inner_text() for k in range(cells.count())]


def drive(url: str, sqls: dict[int, str]) -> tuple[dict, int]:
    """One browser page (one session) per query, all run at once; busy ones click again.
    ({session: (notice, cells)}, busy retries)."""
    from playwright.sync_api import sync_playwright

    outcome, retries = {}, 0
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--headless", "--no-sandbox"])
        pages = [browser.new_page() for _ in sqls]
        for page in pages:
            page.goto(f"{url}/sql", wait_until="commit")
        for i, page in enumerate(pages):  # type every query, then run them all at once
            page.locator("textarea").first.fill(sqls[i], timeout=60_000)
        clicked = {}
        for i, page in enumerate(pages):
            page.get_by_role("button", name="Run query").click(timeout=60_000)
            clicked[i] = time.monotonic()
        end = time.monotonic() + 480  # 20 queries through 2 slots, each a new process: slow on 2 busy cores
        while len(outcome) < len(pages) and time.monotonic() < end:
            for i, page in enumerate(pages):
                # the last run's notice stays on screen while the new run waits in line and runs
                # (its spinner shows): read a page only once that is over
                if i in outcome or time.monotonic() - clicked[i] < 3 or _running(page):
                    continue
                state = _finished(page)
                if isinstance(state, tuple):
                    outcome[i] = state
                elif state is True:
                    retries += 1
                    page.get_by_role("button", name="Run query").click()
                    clicked[i] = time.monotonic()
            time.sleep(1.0)
        for i, page in enumerate(pages):  # what an unfinished session shows, for the failure message
            if i not in outcome:
                alerts = page.locator('[data-testid="stAlert"]')
                outcome[i] = ("unfinished: " + " | ".join(alerts.nth(k).inner_text() for k in range(alerts.count())),
                              [])
        browser.close()
    return outcome, retries


def test_twenty_sessions_with_runaway_queries(tmp_path):
    store = write_synthetic_store(tmp_path / "store")
    sqls = {i: RUNAWAY[i][0] if i in RUNAWAY else f"SELECT {i} * 100 + count(*) AS v FROM neurons"
            for i in range(SESSIONS)}
    with served(store) as (url, server_pid):
        sampler = Sampler(server_pid)
        sampler.start()
        started = time.monotonic()
        outcome, retries = drive(url, sqls)
        seconds = time.monotonic() - started
        sampler.stop = True
        sampler.join()
    print(f"\n{SESSIONS} sessions in {seconds:.1f} s; server peak RSS {sampler.server_peak / 2**20:.0f} MiB, "
          f"server + workers peak {sampler.tree_peak / 2**20:.0f} MiB, {len(sampler.workers_seen)} workers, "
          f"busy retries {retries}")
    unfinished = {i: o for i, o in outcome.items() if o[0].startswith("unfinished")}
    assert not unfinished, unfinished
    for i, (notice, cells) in outcome.items():
        if i in RUNAWAY:
            assert RUNAWAY[i][1] in notice, (i, notice)
        else:
            assert "1 rows in" in notice and cells == [str(i * 100 + 16)], (i, notice, cells)
    assert sampler.server_peak < SERVER_BUDGET
    assert sampler.tree_peak < SERVER_BUDGET + sqlworker.MAX_CONCURRENT * sqlworker.WORKER_ADDRESS_SPACE
