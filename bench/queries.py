"""Neuron-page query latency: p50 / p95 / max of every query the neuron page issues, per store.

    python bench/queries.py [STORE ...] [--neurons 200] [--repeat 3] [--seed 0] [--explain]
                            [--json bench/results/queries.json]

STORE defaults to stores/demo (if built) and the synthetic 10M-token GPT-2-small store
(bench/results/synthetic-10m; make it with `python bench/synthetic_store.py`). For each store:
open it with `store.open_store`, pick --neurons random (layer, neuron) pairs (seeded), and run
the calls dashboard/views/neuron.py makes through dashboard/data.py, in its order and with its
arguments, straight on `store.queries` (no Streamlit, no st.cache_data: what a first visit of
a neuron costs). Each query's first call on the freshly opened store is reported as `cold` and
left out of the percentiles; then every pair is visited --repeat times (pairs interleaved, so a
repeat never follows its own call). `page` is the five calls of one visit, timed together.
Target: p95 <= 20 ms per query. --explain prints EXPLAIN ANALYZE of each page query for one
neuron (the exact SQL, captured from `store.queries`). Writes JSON to --json.

The fixes bench/README.md describes (A: row-group sizes and the metadata cache; B: the
`context_tokens` column) are in `store/` now, so a store built by this code is measured as built.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import duckdb
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from store import StoreError, open_store, queries  # noqa: E402

TARGET_MS = 20.0
DEFAULT_STORES = (ROOT / "stores" / "demo", ROOT / "bench" / "results" / "synthetic-10m")

# dashboard/views/neuron.py, top to bottom: data.layer_range(path), data.neuron(path, layer, neuron),
# data.neighbours(path, layer, neuron), data.examples(path, layer, neuron, "top"), then "band".
PAGE = (
    ("layer_range", lambda s, layer, neuron: queries.layer_range(s)),
    ("neuron", lambda s, layer, neuron: queries.neuron(s, layer, neuron)),
    ("neighbours", lambda s, layer, neuron: queries.neighbours(s, layer, neuron)),
    ("neuron_examples top", lambda s, layer, neuron: queries.neuron_examples(s, layer, neuron, "top")),
    ("neuron_examples band", lambda s, layer, neuron: queries.neuron_examples(s, layer, neuron, "band")),
)


class ExplainAnalyze:
    """Stands in for a Store: runs each query as EXPLAIN ANALYZE and keeps the plans."""

    def __init__(self, store):
        self.store, self.plans = store, []

    def sql(self, query: str, params: list | None = None):
        plan = self.store.sql("EXPLAIN ANALYZE " + query, params)
        self.plans.append(plan.column(plan.num_columns - 1)[0].as_py())
        return plan

    def tables(self) -> list[str]:
        return self.store.tables()


def neuron_pairs(store, n: int, seed: int) -> list[tuple[int, int]]:
    """`n` distinct (layer, neuron) pairs of the store's `neurons` table, drawn with `seed`, plus a
    different one first (for the cold calls)."""
    sizes = store.sql("SELECT layer, count(*) AS n FROM neurons GROUP BY layer ORDER BY layer").to_pylist()
    layers = np.array([r["layer"] for r in sizes])
    counts = np.array([r["n"] for r in sizes])
    total = int(counts.sum())
    flat = np.random.default_rng(seed).choice(total, size=min(n + 1, total), replace=False)
    starts = np.cumsum(counts) - counts
    which = np.searchsorted(starts, flat, side="right") - 1
    return [(int(layers[w]), int(f - starts[w])) for w, f in zip(which, flat, strict=True)]


def percentiles(ms: list[float]) -> dict:
    a = np.asarray(ms)
    return {"p50_ms": float(np.percentile(a, 50)), "p95_ms": float(np.percentile(a, 95)),
            "max_ms": float(a.max()), "mean_ms": float(a.mean()), "n": int(a.size)}


def bench_store(path: Path, args, variant: str = "as built", page=PAGE) -> dict:
    t = time.perf_counter()
    store = open_store(path)
    open_ms, m = (time.perf_counter() - t) * 1e3, store.manifest
    pairs = neuron_pairs(store, args.neurons, args.seed)
    cold_pair, pairs = pairs[0], pairs[1:]
    cold = {}
    for name, call in page:  # the first call of each query on the fresh connection
        t = time.perf_counter()
        call(store, *cold_pair)
        cold[name] = (time.perf_counter() - t) * 1e3
    cold["page"] = sum(cold.values())
    samples: dict[str, list[float]] = {name: [] for name, _ in (*page, ("page", None))}
    rows = dict.fromkeys(samples, 0)
    for _ in range(args.repeat):
        for layer, neuron in pairs:
            page_t = time.perf_counter()
            for name, call in page:
                t = time.perf_counter()
                result = call(store, layer, neuron)
                samples[name].append((time.perf_counter() - t) * 1e3)
                rows[name] += result.num_rows
            samples["page"].append((time.perf_counter() - page_t) * 1e3)
    stats = {name: {**percentiles(ms), "cold_ms": cold[name],
                    "mean_rows": None if name == "page" else rows[name] / len(ms)} for name, ms in samples.items()}
    probe = ExplainAnalyze(store)
    for _, call in page if args.explain else ():
        call(probe, *pairs[0])
    store.close()
    return {"path": str(path), "variant": variant, "model": m.get("model", {}).get("name"),
            "n_tokens": m.get("build", {}).get("n_tokens"),
            "tables": {k: {"rows": v.get("rows"), "bytes": v.get("bytes")} for k, v in m.get("tables", {}).items()},
            "open_ms": open_ms, "neurons_sampled": len(pairs), "queries": stats,
            "explained_neuron": list(pairs[0]) if args.explain else None,
            "plans": dict(zip([n for n, _ in page], probe.plans, strict=False))}


def table_text(result: dict) -> str:
    size = sum(v["bytes"] or 0 for v in result["tables"].values()) / 2**20
    head = (f"{result['path']}  [{result['variant']}]  ({result['model']}, {result['n_tokens']:,} tokens, "
            f"{size:,.0f} MiB; {result['neurons_sampled']} neurons)")
    lines = [head, f"  {'query':<22}{'p50 ms':>9}{'p95 ms':>9}{'max ms':>9}{'cold ms':>9}{'rows':>7}  target"]
    for name, s in result["queries"].items():
        verdict = "" if name == "page" else ("ok" if s["p95_ms"] <= TARGET_MS else "MISS")
        rows = "" if s["mean_rows"] is None else f"{s['mean_rows']:.0f}"
        lines.append(f"  {name:<22}{s['p50_ms']:>9.1f}{s['p95_ms']:>9.1f}{s['max_ms']:>9.1f}"
                     f"{s['cold_ms']:>9.1f}{rows:>7}  {verdict}")
    return "\n".join(lines)


def store_paths(ap: argparse.ArgumentParser, given: list[Path]) -> list[Path]:
    """The stores named on the command line (each must open), else the default ones that exist."""
    if not given:
        for p in DEFAULT_STORES:
            how = "make demo" if p.name == "demo" else "python bench/synthetic_store.py"
            if not (p / "manifest.json").is_file():
                print(f"skipping {p}: not built ({how})")
    paths = [p.expanduser().absolute() for p in given] or [p for p in DEFAULT_STORES if (p / "manifest.json").is_file()]
    for p in paths:
        try:
            open_store(p).close()
        except StoreError as e:
            ap.error(str(e))
    if not paths:
        ap.error("no store to benchmark")
    return paths


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("stores", nargs="*", type=Path, help="store folders (default: demo + synthetic 10M)")
    ap.add_argument("--neurons", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--explain", action="store_true", help="print EXPLAIN ANALYZE of each page query")
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "queries.json")
    args = ap.parse_args(argv)
    paths = store_paths(ap, args.stores)
    load_before, results = os.getloadavg(), []
    for path in paths:
        results.append(bench_store(path, args))
        print(table_text(results[-1]), flush=True)
        for name, plan in results[-1]["plans"].items():
            print(f"\n--- EXPLAIN ANALYZE {name} {tuple(results[-1]['explained_neuron'])} ---\n{plan}")
        print()
    report = {"target_p95_ms": TARGET_MS, "args": {k: str(v) for k, v in vars(args).items()},
              "machine": {"cpus": os.cpu_count(), "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
                          "python": platform.python_version(), "duckdb": duckdb.__version__,
                          "platform": platform.platform()},
              "stores": results}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.json}")
    for r in results:
        for name, s in r["queries"].items():
            if name != "page" and s["p95_ms"] > TARGET_MS:
                print(f"MISS [{r['variant']}] {r['path']}: {name} p95 {s['p95_ms']:.1f} ms > {TARGET_MS:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
