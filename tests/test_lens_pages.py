"""The logit-lens and residual-stream pages, headless (`streamlit.testing.v1.AppTest`), on a real
store: tiny-gpt2 over wiki-vital, built once for the module with every span sampled every other
time; and an older store without the lens tables, whose pages say how to get them."""

from __future__ import annotations

from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest
from test_dashboard import APP, FIXTURE_V2, chart_frames, open_page

from dashboard import nav
from pipeline.build import BuildParams, build
from pipeline.stats import StatsConfig
from store import open_store
from store.lens_queries import PUBLISHED_PCA


@pytest.fixture(scope="module")
def lens_store(tmp_path_factory) -> Path:
    params = BuildParams(model="tiny-gpt2", corpus="wiki-vital", max_tokens=2048,
                         stats=StatsConfig(seq_len=64, top_k=4, records=8, lens_sample_shift=1), batch_size=8)
    return build(params, tmp_path_factory.mktemp("lens") / "store", progress=False)


@pytest.fixture
def app(lens_store, monkeypatch):
    monkeypatch.setenv(nav.ENV_VAR, str(lens_store))
    return AppTest.from_file(APP, default_timeout=60)


def test_lens_grid_shows_each_states_top_token(app, lens_store):
    store = open_store(lens_store)
    seq_id, pos = store.sql("SELECT seq_id, min(pos) AS pos FROM lens_positions GROUP BY seq_id ORDER BY seq_id "
                            "LIMIT 1").to_pylist()[0].values()
    at = open_page(app, nav.LENS)
    assert at.title[0].value == "Logit lens" and not at.warning
    grid = next(f for f in chart_frames(at) if "top5" in f.columns)
    want = store.sql("SELECT pos, depth, top_tokens[1] AS top1, top_probs[1] AS p FROM logit_lens WHERE seq_id = ? "
                     "ORDER BY pos, depth", [seq_id]).to_pandas()
    shown = grid.sort_values(["pos", "depth"])
    assert set(shown["pos"]) <= set(want["pos"]) and pos in set(shown["pos"])
    merged = shown.merge(want, on=["pos", "depth"])
    assert len(merged) == len(shown) and (abs(merged["top1_prob"] - merged["p"]) < 1e-6).all()
    n_depths = 2 * store.manifest["model"]["n_layers"] + 1
    assert len(shown) == n_depths * shown["pos"].nunique()
    # the corpus curves: one point per depth
    curves = [f for f in chart_frames(at) if "measure" in f.columns]
    assert len(curves) == 2 and all(len(f) == 2 * n_depths for f in curves)


def test_lens_deep_link_and_colour_toggle(app, lens_store):
    store = open_store(lens_store)
    seq_ids = store.sql("SELECT DISTINCT seq_id FROM lens_positions ORDER BY seq_id").column("seq_id").to_pylist()
    at = open_page(app, nav.LENS, window=str(seq_ids[-1]), colour="rank")
    assert not at.warning
    grid = next(f for f in chart_frames(at) if "top5" in f.columns)
    want = store.sql("SELECT DISTINCT pos FROM lens_positions WHERE seq_id = ?",
                     [seq_ids[-1]]).column("pos").to_pylist()
    assert set(grid["pos"]) <= set(want)
    assert at.radio[0].value == "rank"


@pytest.mark.parametrize("query", [{"window": "999999"}, {"colour": "<b>x</b>"}, {"from": "abc"}])
def test_lens_bad_params_give_a_notice(app, query):
    at = open_page(app, nav.LENS, **query)
    assert len(at.warning) == 1 and "Showing the default instead" in at.warning[0].value
    assert any("top5" in f.columns for f in chart_frames(at))


def test_residual_page_reads_writes_and_pca(app, lens_store):
    store = open_store(lens_store)
    at = open_page(app, nav.RESIDUAL)
    assert at.title[0].value == "Residual stream" and not at.warning
    stats = store.sql("SELECT writer, writer_layer, write_norm_mean FROM layer_stats "
                      "WHERE writer <> 'embedding'").to_pandas()
    by = stats.pivot(index="writer_layer", columns="writer", values="write_norm_mean")
    assert f"**{int((by['mlp'] > by['attention']).sum())} of {len(by)}**" in at.markdown[0].value
    pca = store.sql("SELECT avg(pca_share) AS s, avg(pca_share_normalized) AS sn FROM lens_positions").to_pylist()[0]
    table = at.dataframe[0].value
    assert abs(table.iloc[0, 1] - pca["s"]) < 1e-6 and abs(table.iloc[1, 1] - pca["sn"]) < 1e-6
    assert table.iloc[2, 1] == PUBLISHED_PCA["share"] and table.iloc[2, 2] == PUBLISHED_PCA["match"]
    assert len(chart_frames(at)) >= 4


def test_store_without_lens_tables_says_how_to_get_them(monkeypatch):
    monkeypatch.setenv(nav.ENV_VAR, str(FIXTURE_V2))
    notice = open_store(FIXTURE_V2).missing("logit_lens")
    assert "no logit-lens statistics" in notice
    for page in (nav.LENS, nav.RESIDUAL):
        at = open_page(AppTest.from_file(APP, default_timeout=60), page)
        assert len(at.info) == 1 and "logit-lens statistics" in at.info[0].value, page
        assert not at.error and not at.dataframe


def test_residual_page_on_the_planted_synthetic_store(tmp_path, monkeypatch):
    from dashboard.synthetic import MLP_WRITES_MORE, N_LAYERS, write_synthetic_store

    monkeypatch.setenv(nav.ENV_VAR, str(write_synthetic_store(tmp_path / "s")))
    at = open_page(AppTest.from_file(APP, default_timeout=60), nav.RESIDUAL)
    assert f"**{len(MLP_WRITES_MORE)} of {N_LAYERS}**" in at.markdown[0].value
    at = open_page(AppTest.from_file(APP, default_timeout=60), nav.LENS, window="4", colour="kl")
    grid = next(f for f in chart_frames(at) if "top5" in f.columns)
    assert set(grid["pos"]) == set(range(1, 16)) and not at.warning


def test_head_catalogue_and_page_show_direct_logit_attribution(tmp_path, monkeypatch):
    from dashboard.synthetic import INDUCTION_HEAD, write_synthetic_store

    monkeypatch.setenv(nav.ENV_VAR, str(write_synthetic_store(tmp_path / "s")))
    at = open_page(AppTest.from_file(APP, default_timeout=60), nav.HEADS, score="dla_mean")
    table = at.dataframe[0].value
    assert (int(table.iloc[0]["layer"]), int(table.iloc[0]["head"])) == INDUCTION_HEAD
    at = open_page(AppTest.from_file(APP, default_timeout=60), nav.HEAD, layer="1", head="2")
    scores = at.dataframe[0].value
    assert "dla_mean" in " ".join(map(str, scores.iloc[:, 0]))
