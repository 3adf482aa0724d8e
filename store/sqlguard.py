"""User SQL over a store, safe to expose: `mechscope query` and the dashboard's SQL console.

Defence in depth; each layer holds on its own for what it covers:
1. DuckDB's own parser (`extract_statements`): exactly one statement, of type SELECT (which covers
   WITH, VALUES, FROM-first, DESCRIBE, SHOW, SUMMARIZE) or EXPLAIN [ANALYZE] of such a statement.
2. The parse tree (`json_serialize_sql`): table functions only from a short allowlist (no read_csv,
   read_text, glob, query(), ...), no table reference that looks like a file path.
3. A fresh in-memory DuckDB per query: views over the store's Parquet files, then
   allowed_paths = exactly those files, enable_external_access = false, extension autoload and
   autoinstall off, no temp directory (no spill files), a memory limit, then lock_configuration.
4. Limits, in a worker process per query (`store/sqlworker.py`): an OS address-space cap and
   DuckDB's memory_limit, a hard kill at `timeout_s`, rows and bytes counted while they stream
   (stop at `max_rows`, refuse past `max_bytes`), at most `MAX_CONCURRENT` at once per server.
   The worker's views name their files relative to the store folder: no absolute path shows.

What DuckDB 2.0 does here (tests/test_sqlguard.py pins it): with external access off, reads,
globs, ATTACH, COPY and EXPORT outside allowed_paths fail, INSTALL/LOAD fail, Python replacement
scans are off. But writes to an *allowed* path succeed: `COPY (...) TO '<store>/neurons.parquet'
(USE_TMP_FILE false)` overwrites a store file, and with allowed_directories=[store] any COPY into
the folder works: layer 1 is what stops them. CREATE/INSERT/ATTACH ':memory:' also run under the
sandbox; only layer 1 stops them, and the per-query connection keeps nothing between queries.
SELECT can call setting-changing table functions (enable_logging()): lock_configuration refuses.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa

from store.errors import QueryBusy, QueryRefused, QueryTimeout, StoreError, one_line
from store.reader import Store, sql_string, view_sql
from store.sqlworker import DUCKDB_MEMORY, WorkerLimits, run_in_worker

__all__ = ["QueryBusy", "QueryRefused", "QueryResult", "QueryTimeout", "check_user_sql", "run_user_query"]

MAX_SQL_CHARS = 100_000
ALLOWED_TABLE_FUNCTIONS = frozenset({
    "range", "generate_series", "unnest", "json_each", "json_tree",
    "duckdb_tables", "duckdb_columns", "duckdb_types", "duckdb_functions", "duckdb_keywords",
    "pragma_table_info", "pragma_show",
})
DENIED_FUNCTIONS = frozenset({"getenv", "current_setting"})  # environment and server settings
_PATH_CHARS = re.compile(r"[/\\:~.]")  # 'x.csv', '/etc/passwd', 's3://...': replacement scans of files
_EXPLAIN = re.compile(r"\s*explain\b\s*(?:analy[sz]e\b\s*)?(?:\([^()]*\)\s*)?", re.IGNORECASE)
_MEMORY = re.compile(r"\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)", re.IGNORECASE)
_ONLY = "only SELECT, WITH and EXPLAIN queries run here"


@dataclass(frozen=True)
class QueryResult:
    table: pa.Table
    truncated: bool
    elapsed_s: float
    peak_rss_bytes: int = 0  # the worker process's peak resident memory


def run_user_query(store: Store, sql: str, *, max_rows: int = 10_000, timeout_s: float = 10.0,
                   memory_limit: str = DUCKDB_MEMORY, max_bytes: int = 256 * 2**20) -> QueryResult:
    """Run one read-only query from a user in a bounded worker process (`store/sqlworker.py`).
    QueryRefused for what the guard will not run or what passes a limit (memory, result bytes),
    QueryTimeout past `timeout_s`, QueryBusy when the server runs its most queries already;
    StoreError for what DuckDB rejects (syntax, unknown column). `memory_limit` is DuckDB's own
    limit inside the worker's address-space cap; `max_bytes` bounds the Arrow result handed back."""
    if max_rows < 0 or timeout_s <= 0 or max_bytes <= 0 or not _MEMORY.fullmatch(memory_limit):
        raise ValueError("max_rows must be >= 0, timeout_s and max_bytes > 0, memory_limit like '2GB'")
    stmt = check_user_sql(sql)
    folder = store.path.resolve()
    files = {name: os.path.relpath(file, folder) for name, file in store.table_files().items()}
    out = run_in_worker(folder, files, stmt.query, WorkerLimits(max_rows, timeout_s, max_bytes,
                                                                duckdb_memory=memory_limit))
    table = pa.Table.from_batches(out.batches, schema=out.schema)
    return QueryResult(table, out.truncated, out.elapsed_s, out.peak_rss_bytes)


