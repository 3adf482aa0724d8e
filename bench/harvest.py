"""Harvest throughput and memory, against a bare forward and a naive baseline.

    python bench/harvest.py [--model gpt2-random] [--batches 6] [--batch-size 8] [--dtype float32] [--device cuda]

Runs, interleaved in one process (in a fresh random order for each batch) so that machine noise
hits every variant alike:
- forward (blocks only): the HF model's transformer stack, no unembedding;
- forward (with unembedding): the bridge's full forward to logits;
- bridge forward to the last `mlp.hook_post`: what the harvest runs, without its statistics
  (so harvest / this = the cost of the statistics alone);
- harvest: every statistic of the registry (neurons from `mlp.hook_post`, heads from
  `attn.hook_pattern`, the logit lens from the residual stream and `hook_z`), as a build runs it;
- harvest without the logit lens, and with the lens's hooks but no position sampled: the lens
  decodes whole spans in a few batches only, so its cost is measured in two parts, the hooks
  (these two variants) and the decoding (seconds per position on one fully sampled window, times
  the default share of positions); the means over the timed batches are printed too;
- harvest, neuron statistics only (moments, top-k with context, records, histogram, band
  samples), with the native CPU kernels (the default on a CPU) and with torch ops only (what
  runs on other devices, or without a C compiler); harvest / this = the cost of the head
  statistics;
- naive: `run_with_cache` of every hook, then per layer a full sort of each neuron's
  activations and a merge with the running top-k (what a first script would do).
Then, in subprocesses, peak RSS of the harvest over 1x and 4x the corpus, and the store size
per million tokens from two real builds. Prints a table; also writes bench/results/harvest.json.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline import hooks  # noqa: E402
from pipeline.harvest import Harvest, run_through  # noqa: E402
from pipeline.models import load_model  # noqa: E402
from pipeline.stats import StatsConfig, native, registry  # noqa: E402


def _batches(model, n: int, batch_size: int, seq_len: int):
    """Batches of real tokenized text (wiki-vital), packed as a build packs them."""
    from pipeline.corpus import iter_documents
    from pipeline.windows import iter_windows

    return list(iter_windows(iter_documents("wiki-vital"), model.tokenizer, model.bos_token_id, seq_len,
                             n * batch_size * seq_len, batch_size))


class Naive:
    """run_with_cache + per-batch full sort per neuron, merged with a running top-k."""

    def __init__(self, model, k: int):
        self.model, self.k = model, k
        self.vals = [None] * model.n_layers
        self.names = [f"blocks.{i}.mlp.hook_post" for i in range(model.n_layers)]

    @torch.no_grad()
    def process(self, tokens: torch.Tensor) -> None:
        _, cache = self.model.bridge.run_with_cache(tokens)
        for layer, name in enumerate(self.names):
            acts = cache[name].reshape(-1, self.model.d_mlp).float()
            vals = torch.sort(acts, dim=0, descending=True).values[: self.k]
            if self.vals[layer] is not None:
                vals = torch.sort(torch.cat([self.vals[layer], vals]), dim=0, descending=True).values[: self.k]
            self.vals[layer] = vals


def throughput(args) -> dict:
    model = load_model(args.model, device=args.device, dtype=getattr(torch, args.dtype))
    config = StatsConfig(seq_len=args.seq_len, hist_sample_shift=args.hist_shift)
    batches = _batches(model, args.warmup + args.batches, args.batch_size, args.seq_len)
    hf = model.bridge.original_model
    blocks = getattr(hf, "transformer", None) or hf.model
    harvest = Harvest(model, config)
    no_lens = Harvest(model, config, statistics=(*registry.NEURON_STATISTICS, *registry.HEAD_STATISTICS))
    lens_hooks = Harvest(model, replace(config, lens_sample_shift=40))  # the lens's hooks, no position sampled
    neurons_only = Harvest(model, config, statistics=registry.NEURON_STATISTICS)
    harvest_torch = Harvest(model, config, use_native=False, statistics=registry.NEURON_STATISTICS)
    naive = Naive(model, config.top_k)
    last_mlp = hooks.point("mlp_post", model.n_layers - 1)
    tok = lambda b: torch.from_numpy(b.token_ids).long().to(model.device)  # noqa: E731
    variants = {
        "forward (blocks only)": lambda b: blocks(tok(b)),
        "bridge forward to last mlp.hook_post": lambda b: run_through(model, tok(b), [], last_mlp),
        "forward (with unembedding)": lambda b: model.bridge(tok(b)),
        "harvest (mechscope)": lambda b: harvest.process(int(b.seq_ids[0]), b.token_ids, b.doc_ids < 0),
        "harvest without the logit lens": lambda b: no_lens.process(int(b.seq_ids[0]), b.token_ids, b.doc_ids < 0),
        "harvest, lens hooks but no position sampled": lambda b: lens_hooks.process(int(b.seq_ids[0]), b.token_ids,
                                                                                     b.doc_ids < 0),
        "harvest, neuron statistics only": lambda b: neurons_only.process(int(b.seq_ids[0]), b.token_ids,
                                                                          b.doc_ids < 0),
        "harvest, neurons, torch ops only": lambda b: harvest_torch.process(int(b.seq_ids[0]), b.token_ids,
                                                                            b.doc_ids < 0),
        "naive (run_with_cache + sort)": lambda b: naive.process(tok(b)),
    }
    times: dict[str, list[float]] = {k: [] for k in variants}
    with torch.no_grad():
        # Warm-up: the harvest's first batches are dearer (every position is a top-k candidate
        # until the lists fill); a real build of 1M tokens spends ~1% of its batches there.
        # Every variant that keeps statistics is warmed up alike: one left cold would spend its
        # first timed batches filling its lists and look slower than it is.
        stateful = [name for name in variants if name.startswith(("harvest", "naive"))]
        for b in batches[: args.warmup]:
            for name in stateful:
                variants[name](b)
        order = random.Random(0)
        for b in batches[args.warmup :]:
            # a fresh order per batch: a variant run right after an allocation-heavy one is slowed
            # by it (caches, allocator), and a fixed order would charge that to the same variant
            for name in order.sample(list(variants), len(variants)):
                _sync(model)
                t = time.perf_counter()
                variants[name](b)
                _sync(model)
                times[name].append(time.perf_counter() - t)
    n_tok = args.batch_size * args.seq_len
    rates = {name: n_tok / statistics.median(ts) for name, ts in times.items()}
    # The lens decodes whole spans of a few batches only: its cost shows in the mean, not the median.
    rates["harvest (mechscope), mean over batches"] = n_tok / statistics.mean(times["harvest (mechscope)"])
    rates["harvest without the logit lens, mean over batches"] = n_tok / statistics.mean(
        times["harvest without the logit lens"])
    return rates


def _sync(model) -> None:
    """Wait for the device's queued work, so that the clock times it (a no-op on the CPU)."""
    if torch.device(model.device).type == "cuda":
        torch.cuda.synchronize(model.device)


