"""The dashboard's pages, one file each, run by `st.navigation` from `dashboard/app.py`.

Pages read their subject from `st.query_params`, get data from `dashboard/data.py` and HTML or
charts from `render.py`/`charts.py`; they hold no SQL and no tensor maths. (Not named `pages/`:
see `app.py`.) This file makes the folder a package so that installs ship it.
"""
