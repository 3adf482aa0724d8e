"""mechscope's store: Parquet tables plus a manifest, queried through DuckDB views.

- `schema`: every table and column, declared once.
- `writer`: `StoreWriter`, crash-safe writing (a killed build leaves no store, never half of one).
- `reader`: `open_store` -> `Store`, one DuckDB view per table; trusted SQL from `store/` only.
- `sqlguard`: `run_user_query`, user SQL made safe to expose; `sqlworker` runs it in a process
  the OS bounds (memory, time, result size, concurrency).
- `integrity`: what `open_store` checks first (manifest shape, files vs the manifest; cached).
- `verify`: `verify_store`, checksums, row counts, schema and sort order.
- `manifest`, `format`, `errors`: the folder layout, result rendering, the error types.

This package never imports torch, transformer_lens or streamlit (a test checks).
"""

from store.errors import StoreError
from store.reader import Store, open_store
from store.verify import verify_store
from store.writer import StoreWriter

__all__ = ["Store", "StoreError", "StoreWriter", "open_store", "verify_store"]
