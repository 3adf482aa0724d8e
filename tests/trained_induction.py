"""A small attention-only 2-layer GPT-2 trained in the test session, with a known induction circuit.

Not a test module: a helper for tests that need a real (trained) model whose heads are known.

The model: a Hugging Face `GPT2LMHeadModel`, 2 layers, d_model 64, 4 heads of 16, 32 positions,
GPT-2's full 50257-token vocabulary, saved with GPT-2's tokenizer, so that
`pipeline.models.load_model(str(folder))` loads it like any local folder. It is attention-only:
every MLP's `c_fc` and `c_proj` weights and biases are zero (and frozen during training), so each
MLP adds exactly 0 to the residual stream while the model stays a plain GPT2LMHeadModel.

The vocabulary actually used: `train_vocab()` = 200 ordinary word tokens (" the", " and", ...;
chosen so that a text of such words tokenizes back to exactly those ids) plus `<|endoftext|>` as
BOS. Training runs on these 201 rows of the (tied) embedding only, so the 50257-row matrix never
enters a step. Then every other row is set to one shared vector `rest`: GPT-2 has no
unembedding bias, so those 50056 tokens share the logit h.rest, and their softmax mass is
exactly that of one logit log(50056) + h.rest, which keeps the full-vocabulary loss cheap.
(Tied weights: as inputs, all those tokens embed to `rest` too; feed the model trained words.)
Training has two phases:
1. the circuit: `STEPS` steps of Adam with a softmax over the 201 trained tokens (with the other
   tokens in the softmax from the start, the push to lift 201 logits above 50056 others swamps
   the early steps and the circuit does not form in this budget);
2. calibration: `CAL_STEPS` steps training only `rest` and the final layer norm on the exact
   full-vocabulary loss, which leaves the circuit as it is and gives a first-copy loss near
   log(200) rather than the ~11 nats that zero rows would cost.

The data: BOS, then 31 random word tokens in which a random segment of 4 to 15 tokens occurs
twice, at random non-overlapping places (so no fixed offset predicts the copy; only an
induction circuit does). The positions that an induction circuit can predict (the 2nd to last
token of the second copy) weigh `REPEAT_WEIGHT` times more in the loss.

Which heads can become what. With every weight trainable, the circuit needs far more steps than
a test can afford (measured: layer-0 heads first learn positional shortcuts and in-context
unigram copying; no previous-token head after 2000+ steps). With the layer-0 value/output maps
frozen but all query/key maps trainable it forms in ~1000 steps, but every head of a layer
turns into the same thing (four previous-token heads, four induction heads, scores within a
few hundredths), so no head is "the" one. Hence:
- the value/output maps (W_V, W_O) of all layer-0 heads stay at their random init (Bietti et
  al. 2023, "Birth of a Transformer", likewise freezes matrices at random init);
- only the query/key maps of `PREV_HEAD` (layer 0) and `INDUCTION_HEAD` (layer 1) are trained;
  the other six heads keep their random query/key maps, hence near-uniform attention (the
  other layer-1 heads still train their value/output maps, becoming context-averaging heads).
Training decides the rest: that `PREV_HEAD` attends to the previous token and that
`INDUCTION_HEAD` attends to the token after the earlier occurrence of the current one (by
K-composition with `PREV_HEAD`) is learned, and `train_induction_model` measures it. The heads
are deliberately not head 0 and not the same index in both layers, so that a statistic that
mixes up head or layer indices does not pass by accident.

Sharing one training per session, from any test module:

    @pytest.fixture(scope="session")
    def induction_model(tmp_path_factory):
        return shared_induction_model(tmp_path_factory)

`shared_induction_model` keeps the result in a module-level cache keyed by the session's base
temporary folder, so fixtures in several modules (or one moved into conftest.py) train once.

Determinism: seeded, float32 on the CPU; two runs with the same thread count give bit-identical
weights. Another thread count can change the last bits of some reductions and so the weights
slightly (2 threads instead of 1: induction score 0.847 instead of 0.845; same heads).
"""

from __future__ import annotations

import math
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

# --- hyperparameters -----------------------------------------------------------------------
SEED = 0
N_LAYER, N_HEAD, D_MODEL, N_INNER = 2, 4, 64, 4  # the MLPs are zero whatever their width
N_CTX = 32  # positions; every training sequence fills all of them
N_TRAIN_VOCAB = 200
SEGMENT_LEN = (4, 15)  # inclusive range of the repeated segment's length
REPEAT_WEIGHT = 4.0  # loss weight of the positions an induction circuit can predict
BATCH, STEPS, LR, WARMUP = 32, 1500, 3e-3, 25
CAL_STEPS, CAL_LR = 200, 1e-2
THREADS = 1  # about as fast as 2 for these tiny matrices, and run-to-run identical
PREV_HEAD = (0, 1)  # the only layer-0 head whose query/key maps are trained
INDUCTION_HEAD = (1, 2)  # the only layer-1 head whose query/key maps are trained
EVAL_SEED = 12345  # held-out sequences (training draws from a generator seeded with SEED)
EVAL_HALF = 15  # BOS + 15 + the same 15 = 31 tokens


