"""SQL console page: read-only SQL over the store's tables, with a schema browser and example
queries that answer real questions.

Queries run through `store.sqlguard.run_user_query` (its guard, row cap and time limit; nothing
is re-checked here). The examples are `store.queries.EXAMPLE_QUERIES`; column descriptions come
from `store.schema.TABLES`.
"""

from __future__ import annotations

import streamlit as st

from dashboard import data, nav, render, text
from store import StoreError
from store.queries import EXAMPLE_QUERIES
from store.schema import TABLES

MAX_ROWS = 10_000
TIMEOUT_S = 20.0
_SQL_KEY = "sql_text"
_RESULT_KEY = "sql_result"

path = nav.current()
st.title("SQL console")
st.caption(f"Read-only DuckDB SQL over this store's tables · at most {MAX_ROWS:,} rows come back · "
           f"queries stop after {TIMEOUT_S:.0f} s · one statement per run")

if _SQL_KEY not in st.session_state:
    st.session_state[_SQL_KEY] = next(iter(EXAMPLE_QUERIES.values()))


def _load_example() -> None:
    st.session_state[_SQL_KEY] = EXAMPLE_QUERIES[st.session_state["example"]]
    st.session_state.pop(_RESULT_KEY, None)


left, right = st.columns([3, 1], gap="large")
with left:
    pick, reload = st.columns([5, 1], vertical_alignment="bottom")
    pick.selectbox("example questions", list(EXAMPLE_QUERIES), key="example", on_change=_load_example,
                   help="loads the example's SQL into the editor")
    reload.button("↺ reload", on_click=_load_example, help="put the selected example back into the editor")
    sql = st.text_area("SQL", key=_SQL_KEY, height=240)
    if st.button("Run query", type="primary", key="run"):
        try:
            with st.spinner("Running the query (when the server is busy it waits its turn first)…"):
                st.session_state[_RESULT_KEY] = ("ok", sql, data.run_sql(path, sql, MAX_ROWS, TIMEOUT_S))
        except StoreError as e:
            st.session_state[_RESULT_KEY] = ("error", sql, str(e))

    outcome = st.session_state.get(_RESULT_KEY)
    if outcome is not None:
        status, ran_sql, value = outcome
        if status == "error":
            st.error(text.md(value))
        else:
            frame = value.table.to_pandas()
            note = f"{len(frame):,} rows in {value.elapsed_s:.2f} s"
            if value.truncated:
                note += f" — capped at {MAX_ROWS:,} rows; add LIMIT or aggregate to see the rest"
            (st.warning if value.truncated else st.success)(note)
            if ran_sql != sql:
                st.caption("(the result is from the query before your last edit)")
            config = {}
            links = render.subject_links(frame, nav.store_param())
            if links is not None:  # rows naming a neuron or a head link to its page
                frame.insert(0, "open", links)
                config["open"] = st.column_config.LinkColumn("page", display_text="open ↗", width="small")
            st.dataframe(frame, hide_index=True, height=min(36 + 35 * len(frame), 480), column_config=config)
            st.download_button("Download CSV", frame.to_csv(index=False).encode("utf-8"),
                               file_name="mechscope_query.csv", mime="text/csv", on_click="ignore")

with right:
    st.markdown("#### Tables")
    present = set(data.tables(path))
    for t in TABLES:
        flag = "" if t.name in present else " (not in this store)"
        with st.expander(f"`{t.name}`{flag}"):
            st.caption(render.md_escape(t.description))
            st.markdown("\n".join(f"- `{c.name}` *{c.type}*{' (nullable)' if c.nullable else ''}: "
                                  f"{render.md_escape(c.description)}"
                                  for c in t.columns))
    st.caption("Token text is in `tokens.token`; join on `(seq_id, pos)`. Lists are 1-based in SQL "
               "(`kv_top_tokens[1]`).")
    st.page_link(nav.OVERVIEW, label="back to the overview")
