"""Crash-safe writing of a store: every file goes into `<out>.partial`, one rename publishes it.

The invariant: a build killed at any moment leaves either no store at `out` or a complete one.
Table files are written to a temp name and renamed into the work folder; `commit` checksums
them, writes `manifest.json` last, and renames the whole work folder to `out`. `open_store`
and `verify_store` refuse a `.partial` folder. The pipeline keeps its resume checkpoint under
`work_dir / "checkpoint"`; commit removes it. What goes into the tables is `pipeline/`'s
business; their columns and sort keys are `store.schema`'s.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from store import schema
from store.errors import StoreError, one_line
from store.manifest import (
    MANIFEST_NAME,
    PARTIAL_SUFFIX,
    dump_manifest,
    fsync_path,
    now_utc,
    partial_dir,
    sha256_file,
    table_file_name,
    write_text_atomic,
)

ROW_GROUP_ROWS = 128 * 1024
# Tables read one neuron at a time get smaller row groups, so that DuckDB skips all but one:
# measured with bench/queries.py (neuron-page point lookups, p95 45 -> 8 ms on `neurons`).
ROW_GROUP_ROWS_BY_TABLE = {"neurons": 2048, "neuron_examples": 32 * 1024}


def row_group_rows(name: str) -> int:
    return ROW_GROUP_ROWS_BY_TABLE.get(name, ROW_GROUP_ROWS)
PARQUET_OPTIONS = {"compression": "zstd", "write_statistics": True}
CHECKPOINT_DIR = "checkpoint"


def conform(name: str | schema.Table, data: pa.Table | pa.RecordBatch) -> pa.Table:
    """`data` with exactly the columns of table `name`, in schema order and types (safe casts only)."""
    spec = _spec(name)
    name = spec.name
    target = spec.arrow_schema()
    table = pa.Table.from_batches([data]) if isinstance(data, pa.RecordBatch) else data
    have, want = set(table.column_names), set(target.names)
    if have != want or len(table.column_names) != len(have):
        missing, extra = sorted(want - have), sorted(have - want)
        dup = len(table.column_names) != len(have)
        raise StoreError(
            f"table {name!r} does not match the schema: missing {missing or 'none'}, extra {extra or 'none'}"
            + (", duplicate column names" if dup else "")
        )
    table = table.select(target.names)
    for field in target:
        if not field.nullable and table.column(field.name).null_count:
            raise StoreError(f"table {name!r}: column {field.name!r} has nulls but is not nullable")
    try:
        return table.cast(target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as e:
        raise StoreError(f"table {name!r} cannot be cast to the schema: {str(e).splitlines()[0]}") from None


def _spec(name: str | schema.Table) -> schema.Table:
    """A table of the schema by name; a `Table` given as such is taken as declared (a statistic
    may declare a table of its own: it is written and listed like the others)."""
    if isinstance(name, schema.Table):
        if not schema.is_identifier(name.name):
            raise StoreError(f"table name {name.name!r} is not a plain lower-case identifier")
        return name
    try:
        return schema.table(name)
    except KeyError:
        raise StoreError(f"unknown table {name!r}; the schema has {', '.join(schema.TABLES_BY_NAME)}") from None


class StoreWriter:
    """Writes one store: `write_table` / `table_writer` for each table it holds, then `commit`.
    A store holds the tables its build wrote (at least one); the manifest lists each with its
    version.

    `out_dir` must not exist or be an empty folder; files go to `<out_dir>.partial` until commit.
    With `resume=True` an existing `.partial` folder is reused (its checkpoint kept); tables
    must still be written again before commit."""

    def __init__(self, out_dir: str | Path, *, resume: bool = False):
        self.out_dir = Path(out_dir).expanduser().absolute()
        self._work = partial_dir(self.out_dir)
        self._written: dict[str, schema.Table] = {}
        self._open_streams: set[str] = set()
        self._committed = False
        self._check_out_dir()
        if self._work.exists() and not resume:
            raise StoreError(
                f"an unfinished build is in '{self._work}'; pass --resume to continue it, or delete that folder"
            )
        if resume and not self._work.is_dir():
            raise StoreError(f"nothing to resume: '{self._work}' does not exist")
        try:
            self._work.mkdir(exist_ok=resume)
        except OSError as e:
            raise StoreError(f"cannot create '{self._work}': {e.strerror or e}") from None
        if resume:  # leftovers of the killed run: temp files, and a manifest it may have written
            for p in self._work.iterdir():
                if p.name.endswith(".tmp") or p.name == MANIFEST_NAME:
                    p.unlink()

    def _check_out_dir(self) -> None:
        out = self.out_dir
        if out.name.endswith(PARTIAL_SUFFIX):
            raise StoreError(f"output folder '{out}' ends with {PARTIAL_SUFFIX}, which marks unfinished builds; "
                             "pick another")
        if out.exists():
            if not out.is_dir():
                raise StoreError(f"output path '{out}' exists and is not a folder; choose a new folder")
            if any(out.iterdir()):
                raise StoreError(f"output folder '{out}' is not empty; choose a new folder")
        parent = out.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StoreError(f"cannot create the parent folder '{parent}': {e.strerror or e}") from None
        if not os.access(parent, os.W_OK | os.X_OK):
            raise StoreError(f"cannot write into '{parent}' (permission denied); choose another output folder")

    @property
    def work_dir(self) -> Path:
        return self._work

    def _check_open(self) -> None:
        if self._committed:
            raise StoreError(f"the store at '{self.out_dir}' is already committed; nothing more can be written")

    def write_table(self, name: str | schema.Table, table: pa.Table) -> None:
        """Write a whole table: conformed to the schema, sorted by its sort key, atomically."""
        self._check_open()
        spec = _spec(name)
        name = spec.name
        data = conform(spec, table)
        if data.num_rows > 1:
            order = pc.sort_indices(data, sort_keys=[(k, "ascending") for k in spec.sort_key])
            # Rows that arrive sorted are written as they are: no copy, and their chunks stay
            # chunks (one `take` would put a column's strings in one array, whose int32 offsets
            # overflow past 2 GiB of text).
            if not np.array_equal(order.to_numpy(), np.arange(data.num_rows)):
                data = data.take(order)
        final = self._work / table_file_name(name)
        tmp = final.with_name(f".{final.name}.tmp")
        try:
            pq.write_table(data, tmp, row_group_size=row_group_rows(name), **PARQUET_OPTIONS)
            fsync_path(tmp)
        except OSError as e:  # disk full, folder removed under us: say so in one line
            tmp.unlink(missing_ok=True)
            raise StoreError(f"cannot write table {name!r} into '{self._work}': {one_line(e)}") from None
        os.replace(tmp, final)
        self._written[name] = spec

    def table_writer(self, name: str | schema.Table) -> TableStream:
        """Stream a large table produced in sort-key order (not re-sorted; verify checks the order)."""
        self._check_open()
        return TableStream(self, _spec(name))

    def commit(self, manifest: dict) -> Path:
        """Checksum the tables, write manifest.json last, drop the checkpoint, publish by rename."""
        self._check_open()
        if self._open_streams:
            raise StoreError(f"cannot commit: table streams still open: {', '.join(sorted(self._open_streams))}")
        if not self._written:
            raise StoreError("cannot commit: no table was written")
        known = [t.name for t in schema.TABLES if t.name in self._written]
        tables = {}
        for name in known + sorted(set(self._written) - set(known)):  # schema order, then others
            t = self._written[name]
            file = self._work / table_file_name(name)
            fsync_path(file)
            tables[name] = {
                "file": file.name,
                "version": t.version,
                "rows": pq.ParquetFile(file).metadata.num_rows,
                "sha256": sha256_file(file),
                "bytes": file.stat().st_size,
            }
            if name not in schema.TABLES_BY_NAME:  # a table a statistic declared for itself
                tables[name].update(description=t.description, sort_key=list(t.sort_key))
        full = {"schema_version": schema.SCHEMA_VERSION, "created_at": now_utc()}
        full.update({k: v for k, v in manifest.items() if k not in ("schema_version", "tables")})
        full["tables"] = tables
        write_text_atomic(self._work / MANIFEST_NAME, dump_manifest(full))
        keep = {MANIFEST_NAME, *(v["file"] for v in tables.values())}
        for p in self._work.iterdir():  # the checkpoint, and anything else that is not the store
            if p.name in keep:
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
        fsync_path(self._work)
        self._publish()
        self._committed = True
        return self.out_dir

    def _publish(self) -> None:
        try:
            os.rename(self._work, self.out_dir)  # POSIX: replaces an empty folder atomically
        except OSError:
            if not (self.out_dir.is_dir() and not any(self.out_dir.iterdir())):
                raise StoreError(
                    f"cannot publish the store: '{self.out_dir}' appeared and is not empty; "
                    f"the finished store is in '{self._work}'"
                ) from None
            self.out_dir.rmdir()
            os.rename(self._work, self.out_dir)
        fsync_path(self.out_dir.parent)

    def abort(self) -> None:
        """Remove the work folder (a user error before anything worth keeping was written)."""
        shutil.rmtree(self._work, ignore_errors=True)


class TableStream:
    """`with writer.table_writer(name) as out: out.write(batch)`: appends in row groups of
    `row_group_rows(name)` into a temp file; the table counts as written only if the block exits cleanly."""

    def __init__(self, writer: StoreWriter, spec: schema.Table):
        self._writer, self.spec, self.name = writer, spec, spec.name
        name = spec.name
        self._final = writer.work_dir / table_file_name(name)
        self._tmp = self._final.with_name(f".{self._final.name}.tmp")
        self._pq: pq.ParquetWriter | None = None
        self._pending: list[pa.Table] = []
        self._pending_rows = 0
        self._group = row_group_rows(name)
        self.rows = 0

    def __enter__(self) -> TableStream:
        schema_ = self.spec.arrow_schema()
        self._pq = pq.ParquetWriter(self._tmp, schema_, **PARQUET_OPTIONS)
        self._writer._open_streams.add(self.name)
        return self

    def write(self, data: pa.Table | pa.RecordBatch) -> None:
        if self._pq is None:
            raise StoreError(f"table stream {self.name!r} is not open (use it in a with block)")
        table = conform(self.spec, data)
        self._pending.append(table)
        self._pending_rows += table.num_rows
        self.rows += table.num_rows
        if self._pending_rows >= self._group:
            self._flush(final=False)

    def _flush(self, *, final: bool) -> None:
        if not self._pending_rows:
            return
        table = pa.concat_tables(self._pending)
        n = table.num_rows if final else table.num_rows // self._group * self._group
        self._pq.write_table(table.slice(0, n), row_group_size=self._group)
        rest = table.slice(n)
        self._pending, self._pending_rows = ([rest] if rest.num_rows else []), rest.num_rows

    def __exit__(self, exc_type, exc, tb) -> None:
        self._writer._open_streams.discard(self.name)
        ok = False
        try:
            if exc_type is None:
                self._flush(final=True)
            self._pq.close()
            ok = exc_type is None
        finally:
            self._pq, self._pending = None, []
            if not ok:
                self._tmp.unlink(missing_ok=True)
        if not ok:
            return
        fsync_path(self._tmp)
        os.replace(self._tmp, self._final)
        self._writer._written[self.name] = self.spec
