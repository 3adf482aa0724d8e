"""Adding a table to a committed store (annotations computed after the build, such as LLM
explanations of neurons), crash-safe.

A store's files never change after commit; an annotation table is written under a new file name
(`<table>.<n>.parquet`), then `manifest.json` is replaced atomically to list it (with its
version, rows, bytes and sha256, as `StoreWriter.commit` lists every table), then the file it
replaces, if any, is removed. A reader sees the old manifest with the old file or the new one
with the new file; a crash leaves at worst an unlisted file behind.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from store import schema
from store.manifest import MANIFEST_NAME, dump_manifest, fsync_path, read_manifest, sha256_file, write_text_atomic
from store.writer import PARQUET_OPTIONS, conform, row_group_rows


def replace_table(store_dir: str | Path, name: str, data: pa.Table) -> Path:
    """Write table `name` (a schema table) into the committed store at `store_dir`, replacing
    the one it holds, if any. Returns the new file's path."""
    root = Path(store_dir).expanduser().absolute()
    manifest = read_manifest(root)
    spec = schema.table(name)
    table = conform(spec, data)
    if table.num_rows > 1:
        order = pc.sort_indices(table, sort_keys=[(k, "ascending") for k in spec.sort_key])
        if not np.array_equal(order.to_numpy(), np.arange(table.num_rows)):
            table = table.take(order)
    old = (manifest.get("tables") or {}).get(name, {}).get("file")
    n = 1
    while (root / f"{name}.{n}.parquet").exists() or f"{name}.{n}.parquet" == old:
        n += 1
    final = root / f"{name}.{n}.parquet"
    tmp = final.with_name(f".{final.name}.tmp")
    pq.write_table(table, tmp, row_group_size=row_group_rows(name), **PARQUET_OPTIONS)
    fsync_path(tmp)
    os.replace(tmp, final)
    tables = dict(manifest.get("tables") or {})
    tables[name] = {"file": final.name, "version": spec.version, "rows": table.num_rows,
                    "sha256": sha256_file(final), "bytes": final.stat().st_size}
    write_text_atomic(root / MANIFEST_NAME, dump_manifest({**manifest, "tables": tables}))
    fsync_path(root)
    if old and old != final.name and Path(old).name == old:
        (root / old).unlink(missing_ok=True)
    return final
