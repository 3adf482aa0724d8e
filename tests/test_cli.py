"""The `mechscope` command line, run as a real subprocess: what a user types and sees.

Every mistake a user can make must end with exactly one line on stderr, exit status 2, no
traceback, and must lose nothing: files already there are left alone and no half store (or
stray `.partial` folder) is left behind. A real build is killed with SIGKILL mid-harvest and
resumed to the same store an uninterrupted build makes; Ctrl-C says how to resume.

Builds use tiny-gpt2 (2 layers x 256 neurons) over wiki-vital with small token counts.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from store import open_store

ROOT = Path(__file__).resolve().parents[1]
EXIT_USER = 2
TINY = ("--model", "tiny-gpt2", "--seq-len", "64", "--no-progress")
# the store every read-only command and the kill/resume test compare against
REF_TOKENS = "40k"
REF_ARGS = (*TINY, "--corpus", "wiki-vital", "--max-tokens", REF_TOKENS, "--batch-size", "8")


def mechscope(*args, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def spawn(*args) -> subprocess.Popen:
    # SIGINT back to its default: a test run started in the background has it ignored, and the
    # child would inherit that
    return subprocess.Popen([sys.executable, "-m", "pipeline.cli", *map(str, args)], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def one_error_line(r: subprocess.CompletedProcess, *words: str, code: int = EXIT_USER) -> str:
    """The single line a user error prints; checks the exit status, no traceback, no stdout."""
    lines = r.stderr.strip().splitlines()
    shown = f"exit {r.returncode}\nstdout: {r.stdout!r}\nstderr: {r.stderr!r}"
    assert r.returncode == code, shown
    assert "Traceback" not in r.stderr, shown
    assert len(lines) == 1, shown
    assert r.stdout == "", shown
    for w in words:
        assert w.lower() in lines[0].lower(), f"{w!r} not in: {lines[0]}"
    return lines[0]


def assert_nothing_left(out: Path) -> None:
    assert not out.exists(), f"{out} was created"
    assert not out.with_name(out.name + ".partial").exists(), f"{out}.partial was left behind"


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def ref_store(tmp_path_factory) -> Path:
    """An uninterrupted CLI build (tiny-gpt2 x wiki-vital, 40k tokens, seq-len 64)."""
    out = tmp_path_factory.mktemp("cli") / "ref"
    r = mechscope("build", *REF_ARGS, "--out", out, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    assert str(out) in r.stdout and "tiny-gpt2" in r.stdout  # the summary
    return out


def test_without_a_c_compiler_the_build_says_so_once_and_writes_the_same_examples(ref_store, tmp_path):
    """No working C compiler: one line on stderr, then the torch accumulators build the same store."""
    out = tmp_path / "torch"
    r = mechscope("build", *REF_ARGS, "--out", out, timeout=600,
                  env={"CC": str(tmp_path / "no-such-cc"), "MECHSCOPE_CACHE": str(tmp_path / "cache")})
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    notes = [line for line in r.stderr.splitlines() if "native CPU kernels unavailable" in line]
    assert len(notes) == 1 and notes[0].startswith("mechscope: ") and notes[0].endswith("using torch only")
    for table in ("neuron_examples", "activations", "tokens"):  # exact statistics: byte for byte
        assert (out / f"{table}.parquet").read_bytes() == (ref_store / f"{table}.parquet").read_bytes(), table


# --- argument errors: refused by the parser, before anything is imported ------------------


@pytest.mark.parametrize("value", ["abc", "-5", "0", "1.2.3", "", "12q", "-1k"])
def test_garbage_max_tokens(tmp_path, value):
    out = tmp_path / "o"
    r = mechscope("build", *TINY, "--corpus", "wiki-vital", "--max-tokens", value, "--out", out)
    one_error_line(r, "--max-tokens")
    assert_nothing_left(out)


@pytest.mark.parametrize(("option", "value"), [("--seq-len", "0"), ("--seq-len", "1"), ("--seq-len", "-3"),
                                               ("--batch-size", "0"), ("--records", "1e3"),
                                               ("--top-k", "x"), ("--dtype", "float8"), ("--hist-sample", "3")])
def test_garbage_numbers(tmp_path, option, value):
    out = tmp_path / "o"
    r = mechscope("build", "--model", "tiny-gpt2", "--corpus", "wiki-vital", "--max-tokens", "1k", "--out", out,
                  option, value)
    one_error_line(r, option)
    assert_nothing_left(out)


def test_max_tokens_below_one_window(tmp_path):
    out = tmp_path / "o"
    one_error_line(mechscope("build", *TINY, "--corpus", "wiki-vital", "--max-tokens", "10", "--out", out),
                   "--max-tokens", "--seq-len")
    assert_nothing_left(out)


def test_max_tokens_accepts_suffixes():
    from pipeline.cli import _count

    assert [_count(s) for s in ("50000", "64k", "1M", "1.5k", "5_000")] == [50000, 64000, 10**6, 1500, 5000]


def test_missing_required_and_unknown_command():
    one_error_line(mechscope("build", "--model", "tiny-gpt2"), "required")
    one_error_line(mechscope("frobnicate"), "frobnicate")


# --- build: bad models, corpora and output folders ----------------------------------------


def test_unknown_model_names_the_offline_models(tmp_path):
    out = tmp_path / "o"
    line = one_error_line(mechscope("build", "--model", "no-such-model", "--corpus", "wiki-vital",
                                    "--max-tokens", "1k", "--out", out), "no-such-model")
    for name in ("smollm2-135m", "gpt2-random", "tiny-gpt2"):
        assert name in line
    assert_nothing_left(out)


def test_unreachable_hub_id_names_the_offline_models(tmp_path):
    out = tmp_path / "o"
    # point the Hub cache at an empty folder so a copy of gpt2 cached on this machine cannot be used
    env = {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_CACHE": str(tmp_path / "hf" / "hub")}
    r = mechscope("build", "--model", "gpt2", "--corpus", "wiki-vital", "--max-tokens", "1k", "--out", out, env=env)
    line = one_error_line(r, "gpt2", "unreachable")
    assert "tiny-gpt2" in line and "smollm2-135m" in line
    assert_nothing_left(out)


def test_seq_len_longer_than_the_model_context(tmp_path):
    out = tmp_path / "o"  # tiny-gpt2 has 256 positions
    one_error_line(mechscope("build", "--model", "tiny-gpt2", "--seq-len", "512", "--no-progress",
                             "--corpus", "wiki-vital", "--max-tokens", "2k", "--out", out), "512", "256")
    assert_nothing_left(out)


@pytest.mark.parametrize("device", ["banana", "cuda:7"])
def test_unavailable_device(tmp_path, device):
    out = tmp_path / "o"
    one_error_line(mechscope("build", *TINY, "--corpus", "wiki-vital", "--max-tokens", "1k", "--out", out,
                             "--device", device), device)
    assert_nothing_left(out)


def test_model_folder_without_config(tmp_path):
    out, folder = tmp_path / "o", tmp_path / "mymodel"
    folder.mkdir()
    one_error_line(mechscope("build", "--model", folder, "--corpus", "wiki-vital", "--max-tokens", "1k",
                             "--out", out), "config.json")
    assert_nothing_left(out)


def test_missing_corpus(tmp_path):
    out = tmp_path / "o"
    one_error_line(mechscope("build", *TINY, "--corpus", tmp_path / "nope.txt", "--max-tokens", "1k", "--out", out),
                   "nope.txt", "not found")
    assert_nothing_left(out)


def test_empty_corpus(tmp_path):
    corpus, out = tmp_path / "corpus", tmp_path / "o"
    corpus.mkdir()
    (corpus / "empty.txt").write_text("")
    (corpus / "blank.txt").write_text("\n  \n\n")
    one_error_line(mechscope("build", *TINY, "--corpus", corpus, "--max-tokens", "1k", "--out", out),
                   "no documents")
    assert_nothing_left(out)
    (corpus / "notes.md").write_text("not a corpus file")
    for p in corpus.glob("*.txt"):
        p.unlink()
    one_error_line(mechscope("build", *TINY, "--corpus", corpus, "--max-tokens", "1k", "--out", out),
                   "no documents")
    assert_nothing_left(out)


def test_corpus_smaller_than_one_window(tmp_path):
    corpus, out = tmp_path / "small.txt", tmp_path / "o"
    corpus.write_text("Hello world.\n\nA second, short document.\n")
    one_error_line(mechscope("build", *TINY, "--corpus", corpus, "--max-tokens", "1k", "--out", out),
                   "seq_len", "nothing to build")
    assert_nothing_left(out)


def test_unsupported_and_bad_corpus_files(tmp_path):
    out = tmp_path / "o"
    csv = tmp_path / "data.csv"
    csv.write_text("text\nhello\n")
    one_error_line(mechscope("build", *TINY, "--corpus", csv, "--max-tokens", "1k", "--out", out), ".csv")
    assert_nothing_left(out)
    jsonl = tmp_path / "data.jsonl"
    jsonl.write_text('{"text": "fine"}\n{"body": "no text field"}\n')
    one_error_line(mechscope("build", *TINY, "--corpus", jsonl, "--max-tokens", "1k", "--out", out), "line 2")
    assert_nothing_left(out)


def test_non_empty_output_folder_is_left_alone(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "precious.txt").write_text("do not touch")
    before = snapshot(out)
    one_error_line(mechscope("build", *TINY, "--corpus", "wiki-vital", "--max-tokens", "1k", "--out", out),
                   "not empty")
    assert snapshot(out) == before
    assert not (tmp_path / "o.partial").exists()


def test_output_path_is_a_file(tmp_path):
    out = tmp_path / "o"
    out.write_text("a file")
    one_error_line(mechscope("build", *TINY, "--corpus", "wiki-vital", "--max-tokens", "1k", "--out", out),
                   "not a folder")
    assert out.read_text() == "a file"
    # a parent that is a file cannot hold the store either
    one_error_line(mechscope("build", *TINY, "--corpus", "wiki-vital", "--max-tokens", "1k", "--out", out / "s"),
                   "cannot")
    assert out.read_text() == "a file"


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
def test_output_under_a_filesystem_that_refuses_folders():
    """/proc refuses mkdir even to root: the unwritable parent that a root test run can have."""
    one_error_line(mechscope("build", *TINY, "--corpus", "wiki-vital", "--max-tokens", "1k",
                             "--out", "/proc/mechscope-test/o"), "cannot create")
    one_error_line(mechscope("build", *TINY, "--corpus", "wiki-vital", "--max-tokens", "1k",
                             "--out", "/proc/mechscope-test"), "cannot create")
    assert not Path("/proc/mechscope-test").exists()


def test_unwritable_output_parent(tmp_path):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        if os.access(parent, os.W_OK):
            pytest.skip("running as root: a read-only folder is writable")
        out = parent / "o"
        one_error_line(mechscope("build", *TINY, "--corpus", "wiki-vital", "--max-tokens", "1k", "--out", out),
                       "ro")
        assert list(parent.iterdir()) == []
        # and a folder under it that would have to be created
        one_error_line(mechscope("build", *TINY, "--corpus", "wiki-vital", "--max-tokens", "1k",
                                 "--out", parent / "sub" / "o"), "cannot")
        assert list(parent.iterdir()) == []
    finally:
        parent.chmod(0o755)


def test_partial_folder_without_resume(tmp_path):
    out = tmp_path / "o"
    partial = tmp_path / "o.partial"
    (partial / "checkpoint").mkdir(parents=True)
    (partial / "checkpoint" / "state.pt").write_bytes(b"not really a checkpoint")
    before = snapshot(partial)
    one_error_line(mechscope("build", *TINY, "--corpus", "wiki-vital", "--max-tokens", "1k", "--out", out),
                   "--resume", "o.partial")
    assert snapshot(partial) == before
    assert not out.exists()
    # the .partial folder itself is not a place for a store either
    one_error_line(mechscope("build", *TINY, "--corpus", "wiki-vital", "--max-tokens", "1k", "--out", partial),
                   ".partial")
    assert snapshot(partial) == before


def test_resume_with_nothing_to_resume(tmp_path):
    out = tmp_path / "o"
    one_error_line(mechscope("build", *TINY, "--corpus", "wiki-vital", "--max-tokens", "1k", "--out", out,
                             "--resume"), "nothing to resume")
    assert_nothing_left(out)


# --- info, query, verify on things that are not stores ------------------------------------


@pytest.mark.parametrize("command", ["info", "verify", "query"])
def test_read_commands_on_non_stores(tmp_path, command, ref_store):
    extra = ("SELECT 1",) if command == "query" else ()
    empty = tmp_path / "empty"
    empty.mkdir()
    one_error_line(mechscope(command, empty, *extra), "not a mechscope store")
    one_error_line(mechscope(command, tmp_path / "missing", *extra), "does not exist")
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    one_error_line(mechscope(command, a_file, *extra), "not a folder")
    # an unfinished build, even one whose manifest is already written, is not a store
    partial = tmp_path / "s.partial"
    shutil.copytree(ref_store, partial)
    one_error_line(mechscope(command, partial, *extra), "unfinished", "--resume")
    # a store whose manifest is not JSON
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "manifest.json").write_text("{not json")
    if command == "verify":
        r = mechscope(command, broken)
        assert r.returncode == 1 and "manifest.json" in r.stdout and "Traceback" not in r.stderr, r
    else:
        one_error_line(mechscope(command, broken, *extra), "manifest.json")


def test_older_schema_says_rebuild(tmp_path, ref_store):
    """A store written by an older mechscope: every command says to rebuild it, in one line,
    and `demo` leaves it as it is rather than building over it."""
    from store.schema import OLDEST_SCHEMA_VERSION

    old = tmp_path / "old"
    shutil.copytree(ref_store, old)
    manifest = json.loads((old / "manifest.json").read_text())
    (old / "manifest.json").write_text(json.dumps({**manifest, "schema_version": OLDEST_SCHEMA_VERSION - 1}))
    before = snapshot(old)
    for args in (("info", old), ("query", old, "SELECT 1"), ("serve", old), ("demo", "--dir", old, "--no-serve")):
        one_error_line(mechscope(*args), "schema version", "rebuild")
    r = mechscope("verify", old)
    assert r.returncode == 1 and "rebuild" in r.stdout and "Traceback" not in r.stderr, r
    assert snapshot(old) == before


def test_missing_partial_hint(tmp_path):
    """A path whose build is unfinished says so."""
    (tmp_path / "s.partial").mkdir()
    one_error_line(mechscope("info", tmp_path / "s"), "does not exist", "--resume")


# --- a real store: build, info, verify, query, tamper -------------------------------------


def test_info_verify_query(ref_store):
    r = mechscope("info", ref_store)
    assert r.returncode == 0 and r.stderr == "", r
    assert "tiny-gpt2" in r.stdout and "2 layers x 256 neurons" in r.stdout
    assert f"{40_000 // 64 * 64:,} tokens" in r.stdout
    phases = next(line for line in r.stdout.splitlines() if line.startswith("phases"))
    assert all(w in phases for w in ("harvest", "statistics", "weight analyses", "(neuron_weights", "corpus tables",
                                     "writing")), phases
    r = mechscope("verify", ref_store)
    assert r.returncode == 0 and r.stdout.startswith("OK"), r

    sql = "SELECT count(*) AS n, count(DISTINCT layer) AS layers FROM neurons"
    r = mechscope("query", ref_store, sql, "--format", "json")
    assert r.returncode == 0, r
    assert json.loads(r.stdout) == [{"n": 512, "layers": 2}]
    r = mechscope("query", ref_store, sql, "--format", "csv")
    assert r.returncode == 0 and r.stdout.splitlines() == ["n,layers", "512,2"], r
    r = mechscope("query", ref_store, sql)  # table is the default
    assert r.returncode == 0 and "512" in r.stdout and "(1 row)" in r.stdout, r

    # the README's question, and a truncated result that says so on stderr
    paris = ("SELECT a.layer, a.neuron, max(a.activation) AS top FROM activations a JOIN tokens t "
             "USING (seq_id, pos) WHERE t.token = ' the' GROUP BY ALL ORDER BY top DESC LIMIT 10")
    r = mechscope("query", ref_store, paris, "--format", "json")
    assert r.returncode == 0, r
    rows = json.loads(r.stdout)
    assert len(rows) == 10 and rows[0]["top"] >= rows[-1]["top"]
    r = mechscope("query", ref_store, "SELECT seq_id, pos FROM tokens", "--format", "csv", "--max-rows", "5")
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 6 and "first 5 rows" in r.stderr, r


@pytest.mark.parametrize("sql", ["DROP VIEW neurons", "SELECT 1; SELECT 2", "COPY neurons TO 'x.csv'",
                                 "SELECT * FROM read_csv('/etc/passwd')", "SELECT nope FROM neurons",
                                 "SELEC 1", ""])
def test_refused_queries_are_one_line(ref_store, sql):
    before = snapshot(ref_store)
    one_error_line(mechscope("query", ref_store, sql))
    assert snapshot(ref_store) == before


def test_verify_names_a_tampered_table(ref_store, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(ref_store, copy)
    file = copy / "neurons.parquet"
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    file.write_bytes(bytes(data))
    r = mechscope("verify", copy)
    assert r.returncode == 1, r
    assert "Traceback" not in r.stderr
    failures = [line for line in r.stdout.splitlines() if line.startswith("FAIL")]
    assert failures and all("neurons" in line for line in failures), r.stdout
    # a missing table file
    (copy / "tokens.parquet").unlink()
    r = mechscope("verify", copy)
    assert r.returncode == 1 and "tokens: file 'tokens.parquet' is missing" in r.stdout, r
    one_error_line(mechscope("query", copy, "SELECT 1"), "tokens.parquet")


# --- interrupted builds: SIGKILL then --resume, and Ctrl-C --------------------------------


def spawn_until_checkpoint(args: tuple, out: Path, sig: int = signal.SIGKILL,
                           timeout_s: float = 240) -> subprocess.CompletedProcess:
    """Start a build, wait for its first checkpoint, send `sig`; the finished process."""
    state = out.with_name(out.name + ".partial") / "checkpoint" / "state.pt"
    proc = spawn(*args)
    deadline = time.monotonic() + timeout_s
    try:
        while not state.exists() and proc.poll() is None:
            assert time.monotonic() < deadline, "no checkpoint appeared"
            time.sleep(0.02)
        if proc.poll() is None:
            proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def test_killed_build_resumes_to_the_same_store(ref_store, tmp_path):
    from test_build import assert_same_store

    out = tmp_path / "killed"
    args = ("build", *REF_ARGS, "--out", out, "--checkpoint-every", "0")
    r = spawn_until_checkpoint(args, out)
    partial = tmp_path / "killed.partial"
    if r.returncode == 0:  # the build won the race: then it must be a complete store
        assert mechscope("verify", out).returncode == 0
        pytest.skip("the build finished before it could be killed")
    assert r.returncode == -signal.SIGKILL
    assert not out.exists(), "a killed build left a store"
    assert (partial / "checkpoint" / "state.pt").is_file()
    one_error_line(mechscope("info", partial), "unfinished")

    r = mechscope(*args, "--resume", timeout=600)
    assert r.returncode == 0, r.stderr
    assert not partial.exists() and mechscope("verify", out).returncode == 0
    with open_store(ref_store) as ref, open_store(out) as resumed:
        assert ref.tables() == resumed.tables()
        assert_same_store(ref, resumed)
        for name in ref.tables():  # every table, whatever assert_same_store knows of
            assert ref.sql(f"SELECT count(*) FROM {name}").to_pylist() == \
                resumed.sql(f"SELECT count(*) FROM {name}").to_pylist(), name
    ref_manifest = json.loads((ref_store / "manifest.json").read_text())
    manifest = json.loads((out / "manifest.json").read_text())
    for name, entry in ref_manifest["tables"].items():
        assert manifest["tables"][name]["rows"] == entry["rows"], name


def test_ctrl_c_says_how_to_resume(tmp_path):
    out = tmp_path / "o"
    r = spawn_until_checkpoint(("build", *REF_ARGS, "--out", out, "--checkpoint-every", "0"), out,
                               sig=signal.SIGINT)
    if r.returncode == 0:
        pytest.skip("the build finished before Ctrl-C")
    # 130, or killed by SIGINT: CPython exits that way when a library met the KeyboardInterrupt
    # first; a shell shows both as 130
    assert r.returncode in (130, -signal.SIGINT), r
    line = one_error_line(r, "--resume", code=r.returncode)
    assert "interrupted" in line
    assert not out.exists()
    partial = tmp_path / "o.partial"
    assert (partial / "checkpoint" / "state.pt").is_file()
    # resuming with other parameters is refused, and the unfinished build is left as it was
    before = snapshot(partial)
    args = [a if a != "8" else "4" for a in REF_ARGS]  # batch size may change on resume ...
    r = mechscope("build", *args, "--top-k", "7", "--out", out, "--resume")  # ... top-k may not
    one_error_line(r, "cannot resume", "top_k")
    assert snapshot(partial) == before
    assert not out.exists()


def test_openmp_threads_yield_unless_the_user_chose(ref_store, monkeypatch, capsys):
    from pipeline import cli

    for var in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
        monkeypatch.delenv(var, raising=False)
    assert cli.main(["info", str(ref_store)]) == 0
    assert os.environ["GOMP_SPINCOUNT"] == cli.OMP_SPINCOUNT  # before torch loads in a fresh process
    monkeypatch.delenv("GOMP_SPINCOUNT")
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert cli.main(["info", str(ref_store)]) == 0
    assert "GOMP_SPINCOUNT" not in os.environ
    capsys.readouterr()
