"""Harvest throughput on a busy machine against its fair share of the cores.

    python bench/busy.py [--model gpt2-random] [--load 4] [--batches 6]

A child process harvests `--batches` batches (8 x 128, after 2 warm-up batches) with every
statistic of the registry and reports tokens/s. It runs idle and beside `--load` busy processes
(pure Python loops at the same priority, the "other work" of a shared machine), under each
OpenMP wait policy that torch's thread pool can be given before it starts:
- default: libgomp's threads spin a while at each barrier before they sleep;
- PASSIVE (`OMP_WAIT_POLICY=PASSIVE`): they sleep at once;
- spinN (`GOMP_SPINCOUNT=N`): they spin N rounds, then sleep (`mechscope` sets spin10000 unless
  the user set either variable: `pipeline/cli.py`).
A fair share is what the scheduler owes the harvest's threads: cores x threads / (threads +
load) of the machine, so loaded/idle should be near threads / (threads + load) if a build
degrades in proportion to the cores it gets. Writes bench/results/busy.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import sys, time, torch
sys.path.insert(0, {root!r})
from pipeline.harvest import Harvest
from pipeline.models import load_model
from pipeline.stats import StatsConfig
from pipeline.corpus import iter_documents
from pipeline.windows import iter_windows
model = load_model({model!r})
config = StatsConfig()
h = Harvest(model, config)
batches = list(iter_windows(iter_documents("wiki-vital"), model.tokenizer, model.bos_token_id, 128,
                            ({batches} + 2) * 8 * 128, 8))
for b in batches[:2]:
    h.process(int(b.seq_ids[0]), b.token_ids, b.doc_ids < 0)
t = time.perf_counter()
for b in batches[2:]:
    h.process(int(b.seq_ids[0]), b.token_ids, b.doc_ids < 0)
print(sum(b.token_ids.size for b in batches[2:]) / (time.perf_counter() - t), torch.get_num_threads())
"""


def _env(policy: str) -> dict:
    """The environment for a policy: default, PASSIVE, or spinN (GOMP_SPINCOUNT=N)."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    if policy == "PASSIVE":
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    elif policy.startswith("spin"):
        env["GOMP_SPINCOUNT"] = policy[4:]
    return env


def _run(args, policy: str, load: int) -> tuple[float, int]:
    env = _env(policy)
    burners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(load)]
    try:
        time.sleep(0.5 if load else 0)
        r = subprocess.run([sys.executable, "-c", CHILD.format(root=str(ROOT), model=args.model, batches=args.batches)],
                           env=env, capture_output=True, text=True, check=True)
    finally:
        for b in burners:
            b.kill()
            b.wait()
    rate, threads = r.stdout.split()
    return float(rate), int(threads)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="gpt2-random")
    ap.add_argument("--load", type=int, default=4)
    ap.add_argument("--batches", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=2, help="each variant this many times, interleaved")
    ap.add_argument("--policies", default="default,PASSIVE",
                    help="comma-separated: default, PASSIVE, spinN (GOMP_SPINCOUNT=N)")
    args = ap.parse_args()
    policies = args.policies.split(",")
    variants = [(p, load) for load in (0, args.load) for p in policies]
    runs: dict = {f"{p}/load{load}": [] for p, load in variants}
    threads = 0
    for _ in range(args.rounds):
        for p, load in variants:
            rate, threads = _run(args, p, load)
            runs[f"{p}/load{load}"].append(rate)
            print(f"{p:10s} load {load}: {rate:7.1f} tok/s", flush=True)
    best = {k: max(v) for k, v in runs.items()}
    fair = threads / (threads + args.load)
    result = {"model": args.model, "torch_threads": threads, "cores": os.cpu_count(), "load": args.load,
              "tokens_per_s": runs, "fair_share": round(fair, 3)}
    for p in policies:
        loaded, idle = best[f"{p}/load{args.load}"], best[f"{p}/load0"]
        result[f"{p}: loaded / idle"] = round(loaded / idle, 3)
        result[f"{p}: loaded / fair share of idle"] = round(loaded / (fair * idle), 3)
        if p != "default" and "default" in policies:
            result[f"{p} / default, idle"] = round(idle / best["default/load0"], 3)
    print(json.dumps(result, indent=2))
    (ROOT / "bench" / "results" / "busy.json").write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
