"""User SQL in a worker process that the OS bounds: memory, time, result size, concurrency.

`store/sqlguard.py` decides *what* may run (one read-only SELECT, no files, no settings); this
module decides *how much* it may take. Each query runs in a fresh child process
(`python -m store.sqlworker`), so no statement, aggregate, scalar function (`len(range(1e8))`)
or wide row can take the serving process's memory:

- the child caps its own address space (`RLIMIT_AS`, `WORKER_ADDRESS_SPACE`) before it imports
  DuckDB; DuckDB's `memory_limit` (`DUCKDB_MEMORY`) fails large operators first with its own
  message, and the OS limit stops what DuckDB does not count (vectors of a scalar function);
- the child runs in the store's folder and its views name their files relative to it: nothing
  it shows (view definitions, plans, errors) holds the machine's absolute paths;
- results come back as an Arrow IPC stream in small batches; the child counts rows and bytes
  *before* it sends a batch and stops at `max_rows + 1` rows or refuses past `max_bytes`, so the
  parent never holds more than the byte cap; the parent checks both again as it reads;
- the parent kills the child (SIGKILL) at the time limit: a query ends within it plus the
  process's exit, whatever it is doing;
- at most `MAX_CONCURRENT` queries run at once per serving process; the next ones wait in a
  first-come line of at most `MAX_WAITING`, each up to `SLOT_WAIT_S`; a query that finds the
  line full, or waits its whole time, is refused with `QueryBusy` ("busy, try again"). The line
  is fair (a session that retried is not overtaken by newer ones) and bounded (no queue grows).

The child's own peak resident memory (its VmHWM, reported as it exits or read before a kill)
comes back with every result and refusal.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

WORKER_ADDRESS_SPACE = 2 * 2**30  # bytes of virtual memory per query's process (its RSS stays below)
DUCKDB_MEMORY = "1GB"  # DuckDB's own limit, inside the address space
DUCKDB_THREADS = 2
MAX_CONCURRENT = 2  # user queries running at once in one serving process
MAX_WAITING = 16  # queries waiting for a slot, in arrival order; one more is told "busy" at once
SLOT_WAIT_S = 30.0  # how long a query waits in that line before "busy, try again"
BATCH_ROWS = 256  # rows per batch sent back: a batch of wide rows stays small
EXIT_REFUSED = 3


class FairSlots:
    """`slots` permits handed out in arrival order to at most `max_waiting` waiters. Unlike a
    semaphore, a waiter is never overtaken by a later one, so under load every query gets its
    turn instead of some sessions starving."""

    def __init__(self, slots: int, max_waiting: int):
        self._free, self.max_waiting = slots, max_waiting
        self._line: collections.deque = collections.deque()
        self._changed = threading.Condition()

    def acquire(self, timeout: float) -> bool:
        """True once this caller holds a slot; False when the line is full or `timeout` passed."""
        with self._changed:
            if self._free > 0 and not self._line:
                self._free -= 1
                return True
            if len(self._line) >= self.max_waiting or timeout <= 0:
                return False
            ticket = object()
            self._line.append(ticket)
            deadline = time.monotonic() + timeout
            try:
                while not (self._free > 0 and self._line[0] is ticket):
                    left = deadline - time.monotonic()
                    if left <= 0:
                        return False
                    self._changed.wait(left)
                self._line.popleft()
                self._free -= 1
                return True
            finally:
                if ticket in self._line:  # gave up (timeout, or an exception while waiting)
                    self._line.remove(ticket)
                self._changed.notify_all()  # the next in line may now be first

    def release(self) -> None:
        with self._changed:
            self._free += 1
            self._changed.notify_all()

    @property
    def waiting(self) -> int:
        with self._changed:
            return len(self._line)


_slots = FairSlots(MAX_CONCURRENT, MAX_WAITING)
_REPO = str(Path(__file__).resolve().parents[1])


@dataclass(frozen=True)
class WorkerLimits:
    max_rows: int
    timeout_s: float
    max_bytes: int
    address_space: int = WORKER_ADDRESS_SPACE
    duckdb_memory: str = DUCKDB_MEMORY


@dataclass(frozen=True)
class WorkerOutcome:
    batches: list
    schema: object  # pa.Schema
    truncated: bool
    elapsed_s: float
    peak_rss_bytes: int


def release_memory() -> None:
    """Give freed memory back to the OS: results read from a worker are large allocations whose
    pages the C allocator may keep after they are freed (glibc raises its mmap threshold after
    freeing big blocks), so a server would keep the peak of past results. Cheap; called before
    every query, so that a session's dropped result does not stay resident."""
    import ctypes

    import pyarrow as pa

    pa.default_memory_pool().release_unused()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def run_in_worker(store_dir: Path, files: dict[str, str], sql: str, limits: WorkerLimits) -> WorkerOutcome:
    """Run the checked statement `sql` over `files` ({view: file name in store_dir}) in a child
    process. Raises QueryBusy, QueryTimeout, QueryRefused (memory, result size) or StoreError
    (what DuckDB rejects), each one line; the peak RSS is on the exception as `peak_rss_bytes`."""
    from store.errors import QueryBusy, QueryRefused, QueryTimeout, StoreError

    release_memory()
    if not _slots.acquire(timeout=SLOT_WAIT_S):
        raise QueryBusy(f"busy: {MAX_CONCURRENT} queries are running on this server and more are waiting; "
                        "try again in a moment")
    try:
        request = {"files": files, "sql": sql, "max_rows": limits.max_rows, "max_bytes": limits.max_bytes,
                   "address_space": limits.address_space, "duckdb_memory": limits.duckdb_memory,
                   "threads": DUCKDB_THREADS}
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (_REPO, os.environ.get("PYTHONPATH")) if p)}
        with tempfile.TemporaryFile() as err:
            started = time.perf_counter()
            # -P: the store folder (the working directory) is not on sys.path: a file in it named
            # like a module (duckdb.py) is never imported
            proc = subprocess.Popen([sys.executable, "-P", "-m", "store.sqlworker"], cwd=store_dir, env=env,
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err)
            killed = threading.Event()
            watchdog = threading.Timer(limits.timeout_s, lambda: (killed.set(), _kill(proc)))
            watchdog.daemon = True
            watchdog.start()
            try:
                schema, batches, rows, over = _read(proc, request, limits)
            except BaseException:  # Ctrl-C, a closing session: the child goes too
                _kill(proc)
                raise
            finally:
                peak, status = _reap(proc)
                watchdog.cancel()
                proc.stdout.close()
            elapsed = time.perf_counter() - started
            err.seek(0)
            tail = err.read()[-65536:]
            message = _last_json(tail)
            own = _peaks.pop(proc.pid, 0) or _reported_peak(tail)
            peak = own or peak
        if killed.is_set():
            raise _with_peak(QueryTimeout(
                f"query stopped after the {limits.timeout_s:g} s time limit; narrow it (WHERE, LIMIT)"), peak)
        if over or (message or {}).get("kind") == "bytes":
            raise _with_peak(QueryRefused(f"the result is larger than {limits.max_bytes / 2**20:g} MiB; "
                                          "select fewer rows or columns"), peak)
        if rows > limits.max_rows:
            return WorkerOutcome(_first_rows(batches, limits.max_rows), schema, True, elapsed, peak)
        if status != 0 or message is not None:
            raise _with_peak(_failure(status, message, limits), peak)
        if schema is None:
            raise _with_peak(StoreError("the query worker returned no result"), peak)
        return WorkerOutcome(batches, schema, False, elapsed, peak)
    finally:
        _slots.release()


