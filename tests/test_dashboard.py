"""The dashboard, headless: every page through `streamlit.testing.v1.AppTest` on a synthetic store
(`dashboard/synthetic.py`, with planted neurons and heads; also without its head tables, as an old
store), the dashboard's queries, the render helpers on hand-made data, `serve`'s path check, and
the import boundary (no torch when browsing).
The real-browser test is `tests/test_e2e_browser.py`.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
from streamlit.testing.v1 import AppTest
from test_store import context_token_check

from dashboard import locate, nav, render, serve
from dashboard.synthetic import HEAD_TABLES, XSS_TOKEN, write_synthetic_store
from store import StoreError, histogram_bins, open_store, queries, schema

REPO = Path(__file__).resolve().parents[1]
APP = str(REPO / "dashboard" / "app.py")
FIXTURE_V2 = REPO / "tests" / "fixtures" / "store_v2"  # written by schema version 2: no head tables


@pytest.fixture(scope="module")
def store_root(tmp_path_factory) -> Path:
    """A folder with two synthetic stores: `a` (the planted one) and `b`."""
    root = tmp_path_factory.mktemp("stores")
    write_synthetic_store(root / "a")
    write_synthetic_store(root / "b", name="second-model", seed=1)
    return root


@pytest.fixture
def app(store_root, monkeypatch):
    """An AppTest on store `a`; call `.run()` or `open_page(...)`."""
    monkeypatch.setenv(nav.ENV_VAR, str(store_root / "a"))
    return AppTest.from_file(APP, default_timeout=60)


def open_page(at: AppTest, page: str, **params: str) -> AppTest:
    at.run().query_params.update(params)
    at.switch_page(page).run()
    assert not at.exception, at.exception
    return at


def html_of(at: AppTest) -> str:
    return "".join(h.proto.body for h in at.html)


def pairs(frame, key: str = "neuron") -> list[tuple[int, int]]:
    return list(zip(frame["layer"], frame[key], strict=True))


def chart_frames(at: AppTest) -> list:
    """The data of every Altair chart on the page, one pandas frame per dataset (Arrow IPC)."""
    return [pa.ipc.open_stream(ds.data.data).read_all().to_pandas()
            for chart in at.get("vega_lite_chart") for ds in chart.proto.datasets]


def links(at: AppTest) -> dict[str, tuple[str, str]]:
    """{label: (page, query string)} of every page link."""
    return {p.proto.label: (p.proto.page, p.proto.query_string) for p in at.get("page_link")}


# --- pages ---------------------------------------------------------------------------------


def test_overview_shows_manifest_counts_and_charts(app):
    at = app.run()
    assert not at.exception and "synthetic-2x8" in at.title[0].value
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["layers"] == "2" and metrics["neurons per layer"] == "8" and metrics["tokens read"] == "96"
    assert dict(at.dataframe[0].value[["table_name", "n_rows"]].values.tolist())["neurons"] == 16
    links = {p.proto.label: p.proto.page for p in at.get("page_link")}
    assert any("layer 1, neuron 5: deletion_cos = -0.900" in label for label in links)
    assert "deletion" in links.values() and any("separators between packed documents" in m.value for m in at.markdown)
    assert len(at.get("vega_lite_chart")) >= 2


def test_catalogue_lists_filters_and_links(app):
    at = open_page(app, nav.CATALOGUE)
    frame = at.dataframe[0].value
    assert len(frame) == 15 and frame["open"].iloc[0] == "neuron?layer=0&neuron=0"  # the artefact L1/N6 left out
    at.text_input(key="promotes").input(" PARIS ").run()
    hits = at.dataframe[0].value
    assert (0, 2) in pairs(hits) and all("Paris" in t for t in hits["top_value_tokens"])
    at.text_input(key="promotes").input("").run()
    at.text_input(key="fires_on").input(XSS_TOKEN).run()
    first = at.dataframe[0].value.iloc[0]
    assert (first["layer"], first["neuron"]) == (1, 3) and first["fires_on_records"] >= 2
    at.slider[0].set_range(1, 1).run()
    assert set(at.dataframe[0].value["layer"]) == {1}
    at.text_input(key="fires_on").input("no-such-token").run()
    assert not at.exception and "No neuron matches" in at.info[0].value


def test_catalogue_score_ranges(app):  # applied in SQL, bound to the URL
    at = open_page(app, nav.CATALOGUE)
    at.slider(key="deletion_cos").set_range(-1.0, -0.8).run()
    assert pairs(at.dataframe[0].value) == [(1, 5)]
    at.slider(key="deletion_cos").set_range(-1.0, 1.0).run()
    at.slider(key="kv_agreement_frac").set_range(0.0, 0.99).run()  # also leaves out the null (1, 7)
    frame = at.dataframe[0].value
    assert len(frame) == 14 and (frame["kv_agreement_frac"] <= 0.99).all() and (1, 7) not in pairs(frame)
    at.select_slider(key="max").set_range(2.0, 5.0).run()
    assert pairs(at.dataframe[0].value) == [(0, 2), (0, 4), (1, 1), (1, 3)]  # (1, 6), an artefact, is left out
    at.slider(key="density_frac").set_range(0.99, 1.0).run()  # excludes everything
    assert not at.exception and "No neuron matches" in at.info[0].value and at.dataframe[0].value.empty
    at = open_page(AppTest.from_file(APP, default_timeout=60), nav.CATALOGUE, deletion_cos=["-1", "-0.85"])
    assert pairs(at.dataframe[0].value) == [(1, 5)]  # a deep link sets the range


def test_deletion_page_ranks_the_planted_neuron_first(app):
    at = open_page(app, nav.DELETION)
    links = [p.proto for p in at.get("page_link")]
    assert links[0].label.startswith("#1 · layer 1, neuron 5 · deletion cos -0.900")
    assert (links[0].page, links[0].query_string) == ("neuron", "layer=1&neuron=5")
    assert len(links) == 16 and html_of(at).count("ms-focus") == 16 * 3  # 3 examples each, inline
    assert at.caption[0].value.startswith("1 of 16 neurons") and at.get("vega_lite_chart")
    at.slider(key="n").set_value(2).run()
    at.slider(key="layers").set_range(0, 0).run()
    assert [p.proto.label.split(" · ")[1] for p in at.get("page_link")] == ["layer 0, neuron 1", "layer 0, neuron 7"]
    at = open_page(AppTest.from_file(APP, default_timeout=60), nav.DELETION, n="1", threshold="-0.2")  # deep link
    assert len(at.get("page_link")) == 1 and at.caption[0].value.startswith("5 of 16") and not at.warning


def test_neuron_deep_link_renders_everything(app):
    at = open_page(app, nav.NEURON, layer="0", neuron="2")
    assert at.title[0].value == "Layer 0, neuron 2"
    body = html_of(at)
    assert body.count("ms-focus") >= 5  # each top example outlines its own token
    assert "Paris" in body and 'title="&#x27; Paris&#x27;: ' in body
    assert at.expander[0].label == "Whole window of an example"
    assert "activation in" in at.expander[1].label  # band samples grouped by octave
    assert any("Deletion score" in m.value for m in at.markdown)
    labels = [p.proto.label for p in at.get("page_link")]
    assert labels[0] == "← L0/N1" and labels[1] == "L0/N3 →"
    assert [lab.split(" ·")[0] for lab in labels if " · cos " in lab] == ["L0/N0", "L0/N1", "L0/N3"]  # neighbours


def test_xss_token_is_rendered_as_text(app):
    at = open_page(app, nav.NEURON, layer="1", neuron="3")
    body = html_of(at)
    assert "&lt;img src=x onerror=alert(1)&gt;" in body and "<img" not in body and "onerror=alert(1)>" not in body


@pytest.mark.parametrize(("page", "query", "notice"), [
    (nav.NEURON, {"layer": "abc", "neuron": "1"}, "not a whole number"),
    (nav.NEURON, {"layer": "1"}, "gives a layer but no neuron"),
    (nav.NEURON, {"neuron": "7"}, "gives a neuron but no layer"),
    (nav.NEURON, {"layer": "0", "neuron": "999999"}, "no neuron 999999 in layer 0"),
    (nav.NEURON, {"layer": "-4", "neuron": "0"}, "no neuron 0 in layer -4"),
    (nav.DELETION, {"n": "abc"}, "n='abc' is not a whole number"), (nav.DELETION, {"n": "500"}, "outside 1–100"),
    (nav.DELETION, {"layers": "7"}, "layers='7' is not a range"), (nav.DELETION, {"threshold": "2"}, "outside -1 to 0"),
    (nav.DELETION, {"layers": ["0", "4"]}, "not a range within 0 to 1"),
    (nav.CATALOGUE, {"max": ["1", "4"]}, "max=\\['1', '4'\\]: each end must be one of 0.5, 1, 2, 3, 5"),
    (nav.HEAD, {"layer": "x", "head": "1"}, "layer='x' is not a whole number"),
    (nav.HEAD, {"layer": "1"}, "head='' is not a whole number"),
    (nav.HEAD, {"layer": "1", "head": "9"}, "no head 9 in layer 1 (layers 0–1, heads 0–3"),
    (nav.HEAD, {"layer": "99", "head": "0"}, "no head 0 in layer 99"),
    (nav.HEAD, {"layer": "![x](http://example.com/a.png)", "head": "0"}, "layer='\\!\\[x\\]\\(http\\:\u2060//example"),
    (nav.HEADS, {"score": "bogus"}, "score='bogus' is not one of prev_token_score"),
    (nav.HEADS, {"layers": ["0", "7"]}, "not a range within 0 to 1"),
    (nav.CIRCUITS, {"kind": ["k", "z"]}, "kind=\\['k', 'z'\\] is not among q, k, v"),
    (nav.CIRCUITS, {"margin": "2"}, "margin='2' is outside 0 to 1"), (nav.CIRCUITS, {"n": "0"}, "outside 1–500"),
])
def test_bad_params_give_a_notice(app, page, query, notice):
    at = open_page(app, page, **query)
    assert [notice in w.value for w in at.warning] == [True]
    assert page not in (nav.NEURON, nav.HEAD) or not at.html  # no evidence for a subject that is not there
    assert page != nav.DELETION or at.get("page_link")[0].proto.label.startswith("#1 · layer 1, neuron 5")  # defaults


def test_neuron_without_params_offers_a_picker(app):
    at = open_page(app, nav.NEURON)
    assert "Pick a neuron" in at.info[0].value
    at.number_input[0].set_value(1)
    at.number_input[1].set_value(5)
    at.button[0].click().run()
    assert not at.exception and at.title[0].value == "Layer 1, neuron 5"


def test_sql_console_runs_examples_and_refuses_writes(app):
    at = open_page(app, nav.SQL)
    for example in queries.EXAMPLE_QUERIES:
        at.selectbox(key="example").select(example).run()
        at.button(key="run").click().run()
        assert not at.exception and not at.error, (example, at.error)
        assert at.success[0].value.split()[0].isdigit()
    at.text_area(key="sql_text").input("DROP TABLE neurons").run()
    at.button(key="run").click().run()
    assert "only SELECT" in at.error[0].value
    at.text_area(key="sql_text").input("SELECT * FROM tokens").run()
    at.button(key="run").click().run()
    assert "96 rows" in at.success[0].value and len(at.get("download_button")) == 1
    assert all(any(f"`{t.name}`" in e.label for e in at.expander) for t in queries.TABLES)


def test_store_picker_for_a_folder_of_stores(store_root, monkeypatch):
    monkeypatch.setenv(nav.ENV_VAR, str(store_root))
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert at.sidebar.selectbox[0].options == ["a", "b"]
    at.sidebar.selectbox[0].select("b").run()
    assert "second-model" in at.title[0].value
    at.switch_page(nav.CATALOGUE).run()
    assert at.dataframe[0].value["open"].iloc[0] == "neuron?layer=0&neuron=0&store=b"


def test_missing_store_is_a_readable_error(tmp_path, monkeypatch):
    monkeypatch.setenv(nav.ENV_VAR, str(tmp_path / "nowhere"))
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception and "does not exist" in at.error[0].value


def test_older_store_is_a_readable_error(tmp_path, monkeypatch):
    write_synthetic_store(tmp_path / "a")
    old = write_synthetic_store(tmp_path / "b")
    manifest = json.loads((old / "manifest.json").read_text())
    (old / "manifest.json").write_text(json.dumps({**manifest, "schema_version": schema.OLDEST_SCHEMA_VERSION - 1}))
    monkeypatch.setenv(nav.ENV_VAR, str(tmp_path))
    at = AppTest.from_file(APP, default_timeout=60).run()
    assert not at.exception and not at.error
    at.sidebar.selectbox[0].select("b").run()
    assert not at.exception and "rebuild it" in at.error[0].value


# --- heads and circuits --------------------------------------------------------------------


def test_head_catalogue_heatmap_and_table(app):
    at = open_page(app, nav.HEADS)
    cells = chart_frames(at)[0]
    top = cells.loc[cells["value"].idxmax()]
    assert (top["layer"], top["head"], top["url"]) == (1, 2, "head?layer=1&head=2")  # a cell links to its head
    assert len(cells) == 8 and set(cells["url"]) == {f"head?layer={la}&head={h}" for la in (0, 1) for h in range(4)}
    frame = at.dataframe[0].value
    assert pairs(frame, "head")[0] == (1, 2) and frame["open"].iloc[0] == "head?layer=1&head=2"  # by induction_score
    at.selectbox(key="score").select("prev_token_score").run()
    assert pairs(at.dataframe[0].value, "head")[0] == (0, 1)  # (the URL follows in a browser: test_e2e_browser)
    at.slider(key="layers").set_range(1, 1).run()
    assert set(at.dataframe[0].value["layer"]) == {1}
    at = open_page(AppTest.from_file(APP, default_timeout=60), nav.HEADS, score="ov_copying_score")  # deep link
    frame = at.dataframe[0].value
    assert pairs(frame, "head")[:1] == [(1, 2)] and pairs(frame, "head")[-1] == (1, 3) and not at.warning


def test_head_deep_link_renders_everything(app):
    at = open_page(app, nav.HEAD, layer="1", head="2")
    assert at.title[0].value == "Layer 1, head 2"
    assert {m.label: m.value for m in at.metric}["induction"] == "0.757"
    body = html_of(at)
    assert body.count("ms-dest") == 5 and body.count("ms-src") == 5  # five examples, destination and source marked
    assert "attention 0." in body and "destination · attention" in body  # hover values
    found = links(at)
    assert found["← L1/H1"] == ("head", "layer=1&head=1") and found["L1/H3 →"][1] == "layer=1&head=3"
    partner = next(label for label in found if "this head's" in label)  # upstream partners, strongest first
    assert partner == "L0/H1 → this head's K: 0.620 (baseline 0.120)" and found[partner] == ("head", "layer=0&head=1")
    assert any("none: no later layer" in c.value for c in at.caption)
    frames = chart_frames(at)
    block, offsets = frames[0], frames[1]
    assert len(block) == 64 and block["weight"].between(0, 1).all()  # the 8 x 8 block of example #0
    assert set(offsets["source"]) == {"corpus (measured)", "weights (positional QK)"} and len(offsets) == 32
    assert "It copies" in "".join(m.value for m in at.markdown)
    at = open_page(AppTest.from_file(APP, default_timeout=60), nav.HEAD, layer="0", head="1")
    corpus = chart_frames(at)[1].query("source == 'corpus (measured)'")
    assert corpus["attention"].idxmax() == 1  # the previous-token head peaks at offset 1
    assert any(label.startswith("L1/H2 reads this head with its K: 0.620") for label in links(at))


def test_head_example_tokens_are_text(app):
    at = open_page(app, nav.HEAD, layer="0", head="3")
    body = html_of(at)
    assert "&lt;img src=x onerror=alert(1)&gt;" in body and "<img" not in body and "onerror=alert(1)>" not in body
    first = body.split("ms-src", 1)[1].split("</span>", 1)[0]  # example #0 attends to the XSS token
    assert "&lt;img src=x onerror=alert(1)&gt;" in first and "attention 0.97" in first
    at.selectbox(key="block_example").select(1).run()
    assert not at.exception and len(chart_frames(at)[0]) == 64


def test_head_without_params_offers_a_picker(app):
    at = open_page(app, nav.HEAD)
    assert "Pick a head" in at.info[0].value
    at.number_input[0].set_value(1)
    at.number_input[1].set_value(2)
    at.button[0].click().run()
    assert not at.exception and at.title[0].value == "Layer 1, head 2"


def test_circuits_graph_and_filters(app):
    at = open_page(app, nav.CIRCUITS)
    edges = at.dataframe[0].value
    assert list(zip(edges["writes"], edges["kind"], edges["reads"], strict=True)) == [
        ("L0/H1", "k", "L1/H2"), ("L0/H3", "v", "L1/H0"), ("L0/H0", "q", "L1/H3")]  # the planted three, strongest first
    assert edges["writes_url"].iloc[0] == "head?layer=0&head=1" and edges["reads_url"].iloc[0] == "head?layer=1&head=2"
    graph = chart_frames(at)
    nodes = next(f for f in graph if "url" in f)
    assert len(nodes) == 8 and "head?layer=1&head=2" in set(nodes["url"])  # every head a node linking to its page
    assert any(len(f) == 3 and "src_layer" in f for f in graph)  # the edges drawn
    at.slider(key="margin").set_value(0.3).run()
    assert list(at.dataframe[0].value["reads"]) == ["L1/H2"]
    at.slider(key="margin").set_value(0.1).run()
    at.multiselect(key="kind").set_value(["v"]).run()
    assert list(at.dataframe[0].value["writes"]) == ["L0/H3"]
    at.multiselect(key="kind").set_value([]).run()
    assert not at.exception and "No composition passes" in at.info[0].value
    at = open_page(AppTest.from_file(APP, default_timeout=60), nav.CIRCUITS, kind="q", margin="0.05")  # deep link
    edges = at.dataframe[0].value
    assert set(edges["kind"]) == {"q"} and len(edges) > 1 and (edges["margin"] >= 0.05).all()
    assert (edges["writes"].iloc[0], edges["reads"].iloc[0]) == ("L0/H0", "L1/H3") and not at.warning


def test_neuron_page_shows_its_circuits(app):
    at = open_page(app, nav.NEURON, layer="0", neuron="2")
    found = links(at)
    assert found["L0/H1 · weight +0.700"] == ("head", "layer=0&head=1")  # upstream head
    assert found["L1/N3 · weight +0.700"] == ("neuron", "layer=1&neuron=3")  # downstream neuron
    assert found["L1/H2 · weight +0.700"] == ("head", "layer=1&head=2")  # downstream head
    assert any(m.value == "#### Input tokens" for m in at.markdown) and "·Paris</code>&nbsp;+0.700" in html_of(at)
    at = open_page(AppTest.from_file(APP, default_timeout=60), nav.NEURON, layer="1", neuron="3")
    assert links(at)["L0/N2 · weight +0.700"] == ("neuron", "layer=0&neuron=2")  # upstream neuron
    assert "&lt;img·src=x·onerror=alert(1)&gt;</code>&nbsp;+0.700" in html_of(at)  # an input token, as text


@pytest.mark.parametrize("kind", ["synthetic", "layout 2 fixture"])
def test_store_without_head_tables_says_how_to_get_them(kind, tmp_path, monkeypatch):
    """A store built before the head tables existed: the synthetic store without them, and a real
    store of layout 2 (tests/fixtures/store_v2). Head pages say how to get them; the rest works."""
    old = write_synthetic_store(tmp_path / "old", omit=HEAD_TABLES) if kind == "synthetic" else FIXTURE_V2
    assert not set(HEAD_TABLES) & set(open_store(old).tables())
    monkeypatch.setenv(nav.ENV_VAR, str(old))
    notice = open_store(old).missing("heads")  # the store's own sentence (store/reader.py)
    assert "no head statistics" in notice and "`mechscope build`" in notice
    for page, query in ((nav.HEADS, {}), (nav.HEAD, {"layer": "1", "head": "2"}), (nav.CIRCUITS, {})):
        at = open_page(AppTest.from_file(APP, default_timeout=60), page, **query)
        assert [i.value for i in at.info] == [notice], page
        assert not at.error and not at.dataframe and not at.html
    at = open_page(AppTest.from_file(APP, default_timeout=60), nav.NEURON, layer="0", neuron="2")
    if kind == "layout 2 fixture":  # its `neurons` table is version 1, before after_bos_frac & co.
        notice = open_store(old).missing("neurons")
        assert "version 1, older than this mechscope reads (2)" in notice and "`mechscope build`" in notice
        assert [i.value for i in at.info] == [notice] and not at.html and not at.exception
        return
    assert at.title[0].value == "Layer 0, neuron 2" and html_of(at).count("ms-focus") >= 3  # the rest of the page
    assert ["no neuron circuits (table neuron_circuits)" in i.value for i in at.info] == [True]
    assert not any(" · weight " in label for label in links(at))
    at = open_page(AppTest.from_file(APP, default_timeout=60), nav.SQL)
    assert any(e.label == "`heads` (not in this store)" for e in at.expander)


# --- queries -------------------------------------------------------------------------------


def test_queries_examples_and_neighbours(store_root):
    store = open_store(store_root / "a")
    top = queries.neuron_examples(store, 1, 3, "top").to_pylist()
    assert [e["rank"] for e in top] == list(range(len(top)))
    assert all(len(e["context_tokens"]) == len(e["context_acts"]) for e in top)
    assert all(e["context_tokens"][e["pos"] - e["ctx_start"]] == XSS_TOKEN for e in top)
    check = context_token_check(store)  # every row's context_tokens is what `tokens` holds there
    assert set(check) == {"top", "band"} and all(c["wrong"] == c["bad_len"] == 0 for c in check.values()), check
    near = {r["direction"]: (r["layer"], r["neuron"]) for r in queries.neighbours(store, 1, 0).to_pylist()}
    assert near == {"prev": (0, 7), "next": (1, 1)}
    assert [r["direction"] for r in queries.neighbours(store, 0, 0).to_pylist()] == ["next"]
    with pytest.raises(KeyError):
        queries.notable_neurons(store, "max; DROP TABLE x", True, 3)
    with pytest.raises(KeyError):
        queries.neuron_catalogue(store, 0, 1, ranges=[("count; --", 0, 1)])
    rows = queries.deletion_neurons(store, 2, 0, 1).to_pylist()
    assert [(r["layer"], r["neuron"]) for r in rows][0] == (1, 5) and len(rows) == 2
    assert [(e["rank"], len(e["context_tokens"])) for e in rows[0]["examples"]] == [(i, 7) for i in range(3)]
    assert [(c["layer"], c["n_below"]) for c in queries.deletion_counts(store, -0.5).to_pylist()] == [(0, 0), (1, 1)]


def test_head_queries_find_the_planted_heads(store_root):
    store = open_store(store_root / "a")
    assert queries.head_range(store).to_pylist() == [{"lo": 0, "hi": 1, "max_head": 3, "n_heads": 8}]
    for column, head in (("induction_score", (1, 2)), ("rand_induction_score", (1, 2)), ("prev_token_score", (0, 1))):
        assert pairs(queries.head_catalogue(store, 0, 1, column).to_pandas(), "head")[0] == head, column
    lowest = min(queries.head_matrix(store, "ov_copying_score").to_pylist(), key=lambda r: r["value"])
    assert (lowest["layer"], lowest["head"]) == (1, 3)  # the suppression head
    with pytest.raises(KeyError):
        queries.head_matrix(store, "layer; DROP TABLE heads")
    with pytest.raises(KeyError):
        queries.head_catalogue(store, 0, 1, "ov_copy_tokens")
    top = queries.strongest_compositions(store, ["q", "k", "v"], 0.0, 1).to_pylist()[0]
    assert (top["src_layer"], top["src_head"], top["dst_layer"], top["dst_head"], top["kind"]) == (0, 1, 1, 2, "k")
    assert len(queries.strongest_compositions(store, ["q", "k", "v"], 0.1, 100)) == 3
    assert queries.strongest_compositions(store, ["k"], 0.0, 100, min_score=0.5).num_rows == 1
    partners = queries.head_partners(store, 1, 2, 2).to_pylist()
    assert [(r["direction"], r["other_layer"], r["other_head"], r["kind"]) for r in partners][0] == (
        "upstream", 0, 1, "k")
    assert {r["direction"] for r in partners} == {"upstream"} and len(partners) == 2
    assert partners[0]["baseline"] == pytest.approx(0.12)
    assert [r["direction"] for r in queries.head_partners(store, 0, 1, 2).to_pylist()] == ["downstream"] * 2
    examples = queries.head_examples(store, 0, 3).to_pylist()
    assert [e["rank"] for e in examples] == list(range(5))
    assert (examples[0]["seq_id"], examples[0]["pos"], examples[0]["src_pos"]) == (4, 10, 9)
    assert examples[0]["context_tokens"][9] == XSS_TOKEN and len(examples[0]["block"]) == 64
    assert queries.head_neighbours(store, 1, 0).to_pylist() == [{"direction": "prev", "layer": 0, "head": 3},
                                                                  {"direction": "next", "layer": 1, "head": 1}]
    circuits = queries.neuron_circuits(store, 0, 2).to_pylist()
    assert [r["relation"] for r in circuits] == sorted(
        (r["relation"] for r in circuits), key=queries.CIRCUIT_RELATIONS.index)  # relations in page order
    first = {r["relation"]: r for r in circuits if r["rank"] == 0}
    assert first["input_token"]["other_token"] == " Paris" and first["input_token"]["other_layer"] is None
    assert (first["downstream_neuron"]["other_layer"], first["downstream_neuron"]["other_index"]) == (1, 3)
    assert (first["upstream_head"]["other_layer"], first["upstream_head"]["other_index"]) == (0, 1)
    assert "upstream_neuron" not in first  # layer 0 has no earlier neurons


# --- render helpers ------------------------------------------------------------------------


def test_heatmap_escapes_and_colours():
    out = render.heatmap_html([XSS_TOKEN, ' "q" & <b>'], [2.0, float("nan")], vmax=2.0, focus=0)
    assert "<img" not in out and "<b>" not in out
    assert "&lt;img src=x onerror=alert(1)&gt;" in out and "&quot;q&quot; &amp; &lt;b&gt;" in out
    assert "outline:2px" in out.split("</span>")[0] and "outline" not in out.split("</span>")[1]
    assert "BOS" in out.split("</span>")[1]
    assert render.activation_colour(2.0, 2.0).endswith(",0.85)")
    assert render.activation_colour(0.0, 2.0).endswith(",0.0)")
    assert render.activation_colour(-1.0, 2.0, -0.2).startswith("rgba(33,102,172,0.42")  # negatives on max scale
    assert render.activation_colour(None, 1.0) == render.activation_colour(float("nan"), 1.0)


def test_attention_view_escapes_and_marks():
    tokens = ["<|endoftext|>", XSS_TOKEN, "  ", "\n", " b", " after"]
    out = render.attention_html(tokens, [0.5, 0.4, 0.05, 0.0, 0.05, 0.0], pos=4, src_pos=1, after=1)
    spans = out.split("</span>")
    assert "<img" not in out and "&lt;img src=x onerror=alert(1)&gt;" in spans[1] and "ms-src" in spans[1]
    assert "rgba(27,120,55,0.85)" in spans[1]  # full colour at the strongest non-BOS source
    assert spans[2].endswith(">··") and spans[3].endswith(">↵") and spans[4].startswith("<br>")  # whitespace visible
    assert "ms-dest" in spans[4] and "destination · attention 0.0500" in spans[4]
    assert "opacity:0.4" in spans[5] and "after the destination" in spans[5] and len(spans) == 7  # one token after
    assert "attention 0.5000" in spans[0]  # hover shows the weight (BOS too)
    rows = render.attention_block_rows({"block": [1.0, 0.0, 0.25, 0.75], "block_start": 4,
                                        "context_tokens": [""] * 4 + [" x", XSS_TOKEN]})
    assert [(r["query_pos"], r["key_pos"], r["weight"]) for r in rows] == [(4, 4, 1.0), (4, 5, 0.0), (5, 4, 0.25),
                                                                            (5, 5, 0.75)]
    assert rows[0]["query"] == "4 ·x" and rows[1]["key"] == "5 <img·src=x·onerror=alert(1)>"  # chart text
    assert [r["source"] for r in render.offset_rows([0.1, 0.2], None)] == ["corpus (measured)"] * 2
    assert len(render.offset_rows([0.1], [0.3])) == 2
    assert "copies" in render.ov_sentence(0.9) and "suppresses" in render.ov_sentence(-0.9)
    assert render.head_url(1, 2) == "head?layer=1&head=2"
    assert render.head_url(1, 2, "b") == "head?layer=1&head=2&store=b"
    assert "&lt;img" in render.weighted_tokens_html([XSS_TOKEN], [0.5]) and "+0.500" in render.weighted_tokens_html(
        [" a"], [0.5])


def test_bins_octaves_and_histogram_rows():
    ranges = histogram_bins.describe()["bin_ranges"]  # as the manifest has them: null open ends
    assert render.bin_bounds(ranges)[0] == (-math.inf, -64.0) and render.bin_bounds(ranges)[-1][1] == math.inf
    assert render.bin_label(0.5, 0.5946) == "[0.5, 0.595)" and render.bin_label(-1.0, -0.5) == "(−1, −0.5]"
    samples = [{"rank": 50 + 4 * 5 + 1, "activation": 0.6}, {"rank": 50 + 4 * 5, "activation": 0.5},
               {"rank": 98, "activation": 80.0}, {"rank": 40, "activation": -0.2}, {"rank": 500, "activation": 1}]
    groups = render.group_by_octave(samples, ranges)
    assert [label for label, _ in groups] == ["≥ 64", "[0.5, 1)", "(−0.125, −0.0625]", "other bins"]
    assert [s["activation"] for s in groups[1][1]] == [0.6, 0.5]
    rows = render.histogram_rows([0, 0, 3, 0, 1, 0], ranges)
    assert [r["bin"] for r in rows] == [2, 3, 4] and rows[1]["count"] == 0
    assert render.histogram_rows([0, 0], ranges) == []


def test_small_helpers():
    assert render.token_label(" a\nb\t") == "·a↵b⇥"
    assert render.token_list_label([" x", "y", "z"], 2) == "·x  y"
    assert render.parse_int(" 12 ") == 12 and render.parse_int("1.5") is None and render.parse_int(None) is None
    assert render.neuron_url(3, 17) == "neuron?layer=3&neuron=17"
    assert render.neuron_url(3, 17, "my store") == "neuron?layer=3&neuron=17&store=my+store"
    assert "Strongly negative" in render.deletion_sentence(-0.9) and "Near zero" in render.deletion_sentence(0.01)
    assert render.md_escape("a*b_c") == "a\\*b\\_c"
    assert ("model.n_layers", "2") in render.flat_items({"model": {"n_layers": 2}})
    assert nav.store_root(["app.py", "--", "--store", "/x"]) == "/x"
    assert nav.store_root(["app.py", "--store", "/y"]) == "/y"
    assert render.ladder_stops(0.9, 4.97) == [0.5, 1, 2, 3, 5]  # slider stops for `max`, 1-2-3-5 per decade
    assert render.ladder_stops(-0.04, 3006)[:3] == [-0.05, 0, 0.5] and render.ladder_stops(-0.04, 3006)[-1] == 5000


# --- serve and the import boundary ---------------------------------------------------------


def test_serve_checks_the_path_before_starting(store_root, tmp_path, monkeypatch):
    started = []
    monkeypatch.setattr(serve.subprocess, "Popen", lambda *a, **k: started.append(a) or pytest.fail("started"))
    for bad in (tmp_path / "missing", tmp_path):
        with pytest.raises(StoreError, match="does not exist|neither a store"):
            serve.serve(bad)
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(StoreError, match="is a file"):
        serve.serve(tmp_path / "file.txt")
    assert started == []
    assert locate.find_stores(store_root) == [store_root / "a", store_root / "b"]
    cmd = serve.streamlit_command(store_root / "a", port=9999)
    assert cmd[1:4] == ["-m", "streamlit", "run"] and cmd[-2:] == ["--store", str(store_root / "a")]
    assert cmd[cmd.index("--server.port"):][:2] == ["--server.port", "9999"]


BOUNDARY_SCRIPT = """
import sys
from streamlit.testing.v1 import AppTest
import dashboard.serve, dashboard.data, dashboard.nav, dashboard.render, dashboard.charts, dashboard.locate
at = AppTest.from_file(sys.argv[1], default_timeout=60).run()
for page, params in (("views/neuron.py", {"layer": "1", "neuron": "3"}), ("views/neurons.py", {}),
                     ("views/sql.py", {}), ("views/deletion.py", {}), ("views/heads.py", {}),
                     ("views/head.py", {"layer": "1", "head": "2"}), ("views/circuits.py", {})):
    at.query_params.update(params)
    at.switch_page(page).run()
    assert not at.exception, at.exception
print("HEAVY", sorted(m for m in ("torch", "transformer_lens", "transformers") if m in sys.modules))
"""


def test_browsing_never_imports_torch(store_root):
    """Every page runs in a fresh interpreter without torch, transformer_lens or transformers."""
    env = {**os.environ, nav.ENV_VAR: str(store_root / "a")}
    out = subprocess.run([sys.executable, "-c", BOUNDARY_SCRIPT, APP], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "HEAVY []" in out.stdout, out.stdout
