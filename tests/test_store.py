"""The store package: crash-safe writing, opening, verifying, formatting, import boundary.

Tables come from `synthetic_table`, which makes valid rows for any table of `store.schema`
(so new tables are covered without touching this file); `neuron_examples` windows are then
placed on the synthetic `tokens` rows, so that `context_tokens` agrees with `tokens`. The SQL guard has its own tests in
tests/test_sqlguard.py.
"""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from store import StoreError, StoreWriter, open_store, schema, verify_store
from store import writer as writer_mod
from store.format import format_result
from store.manifest import MANIFEST_NAME, partial_dir, sha256_file

ROOT = Path(__file__).resolve().parents[1]
N_ROWS = 60
KEY_WORDS = ("band", "top", "x", "y")  # string key values sort in the same order as their index
WORDS = ("the", " Paris", "\n", "é", "", "x'y", 'q"uote', "\t")


# ---------------------------------------------------------------- synthetic rows for any table

def synthetic_table(t: schema.Table, n: int = N_ROWS, seed: int = 0, shuffle: bool = True) -> pa.Table:
    """`n` valid rows of table `t` with unique sort keys, shuffled unless `shuffle=False`."""
    rng = random.Random(f"{t.name}:{seed}")
    k = len(t.sort_key)
    columns = {}
    for c in t.columns:
        if c.name in t.sort_key:
            j = t.sort_key.index(c.name)
            digits = [i // 4 ** (k - 1 - j) % (4 if j else 1 << 30) for i in range(n)]
            columns[c.name] = [_key_value(c.type, d) for d in digits]
        else:
            columns[c.name] = [_value(c.type, c.nullable, rng) for _ in range(n)]
    if t.name == "neuron_examples":
        _place_windows(columns, synthetic_table(schema.table("tokens"), n, seed, shuffle=False), rng)
    order = list(range(n))
    if shuffle:
        rng.shuffle(order)
    return pa.table({name: [vals[i] for i in order] for name, vals in columns.items()}, schema=t.arrow_schema())


def _place_windows(columns: dict, tokens: pa.Table, rng: random.Random) -> None:
    """Give every example a window of len(context_acts) tokens inside one window of `tokens`
    (seq_id, ctx_start, a pos inside it) and those tokens' text as context_tokens."""
    windows: dict[int, list[str]] = {}
    for row in tokens.sort_by([("seq_id", "ascending"), ("pos", "ascending")]).to_pylist():
        windows.setdefault(row["seq_id"], []).append(row["token"])
    for i, acts in enumerate(columns["context_acts"]):
        seq = rng.choice([s for s, toks in windows.items() if len(toks) >= len(acts)])
        start = rng.randint(0, len(windows[seq]) - len(acts))
        columns["seq_id"][i], columns["ctx_start"][i] = seq, start
        columns["pos"][i] = start + rng.randint(0, max(len(acts) - 1, 0))
        columns["context_tokens"][i] = windows[seq][start:start + len(acts)]


def _key_value(type_: pa.DataType, digit: int):
    if pa.types.is_integer(type_):
        return digit
    if pa.types.is_string(type_):
        return KEY_WORDS[digit]
    raise NotImplementedError(f"synthetic_table: no key values for type {type_}; extend tests/test_store.py")


def _value(type_: pa.DataType, nullable: bool, rng: random.Random):
    if nullable and rng.random() < 0.2:
        return None
    if pa.types.is_integer(type_):
        return rng.randint(-1, 100)
    if pa.types.is_floating(type_):
        return rng.choice([rng.uniform(-3, 3), 0.0, 0.1])
    if pa.types.is_string(type_):
        return rng.choice(WORDS)
    if pa.types.is_boolean(type_):
        return rng.random() < 0.5
    if pa.types.is_list(type_):
        return [_value(type_.value_type, False, rng) for _ in range(rng.randint(0, 3))]
    raise NotImplementedError(f"synthetic_table: no values for type {type_}; extend tests/test_store.py")


def write_synthetic_store(out: Path, *, stream: tuple[str, ...] = ("tokens",), extra: dict | None = None) -> Path:
    """A committed store with `synthetic_table` rows; tables in `stream` go through table_writer."""
    w = StoreWriter(out)
    for t in schema.TABLES:
        if t.name in stream:
            data = synthetic_table(t, shuffle=False)
            with w.table_writer(t.name) as s:
                for batch in data.to_batches(max_chunksize=7):
                    s.write(batch)
        else:
            w.write_table(t.name, synthetic_table(t))
    return w.commit({"model": {"name": "synthetic"}, "histogram_edges": [0.0, 1.0], **(extra or {})})


@pytest.fixture()
def store_dir(tmp_path) -> Path:
    return write_synthetic_store(tmp_path / "store")


def one_line_error(excinfo) -> str:
    msg = str(excinfo.value)
    assert msg and "\n" not in msg, msg
    return msg


# ---------------------------------------------------------------- write, commit, open, query

def test_synthetic_rows_cover_every_table():
    for t in schema.TABLES:
        data = synthetic_table(t)
        assert data.schema.equals(t.arrow_schema()) and data.num_rows == N_ROWS
        keys = data.select(list(t.sort_key)).to_pylist()
        assert len({tuple(r.values()) for r in keys}) == N_ROWS, f"{t.name}: sort keys must be unique"


def context_token_check(store) -> dict[str, dict]:
    """Per kind of `neuron_examples` row: `rows`, `tokens` (context_tokens entries), `wrong` (entries
    that differ from `tokens.token` at (seq_id, ctx_start + i), or have no such row) and `bad_len`
    (rows whose context_tokens and context_acts differ in length): a join independent of how
    the column was made."""
    tokens = store.sql("""
        WITH x AS (SELECT kind, seq_id, ctx_start + generate_subscripts(context_tokens, 1) - 1 AS pos,
                          unnest(context_tokens) AS token FROM neuron_examples)
        SELECT x.kind, count(*) AS tokens, count(*) FILTER (WHERE t.token IS DISTINCT FROM x.token) AS wrong
        FROM x LEFT JOIN tokens t USING (seq_id, pos) GROUP BY x.kind""").to_pylist()
    rows = store.sql("SELECT kind, count(*) AS rows, count(*) FILTER (WHERE len(context_tokens) <> "
                     "len(context_acts)) AS bad_len FROM neuron_examples GROUP BY kind").to_pylist()
    out = {r["kind"]: {"rows": r["rows"], "bad_len": r["bad_len"], "tokens": 0, "wrong": 0} for r in rows}
    for r in tokens:
        out[r["kind"]].update(tokens=r["tokens"], wrong=r["wrong"])
    return out


def test_synthetic_context_tokens_agree_with_tokens(store_dir):
    with open_store(store_dir) as store:
        check = context_token_check(store)
    assert sum(c["tokens"] for c in check.values()) > N_ROWS
    assert all(c["wrong"] == 0 and c["bad_len"] == 0 for c in check.values()), check


def test_roundtrip_commit_open_query_verify(store_dir):
    assert not partial_dir(store_dir).exists()
    assert sorted(p.name for p in store_dir.iterdir()) == sorted(
        [MANIFEST_NAME] + [f"{t.name}.parquet" for t in schema.TABLES])
    store = open_store(store_dir)
    assert store.tables() == [t.name for t in schema.TABLES]
    m = store.manifest
    assert m["schema_version"] == schema.SCHEMA_VERSION and m["created_at"]
    assert m["model"] == {"name": "synthetic"} and m["histogram_edges"] == [0.0, 1.0]
    for t in schema.TABLES:
        entry = m["tables"][t.name]
        file = store_dir / entry["file"]
        assert entry["rows"] == N_ROWS and entry["bytes"] == file.stat().st_size
        assert entry["sha256"] == sha256_file(file)
        got = store.sql(f'SELECT * FROM "{t.name}"')  # a view, read in file order
        want = synthetic_table(t).sort_by([(k, "ascending") for k in t.sort_key])
        assert got.cast(t.arrow_schema()).equals(want), t.name
    assert verify_store(store_dir) == []
    store.close()


def test_views_join_and_bound_parameters(store_dir):
    with open_store(store_dir) as store:
        n = store.sql("SELECT count(*) AS n FROM neurons n JOIN activations a USING (layer, neuron) "
                      "WHERE n.layer = ?", [0]).column("n")[0].as_py()
        assert n >= 0
        assert store.sql("SELECT ?::INT + 1 AS x", [41]).to_pylist() == [{"x": 42}]
        with pytest.raises(StoreError) as e:
            store.sql("SELECT no_such_column FROM neurons")
        one_line_error(e)
    with pytest.raises(StoreError, match="closed"):
        store.cursor()


def test_cursor_per_query_across_threads(store_dir):
    store = open_store(store_dir)
    errors, counts = [], []

    def work():
        try:
            for _ in range(20):
                counts.append(store.sql("SELECT count(*) AS n FROM tokens").column("n")[0].as_py())
        except Exception as e:  # collected: assertion below reports it
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors and counts == [N_ROWS] * 160
    assert store.cursor() is not store.cursor()


def test_write_table_sorts_and_stream_keeps_row_groups(tmp_path, monkeypatch):
    monkeypatch.setattr(writer_mod, "ROW_GROUP_ROWS", 25)
    w = StoreWriter(tmp_path / "s")
    t = schema.table("activations")
    w.write_table("activations", synthetic_table(t))  # shuffled in, sorted out
    data = pq.read_table(w.work_dir / "activations.parquet")
    keys = data.select(list(t.sort_key)).to_pylist()
    assert keys == sorted(keys, key=lambda r: tuple(r.values()))
    tok = schema.table("tokens")
    with w.table_writer("tokens") as s:
        for batch in synthetic_table(tok, shuffle=False).to_batches(max_chunksize=7):
            s.write(batch)
    meta = pq.ParquetFile(w.work_dir / "tokens.parquet").metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [25, 25, 10]
    assert pq.read_schema(w.work_dir / "tokens.parquet").remove_metadata().equals(tok.arrow_schema())


def test_empty_stream_writes_an_empty_table(tmp_path):
    w = StoreWriter(tmp_path / "s")
    with w.table_writer("documents"):
        pass
    assert pq.read_table(w.work_dir / "documents.parquet").num_rows == 0


def test_failed_stream_is_not_written(tmp_path):
    w = StoreWriter(tmp_path / "s")
    with pytest.raises(RuntimeError), w.table_writer("tokens") as s:
        s.write(synthetic_table(schema.table("tokens"), shuffle=False))
        raise RuntimeError("harvest failed")
    assert not any(w.work_dir.iterdir())
    with pytest.raises(StoreError, match="no table was written") as e:
        w.commit({})
    one_line_error(e)
    assert not (tmp_path / "s").exists()
    for t in schema.TABLES:
        if t.name != "tokens":
            w.write_table(t.name, synthetic_table(t))
    store = open_store(w.commit({}))  # tables are optional: the store simply has no tokens
    assert not store.has("tokens") and "tokens" not in store.manifest["tables"]
    assert "no corpus tables (table tokens)" in store.missing("tokens")
    assert verify_store(store.path) == []


def test_manifest_takes_numpy_values_and_keeps_writer_keys(tmp_path):
    np = pytest.importorskip("numpy")
    out = write_synthetic_store(tmp_path / "s", extra={"histogram_edges": np.linspace(0, 1, 3),
                                                        "n": np.int64(7), "schema_version": 99})
    m = json.loads((out / MANIFEST_NAME).read_text())
    assert m["histogram_edges"] == [0.0, 0.5, 1.0] and m["n"] == 7
    assert m["schema_version"] == schema.SCHEMA_VERSION


# ---------------------------------------------------------------- refusals: one clear line each

@pytest.mark.parametrize("bad", ["missing", "extra", "null", "type"])
def test_table_with_wrong_columns_is_refused(tmp_path, bad):
    t = schema.table("neurons")
    data = synthetic_table(t)
    if bad == "missing":
        data = data.drop_columns(["mean"])
    elif bad == "extra":
        data = data.append_column("surprise", pa.array([1] * data.num_rows))
    elif bad == "null":
        data = data.set_column(data.schema.get_field_index("mean"), pa.field("mean", pa.float32()),
                               pa.array([None] * data.num_rows, pa.float32()))
    else:
        data = data.set_column(0, "layer", pa.array(["zero"] * data.num_rows))
    w = StoreWriter(tmp_path / "s")
    with pytest.raises(StoreError) as e:
        w.write_table("neurons", data)
    msg = one_line_error(e)
    assert "neurons" in msg
    assert not (w.work_dir / "neurons.parquet").exists()


def test_unknown_table_is_refused(tmp_path):
    w = StoreWriter(tmp_path / "s")
    with pytest.raises(StoreError, match="unknown table"):
        w.write_table("nope", pa.table({"a": [1]}))
    with pytest.raises(StoreError, match="unknown table"):
        w.table_writer("nope")


def test_output_folder_checks(tmp_path, monkeypatch):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    with pytest.raises(StoreError, match="is not empty; choose a new folder") as e:
        StoreWriter(tmp_path / "full")
    one_line_error(e)
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="not a folder"):
        StoreWriter(tmp_path / "file")
    with pytest.raises(StoreError, match="cannot create the parent folder") as e:
        StoreWriter(tmp_path / "file" / "store")
    one_line_error(e)
    with pytest.raises(StoreError, match=r"\.partial"):
        StoreWriter(tmp_path / "x.partial")
    monkeypatch.setattr(os, "access", lambda *a, **k: False)
    with pytest.raises(StoreError, match="permission denied") as e:
        StoreWriter(tmp_path / "new")
    one_line_error(e)
    assert not (tmp_path / "new.partial").exists()


