"""The live model (`pipeline/live.py`): interventions against computations by hand, generation
against the same model loaded separately with plain transformers, and many threads at once.

tiny-gpt2 (loaded once for the module; no test changes its weights); generation also on smollm2
(slow), against `AutoModelForCausalLM` loaded from the same files, never the bridge's own model.
"""

from __future__ import annotations

import random
import threading

import pytest
import torch

from pipeline import hooks
from pipeline.live import Intervention, LiveError, LiveModel
from pipeline.models import _seeded_gpt2, gpt2_config, load_model

PROMPT = "The capital of France is Paris, and the capital of Italy is"


@pytest.fixture(scope="module")
def live():
    return LiveModel(load_model("tiny-gpt2"))


@pytest.fixture(scope="module")
def ids(live):
    token_ids, cut = live.encode(PROMPT)
    assert not cut and token_ids[0] == live.model.bos_token_id
    return token_ids


def close(a: torch.Tensor, b: torch.Tensor, atol: float = 1e-5) -> bool:
    return bool(torch.allclose(a, b, atol=atol, rtol=1e-5))


def test_zero_ablating_a_head_equals_removing_its_output_by_hand(live, ids):
    layer, head = 1, 2
    ablated = live.run(ids, [Intervention("zero", "head", layer, head)]).logits
    W_O = live.model.bridge.blocks[layer].attn.W_O.detach()[head]  # [d_head d_model]
    z = live.run(ids, capture=[hooks.attn_z(layer)]).cache[hooks.attn_z(layer)][:, head]  # [pos d_head]

    def remove(out, hook=None):  # by hand: the head's term z_h W_O[h] taken out of the attention output
        return out - (z @ W_O).to(out.dtype)[None]

    with live.lock, live.model.bridge.hooks(fwd_hooks=[(hooks.attn_out(layer), remove)]):
        by_hand = live.model.bridge(torch.tensor([ids]))[0].float()
    plain = live.run(ids).logits
    assert close(ablated, by_hand, atol=1e-4) and not close(ablated, plain, atol=1e-3)


def test_mean_ablating_a_neuron_sets_its_activation(live, ids):
    name = hooks.mlp_post(0)
    run = live.run(ids, [Intervention("mean", "neuron", 0, 7, value=0.25)], capture=[name])
    assert (run.cache[name][:, 7] == 0.25).all()
    assert not close(run.cache[name][:, 6], torch.full_like(run.cache[name][:, 6], 0.25))


def test_patching_the_full_residual_reproduces_the_other_prompt(live, ids):
    other, _ = live.encode("A cat sat on the mat because it was warm and the dog was")
    n = min(len(ids), len(other))
    a, b = ids[:n], other[:n]
    target = live.run(b).logits[-1]
    good, bad = int(target.argmax()), int(live.run(a).logits[-1].argmax())
    grid = live.patch_grid(b, a, good, bad, layers=[0], positions=list(range(n)))
    # patching every position at once at layer 0: the run on a becomes the run on b
    clean = live.run(b, capture=[hooks.resid_pre(0)]).cache[hooks.resid_pre(0)]

    def all_positions(resid, hook=None):
        return clean[None].to(resid.dtype)

    with live.lock, live.model.bridge.hooks(fwd_hooks=[(hooks.resid_pre(0), all_positions)]):
        patched = live.model.bridge(torch.tensor([a]))[0, -1].float()
    assert close(patched, target, atol=1e-4)
    # the grid: each cell is the logit difference of a run patched at that one position, by hand
    assert grid.shape == (1, n)
    by_row = []
    for p in range(n):
        def one(resid, hook=None, p=p):
            resid = resid.clone()
            resid[:, p] = clean[p].to(resid.dtype)
            return resid
        with live.lock, live.model.bridge.hooks(fwd_hooks=[(hooks.resid_pre(0), one)]):
            last = live.model.bridge(torch.tensor([a]))[0, -1].float()
        by_row.append(float(last[good] - last[bad]))
    assert torch.allclose(grid[0], torch.tensor(by_row), atol=1e-3)


def test_patch_grid_refuses_prompts_of_different_lengths(live, ids):
    with pytest.raises(LiveError, match="as many tokens"):
        live.patch_grid(ids, ids[:-1], 1, 2)


