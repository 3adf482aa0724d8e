"""`verify_store(path)`: everything that can be checked about a store without recomputing it.

Checks that the manifest parses and has a store layout this code reads, that every table it
lists is present with the recorded size, sha256 and row count, that each file's Arrow schema is
the schema module's (for tables in the version this code reads), and that rows are in sort-key
order. A table the store does not hold is not a problem: tables are optional per store. Returns the problems found (an
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
from store.integrity import manifest_problems
from store.manifest import MANIFEST_NAME, read_manifest, refuse_partial, sha256_file, table_file_name, table_versions

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
    if not (isinstance(version, int) and schema.OLDEST_SCHEMA_VERSION <= version <= schema.SCHEMA_VERSION):
        hint = "; rebuild the store" if isinstance(version, int) and version < schema.OLDEST_SCHEMA_VERSION else ""
        problems.append(f"{MANIFEST_NAME}: schema_version is {version!r}, this code reads "
                        f"{schema.OLDEST_SCHEMA_VERSION} to {schema.SCHEMA_VERSION}{hint}")
    # the manifest's shape: sections that are not objects, entries without rows, bytes or sha256
    problems += [p for p in manifest_problems(manifest) if p.startswith(f"{MANIFEST_NAME}: '") or "no valid" in p]
    listed = manifest.get("tables")
    if not isinstance(listed, dict):
        return [*problems, f"{MANIFEST_NAME}: no 'tables' object"]
    if not listed:
        problems.append(f"{MANIFEST_NAME}: lists no tables")
    versions = table_versions(manifest)
    for name, entry in listed.items():
        if not isinstance(entry, dict):
            problems.append(f"{name}: its {MANIFEST_NAME} entry is not an object")
            continue
        spec = schema.TABLES_BY_NAME.get(name)
        if spec is None:
            spec = _declared(name, entry, problems)
            if spec is None:
                continue
        elif versions.get(name) != spec.version:
            spec = None  # another version of a known table: its columns are not this code's to check
        try:
            _check_table(p, name, spec, entry, problems)
        except Exception as e:  # a damaged file must become a reported problem, not a crash
            problems.append(f"{name}: cannot be read ({type(e).__name__}: {one_line(e)})")
    return problems


def _declared(name: str, entry: dict, problems: list[str]) -> schema.Table | None:
    """A table a statistic declared for itself (not in the schema): its manifest entry names its
    sort key. The file's own Arrow schema stands for its columns."""
    key = entry.get("sort_key")
    if not schema.is_identifier(str(name)) or not isinstance(key, list) or not all(isinstance(k, str) for k in key):
        problems.append(f"{MANIFEST_NAME}: lists {name!r}, which is not a table of the schema")
        return None
    return schema.Table(name, str(entry.get("description", "")), (), tuple(key), family="extension")


def _check_table(store: Path, table: str, t: schema.Table | None, entry: dict, problems: list[str]) -> None:
    """Append the table's problems to `problems` as they are found (a later read error keeps them).
    `t`: what to check its columns and order against (None: checksums and rows only)."""
    name = entry.get("file", table_file_name(table))
    if not isinstance(name, str) or Path(name).name != name:
        problems.append(f"{table}: manifest file name {name!r} is not a plain file name")
        return
    file = store / name
    if not file.is_file():
        problems.append(f"{table}: file '{name}' is missing")
        return
    size = file.stat().st_size
    if entry.get("bytes") != size:
        problems.append(f"{table}: '{name}' has {size} bytes, the manifest says {entry.get('bytes')}")
    if entry.get("sha256") != sha256_file(file):
        problems.append(f"{table}: '{name}' sha256 differs from the manifest (the file was changed)")
    meta = pq.ParquetFile(file).metadata
    if entry.get("rows") != meta.num_rows:
        problems.append(f"{table}: '{name}' has {meta.num_rows} rows, the manifest says {entry.get('rows')}")
    if t is None:
        return
    wrong_schema = schema_problems(pq.read_schema(file), t.arrow_schema()) if t.columns else []
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
