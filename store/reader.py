"""Opening a store: its manifest, and one in-memory DuckDB connection with a view per table.

`open_store(path)` returns a `Store` whose tables are DuckDB views over the store's Parquet
files (`CREATE VIEW neurons AS SELECT * FROM read_parquet('<abs path>')`). `Store.sql` runs
trusted SQL written in `store/`; user SQL goes through `store/sqlguard.py`, which builds its own
locked-down connection from `Store.table_files()`. Nothing here writes to the store folder.
Opening checks the files against the manifest (`store/integrity.py`); full checks (schema, sort
order) are `store/verify.py`.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa

from store import schema
from store.errors import StoreError, one_line
from store.integrity import check_store_files
from store.manifest import check_schema_version, read_manifest, table_file_name, table_versions


def sql_string(text: str) -> str:
    """A SQL string literal (for paths in DDL, where DuckDB takes no bound parameters)."""
    return "'" + text.replace("'", "''") + "'"


def view_sql(name: str, file: Path) -> str:
    """The CREATE VIEW for table `name`; `name` comes from the schema or a store's manifest (a
    table a statistic declared), never from a user, and is a plain identifier either way."""
    if not schema.is_identifier(name):
        raise KeyError(f"{name!r} is not a table name")
    return f'CREATE VIEW "{name}" AS SELECT * FROM read_parquet({sql_string(str(file))})'


def arrow_table(rel: duckdb.DuckDBPyRelation) -> pa.Table:
    """A relation's rows as a pyarrow Table (duckdb 2.0 spells it to_arrow_table; 1.x arrow())."""
    fetch = getattr(rel, "to_arrow_table", None) or rel.arrow
    return fetch()


def arrow_reader(rel: duckdb.DuckDBPyRelation, batch_size: int) -> pa.RecordBatchReader:
    """A streaming reader over a relation's rows (nothing is materialized up front)."""
    if hasattr(rel, "to_arrow_reader"):
        return rel.to_arrow_reader(batch_size)
    return rel.fetch_arrow_reader(batch_size)


class Store:
    """A read-only handle on one store. Use `cursor()` (or `sql`) per query: one DuckDB
    connection must not be shared across threads, and Streamlit runs sessions on threads."""

    def __init__(self, path: Path, manifest: dict):
        self.path = path
        self.manifest = manifest
        self._unusable: dict[str, str] = {}  # table -> why this code cannot read it
        self._files = self._find_files()
        self._con: duckdb.DuckDBPyConnection | None = duckdb.connect(":memory:")
        # Store files never change after commit, so Parquet footers can be cached across queries.
        self._con.execute("SET parquet_metadata_cache = true")
        try:
            for name, file in self._files.items():
                self._con.execute(view_sql(name, file))
        except duckdb.Error as e:
            self._con.close()
            raise StoreError(f"'{path}': cannot open its tables ({one_line(e)}); run `mechscope verify`") from None

    def _find_files(self) -> dict[str, Path]:
        """The Parquet file of every table this code can read: listed in the manifest, in the
        version of the table this code reads (tables a statistic declared for itself, not in the
        schema, are read as they are). Others are recorded in `_unusable` with the reason."""
        listed = self.manifest.get("tables")
        if not isinstance(listed, dict):
            raise StoreError(f"'{self.path}' has no table list in its manifest.json")
        versions = table_versions(self.manifest)
        known = [t.name for t in schema.TABLES if t.name in listed]
        files = {}
        for name in known + sorted(n for n in listed if n not in schema.TABLES_BY_NAME):
            entry = listed[name]
            if not schema.is_identifier(str(name)):
                raise StoreError(f"'{self.path}': manifest lists a table named {name!r}, not a plain identifier")
            file_name = entry.get("file", table_file_name(name)) if isinstance(entry, dict) else None
            if not isinstance(file_name, str) or Path(file_name).name != file_name:
                raise StoreError(f"'{self.path}': manifest entry for table {name!r} is malformed")
            spec = schema.TABLES_BY_NAME.get(name)
            if spec is not None and versions.get(name) != spec.version:
                self._unusable[name] = _version_notice(name, versions.get(name), spec)
                continue
            file = (self.path / file_name).resolve()
            if not file.is_file():
                raise StoreError(f"'{self.path}': table file '{file_name}' is missing; run `mechscope verify`")
            files[name] = file
        return files

    def has(self, table: str) -> bool:
        return table in self._files

    def missing(self, table: str) -> str | None:
        """None when this store has `table` in a version this code reads; else one sentence
        saying so and how to get it (for pages and commands that need the table)."""
        if table in self._files:
            return None
        if table in self._unusable:
            return self._unusable[table]
        spec = schema.TABLES_BY_NAME.get(table)
        what = schema.FAMILIES.get(spec.family, spec.family) if spec else "such table"
        return (f"This store has no {what} (table {table}): its build did not write them. Rebuild it "
                "with `mechscope build` (this mechscope writes them).")

    def table_files(self) -> dict[str, Path]:
        """{table name: absolute path of its Parquet file}, in schema order."""
        return dict(self._files)

    def tables(self) -> list[str]:
        """The tables this store has and this code reads, schema order first."""
        return list(self._files)

    def cursor(self) -> duckdb.DuckDBPyConnection:
        """A new cursor on this store's connection: the views, its own transaction state."""
        if self._con is None:
            raise StoreError(f"store '{self.path}' is closed")
        return self._con.cursor()

    def sql(self, query: str, params: list | None = None) -> pa.Table:
        """Run trusted SQL (written in store/, values bound with ?) on a fresh cursor."""
        cur = self.cursor()
        try:
            rel = cur.sql(query, params=params)
            return pa.table({}) if rel is None else arrow_table(rel)
        except duckdb.Error as e:
            raise StoreError(f"query failed: {one_line(e)}") from e
        finally:
            cur.close()

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({str(self.path)!r}, tables={self.tables()})"


def _version_notice(name: str, version: int | None, spec: schema.Table) -> str:
    what = schema.FAMILIES.get(spec.family, spec.family)
    if isinstance(version, int) and version > spec.version:
        return (f"This store holds table {name} in version {version}, newer than this mechscope reads "
                f"({spec.version}): upgrade mechscope to see its {what}.")
    return (f"This store holds table {name} in version {version}, older than this mechscope reads "
            f"({spec.version}): rebuild it with `mechscope build` to see its {what}.")


def open_store(path: str | Path, check: bool = True) -> Store:
    """Open the store at `path`; StoreError (one line) when it is not a usable store: not a store,
    a layout this code does not read, or (`check`) a damaged manifest or table file
    (`store/integrity.py`: present, sizes, Parquet footers, checksums; cached once passed)."""
    p = Path(path).expanduser().absolute()
    manifest = read_manifest(p)
    check_schema_version(manifest, p)
    if check:
        check_store_files(p, manifest)
    return Store(p, manifest)
