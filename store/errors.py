"""The store's user-facing errors.

A `StoreError` is a problem the user can fix (a wrong path, a folder that is not empty, a store
that fails its checks, a query that DuckDB rejects); its message is one line and the CLI prints
it without a traceback. `QueryRefused` is the SQL guard saying no (`store/sqlguard.py`);
`QueryTimeout` is the guard stopping a query that ran past its time limit.
"""

from __future__ import annotations


class StoreError(Exception):
    """A problem with a store or a query over it, stated in one line."""


class QueryRefused(StoreError):
    """User SQL that the guard will not run (wrong statement type, file access, limits)."""


class QueryTimeout(QueryRefused):
    """User SQL stopped because it ran past its time limit."""


class QueryBusy(QueryRefused):
    """User SQL not started: the server runs as many user queries as it allows; try again."""


def one_line(exc: BaseException) -> str:
    """The first line of an exception's message (DuckDB's messages add a caret diagram below)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
