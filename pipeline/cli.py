"""The `mechscope` command line: build, merge, info, verify, query, serve, demo.

Imports are lazy: `info`, `verify` and `query` never load torch. Every mistake a user can make
ends in one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import sys
import warnings
from pathlib import Path

DEMO_MODEL = "smollm2-135m"
DEMO_CORPUS = "wiki-vital"
DEMO_TOKENS = 131_072  # 1,024 windows: ~3 minutes on 2 cores, model load and finalize included (README)
EXIT_USER = 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, not usage + line
        self.exit(EXIT_USER, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _count(text: str) -> int:
    """A positive token count: 5000, 5_000, 64k, 1.5M."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?|\d{1,3}(?:_\d{3})+)\s*([kKmMgG]?)\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"{text!r} is not a token count (e.g. 50000, 64k, 1M)")
    scale = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9}[m.group(2).lower()]
    value = int(float(m.group(1).replace("_", "")) * scale)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a positive number of tokens")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be positive")
    return value


def _seconds(text: str) -> float:
    """A finite number of seconds >= 0 (0: after every batch; nan and inf would never checkpoint)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number of seconds, 0 or more")
    return value


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 1 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (1-65535)")
    return value


def _host(text: str) -> str:
    """An IP address, or a host name this machine resolves (what the server can bind to)."""
    import ipaddress
    import socket

    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    labels = text.rstrip(".").split(".")
    if (not text or len(text) > 253 or all(label.isdigit() for label in labels)
            or not all(re.fullmatch(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?", label) for label in labels)):
        raise argparse.ArgumentTypeError(f"{text!r} is not an IP address or a host name")
    try:
        socket.getaddrinfo(text, None)
    except (OSError, UnicodeError):
        raise argparse.ArgumentTypeError(f"host {text!r} does not resolve on this machine") from None
    return text


def _folder(text: str) -> str:
    """A non-empty path (an empty one would mean the current folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("the folder is empty: give a path")
    return text


def _shard(text: str) -> tuple[int, int]:
    """I/N with 1 <= I <= N: (I - 1, N)."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
        raise argparse.ArgumentTypeError(f"{text!r} is not a shard I/N with 1 <= I <= N (e.g. 2/4)")
    return int(m.group(1)) - 1, int(m.group(2))


def _seq_len(text: str) -> int:
    value = _positive(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"{text!r} is too short: a window holds BOS and at least one token")
    return value


class _DefaultsFormatter(argparse.HelpFormatter):
    """Help that ends each option with its default, when it has a meaningful one."""

    def _get_help_string(self, action):
        text = action.help or ""
        if ("%(default)" in text or not action.option_strings or action.required
                or action.default in (None, False, argparse.SUPPRESS)):
            return text
        return f"{text} (default: %(default)s)"


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="mechscope", description="Neuron catalogues for GPT-2-style models, offline.")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    fmt = _DefaultsFormatter  # every option's help ends with its default
    b = sub.add_parser("build", help="run a model over a corpus and write a store", formatter_class=fmt,
                       description="Run a model over a corpus once and write a store: per-neuron and per-head "
                       "statistics, examples and weight analyses as Parquet tables with a manifest. "
                       "A killed build leaves no store; --resume continues it to the same store.")
    b.add_argument("--model", required=True, help="smollm2-135m, gpt2-random, tiny-gpt2, a HF id or folder")
    b.add_argument("--corpus", required=True, help="wiki-vital, a .txt/.jsonl/.parquet file or folder, hf:NAME")
    b.add_argument("--max-tokens", type=_count, default=None,
                   help="tokens to read (windows x seq-len); default: the whole corpus")
    b.add_argument("--out", required=True, type=_folder, help="new (or empty) folder for the store")
    b.add_argument("--seq-len", type=_seq_len, default=128, help="tokens per window, BOS included")
    b.add_argument("--batch-size", type=_positive, default=8,
                   help="windows per forward pass (memory and speed only: the store does not depend on it)")
    b.add_argument("--top-k", type=_positive, default=20,
                   help="top examples per neuron and per head (neurons: at most one per window)")
    b.add_argument("--records", type=_positive, default=256, help="activation records per neuron")
    b.add_argument("--hist-sample", type=int, choices=(1, 2, 4, 8, 16), default=8,
                   help="histograms and band samples see 1 in N positions (by position hash)")
    b.add_argument("--lens-sample", type=int, choices=tuple(2**i for i in range(13)), default=256, metavar="N",
                   help="the logit lens decodes 1 in N spans of 16 positions (by position hash; a power of two "
                        "up to 4096; 1 decodes every position, at several forward passes' cost)")
    b.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    b.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32",
                   help="the model's weights and activations")
    b.add_argument("--resume", action="store_true", help="continue a killed build from its checkpoint")
    b.add_argument("--checkpoint-every", type=_seconds, default=120.0, metavar="SECONDS",
                   help="how often to save a checkpoint that --resume continues from")
    b.add_argument("--no-progress", action="store_true", help="no progress lines on stderr")
    b.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run the build as shards on Ray: on a local cluster started for it (no ADDRESS), or on "
                        "the cluster at ADDRESS (ray://HOST:10001, auto); merged into --out")
    b.add_argument("--shards", type=_positive, default=None,
                   help="with --ray: how many shards (default: one per worker slot of the cluster)")
    b.add_argument("--worker-threads", type=_positive, default=1,
                   help="with --ray on CPUs: torch threads (and CPUs reserved) per Ray worker")
    b.add_argument("--shard", type=_shard, default=None, metavar="I/N",
                   help="harvest only the I-th of N window ranges (1-based) into --out; `mechscope merge` "
                        "puts the N shards together into the store")

    m = sub.add_parser("merge", help="merge the shards of a build into its store", formatter_class=fmt,
                       description="Merge the shards written by `mechscope build --shard I/N` (every one of "
                       "them, of one build) into the store a one-pass build writes.")
    m.add_argument("shards", nargs="+", type=_folder, help="the shard folders")
    m.add_argument("--out", required=True, type=_folder, help="new (or empty) folder for the store")
    m.add_argument("--device", default="cpu", help="where the model runs for the weight analyses")
    m.add_argument("--no-progress", action="store_true", help="no progress lines on stderr")

    for name, text, more in (
        ("info", "summarise a store", "Print what a store holds: model, corpus, build, timings, rows per table, "
         "and the tables it lacks with the way to get them."),
        ("verify", "check a store's checksums and schema", "Check a store without recomputing it: every table "
         "listed with its recorded size, sha256 and row count, its columns as the schema says, rows in sort-key "
         "order. Exit status 0 when it holds, 1 with the problems listed."),
    ):
        sub.add_parser(name, help=text, description=more).add_argument("store", type=_folder,
                                                                       help="the store folder")

    q = sub.add_parser("query", help="run one read-only SQL query over a store", formatter_class=fmt,
                       description="Run one read-only DuckDB SQL statement over a store's tables (one view per "
                       "table: neurons, neuron_examples, activations, tokens, heads, ...; the README lists "
                       "every column). Writes, file access and extensions are refused.")
    q.add_argument("store", type=_folder, help="the store folder")
    q.add_argument("sql", help="one SELECT (or WITH ... SELECT) statement")
    q.add_argument("--format", choices=("table", "csv", "json"), default="table", help="how rows are printed")
    q.add_argument("--max-rows", type=_positive, default=10_000, help="rows printed at most")

    s = sub.add_parser("serve", help="open the dashboard on a store or a folder of stores", formatter_class=fmt,
                       description="Serve the Streamlit dashboard on a store (or on a folder of stores, with a "
                       "picker) and print its URL.")
    s.add_argument("store", type=_folder, help="a store folder, or a folder of store folders")
    s.add_argument("--port", type=_port, default=8501, help="TCP port to serve on")
    s.add_argument("--host", type=_host, default="127.0.0.1",
                   help="address to listen on (0.0.0.0: every interface, reachable from other machines)")

    d = sub.add_parser("demo", help=f"build {DEMO_MODEL} x {DEMO_CORPUS} if missing, then serve it",
                       formatter_class=fmt, description=f"Build the embedded demo store ({DEMO_MODEL} over "
                       f"{DEMO_CORPUS}, offline) unless it exists, then serve the dashboard on it.")
    d.add_argument("--dir", type=_folder, default=os.environ.get("MECHSCOPE_DEMO_DIR", "stores/demo"),
                   help="the demo store's folder ($MECHSCOPE_DEMO_DIR)")
    d.add_argument("--max-tokens", type=_count, default=DEMO_TOKENS, help="tokens the demo build reads")
    d.add_argument("--port", type=_port, default=8501, help="TCP port to serve on")
    d.add_argument("--host", type=_host, default="127.0.0.1", help="address to listen on")
    d.add_argument("--no-serve", action="store_true", help="build only")
    return p


OMP_SPINCOUNT = "10000"  # see _yielding_threads


def _yielding_threads() -> None:
    """Let torch's OpenMP threads sleep soon when they wait. libgomp's threads spin about 300,000
    rounds at every barrier before they sleep; on a machine with other work, a thread that spins
    while its partner is descheduled burns the build's share of the cores: a gpt2-random harvest
    beside 4 busy processes on 2 cores ran at about half its fair share, and at 0.8 of it with
    10,000 rounds, at the same idle speed (`python bench/busy.py`; README, Performance). Must
    run before torch is imported; a user's own OMP_WAIT_POLICY or GOMP_SPINCOUNT wins. Child
    processes (Ray workers, the dashboard) inherit it."""
    if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
        os.environ["GOMP_SPINCOUNT"] = OMP_SPINCOUNT


def main(argv: list[str] | None = None) -> int:
    _yielding_threads()
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command == "build" and args.max_tokens is not None and args.max_tokens < args.seq_len:
        parser.error(f"--max-tokens {args.max_tokens} is less than one window of --seq-len {args.seq_len}")
    if args.command == "build" and args.shard is not None and args.resume:
        parser.error("--resume continues a one-process build; a shard that stopped is run again whole")
    if args.command == "build" and args.ray is not None and (args.shard is not None or args.resume):
        parser.error("--ray runs every shard and merges them: it takes neither --shard nor --resume")
    if args.command == "build" and args.ray is None and args.shards is not None:
        parser.error("--shards goes with --ray (one shard at a time: --shard I/N)")
    warnings.showwarning = _one_line_warning
    try:  # Ctrl-C while torch is still being imported is an interruption too, not a traceback
        return _run(args)
    except KeyboardInterrupt:
        print(f"mechscope {args.command}: interrupted{_resume_hint(args)}", file=sys.stderr)
        return 130


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Our own warnings (they start with 'mechscope:') as one line; others as Python prints them."""
    text = str(message)
    if text.startswith("mechscope:"):
        print(text, file=sys.stderr)
    else:
        print(warnings.formatwarning(message, category, filename, lineno, line), end="", file=sys.stderr)


def _run(args) -> int:
    from store import StoreError

    user_errors: tuple[type[BaseException], ...] = (StoreError,)
    if args.command in ("build", "demo", "merge"):
        from pipeline.build import BuildInterrupted
        from pipeline.corpus import CorpusError
        from pipeline.models import ModelError
        from pipeline.shards import ShardError

        user_errors += (CorpusError, ModelError, BuildInterrupted, ShardError)
    try:
        return _COMMANDS[args.command](args)
    except user_errors as e:
        print(f"mechscope {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USER


def _resume_hint(args) -> str:
    """How to continue an interrupted build, when it left an unfinished folder to continue from."""
    if args.command not in ("build", "demo"):
        return ""
    out = Path(args.out if args.command == "build" else args.dir).expanduser().absolute()
    if not out.with_name(out.name + ".partial").is_dir():
        return ""
    return "; continue with --resume" if args.command == "build" else "; run `mechscope demo` again to continue"


def _build(args) -> int:
    from pipeline.build import BuildParams, build
    from pipeline.stats import StatsConfig

    stats = StatsConfig(seq_len=args.seq_len, top_k=args.top_k, records=max(args.records, args.top_k),
                        hist_sample_shift=args.hist_sample.bit_length() - 1,
                        lens_sample_shift=args.lens_sample.bit_length() - 1)
    params = BuildParams(model=args.model, corpus=args.corpus, max_tokens=args.max_tokens, stats=stats,
                         batch_size=args.batch_size, dtype=args.dtype)
    if args.shard is not None:
        return _build_shard(params, args)
    if args.ray is not None:
        from pipeline.ray_build import ray_build

        out = ray_build(params, args.out, address=args.ray or None, shards=args.shards, device=args.device,
                        worker_threads=args.worker_threads, progress=not args.no_progress)
        print(_summary(out))
        return 0
    out = build(params, args.out, device=args.device, resume=args.resume, progress=not args.no_progress,
                checkpoint_every_s=args.checkpoint_every)
    print(_summary(out))
    return 0


def _build_shard(params, args) -> int:
    from pipeline import corpus as corpora
    from pipeline.build import _model, corpus_fingerprint
    from pipeline.progress import Progress
    from pipeline.shards import run_shard, save_shard

    index, count = args.shard
    corpora.check_corpus(params.corpus)
    model = _model(params, args.device)
    bar = Progress(total_tokens=None, done_tokens=0, enabled=not args.no_progress)
    try:
        shard = run_shard(params, index, count, model, fingerprint=corpus_fingerprint(params.corpus),
                          on_batch=bar.update)
    finally:
        bar.close()
    out = save_shard(shard, args.out)
    print(f"{shard.name()}: {shard.stop - shard.start} windows in {shard.elapsed_s:.1f} s -> {out}; "
          f"merge all {count} with `mechscope merge SHARD... --out STORE`")
    return 0


def _merge(args) -> int:
    from pipeline.shards import load_shard, merge_shards

    shards = [load_shard(path) for path in args.shards]
    print(_summary(merge_shards(shards, args.out, device=args.device, progress=not args.no_progress)))
    return 0


def _summary(path) -> str:
    from store import open_store

    store = open_store(path)
    m = store.manifest
    model, corpus, build = m.get("model", {}), m.get("corpus", {}), m.get("build", {})
    harvest_s = m.get("timings", {}).get("harvest_s", 0.0)
    lines = [
        f"store      {store.path}",
        f"model      {model.get('name')}  ({model.get('n_layers')} layers x {model.get('d_mlp')} neurons)",
        f"corpus     {corpus.get('spec')}  ({build.get('n_tokens', 0):,} tokens, "
        f"{_thousands(corpus.get('n_documents', '?'))} documents)",
        f"built      {m.get('created_at', '?')}  harvest {harvest_s:.1f}s, {m.get('tokens_per_s', 0):,.0f} tok/s",
        "phases     " + _phases(m.get("timings", {}), m.get("analysis_timings", {})),
        "tables     " + ", ".join(f"{t} {v['rows']:,}" for t, v in m.get("tables", {}).items()),
    ]
    lacking = _lacking(store)
    if lacking:
        lines.append(f"lacks      {lacking}")
    return "\n".join(lines)


def _thousands(value) -> str:
    return f"{value:,}" if isinstance(value, int) else str(value)


_PHASES = {"ray_s": "Ray shards", "harvest_s": "harvest", "statistics_s": "statistics",
           "analyses_s": "weight analyses", "corpus_tables_s": "corpus tables", "write_s": "writing"}


def _phases(timings: dict, analyses: dict | None = None) -> str:
    """The build's phases and their seconds, in the order they ran; the analyses one by one."""
    parts = []
    for k, v in timings.items():
        if not isinstance(v, int | float):
            continue
        part = f"{_PHASES.get(k, k.removesuffix('_s'))} {v:,.1f}s"
        if k == "analyses_s" and analyses:
            part += " (" + ", ".join(f"{name} {s:,.1f}s" for name, s in analyses.items()) + ")"
        parts.append(part)
    return " · ".join(parts) or "not recorded"


def _lacking(store) -> str:
    """The schema's tables this store does not have (or has in a version this code cannot read),
    grouped by what fills them, with the way to get them."""
    from store.schema import FAMILIES, TABLES

    groups: dict[str, list[str]] = {}
    for t in TABLES:
        if t.built and not store.has(t.name):
            groups.setdefault(FAMILIES.get(t.family, t.family), []).append(t.name)
    if not groups:
        return ""
    what = "; ".join(f"{family} ({', '.join(names)})" for family, names in groups.items())
    return f"{what}: rebuild with `mechscope build` to get them"


def _info(args) -> int:
    print(_summary(args.store))
    return 0


def _verify(args) -> int:
    from store import verify_store
    from store.manifest import MANIFEST_NAME, read_manifest

    path = Path(args.store).expanduser().absolute()
    if not (path / MANIFEST_NAME).is_file():
        read_manifest(path)  # not a store at all (missing, a file, no manifest, unfinished): one-line StoreError
    problems = verify_store(path)
    for p in problems:
        print(f"FAIL  {p}")
    if problems:
        return 1
    print(f"OK  {args.store}: checksums, row counts, schema and sort order match the manifest")
    return 0


def _query(args) -> int:
    from store import open_store
    from store.format import format_result
    from store.sqlguard import run_user_query

    result = run_user_query(open_store(args.store), args.sql, max_rows=args.max_rows)
    sys.stdout.write(format_result(result.table, args.format))
    if result.truncated:
        print(f"(first {args.max_rows:,} rows shown)", file=sys.stderr)
    return 0


def _serve(args) -> int:
    from dashboard.serve import serve

    return serve(Path(args.store), host=args.host, port=args.port)


def _demo(args) -> int:
    from store import StoreError, open_store
    from store.manifest import MANIFEST_NAME

    path = Path(args.dir)
    try:
        open_store(path)
        print(f"demo store already built: {path}")
    except StoreError:
        if (path / MANIFEST_NAME).is_file():
            raise  # a store this mechscope cannot read (e.g. an older schema): say so, build nothing
        from pipeline.build import BuildParams, build

        resume = Path(f"{path}.partial").exists()
        params = BuildParams(model=DEMO_MODEL, corpus=DEMO_CORPUS, max_tokens=args.max_tokens)
        build(params, path, resume=resume)
        print(_summary(path))
    if args.no_serve:
        return 0
    from dashboard.serve import serve

    return serve(path, host=args.host, port=args.port)


_COMMANDS = {
    "build": _build, "merge": _merge, "info": _info, "verify": _verify, "query": _query, "serve": _serve, "demo": _demo,
}


if __name__ == "__main__":
    sys.exit(main())
