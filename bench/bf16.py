"""How far the neuron statistics of a bfloat16 model move from those of the same model in float32.

    python bench/bf16.py [--model smollm2-135m] [--tokens 32768] [--batch-size 8]

Runs the neuron statistics (moments, top examples, records, histograms) over the same wiki-vital
windows with the model loaded in float32 and in bfloat16 (the statistics accumulate in float32 or
more either way), and the key-value view from each model's weights, then compares per neuron:
- top-example overlap: |fp32 top-k windows ∩ bf16 top-k windows| / k (the examples are one per
  window, so the windows are what a reader sees);
- records overlap: the same for the R strongest (window, position) records;
- max: |bf16 - fp32| / |fp32|;  density: |bf16 - fp32| (fractions of positions > 0);
- key-value view: overlap of the 10 tokens each neuron promotes most.
Prints quantiles over all neurons; writes bench/results/bf16.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline import assemble  # noqa: E402
from pipeline.build import BuildParams, harvest_windows  # noqa: E402
from pipeline.harvest import Harvest  # noqa: E402
from pipeline.models import load_model  # noqa: E402
from pipeline.stats import StatsConfig, registry  # noqa: E402


def harvest(model, params: BuildParams) -> tuple[dict, float]:
    h = Harvest(model, params.stats, statistics=registry.NEURON_STATISTICS)
    t = time.perf_counter()
    for _ in harvest_windows(h, params):
        pass
    elapsed = time.perf_counter() - t
    return assemble.combine(h.finalize(), h.tables()), elapsed


def top_sets(rows: dict, kind: str | None, unit: str) -> dict[tuple[int, int], set]:
    keep = np.ones(len(rows["layer"]), bool) if kind is None else np.asarray(rows["kind"]) == kind
    out: dict[tuple[int, int], set] = {}
    seq = np.asarray(rows["seq_id"])[keep]
    pos = np.asarray(rows["pos"])[keep]
    for layer, neuron, s, p in zip(np.asarray(rows["layer"])[keep], np.asarray(rows["neuron"])[keep], seq, pos,
                                   strict=True):
        out.setdefault((int(layer), int(neuron)), set()).add(int(s) if unit == "window" else (int(s), int(p)))
    return out


def overlap(a: dict, b: dict) -> np.ndarray:
    return np.array([len(a[k] & b.get(k, set())) / max(len(a[k]), 1) for k in sorted(a)])


def quantiles(x: np.ndarray) -> dict:
    return {"p05": float(np.quantile(x, 0.05)), "median": float(np.median(x)), "mean": float(np.mean(x)),
            "p95": float(np.quantile(x, 0.95))}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tokens", type=int, default=32768)
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()
    params = BuildParams(model=args.model, corpus="wiki-vital", max_tokens=args.tokens, stats=StatsConfig(),
                         batch_size=args.batch_size)
    results, kv = {}, {}
    for dtype in (torch.float32, torch.bfloat16):
        model = load_model(args.model, dtype=dtype)
        tables, elapsed = harvest(model, params)
        from pipeline.analysis.key_value import value_tokens
        from pipeline.weights import neuron_weights

        centre = not str(model.facts.get("normalization", "LN")).upper().startswith("RMS")
        kv[dtype] = value_tokens(neuron_weights(model), centre)[0]
        results[dtype] = (tables, elapsed)
        del model
    (a, ta), (b, tb) = results[torch.float32], results[torch.bfloat16]
    ex_a, ex_b = (top_sets(t["neuron_examples"], "top", "window") for t in (a, b))
    rec_a, rec_b = (top_sets(t["activations"], None, "position") for t in (a, b))
    max_a, max_b = np.asarray(a["neurons"]["max"], float), np.asarray(b["neurons"]["max"], float)
    den_a, den_b = np.asarray(a["neurons"]["density_frac"], float), np.asarray(b["neurons"]["density_frac"], float)
    kv_a, kv_b = kv[torch.float32], kv[torch.bfloat16]
    report = {
        "top-example windows overlap": quantiles(overlap(ex_a, ex_b)),
        "records overlap": quantiles(overlap(rec_a, rec_b)),
        "max, relative difference": quantiles(np.abs(max_b - max_a) / np.maximum(np.abs(max_a), 1e-12)),
        "density, absolute difference": quantiles(np.abs(den_b - den_a)),
        "key-value top-10 tokens overlap": quantiles(np.array([len(set(x) & set(y)) / len(x)
                                                               for x, y in zip(kv_a, kv_b, strict=True)])),
    }
    print(f"\n{args.model}, {args.tokens:,} tokens, {torch.get_num_threads()} threads: float32 harvest {ta:.1f} s, "
          f"bfloat16 {tb:.1f} s (neuron statistics only; timings are not the benchmark: see bench/harvest.py)\n")
    print(f"{'per neuron':36} {'p05':>8} {'median':>8} {'mean':>8} {'p95':>8}")
    for name, q in report.items():
        print(f"{name:36} {q['p05']:8.4f} {q['median']:8.4f} {q['mean']:8.4f} {q['p95']:8.4f}")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "bf16.json").write_text(json.dumps({"args": vars(args), "report": report,
                                               "harvest_s": {"float32": ta, "bfloat16": tb}}, indent=2))


if __name__ == "__main__":
    main()
