"""`verify_store(path)`: everything that can be checked about a store without recomputing it.

Checks that the manifest parses and has this code's schema version, that every schema table is
listed and present with the recorded size, sha256 and row count, that each file's Arrow schema
is the schema module's, and that rows are in sort-key order. Returns the problems found (an
empty list means OK); raises StoreError only when the path is not a store at all (missing, a
file, an unfinished `.partial` build). How the files are written is `store/writer.py`.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from store import schema
from store.errors import StoreError, one_line
from store.manifest import MANIFEST_NAME, read_manifest, refuse_partial, sha256_file, table_file_name

SORT_CHECK_BATCH = 1 << 20


def verify_store(path: str | Path) -> list[str]:
    p = Path(path).expanduser().absolute()
    refuse_partial(p)
    if not p.is_dir():
        raise StoreError(f"'{p}' is not a folder" if p.exists() else f"'{p}' does not exist")
    try:
        manifest = read_manifest(p)
    except StoreError as e:
        return [str(e)]
    problems = []
    version = manifest.get("schema_version")
    if version != schema.SCHEMA_VERSION:
        hint = "; rebuild the store" if isinstance(version, int) and version < schema.SCHEMA_VERSION else ""
        problems.append(f"{MANIFEST_NAME}: schema_version is {version!r}, this code's is {schema.SCHEMA_VERSION}{hint}")
    listed = manifest.get("tables")
    if not isinstance(listed, dict):
        return [*problems, f"{MANIFEST_NAME}: no 'tables' object"]
    for name in sorted(set(listed) - set(schema.TABLES_BY_NAME)):
        problems.append(f"{MANIFEST_NAME}: lists {name!r}, which is not a table of the schema")
    for t in schema.TABLES:
        entry = listed.get(t.name)
        if not isinstance(entry, dict):
            problems.append(f"{t.name}: not listed in {MANIFEST_NAME}")
            continue
        try:
            _check_table(p, t, entry, problems)
        except Exception as e:  # a damaged file must become a reported problem, not a crash
            problems.append(f"{t.name}: cannot be read ({type(e).__name__}: {one_line(e)})")
    return problems


def _check_table(store: Path, t: schema.Table, entry: dict, problems: list[str]) -> None:
    """Append the table's problems to `problems` as they are found (a later read error keeps them)."""
    name = entry.get("file", table_file_name(t.name))
    if not isinstance(name, str) or Path(name).name != name:
        problems.append(f"{t.name}: manifest file name {name!r} is not a plain file name")
        return
    file = store / name
    if not file.is_file():
        problems.append(f"{t.name}: file '{name}' is missing")
        return
    size = file.stat().st_size
    if entry.get("bytes") != size:
        problems.append(f"{t.name}: '{name}' has {size} bytes, the manifest says {entry.get('bytes')}")
    if entry.get("sha256") != sha256_file(file):
        problems.append(f"{t.name}: '{name}' sha256 differs from the manifest (the file was changed)")
    meta = pq.ParquetFile(file).metadata
    if entry.get("rows") != meta.num_rows:
        problems.append(f"{t.name}: '{name}' has {meta.num_rows} rows, the manifest says {entry.get('rows')}")
    wrong_schema = schema_problems(pq.read_schema(file), t.arrow_schema())
    problems.extend(f"{t.name}: {p}" for p in wrong_schema)
    if not wrong_schema:  # sorting a file whose columns are wrong says nothing more
        bad = first_unsorted_row(file, t.sort_key)
        if bad is not None:
            problems.append(f"{t.name}: rows are not sorted by ({', '.join(t.sort_key)}): row {bad} "
                            "comes before a smaller key")


def schema_problems(got: pa.Schema, want: pa.Schema) -> list[str]:
    """Column-by-column differences between a file's Arrow schema and the schema module's."""
    if got.remove_metadata().equals(want):
        return []
    out = []
    if got.names != want.names:
        out.append(f"columns are {got.names}, the schema has {want.names}")
    for f in want:
        if f.name not in got.names:
            continue
        g = got.field(f.name)
        if not g.type.equals(f.type):
            out.append(f"column {f.name!r} is {g.type}, the schema says {f.type}")
        elif g.nullable != f.nullable:
            out.append(f"column {f.name!r} nullable={g.nullable}, the schema says {f.nullable}")
    return out or [f"schema {got} differs from {want}"]


def first_unsorted_row(file: Path, key: tuple[str, ...]) -> int | None:
    """Index of the first row whose key is smaller than the previous row's (streamed, key columns
    only, so a 50M-row table costs one pass over its key columns)."""
    prev: pa.Table | None = None
    offset = 0  # file row index of the first row in `t`
    for batch in pq.ParquetFile(file).iter_batches(batch_size=SORT_CHECK_BATCH, columns=list(key)):
        t = pa.Table.from_batches([batch])
        if prev is not None:
            t = pa.concat_tables([prev, t])
        if t.num_rows == 0:
            continue
        if t.num_rows > 1:
            ok = _rows_in_order(t, key)
            if not pc.all(ok).as_py():
                return offset + pc.index(ok, False).as_py() + 1
        offset += t.num_rows - 1
        prev = t.slice(t.num_rows - 1)
    return None


def _rows_in_order(t: pa.Table, key: tuple[str, ...]) -> pa.ChunkedArray:
    """ok[i] = key(row i) <= key(row i+1), lexicographic over the key columns."""
    n = t.num_rows
    a = [t.column(k).slice(0, n - 1) for k in key]
    b = [t.column(k).slice(1) for k in key]
    ok = pc.less_equal(a[-1], b[-1])
    for x, y in zip(reversed(a[:-1]), reversed(b[:-1]), strict=True):
        ok = pc.or_(pc.less(x, y), pc.and_(pc.equal(x, y), ok))
    return pc.fill_null(ok, False)