def test_steering_of_scale_zero_changes_nothing_and_a_plain_run_after_is_clean(live, ids):
    plain = live.run(ids).logits
    vector = tuple(float(x) for x in torch.randn(live.model.d_model, generator=torch.Generator().manual_seed(0)))
    zero = live.run(ids, [Intervention("steer", "resid", 1, value=0.0, vector=vector)]).logits
    assert torch.equal(zero, plain)
    steered = live.run(ids, [Intervention("steer", "resid", 1, value=8.0, vector=vector)]).logits
    assert not close(steered, plain, atol=1e-3)
    ablated = live.run(ids, [Intervention("zero", "head", 0, 1), Intervention("zero", "neuron", 1, 3)]).logits
    assert not close(ablated, plain, atol=1e-4)
    assert torch.equal(live.run(ids).logits, plain)  # no hook left behind


def test_interventions_are_data_and_checked(live):
    iv = Intervention("steer", "resid", 1, value=2.0, vector=(0.5,) * live.model.d_model)
    assert Intervention.from_dict(iv.to_dict()) == iv and iv.label() == "steer L1 x 2"
    assert Intervention("zero", "head", 1, 2).label() == "zero L1H2"
    for bad, message in ((Intervention("zero", "head", 9, 0), "layer 9"),
                         (Intervention("zero", "head", 0, 4), "head 4"),
                         (Intervention("zero", "neuron", 0, -1), "neuron -1"),
                         (Intervention("steer", "resid", 0, vector=(1.0,)), "steering vector"),
                         (Intervention("melt", "head", 0, 0), "unknown")):
        with pytest.raises(LiveError, match=message):
            live.check([bad])


def test_generation_equals_plain_transformers_greedy(live, ids):
    hf = _seeded_gpt2(gpt2_config(tiny=True), torch.float32)[0].eval()  # the same weights, loaded apart
    want = hf.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                       max_new_tokens=12, do_sample=False, pad_token_id=live.model.bos_token_id)[0, len(ids):]
    assert live.generate(ids, 12) == want.tolist()
    steered = live.generate(ids, 12, [Intervention("steer", "resid", 0, value=50.0,
                                                    vector=tuple([1.0] * live.model.d_model))])
    assert len(steered) == 12


@pytest.mark.slow
def test_smollm2_generation_equals_plain_transformers_greedy():
    from transformers import AutoModelForCausalLM

    from pipeline.models import cache_dir

    live = LiveModel(load_model("smollm2-135m"))
    ids, _ = live.encode("The capital of France is")
    folder = next((cache_dir() / "models").glob("smollm2-135m-*"))
    hf = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    want = hf.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                       max_new_tokens=8, do_sample=False)[0, len(ids):]
    got = live.generate(ids, 8)
    assert got == want.tolist(), (live.model.tokenizer.decode(got), live.model.tokenizer.decode(want))


def test_many_threads_never_see_each_others_interventions(live, ids):
    """Mixed plain and intervened calls from several threads: every plain result equals the reference."""
    plain = live.run(ids).logits
    ablations = [Intervention("zero", "head", layer, head) for layer in range(2) for head in range(4)]
    wrong, done = [], []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(125):
            if rng.random() < 0.5:
                live.run(ids, [rng.choice(ablations)])
            else:
                got = live.run(ids).logits
                if not torch.equal(got, plain):
                    wrong.append(seed)
            done.append(1)

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(done) == 1000 and not wrong


def test_head_patching_grid_equals_patching_each_head_by_hand(live):
    a, _ = live.encode("The cat sat on the mat")
    b, _ = live.encode("The dog sat on the rug")
    assert len(a) == len(b)
    good, bad = 5, 6
    grid = live.patch_heads(b, a, good, bad)
    assert grid.shape == (live.model.n_layers, live.model.n_heads)
    for layer in range(live.model.n_layers):
        z_clean = live.run(b, capture=[hooks.attn_z(layer)]).cache[hooks.attn_z(layer)]
        for head in range(live.model.n_heads):
            def one(z, hook=None, head=head, z_clean=z_clean):
                z = z.clone()
                z[0, :, head] = z_clean[:, head].to(z.dtype)
                return z
            with live.lock, live.model.bridge.hooks(fwd_hooks=[(hooks.attn_z(layer), one)]):
                last = live.model.bridge(torch.tensor([a]))[0, -1].float()
            assert abs(float(grid[layer, head]) - float(last[good] - last[bad])) < 1e-3
