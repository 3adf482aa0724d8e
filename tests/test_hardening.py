"""Damaged stores, bad arguments, resumes and signals (issue 12, items 5-8).

- Damaged copies of a synthetic store (truncated, zero-byte, flipped byte, deleted table, a
  manifest lacking a table, `model` a string, a table entry without `rows`): every command ends in
  one line naming the table and `mechscope verify`, `verify` names the problem, and every page
  shows one readable notice instead of a traceback; a flipped byte is caught on open even with
  its mtime put back.
- Arguments: `serve --port 70000`, `--host 256.1.1.1`, `--checkpoint-every nan|inf|-5`,
  `--out ""` end in one line and exit status 2 (in-process: argparse, nothing else runs).
- `build --resume` on a truncated or garbage checkpoint, and after the corpus file was rewritten
  at the same path: one line with the way out, the unfinished build left as it was.
- `kill -TERM` of a real `mechscope serve` stops its Streamlit child too (no orphan on the port).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from dashboard import nav
from dashboard.synthetic import write_synthetic_store
from pipeline import cli
from store import StoreError, open_store, verify_store

REPO = Path(__file__).resolve().parents[1]
APP = str(REPO / "dashboard" / "app.py")
PAGES = (nav.OVERVIEW, nav.CATALOGUE, nav.NEURON, nav.DELETION, nav.HEADS, nav.HEAD, nav.CIRCUITS, nav.SQL)


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    return write_synthetic_store(tmp_path_factory.mktemp("hard") / "good")


def _manifest(store: Path) -> dict:
    return json.loads((store / "manifest.json").read_text())


def _write_manifest(store: Path, m: dict) -> None:
    (store / "manifest.json").write_text(json.dumps(m))


def _truncate(store: Path) -> None:
    f = store / "neurons.parquet"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _zero(store: Path) -> None:
    (store / "neurons.parquet").write_bytes(b"")


def _flip(store: Path) -> None:
    f = store / "activations.parquet"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x40
    f.write_bytes(bytes(data))


def _delete(store: Path) -> None:
    (store / "neurons.parquet").unlink()


def _model_string(store: Path) -> None:
    _write_manifest(store, {**_manifest(store), "model": "gpt2"})


def _no_rows(store: Path) -> None:
    m = _manifest(store)
    del m["tables"]["neurons"]["rows"]
    _write_manifest(store, m)


# damage -> (the table or manifest field the notice names, what it says)
DAMAGE = {
    "truncated": (_truncate, "neurons", "bytes"), "zero-byte": (_zero, "neurons", "bytes"),
    "flipped": (_flip, "activations", "checksum"), "deleted": (_delete, "neurons", "missing"),
    "model-string": (_model_string, "model", "not an object"), "no-rows": (_no_rows, "neurons", "rows"),
}


@pytest.fixture(scope="module")
def damaged(good, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("damaged")
    out = {}
    for kind, (damage, _, _) in DAMAGE.items():
        shutil.copytree(good, root / kind)
        damage(root / kind)
        out[kind] = root / kind
    return out


def _one_line(capsys) -> str:
    err = "".join(line for line in capsys.readouterr().err.splitlines(keepends=True)
                  if "ScriptRunContext" not in line)  # Streamlit's logger, from an AppTest's thread
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_commands_on_a_damaged_store_say_which_table_in_one_line(damaged, kind, capsys):
    path, (_, table, what) = damaged[kind], DAMAGE[kind]
    for argv in (["info", str(path)], ["query", str(path), "SELECT count(*) FROM tokens"]):
        assert cli.main(argv) == cli.EXIT_USER, argv
        err = _one_line(capsys)
        assert table in err and what in err and "mechscope verify" in err, err
    assert cli.main(["verify", str(path)]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and table in out, out
    with pytest.raises(StoreError, match="mechscope verify"):
        open_store(path)


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_every_page_of_a_damaged_store_is_one_notice(damaged, kind, monkeypatch):
    monkeypatch.setenv(nav.ENV_VAR, str(damaged[kind]))
    table = DAMAGE[kind][1]
    for page in PAGES:
        at = AppTest.from_file(APP, default_timeout=60).run()
        at.switch_page(page).run()
        assert not at.exception, (kind, page, at.exception)
        assert len(at.error) == 1 and table in at.error[0].value and "verify" in at.error[0].value, \
            (kind, page, [e.value for e in at.error])


def test_a_folder_with_one_damaged_store_serves_the_others(good, damaged, tmp_path, monkeypatch):
    shutil.copytree(good, tmp_path / "a")
    shutil.copytree(damaged["flipped"], tmp_path / "b")
    monkeypatch.setenv(nav.ENV_VAR, str(tmp_path))
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception and not at.error and "synthetic-2x8" in at.title[0].value
    at.sidebar.selectbox[0].select("b").run()
    assert not at.exception and "activations" in at.error[0].value


def test_a_manifest_lacking_a_table_still_browses(good, tmp_path, monkeypatch, capsys):
    store = shutil.copytree(good, tmp_path / "s")
    m = _manifest(store)
    del m["tables"]["heads"]
    _write_manifest(store, m)
    assert cli.main(["info", str(store)]) == 0 and "heads" in capsys.readouterr().out  # lacks ... heads
    monkeypatch.setenv(nav.ENV_VAR, str(store))
    for page in PAGES:
        at = AppTest.from_file(APP, default_timeout=60).run()
        at.switch_page(page).run()
        assert not at.exception, (page, at.exception)


def test_a_flipped_byte_is_caught_even_with_its_mtime_put_back(good, tmp_path):
    store = shutil.copytree(good, tmp_path / "s")
    open_store(store).close()  # passes, and is remembered as passed
    f = store / "activations.parquet"
    st = f.stat()
    _flip(store)
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(StoreError, match="activations.*checksum.*mechscope verify"):
        open_store(store)


def test_verify_checks_the_manifest_shape(damaged, good, capsys):
    assert any("'model' is str" in p for p in verify_store(damaged["model-string"]))
    assert any("neurons" in p and "'rows'" in p for p in verify_store(damaged["no-rows"]))
    assert verify_store(good) == []


# --- arguments -----------------------------------------------------------------------------------


@pytest.mark.parametrize("argv, words", [
    (["serve", "x", "--port", "70000"], "port"), (["serve", "x", "--port", "0"], "port"),
    (["serve", "x", "--host", "256.1.1.1"], "host"), (["serve", "x", "--host", "a b"], "host"),
    (["demo", "--port", "99999"], "port"), (["info", ""], "empty"), (["verify", " "], "empty"),
    *[(["build", "--model", "tiny-gpt2", "--corpus", "c.txt", "--out", "o", "--checkpoint-every", v],
       "checkpoint-every") for v in ("nan", "inf", "-inf", "-5", "x")],
    (["build", "--model", "tiny-gpt2", "--corpus", "c.txt", "--out", ""], "--out"),
])
def test_bad_arguments_end_in_one_line(argv, words, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == cli.EXIT_USER
    err = _one_line(capsys)
    assert words in err, err


# --- resume ----------------------------------------------------------------------------------------


@pytest.fixture
def unfinished(tmp_path):
    """A tiny-gpt2 build over a .txt corpus stopped after 2 windows: (argv to resume it, paths)."""
    from pipeline.build import BuildInterrupted, BuildParams, build
    from pipeline.stats import StatsConfig

    corpus = tmp_path / "c.txt"
    words = ["the", "cat", "sat", "on", "the", "mat", "and", "the", "dog", "ran", "to", "the", "park", "while",
             "birds", "sang"]
    corpus.write_text("\n\n".join(" ".join(words[(i + j) % len(words)] for j in range(60)) for i in range(40)))
    out = tmp_path / "out"
    params = BuildParams(model="tiny-gpt2", corpus=str(corpus), max_tokens=1024,
                         stats=StatsConfig(seq_len=32, top_k=4, records=8), batch_size=2)
    with pytest.raises(BuildInterrupted):
        build(params, out, progress=False, stop_after_windows=2)
    argv = ["build", "--model", "tiny-gpt2", "--corpus", str(corpus), "--max-tokens", "1024", "--seq-len", "32",
            "--top-k", "4", "--records", "8", "--batch-size", "2", "--out", str(out), "--resume", "--no-progress"]
    return argv, corpus, out, tmp_path / "out.partial" / "checkpoint" / "state.pt"


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_resume_from_a_damaged_checkpoint_is_one_line(unfinished, damage, capsys):
    argv, _, out, checkpoint = unfinished
    data = checkpoint.read_bytes()
    checkpoint.write_bytes({"truncated": data[: len(data) // 2], "garbage": os.urandom(4096), "empty": b""}[damage])
    before = _files(checkpoint.parents[1])
    assert cli.main(argv) == cli.EXIT_USER
    err = _one_line(capsys)
    assert "checkpoint" in err and "damaged" in err and "delete" in err, err
    assert _files(checkpoint.parents[1]) == before and not out.exists()


def test_resume_after_the_corpus_was_rewritten_is_refused(unfinished, capsys):
    argv, corpus, out, checkpoint = unfinished
    text = corpus.read_text()
    corpus.write_text(text.replace("cat", "cow"))  # same path, same size, new content
    assert cli.main(argv) == cli.EXIT_USER
    err = _one_line(capsys)
    assert "corpus" in err and "changed" in err and "delete" in err, err
    corpus.write_text(text)  # the same content again: the resume goes on to a verified store
    assert cli.main(argv) == 0
    capsys.readouterr()
    assert verify_store(out) == []


# --- signals ---------------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(c) for c in (task / "children").read_text().split()]
    return found


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("sig", [signal.SIGTERM])
def test_kill_term_of_serve_stops_streamlit_too(good, sig):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.cli", "serve", str(good), "--port", str(port)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2)
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
                time.sleep(0.3)
        children = _children(proc.pid)
        assert len(children) == 1
        proc.send_signal(sig)  # to serve alone, as `kill -TERM <pid>` does
        assert proc.wait(timeout=20) == 128 + sig
        deadline = time.monotonic() + 10
        while _alive(children[0]) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(children[0]), "the Streamlit child outlived serve"
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=2)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
