"""Weight-only analyses: functions of the model, no corpus.

- `key_value`: each neuron's output weights read through the final norm and the unembedding
  (Geva et al. 2021, "Transformer Feed-Forward Layers Are Key-Value Memories").
- `deletion`: cosine between what a neuron reads and what it writes.
- `neighbours`: the neurons of the same layer that write most nearly the same direction.
"""

from __future__ import annotations

import numpy as np

from pipeline.analysis.deletion import deletion_cosines
from pipeline.analysis.key_value import value_tokens
from pipeline.analysis.neighbours import output_neighbours


def neuron_weight_columns(model, n_tokens: int = 10) -> dict[str, object]:
    """The weight-only columns of the `neurons` table, in (layer, neuron) order."""
    from pipeline.weights import neuron_weights
    from pipeline.windows import decode_tokens

    weights = neuron_weights(model)
    top_ids, top_logits, bottom_ids, bottom_logits = value_tokens(
        weights, centre=_final_norm_centres(model), n_tokens=n_tokens
    )
    nbr_ids, nbr_cos = output_neighbours(weights)
    vocab = decode_tokens(model.tokenizer, np.unique(np.concatenate([top_ids, bottom_ids]).ravel()).tolist())
    return {
        "deletion_cos": deletion_cosines(weights),
        "kv_top_token_ids": list(top_ids.astype(np.int32)),
        "kv_top_tokens": [[vocab[int(i)] for i in row] for row in top_ids],
        "kv_top_logits": list(top_logits.astype(np.float32)),
        "kv_bottom_token_ids": list(bottom_ids.astype(np.int32)),
        "kv_bottom_tokens": [[vocab[int(i)] for i in row] for row in bottom_ids],
        "kv_bottom_logits": list(bottom_logits.astype(np.float32)),
        "nbr_neurons": list(nbr_ids),
        "nbr_cos": list(nbr_cos),
    }


def _final_norm_centres(model) -> bool:
    """LayerNorm subtracts the mean before scaling; RMSNorm does not."""
    return not str(model.facts.get("normalization", "LN")).upper().startswith("RMS")
