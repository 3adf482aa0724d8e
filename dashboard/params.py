"""Checking a link's query parameters before the widgets bound to them read them.

A widget bound to the URL (`bind="query-params"`) silently drops a value it cannot use; a
page calls these first, on the raw values (`st.query_params.get_all(name)`), and shows the
sentence they return as a notice, so a mistyped link says what was wrong. Plain functions of
plain values, no Streamlit: the pages call them, the tests call them directly too. The raw values
in a sentence are Markdown-escaped (`dashboard.text.md`): the notices are Markdown, and a link's
text is data, never markup.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from dashboard.text import md


def _number(text: str) -> float | None:
    try:
        x = float(text.strip())
    except ValueError:
        return None
    return x if math.isfinite(x) else None


def _shown(name: str, raw: Sequence[str]) -> str:
    return md(f"{name}={raw[0]!r}" if len(raw) == 1 else f"{name}={list(raw)!r}")


def int_problem(name: str, raw: Sequence[str], lo: int, hi: int) -> str | None:
    """None when `raw` is absent or one whole number in [lo, hi]; else what is wrong."""
    if not raw:
        return None
    x = _number(raw[0]) if len(raw) == 1 else None
    if x is None or x != int(x):
        return f"{_shown(name, raw)} is not a whole number."
    if not lo <= x <= hi:
        return f"{_shown(name, raw)} is outside {lo}–{hi}."
    return None


def float_problem(name: str, raw: Sequence[str], lo: float, hi: float) -> str | None:
    """None when `raw` is absent or one number in [lo, hi]; else what is wrong."""
    if not raw:
        return None
    x = _number(raw[0]) if len(raw) == 1 else None
    if x is None:
        return f"{_shown(name, raw)} is not a number."
    if not lo <= x <= hi:
        return f"{_shown(name, raw)} is outside {lo:g} to {hi:g}."
    return None


def range_problem(name: str, raw: Sequence[str], lo: float, hi: float,
                  stops: Sequence[str] | None = None, whole: bool = False) -> str | None:
    """None when `raw` is absent or two numbers within [lo, hi], in either order (the sliders
    sort them; whole numbers if `whole`; when `stops` is given, each one of those slider stops
    as text); else what is wrong."""
    if not raw:
        return None
    values = [_number(r) for r in raw]
    kind = "whole numbers" if whole else "numbers"
    if len(raw) != 2 or None in values or (whole and any(v != int(v) for v in values)):
        return f"{_shown(name, raw)} is not a range: give two {kind}, e.g. `{name}={lo:g}&{name}={hi:g}`."
    a, b = sorted(values)
    if stops is not None and not set(raw) <= set(stops):
        return f"{_shown(name, raw)}: each end must be one of {', '.join(stops)}."
    if not lo <= a <= b <= hi:
        return f"{_shown(name, raw)} is not a range within {lo:g} to {hi:g}."
    return None


def choice_problem(name: str, raw: Sequence[str], options: Sequence[str], multi: bool = False) -> str | None:
    """None when `raw` is absent or one of `options` (any number of them if `multi`; an empty value
    clears a multi-choice); else what is wrong."""
    if not raw or (multi and list(raw) == [""]):
        return None
    if (len(raw) == 1 or multi) and set(raw) <= set(options):
        return None
    return f"{_shown(name, raw)} is not {'among' if multi else 'one of'} {', '.join(options)}."
