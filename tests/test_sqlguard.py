"""The SQL guard: escape attempts are refused and leave every file as it was; real queries work.

Each escape attempt runs against a synthetic store; afterwards the store's files must have the
same sha256s, no file may appear in a watched folder, in the store or at a fixed /tmp path.
The `test_duckdb_*` tests pin what DuckDB 2.0's own settings do and do not stop, which is why
the guard checks statement types as well (see the docstring of store/sqlguard.py).
"""

from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_store import N_ROWS, write_synthetic_store

from store import StoreError, open_store
from store.sqlguard import QueryRefused, QueryTimeout, _sandbox, check_user_sql, run_user_query

TMP_TARGET = Path("/tmp/mechscope_sqlguard_escape.csv")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("guard")
    path = write_synthetic_store(root / "store")
    watch = root / "watch"
    watch.mkdir()
    store = open_store(path)
    yield store, watch, snapshot(path)
    store.close()


def snapshot(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def assert_untouched(store, watch: Path, before: dict[str, str]) -> None:
    assert snapshot(store.path) == before, "the store folder changed"
    assert not any(watch.iterdir()), f"files appeared: {list(watch.iterdir())}"
    assert not TMP_TARGET.exists()


def refused(store, sql: str, **kw) -> str:
    with pytest.raises(QueryRefused) as e:
        run_user_query(store, sql, **kw)
    msg = str(e.value)
    assert msg and "\n" not in msg, msg
    return msg


NOT_ALLOWED, FILE, ONLY, ONE = "is not allowed", "looks like a file", "only SELECT, WITH and EXPLAIN", "one statement"
ESCAPES = [
    # reading files outside (or beside) the views
    ("SELECT * FROM read_csv('/etc/passwd')", NOT_ALLOWED),
    ("SELECT * FROM read_csv_auto('/etc/passwd', sep=':')", NOT_ALLOWED),
    ("SELECT * FROM read_text('/etc/hostname')", NOT_ALLOWED),
    ("SELECT * FROM read_blob('/etc/hostname')", NOT_ALLOWED),
    ("SELECT * FROM read_json('/etc/passwd')", NOT_ALLOWED),
    ("SELECT * FROM glob('/etc/*')", NOT_ALLOWED),
    ("SELECT * FROM glob('{store}/*')", NOT_ALLOWED),
    ("SELECT * FROM read_parquet('{store}/neurons.parquet')", NOT_ALLOWED),
    ("SELECT * FROM parquet_metadata('{store}/neurons.parquet')", NOT_ALLOWED),
    ("SELECT * FROM sniff_csv('/etc/passwd')", NOT_ALLOWED),
    ("SELECT * FROM '/etc/passwd'", FILE),
    ('SELECT * FROM "/etc/passwd"', FILE),
    ("SELECT * FROM 'notes.csv'", FILE),
    ("SELECT * FROM 'https://example.com/x.parquet'", FILE),
    ("DESCRIBE '/etc/passwd'", FILE),
    ("SUMMARIZE SELECT * FROM read_csv('/etc/passwd')", NOT_ALLOWED),
    ("DESCRIBE SELECT * FROM read_text('/etc/hostname')", NOT_ALLOWED),
    ("SELECT * FROM system.main.read_csv('/etc/passwd')", NOT_ALLOWED),
    ('SELECT * FROM "READ_CSV"(\'/etc/passwd\')', NOT_ALLOWED),
    ("SELECT * FROM neurons WHERE layer IN (SELECT 1 FROM read_text('/etc/hostname'))", NOT_ALLOWED),
    ("SELECT * FROM neurons, LATERAL (SELECT * FROM glob('/etc/*'))", NOT_ALLOWED),
    ("WITH f AS (SELECT * FROM read_text('/etc/hostname')) SELECT * FROM f", NOT_ALLOWED),
    ("SELECT 1 UNION ALL SELECT 1 FROM read_csv('/etc/passwd')", NOT_ALLOWED),
    ("SELECT * FROM query('SELECT * FROM read_csv(''/etc/passwd'')')", NOT_ALLOWED),
    ("SELECT * FROM json_execute_serialized_sql(json_serialize_sql('SELECT 1'))", NOT_ALLOWED),
    # writing anything anywhere
    ("COPY neurons TO '{watch}/out.csv'", ONLY),
    (f"COPY (SELECT 1) TO '{TMP_TARGET}'", ONLY),
    ("COPY (SELECT 1) TO '{store}/neurons.parquet' (FORMAT parquet, USE_TMP_FILE false)", ONLY),
    ("COPY (SELECT 1) TO '{store}/extra.csv'", ONLY),
    ("/* hidden */ COPY (SELECT 1) TO '{store}/extra.csv'", ONLY),
    ("EXPLAIN ANALYZE COPY (SELECT 1) TO '{store}/neurons.parquet' (USE_TMP_FILE false)", ONLY),
    ("EXPLAIN (FORMAT json) COPY (SELECT 1) TO '{watch}/e.json'", ONLY),
    ("EXPLAIN /* x */ ANALYZE COPY (SELECT 1) TO '{watch}/e.csv'", "EXPLAIN [ANALYZE] SELECT"),
    ("COPY neurons FROM '/etc/passwd'", ONLY),
    ("EXPORT DATABASE '{watch}/export'", ONLY),
    ("EXPORT DATABASE '{store}'", ONLY),
    ("CREATE TABLE t AS SELECT 1", ONLY),
    ("CREATE OR REPLACE VIEW neurons AS SELECT 1 AS layer", ONLY),
    ("CREATE MACRO m(x) AS x", ONLY),
    ("CREATE SECRET s (TYPE s3, KEY_ID 'a', SECRET 'b')", ONLY),
    ("INSERT INTO neurons SELECT * FROM neurons", ONLY),
    ("WITH a AS (SELECT 1) INSERT INTO neurons SELECT * FROM a", ONLY),
    ("UPDATE neurons SET mean = 0", ONLY),
    ("DELETE FROM neurons", ONLY),
    ("DROP VIEW neurons", ONLY),
    ("ALTER VIEW neurons RENAME TO n2", ONLY),
    ("PIVOT neurons ON layer USING count(*)", ONLY),
    # attaching, extensions, settings, sessions
    ("ATTACH '{watch}/x.duckdb' AS x", ONLY),
    ("ATTACH ':memory:' AS m", ONLY),
    ("DETACH memory", ONLY),
    ("INSTALL httpfs", ONLY),
    ("LOAD httpfs", ONLY),
    ("SET enable_external_access = true", ONLY),
    ("SET memory_limit = '100GB'", ONLY),
    ("RESET lock_configuration", ONLY),
    ("PRAGMA enable_profiling", ONLY),
    ("SET VARIABLE x = 1", ONLY),
    ("USE system", ONLY),
    ("CALL pragma_version()", ONLY),
    ("CHECKPOINT", ONLY),
    ("VACUUM", ONLY),
    ("BEGIN TRANSACTION", ONLY),
    ("PREPARE p AS SELECT 1", ONLY),
    ("SELECT * FROM enable_logging()", NOT_ALLOWED),
    ("SELECT * FROM duckdb_settings()", NOT_ALLOWED),
    ("SELECT getenv('HOME')", NOT_ALLOWED),
    ("SELECT current_setting('allowed_paths')", NOT_ALLOWED),
    # more than one statement
    ("SELECT 1; DROP VIEW neurons", ONE),
    ("SELECT 1; COPY (SELECT 1) TO '{watch}/two.csv'", ONE),
    ("SELECT ';'; SELECT 2", ONE),
    # nothing to run, or too much
    ("", "empty query"),
    ("  -- only a comment", "empty query"),
    ("SELECT 1\x00; DROP VIEW neurons", "NUL"),
    ("SELECT " + "1+" * 60_000 + "1", "longer than"),
]


@pytest.mark.parametrize(("template", "fragment"), ESCAPES, ids=[f"{i:02d}" for i in range(len(ESCAPES))])
def test_escape_attempt_is_refused(env, template, fragment):
    store, watch, before = env
    sql = template.replace("{store}", str(store.path)).replace("{watch}", str(watch))
    assert fragment in refused(store, sql)
    assert_untouched(store, watch, before)


def test_there_are_enough_escape_attempts():
    assert len(ESCAPES) >= 30


def test_runaway_cross_join_times_out(env):
    store, watch, before = env
    started = time.perf_counter()
    with pytest.raises(QueryTimeout, match="time limit"):
        run_user_query(store, "SELECT sum(a.range * b.range) FROM range(1000000) a CROSS JOIN range(1000000) b",
                       timeout_s=0.5)
    assert time.perf_counter() - started < 5
    with pytest.raises(QueryTimeout):  # also when the rows stream out rather than aggregate
        run_user_query(store, "SELECT a.range FROM range(1000000) a, range(1000000) b "
                              "WHERE (a.range * b.range) % 1000003 = 7", timeout_s=0.5)
    assert_untouched(store, watch, before)


def test_memory_limit_stops_a_hungry_query(env):
    store, _, _ = env
    msg = refused(store, "SELECT count(*) FROM (SELECT list(range) FROM range(30000000) GROUP BY range % 10000000)",
                  memory_limit="64MB")
    assert "memory limit" in msg


def test_rows_are_capped(env):
    store, _, _ = env
    r = run_user_query(store, "SELECT * FROM range(100) ORDER BY range DESC", max_rows=10)
    assert r.truncated and r.table.num_rows == 10 and r.table.column(0).to_pylist() == list(range(99, 89, -1))
    r = run_user_query(store, "SELECT * FROM range(100)", max_rows=100)
    assert not r.truncated and r.table.num_rows == 100
    r = run_user_query(store, "SELECT * FROM range(1000000000000)", max_rows=5)  # streams: stops early
    assert r.truncated and r.table.num_rows == 5 and r.elapsed_s < 5


def test_result_bytes_are_capped(env):
    store, _, _ = env
    msg = refused(store, "SELECT repeat('x', 100000 + range) AS s FROM range(1000)", max_bytes=10 * 2**20)
    assert "larger than 10 MiB" in msg


LEGIT = [
    ("SELECT count(*) AS n FROM neurons", [{"n": N_ROWS}]),
    ("SELECT count(*) AS n FROM neurons n JOIN activations a USING (layer, neuron) JOIN tokens t "
     "ON t.seq_id = a.seq_id AND t.pos = a.pos", None),
    ("WITH top AS (SELECT layer, max(max) AS m FROM neurons GROUP BY layer) SELECT count(*) AS n FROM top", None),
    ("SELECT layer, count(*) AS n FROM activations GROUP BY ALL ORDER BY layer", None),
    ("FROM tokens SELECT token LIMIT 3", None),
    ("SELECT list_sum(hist_counts) AS s FROM neurons LIMIT 1", None),
    ("SELECT x FROM unnest([1, 2, 3]) u(x)", [{"x": 1}, {"x": 2}, {"x": 3}]),
    ("SELECT ';' AS semi;", [{"semi": ";"}]),
    ("-- a comment\nSELECT 42 AS answer", [{"answer": 42}]),
    ("VALUES (1), (2)", None),
    ("EXPLAIN SELECT * FROM neurons WHERE layer = 0", None),
    ("EXPLAIN ANALYZE SELECT count(*) FROM activations", None),
    ("DESCRIBE neurons", None),
    ("SHOW TABLES", None),
    ("SUMMARIZE tokens", None),
    ("SELECT * FROM generate_series(1, 3)", None),
    ("SELECT DISTINCT table_name FROM duckdb_columns() WHERE NOT internal", None),
]


@pytest.mark.parametrize(("sql", "rows"), LEGIT)
def test_legit_queries_run(env, sql, rows):
    store, watch, before = env
    r = run_user_query(store, sql)
    assert r.table.num_rows > 0 and not r.truncated and r.elapsed_s >= 0
    if rows is not None:
        assert r.table.to_pylist() == rows
    assert_untouched(store, watch, before)


def test_show_tables_lists_the_views(env):
    store, _, _ = env
    names = run_user_query(store, "SHOW TABLES").table.column("name").to_pylist()
    assert sorted(names) == sorted(store.tables())


@pytest.mark.parametrize(("sql", "fragment"), [
    ("SELEC 1", "syntax error"),
    ("SELECT no_such_column FROM neurons", "no_such_column"),
    ("SELECT * FROM no_such_table", "no_such_table"),
    ("SELECT 1 / 'a'", "Error"),
])
def test_duckdb_errors_are_one_line_store_errors(env, sql, fragment):
    store, _, _ = env
    with pytest.raises(StoreError) as e:
        run_user_query(store, sql)
    assert not isinstance(e.value, QueryRefused)
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_store_path_with_quote_and_space(tmp_path):
    store = open_store(write_synthetic_store(tmp_path / "it's a store"))
    assert run_user_query(store, "SELECT count(*) AS n FROM tokens").table.to_pylist() == [{"n": N_ROWS}]
    store.close()


def test_check_user_sql_returns_the_statement_it_will_run():
    stmt = check_user_sql("/* c */ SELECT 1 AS a")
    assert stmt.type == duckdb.StatementType.SELECT
    assert check_user_sql("EXPLAIN SELECT 1").type == duckdb.StatementType.EXPLAIN


def test_arguments_are_checked(env):
    store, _, _ = env
    for kw in ({"max_rows": -1}, {"timeout_s": 0}, {"max_bytes": 0}, {"memory_limit": "1GB; SET x=1"}):
        with pytest.raises(ValueError):
            run_user_query(store, "SELECT 1", **kw)


# ---------------------------------------------------------------- what DuckDB 2.0's sandbox does alone

def _raw(con, sql):
    return con.execute(sql).fetchall()


def test_duckdb_sandbox_blocks_reads_settings_and_extensions(env):
    store, watch, before = env
    con = _sandbox(store, "1GB")
    try:
        assert _raw(con, "SELECT count(*) FROM neurons") == [(N_ROWS,)]
        for sql in ("SELECT * FROM read_csv('/etc/passwd')", "SELECT * FROM glob('/etc/*')",
                    f"COPY (SELECT 1) TO '{watch}/x.csv'", f"ATTACH '{watch}/x.duckdb'",
                    f"COPY (SELECT 1) TO '{store.path}/extra.csv'", "LOAD httpfs"):
            with pytest.raises(duckdb.PermissionException):
                _raw(con, sql)
        for sql in ("SET enable_external_access = true", "SET allowed_paths = ['/']", "RESET lock_configuration",
                    "SELECT * FROM enable_logging()"):
            with pytest.raises(duckdb.InvalidInputException, match="locked"):
                _raw(con, sql)
        with pytest.raises(duckdb.CatalogException):  # Python replacement scans are off
            _raw(con, "SELECT * FROM before")
    finally:
        con.close()
    assert_untouched(store, watch, before)


def test_duckdb_sandbox_alone_lets_copy_overwrite_an_allowed_file(tmp_path, env):
    """Why the guard checks statement types: enable_external_access=false plus allowed_paths does
    not stop COPY ... TO an allowed file (DuckDB 2.0). Run on a throwaway copy of the store."""
    src, _, _ = env
    copy = tmp_path / "copy"
    shutil.copytree(src.path, copy)
    store = open_store(copy)
    target = copy / "neurons.parquet"
    sha = hashlib.sha256(target.read_bytes()).hexdigest()
    con = _sandbox(store, "1GB")
    try:
        _raw(con, f"COPY (SELECT 1 AS x) TO '{target}' (FORMAT parquet, USE_TMP_FILE false)")
        _raw(con, "CREATE TABLE t AS SELECT 1")  # and DDL runs: the connection is per query
    finally:
        con.close()
        store.close()
    assert hashlib.sha256(target.read_bytes()).hexdigest() != sha, (
        "DuckDB now refuses writes to allowed paths: update the notes in store/sqlguard.py")


# ---------------------------------------------------------------- fuzzing the guard

FRAGMENTS = [
    "SELECT", "*", "1", ",", "FROM", "neurons", "tokens", "WHERE", "layer", "=", "0", "(", ")", ";", "--", "/*", "*/",
    "COPY", "TO", "'{watch}/f.csv'", "'{store}/neurons.parquet'", "'{store}/x.csv'", f"'{TMP_TARGET}'",
    "(FORMAT parquet, USE_TMP_FILE false)", "EXPORT DATABASE", "'{watch}'", "ATTACH", "AS", "x", "INSTALL", "LOAD",
    "httpfs", "SET", "RESET", "PRAGMA", "enable_external_access", "true", "CREATE TABLE t AS", "INSERT INTO",
    "DROP VIEW", "WITH a AS (SELECT 1)", "EXPLAIN", "ANALYZE", "UNION ALL", "LIMIT 3", "read_csv('/etc/passwd')",
    "glob('{watch}/*')", "query('COPY (SELECT 1) TO ''{watch}/q.csv''')", "'/etc/passwd'", "range(10)",
    "json_execute_serialized_sql(", "VALUES", "PIVOT", "ON", "USING", "CALL", "enable_logging()", "getenv('HOME')",
    "'", '"', "\\", "\n",
]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=st.lists(st.sampled_from(FRAGMENTS), min_size=1, max_size=12), noise=st.text(max_size=8))
def test_fuzzed_sql_never_writes_and_fails_cleanly(env, parts, noise):
    store, watch, before = env
    sql = " ".join(parts).replace("{store}", str(store.path)).replace("{watch}", str(watch)) + noise
    try:
        run_user_query(store, sql, timeout_s=2.0, max_rows=50)
    except StoreError as e:
        assert str(e) and "\n" not in str(e)
    assert_untouched(store, watch, before)