def test_partial_folder_needs_resume_and_resume_needs_partial(tmp_path):
    with pytest.raises(StoreError, match="nothing to resume") as e:
        StoreWriter(tmp_path / "s", resume=True)
    one_line_error(e)
    w = StoreWriter(tmp_path / "s")
    (w.work_dir / "checkpoint").mkdir()
    (w.work_dir / "checkpoint" / "state.pt").write_bytes(b"x")
    with pytest.raises(StoreError, match="--resume") as e:
        StoreWriter(tmp_path / "s")
    one_line_error(e)
    w2 = StoreWriter(tmp_path / "s", resume=True)
    assert (w2.work_dir / "checkpoint" / "state.pt").exists()
    w2.abort()
    assert not w2.work_dir.exists() and not (tmp_path / "s").exists()


def test_commit_into_existing_empty_folder_removes_checkpoint(tmp_path):
    (tmp_path / "s").mkdir()
    w = StoreWriter(tmp_path / "s")
    (w.work_dir / "checkpoint").mkdir()
    (w.work_dir / "checkpoint" / "state.pt").write_bytes(b"x")
    for t in schema.TABLES:
        w.write_table(t.name, synthetic_table(t))
    assert w.commit({}) == (tmp_path / "s").absolute()
    assert not (tmp_path / "s" / "checkpoint").exists() and not w.work_dir.exists()
    assert verify_store(tmp_path / "s") == []
    with pytest.raises(StoreError, match="already committed"):
        w.write_table("neurons", synthetic_table(schema.table("neurons")))


