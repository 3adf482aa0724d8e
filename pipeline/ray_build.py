"""`mechscope build ... --ray [ADDRESS]`: the shards of a build as Ray actor tasks, merged here.

The driver counts the corpus index once (`pipeline/corpus_index.py`) and puts it in Ray's object
store; one actor per worker loads the model once and runs shards (`pipeline.shards.run_shard`)
one after another, returning each shard's states and corpus part through the object store (no
shared file system needed). A worker process that dies is restarted by Ray (the model loaded
again) and its shard rerun from the start: the merge sees each shard exactly once, so a lost
worker changes the time, never the store. Workers report tokens done per shard to a small
progress actor; the driver shows one bar (tokens/s, ETA) over the whole build. The merge and
the weight analyses run in the driver (`pipeline.shards.merge_shards`).

Without an address, a local cluster is started for the build and stopped after it, with its
session files (and anything Ray writes that would go under the home) in a temporary folder that
is removed. An address (`ray://host:10001`, `auto`) joins a running cluster, whose workers
must have mechscope and the model available.
"""

from __future__ import annotations

import contextlib
import functools
import os
import secrets
import shutil
import tempfile
import time
from pathlib import Path

PROGRESS_ACTOR = "mechscope-progress"  # named actor (with a unique suffix): tokens and pid per shard
MAX_RESTARTS = 3  # a worker process restarted this many times at most; its shard retried as often


def ray_build(params, out: str | Path, *, address: str | None = None, shards: int | None = None,
              device: str = "cpu", worker_threads: int = 1, progress: bool = True, model=None) -> Path:
    """Build the store at `out` from `shards` shards run on Ray (default: one per worker slot:
    the cluster's CPUs / worker_threads, or its GPUs with device cuda). `model`: the loaded
    model for the driver's index and merge (loaded here if None)."""
    import ray

    from pipeline import corpus as corpora
    from pipeline.build import _model, corpus_fingerprint
    from pipeline.corpus_index import corpus_index
    from pipeline.shards import build_windows, merge_shards

    corpora.check_corpus(params.corpus)
    model = _model(params, "cpu" if device.startswith("cuda") else device, model)
    fingerprint = corpus_fingerprint(params.corpus)
    index = corpus_index(params.corpus, model, fingerprint, params.max_tokens)
    n_windows = build_windows(params, index)
    with _cluster(address, worker_threads) as started:
        gpus = device.startswith("cuda")
        slots = int(ray.cluster_resources().get("GPU" if gpus else "CPU", 0)) // (1 if gpus else worker_threads)
        if slots < 1:
            from pipeline.models import ModelError

            raise ModelError(f"the Ray cluster has no {'GPU' if gpus else 'CPU'} free for a worker "
                             f"({ray.cluster_resources()})")
        count = shards or slots
        n_workers = min(slots, count)
        progress_cls, worker_cls = _remote_classes()
        tracker_name = f"{PROGRESS_ACTOR}-{os.getpid()}-{time.time_ns()}"
        tracker = progress_cls.options(name=tracker_name).remote()
        worker_cls = worker_cls.options(num_cpus=0 if gpus else worker_threads, num_gpus=1 if gpus else 0,
                                          max_restarts=MAX_RESTARTS, max_task_retries=MAX_RESTARTS)
        workers = [worker_cls.remote(params, device, worker_threads, tracker_name) for _ in range(n_workers)]
        index_ref = ray.put(index)
        pending = {workers[i % n_workers].run.remote(i, count, fingerprint, index_ref): i for i in range(count)}
        done = _wait(ray, pending, tracker, n_windows * params.stats.seq_len, progress)
        timings = {"ray_s": time.perf_counter() - started}
        for actor in [*workers, tracker]:
            ray.kill(actor)
    return merge_shards(done, out, model=model, device="cpu" if device.startswith("cuda") else device,
                        progress=progress, timings=timings)


def _wait(ray, pending: dict, tracker, total_tokens: int, progress: bool) -> list:
    """Every shard's result, showing tokens done over the whole build while they run."""
    from pipeline.progress import Progress

    bar = Progress(total_tokens=total_tokens, enabled=progress)
    done, shown = [], 0
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            for ref in ready:
                pending.pop(ref)
                done.append(ray.get(ref))
            now = ray.get(tracker.total.remote())
            bar.update(now - shown)  # may go back when a lost worker's shard starts over
            shown = now
    finally:
        bar.close()
    return done


@contextlib.contextmanager
def _cluster(address: str | None, worker_threads: int):
    """Ray connected for the build: the running session, the cluster at `address`, or a local
    cluster started now in a temporary folder (stopped and removed after). Yields the start time."""
    import ray

    started = time.perf_counter()
    if ray.is_initialized():
        yield started
        return
    if address:
        ray.init(address=address, logging_level="ERROR", log_to_driver=False)
        try:
            yield started
        finally:
            ray.shutdown()
        return
    temp = tempfile.mkdtemp(prefix="mechscope-ray-", dir="/tmp")  # short: Ray's socket paths are limited
    # Ray's session files go to the temporary folder; its auth token is given (a fresh random one)
    # rather than written to ~/.ray/auth_token
    saved = {k: os.environ.get(k) for k in ("RAY_TMPDIR", "RAY_AUTH_TOKEN")}
    os.environ["RAY_TMPDIR"] = temp
    os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    try:
        ray.init(num_cpus=os.cpu_count(), _temp_dir=temp, include_dashboard=False, logging_level="ERROR",
                 log_to_driver=False, configure_logging=False)
        yield started
    finally:
        with contextlib.suppress(Exception):
            ray.shutdown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        shutil.rmtree(temp, ignore_errors=True)


@functools.cache
def _remote_classes():
    """(Progress, ShardWorker), defined on first use: importing this module does not import Ray."""
    import ray

    @ray.remote(num_cpus=0)
    class Progress:
        """Tokens done per shard, as last reported (a rerun shard starts again from 0)."""

        def __init__(self):
            self.tokens: dict[int, int] = {}
            self.pids: dict[int, int] = {}

        def report(self, shard: int, tokens: int, pid: int) -> None:
            self.tokens[shard], self.pids[shard] = tokens, pid

        def total(self) -> int:
            return sum(self.tokens.values())

        def state(self) -> dict:
            return {"tokens": dict(self.tokens), "pids": dict(self.pids)}

    @ray.remote
    class ShardWorker:
        """One loaded model; runs shards one after another."""

        def __init__(self, params, device: str, threads: int, tracker: str):
            import torch

            from pipeline.build import _model

            torch.set_num_threads(threads)
            self.params, self.tracker = params, ray.get_actor(tracker)
            self.model = _model(params, device)

        def run(self, shard: int, count: int, fingerprint: str, index):
            from pipeline.shards import run_shard

            done = 0
            pid = os.getpid()
            self.tracker.report.remote(shard, 0, pid)

            def on_batch(tokens: int) -> None:
                nonlocal done
                done += tokens
                self.tracker.report.remote(shard, done, pid)

            return run_shard(self.params, shard, count, self.model, fingerprint=fingerprint, index=index,
                             on_batch=on_batch)

    return Progress, ShardWorker