def lens_decode_s(args, model, config) -> float:
    """Seconds per decoded position: one window with every position sampled, against the same
    window with none (the difference is the decoding; the hooks are in both)."""
    (b,) = _batches(model, 1, 1, args.seq_len)
    every = Harvest(model, replace(config, lens_sample_shift=0), statistics=registry.LENS_STATISTICS)
    none = Harvest(model, replace(config, lens_sample_shift=40), statistics=registry.LENS_STATISTICS)
    with torch.no_grad():
        _sync(model)
        t = time.perf_counter()
        none.process(int(b.seq_ids[0]), b.token_ids, b.doc_ids < 0)
        _sync(model)
        t_none = time.perf_counter() - t
        t = time.perf_counter()
        every.process(int(b.seq_ids[0]), b.token_ids, b.doc_ids < 0)
        _sync(model)
        t_every = time.perf_counter() - t
    n = int((b.doc_ids >= 0).sum())
    return (t_every - t_none) / n


def peak_rss(args, n_batches: int) -> float:
    """Peak RSS (MiB) of a child process harvesting n_batches of real text."""
    cmd = [sys.executable, __file__, "--model", args.model, "--batch-size", str(args.batch_size),
           "--seq-len", str(args.seq_len), "--hist-shift", str(args.hist_shift), "--child-harvest", str(n_batches)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def _child_harvest(args) -> None:
    model = load_model(args.model)
    harvest = Harvest(model, StatsConfig(seq_len=args.seq_len, hist_sample_shift=args.hist_shift))
    for b in _batches(model, args.child_harvest, args.batch_size, args.seq_len):
        harvest.process(int(b.seq_ids[0]), b.token_ids, b.doc_ids < 0)
    print(_peak_rss_mib())


def _peak_rss_mib() -> float:
    """This process's peak RSS. Not ru_maxrss: Linux carries that across fork and exec, so a
    child started by a big parent would report the parent's size. VmHWM starts afresh at exec."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def store_size(args, n_tokens: int) -> tuple[int, float]:
    """(bytes, harvest tok/s) of a real build of n_tokens."""
    from pipeline.build import BuildParams, build

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "store"
        params = BuildParams(model=args.model, corpus="wiki-vital", max_tokens=n_tokens,
                             stats=StatsConfig(seq_len=args.seq_len, hist_sample_shift=args.hist_shift))
        build(params, out, progress=False)
        manifest = json.loads((out / "manifest.json").read_text())
        size = sum(f.stat().st_size for f in out.iterdir())
    return size, manifest["tokens_per_s"]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="gpt2-random")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device", default="cpu", help="cpu or cuda (on a GPU the memory figures are skipped)")
    p.add_argument("--batches", type=int, default=12, help="timed batches, after the warm-up")
    p.add_argument("--warmup", type=int, default=16, help="harvest batches before timing starts")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--hist-shift", type=int, default=StatsConfig().hist_sample_shift)
    p.add_argument("--mem-batches", type=int, default=8)
    p.add_argument("--store-tokens", type=int, default=16384)
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--child-harvest", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child_harvest:
        return _child_harvest(args)
    torch.manual_seed(0)

    rates = throughput(args)
    base = rates["forward (blocks only)"]
    rows = [(name, f"{r:,.0f}", f"{r / base:.2f}x") for name, r in rates.items()]
    heads_cost = rates["harvest, neuron statistics only"] / rates["harvest without the logit lens"]
    rows.append(("harvest time, neurons + heads / neuron statistics only", f"{heads_cost:.3f}", ""))
    # the logit lens at the default budget: its hooks (measured) plus its decoding (seconds per
    # position, measured on one window, times the positions a token brings: 1 / 2^shift)
    model = load_model(args.model, device=args.device, dtype=getattr(torch, args.dtype))
    per_position = lens_decode_s(args, model, StatsConfig(seq_len=args.seq_len))
    t_token = 1 / rates["harvest without the logit lens"]
    hooks_cost = rates["harvest without the logit lens"] / rates["harvest, lens hooks but no position sampled"] - 1
    decode_cost = per_position / 2 ** StatsConfig().lens_sample_shift / t_token
    observed = rates["harvest without the logit lens, mean over batches"] / rates[
        "harvest (mechscope), mean over batches"] - 1
    rows += [("logit lens: decoding one position", f"{per_position * 1e3:,.1f} ms", ""),
             ("logit lens added: hooks (measured)", f"{hooks_cost:+.1%}", ""),
             (f"logit lens added: decoding, 1/{2 ** StatsConfig().lens_sample_shift} of positions",
              f"{decode_cost:+.1%}", ""),
             ("logit lens added in all (hooks + decoding)", f"{hooks_cost + decode_cost:+.1%}", ""),
             ("logit lens added, observed over the timed batches (means)", f"{observed:+.1%}", "")]
    results: dict = {"args": vars(args), "tokens_per_s": rates, "torch_threads": torch.get_num_threads(),
                     "harvest_time_neurons_heads_over_neurons_only": heads_cost,
                     "lens": {"decode_s_per_position": per_position, "hooks_cost": hooks_cost,
                              "decode_cost_default_budget": decode_cost, "observed_cost_means": observed},
                     "native_kernels": native.library() is not None}
    if not args.skip_memory and args.device == "cpu":  # peak RSS and store sizes: a CPU build
        m1, m4 = peak_rss(args, args.mem_batches), peak_rss(args, 4 * args.mem_batches)
        s1, _ = store_size(args, args.store_tokens)
        s4, _ = store_size(args, 4 * args.store_tokens)
        per_m = (s4 - s1) / (3 * args.store_tokens) * 1e6
        results.update(peak_rss_mib={"1x": m1, "4x": m4}, store_bytes={"1x": s1, "4x": s4},
                       store_mib_per_million_tokens_marginal=per_m / 2**20)
        mem_tokens = args.mem_batches * args.batch_size * args.seq_len
        rows += [
            (f"peak RSS, harvest of {mem_tokens:,} tokens", f"{m1:,.0f} MiB", ""),
            (f"peak RSS, harvest of {4 * mem_tokens:,} tokens", f"{m4:,.0f} MiB", f"{m4 / m1:.2f}x"),
            (f"store size, {args.store_tokens:,} tokens", f"{s1 / 2**20:,.1f} MiB", ""),
            (f"store size, {4 * args.store_tokens:,} tokens", f"{s4 / 2**20:,.1f} MiB", ""),
            ("store growth per million tokens", f"{per_m / 2**20:,.1f} MiB", ""),
        ]
    width = max(len(r[0]) for r in rows)
    print(f"\n{args.model}, {args.dtype}, {args.device}, batch {args.batch_size} x {args.seq_len}, "
          f"{torch.get_num_threads()} threads, "
          f"median of {args.batches} interleaved batches after {args.warmup} warm-up batches\n")
    print(f"{'':{width}}  {'tok/s or size':>14}  {'vs blocks-only':>14}")
    for name, value, ratio in rows:
        print(f"{name:{width}}  {value:>14}  {ratio:>14}")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "harvest.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