def _read(proc: subprocess.Popen, request: dict, limits: WorkerLimits) -> tuple:
    """Send the request, read the child's batches: (schema or None, batches, rows, over the byte
    cap). Stops the child once it has sent more than max_rows rows or max_bytes bytes."""
    import pyarrow as pa

    schema, batches, rows, size = None, [], 0, 0
    try:
        proc.stdin.write(json.dumps(request).encode("utf-8"))
        proc.stdin.close()
        reader = pa.ipc.open_stream(proc.stdout)
        schema = reader.schema
        for batch in reader:
            rows, size = rows + batch.num_rows, size + batch.nbytes
            if size > limits.max_bytes:
                _kill(proc)
                return schema, [], rows, True
            batches.append(batch)
            if rows > limits.max_rows:
                _kill(proc)  # enough rows: the rest is not wanted
                break
    except (pa.ArrowInvalid, OSError, ValueError):
        pass  # the child ended without (or in the middle of) a result: its status says why
    return schema, batches, rows, False


def _kill(proc: subprocess.Popen) -> None:
    _peaks[proc.pid] = max(_peaks.get(proc.pid, 0), _hwm(proc.pid))  # its own peak, read while it lives
    with contextlib.suppress(ProcessLookupError, OSError):  # it ended meanwhile
        proc.send_signal(signal.SIGKILL)


# The worker's peak RSS. wait4's ru_maxrss counts the memory of the process that forked it, at
# the fork (the kernel keeps the old address space's high-water mark across exec): a serving
# process of 2 GB would make every worker look 2 GB large. So the worker reports its own VmHWM
# (its address space after exec) when it ends, the parent reads it before killing one, and
# ru_maxrss is used only when neither is known.
_peaks: dict[int, int] = {}


