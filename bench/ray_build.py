"""A local 2-shard Ray build against the one-process build of the same store.

    python bench/ray_build.py [--model smollm2-135m] [--max-tokens 32k] [--shards 2]

Runs, one after the other, each as the user would (`python -m pipeline.cli build ...` in a child
process, wall time from start to exit, model loads, cluster start and merge included):
1. the one-process build (torch with every core);
2. `--ray --shards N` on a local cluster started by the build (N workers of one thread each);
and reads each store's manifest timings. Prints both and their ratio; checks that the two stores'
tables are equal (floats summed in another order to rounding, as tests/test_build.py allows);
writes bench/results/ray_build.json. Run it on a quiet machine: both builds use every core.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def _build(args: argparse.Namespace, out: Path, extra: list[str]) -> float:
    cmd = [sys.executable, "-m", "pipeline.cli", "build", "--model", args.model, "--corpus", args.corpus,
           "--max-tokens", args.max_tokens, "--out", str(out), "--no-progress", *extra]
    started = time.perf_counter()
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if r.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
    return wall


def _differences(a, b) -> dict:
    """{table.column: what differs} for the columns that are not identical: the one-process build
    runs torch on every core, each Ray worker on one thread, and a model's floats may differ in
    their last bits with the thread count."""
    import numpy as np
    from test_build import _same_column

    out = {}
    for name in a.tables():
        ta, tb = a.sql(f"SELECT * FROM {name}"), b.sql(f"SELECT * FROM {name}")
        for col in ta.column_names:
            if _same_column(ta[col], tb[col]):
                continue
            x, y = ta[col].to_pylist(), tb[col].to_pylist()
            try:
                fx, fy = np.asarray(x, float), np.asarray(y, float)
                rel = np.abs(fx - fy) / np.maximum(np.abs(fx), 1e-12)
                out[f"{name}.{col}"] = {"max_rel_diff": float(np.nanmax(rel)), "rows_differing": int((fx != fy).sum())}
            except (TypeError, ValueError):
                out[f"{name}.{col}"] = {"rows_differing": sum(u != v for u, v in zip(x, y, strict=True)),
                                        "rows": len(x)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--corpus", default="wiki-vital")
    ap.add_argument("--max-tokens", default="32k")
    ap.add_argument("--shards", type=int, default=2)
    args = ap.parse_args()

    from store import open_store

    with tempfile.TemporaryDirectory() as tmp:
        one, sharded = Path(tmp) / "one", Path(tmp) / "ray"
        one_s = _build(args, one, [])
        ray_s = _build(args, sharded, ["--ray", "--shards", str(args.shards)])
        a, b = open_store(one), open_store(sharded)
        differences = _differences(a, b)
        ta, tb = a.manifest["timings"], b.manifest["timings"]
    result = {
        "model": args.model, "max_tokens": args.max_tokens, "shards": args.shards,
        "one_process_wall_s": round(one_s, 1), "ray_wall_s": round(ray_s, 1),
        "ratio_wall": round(ray_s / one_s, 3),
        "one_process_harvest_s": round(ta["harvest_s"], 1), "ray_shards_and_cluster_s": round(tb["ray_s"], 1),
        "ratio_harvest": round(tb["ray_s"] / ta["harvest_s"], 3),
        "columns_that_differ": differences,
    }
    print(json.dumps(result, indent=2))
    out = ROOT / "bench" / "results" / "ray_build.json"
    out.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