@pytest.mark.parametrize("path_kind", ["missing", "file", "empty", "newer", "older", "partial"])
def test_open_store_refuses_what_is_not_a_store(tmp_path, store_dir, path_kind):
    path = tmp_path / "x"
    if path_kind == "file":
        path.write_text("x")
    elif path_kind == "empty":
        path.mkdir()
    elif path_kind in ("newer", "older"):
        m = json.loads((store_dir / MANIFEST_NAME).read_text())
        m["schema_version"] = schema.SCHEMA_VERSION + 1 if path_kind == "newer" else schema.OLDEST_SCHEMA_VERSION - 1
        (store_dir / MANIFEST_NAME).write_text(json.dumps(m))
        path = store_dir
    elif path_kind == "partial":
        path = partial_dir(store_dir)
        store_dir.rename(path)  # a complete-looking folder, but under the unfinished name
    with pytest.raises(StoreError) as e:
        open_store(path)
    msg = one_line_error(e)
    expected = {"missing": "does not exist", "file": "not a folder",
                "empty": "not a mechscope store (no manifest.json)",
                "newer": "upgrade mechscope", "older": "rebuild it", "partial": "unfinished build"}[path_kind]
    assert expected in msg
    if path_kind == "partial":
        with pytest.raises(StoreError, match="unfinished build"):
            verify_store(path)