@dataclass(frozen=True)
class InductionModelFacts:
    folder: Path
    prev_token_head: tuple[int, int]  # (layer, head) with the highest previous-token score (measured)
    induction_head: tuple[int, int]  # (layer, head) with the highest induction score (measured)
    token_ids: tuple[int, ...]  # the 200 trained word-token ids, sorted; BOS not included
    bos_token_id: int
    n_ctx: int
    prev_token_scores: list[list[float]]  # [layer][head], on repeated_token_batch(batch=64)
    induction_scores: list[list[float]]  # [layer][head], same sequences
    loss_first_half: float  # mean loss (nats, full vocabulary) predicting the first copy's tokens
    loss_second_half: float  # ... and the second copy's tokens after its first
    final_train_loss: float  # weighted training loss (201-way softmax), mean of the last 50 steps
    calibrated_loss: float  # weighted training loss over the full vocabulary, last calibration step
    train_seconds: float
    hyperparameters: dict = field(default_factory=dict)


# --- vocabulary and data -------------------------------------------------------------------


def gpt2_tokenizer():
    from transformers import PreTrainedTokenizerFast

    from pipeline.models import gpt2_tokenizer_folder

    return PreTrainedTokenizerFast.from_pretrained(gpt2_tokenizer_folder())


def train_vocab(tokenizer=None) -> tuple[int, ...]:
    """The first `N_TRAIN_VOCAB` ids (in id order) whose token is a space and 3-8 lowercase
    letters and that round-trip through decode/encode. A text " w1 w2 ..." of such words is
    split at the spaces by GPT-2's pre-tokenizer, so it tokenizes to exactly their ids."""
    tokenizer = tokenizer or gpt2_tokenizer()
    ids = []
    for token, i in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1]):
        if re.fullmatch(r"Ġ[a-z]{3,8}", token) and tokenizer.encode(tokenizer.decode([i]),
                                                                     add_special_tokens=False) == [i]:
            ids.append(i)
            if len(ids) == N_TRAIN_VOCAB:
                return tuple(ids)
    raise AssertionError(f"only {len(ids)} word tokens found")