def check_user_sql(sql: str) -> duckdb.Statement:
    """The parsed statement if it is one read-only query; QueryRefused (or StoreError for a syntax
    error) otherwise. Parsing happens on a throwaway connection: nothing of `sql` runs here."""
    if not isinstance(sql, str):
        raise QueryRefused("the query must be text")
    if "\x00" in sql:
        raise QueryRefused("the query contains a NUL character")
    if len(sql) > MAX_SQL_CHARS:
        raise QueryRefused(f"the query is longer than {MAX_SQL_CHARS:,} characters")
    con = duckdb.connect(":memory:")
    try:
        stmt = _one_statement(con, sql)
        inner = stmt
        if stmt.type == duckdb.StatementType.EXPLAIN:
            m = _EXPLAIN.match(stmt.query)
            try:
                if m is None:
                    raise StoreError("unrecognised EXPLAIN")
                inner = _one_statement(con, stmt.query[m.end():])
            except QueryRefused:
                raise
            except StoreError:  # what follows EXPLAIN did not parse on its own: do not guess
                raise QueryRefused("write EXPLAIN as: EXPLAIN [ANALYZE] SELECT ...") from None
        if inner.type != duckdb.StatementType.SELECT:
            kind = "multi-statement (PIVOT without IN (...)?)" if inner.type.name == "MULTI" else inner.type.name
            raise QueryRefused(f"{_ONLY}; this is a {kind.replace('_', ' ')} statement")
        _check_tree(con, inner.query)
        return stmt
    finally:
        con.close()


def _one_statement(con: duckdb.DuckDBPyConnection, text: str) -> duckdb.Statement:
    try:
        stmts = con.extract_statements(text)
        _ = [s.type for s in stmts]  # an unknown statement type raises ValueError here
    except duckdb.ParserException as e:
        raise StoreError(one_line(e)) from None
    except (duckdb.Error, ValueError, RecursionError):  # ValueError: a statement type Python does not know
        raise QueryRefused(f"{_ONLY}; this statement is not one of them") from None
    if not stmts:
        raise QueryRefused("empty query: write one SELECT statement")
    if len(stmts) > 1:
        raise QueryRefused(f"one statement at a time: this text has {len(stmts)}")
    return stmts[0]


def _check_tree(con: duckdb.DuckDBPyConnection, text: str) -> None:
    """Walk the parse tree of a SELECT: table functions from the allowlist, no file-like tables."""
    try:
        raw = con.execute("SELECT json_serialize_sql(?::VARCHAR)", [text]).fetchone()[0]
        tree = json.loads(raw)
    except (duckdb.Error, ValueError, RecursionError) as e:
        raise QueryRefused(f"this query cannot be checked, so it does not run ({one_line(e)})") from None
    if tree.get("error") or len(tree.get("statements", ())) != 1:
        raise QueryRefused(f"this query cannot be checked, so it does not run ({tree.get('error_message')})")
    stack: list = [tree["statements"]]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        kind = node.get("type")
        if kind == "TABLE_FUNCTION":
            fn = node.get("function") or {}
            name = str(fn.get("function_name", "")).lower()
            if fn.get("class") != "FUNCTION" or name not in ALLOWED_TABLE_FUNCTIONS:
                raise QueryRefused(
                    f"table function {name or '?'}() is not allowed: queries read the store's tables; "
                    f"allowed table functions: {', '.join(sorted(ALLOWED_TABLE_FUNCTIONS))}"
                )
        elif kind in ("BASE_TABLE", "SHOW_REF") and _PATH_CHARS.search(str(node.get("table_name", ""))):
            raise QueryRefused(
                f"{node.get('table_name')!r} looks like a file: queries read only the store's tables"
            )
        if node.get("class") == "FUNCTION" and str(node.get("function_name", "")).lower() in DENIED_FUNCTIONS:
            raise QueryRefused(f"function {node['function_name']}() is not allowed here")
        stack.extend(v for v in node.values() if isinstance(v, dict | list))


def _sandbox(store: Store, memory_limit: str) -> duckdb.DuckDBPyConnection:
    """`sandbox` over a store's files by absolute path (what tests of DuckDB's own sandbox use)."""
    return sandbox({name: str(f) for name, f in store.table_files().items()}, memory_limit)


def sandbox(files: dict[str, str], memory_limit: str, threads: int | None = None) -> duckdb.DuckDBPyConnection:
    """A new in-memory database with a view per table (`files`: {name: its Parquet file}) that can
    open nothing but those files, load no extension and change no setting."""
    con = duckdb.connect(":memory:")
    try:
        for setting in (
            "SET autoinstall_known_extensions = false",
            "SET autoload_known_extensions = false",
            "SET allow_community_extensions = false",
            f"SET memory_limit = {sql_string(memory_limit)}",
            *([f"SET threads = {int(threads)}"] if threads else []),
            "SET temp_directory = ''",  # no spill files: a query over the limit fails instead
            "SET python_enable_replacements = false",  # no Python variables as tables
            "SET allowed_paths = [" + ", ".join(sql_string(str(f)) for f in files.values()) + "]::VARCHAR[]",
            "SET enable_external_access = false",
        ):
            con.execute(setting)
        for name, file in files.items():
            con.execute(view_sql(name, Path(file)))
        con.execute("SET lock_configuration = true")
    except BaseException:
        con.close()
        raise
    return con
