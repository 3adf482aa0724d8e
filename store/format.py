"""Query results as text: an aligned table for people, CSV and JSON for other programs.

Used by `mechscope query`; the dashboard renders results itself. float32 values are printed
with the shortest decimal that reads back as the same float32 (0.1, not 0.10000000149011612).
JSON is a list of row objects; NaN and infinities become null (JSON has no such numbers).
"""

from __future__ import annotations

import base64
import csv
import io
import json
import math
from datetime import date, datetime, time, timedelta
from decimal import Decimal

import pyarrow as pa

FORMATS = ("table", "csv", "json")
CELL_WIDTH = 60


def format_result(table: pa.Table, fmt: str = "table") -> str:
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    table = _shortest_floats(table)
    if fmt == "csv":
        return _csv(table)
    if fmt == "json":
        return _json(table)
    return _text(table)


def _shortest_floats(table: pa.Table) -> pa.Table:
    """float32 columns (also inside lists) to float64 holding the float32's shortest decimal."""
    def widen(t: pa.DataType) -> pa.DataType | None:
        if pa.types.is_float32(t):
            return pa.float64()
        if pa.types.is_list(t) or pa.types.is_large_list(t):
            inner = widen(t.value_type)
            return None if inner is None else pa.list_(inner)
        return None

    def as_text(t: pa.DataType) -> pa.DataType:
        return pa.string() if pa.types.is_float32(t) else pa.list_(as_text(t.value_type))

    cols = []
    for field, col in zip(table.schema, table.columns, strict=True):
        wide = widen(field.type)
        cols.append(col if wide is None else col.cast(as_text(field.type)).cast(wide))
    return pa.table(cols, names=table.column_names)


def _text(table: pa.Table, width: int = CELL_WIDTH) -> str:
    names = table.column_names
    rows = [[_clip(_cell(v), width) for v in row.values()] for row in table.to_pylist()]
    right = [_is_number(f.type) for f in table.schema]
    widths = [max([len(n)] + [len(r[i]) for r in rows]) for i, n in enumerate(names)]

    def line(cells: list[str]) -> str:
        parts = [c.rjust(w) if r else c.ljust(w) for c, w, r in zip(cells, widths, right, strict=True)]
        return "  ".join(parts).rstrip()

    out = [line(names), "  ".join("-" * w for w in widths)] if names else []
    out += [line(r) for r in rows]
    out.append(f"({table.num_rows:,} row{'s' if table.num_rows != 1 else ''})")
    return "\n".join(out) + "\n"


def _is_number(t: pa.DataType) -> bool:
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)


def _cell(v) -> str:
    if v is None:
        return "NULL"
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, list):
        return "[" + ", ".join(_cell(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_cell(x)}" for k, x in v.items()) + "}"
    if isinstance(v, str):
        return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in v)
    if isinstance(v, bytes):
        return v.hex()
    return str(v)


def _clip(s: str, width: int) -> str:
    return s if len(s) <= width else s[: width - 1] + "…"


def _csv(table: pa.Table) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(table.column_names)
    for row in table.to_pylist():
        w.writerow(["" if v is None else _csv_value(v) for v in row.values()])
    return buf.getvalue()


def _csv_value(v):
    if isinstance(v, list | dict):
        return json.dumps(_plain(v), ensure_ascii=False)
    if isinstance(v, bytes):
        return v.hex()
    return v


def _json(table: pa.Table) -> str:
    rows = [json.dumps(_plain(r), ensure_ascii=False, allow_nan=False) for r in table.to_pylist()]
    return "[\n" + ",\n".join(rows) + "\n]\n" if rows else "[]\n"


def _plain(v):
    """A value JSON can carry: NaN/inf as None, dates as ISO text, bytes as base64, decimals as text."""
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, list | tuple):
        return [_plain(x) for x in v]
    if isinstance(v, datetime | date | time):
        return v.isoformat()
    if isinstance(v, timedelta):
        return v.total_seconds()
    if isinstance(v, Decimal):
        return str(v)
    if isinstance(v, bytes):
        return base64.b64encode(v).decode("ascii")
    return v
