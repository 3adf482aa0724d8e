"""The live page's response times on a real model.

    python bench/live.py [--model smollm2-135m] [--tokens 64] [--repeats 3]

- analysis of one prompt as the live page runs it (`dashboard.live_data.analyse`: a forward with
  every residual state, hook_z, one head's pattern and one neuron captured, the lens grid over
  block boundaries, per-layer writes, DLA per sublayer and head), a fresh prompt each time so that
  no cache answers;
- a residual-stream patching grid, every layer x 16 positions (`LiveModel.patch_grid`);
- 20 greedy tokens (`LiveModel.generate`, full forwards, no KV cache).
Medians of `--repeats`; prints a table and writes bench/results/live.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    from dashboard import live_data  # noqa: E402  (streamlit's cache works without a server, with a warning)

    live = live_data.live_model(args.model)
    times: dict[str, list[float]] = {"analysis": [], "patching grid": [], "generate 20": []}
    for r in range(args.repeats):
        ids = [live.model.bos_token_id] + [int(x) for x in torch.randint(100, 5000, (args.tokens - 1,),
                                                                          generator=torch.Generator().manual_seed(r))]
        t = time.perf_counter()
        live_data.analyse(args.model, tuple(ids), "[]", (live.model.n_layers // 2, 0), (0, 0))
        times["analysis"].append(time.perf_counter() - t)
        other = [ids[0]] + ids[2:] + [ids[1]]
        t = time.perf_counter()
        grid = live.patch_grid(ids, other, 11, 12, positions=list(range(args.tokens - 16, args.tokens)))
        times["patching grid"].append(time.perf_counter() - t)
        t = time.perf_counter()
        live.generate(ids[:16], 20)
        times["generate 20"].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"\n{args.model}, {torch.get_num_threads()} threads, prompt {args.tokens} tokens, "
          f"median of {args.repeats}\n")
    labels = {"analysis": f"analysis of a {args.tokens}-token prompt (lens grid, attention, DLA)",
              "patching grid": f"patching grid, {tuple(grid.shape)[0]} layers x 16 positions",
              "generate 20": "greedy generation, 20 tokens after a 16-token prompt"}
    for k, v in med.items():
        print(f"{labels[k]:60}  {v:6.2f} s")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "live.json").write_text(json.dumps({"args": vars(args), "median_s": med, "all_s": times}, indent=2))


if __name__ == "__main__":
    main()