def training_batch(n_vocab: int, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Compact ids [batch N_CTX] (0 = BOS, 1..n_vocab = words) and the loss weights
    [batch N_CTX-1] of predicting each next token: BOS, then random words in which a segment of
    random length occurs twice, at random non-overlapping places; the tokens an induction
    circuit can predict (all of the second copy but its first token) weigh REPEAT_WEIGHT."""
    body = N_CTX - 1
    x = 1 + torch.randint(n_vocab, (batch, body), generator=generator)
    weight = torch.ones(batch, body)
    lo, hi = SEGMENT_LEN[0], min(SEGMENT_LEN[1], body // 2)
    for row in range(batch):
        k = int(torch.randint(lo, hi + 1, (1,), generator=generator))
        a = int(torch.randint(0, body - 2 * k + 1, (1,), generator=generator))
        b = int(torch.randint(a + k, body - k + 1, (1,), generator=generator))
        x[row, b:b + k] = x[row, a:a + k]
        weight[row, b + 1:b + k] = REPEAT_WEIGHT
    return torch.cat([torch.zeros(batch, 1, dtype=torch.long), x], dim=1), weight


def repeated_token_batch(token_ids, bos_token_id: int, batch: int = 32, half: int = EVAL_HALF,
                         seed: int = EVAL_SEED) -> torch.Tensor:
    """[batch 1+2*half] int64: BOS, `half` distinct tokens drawn at random from `token_ids`, the
    same `half` tokens again. Each token occurs exactly twice, so the position after its
    earlier occurrence is unambiguous. Seeded (`seed`, not SEED: held out from training);
    `1 + 2*half` must not exceed N_CTX."""
    if 1 + 2 * half > N_CTX:
        raise ValueError(f"1 + 2*{half} tokens is more than the model's {N_CTX} positions")
    vocab = torch.as_tensor(list(token_ids), dtype=torch.long)
    if half > len(vocab):
        raise ValueError(f"cannot draw {half} distinct tokens from {len(vocab)}")
    g = torch.Generator().manual_seed(seed)
    first = torch.stack([vocab[torch.randperm(len(vocab), generator=g)[:half]] for _ in range(batch)])
    return torch.cat([torch.full((batch, 1), bos_token_id, dtype=torch.long), first, first], dim=1)


def repeated_texts(token_ids, tokenizer, n: int = 8, half: int = EVAL_HALF, seed: int = EVAL_SEED) -> list[str]:
    """`n` documents " w1 ... wk w1 ... wk" (each word with its leading space), one per
    `repeated_token_batch` row: each tokenizes, without special tokens, to that row after BOS."""
    rows = repeated_token_batch(token_ids, 0, batch=n, half=half, seed=seed)[:, 1:]
    return [tokenizer.decode(row.tolist()) for row in rows]


# --- model ---------------------------------------------------------------------------------


def build_model():
    """The untrained attention-only GPT2LMHeadModel (seeded; the caller's RNG is left alone)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_layer=N_LAYER, n_head=N_HEAD, n_embd=D_MODEL, n_inner=N_INNER, n_positions=N_CTX,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = GPT2LMHeadModel(config)
    with torch.no_grad():
        for block in model.transformer.h:
            for p in block.mlp.parameters():
                p.zero_().requires_grad_(False)
            block.ln_2.requires_grad_(False)  # it only feeds the (zero) MLP
    return model


def _mask_head_gradients(model) -> list:
    """Freeze (by zeroing their gradients) the layer-0 value/output maps and the query/key maps
    of every head but PREV_HEAD and INDUCTION_HEAD. Adam leaves an entry whose gradient is
    always 0 exactly where it was."""
    d, dh = D_MODEL, D_MODEL // N_HEAD
    handles = []
    for layer, keep in ((PREV_HEAD[0], PREV_HEAD[1]), (INDUCTION_HEAD[0], INDUCTION_HEAD[1])):
        attn = model.transformer.h[layer].attn
        w_mask = torch.ones_like(attn.c_attn.weight)  # [d, 3d]: q | k | v, head-major within each
        for head in range(N_HEAD):
            if head != keep:
                for base in (0, d):
                    w_mask[:, base + head * dh:base + (head + 1) * dh] = 0
        if layer == 0:
            w_mask[:, 2 * d:] = 0
            attn.c_proj.weight.requires_grad_(False)
            attn.c_proj.bias.requires_grad_(False)
        b_mask = w_mask[0].clone()
        handles.append(attn.c_attn.weight.register_hook(lambda g, m=w_mask: g * m))
        handles.append(attn.c_attn.bias.register_hook(lambda g, m=b_mask: g * m))
    return handles


def _loss(model, emb: torch.Tensor, x: torch.Tensor, rest: torch.Tensor | None = None) -> torch.Tensor:
    """Per-position next-token cross-entropy [batch seq-1] with the tied embedding `emb` (compact
    ids). Without `rest`, over the 201 trained tokens only; with it, over the full vocabulary,
    whose other 50056 rows all equal `rest` [d_model] and so add one logit log(50056) + h.rest."""
    h = model.transformer(inputs_embeds=emb[x]).last_hidden_state[:, :-1]
    logits = h @ emb.T
    if rest is not None:
        n_other = model.config.vocab_size - len(emb)
        logits = torch.cat([logits, (h @ rest + math.log(n_other))[..., None]], dim=-1)
    return torch.logsumexp(logits, dim=-1) - logits.gather(-1, x[:, 1:, None]).squeeze(-1)


# --- measuring heads -----------------------------------------------------------------------


def head_scores(patterns: list[torch.Tensor], half: int) -> tuple[list[list[float]], list[list[float]]]:
    """Previous-token and induction scores per [layer][head] from attention patterns
    [batch head q k] on `repeated_token_batch` sequences (BOS + r + r, r of length `half`).
    Previous-token: mean attention from q to q-1 over q >= 1. Induction: mean attention from
    each q in the second copy (q >= 1 + half) to q - half + 1, the position after the earlier
    occurrence of the token at q."""
    prev, induction = [], []
    for pattern in patterns:
        q = torch.arange(1, pattern.shape[-1])
        prev.append(pattern[:, :, q, q - 1].mean(dim=(0, 2)).tolist())
        q2 = torch.arange(1 + half, pattern.shape[-1])
        induction.append(pattern[:, :, q2, q2 - half + 1].mean(dim=(0, 2)).tolist())
    return prev, induction


def _argmax(scores: list[list[float]]) -> tuple[int, int]:
    flat = torch.tensor(scores)
    layer, head = divmod(int(flat.argmax()), flat.shape[1])
    return layer, head


# --- training ------------------------------------------------------------------------------


def train_induction_model(folder: Path, threads: int | None = THREADS, steps: int = STEPS) -> InductionModelFacts:
    """Train the model (module docstring), save it with GPT-2's tokenizer into `folder` and
    measure its heads on held-out repeated sequences. `threads` (None: leave torch's setting)
    applies during training only. Gradients are switched on here: code that ran earlier in the
    session (e.g. a library's load path) may have left torch's global grad mode off."""
    with torch.enable_grad():
        return _train_induction_model(folder, threads, steps)


def _train_induction_model(folder: Path, threads: int | None, steps: int) -> InductionModelFacts:
    from transformers import AutoModelForCausalLM

    from pipeline.models import gpt2_tokenizer_folder

    folder = Path(folder)
    tokenizer = gpt2_tokenizer()
    bos = int(tokenizer.convert_tokens_to_ids("<|endoftext|>"))
    words = train_vocab(tokenizer)
    full_ids = torch.tensor([bos, *words])  # compact id -> vocabulary id

    old_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    start = time.perf_counter()
    try:
        model = build_model()
        model.config._attn_implementation = "eager"  # the fastest here for 32 positions
        emb = torch.nn.Parameter(model.transformer.wte.weight.detach()[full_ids].clone())
        model.transformer.wte.weight.requires_grad_(False)  # trained as `emb`, copied back below
        handles = _mask_head_gradients(model)
        g = torch.Generator().manual_seed(SEED)
        model.train()

        # 1. the circuit, with a softmax over the 201 trained tokens
        opt = torch.optim.Adam([emb, *(p for p in model.parameters() if p.requires_grad)], lr=LR, betas=(0.9, 0.98))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / WARMUP))
        losses = []
        for _ in range(steps):
            x, weight = training_batch(len(words), BATCH, g)
            loss = (_loss(model, emb, x) * weight).sum() / weight.sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
        for handle in handles:
            handle.remove()

        # 2. calibration over the full vocabulary: only the final layer norm and the vector that
        # every untrained token's embedding row is set to (the circuit is left as it is)
        rest = torch.nn.Parameter(torch.zeros(D_MODEL))
        calibrated = [rest, *model.transformer.ln_f.parameters()]
        model.requires_grad_(False)
        emb.requires_grad_(False)
        for p in calibrated:
            p.requires_grad_(True)
        opt = torch.optim.Adam(calibrated, lr=CAL_LR)
        for _ in range(CAL_STEPS):
            x, weight = training_batch(len(words), BATCH, g)
            loss = (_loss(model, emb, x, rest) * weight).sum() / weight.sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        calibrated_loss = loss.item()

        model.requires_grad_(False).eval()
        with torch.no_grad():
            wte = model.transformer.wte.weight  # tied: also lm_head.weight
            wte[:] = rest
            wte[full_ids] = emb
    finally:
        torch.set_num_threads(old_threads)
    seconds = time.perf_counter() - start

    folder.mkdir(parents=True, exist_ok=True)
    # (the attention implementation chosen for training is not saved in config.json)
    model.save_pretrained(folder)
    for f in gpt2_tokenizer_folder().iterdir():
        if f.is_file():
            shutil.copy2(f, folder / f.name)

    # measured on the model as saved, re-loaded with eager attention so that patterns come back
    saved = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    tokens = repeated_token_batch(words, bos, batch=64)
    with torch.no_grad():
        out = saved(tokens, output_attentions=True)
    prev, induction = head_scores(list(out.attentions), EVAL_HALF)
    nll = torch.nn.functional.cross_entropy(out.logits[:, :-1].transpose(1, 2), tokens[:, 1:], reduction="none")
    return InductionModelFacts(
        folder=folder, prev_token_head=_argmax(prev), induction_head=_argmax(induction), token_ids=words,
        bos_token_id=bos, n_ctx=N_CTX, prev_token_scores=prev, induction_scores=induction,
        loss_first_half=float(nll[:, :EVAL_HALF].mean()), loss_second_half=float(nll[:, EVAL_HALF + 1:].mean()),
        final_train_loss=sum(losses[-50:]) / len(losses[-50:]), calibrated_loss=calibrated_loss,
        train_seconds=seconds,
        hyperparameters=dict(seed=SEED, n_layer=N_LAYER, n_head=N_HEAD, d_model=D_MODEL, n_inner=N_INNER,
                             n_ctx=N_CTX, n_train_vocab=N_TRAIN_VOCAB, segment_len=SEGMENT_LEN,
                             repeat_weight=REPEAT_WEIGHT, batch=BATCH, steps=steps, lr=LR, warmup=WARMUP,
                             calibration_steps=CAL_STEPS, calibration_lr=CAL_LR,
                             threads=threads, trained_qk_heads=[PREV_HEAD, INDUCTION_HEAD]))


_CACHE: dict[Path, InductionModelFacts] = {}


def shared_induction_model(tmp_path_factory) -> InductionModelFacts:
    """One trained model per pytest session (see the module docstring)."""
    base = Path(tmp_path_factory.getbasetemp())
    if base not in _CACHE:
        _CACHE[base] = train_induction_model(base / "induction-model")
    return _CACHE[base]
