"""`mechscope serve`: start the Streamlit dashboard on a store (or a folder of stores).

Checks the path first (one-line `StoreError`, before Streamlit starts), then runs
`python -m streamlit run dashboard/app.py ... -- --store PATH` as a child process and waits,
passing SIGTERM / SIGINT / SIGHUP on to it (and exiting with it: no orphaned server).
The pages themselves are in `dashboard/views/`; routing is `dashboard/app.py`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from dashboard.locate import find_stores
from store import open_store

APP = Path(__file__).resolve().parent / "app.py"
REPO_ROOT = APP.parents[1]


def streamlit_command(path: Path, host: str = "127.0.0.1", port: int = 8501) -> list[str]:
    return [
        sys.executable, "-m", "streamlit", "run", str(APP),
        "--server.address", host,
        "--server.port", str(port),
        "--server.headless", "true",
        "--browser.gatherUsageStats", "false",
        "--client.toolbarMode", "minimal",  # no "Deploy" button: this is a local workbench
        "--", "--store", str(Path(path).resolve()),
    ]


def serve(path: Path, host: str = "127.0.0.1", port: int = 8501) -> int:
    """Serve the dashboard until the child exits or this process is told to stop; return the
    child's exit code. SIGTERM, SIGINT and SIGHUP are passed on to Streamlit and waited for, so
    `kill -TERM` of `mechscope serve` leaves no server behind; a child that does not stop within
    10 s is killed."""
    stores = find_stores(path)  # raises StoreError before anything starts
    if len(stores) == 1:  # a damaged store fails here, in one line (a folder of stores: per page)
        open_store(stores[0]).close()
    where = f"{len(stores)} stores in " if len(stores) > 1 else ""
    print(f"mechscope dashboard: {where}{Path(path).resolve()} at http://{host}:{port}", flush=True)
    env = dict(os.environ)
    # The app imports `dashboard` and `store`; make that work without an installed package too.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    received: list[int] = []
    child: list[subprocess.Popen] = []

    def forward(signum, _frame) -> None:
        received.append(signum)
        if child and child[0].poll() is None:
            child[0].send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in FORWARDED}  # before the child exists
    proc = subprocess.Popen(streamlit_command(path, host, port), env=env)
    child.append(proc)
    if received:  # a signal came while the child was starting
        proc.send_signal(received[0])
    try:
        code = proc.wait()
    except KeyboardInterrupt:  # SIGINT arrived before the handler was set: pass it on too
        forward(signal.SIGINT, None)
        code = _wait_or_kill(proc)
    finally:
        if proc.poll() is None:  # this process is leaving for another reason: never orphan the child
            proc.terminate()
            _wait_or_kill(proc)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received and code in (0, -received[0]):
        return 128 + received[0]  # "terminated by signal N", as a shell reports it
    return code


FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def _wait_or_kill(proc: subprocess.Popen, timeout_s: float = 10.0) -> int:
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()
