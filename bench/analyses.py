"""Wall time and peak memory of the weight-only analyses a build runs once per model.

    python bench/analyses.py [--model smollm2-135m] [--only head_weights,neuron_circuits]
                             [--save DIR] [--compare DIR]

Each analysis runs in its own child process (`--child NAME`), which loads the model, runs the
analysis once and reports its wall time and the process's peak RSS (VmHWM, as
`bench/harvest.py` reads it: after the model load and at the end), so that one analysis's
allocations do not hide another's. The analyses:
- head_weights: `pipeline/analysis/ov_qk.py: head_weight_columns` (the heads table's ov_* and
  qk_pos_by_offset columns);
- head_composition: `pipeline/analysis/composition.py: composition_tables`;
- neuron_circuits: `pipeline/analysis/circuits.py: neuron_circuit_tables`.

`--save DIR` pickles each analysis's output there; `--compare DIR` checks this run's outputs
against such a saved run (e.g. from before a change): token / neuron / head ids must be equal,
floats are reported as the largest absolute and relative difference. Prints a table; also
writes bench/results/analyses.json (one entry per model, earlier models' entries are kept).
"""

from __future__ import annotations

import argparse
import inspect
import json
import pickle
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.harvest import _peak_rss_mib  # noqa: E402

ANALYSES = ("head_weights", "head_composition", "neuron_circuits")


def _run(name: str, model, stats: dict) -> dict:
    """The analysis's output; `stats` gets what it reports about its candidates, where it does."""
    if name == "head_weights":
        from pipeline.analysis.ov_qk import head_weight_columns as fn

        wrap = "heads"
    elif name == "head_composition":
        from pipeline.analysis.composition import composition_tables as fn

        wrap = None
    elif name == "neuron_circuits":
        from pipeline.analysis.circuits import neuron_circuit_tables as fn

        wrap = None
    else:
        raise ValueError(name)
    kwargs = {"stats": stats} if "stats" in inspect.signature(fn).parameters else {}
    out = fn(model, **kwargs)
    return {wrap: out} if wrap else out


def _plain(value):
    """Columns as numpy arrays / lists (pyarrow arrays with nulls: -1 in their place)."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if hasattr(value, "to_numpy") and hasattr(value, "null_count"):  # a pyarrow array
        return np.asarray(value.fill_null(-1).to_numpy(zero_copy_only=False))
    return value


def _child(args) -> None:
    from pipeline.models import load_model

    t0 = time.perf_counter()
    model = load_model(args.model)
    load_s = time.perf_counter() - t0
    rss_model = _peak_rss_mib()
    stats: dict = {}
    t = time.perf_counter()
    with torch.no_grad():
        out = _run(args.child, model, stats)
    wall = time.perf_counter() - t
    result = {"analysis": args.child, "wall_s": wall, "load_s": load_s, "peak_rss_mib": _peak_rss_mib(),
              "peak_rss_after_load_mib": rss_model, "threads": torch.get_num_threads(), "stats": stats}
    if args.save:
        Path(args.save).mkdir(parents=True, exist_ok=True)
        (Path(args.save) / f"{args.child}.pkl").write_bytes(pickle.dumps(_plain(out)))
    if args.compare:
        ref = pickle.loads((Path(args.compare) / f"{args.child}.pkl").read_bytes())
        result["compare"] = compare(ref, _plain(out))
    print(json.dumps(result))


def compare(ref: dict, new: dict, prefix: str = "") -> dict:
    """Per column: "equal", or the count of differing integer / string entries, or the largest
    absolute and relative difference of floats (NaN in the same places required)."""
    report = {}
    for key in sorted(set(ref) | set(new)):
        name = f"{prefix}{key}"
        if key not in ref or key not in new:
            report[name] = "missing on one side"
            continue
        a, b = ref[key], new[key]
        if isinstance(a, dict):
            report.update(compare(a, b, f"{name}."))
            continue
        if isinstance(a, list) and a and a[0] is None:
            report[name] = "equal" if a == b else "differs"
            continue
        a, b = (np.asarray(x, dtype=object) if isinstance(x, list) else np.asarray(x) for x in (a, b))
        if a.shape != b.shape:
            report[name] = f"shape {a.shape} vs {b.shape}"
        elif a.dtype.kind == "f":
            a64, b64 = a.astype(np.float64), b.astype(np.float64)
            nan_same = bool(np.array_equal(np.isnan(a64), np.isnan(b64)))
            ok = ~np.isnan(a64) & ~np.isnan(b64)
            diff = np.abs(a64[ok] - b64[ok])
            rel = diff / np.maximum(np.abs(a64[ok]), 1e-30)
            report[name] = {"max_abs": float(diff.max(initial=0)), "max_rel": float(rel.max(initial=0)),
                            "exactly_equal": int((diff == 0).sum()), "n": int(ok.sum()), "nan_same": nan_same}
        else:
            differ = int(sum(1 for x, y in zip(a.ravel(), b.ravel(), strict=True) if not _same(x, y)))
            report[name] = "equal" if differ == 0 else f"{differ} of {a.size} differ"
    return report


def _same(x, y) -> bool:
    if isinstance(x, (list, np.ndarray)) or isinstance(y, (list, np.ndarray)):
        return np.array_equal(np.asarray(x, dtype=object), np.asarray(y, dtype=object))
    return x == y


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--only", default=",".join(ANALYSES), help="comma-separated analyses")
    p.add_argument("--save", default=None, help="pickle each analysis's output into this folder")
    p.add_argument("--compare", default=None, help="compare each output with one saved by --save")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return _child(args)
    names = [n for n in args.only.split(",") if n]
    load_before = _loadavg()
    results = {}
    for name in names:
        cmd = [sys.executable, __file__, "--model", args.model, "--child", name]
        cmd += ["--save", args.save] if args.save else []
        cmd += ["--compare", args.compare] if args.compare else []
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode:
            sys.stderr.write(out.stderr)
            raise SystemExit(f"{name} failed")
        results[name] = json.loads(out.stdout.strip().splitlines()[-1])
    total = sum(r["wall_s"] for r in results.values())
    print(f"\n{args.model}, {torch.get_num_threads()} threads, load average before {load_before}, "
          f"after {_loadavg()}\n")
    print(f"{'analysis':18}  {'wall s':>8}  {'peak RSS MiB':>12}  {'after load MiB':>14}")
    for name, r in results.items():
        print(f"{name:18}  {r['wall_s']:8.1f}  {r['peak_rss_mib']:12,.0f}  {r['peak_rss_after_load_mib']:14,.0f}")
    print(f"{'total':18}  {total:8.1f}")
    for name, r in results.items():
        if r.get("stats"):
            print(f"{name} candidates: {json.dumps(r['stats'])}")
    for name, r in results.items():
        if "compare" in r:
            print(f"\n{name} against {args.compare}:")
            for col, verdict in r["compare"].items():
                print(f"  {col}: {verdict}")
    out_dir = ROOT / "bench" / "results"
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "analyses.json"
    try:
        previous = json.loads(path.read_text())
    except (OSError, ValueError):
        previous = {}
    previous[args.model] = {"analyses": results, "total_s": total, "load_average_before": load_before,
                            "load_average_after": _loadavg(), "date": time.strftime("%Y-%m-%d %H:%M")}
    path.write_text(json.dumps(previous, indent=2))


if __name__ == "__main__":
    main()
