"""Loading models into the bridge, the hook names, and the weight views, on real models.

The neuron activation at `mlp.hook_post` is recomputed by hand from the MLP's input hook and the
weight views; writing into a view must change the model's output. `smollm2-135m` (the real
pretrained model, dequantized once into the cache) runs under the `slow` marker.
"""

from __future__ import annotations

import re
import time

import pytest
import torch
import torch.nn.functional as F

from pipeline import hooks
from pipeline.models import (
    OFFLINE_MODELS,
    LoadedModel,
    ModelError,
    _cached_snapshot,
    cache_dir,
    gpt2_config,
    hub_reachable,
    load_model,
)
from pipeline.weights import neuron_weights

FOX = "Hello world, the quick brown fox"
FOX_IDS = [15496, 995, 11, 262, 2068, 7586, 21831]


@pytest.fixture(scope="module")
def tiny() -> LoadedModel:
    return load_model("tiny-gpt2")


@pytest.fixture(scope="module")
def smollm2() -> LoadedModel:
    return load_model("smollm2-135m")


def tokens(model: LoadedModel, text: str) -> torch.Tensor:
    ids = model.tokenizer(text, add_special_tokens=False).input_ids
    return torch.tensor([[model.bos_token_id, *ids]])


def capture(model: LoadedModel, x: torch.Tensor, names: list[str]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Logits and the tensors at `names`, keyed by the name asked for (a hook function sees the
    canonical name, which differs for aliases such as mlp.hook_post -> mlp.out.hook_in)."""
    captured: dict[str, torch.Tensor] = {}

    def grab(name):
        def fn(t, hook):
            captured[name] = t.detach().clone()
        return fn

    logits = model.bridge.run_with_hooks(x, fwd_hooks=[(n, grab(n)) for n in names])
    return logits, captured


# --- tiny-gpt2 -----------------------------------------------------------------------------


def test_tiny_gpt2_is_tiny(tiny):
    assert (tiny.n_layers, tiny.d_model, tiny.d_mlp, tiny.n_heads, tiny.d_vocab) == (2, 64, 256, 4, 50257)
    assert tiny.bridge.cfg.n_ctx == 256
    assert not tiny.gated
    assert tiny.bos_token_id == 50256
    n_params = sum(p.numel() for p in tiny.bridge.original_model.parameters())
    assert n_params < 4_000_000  # 3.2M of it is the 50257 x 64 embedding
    facts = tiny.describe()
    assert facts["name"] == "tiny-gpt2" and facts["dtype"] == "float32" and facts["bos_token"] == "<|endoftext|>"
    assert set(facts["versions"]) == {"torch", "transformers", "transformer-lens"}


def test_tiny_gpt2_loads_fast():
    start = time.perf_counter()
    load_model("tiny-gpt2")
    assert time.perf_counter() - start < 10


def test_tokenizer_is_gpt2s_and_adds_nothing(tiny):
    assert tiny.tokenizer(FOX).input_ids == FOX_IDS
    assert tiny.tokenizer.decode(FOX_IDS) == FOX
    assert tiny.tokenizer.convert_ids_to_tokens(50256) == "<|endoftext|>"


def test_bridge_matches_plain_transformers(tiny):
    from transformers import GPT2LMHeadModel

    # tiny-gpt2 is documented as this config with seed 0: rebuild it independently.
    torch.manual_seed(0)
    reference = GPT2LMHeadModel(gpt2_config(tiny=True)).eval()
    reference.set_attn_implementation("eager")  # the bridge forces eager attention too
    x = tokens(tiny, FOX)
    with torch.no_grad():
        assert torch.allclose(tiny.bridge(x), reference(x).logits, atol=1e-5)


def test_mlp_post_is_gelu_of_the_mlp_input(tiny):
    w = neuron_weights(tiny)
    assert w.b_in is not None and w.W_gate is None
    x = tokens(tiny, FOX)
    for layer in range(tiny.n_layers):
        names = [hooks.mlp_in(layer), hooks.mlp_pre(layer), hooks.mlp_post(layer)]
        _, got = capture(tiny, x, names)
        assert got[hooks.mlp_post(layer)].shape == (1, x.shape[1], tiny.d_mlp)
        pre = got[hooks.mlp_in(layer)] @ w.W_in[layer] + w.b_in[layer]
        assert torch.allclose(got[hooks.mlp_pre(layer)], pre, atol=1e-5)
        # GPT-2's "gelu_new" is the tanh approximation
        assert torch.allclose(got[hooks.mlp_post(layer)], F.gelu(pre, approximate="tanh"), atol=1e-5)


def test_every_hook_name_fires(tiny):
    check_hook_names(tiny, gated=False)


def check_hook_names(model: LoadedModel, gated: bool) -> None:
    last = model.n_layers - 1
    per_layer = [hooks.resid_pre, hooks.resid_mid, hooks.resid_post, hooks.attn_out, hooks.mlp_out,
                 hooks.mlp_in, hooks.mlp_pre, hooks.mlp_post, hooks.attn_q, hooks.attn_k, hooks.attn_v,
                 hooks.attn_z, hooks.attn_scores, hooks.attn_pattern]
    if gated:
        per_layer.append(hooks.mlp_pre_linear)
    names = [f(0) for f in per_layer] + [hooks.resid_pre(1), hooks.resid_post(last), hooks.embed(),
                                         hooks.ln_final_in(), hooks.ln_final_scale(), hooks.ln_final_out(),
                                         hooks.unembed()]
    if not gated:
        names.append(hooks.pos_embed())
    assert all(n in model.bridge.hook_dict for n in names)
    x = tokens(model, FOX)
    logits, got = capture(model, x, names)
    assert set(got) == set(names)
    batch, pos = x.shape
    assert got[hooks.mlp_post(0)].shape == (batch, pos, model.d_mlp)
    assert got[hooks.attn_pattern(0)].shape == (batch, model.n_heads, pos, pos)
    assert torch.allclose(got[hooks.attn_pattern(0)].sum(-1), torch.ones(batch, model.n_heads, pos), atol=1e-5)
    assert torch.equal(got[hooks.resid_post(0)], got[hooks.resid_pre(1)])
    assert torch.equal(got[hooks.resid_post(last)], got[hooks.ln_final_in()])
    decomposed = got[hooks.resid_pre(0)] + got[hooks.attn_out(0)] + got[hooks.mlp_out(0)]
    assert torch.allclose(decomposed, got[hooks.resid_post(0)], atol=1e-5)
    assert torch.equal(got[hooks.unembed()], logits)


def test_weight_views_are_live(tiny):
    w = neuron_weights(tiny)
    assert [W.shape for W in w.W_in] == [(64, 256)] * 2
    assert [W.shape for W in w.W_out] == [(256, 64)] * 2
    assert w.W_U.shape == (64, 50257) and w.ln_final_scale.shape == (64,)
    x = tokens(tiny, FOX)
    before = tiny.bridge(x)
    for W in (w.W_in[1], w.W_out[0], w.ln_final_scale, w.W_U):
        saved = W.clone()
        with torch.no_grad():
            W.mul_(2.0)
        assert not torch.allclose(tiny.bridge(x), before), "writing into a weight view did not reach the model"
        with torch.no_grad():
            W.copy_(saved)
    assert torch.equal(tiny.bridge(x), before)


def test_planted_neuron_output(tiny):
    """A neuron whose output row is planted along one token's unembedding raises that token's logit."""
    w = neuron_weights(tiny)
    x = tokens(tiny, FOX)
    _, got = capture(tiny, x, [hooks.mlp_post(1)])
    act = got[hooks.mlp_post(1)][0, -1]
    neuron = int(act.argmax())
    target = 4242
    before = tiny.bridge(x)[0, -1]
    saved = w.W_out[1][neuron].clone()
    with torch.no_grad():
        w.W_out[1][neuron] = 50.0 * w.W_U[:, target] / w.W_U[:, target].norm()
    after = tiny.bridge(x)[0, -1]
    with torch.no_grad():
        w.W_out[1][neuron] = saved
    assert act[neuron] > 0
    assert (after - before)[target] == (after - before).max()


def test_bfloat16(tmp_path):
    model = load_model("tiny-gpt2", dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16 and model.describe()["dtype"] == "bfloat16"
    _, got = capture(model, tokens(model, FOX), [hooks.mlp_post(0)])
    assert got[hooks.mlp_post(0)].dtype == torch.bfloat16
    assert neuron_weights(model).W_in[0].dtype == torch.bfloat16


def test_no_grad_eval_mode(tiny):
    assert not tiny.bridge.training and not tiny.bridge.original_model.training
    assert not any(p.requires_grad for p in tiny.bridge.original_model.parameters())


def test_fresh_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("MECHSCOPE_CACHE", str(tmp_path / "cache"))
    assert cache_dir() == tmp_path / "cache"
    model = load_model("tiny-gpt2")
    folders = list((tmp_path / "cache" / "tokenizers").iterdir())
    assert [f.name.startswith("gpt2-") for f in folders] == [True]  # no half-written folder left beside it
    assert model.bridge.tokenizer.name_or_path == str(folders[0])  # the bridge re-loaded it from there
    assert model.tokenizer(FOX).input_ids == FOX_IDS


# --- gpt2-random ---------------------------------------------------------------------------


def test_gpt2_random_has_gpt2_small_shape():
    model = load_model("gpt2-random")
    assert (model.n_layers, model.d_model, model.d_mlp, model.n_heads, model.d_vocab) == (12, 768, 3072, 12, 50257)
    assert model.tokenizer(FOX).input_ids == FOX_IDS
    assert model.bos_token_id == 50256
    w = neuron_weights(model)
    assert len(w.W_in) == 12 and w.W_in[11].shape == (768, 3072)
    # seeded: the same weights on every load
    again = neuron_weights(load_model("gpt2-random"))
    assert torch.equal(w.W_in[3], again.W_in[3]) and torch.equal(w.W_out[7], again.W_out[7])


# --- names that cannot be loaded -----------------------------------------------------------


@pytest.mark.parametrize("name", ["gpt2", "EleutherAI/pythia-70m", "no-such-model", "./not/a/folder", ""])
def test_unloadable_name_fails_fast_and_clearly(name):
    if name != "no-such-model" and (hub_reachable() or _cached_snapshot(name)):
        pytest.skip(f"{name} can be loaded here")
    start = time.perf_counter()
    with pytest.raises(ModelError) as raised:
        load_model(name)
    elapsed = time.perf_counter() - start
    message = str(raised.value)
    assert "\n" not in message
    assert not name or repr(name) in message
    assert all(offline in message for offline in OFFLINE_MODELS)
    assert elapsed < 10, f"failing took {elapsed:.1f} s"


def test_folder_without_config_is_explained(tmp_path):
    with pytest.raises(ModelError, match="config.json"):
        load_model(str(tmp_path))


def test_local_folder_loads(tmp_path, tiny):
    from transformers import GPT2LMHeadModel

    torch.manual_seed(1)
    GPT2LMHeadModel(gpt2_config(tiny=True)).save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    model = load_model(str(tmp_path))
    assert model.n_layers == 2 and model.describe()["source"].startswith("local folder")
    assert model.tokenizer(FOX).input_ids == FOX_IDS


# --- smollm2-135m (the real model) ---------------------------------------------------------


@pytest.mark.slow
def test_smollm2_shape_and_cache(smollm2):
    assert smollm2.gated
    assert (smollm2.n_layers, smollm2.d_model, smollm2.d_mlp, smollm2.n_heads, smollm2.d_vocab) == (
        30, 576, 1536, 9, 49152)
    assert smollm2.tokenizer.convert_ids_to_tokens(smollm2.bos_token_id) == "<|endoftext|>"
    cached = [p for p in (cache_dir() / "models").iterdir() if p.name.startswith("smollm2-135m")]
    assert cached and all((p / "config.json").is_file() for p in cached)
    assert not [p for p in (cache_dir() / "models").iterdir() if re.match(r"\.smollm2", p.name)]
    assert smollm2.describe()["architecture"] == "LlamaForCausalLM"


@pytest.mark.slow
def test_smollm2_knows_paris(smollm2):
    x = tokens(smollm2, "The capital of France is")
    with torch.no_grad():
        logits = smollm2.bridge(x)
    assert smollm2.tokenizer.decode(int(logits[0, -1].argmax())) == " Paris"


@pytest.mark.slow
def test_smollm2_mlp_post_is_silu_gate_times_up(smollm2):
    w = neuron_weights(smollm2)
    assert w.W_gate is not None and w.b_in is None
    assert w.W_in[0].shape == w.W_gate[0].shape == (576, 1536) and w.W_out[0].shape == (1536, 576)
    x = tokens(smollm2, "The capital of France is Paris, and the capital of Italy is Rome.")
    for layer in (0, 17, 29):
        names = [hooks.mlp_in(layer), hooks.mlp_pre(layer), hooks.mlp_pre_linear(layer), hooks.mlp_post(layer),
                 f"blocks.{layer}.ln2.hook_normalized"]
        _, got = capture(smollm2, x, names)
        mlp_input = got[hooks.mlp_in(layer)]
        gate, up = mlp_input @ w.W_gate[layer], mlp_input @ w.W_in[layer]
        assert torch.allclose(got[hooks.mlp_pre(layer)], gate, atol=1e-4)
        assert torch.allclose(got[hooks.mlp_pre_linear(layer)], up, atol=1e-4)
        assert torch.allclose(got[hooks.mlp_post(layer)], F.silu(gate) * up, atol=1e-4)
        # ln2.hook_normalized is before the norm's weight: not the MLP's input
        assert not torch.allclose(got[f"blocks.{layer}.ln2.hook_normalized"], mlp_input, atol=1e-3)


@pytest.mark.slow
def test_smollm2_every_hook_name_fires(smollm2):
    check_hook_names(smollm2, gated=True)


@pytest.mark.slow
def test_smollm2_weight_views_are_live(smollm2):
    w = neuron_weights(smollm2)
    x = tokens(smollm2, "The capital of France is")
    before = smollm2.bridge(x)
    for W in (w.W_gate[3], w.W_in[3], w.W_out[3], w.ln_final_scale):
        saved = W.clone()
        with torch.no_grad():
            W.mul_(1.5)
        assert not torch.allclose(smollm2.bridge(x), before)
        with torch.no_grad():
            W.copy_(saved)
    assert torch.equal(smollm2.bridge(x), before)


@pytest.mark.slow
def test_smollm2_bfloat16():
    model = load_model("smollm2-135m", dtype=torch.bfloat16)
    x = tokens(model, "The capital of France is")
    with torch.no_grad():
        logits = model.bridge(x)
    assert logits.dtype == torch.bfloat16
    assert model.tokenizer.decode(int(logits[0, -1].argmax())) == " Paris"
