"""The checks a store passes before it is opened: its manifest's shape and its table files.

`open_store` (and so every command and every dashboard page) calls `check_store_files`, which
raises one readable StoreError naming the first damaged table and saying "run `mechscope
verify`". What it checks, per table the manifest lists: the file is present, has the recorded
size and sha256, and its Parquet footer reads with the recorded row count. `manifest_problems`
checks the manifest's shape (sections are objects, each table entry has its rows, bytes and
sha256) and is also part of `verify_store`. Hashing a store costs about a second per 400 MB, so
a store that passed is remembered, per process and on disk (`$MECHSCOPE_CACHE/checked/`), by
the size, mtime and inode of its manifest and files: it is hashed again once any of them
changes (a rebuilt store, a damaged file).
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

from store.errors import StoreError, one_line
from store.manifest import MANIFEST_NAME, sha256_file, table_file_name

SECTIONS = ("model", "corpus", "build", "timings")  # manifest parts that must be objects when present
_ok: set[str] = set()  # fingerprints of stores that passed, in this process
_lock = threading.Lock()


def manifest_problems(manifest: dict) -> list[str]:
    """What is wrong with the manifest's shape (an empty list: nothing)."""
    out = []
    for key in SECTIONS:
        if key in manifest and not isinstance(manifest[key], dict):
            out.append(f"{MANIFEST_NAME}: '{key}' is {type(manifest[key]).__name__}, not an object")
    tables = manifest.get("tables")
    if not isinstance(tables, dict):
        return [*out, f"{MANIFEST_NAME}: no 'tables' object"]
    for name, entry in tables.items():
        if not isinstance(entry, dict):
            out.append(f"{name}: its {MANIFEST_NAME} entry is not an object")
            continue
        for field, kind in (("rows", int), ("bytes", int), ("sha256", str)):
            value = entry.get(field)
            if not isinstance(value, kind) or isinstance(value, bool) or (kind is int and value < 0):
                out.append(f"{name}: its {MANIFEST_NAME} entry has no valid '{field}' ({value!r})")
        file = entry.get("file", table_file_name(str(name)))
        if not isinstance(file, str) or Path(file).name != file:
            out.append(f"{name}: manifest file name {file!r} is not a plain file name")
    return out


def check_store_files(path: Path, manifest: dict) -> None:
    """StoreError (one line: the table, what is wrong, run `mechscope verify`) unless the
    manifest's shape and every table file it lists are as recorded. Passing stores are cached."""
    key = _fingerprint(path, manifest)
    with _lock:
        if key in _ok:
            return
    if key is not None and _cached_on_disk(key):
        with _lock:
            _ok.add(key)
        return
    problems = manifest_problems(manifest)
    if not problems:
        for name, entry in manifest["tables"].items():
            problem = _table_problem(path, entry)
            if problem:
                problems.append(f"table {name} {problem}")
                break
    if problems:
        extra = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise StoreError(f"store '{path}' is damaged: {problems[0]}{extra}; run `mechscope verify {path}`")
    if key is not None:
        with _lock:
            _ok.add(key)
        _remember_on_disk(key)


def _table_problem(store: Path, entry: dict) -> str | None:
    import pyarrow.parquet as pq

    name = entry.get("file", "")
    file = store / name
    if not file.is_file():
        return f"has no file ('{name}' is missing)"
    size = file.stat().st_size
    if size != entry["bytes"]:
        return f"is damaged: '{name}' has {size:,} bytes, the manifest says {entry['bytes']:,}"
    try:
        rows = pq.read_metadata(file).num_rows
    except Exception as e:  # a damaged footer: pyarrow's own words, one line
        return f"is damaged: '{name}' is not readable Parquet ({one_line(e)})"
    if rows != entry["rows"]:
        return f"is damaged: '{name}' has {rows:,} rows, the manifest says {entry['rows']:,}"
    if sha256_file(file) != entry["sha256"]:
        return f"is damaged: '{name}' differs from its checksum in the manifest"
    return None


def _fingerprint(path: Path, manifest: dict) -> str | None:
    """A key that changes when the manifest or any table file changes; None when one is missing."""
    parts = [str(path.resolve())]
    tables = manifest.get("tables")
    names = [MANIFEST_NAME] + ([e.get("file", table_file_name(str(n))) if isinstance(e, dict) else "?"
                                for n, e in tables.items()] if isinstance(tables, dict) else [])
    for name in names:
        try:
            st = (path / str(name)).stat()
        except OSError:
            return None
        parts.append(f"{name}:{st.st_size}:{st.st_mtime_ns}:{st.st_ino}:{st.st_ctime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _cache_dir() -> Path:
    return Path(os.environ.get("MECHSCOPE_CACHE") or Path.home() / ".cache" / "mechscope") / "checked"


def _cached_on_disk(key: str) -> bool:
    try:
        return json.loads((_cache_dir() / f"{key}.json").read_text()).get("ok") is True
    except (OSError, ValueError, AttributeError):
        return False


def _remember_on_disk(key: str) -> None:
    try:
        folder = _cache_dir()
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{key}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps({"ok": True}))
        os.replace(tmp, folder / f"{key}.json")
    except OSError:
        pass  # a read-only home: the check runs again next time
