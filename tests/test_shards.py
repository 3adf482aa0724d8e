"""`mechscope build --shard I/N` and `mechscope merge`: the file contract end to end, and every
way a merge can be given the wrong shards (one line each, no store left behind).

Equality of merged and one-pass stores on both test models is in tests/test_build.py; here the
shards come from the command line (in-process, one real subprocess merge) on tiny-gpt2.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from test_build import assert_same_store

from pipeline import cli
from store import open_store

ROOT = Path(__file__).resolve().parents[1]
ARGS = ("--model", "tiny-gpt2", "--corpus", "wiki-vital", "--max-tokens", "4096", "--seq-len", "32",
        "--batch-size", "4", "--no-progress")


def _run(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, "".join(line for line in err.splitlines(keepends=True) if "ScriptRunContext" not in line)


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> dict[str, Path]:
    """Shards 1-3 of 3, shard 1 of 2, shard 1 of 3 of another build (--top-k), and a one-pass store."""
    root = tmp_path_factory.mktemp("shards")
    made = {}
    for name, extra in (("1of3", ("--shard", "1/3")), ("2of3", ("--shard", "2/3")), ("3of3", ("--shard", "3/3")),
                        ("1of2", ("--shard", "1/2")), ("other", ("--shard", "1/3", "--top-k", "7")),
                        ("one_pass", ())):
        assert cli.main(["build", *ARGS, *extra, "--out", str(root / name)]) == 0
        made[name] = root / name
    return made


def test_shards_from_the_command_line_merge_into_the_one_pass_store(shards, tmp_path):
    out = tmp_path / "merged"
    r = subprocess.run([sys.executable, "-m", "pipeline.cli", "merge", shards["3of3"], shards["1of3"], shards["2of3"],
                        "--out", out, "--no-progress"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert str(out) in r.stdout and "tiny-gpt2" in r.stdout  # the build's summary
    assert_same_store(open_store(shards["one_pass"]), open_store(out))


@pytest.mark.parametrize("given, words", [
    (("1of3", "3of3"), ["windows 44-83 are in no shard given", "cover 0-43, 84-127"]),
    (("1of3", "2of3"), ["windows 84-127 are in no shard given"]),
    (("1of2", "2of3", "3of3"), ["overlaps", "windows 44-63", "give each shard once"]),
    (("1of3", "1of3", "2of3", "3of3"), ["overlaps", "give each shard once"]),
    (("other", "2of3", "3of3"), ["another build", "top_k"]),
])
def test_wrong_sets_of_shards_get_one_line_and_no_store(shards, tmp_path, capsys, given, words):
    out = tmp_path / "merged"
    code, stdout, err = _run(capsys, "merge", *(shards[g] for g in given), "--out", out)
    assert code == cli.EXIT_USER and stdout == "" and err.count("\n") == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err, err
    assert not out.exists() and not out.with_name("merged.partial").exists()


def test_damaged_or_missing_shards_and_bad_shard_arguments(shards, tmp_path, capsys):
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "shard.pt").write_bytes(b"\x80not a shard")
    for folder, words in ((garbage, ["not a readable shard"]), (tmp_path / "nowhere", ["holds no shard"])):
        code, _, err = _run(capsys, "merge", shards["1of3"], folder, "--out", tmp_path / "m")
        assert code == cli.EXIT_USER and err.count("\n") == 1 and all(w in err for w in words), err
    for bad in ("0/3", "4/3", "x", "1/0"):
        with pytest.raises(SystemExit) as e:
            cli.main(["build", *ARGS, "--shard", bad, "--out", str(tmp_path / "s")])
        assert e.value.code == cli.EXIT_USER
        assert "is not a shard I/N" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["build", *ARGS, "--shard", "1/2", "--resume", "--out", str(tmp_path / "s")])
    assert "run again whole" in capsys.readouterr().err
