"""The live prompt page, headless (`streamlit.testing.v1.AppTest`): tiny-gpt2 by name (`?model=`)
over a synthetic store; interventions from the URL and from the form, a patching grid."""

from __future__ import annotations

import json

import pytest
from streamlit.testing.v1 import AppTest
from test_dashboard import APP, chart_frames, open_page

from dashboard import nav
from dashboard.synthetic import write_synthetic_store

PROMPT = "The capital of France is Paris and the capital of Spain is"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return write_synthetic_store(tmp_path_factory.mktemp("live") / "store")


@pytest.fixture
def app(store, monkeypatch):
    monkeypatch.setenv(nav.ENV_VAR, str(store))
    return AppTest.from_file(APP, default_timeout=180)


def url_ivs(at) -> list:
    raw = at.query_params["iv"]
    return json.loads(raw if isinstance(raw, str) else raw[0])


def tops(at) -> list:
    return [list(zip(f.value["token"], f.value["prob"], strict=True)) for f in at.dataframe[:2]]


def test_plain_run_shows_prediction_lens_and_head(app):
    at = open_page(app, nav.LIVE, model="tiny-gpt2", prompt=PROMPT, head="1.2", neuron="0.5")
    assert at.title[0].value == "Live prompt" and not at.warning and not at.error
    plain, same = tops(at)
    assert plain == same and len(plain) == 10 and abs(sum(p for _, p in plain) - 1) < 1  # probabilities
    grid = next(f for f in chart_frames(at) if "top5" in f.columns)
    assert grid["depth"].nunique() == 3  # tiny-gpt2: the embedding, block 0's output, the output
    assert at.subheader[2].value == "Head L1H2 and neuron L0/N5"


def test_an_ablation_in_the_url_changes_the_prediction_and_its_chip_removes_it(app):
    ivs = json.dumps([{"kind": "zero", "component": "head", "layer": 1, "index": 2},
                      {"kind": "zero", "component": "neuron", "layer": 1, "index": 9}])
    at = open_page(app, nav.LIVE, model="tiny-gpt2", prompt=PROMPT, iv=ivs)
    plain, ablated = tops(at)
    assert plain != ablated
    chips = [b for b in at.button if b.label.startswith("✕")]
    assert [b.label for b in chips] == ["✕ zero L1H2", "✕ zero L1/N9"]
    chips[0].click().run()
    assert url_ivs(at) == [{"kind": "zero", "component": "neuron", "layer": 1, "index": 9,
                                                     "value": 0.0}]


def test_the_form_adds_an_intervention_to_the_url(app):
    at = open_page(app, nav.LIVE, model="tiny-gpt2", prompt=PROMPT)
    at.selectbox(key="iv_kind").select("steer with the difference of two prompts")
    at.number_input(key="iv_layer").set_value(1)
    at.number_input(key="iv_scale").set_value(6.0)
    at.button[0].click().run()  # the form's "Add"
    (iv,) = url_ivs(at)
    assert (iv["kind"], iv["component"], iv["layer"], iv["value"]) == ("steer", "resid", 1, 6.0)
    assert len(iv["vector"]) == 64
    plain, steered = tops(at)
    assert plain != steered


def test_bad_interventions_in_the_url_are_a_notice(app):
    at = open_page(app, nav.LIVE, model="tiny-gpt2", prompt=PROMPT, iv='[{"kind": "zero", "component": "head"}]')
    assert len(at.warning) == 1 and "could not be read" in at.warning[0].value
    at = open_page(AppTest.from_file(APP, default_timeout=60), nav.LIVE, model="no-such-model-xyz")
    assert len(at.error) == 1 and "could not be loaded" in at.error[0].value


def test_patching_grid_runs_from_a_second_prompt(app):
    at = open_page(app, nav.LIVE, model="tiny-gpt2", prompt="The cat sat on the mat",
                   corrupt="The dog sat on the mat")
    at.button(key="patch_run").click().run()
    frame = next(f for f in chart_frames(at) if "value" in f.columns and "position" in f.columns)
    assert frame["layer"].nunique() == 2 and frame["pos"].nunique() == 7  # BOS + 6 tokens
    heads = [f for f in chart_frames(at) if {"layer", "head", "value"} <= set(f.columns)]
    assert len(heads) == 2 and len(heads[-1]) == 8  # DLA per head, then the head patching grid: 2 layers x 4 heads
    at = open_page(AppTest.from_file(APP, default_timeout=60), nav.LIVE, model="tiny-gpt2",
                   prompt="The cat sat on the mat", corrupt="A dog")
    assert any("must match" in w.value for w in at.warning)


def test_catalogue_pages_link_to_the_live_tab(app):
    from test_dashboard import links

    at = open_page(app, nav.HEAD, layer="1", head="2")
    assert links(at)["try it live ↗"] == ("live", "head=1.2")
    at = open_page(AppTest.from_file(APP, default_timeout=60), nav.NEURON, layer="0", neuron="2")
    assert links(at)["try it live ↗"] == ("live", "neuron=0.2")
