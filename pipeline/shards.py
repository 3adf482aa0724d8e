"""A build in pieces: shards harvest window ranges anywhere, a merge writes the one store.

The file contract: `mechscope build ... --shard i/N --out DIR` harvests windows
[bounds[i], bounds[i+1]) of the packed corpus and writes `DIR/shard.pt`: the build's identity
and corpus fingerprint, the range, the accumulators' states, and the range's share of the corpus
tables (its windows' token and document ids, and the documents with tokens in them, with their
token counts in the range). `mechscope merge DIR... --out STORE` checks that the shards are of
one build and cover every window once, merges the states (exact: `Statistic.merge`), and writes
the store through `pipeline.build.write_store`, taking the corpus tables from the shards' parts:
nothing re-reads or re-tokenizes the corpus serially.

Boundaries fall on batch boundaries (`shard_bounds`): a model's floats depend in their last
bits on the batch's shape, so shards run exactly the batches a one-pass build runs, and the
merged store's tables equal the one-pass store's (sums of floats to rounding, as after
`--resume`). Where window `bounds[i]` begins comes from the corpus index
(`pipeline/corpus_index.py`), counted once: a shard tokenizes only its own range.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from pipeline import corpus as corpora
from pipeline.corpus_index import CorpusIndex, corpus_index
from pipeline.harvest import Harvest
from pipeline.windows import iter_windows

SHARD_FILE = "shard.pt"
KIND = "mechscope-shard/1"


class ShardError(ValueError):
    """A shard that cannot be merged (damaged, of another build, ranges missing or overlapping)."""


@dataclass
class CorpusPart:
    """A shard's share of the corpus tables: its windows in order."""

    first_window: int
    token_ids: np.ndarray  # [windows seq_len] int32, BOS in column 0
    doc_ids: np.ndarray  # [windows seq_len] int32, -1 at BOS
    documents: list[dict] = field(default_factory=list)  # documents table rows; n_tokens: in these windows


@dataclass
class Shard:
    identity: dict
    fingerprint: str
    index: int
    count: int
    start: int  # first window
    stop: int  # one past the last window
    n_windows: int  # windows of the whole build
    harvest: dict  # Harvest.state_dict(), on the CPU
    part: CorpusPart
    batch_size: int
    elapsed_s: float = 0.0

    def name(self) -> str:
        return f"shard {self.index + 1}/{self.count} (windows {self.start}-{self.stop - 1})"


def shard_bounds(n_windows: int, count: int, batch_size: int) -> list[int]:
    """count + 1 window boundaries: shard i takes about n_windows / count windows, cut at a
    multiple of batch_size (see the module docstring). A shard may be empty when there are
    fewer batches than shards."""
    if count < 1:
        raise ValueError("a build needs at least one shard")
    inner = [min(n_windows, round(i * n_windows / count / batch_size) * batch_size) for i in range(1, count)]
    return [0, *inner, n_windows]


