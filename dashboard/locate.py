"""Finding the stores a dashboard serves: one store folder, or a folder of store folders.

Filesystem checks only, no Streamlit and no DuckDB: `serve` calls this before it starts
Streamlit (so a wrong path fails in one line), and `nav` calls it for the store picker.
Reading manifests is `store.manifest`'s job; opening and querying a store, `store.reader`'s.
"""

from __future__ import annotations

from pathlib import Path

from store import StoreError
from store.manifest import MANIFEST_NAME, PARTIAL_SUFFIX, check_schema_version, read_manifest


def is_store(path: Path) -> bool:
    """A finished store: has a manifest and is not an unfinished build (`<out>.partial`)."""
    return not path.name.endswith(PARTIAL_SUFFIX) and (path / MANIFEST_NAME).is_file()


def check_store(path: Path) -> None:
    """StoreError (one line) unless `path` is a store this code reads: its manifest parses and
    its schema version is this code's (an older store must be rebuilt)."""
    check_schema_version(read_manifest(path), path)


def find_stores(path: str | Path) -> list[Path]:
    """[path] if it is a store, else the store folders directly inside it, sorted by name.

    Raises StoreError (one line) when the path is missing, is an unreadable store, or holds none.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise StoreError(f"'{path}' does not exist: give a store folder or a folder of stores")
    if not path.is_dir():
        raise StoreError(f"'{path}' is a file: give a store folder (with {MANIFEST_NAME}) or a folder of stores")
    if (path / MANIFEST_NAME).is_file() or path.name.endswith(PARTIAL_SUFFIX):
        check_store(path)  # a store that cannot be read fails here, in its own words
        return [path.resolve()]
    stores = sorted(p.resolve() for p in path.iterdir() if p.is_dir() and is_store(p))
    if not stores:
        raise StoreError(
            f"'{path}' is neither a store (no {MANIFEST_NAME}) nor a folder of stores; "
            "build one with `mechscope build ... --out DIR`"
        )
    return stores
