"""Where a session is: the page files, which store it browses, and links between pages.

The store root comes from `--store PATH` after `--` on the command line (what `serve` passes)
or the MECHSCOPE_STORE environment variable (what tests use). When the root is a folder of
stores, a sidebar picker chooses one and keeps it in the `store` query parameter, so every URL
names its store and stays shareable. `require_tables` / `has_table` are the one check every page
makes for the tables it reads: a store built before a table existed (or holding an older version
of it) gets the store's notice saying how to get it, instead of a failed query. Caching and
queries are in `dashboard/data.py`; routing in `app.py`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import streamlit as st

from dashboard import data, text
from dashboard.locate import check_store, find_stores
from store import StoreError

OVERVIEW = "views/overview.py"
CATALOGUE = "views/neurons.py"
NEURON = "views/neuron.py"
DELETION = "views/deletion.py"
HEADS = "views/heads.py"
HEAD = "views/head.py"
CIRCUITS = "views/circuits.py"
LENS = "views/lens.py"
RESIDUAL = "views/residual.py"
LIVE = "views/live.py"
SQL = "views/sql.py"
ENV_VAR = "MECHSCOPE_STORE"
_KEY = "mechscope_store"  # (path, name or None) of the store this session browses
_PICKER, _CHANGED = "store_picker", "store_picked"


def store_root(argv: list[str] | None = None) -> str | None:
    """The `--store` value after `--` in argv, else $MECHSCOPE_STORE, else None."""
    argv = sys.argv if argv is None else argv
    if "--" in argv:
        rest = argv[argv.index("--") + 1:]
        for i, arg in enumerate(rest):
            if arg == "--store" and i + 1 < len(rest):
                return rest[i + 1]
            if arg.startswith("--store="):
                return arg.split("=", 1)[1]
    # Streamlit strips the `--` before the script runs: look for a bare --store as well.
    for i, arg in enumerate(argv[1:], start=1):
        if arg == "--store" and i + 1 < len(argv):
            return argv[i + 1]
    return os.environ.get(ENV_VAR)


def choose_store() -> None:
    """Resolve the session's store (sidebar picker when there are several); stop with an error
    message when there is none. Called by `app.py` before the page runs."""
    root = store_root()
    if not root:
        st.error(f"No store given: run `mechscope serve DIR`, or set {ENV_VAR}.")
        st.stop()
    try:
        stores = find_stores(root)
    except StoreError as e:
        st.error(text.md(e))
        st.stop()
    if len(stores) == 1:
        st.session_state[_KEY] = (str(stores[0]), None)
        _open_or_stop(stores[0])
        return
    names = [p.name for p in stores]
    wanted = st.query_params.get("store")
    remembered = (st.session_state.get(_KEY) or (None, None))[1]
    if st.session_state.pop(_CHANGED, False):
        pass  # the user just picked a store: the picker wins and the URL follows
    elif wanted in names:
        st.session_state[_PICKER] = wanted  # a link naming its store (deep link, back button)
    elif remembered in names:
        st.session_state[_PICKER] = remembered  # a page change dropped the query parameters
    name = st.sidebar.selectbox("store", names, key=_PICKER, on_change=_picked,
                                help=f"stores found in {text.code(Path(root).resolve())}")
    st.session_state[_KEY] = (str(stores[names.index(name)]), name)
    if wanted != name:  # every page's URL names its store
        st.query_params["store"] = name
    try:  # a store of an older schema is listed, but says what to do instead of failing a query
        check_store(stores[names.index(name)])
    except StoreError as e:
        st.error(text.md(e))
        st.stop()
    _open_or_stop(stores[names.index(name)])


def _open_or_stop(path: Path) -> None:
    """Open the store (checked against its manifest once per version: `store/integrity.py`); a
    damaged one is one notice naming the table and `mechscope verify`, on every page."""
    try:
        data.get_store(str(path))
    except StoreError as e:
        st.error(text.md(e), icon=":material/error:")
        st.stop()


def _picked() -> None:
    st.session_state[_CHANGED] = True


def current() -> str:
    """Path of the store this session browses (after `choose_store`)."""
    if _KEY not in st.session_state:
        choose_store()
    return st.session_state[_KEY][0]


def store_param() -> str | None:
    """The `store` value for plain links (LinkColumn URLs); None when serving one store.

    `st.page_link`/`st.switch_page` need no store: `choose_store` puts it back into the URL on
    every run, before the page runs."""
    return (st.session_state.get(_KEY) or (None, None))[1]


def has_table(path: str, table: str) -> bool:
    """True when the store has `table` in a version this code reads; else show the store's notice
    (which names what fills the table, `schema.Table.family`, and how to get it) and return False."""
    notice = data.missing(path, table)
    if notice is not None:
        st.info(notice, icon=":material/info:")
    return notice is None


def require_tables(path: str, *tables: str, title: str | None = None) -> None:
    """Stop the page after one notice (under `title`, if given) unless the store has every one of `tables`."""
    for table in tables:
        if data.missing(path, table) is not None:
            if title:
                st.title(title)
            has_table(path, table)
            st.stop()
