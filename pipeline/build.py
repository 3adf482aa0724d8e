"""`mechscope build`: model + corpus -> a complete store, or nothing.

The orchestrator owns batching, progress, checkpoints and writing; it holds no maths (that is
`pipeline/stats/` and `pipeline/analysis/`). Order of work:
1. validate everything a user can get wrong (output folder, corpus, model) before the long pass;
2. one streaming pass over the corpus windows, checkpointing the accumulators now and then so
   that `--resume` continues a killed build and ends with the same store;
3. finalize: the statistics' tables and the analyses' (`pipeline/stats/registry.py`,
   `pipeline/analysis/registry.py`: nothing here names a statistic or a table but the corpus
   ones), put together by `pipeline/assemble.py`; a second cheap pass over the tokenized corpus
   for the `documents` and `tokens` tables and the token requests of the other tables; derived
   columns; the manifest — committed atomically by `store.StoreWriter` (a killed build leaves
   no store, never a half one).
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from pipeline import assemble
from pipeline import corpus as corpora
from pipeline.analysis import registry as analysis_registry
from pipeline.corpus_tables import write_corpus_tables
from pipeline.harvest import Harvest
from pipeline.progress import Progress, Steps
from pipeline.stats import StatsConfig
from pipeline.stats import bins as hist_bins
from pipeline.stats.deferred import TokenIdsAt, TokenWindows
from pipeline.stats.derived import DERIVED
from pipeline.windows import iter_windows
from store import StoreWriter

CHECKPOINT = "checkpoint/state.pt"


@dataclass(frozen=True)
class BuildParams:
    model: str
    corpus: str
    max_tokens: int | None
    stats: StatsConfig = field(default_factory=StatsConfig)
    batch_size: int = 8
    dtype: str = "float32"

    def identity(self) -> dict:
        """What must match for a checkpoint to be resumed (batch size and device may change)."""
        d = asdict(self)
        d.pop("batch_size")
        return d


def build(params: BuildParams, out: str | Path, *, device: str = "cpu", resume: bool = False,
          checkpoint_every_s: float = 120.0, progress: bool = True, stop_after_windows: int | None = None,
          model=None) -> Path:
    """Build a store at `out`. `model`: an already loaded `params.model` to use (a worker that
    builds several stores; the tests); it must not be changed while the build runs.
    `stop_after_windows` (tests) writes a checkpoint and raises `BuildInterrupted` after that
    many windows, as if the process had been killed."""
    writer = StoreWriter(out, resume=resume)
    try:
        corpora.check_corpus(params.corpus)
        model = _model(params, device, model)
    except Exception:  # any failure before the pass: remove the .partial folder we made, then re-raise
        if not resume:
            writer.abort()
        raise
    started = time.perf_counter()
    harvest = Harvest(model, params.stats)
    start_window, tokens_done, elapsed_before = _restore(writer.work_dir, params, harvest) if resume else (0, 0, 0.0)

    n_windows = None if params.max_tokens is None else params.max_tokens // params.stats.seq_len
    bar = Progress(total_tokens=None if n_windows is None else n_windows * params.stats.seq_len,
                   done_tokens=tokens_done, enabled=progress)
    last_save = time.monotonic()
    next_window = start_window
    try:
        for batch in harvest_windows(harvest, params, start_window=start_window):
            next_window = int(batch.seq_ids[-1]) + 1
            tokens_done += batch.token_ids.size
            bar.update(batch.token_ids.size)
            elapsed = elapsed_before + time.perf_counter() - started
            if stop_after_windows is not None and next_window >= stop_after_windows:
                _save(writer.work_dir, params, harvest, next_window, tokens_done, elapsed)
                raise BuildInterrupted(next_window)
            if time.monotonic() - last_save > checkpoint_every_s:
                _save(writer.work_dir, params, harvest, next_window, tokens_done, elapsed)
                last_save = time.monotonic()
    except Exception:  # e.g. a bad corpus line further in; re-raised below
        # with no checkpoint yet there is nothing to resume: remove the .partial folder
        if not resume and not (writer.work_dir / CHECKPOINT).exists():
            writer.abort()
        raise
    finally:
        bar.close()
    if next_window == 0:
        if not resume:
            writer.abort()
        raise corpora.CorpusError(
            f"corpus {params.corpus!r} has fewer than seq_len={params.stats.seq_len} tokens: nothing to build"
        )
    harvest_s = elapsed_before + time.perf_counter() - started
    return write_store(writer, params, model, harvest, next_window, {"harvest_s": harvest_s}, device, progress)


def harvest_windows(harvest: Harvest, params: BuildParams, start_window: int = 0,
                    stop_window: int | None = None):
    """Feed corpus windows [start, stop) to the harvest; yields each batch after processing it."""
    model = harvest.model
    windows = iter_windows(corpora.iter_documents(params.corpus), model.tokenizer, model.bos_token_id,
                           params.stats.seq_len, params.max_tokens, params.batch_size,
                           start_window=start_window, stop_window=stop_window)
    for batch in windows:
        harvest.process(int(batch.seq_ids[0]), batch.token_ids, batch.doc_ids < 0)
        yield batch


def write_store(writer: StoreWriter, params: BuildParams, model, harvest: Harvest, n_windows: int,
                timings: dict[str, float], device: str, progress: bool = False, corpus_parts=None,
                extra_build: dict | None = None) -> Path:
    """Finalize a harvest (possibly merged from shards) and the model's analyses into a committed
    store: whatever tables they fill, plus the corpus tables (from the shards' `corpus_parts`
    when given, else by re-reading the corpus)."""
    steps = Steps(total=len(analysis_registry.ANALYSES) + 3, enabled=progress)
    declared = {**harvest.tables(), **{tb.name: tb for a in analysis_registry.ANALYSES for tb in a.tables}}
    with steps("statistics: finalize"):
        parts = harvest.finalize()
    extra_manifest = {}
    for analysis, out in analysis_registry.run_analyses(model, params.stats, steps):
        if analysis_registry.MANIFEST_KEY in out:
            extra_manifest[analysis.name] = out.pop(analysis_registry.MANIFEST_KEY)
        parts.append(out)
    combined = assemble.combine(parts, declared)
    tables = {name: assemble.sort_rows(cols, declared[name]) for name, cols in combined.items()}
    timings["statistics_s"] = steps.seconds["statistics: finalize"]
    timings["analyses_s"] = sum(v for k, v in steps.seconds.items() if k.startswith("analysis: "))

    t = time.perf_counter()
    windows = [(name, c, v) for name, cols in tables.items() for c, v in cols.items() if isinstance(v, TokenWindows)]
    ids_at = [(name, c, v) for name, cols in tables.items() for c, v in cols.items() if isinstance(v, TokenIdsAt)]
    with steps("corpus tables and example tokens"):
        corpus_facts, texts, ids = write_corpus_tables(writer, params, model, n_windows=n_windows,
                                                       windows=[v for *_, v in windows],
                                                       ids_at=[v for *_, v in ids_at], parts=corpus_parts)
    for (name, c, _), resolved in zip([*windows, *ids_at], [*texts, *ids], strict=True):
        tables[name][c] = resolved
    for derive in DERIVED:
        derive(tables)
    timings["corpus_tables_s"] = time.perf_counter() - t

    with steps("writing tables"):
        for name, cols in tables.items():
            writer.write_table(declared[name], assemble.to_arrow(cols, declared[name]))
    timings["write_s"] = steps.seconds["writing tables"]
    n_tokens = n_windows * params.stats.seq_len
    manifest = {
        "model": model.describe(),
        "corpus": {**corpora.describe_corpus(params.corpus), **corpus_facts},
        "build": {**asdict(params), "device": device, "n_windows": n_windows, "n_tokens": n_tokens,
                  **(extra_build or {})},
        "records_per_neuron": params.stats.records,
        "histogram": {**hist_bins.describe(), "sample_fraction": 1 / 2**params.stats.hist_sample_shift},
        **extra_manifest,
        "timings": {k: round(v, 3) for k, v in timings.items()},
        "analysis_timings": {k.removeprefix("analysis: "): round(v, 3) for k, v in steps.seconds.items()
                             if k.startswith("analysis: ")},
        "tokens_per_s": round(n_tokens / max(timings.get("harvest_s", 0.0), 1e-9), 1),
    }
    return writer.commit(manifest)


def _model(params: BuildParams, device: str, model=None):
    """The loaded model for a build (`model` if given, checked), or ModelError in one line."""
    from pipeline.models import ModelError, load_model

    _check_device(device)
    if model is None:
        model = load_model(params.model, device=device, dtype=getattr(torch, params.dtype))
    elif (model.name, model.dtype) != (params.model, getattr(torch, params.dtype)):
        raise ValueError(f"the model given is {model.name} in {model.dtype}, the build asks for "
                         f"{params.model} in {params.dtype}")
    n_ctx = model.facts.get("n_ctx")
    if n_ctx and params.stats.seq_len > n_ctx:
        raise ModelError(f"seq_len {params.stats.seq_len} is longer than the context of model "
                         f"{params.model!r} ({n_ctx} tokens)")
    return model


def _check_device(device: str) -> None:
    """ModelError (one line) for a device torch does not know or this machine does not have."""
    from pipeline.models import ModelError

    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError, TypeError):
        raise ModelError(f"unknown device {device!r} (use cpu, cuda, cuda:1, mps)") from None
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        raise ModelError(f"device {device!r} is not available here "
                         f"({torch.cuda.device_count()} CUDA devices); use --device cpu")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ModelError(f"device {device!r} is not available here; use --device cpu")


class BuildInterrupted(Exception):
    def __init__(self, next_window: int):
        super().__init__(f"build stopped after window {next_window}; continue with --resume")
        self.next_window = next_window


def _save(work_dir: Path, params: BuildParams, harvest: Harvest, next_window: int,
          tokens_done: int, elapsed: float) -> None:
    """Write the checkpoint atomically: a kill mid-write leaves the previous one intact. It records
    the corpus's content fingerprint, so that a resume over rewritten files is refused."""
    path = Path(work_dir) / CHECKPOINT
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({"identity": params.identity(), "corpus_fingerprint": corpus_fingerprint(params.corpus),
                "next_window": next_window, "tokens_done": tokens_done,
                "elapsed_s": elapsed, "harvest": harvest.state_dict()}, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _restore(work_dir: Path, params: BuildParams, harvest: Harvest) -> tuple[int, int, float]:
    """(next window, tokens done, seconds spent) from the checkpoint; StoreError (one line, with
    the way out) when it is damaged, from other parameters, or from a corpus whose content changed."""
    from store import StoreError
    from store.errors import one_line

    path = Path(work_dir) / CHECKPOINT
    if not path.exists():
        return 0, 0, 0.0  # killed before the first checkpoint: start over inside the same folder
    way_out = f"delete '{work_dir}' to start over"
    try:
        state = torch.load(path, map_location=harvest.model.device, weights_only=True)
        if not isinstance(state, dict) or not {"identity", "next_window", "harvest"} <= state.keys():
            raise ValueError("it is not a mechscope checkpoint")
    except Exception as e:  # truncated, garbage, another file: torch/pickle/zip say it many ways
        raise StoreError(f"cannot resume: the checkpoint '{path}' is damaged ({one_line(e)}); {way_out}") from None
    if state["identity"] != params.identity():
        raise StoreError(
            f"cannot resume: the unfinished build in '{work_dir}' used different parameters "
            f"({_diff(state['identity'], params.identity())}); {way_out}"
        )
    then, now = state.get("corpus_fingerprint"), corpus_fingerprint(params.corpus)
    if then is not None and then != now:
        raise StoreError(f"cannot resume: the corpus {params.corpus!r} changed since the unfinished build in "
                         f"'{work_dir}' started (its content differs); {way_out}")
    try:
        harvest.load_state_dict(state["harvest"])
    except (ValueError, KeyError, RuntimeError, TypeError) as e:
        raise StoreError(f"cannot resume: the checkpoint '{path}' does not fit this build ({one_line(e)}); "
                         f"{way_out}") from None
    return int(state["next_window"]), int(state.get("tokens_done", 0)), float(state.get("elapsed_s", 0.0))


_fingerprints: dict[tuple, str] = {}


def corpus_fingerprint(spec: str) -> str:
    """sha256 over the corpus's content: every file's relative name and bytes for a path corpus
    (memoised by the files' sizes and mtimes: a build saves many checkpoints), the packaged
    file's sha256 for wiki-vital, the dataset name for hf: (no revision offline)."""
    import hashlib
    import json

    facts = corpora.describe_corpus(spec)
    if facts.get("kind") not in ("file", "folder"):
        return hashlib.sha256(json.dumps(facts, sort_keys=True, default=str).encode()).hexdigest()
    files = list(corpora._path_files(spec))
    key = (spec, tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p, _ in files))
    if key not in _fingerprints:
        h = hashlib.sha256()
        for p, rel in files:
            h.update(f"{rel}\0{p.stat().st_size}\0".encode())
            with open(p, "rb") as f:
                while block := f.read(1 << 20):
                    h.update(block)
        _fingerprints[key] = h.hexdigest()
    return _fingerprints[key]


def _diff(old: dict, new: dict) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    return ", ".join(f"{k}: {old.get(k)!r} then, {new.get(k)!r} now" for k in keys)
