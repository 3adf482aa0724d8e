"""From the statistics' and analyses' table parts to sorted, writable table columns.

Several producers fill one table: the neuron moments, histogram, key-value analysis and others
each give columns of `neurons`; the top lists and the histogram each give rows of
`neuron_examples`. `combine` puts the parts of each table together (parts that carry the whole
sort key and the same columns are rows to append; other parts are columns to add, and a key
column given twice must agree), `sort_rows` puts a table in its sort-key order (so that the
corpus pass fills token texts in that order and the writer need not re-sort), and `to_arrow`
makes the Arrow table of the schema. Resolving `deferred` token requests is
`pipeline/corpus_tables.py`'s; writing is `store`'s.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import pyarrow as pa

from pipeline.stats.deferred import TokenIdsAt, TokenWindows
from store.schema import Table


class AssemblyError(RuntimeError):
    """Producers whose parts of a table do not fit together: a programming error, not a user's."""


def combine(parts: Iterable[Mapping[str, Mapping[str, object]]], tables: Mapping[str, Table]) -> dict[str, dict]:
    """{table: columns} from the producers' parts, in the order given."""
    out: dict[str, dict] = {}
    for part in parts:
        for name, columns in part.items():
            if name not in tables:
                raise AssemblyError(f"a producer filled table {name!r}, which no statistic or analysis declares")
            into = out.get(name)
            if into is None:
                out[name] = dict(columns)
            elif _is_rows(into, columns, tables[name]):
                for c, values in columns.items():
                    into[c] = _concat(into[c], values)
            else:
                _add_columns(name, into, columns, tables[name])
    return out


def _is_rows(have: Mapping, part: Mapping, table: Table) -> bool:
    return set(table.sort_key) <= set(part) and set(part) == set(have)


def _add_columns(name: str, into: dict, columns: Mapping, table: Table) -> None:
    n = n_rows(into)
    for c, values in columns.items():
        if len(values) != n:
            raise AssemblyError(f"{name}.{c} has {len(values)} rows, the table's other columns {n}")
        if c not in into:
            into[c] = values
        elif c in table.sort_key:
            if not np.array_equal(np.asarray(into[c]), np.asarray(values)):
                raise AssemblyError(f"{name}.{c}: two producers give different keys (rows out of order?)")
        else:
            raise AssemblyError(f"{name}.{c} is given by two producers")


def _concat(a, b):
    if isinstance(a, TokenWindows):
        if not isinstance(b, TokenWindows) or (a.width, a.merged) != (b.width, b.merged):
            raise AssemblyError("token windows of different widths or kinds cannot share a column")
        return TokenWindows(np.concatenate([a.starts, b.starts]), a.width, a.merged)
    if isinstance(a, TokenIdsAt):
        return TokenIdsAt(np.concatenate([a.positions, b.positions]))
    if isinstance(a, list):
        return a + list(b)
    return np.concatenate([a, b])


def n_rows(columns: Mapping[str, object]) -> int:
    lengths = {len(v) for v in columns.values()}
    if len(lengths) > 1:
        raise AssemblyError(f"columns of different lengths: {sorted(lengths)}")
    return lengths.pop() if lengths else 0


def sort_rows(columns: dict, table: Table) -> dict:
    """The columns with rows in the table's sort-key order (stable; text keys sort as text)."""
    keys = []
    for k in reversed(table.sort_key):  # lexsort: the last key is the primary one
        values = np.asarray(columns[k])
        if values.dtype == object:
            values = np.unique(values, return_inverse=True)[1]
        keys.append(values)
    if not keys or n_rows(columns) < 2:
        return columns
    order = np.lexsort(keys)
    if np.array_equal(order, np.arange(len(order))):
        return columns
    return {c: _take(v, order) for c, v in columns.items()}


def _take(values, order: np.ndarray):
    if isinstance(values, TokenWindows | TokenIdsAt):
        return values.take(order)
    if isinstance(values, list):
        return [values[i] for i in order]
    if isinstance(values, pa.Array | pa.ChunkedArray):
        return values.take(pa.array(order))
    return np.asarray(values)[order]


def to_arrow(columns: Mapping[str, object], table: Table) -> pa.Table:
    """The Arrow table of `table`'s schema from plain columns (intermediate `_` columns dropped)."""
    schema = table.arrow_schema()
    missing = [f.name for f in schema if f.name not in columns]
    if missing:
        raise AssemblyError(f"table {table.name!r}: no producer filled {', '.join(missing)}")

    def column(f: pa.Field):
        values = columns[f.name]
        if isinstance(values, pa.Array | pa.ChunkedArray):  # already Arrow (token texts)
            return values.cast(f.type)
        if isinstance(values, np.ndarray) and values.ndim == 2:  # one fixed-length list per row
            offsets = np.arange(len(values) + 1, dtype=np.int64) * values.shape[1]
            return pa.LargeListArray.from_arrays(offsets, np.ascontiguousarray(values).reshape(-1)).cast(f.type)
        # from_pandas: NaN becomes null, which is what a nullable float column means by "no value".
        return pa.array(values, type=f.type, from_pandas=f.nullable)

    return pa.table({f.name: column(f) for f in schema}, schema=schema)