def build_windows(params, index: CorpusIndex) -> int:
    """Windows of the whole build: the corpus's, capped by max_tokens."""
    n = index.n_windows(params.stats.seq_len)
    return n if params.max_tokens is None else min(n, params.max_tokens // params.stats.seq_len)


def run_shard(params, shard: int, count: int, model, *, fingerprint: str, index: CorpusIndex | None = None,
              on_batch: Callable[[int], None] | None = None) -> Shard:
    """Harvest shard `shard` (0-based) of `count`: its accumulator states and corpus part, in memory.
    `on_batch(tokens)` is called after every batch (progress)."""
    started = time.perf_counter()
    index = index if index is not None else corpus_index(params.corpus, model, fingerprint, params.max_tokens)
    n_windows = build_windows(params, index)
    bounds = shard_bounds(n_windows, count, params.batch_size)
    start, stop = bounds[shard], bounds[shard + 1]
    seq_len = params.stats.seq_len
    harvest = Harvest(model, params.stats)
    tokens, docs_at, documents = [], [], []

    def on_document(doc, n_tokens: int) -> None:
        documents.append({"doc_id": doc.doc_id, "source": doc.source, "n_chars": len(doc.text),
                          "n_tokens": n_tokens, "text": doc.text})

    if stop > start:
        windows = iter_windows(corpora.iter_documents(params.corpus), model.tokenizer, model.bos_token_id, seq_len,
                               params.max_tokens, params.batch_size, on_document=on_document,
                               start_window=start, stop_window=stop, resume=index.resume_at(start, seq_len))
        for batch in windows:
            harvest.process(int(batch.seq_ids[0]), batch.token_ids, batch.doc_ids < 0)
            tokens.append(batch.token_ids.astype(np.int32))
            docs_at.append(batch.doc_ids)
            if on_batch is not None:
                on_batch(batch.token_ids.size)
    empty = np.zeros((0, seq_len), dtype=np.int32)
    part = CorpusPart(start, np.concatenate(tokens) if tokens else empty, np.concatenate(docs_at) if docs_at else empty,
                      documents)
    if len(part.token_ids) != stop - start:
        raise corpora.CorpusError(f"the corpus {params.corpus!r} gave {len(part.token_ids)} windows for "
                                  f"windows {start}-{stop - 1}: it changed while the build ran")
    state = {name: {k: v.cpu() for k, v in s.items()} for name, s in harvest.state_dict().items()}
    return Shard(params.identity(), fingerprint, shard, count, start, stop, n_windows, state, part,
                 params.batch_size, time.perf_counter() - started)


# --- files ---------------------------------------------------------------------------------


def save_shard(shard: Shard, out: str | Path) -> Path:
    """Write `out/shard.pt` atomically (a killed write leaves no shard file)."""
    out = Path(out).expanduser().absolute()
    out.mkdir(parents=True, exist_ok=True)
    path = out / SHARD_FILE
    tmp = path.with_suffix(".tmp")
    p = shard.part
    torch.save({"kind": KIND, "identity": shard.identity, "fingerprint": shard.fingerprint,
                "index": shard.index, "count": shard.count, "start": shard.start, "stop": shard.stop,
                "n_windows": shard.n_windows, "batch_size": shard.batch_size, "elapsed_s": shard.elapsed_s,
                "harvest": shard.harvest,
                "part": {"first_window": p.first_window, "token_ids": torch.from_numpy(p.token_ids),
                         "doc_ids": torch.from_numpy(p.doc_ids), "documents": p.documents}}, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return out


def load_shard(folder: str | Path) -> Shard:
    """A shard written by `save_shard`, or ShardError in one line."""
    folder = Path(folder).expanduser()
    path = folder / SHARD_FILE if folder.is_dir() else folder
    if not path.is_file():
        raise ShardError(f"'{folder}' holds no shard ({SHARD_FILE}): was its `mechscope build --shard` finished?")
    try:
        with warnings.catch_warnings():  # torch warns about the pickle protocol of a garbage file
            warnings.simplefilter("ignore")
            s = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(s, dict) or s.get("kind") != KIND:
            raise ValueError("it is not a mechscope shard")
        p = s["part"]
        part = CorpusPart(int(p["first_window"]), p["token_ids"].numpy(), p["doc_ids"].numpy(), list(p["documents"]))
        return Shard(s["identity"], s["fingerprint"], int(s["index"]), int(s["count"]), int(s["start"]),
                     int(s["stop"]), int(s["n_windows"]), s["harvest"], part, int(s["batch_size"]),
                     float(s.get("elapsed_s", 0.0)))
    except ShardError:
        raise
    except Exception as e:  # truncated, garbage, another file: torch says it at length, in many ways
        reason = str(e) if isinstance(e, ValueError) and "mechscope" in str(e) else "damaged, or another kind of file"
        raise ShardError(f"'{path}' is not a readable shard ({reason}); "
                         "run its `mechscope build --shard` again") from None


# --- merging -------------------------------------------------------------------------------


def check_shards(shards: Sequence[Shard]) -> list[Shard]:
    """The shards in window order, after checking that they are of one build and cover every
    window of it exactly once; ShardError (one line) otherwise."""
    if not shards:
        raise ShardError("no shards to merge")
    first = shards[0]
    for s in shards[1:]:
        if s.identity != first.identity:
            keys = sorted(k for k in set(s.identity) | set(first.identity)
                          if s.identity.get(k) != first.identity.get(k))
            what = ", ".join(f"{k}: {first.identity.get(k)!r} vs {s.identity.get(k)!r}" for k in keys)
            raise ShardError(f"{s.name()} is from another build than {first.name()} ({what})")
        if s.fingerprint != first.fingerprint:
            raise ShardError(f"{s.name()} read other corpus content than {first.name()} (the corpus changed "
                             "between them): rebuild the shards")
        if s.batch_size != first.batch_size:
            raise ShardError(f"{s.name()} ran batches of {s.batch_size} windows, {first.name()} of "
                             f"{first.batch_size}: shards of one build cut at the same batches (use one --batch-size)")
        if s.n_windows != first.n_windows:
            raise ShardError(f"{s.name()} counts {s.n_windows} windows in the build, {first.name()} "
                             f"{first.n_windows}: the corpus changed between them")
    ordered = sorted(shards, key=lambda s: (s.start, s.stop))
    at = 0
    for s in ordered:
        if s.start > at:
            raise ShardError(f"windows {at}-{s.start - 1} are in no shard given (the build has {first.n_windows} "
                             f"windows; the shards given cover {_covered(ordered)})")
        if s.start < at:
            raise ShardError(f"{s.name()} overlaps an earlier shard at windows {s.start}-{min(at, s.stop) - 1}: "
                             "give each shard once")
        at = s.stop
    if at < first.n_windows:
        raise ShardError(f"windows {at}-{first.n_windows - 1} are in no shard given (the build has "
                         f"{first.n_windows} windows; the shards given cover {_covered(ordered)})")
    return ordered


def _covered(ordered: Sequence[Shard]) -> str:
    return ", ".join(f"{s.start}-{s.stop - 1}" for s in ordered if s.stop > s.start) or "none"


def merged_documents(parts: Sequence[CorpusPart]) -> list[dict]:
    """The documents rows of all parts in order; a document cut by a shard boundary appears at the
    end of one part and the start of the next: one row, its token counts added."""
    rows: list[dict] = []
    for part in parts:
        for row in part.documents:
            if rows and rows[-1]["doc_id"] == row["doc_id"]:
                rows[-1] = {**rows[-1], "n_tokens": rows[-1]["n_tokens"] + row["n_tokens"]}
            else:
                rows.append(dict(row))
    return rows


def merge_shards(shards: Sequence[Shard], out: str | Path, *, model=None, device: str = "cpu",
                 progress: bool = True, timings: dict | None = None) -> Path:
    """Check, merge and write the store at `out` (nothing is left at `out` on failure)."""
    from pipeline.build import BuildParams, _model, write_store
    from pipeline.stats import StatsConfig
    from store import StoreWriter

    ordered = check_shards(shards)
    identity = dict(ordered[0].identity)
    params = BuildParams(**{**identity, "stats": StatsConfig(**identity["stats"]),
                            "batch_size": ordered[0].batch_size})
    writer = StoreWriter(out)
    try:
        model = _model(params, device, model)
        harvest = Harvest(model, params.stats)
        harvest.load_state_dict(ordered[0].harvest)
        for s in ordered[1:]:
            other = Harvest(model, params.stats)
            other.load_state_dict(s.harvest)
            harvest.merge(other)
        t = {"harvest_s": sum(s.elapsed_s for s in ordered), **(timings or {})}
        return write_store(writer, params, model, harvest, ordered[0].n_windows, t, device, progress,
                           corpus_parts=[s.part for s in ordered], extra_build={"shards": len(ordered)})
    except BaseException:
        writer.abort()
        raise
