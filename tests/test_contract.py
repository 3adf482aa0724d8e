"""The statistic contract: a statistic added through the registry alone reaches the store, and
stores from before the contract (layout 2, a fixed set of tables) still open everywhere."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from pipeline import hooks
from pipeline.build import BuildParams, build
from pipeline.cli import main
from pipeline.corpus import iter_documents
from pipeline.models import load_model
from pipeline.stats import StatsConfig, registry
from pipeline.stats.contract import StatContext, Statistic
from pipeline.windows import iter_windows
from store import open_store, verify_store
from store.schema import Column, Table

FIXTURE_V2 = Path(__file__).parent / "fixtures" / "store_v2"

TOY_TABLE = Table(
    "toy_resid",
    "Per layer: positions seen and the sum of the residual stream's first coordinate entering the block.",
    (Column("layer", pa.int16(), "Block."), Column("positions", pa.int64(), "Non-BOS positions seen."),
     Column("first_coord_sum", pa.float64(), "Sum of resid_pre[..., 0] over those positions.")),
    ("layer",),
)


class ToyResid:
    """A statistic the build has never heard of: it reads `resid_pre`, a hook no other statistic uses."""

    name = "toy_resid"
    tables = (TOY_TABLE,)

    def __init__(self, n_layers: int):
        self.positions = torch.zeros(n_layers, dtype=torch.int64)
        self.total = torch.zeros(n_layers, dtype=torch.float64)

    @classmethod
    def create(cls, ctx: StatContext) -> ToyResid:
        return cls(ctx.n_layers)

    def hook_points(self):
        return tuple(hooks.point("resid_pre", layer) for layer in range(len(self.total)))

    def update(self, x) -> None:
        assert x.point.kind == "resid_pre"
        keep = ~x.batch.is_bos
        self.positions[x.layer] += int(keep.sum())
        self.total[x.layer] += x.acts[..., 0][keep].double().sum()

    def merge(self, other: ToyResid) -> None:
        self.positions += other.positions
        self.total += other.total

    def state_dict(self):
        return {"positions": self.positions, "total": self.total}

    def load_state_dict(self, state) -> None:
        self.positions, self.total = state["positions"], state["total"]

    def finalize(self):
        return {"toy_resid": {"layer": np.arange(len(self.total), dtype=np.int16),
                              "positions": self.positions.numpy(), "first_coord_sum": self.total.numpy()}}


P = BuildParams(model="tiny-gpt2", corpus="wiki-vital", max_tokens=512,
                stats=StatsConfig(seq_len=32, top_k=3, records=4), batch_size=4)


def test_toy_statistic_through_the_registry_alone_reaches_the_store(tmp_path, monkeypatch):
    assert isinstance(ToyResid(2), Statistic)
    monkeypatch.setattr(registry, "STATISTICS", (*registry.STATISTICS, ToyResid.create))
    store = open_store(build(P, tmp_path / "store", progress=False))
    assert "toy_resid" in store.tables()
    got = store.sql("SELECT layer, positions, first_coord_sum FROM toy_resid ORDER BY layer").to_pydict()

    model = load_model(P.model)
    positions, total = np.zeros(model.n_layers, np.int64), np.zeros(model.n_layers)
    for b in iter_windows(iter_documents(P.corpus), model.tokenizer, model.bos_token_id, P.stats.seq_len,
                          P.max_tokens, P.batch_size):
        _, cache = model.bridge.run_with_cache(torch.from_numpy(b.token_ids).long())
        keep = torch.from_numpy(b.doc_ids >= 0)
        for layer in range(model.n_layers):
            positions[layer] += int(keep.sum())
            total[layer] += float(cache[hooks.resid_pre(layer)][..., 0][keep].double().sum())
    assert got["positions"] == positions.tolist()
    np.testing.assert_allclose(got["first_coord_sum"], total, rtol=1e-5)
    assert verify_store(store.path) == []
    assert store.manifest["tables"]["toy_resid"]["version"] == 1
    assert store.sql("SELECT count(*) AS n FROM neurons").to_pylist()[0]["n"] == model.n_layers * model.d_mlp


def test_old_store_opens_in_info_query_and_verify(tmp_path, capsys):
    store = tmp_path / "old"
    shutil.copytree(FIXTURE_V2, store)
    assert main(["info", str(store)]) == 0
    out = capsys.readouterr().out
    assert "neurons 512" in out and "lacks" in out and "head statistics" in out
    assert main(["query", str(store), "SELECT count(*) AS n FROM activations", "--format", "csv"]) == 0
    assert capsys.readouterr().out.splitlines() == ["n", "2048"]
    assert main(["verify", str(store)]) == 0
    s = open_store(store)
    # its `neurons` is version 1 (before after_bos_frac, fires_on_tokens, strong_frac, explanation): named, not read
    assert s.tables() == ["documents", "tokens", "activations"]  # neuron_examples: version 2, before context_display
    assert "no head statistics" in s.missing("heads") and "mechscope build" in s.missing("heads")
    assert "version 1, older than this mechscope reads (2)" in s.missing("neurons")
    assert s.missing("activations") is None


def test_a_table_in_another_version_is_named_not_read(tmp_path):
    import json

    store = tmp_path / "old"
    shutil.copytree(FIXTURE_V2, store)
    m = json.loads((store / "manifest.json").read_text())
    m["schema_version"] = 3
    for entry in m["tables"].values():
        entry["version"] = 1  # neuron_examples is version 3 in this code
    (store / "manifest.json").write_text(json.dumps(m))
    s = open_store(store)
    assert not s.has("neuron_examples") and s.has("activations")
    assert "version 1, older than this mechscope reads (3)" in s.missing("neuron_examples")
    assert verify_store(store) == []


@pytest.mark.parametrize("version", [1, 99])
def test_layouts_outside_the_range_are_refused(tmp_path, version, capsys):
    import json

    store = tmp_path / "s"
    shutil.copytree(FIXTURE_V2, store)
    m = json.loads((store / "manifest.json").read_text())
    (store / "manifest.json").write_text(json.dumps({**m, "schema_version": version}))
    assert main(["info", str(store)]) == 2
    assert ("rebuild" if version == 1 else "upgrade") in capsys.readouterr().err