def _hwm(pid: int | str = "self") -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def _reap(proc: subprocess.Popen) -> tuple[int, int]:
    """Wait for the child; (its peak RSS in bytes, its exit status: code, or -signal)."""
    while True:
        try:
            _, status, usage = os.wait4(proc.pid, 0)
            break
        except InterruptedError:
            continue
        except ChildProcessError:  # reaped elsewhere (should not happen): no usage to report
            proc.wait()
            return 0, proc.returncode or 0
    code = os.waitstatus_to_exitcode(status)
    proc.returncode = code
    return usage.ru_maxrss * 1024, code


def _reported_peak(raw: bytes) -> int:
    for line in reversed(raw.decode("utf-8", "replace").splitlines()):
        if line.startswith('{"peak_rss"'):
            with contextlib.suppress(ValueError, KeyError, TypeError):
                return int(json.loads(line)["peak_rss"])
    return 0


def _last_json(raw: bytes) -> dict | None:
    for line in reversed(raw.decode("utf-8", "replace").splitlines()):
        if line.startswith("{") and not line.startswith('{"peak_rss"'):
            try:
                return json.loads(line)
            except ValueError:
                return None
    return None


def _failure(status: int, message: dict | None, limits: WorkerLimits):
    from store.errors import QueryRefused, StoreError

    memory = (f"query needs more than its memory limit ({limits.address_space / 2**30:g} GiB per query, "
              f"{limits.duckdb_memory} for DuckDB); narrow it (WHERE, LIMIT) or aggregate")
    if message is None:  # killed by the OS (out of memory, a crash): no message of its own
        return QueryRefused(memory if status < 0 else f"the query worker failed (exit status {status})")
    kind, text = message.get("kind"), str(message.get("message", ""))
    if kind == "memory":
        return QueryRefused(memory)
    if kind == "refused":
        return QueryRefused(text)
    return StoreError(text)


def _with_peak(exc: Exception, peak: int) -> Exception:
    exc.peak_rss_bytes = peak
    return exc


def _first_rows(batches: list, n: int) -> list:
    out, left = [], n
    for b in batches:
        if left <= 0:
            break
        out.append(b.slice(0, left))
        left -= min(left, b.num_rows)
    return out


# --- the child ----------------------------------------------------------------------------------


def _child() -> int:
    """Read the request on stdin, run it, write an Arrow IPC stream on stdout. On failure: one
    JSON line {"kind", "message"} on stderr and exit status EXIT_REFUSED."""
    import resource

    request = json.loads(sys.stdin.buffer.read().decode("utf-8"))
    cap = int(request["address_space"])
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    try:
        import pyarrow as pa
    except MemoryError:
        return _say("memory", "out of memory while starting")
    try:
        from store.sqlguard import sandbox

        con = sandbox(request["files"], request["duckdb_memory"], int(request["threads"]))
        reader = _arrow_reader(con.sql(request["sql"]), BATCH_ROWS)
        out = sys.stdout.buffer
        max_rows, max_bytes = int(request["max_rows"]), int(request["max_bytes"])
        rows = size = 0
        with pa.ipc.new_stream(out, reader.schema) as writer:
            for batch in reader:
                size += batch.nbytes
                if size > max_bytes:
                    return _say("bytes", "result too large")
                writer.write_batch(batch)
                rows += batch.num_rows
                if rows > max_rows:
                    break
        out.flush()
        return 0
    except BrokenPipeError:
        return 0  # the parent has what it wants
    except MemoryError:
        return _say("memory", "out of memory")
    except Exception as e:  # duckdb.Error, Arrow's OSError/ArrowException wrapping DuckDB's, bad_alloc
        return _say(*_classify(e))


def _say(kind: str, message: str) -> int:
    sys.stderr.write(json.dumps({"kind": kind, "message": message}) + "\n")
    sys.stderr.flush()
    return EXIT_REFUSED


def _classify(e: BaseException) -> tuple[str, str]:
    import duckdb

    from store.errors import one_line

    msg = one_line(e)
    if isinstance(e, duckdb.OutOfMemoryException) or "Out of Memory" in msg or "bad_alloc" in msg:
        return "memory", msg
    if isinstance(e, duckdb.PermissionException) or "Permission Error" in msg:
        return "refused", f"refused: queries can read only the store's tables ({msg})"
    if "configuration has been locked" in msg:
        return "refused", "refused: queries cannot change settings"
    if "2147483647" in msg or "offset overflow" in msg.lower():
        return "bytes", msg
    return "store", msg


def _arrow_reader(rel, batch_size: int):
    if hasattr(rel, "to_arrow_reader"):
        return rel.to_arrow_reader(batch_size)
    return rel.fetch_arrow_reader(batch_size)


def _main() -> int:
    code = _child()
    with contextlib.suppress(OSError, ValueError):
        sys.stderr.write(json.dumps({"peak_rss": _hwm()}) + "\n")
        sys.stderr.flush()
    return code


if __name__ == "__main__":
    sys.exit(_main())
