"""The dashboard's entry file: it only routes.

Run by `mechscope serve` as `streamlit run dashboard/app.py -- --store PATH` (or with
MECHSCOPE_STORE set). Pages live in `dashboard/views/`, the store picker in `nav.py`, caching
and queries in `data.py` (SQL in `store/queries.py`).

Why `views/` and not `pages/`: a folder named `pages` beside the entry file switches Streamlit
into its old multipage mode until the first `st.navigation` call, so a fresh server's first deep
link (e.g. /neuron?layer=1&neuron=3, /head?layer=1&head=2) would run the page file bare, bypassing this router.
"""

from __future__ import annotations

import sys
from pathlib import Path

import streamlit as st

_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:  # `streamlit run` puts dashboard/ on the path, not the repo root
    sys.path.insert(0, _ROOT)

from dashboard import nav  # noqa: E402  (needs the path fix above)

# The icon is a file served by this server (a Material icon or an emoji would be fetched from a
# CDN, which fails offline); the tab title is the page's own (pages may name their subject).
st.set_page_config(page_title=None, page_icon=str(Path(__file__).with_name("favicon.png")), layout="wide")

pages = [
    st.Page(nav.OVERVIEW, title="Overview", icon=":material/home:", default=True),
    st.Page(nav.CATALOGUE, title="Neuron catalogue", icon=":material/table_rows:"),
    st.Page(nav.NEURON, title="Neuron", icon=":material/neurology:"),
    st.Page(nav.DELETION, title="Deletion neurons", icon=":material/remove_circle:"),
    st.Page(nav.HEADS, title="Head catalogue", icon=":material/grid_view:"),
    st.Page(nav.HEAD, title="Head", icon=":material/visibility:"),
    st.Page(nav.CIRCUITS, title="Circuits", icon=":material/hub:"),
    st.Page(nav.LENS, title="Logit lens", icon=":material/layers:"),
    st.Page(nav.RESIDUAL, title="Residual stream", icon=":material/stacked_line_chart:"),
    st.Page(nav.LIVE, title="Live prompt", icon=":material/play_circle:"),
    st.Page(nav.SQL, title="SQL console", icon=":material/terminal:"),
]
page = st.navigation(pages)
nav.choose_store()
page.run()
