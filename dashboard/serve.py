"""`mechscope serve`: start the Streamlit dashboard on a store (or a folder of stores).

Checks the path first (one-line `StoreError`, before Streamlit starts), then runs
`python -m streamlit run dashboard/app.py ... -- --store PATH` as a child process and waits.
The pages themselves are in `dashboard/views/`; routing is `dashboard/app.py`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from dashboard.locate import find_stores

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
    """Serve the dashboard until the child exits or Ctrl-C; return the child's exit code."""
    stores = find_stores(path)  # raises StoreError before anything starts
    where = f"{len(stores)} stores in " if len(stores) > 1 else ""
    print(f"mechscope dashboard: {where}{Path(path).resolve()} at http://{host}:{port}", flush=True)
    env = dict(os.environ)
    # The app imports `dashboard` and `store`; make that work without an installed package too.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    proc = subprocess.Popen(streamlit_command(path, host, port), env=env)
    try:
        return proc.wait()
    except KeyboardInterrupt:
        # The terminal sent SIGINT to the child as well; forward it in case we were signalled alone.
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        try:
            return proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.terminate()
            return proc.wait()
