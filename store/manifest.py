"""The store folder's layout and its manifest: names, atomic JSON writes, checksums.

A store is a folder holding `manifest.json` and one `<table>.parquet` per table of
`store.schema.TABLES`. A build in progress lives in the sibling `<folder>.partial` and becomes
the store by one rename (`store/writer.py`); nothing here opens Parquet or DuckDB (that is
`store/reader.py` and `store/verify.py`).
"""

from __future__ import annotations

import hashlib
import json
import os
from datetime import UTC, date, datetime
from pathlib import Path

from store.errors import StoreError
from store.schema import LAYOUT_2_TABLE_VERSIONS, OLDEST_SCHEMA_VERSION, SCHEMA_VERSION

MANIFEST_NAME = "manifest.json"
PARTIAL_SUFFIX = ".partial"


def table_file_name(table: str) -> str:
    return f"{table}.parquet"


def partial_dir(out_dir: Path) -> Path:
    return out_dir.with_name(out_dir.name + PARTIAL_SUFFIX)


def refuse_partial(path: Path) -> None:
    """An unfinished build's work folder is never a store, even when its manifest is written."""
    if path.name.endswith(PARTIAL_SUFFIX):
        final = path.with_name(path.name[: -len(PARTIAL_SUFFIX)])
        raise StoreError(
            f"'{path}' is an unfinished build, not a store; continue it with "
            f"`mechscope build --resume --out {final}` or delete it"
        )


def read_manifest(path: Path) -> dict:
    """The parsed manifest of the store at `path`; StoreError (one line) when it is not a store."""
    refuse_partial(path)
    hint = ""
    if partial_dir(path).exists():
        hint = f"; an unfinished build is in '{partial_dir(path)}' (continue it with --resume)"
    if not path.exists():
        raise StoreError(f"'{path}' does not exist{hint}")
    if not path.is_dir():
        raise StoreError(f"'{path}' is not a folder (a store is a folder with {MANIFEST_NAME})")
    file = path / MANIFEST_NAME
    if not file.is_file():
        raise StoreError(f"'{path}' is not a mechscope store (no {MANIFEST_NAME}){hint}")
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise StoreError(f"'{file}' cannot be read as JSON: {e}") from None
    if not isinstance(manifest, dict):
        raise StoreError(f"'{file}' is not a JSON object")
    return manifest


def check_schema_version(manifest: dict, path: Path) -> int:
    """The manifest's store layout version; StoreError when missing or not one this code reads:
    a newer store needs a newer mechscope; one older than OLDEST_SCHEMA_VERSION must be rebuilt.
    (Tables have versions of their own: see `table_versions`.)"""
    version = manifest.get("schema_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise StoreError(f"'{path}' has no valid schema_version in its {MANIFEST_NAME}")
    if version > SCHEMA_VERSION:
        raise StoreError(
            f"'{path}' was written with store schema version {version}; this mechscope reads "
            f"versions up to {SCHEMA_VERSION}: upgrade mechscope"
        )
    if version < OLDEST_SCHEMA_VERSION:
        raise StoreError(
            f"'{path}' was written with store schema version {version}; this mechscope reads versions "
            f"{OLDEST_SCHEMA_VERSION} to {SCHEMA_VERSION}: rebuild it (`mechscope build` into a new folder; "
            "for the demo store, delete it and run `mechscope demo`)"
        )
    return version


def table_versions(manifest: dict) -> dict[str, int | None]:
    """{table: the version the store holds it in} for every table the manifest lists (None when
    an entry has no valid version). Stores of layout 2 record none: they hold the versions
    `LAYOUT_2_TABLE_VERSIONS` gives."""
    listed = manifest.get("tables")
    if not isinstance(listed, dict):
        return {}
    legacy = manifest.get("schema_version") == 2
    out: dict[str, int | None] = {}
    for name, entry in listed.items():
        version = entry.get("version") if isinstance(entry, dict) else None
        if legacy and version is None:
            version = LAYOUT_2_TABLE_VERSIONS.get(name)
        out[str(name)] = version if isinstance(version, int) and not isinstance(version, bool) else None
    return out


def now_utc() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _json_default(obj):
    # numpy scalars and arrays, without importing numpy here
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, datetime | date):
        return obj.isoformat()
    if isinstance(obj, set | frozenset):
        return sorted(obj)
    raise TypeError(f"manifest value of type {type(obj).__name__} is not JSON-serializable")


def dump_manifest(manifest: dict) -> str:
    try:
        return json.dumps(manifest, indent=2, ensure_ascii=False, default=_json_default, allow_nan=False) + "\n"
    except (TypeError, ValueError) as e:
        raise StoreError(f"cannot write {MANIFEST_NAME}: {e}") from None


def write_text_atomic(path: Path, text: str) -> None:
    """Write via a temp file, fsync, then rename over `path`: readers see the old or the new file."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def fsync_path(path: Path) -> None:
    """fsync a file or a folder (a folder's fsync makes renames inside it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on folders; the data files were synced already
        pass
    finally:
        os.close(fd)


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
