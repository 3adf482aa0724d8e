"""The repeated-random-tokens probe: previous-token, duplicate and induction scores of every head
on sequences `BOS + R random tokens + the same R tokens again`, a function of the model alone.

On such sequences only positional and in-context copying mechanisms can predict anything, so a
head's attention on the second copy separates the classic head types cleanly (Olsson et al.
2022; TransformerLens's `detect_head`). For a query at position q = R + 1 + i of the second copy
(i = 0 .. R - 1), whose token first appeared at q - R:
- rand_prev_token_score: attention to q - 1;
- rand_duplicate_score: attention to q - R (the same token in the first copy);
- rand_induction_score: attention to q - R + 1 (the token after it; for i = R - 1 that is the
  second copy's first token, which did follow the first copy's last token);
each averaged over the R queries of the second copy and over the sequences: mean attention
mass, 1.0 for a perfect head. (TransformerLens's `detect_head` with its default 'mul' mode
scores the whole sequence and reports about half of this for a perfect induction head.)

The R tokens of a sequence are distinct ids drawn (seeded) from the ordinary vocabulary: every
id below the tokenizer's length that is not a special token. Distinct tokens make each target
position unique, so the three scores are exactly the three diagonals. Budget: 16 sequences of
R = 50 (800 scored queries per head; one batch of 16 x 101 tokens). The forward pass stops after
the last layer's pattern: the last MLP, the final norm and the unembedding are not needed.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from pipeline import hooks

N_SEQS = 16
LENGTH = 50
SCORES = ("rand_prev_token_score", "rand_duplicate_score", "rand_induction_score")


def repeated_random_tokens(model, n_seqs: int = N_SEQS, length: int = LENGTH, seed: int = 0) -> torch.Tensor:
    """[n_seqs, 2 * length + 1] int64 on the CPU: BOS, then `length` distinct ordinary tokens
    (seeded), then the same tokens again."""
    if length < 2:
        raise ValueError(f"length must be at least 2, got {length}")
    tokenizer = model.tokenizer
    n_ids = min(model.d_vocab, len(tokenizer))
    keep = torch.ones(n_ids, dtype=torch.bool)
    special = torch.tensor([*tokenizer.all_special_ids, model.bos_token_id], dtype=torch.int64)
    keep[special[special < n_ids]] = False
    ordinary = keep.nonzero().squeeze(1)
    generator = torch.Generator().manual_seed(seed)
    picks = torch.stack([torch.randperm(len(ordinary), generator=generator)[:length] for _ in range(n_seqs)])
    first = ordinary[picks]
    bos = torch.full((n_seqs, 1), model.bos_token_id, dtype=torch.int64)
    return torch.cat([bos, first, first], dim=1)


def repeat_scores(pattern: torch.Tensor, length: int) -> torch.Tensor:
    """[3, head] (SCORES order) from patterns [batch head q k] of sequences BOS + R + R tokens,
    R = `length`: mean attention on the second copy to the three target diagonals."""
    second = slice(length + 1, 2 * length + 1)  # query positions of the second copy
    q = torch.arange(pattern.shape[2], device=pattern.device)[second]
    scores = []
    for back in (1, length, length - 1):  # previous token, duplicate, induction: key = q - back
        scores.append(pattern[:, :, q, q - back].mean(dim=(0, 2)))
    return torch.stack(scores)


class _Done(Exception):
    """Raised from the last layer's pattern hook: nothing after it is needed."""


@torch.no_grad()
def random_repeat_scores(model, n_seqs: int = N_SEQS, length: int = LENGTH, seed: int = 0) -> dict[str, np.ndarray]:
    """The rand_* columns of `heads`: {name: [n_layers * n_heads] float32} in (layer, head) order."""
    tokens = repeated_random_tokens(model, n_seqs, length, seed).to(model.device)
    out = torch.empty((model.n_layers, len(SCORES), model.n_heads), dtype=torch.float32, device=model.device)
    last = model.n_layers - 1

    def score(layer: int):
        def fn(pattern: torch.Tensor, hook=None) -> None:
            out[layer] = repeat_scores(pattern.detach().to(torch.float32), length)
            if layer == last:
                raise _Done

        return fn

    fwd_hooks = [(hooks.attn_pattern(layer), score(layer)) for layer in range(model.n_layers)]
    with contextlib.suppress(_Done):
        model.bridge.run_with_hooks(tokens, fwd_hooks=fwd_hooks, return_type=None)
    out = out.cpu()
    return {name: out[:, i].reshape(-1).numpy().copy() for i, name in enumerate(SCORES)}
