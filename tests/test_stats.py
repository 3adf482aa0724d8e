"""Streaming accumulators against brute force on hand-built activation streams.

No model here: activations are random tensors with planted ties, BOS rows, and values in every
histogram bin, so each statistic can be recomputed directly from the whole stream.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.stats import StatsConfig, native, registry
from pipeline.stats.batch import LayerActs, TokenBatch
from pipeline.stats.bins import N_BINS, ZERO_BIN, bin_index, bin_ranges
from pipeline.stats.contract import StatContext
from pipeline.stats.deferred import DEFERRED
from pipeline.stats.keys import decode_top, encode_sample, encode_top, position_hash
from pipeline.stats.sync import SYNC_FREE_ENV

L, N, S = 2, 6, 16
CONFIG = StatsConfig(seq_len=S, top_k=3, records=7, context_before=4, context_after=2, hist_sample_shift=1)


def make_stream(n_seqs: int = 24, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    acts = torch.randn(L, n_seqs, S, N, generator=g) * 3
    acts = torch.where(acts.abs() < 1, acts / 500, acts)  # some near-zero values
    acts[:, 3] = acts[:, 1]  # a whole repeated window: exact ties at many positions
    acts[0, 5, 7, 2] = acts[0, 9, 7, 2] = acts[0].max() + 1  # a tie at the very top
    acts[1, :, :, 4] = 0.5  # a constant neuron: all ties
    is_bos = torch.zeros(n_seqs, S, dtype=torch.bool)
    is_bos[:, 0] = True
    is_bos[::3, 9] = True  # document separators
    return acts, is_bos


# Every test that takes `use_native` runs three times: the torch accumulators (their CPU paths),
# the native kernels, and the torch accumulators' fixed-size paths that a GPU takes (no host sync).
IMPLS = [pytest.param(False, id="torch"),
         pytest.param(True, id="native", marks=pytest.mark.skipif(native.library() is None, reason="no C compiler"))]
SYNC_FREE = pytest.param("sync-free", id="sync-free")


@pytest.fixture(params=[*IMPLS, SYNC_FREE])
def use_native(request, monkeypatch):
    if request.param == "sync-free":
        monkeypatch.setenv(SYNC_FREE_ENV, "1")
        return False
    return request.param


def make_neuron_stats(n_neurons: int, use_native: bool) -> list:
    ctx = StatContext(CONFIG, n_layers=L, n_heads=1, d_model=8, d_mlp=n_neurons, d_vocab=16, use_native=use_native)
    return [make(ctx) for make in registry.NEURON_STATISTICS]


def run(acts, is_bos, seqs: range, batch_size: int, use_native: bool = False, stats=None):
    stats = stats or make_neuron_stats(acts.shape[-1], use_native)
    for lo in range(seqs.start, seqs.stop, batch_size):
        hi = min(lo + batch_size, seqs.stop)
        batch = TokenBatch.build(lo, is_bos[lo:hi], CONFIG.hist_sample_shift)
        for layer in range(L):
            x = LayerActs(layer, acts[layer, lo:hi].contiguous(), batch)
            for s in stats:
                s.update(x)
    return stats


def finalize(stats):
    out: dict = {}
    for s in stats:
        for table, cols in s.finalize().items():
            for k, v in cols.items():
                if isinstance(v, DEFERRED):  # token requests: resolved by the build, tested there
                    continue
                out.setdefault(table, {}).setdefault(k, []).append(v)
    return out


def brute_rows(acts, is_bos):
    """Every valid (layer, neuron, global position, value)."""
    n_seqs = acts.shape[1]
    pos = torch.arange(n_seqs * S).reshape(n_seqs, S)
    valid = ~is_bos
    return pos[valid], acts[:, valid, :]  # [valid], [layer valid neuron]


def test_key_order_is_value_then_earlier_position():
    keys = encode_top(torch.tensor([1.0, 1.0, 2.0, -0.0, 0.0]), torch.tensor([5, 3, 9, 1, 2]))
    order = torch.argsort(keys, descending=True).tolist()
    assert order == [2, 1, 0, 3, 4]  # 2.0; then the 1.0 at position 3 before position 5; zeros tie
    values, positions = decode_top(keys)
    assert values.tolist() == [1.0, 1.0, 2.0, 0.0, 0.0] and positions.tolist() == [5, 3, 9, 1, 2]


def test_bin_index_matches_bin_ranges():
    x = torch.cat([torch.randn(20000) * 20, torch.randn(2000) / 100, torch.tensor([0.0, -0.0, 64.0, -64.0])])
    bins = bin_index(x).tolist()
    ranges = bin_ranges()
    for v, b in zip(x.tolist(), bins, strict=True):
        lo, hi = ranges[b]
        if b == ZERO_BIN:
            assert abs(v) < hi
        elif v >= 0:
            assert lo <= v < hi
        else:
            assert lo < v <= hi


@pytest.mark.parametrize("batch_size", [1, 5, 24])
def test_top_examples_and_records_equal_brute_force(batch_size, use_native):
    acts, is_bos = make_stream()
    stats = run(acts, is_bos, range(24), batch_size, use_native)
    top = next(s for s in stats if s.name == "top")
    positions, values = brute_rows(acts, is_bos)
    for layer in range(L):
        for n in range(N):
            v = values[layer, :, n]
            order = sorted(range(len(v)), key=lambda i: (-float(v[i]), int(positions[i])))
            # examples: at most one per window, its strongest position (the first in this order)
            seen, distinct = set(), []
            for i in order:
                if int(positions[i]) // S not in seen:
                    seen.add(int(positions[i]) // S)
                    distinct.append(i)
            for pool, k, want in ((top.examples[layer], CONFIG.top_k, distinct),
                                  (top.records[layer], CONFIG.records, order)):
                got_v, got_p = decode_top(pool.state_dict()["keys"][n])
                assert got_p.tolist() == [int(positions[i]) for i in want[:k]]
                assert got_v.tolist() == [float(v[i]) for i in want[:k]]
            assert len({p // S for p in decode_top(top.examples[layer].state_dict()["keys"][n])[1].tolist()}) \
                == CONFIG.top_k


def test_top_example_contexts_are_the_neurons_activations(use_native):
    acts, is_bos = make_stream()
    stats = run(acts, is_bos, range(24), 4, use_native)
    rows = finalize(stats)["neuron_examples"]
    w = CONFIG.window.width(S)
    cols = {k: [x for part in v for x in part] for k, v in rows.items()}
    checked = 0
    for layer, n, seq, pos, act, start, ctx in zip(cols["layer"], cols["neuron"], cols["seq_id"], cols["pos"],
                                                    cols["activation"], cols["ctx_start"], cols["context_acts"],
                                                    strict=True):
        assert acts[layer, seq, pos, n] == act
        assert start <= pos < start + w and 0 <= start <= S - w
        want = acts[layer, seq, start : start + w, n].clone()
        want[is_bos[seq, start : start + w]] = float("nan")
        np.testing.assert_allclose(ctx, want.half().float().numpy(), equal_nan=True)
        checked += 1
    assert checked > L * N * CONFIG.top_k  # top rows and band rows


def test_moments_equal_direct_computation(use_native):
    acts, is_bos = make_stream()
    cols = finalize(run(acts, is_bos, range(24), 7, use_native))["neurons"]
    _, values = brute_rows(acts, is_bos)
    v = values.permute(0, 2, 1).reshape(L * N, -1).double()
    np.testing.assert_array_equal(cols["count"][0], np.full(L * N, v.shape[1]))
    np.testing.assert_allclose(cols["mean"][0], v.mean(1).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cols["std"][0], v.std(1, unbiased=False).numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(cols["min"][0], v.min(1).values.float().numpy())
    np.testing.assert_array_equal(cols["max"][0], v.max(1).values.float().numpy())
    np.testing.assert_allclose(cols["density_frac"][0], (v > 0).double().mean(1).numpy(), rtol=1e-6)


def test_histogram_and_band_samples_equal_brute_force(use_native):
    acts, is_bos = make_stream()
    stats = run(acts, is_bos, range(24), 5, use_native)
    cols = finalize(stats)
    positions, values = brute_rows(acts, is_bos)
    sampled = (position_hash(positions) & 1) == 0
    assert 0.3 < sampled.float().mean() < 0.7
    hist = np.stack(cols["neurons"]["hist_counts"][0])
    bands = {k: np.concatenate(v) for k, v in cols["neuron_examples"].items() if k != "context_acts"}
    band_rows = {(int(a), int(b), int(c)): i for i, (a, b, c, k) in
                 enumerate(zip(bands["layer"], bands["neuron"], bands["rank"], bands["kind"], strict=True))
                 if k == "band"}
    ranges = bin_ranges()
    for layer in range(L):
        for n in range(N):
            v = values[layer, sampled, n]
            b = bin_index(v)
            np.testing.assert_array_equal(hist[layer * N + n], np.bincount(b.numpy(), minlength=N_BINS))
            keys = encode_sample(positions[sampled])
            for bin_ in range(N_BINS):
                members = b == bin_
                row = band_rows.get((layer, n, bin_))
                if bin_ == ZERO_BIN or not members.any():
                    assert row is None
                    continue
                best = int(positions[sampled][members][keys[members].argmin()])
                assert (bands["seq_id"][row] * S + bands["pos"][row]) == best
                lo, hi = ranges[bin_]
                assert lo <= bands["activation"][row] <= hi


def _assert_same(a, b):
    ta, tb = finalize(a), finalize(b)
    assert ta.keys() == tb.keys()
    for table in ta:
        for col in ta[table]:
            x = [np.asarray(list(v), dtype=np.float64) if col in ("hist_counts", "context_acts") else v
                 for v in ta[table][col]]
            y = [np.asarray(list(v), dtype=np.float64) if col in ("hist_counts", "context_acts") else v
                 for v in tb[table][col]]
            for xa, ya in zip(x, y, strict=True):
                if col in ("mean", "std"):
                    # per-batch partial sums are float32: equal up to their rounding
                    np.testing.assert_allclose(xa, ya, rtol=1e-6, atol=1e-6)
                else:
                    np.testing.assert_array_equal(np.asarray(xa), np.asarray(ya), err_msg=f"{table}.{col}")


def test_two_halves_merged_equal_one_pass(use_native):
    acts, is_bos = make_stream()
    whole = run(acts, is_bos, range(24), 4, use_native)
    first, second = run(acts, is_bos, range(0, 11), 4, use_native), run(acts, is_bos, range(11, 24), 3, use_native)
    for mine, theirs in zip(second, first, strict=True):  # merge order must not matter either
        mine.merge(theirs)
    _assert_same(whole, second)


def restored(stats, use_native: bool) -> list:
    """Fresh accumulators loaded from the state dicts of `stats`, as a checkpoint restores them."""
    fresh = make_neuron_stats(N, use_native)
    for s, p in zip(fresh, stats, strict=True):
        s.load_state_dict(p.state_dict())
    return fresh


def test_state_dict_round_trip_then_merge_equals_one_pass(use_native):
    acts, is_bos = make_stream()
    whole = run(acts, is_bos, range(24), 4, use_native)
    part = run(acts, is_bos, range(0, 12), 4, use_native)
    resumed = restored(part, use_native)
    rest = run(acts, is_bos, range(12, 24), 4, use_native)
    for s, r in zip(resumed, rest, strict=True):
        s.merge(r)
    _assert_same(whole, resumed)


@pytest.mark.parametrize("first_native", [False, True], ids=["from-torch", "from-native"])
def test_checkpoint_then_continue_equals_one_pass_across_implementations(first_native, use_native):
    """A checkpoint from either implementation, loaded into either, then fed the rest of the stream
    (as `--resume` does), ends where one uninterrupted pass ends."""
    if first_native and native.library() is None:
        pytest.skip("no C compiler")
    acts, is_bos = make_stream()
    whole = run(acts, is_bos, range(24), 4, use_native)
    part = run(acts, is_bos, range(0, 12), 4, first_native)
    resumed = restored(part, use_native)
    _assert_same(whole, run(acts, is_bos, range(12, 24), 4, use_native, stats=resumed))


@pytest.mark.skipif(native.library() is None, reason="no C compiler")
def test_native_kernels_equal_the_torch_accumulators():
    acts, is_bos = make_stream(n_seqs=40, seed=3)
    acts[0, :, :, 1] = torch.where(torch.rand(40, S) < 0.5, -0.0, 0.0)  # signed zeros must tie, as in keys.py
    _assert_same(run(acts, is_bos, range(40), 6, False), run(acts, is_bos, range(40), 6, True))
    # wide enough that the kernels split the neurons in tiles across threads (and not a whole number of tiles)
    wide = torch.randn(L, 20, S, 3 * native.TILE + 77, generator=torch.Generator().manual_seed(5)) * 2
    wide_bos = make_stream(n_seqs=20)[1]
    _assert_same(run(wide, wide_bos, range(20), 3, False), run(wide, wide_bos, range(20), 3, True))


def test_tensor_binning_equals_the_reference_bin_of():
    from store.histogram_bins import bin_of

    x = torch.cat([torch.randn(5000) * 30, torch.randn(500) / 50,
                   torch.tensor([0.0, -0.0, 64.0, -64.0, 2.0**-6, -(2.0**-6), float("inf"), float("-inf")])])
    assert bin_index(x).tolist() == [bin_of(v) for v in x.tolist()]