# ---------------------------------------------------------------- killed builds

KILL_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    sys.path[:0] = [sys.argv[3], sys.argv[4]]
    from test_store import schema, synthetic_table
    from store import StoreWriter, manifest as m, writer as w
    target, out = sys.argv[1], sys.argv[2]
    def die(*a, **k):
        os.kill(os.getpid(), signal.SIGKILL)
    if target == "table":     # while publishing the second table file
        real, calls = os.replace, []
        def replace(*a):
            calls.append(a)
            return die() if len(calls) == 2 else real(*a)
        w.os.replace = replace
    elif target == "manifest":  # manifest temp file written, not yet renamed
        m.os.replace = die
    elif target == "publish":  # manifest written, work folder not yet renamed
        w.os.rename = die
    writer = StoreWriter(out)
    (writer.work_dir / "checkpoint").mkdir()
    for t in schema.TABLES:
        writer.write_table(t.name, synthetic_table(t))
    writer.commit({})
    print("not killed")
""")


@pytest.mark.parametrize("target", ["table", "manifest", "publish"])
def test_killed_build_leaves_no_store_and_resumes(tmp_path, target):
    out = tmp_path / "store"
    r = subprocess.run([sys.executable, "-c", KILL_SCRIPT, target, str(out), str(Path(__file__).parent), str(ROOT)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == -9, r.stdout + r.stderr
    assert not out.exists()
    assert partial_dir(out).is_dir()
    with pytest.raises(StoreError, match="does not exist; an unfinished build is in .*--resume"):
        open_store(out)
    with pytest.raises(StoreError, match="unfinished build"):
        open_store(partial_dir(out))
    with pytest.raises(StoreError, match="--resume"):
        StoreWriter(out)
    w = StoreWriter(out, resume=True)
    assert not (w.work_dir / MANIFEST_NAME).exists()  # a manifest in .partial never survives a resume
    for t in schema.TABLES:
        w.write_table(t.name, synthetic_table(t))
    w.commit({"resumed": True})
    assert verify_store(out) == [] and open_store(out).manifest["resumed"] is True


# ---------------------------------------------------------------- verify finds tampering

def _rewrite(file: Path, table: pa.Table) -> None:
    pq.write_table(table, file)


@pytest.mark.parametrize("tamper", ["value", "order", "schema", "rows", "missing", "bytes", "manifest", "version",
                                    "garbage"])
def test_verify_reports_tampering(store_dir, tamper):
    file = store_dir / "neurons.parquet"
    data = pq.read_table(file)
    mpath = store_dir / MANIFEST_NAME
    m = json.loads(mpath.read_text())
    expected = "sha256"
    if tamper == "value":
        _rewrite(file, data.set_column(2, "count", pa.array([7] * data.num_rows, pa.int64())))
    elif tamper == "order":
        _rewrite(file, data.take(list(reversed(range(data.num_rows)))))
        m["tables"]["neurons"].update(sha256=sha256_file(file), bytes=file.stat().st_size)
        mpath.write_text(json.dumps(m))
        expected = "not sorted by (layer, neuron): row 1"
    elif tamper == "schema":
        _rewrite(file, data.set_column(3, "mean", data.column("mean").cast(pa.float64())))
        expected = "column 'mean' is double, the schema says float"
    elif tamper == "rows":
        m["tables"]["neurons"]["rows"] += 1
        mpath.write_text(json.dumps(m))
        expected = f"has {N_ROWS} rows, the manifest says {N_ROWS + 1}"
    elif tamper == "missing":
        file.unlink()
        expected = "missing"
    elif tamper == "bytes":
        with open(file, "ab") as f:
            f.write(b"\0")
        expected = "bytes, the manifest says"
    elif tamper == "manifest":
        mpath.write_text("{not json")
        expected = "cannot be read as JSON"
    elif tamper == "version":
        m["schema_version"] = 0
        mpath.write_text(json.dumps(m))
        expected = "schema_version is 0"
    else:
        file.write_bytes(b"PAR1 not parquet")
        expected = "neurons:"
    problems = verify_store(store_dir)
    assert problems and any(expected in p for p in problems), problems
    assert all("\n" not in p for p in problems)


# ---------------------------------------------------------------- formatting

def _result_table() -> pa.Table:
    return pa.table({
        "layer": pa.array([0, 11], pa.int16()),
        "token": pa.array([" Paris", "a\nb"]),
        "act": pa.array([0.1, float("nan")], pa.float32()),
        "ids": pa.array([[1, 2], None], pa.list_(pa.int32())),
        "logits": pa.array([[0.1, 2.5], []], pa.list_(pa.float32())),
    })


def test_format_table_csv_json():
    text = format_result(_result_table(), "table")
    lines = text.splitlines()
    assert lines[0].split() == ["layer", "token", "act", "ids", "logits"]
    assert "a\\nb" in text and "NULL" in text and "[0.1, 2.5]" in text and lines[-1] == "(2 rows)"
    assert lines[2].startswith("    0") and lines[3].startswith("   11")  # numbers right-aligned
    csv_text = format_result(_result_table(), "csv")
    assert csv_text.splitlines()[0] == "layer,token,act,ids,logits"
    assert csv_text.splitlines()[1] == '0, Paris,0.1,"[1, 2]","[0.1, 2.5]"'
    rows = json.loads(format_result(_result_table(), "json"))
    assert rows[0] == {"layer": 0, "token": " Paris", "act": 0.1, "ids": [1, 2], "logits": [0.1, 2.5]}
    assert rows[1]["act"] is None and rows[1]["ids"] is None and rows[1]["token"] == "a\nb"
    empty = pa.table({"a": pa.array([], pa.int64())})
    assert json.loads(format_result(empty, "json")) == [] and format_result(empty, "table").endswith("(0 rows)\n")
    with pytest.raises(ValueError):
        format_result(empty, "xml")
    assert math.isclose(json.loads(format_result(pa.table({"x": pa.array([1e-7], pa.float32())}), "json"))[0]["x"],
                        1e-7)


# ---------------------------------------------------------------- import boundary

def test_store_imports_without_torch_or_streamlit():
    code = ("import sys; import store, store.schema, store.writer, store.reader, store.sqlguard, store.verify, "
            "store.format, store.manifest, store.errors; "
            "bad = [m for m in ('torch', 'transformer_lens', 'streamlit') if m in sys.modules]; "
            "assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
