"""Builds on a real local Ray cluster (started by the test in a temporary folder, on this
machine's cores): shards as actor tasks merged into the one-pass store, and the same when a
worker process is killed in the middle of its shard.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from test_build import assert_same_store

from pipeline.build import BuildParams, build
from pipeline.ray_build import PROGRESS_ACTOR, _cluster, ray_build
from pipeline.stats import StatsConfig
from store import open_store

ray = pytest.importorskip("ray")
STATS = StatsConfig(seq_len=32, top_k=5, records=12, context_before=6, context_after=2, hist_sample_shift=1,
                    lens_sample_shift=2)
PARAMS = BuildParams(model="tiny-gpt2", corpus="wiki-vital", max_tokens=16_384, stats=STATS, batch_size=2)


@pytest.fixture(scope="module")
def cluster():
    home_before = set(Path.home().iterdir())
    with _cluster(None, worker_threads=1):
        temp = Path(os.environ["RAY_TMPDIR"])
        yield
    assert not temp.exists()  # session files removed
    assert set(Path.home().iterdir()) <= home_before  # no ~/.ray/auth_token or the like


@pytest.fixture(scope="module")
def one_pass(tmp_path_factory):
    return open_store(build(PARAMS, tmp_path_factory.mktemp("one") / "store", progress=False))


def test_shards_on_ray_merge_into_the_one_pass_store(cluster, one_pass, tmp_path):
    store = open_store(ray_build(PARAMS, tmp_path / "ray", shards=3, progress=False))
    assert_same_store(one_pass, store)
    assert store.manifest["build"]["shards"] == 3 and store.manifest["timings"]["ray_s"] > 0


def test_a_worker_killed_mid_shard_is_restarted_and_the_store_is_the_same(cluster, one_pass, tmp_path):
    result: dict = {}

    def run() -> None:
        try:
            result["store"] = ray_build(PARAMS, tmp_path / "ray", shards=2, progress=False)
        except BaseException as e:  # noqa: BLE001 - reported below
            result["error"] = e

    driver = threading.Thread(target=run)
    driver.start()
    per_shard = PARAMS.max_tokens // 2
    killed = None
    deadline = time.monotonic() + 120
    while killed is None and driver.is_alive() and time.monotonic() < deadline:
        for name in [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)
                     if a["name"].startswith(PROGRESS_ACTOR)]:  # this build's: the last one's was killed
            try:
                tracker = ray.get_actor(name)
                state = ray.get(tracker.state.remote())
            except (ValueError, ray.exceptions.RayActorError):  # the last build's, going away
                continue
            middle = [s for s, n in state["tokens"].items() if 0 < n < per_shard // 2]
            if middle:
                killed = (middle[0], state["pids"][middle[0]])
                os.kill(killed[1], signal.SIGKILL)
                break
        time.sleep(0.02)
    assert killed is not None, "no shard was seen in its first half"
    seen_after = set()
    while driver.is_alive():
        driver.join(timeout=0.2)
        with contextlib.suppress(Exception):  # the tracker goes with the build
            seen_after.add(ray.get(tracker.state.remote())["pids"][killed[0]])
    assert "error" not in result, result.get("error")
    assert any(pid != killed[1] for pid in seen_after)  # the shard ran again in a new worker process
    assert_same_store(one_pass, open_store(result["store"]))
