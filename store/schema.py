"""Every store table and column, declared once.

The Parquet writer, the DuckDB views, `mechscope verify`, the README's table reference and the
tests all derive from `TABLES`. Nothing here knows how the numbers are computed (that is
`pipeline/`) or how they are queried (that is `store/queries.py`).

Conventions: snake_case, integer keys named `layer`, `neuron`, `seq_id`, `pos`, `doc_id`,
`token_id`; units and kinds as suffixes (`_frac`, `_cos`); token text lives in `tokens`, with one
exception: `neuron_examples.context_tokens` repeats each example's window of tokens as text, so
that a neuron page never has to look its windows up in the (corpus-sized) `tokens` table.

Versions. `SCHEMA_VERSION` is the layout of the store folder and its manifest; each table also
has its own `version`, recorded per table in the manifest, so that a new table or a changed one
does not make every older store unreadable: a store holds the tables its build produced, and
pages for a table it lacks (or holds in an older version) say how to get it.
Store layout (`SCHEMA_VERSION`):
1. the first store layout;
2. `neuron_examples.context_tokens` (every table required);
3. tables optional, a version per table in the manifest (stores of layout 2 still open: their
   tables are read at the versions `LAYOUT_2_TABLE_VERSIONS` gives).
Table versions: `neuron_examples` 2 (context_tokens), 3 (context_display); `neurons` 2 (after_bos_frac, fires_on_tokens,
fires_on_counts, strong_frac); `heads` 2 (dla_mean, from the logit lens); the others 1.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pyarrow as pa

SCHEMA_VERSION = 3
OLDEST_SCHEMA_VERSION = 2  # the oldest store layout this code still reads


@dataclass(frozen=True)
class Column:
    name: str
    type: pa.DataType
    description: str
    nullable: bool = False


@dataclass(frozen=True)
class Table:
    name: str
    description: str
    columns: tuple[Column, ...]
    sort_key: tuple[str, ...]
    version: int = 1
    family: str = "corpus"  # what fills it (see FAMILIES): a page for a missing table names how to get it
    built: bool = True  # written by `mechscope build` (False: an annotation added to a store later)

    def arrow_schema(self) -> pa.Schema:
        return pa.schema([pa.field(c.name, c.type, nullable=c.nullable) for c in self.columns])

    def column(self, name: str) -> Column:
        for c in self.columns:
            if c.name == name:
                return c
        raise KeyError(f"{self.name} has no column {name!r}")

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)


def _c(name: str, type_: pa.DataType, description: str, nullable: bool = False) -> Column:
    return Column(name, type_, description, nullable)


_LAYER = _c("layer", pa.int16(), "Transformer block index, 0-based.")
_NEURON = _c("neuron", pa.int32(), "MLP neuron index within the layer, 0-based.")
_SEQ = _c("seq_id", pa.int32(), "Window index: the corpus is cut into windows of seq_len tokens.")
_POS = _c("pos", pa.int16(), "Position within the window; 0 is the BOS token.")

DOCUMENTS = Table(
    "documents",
    "The corpus documents that the build read, in reading order.",
    (
        _c("doc_id", pa.int32(), "Document index in reading order, 0-based."),
        _c("source", pa.string(), "Where the document came from (file path or corpus name)."),
        _c("n_chars", pa.int32(), "Length of the document text in characters."),
        _c("n_tokens", pa.int32(), "Tokens of the document that the build read (BOS excluded)."),
        _c("text", pa.string(), "The document text."),
    ),
    ("doc_id",),
)

TOKENS = Table(
    "tokens",
    "Every token the model read, one row per (seq_id, pos). Windows pack documents back to "
    "back: each window starts with BOS and a BOS separates consecutive documents.",
    (
        _SEQ,
        _POS,
        _c("doc_id", pa.int32(), "Document this token belongs to; -1 for BOS tokens."),
        _c("token_id", pa.int32(), "Token id in the model's vocabulary."),
        _c("token", pa.string(), "The token decoded to text on its own."),
    ),
    ("seq_id", "pos"),
)

NEURONS = Table(
    "neurons",
    "One row per MLP neuron: activation statistics over the corpus (BOS positions excluded) "
    "and weight-only analyses. The activation is read at blocks.{layer}.mlp.hook_post "
    "(for gated MLPs, act(gate) * up).",
    (
        _LAYER,
        _NEURON,
        _c("count", pa.int64(), "Token positions the statistics cover (BOS excluded)."),
        _c("mean", pa.float32(), "Mean activation."),
        _c("std", pa.float32(), "Population standard deviation of the activation."),
        _c("min", pa.float32(), "Smallest activation."),
        _c("max", pa.float32(), "Largest activation."),
        _c("density_frac", pa.float32(), "Fraction of positions where the activation is > 0."),
        _c(
            "hist_counts",
            pa.list_(pa.int64()),
            "Activation histogram of the sampled positions (manifest.json: histogram.sample_fraction): "
            "counts in the 99 fixed bins, symmetric quarter-octaves; manifest.json's histogram.bin_ranges "
            "gives each bin's value range. Bin 49 holds |x| < 2^-6, bins 0 and 98 the tails beyond ±2^6.",
        ),
        _c(
            "deletion_cos",
            pa.float32(),
            "Cosine between the neuron's input and output weight vectors in the residual basis. "
            "Strongly negative: the neuron writes back the negative of what it reads.",
        ),
        _c(
            "kv_top_token_ids",
            pa.list_(pa.int32()),
            "Key-value view: token ids with the highest logits of the output weight row read "
            "through the final norm's scale and the unembedding.",
        ),
        _c("kv_top_tokens", pa.list_(pa.string()), "Those tokens as text."),
        _c("kv_top_logits", pa.list_(pa.float32()), "Their logits (direct effect per unit activation)."),
        _c("kv_bottom_token_ids", pa.list_(pa.int32()), "Token ids with the lowest such logits."),
        _c("kv_bottom_tokens", pa.list_(pa.string()), "Those tokens as text."),
        _c("kv_bottom_logits", pa.list_(pa.float32()), "Their logits."),
        _c(
            "nbr_neurons",
            pa.list_(pa.int32()),
            "The 10 neurons of the same layer whose output weight vectors are most similar "
            "(cosine) to this one's: they write nearly the same direction.",
        ),
        _c("nbr_cos", pa.list_(pa.float32()), "Those cosines, highest first."),
        _c(
            "kv_agreement_frac",
            pa.float32(),
            "Fraction of the neuron's top-k activating positions whose next token is among "
            "its top value tokens (null when no top example has a next token).",
            nullable=True,
        ),
        _c(
            "after_bos_frac",
            pa.float32(),
            "Fraction of the neuron's top examples that sit on the first token after a BOS "
            "(position 1, or the first token of a packed document). Near 1: the 'massive "
            "activation' / attention-sink signature of LLMs (Sun et al. 2024), a response to the "
            "position rather than to the text (null without examples).",
            nullable=True,
        ),
        _c(
            "fires_on_tokens",
            pa.list_(pa.string()),
            "The most frequent tokens at the neuron's top examples' own positions (up to 5), most "
            "frequent first; ties: the token of the stronger example first.",
        ),
        _c("fires_on_counts", pa.list_(pa.int32()), "How many of the top examples sit on each of those tokens."),
        _c(
            "strong_frac",
            pa.float32(),
            "Fraction of the histogram's sampled positions where the activation is at least t, the "
            "power of two in (max/16, max/8] (kept within the histogram's edges 2^-6 .. 2^6): how "
            "often the neuron fires strongly. Unlike density_frac it means something for gated MLPs "
            "(whose activation is > 0 about half the time). Null when max <= 0.",
            nullable=True,
        ),
        _c(
            "explanation",
            pa.string(),
            "A short offline explanation written from the neuron's evidence by a template: what it "
            "fires on (fires_on_tokens), what it promotes (kv_top_tokens, with kv_agreement_frac), "
            "whether it erases what it reads, and where it sits; position artefacts are named as such.",
        ),
    ),
    ("layer", "neuron"),
    version=2,
    family="neurons",
)

NEURON_EXAMPLES = Table(
    "neuron_examples",
    "Evidence per neuron: its top-k activating positions over the whole corpus, at most one per "
    "window: each window's strongest position, the k strongest windows (kind='top', rank 0 is the "
    "strongest; ties broken by earlier position), and band samples (kind='band'): "
    "one position per histogram bin, drawn uniformly at random within the bin by a hash of the "
    "position, so the draw does not depend on batching or sharding.",
    (
        _LAYER,
        _NEURON,
        _c("kind", pa.string(), "'top' or 'band'."),
        _c("rank", pa.int16(), "Rank among the neuron's top examples (kind='top'); else the histogram bin."),
        _SEQ,
        _POS,
        _c("activation", pa.float32(), "The neuron's activation at (seq_id, pos)."),
        _c(
            "ctx_start",
            pa.int16(),
            "Position of the first entry of context_acts within the window.",
        ),
        _c(
            "context_acts",
            pa.list_(pa.float32()),
            "The neuron's activations at positions ctx_start, ctx_start+1, ... of the same window "
            "(a window of context around pos; NaN for BOS positions).",
        ),
        _c(
            "context_tokens",
            pa.list_(pa.string()),
            "The tokens at positions ctx_start, ctx_start+1, ... of the same window, as text "
            "(aligned with context_acts: same length; equal to `tokens.token` at those positions).",
        ),
        _c(
            "context_display",
            pa.list_(pa.string()),
            "The same tokens as shown: null when none of them decodes alone to U+FFFD (a byte-level "
            "piece of a character); else context_tokens with each character split over several tokens "
            "decoded whole, on the token that completes it (earlier pieces show what they complete, "
            "often ''), where the context holds all its bytes.",
            nullable=True,
        ),
    ),
    ("layer", "neuron", "kind", "rank"),
    version=3,
    family="neurons",
)

ACTIVATIONS = Table(
    "activations",
    "Sparse activation records: each neuron's strongest N activations over the corpus "
    "(N = records_per_neuron in the manifest), for SQL across neurons and tokens.",
    (
        _LAYER,
        _NEURON,
        _SEQ,
        _POS,
        _c("activation", pa.float32(), "The neuron's activation at (seq_id, pos)."),
    ),
    ("layer", "neuron", "seq_id", "pos"),
    family="neurons",
)

_HEAD = _c("head", pa.int16(), "Attention head index within the layer (query heads), 0-based.")
_OFFSETS = 16  # attention-by-offset columns cover offsets 0 .. _OFFSETS - 1

HEADS = Table(
    "heads",
    "One row per attention head: attention-pattern statistics over the corpus (read at "
    "blocks.{layer}.attn.hook_pattern; BOS query rows excluded), the same scores on repeated random "
    "tokens, and weight-only analyses of its OV and QK circuits. Every *_score of the pattern is a "
    "mean attention mass (the sum of the pattern over the positions it names, averaged over query "
    "rows): 1.0 means all attention goes there.",
    (
        _LAYER,
        _HEAD,
        _c("count", pa.int64(), "Query positions the corpus scores cover (BOS excluded)."),
        _c("repeat_count", pa.int64(),
           "Query positions whose token occurs earlier in the same window at a non-BOS position "
           "(duplicate and induction scores cover these only)."),
        _c("prev_token_score", pa.float32(), "Mean attention to the position just before the query."),
        _c("self_score", pa.float32(), "Mean attention to the query's own position."),
        _c("bos_score", pa.float32(),
           "Mean attention to BOS positions (position 0 and the document separators): the attention sink."),
        _c("duplicate_score", pa.float32(),
           "Mean attention to earlier positions holding the query's own token (rows with such a position).",
           nullable=True),
        _c("induction_score", pa.float32(),
           "Mean attention to positions right after an earlier occurrence of the query's token, averaged "
           "over the repeat_count rows (that position may be the query itself, never a BOS): the "
           "induction pattern [A][B] ... [A] -> [B].",
           nullable=True),
        _c("entropy_nats", pa.float32(), "Mean entropy of the query's attention distribution, in nats."),
        _c("attn_distance_tokens", pa.float32(),
           "Mean distance from the query to where it attends, sum over keys of pattern * (query - key)."),
        _c("attn_by_offset", pa.list_(pa.float32()),
           f"Mean attention at offsets 0 .. {_OFFSETS - 1} (key = query - offset) over the corpus, "
           "averaged over all scored rows (0 where the offset reaches before position 0): the head's "
           "positional preference as measured (rotary models show it only here)."),
        _c("rand_prev_token_score", pa.float32(),
           "Previous-token score on repeated random tokens (BOS + R random tokens + the same R again), "
           "on the second copy; mean attention mass."),
        _c("rand_duplicate_score", pa.float32(),
           "On repeated random tokens, second copy: mean attention to the same token in the first copy."),
        _c("rand_induction_score", pa.float32(),
           "On repeated random tokens, second copy: mean attention to the token after the same token in "
           "the first copy (the standard induction metric, as a mass; TransformerLens's detect_head 'mul' "
           "default reports about half of this for a perfect head)."),
        _c("ov_copying_score", pa.float32(),
           "OV circuit eigenvalue copying score Re(sum(eig))/sum(|eig|) of W_E W_V W_O W_U in token space "
           "(norms folded into copies of the weights, W_U centred over the vocabulary): +1 copies the "
           "attended token, -1 suppresses it."),
        _c("ov_copy_token_ids", pa.list_(pa.int32()),
           "Tokens the OV circuit raises most when the head attends to that same token (largest diagonal "
           "entries of the token-space OV circuit, relative to the mean logit)."),
        _c("ov_copy_tokens", pa.list_(pa.string()), "Those tokens as text."),
        _c("ov_suppress_token_ids", pa.list_(pa.int32()),
           "Tokens the OV circuit lowers most when the head attends to that same token (smallest diagonal)."),
        _c("ov_suppress_tokens", pa.list_(pa.string()), "Those tokens as text."),
        _c("qk_pos_by_offset", pa.list_(pa.float32()),
           f"From the weights (learned position embeddings only): attention at offsets 0 .. {_OFFSETS - 1} "
           "that the positional part of the QK circuit alone would give, averaged over query positions "
           "1 .. 127 (a row without that key counts 0). "
           "Null for rotary models, whose weights fix no positional preference without the tokens.",
           nullable=True),
        _c("dla_mean", pa.float32(),
           "Mean direct logit attribution to the true next token at the logit lens's sampled positions: "
           "z_h W_O[h] through the final norm (the final state's scale frozen) and the unembedding column "
           "of the next token, in logits (layer_stats.write_dla_mean is the whole attention layer's).",
           nullable=True),
    ),
    ("layer", "head"),
    version=2,
    family="heads",
)

HEAD_EXAMPLES = Table(
    "head_examples",
    "Evidence per head: the query positions (BOS queries excluded) where its strongest attention to "
    "a non-BOS position is largest over the corpus (rank 0 first; ties broken by earlier position), each with its "
    "attention row and a square block of the pattern around it.",
    (
        _LAYER,
        _HEAD,
        _c("rank", pa.int16(), "Rank among the head's top examples, 0 is the strongest."),
        _SEQ,
        _c("pos", pa.int16(), "The destination (query) position within the window."),
        _c("src_pos", pa.int16(), "The source (key) position it attends to most (BOS excluded)."),
        _c("attention", pa.float32(), "The attention weight from pos to src_pos."),
        _c("pattern", pa.list_(pa.float32()),
           "The destination's attention over the window's positions 0 .. seq_len-1 (0 after pos)."),
        _c("block_start", pa.int16(), "First position of `block`."),
        _c("block", pa.list_(pa.float32()),
           "The pattern of queries block_start .. block_start+w-1 over the same keys, row-major "
           "(w*w values, w = sqrt of the length): a token x token view around the example."),
        _c("context_tokens", pa.list_(pa.string()),
           "The window's tokens at positions 0 .. seq_len-1, as text (equal to `tokens.token`)."),
    ),
    ("layer", "head", "rank"),
    family="heads",
)

HEAD_COMPOSITION = Table(
    "head_composition",
    "Composition scores between every pair of heads in different layers (Elhage et al. 2021): how "
    "much of what the source head writes (its OV circuit) is read by the destination head's query "
    "(kind 'q'), key ('k') or value ('v') input, ||W_OV(src) W_X(dst)||_F / (||W_OV(src)||_F "
    "||W_X(dst)||_F), norms folded into copies of the weights.",
    (
        _c("src_layer", pa.int16(), "Layer of the head that writes."),
        _c("src_head", pa.int16(), "That head's index."),
        _c("dst_layer", pa.int16(), "Layer of the head that reads (later than src_layer)."),
        _c("dst_head", pa.int16(), "That head's index."),
        _c("kind", pa.string(), "'q', 'k' or 'v': which input of the destination head reads it."),
        _c("score", pa.float32(), "The composition score, in [0, 1]."),
        _c("baseline", pa.float32(),
           "The mean score of random matrices of the same shapes (manifest: head_composition.baseline): "
           "scores near it mean no composition."),
    ),
    ("src_layer", "src_head", "dst_layer", "dst_head", "kind"),
    family="heads",
)

NEURON_CIRCUITS = Table(
    "neuron_circuits",
    "Weight-based connections of each MLP neuron through the residual stream (norm weights folded "
    "into copies of the weights): the tokens whose embeddings excite it most, and its strongest "
    "upstream and downstream neurons and heads. `weight` by relation: input_token, the neuron's "
    "pre-activation from the normalised token embedding alone (biases included); upstream_neuron / "
    "downstream_neuron, the signed virtual weight w_out(src) . w_in(dst) (ranked by magnitude); "
    "upstream_head, ||W_V W_O w_in|| (heads in layers up to the neuron's, the attention before the "
    "MLP included); downstream_head, ||w_out [W_QK | W_KQ | W_OV]|| over the later head's circuits "
    "(both >= 0, independent of the basis inside the head).",
    (
        _LAYER,
        _NEURON,
        _c("relation", pa.string(),
           "'input_token', 'upstream_neuron', 'upstream_head', 'downstream_neuron' or 'downstream_head'."),
        _c("rank", pa.int16(), "Rank within the relation, 0 is the strongest."),
        _c("other_layer", pa.int16(), "Layer of the other neuron or head (null for tokens).", nullable=True),
        _c("other_index", pa.int32(), "The other neuron's or head's index, or the token id."),
        _c("other_token", pa.string(), "The token as text (input_token rows; null otherwise).", nullable=True),
        _c("weight", pa.float32(), "The connection's strength, as the table description defines it per relation."),
    ),
    ("layer", "neuron", "relation", "rank"),
    family="circuits",
)

TOKEN_NEIGHBOURS = Table(
    "token_neighbours",
    "For every token the corpus holds (BOS excluded), its nearest tokens of the corpus by cosine "
    "similarity of the model's token embeddings (W_E rows as the model holds them), 32 each. Token search "
    "counts a neuron's top examples on these as related to the token searched for.",
    (
        _c("token_id", pa.int32(), "A token id the corpus holds."),
        _c("token", pa.string(), "That token decoded on its own, as in tokens.token."),
        _c("rank", pa.int16(), "0 is the nearest."),
        _c("neighbour_id", pa.int32(), "Another token id the corpus holds."),
        _c("neighbour", pa.string(), "That token decoded on its own."),
        _c("cosine", pa.float32(), "Cosine similarity of the two tokens' embedding rows."),
    ),
    ("token_id", "rank"),
)

_DEPTH = _c("depth", pa.int16(),
            "Residual state index: 2*layer for block layer's input (resid_pre), 2*layer+1 after its attention "
            "(resid_mid), 2*n_layers for the last block's output (resid_post, what the final norm reads).")
_SITE = _c("site", pa.string(), "'resid_pre', 'resid_mid' or 'resid_post' (the last block's output only).")

LOGIT_LENS = Table(
    "logit_lens",
    "The logit lens at sampled positions (spans of 16 positions chosen by a hash of their global position; "
    "BOS excluded): every residual state decoded through the final norm with its own scale and the "
    "unembedding. One row per position and depth.",
    (
        _SEQ,
        _POS,
        _DEPTH,
        _c("layer", pa.int16(), "The block the state belongs to (see depth)."),
        _SITE,
        _c("top_token_ids", pa.list_(pa.int32()), "The decoded distribution's most probable tokens, best first."),
        _c("top_tokens", pa.list_(pa.string()), "Those tokens as text."),
        _c("top_probs", pa.list_(pa.float32()), "Their probabilities."),
        _c("true_prob", pa.float32(), "Probability of the true next token (null at a window's last position).",
           nullable=True),
        _c("true_rank", pa.int32(),
           "Rank of the true next token in the decoded distribution, 0 = top-1 (null without a next token).",
           nullable=True),
        _c("kl_to_final", pa.float32(), "KL(final distribution || this depth's), nats; 0 at the last depth."),
        _c("entropy_nats", pa.float32(), "Entropy of this depth's decoded distribution, nats."),
        _c("top1_agrees", pa.bool_(), "Whether this depth's top-1 token is the model's final top-1."),
    ),
    ("seq_id", "pos", "depth"),
    family="lens",
)

LENS_POSITIONS = Table(
    "lens_positions",
    "One row per position the logit lens sampled: its tokens, the model's prediction, and the PCA "
    "experiment over its residual states at block boundaries (the embedding and every block's output): "
    "the variance share of the first principal component and whether that component, signed toward the "
    "final state and decoded like a state, gives the final top-1; and the control that scales every "
    "state to unit norm first (norm growth alone makes a large first component).",
    (
        _SEQ,
        _POS,
        _c("token_id", pa.int32(), "The token at this position."),
        _c("next_token_id", pa.int32(), "The true next token (null at a window's last position).", nullable=True),
        _c("final_top_token_id", pa.int32(), "The model's top-1 prediction here."),
        _c("final_top_token", pa.string(), "That token as text."),
        _c("pca_share", pa.float32(), "Share of the variance across layers on the first principal component."),
        _c("pca_match", pa.bool_(), "Whether that component, decoded, gives the final top-1."),
        _c("pca_top_token", pa.string(), "The component's decoded top-1 token."),
        _c("pca_share_normalized", pa.float32(), "The same share with every state scaled to unit norm first."),
        _c("pca_match_normalized", pa.bool_(), "The match with every state scaled to unit norm first."),
        _c("pca_top_token_normalized", pa.string(), "The normalised component's decoded top-1 token."),
    ),
    ("seq_id", "pos"),
    family="lens",
)

LAYER_STATS = Table(
    "layer_stats",
    "Per residual state (depth), means over the logit lens's sampled positions: how close the decoded "
    "distribution is to the final one, how well it predicts the next token, the residual's norm, and "
    "what the sublayer that produced this state wrote (embedding, an attention layer or an MLP).",
    (
        _DEPTH,
        _c("layer", pa.int16(), "The block the state belongs to (see depth)."),
        _SITE,
        _c("n_positions", pa.int64(), "Sampled positions averaged over."),
        _c("n_next", pa.int64(), "Of those, positions with a next token (next-token columns average these)."),
        _c("kl_to_final_mean", pa.float32(), "Mean KL(final || this depth), nats.", nullable=True),
        _c("top1_agreement", pa.float32(), "Fraction of positions whose top-1 here is the final top-1.",
           nullable=True),
        _c("entropy_nats_mean", pa.float32(), "Mean entropy of the decoded distribution, nats.", nullable=True),
        _c("next_token_accuracy", pa.float32(), "Fraction of positions whose top-1 here is the true next token.",
           nullable=True),
        _c("next_token_loss", pa.float32(), "Mean -log p(true next token) here, nats.", nullable=True),
        _c("resid_norm_mean", pa.float32(), "Mean L2 norm of the residual state.", nullable=True),
        _c("writer", pa.string(), "What wrote this state: 'embedding', 'attention' or 'mlp'."),
        _c("writer_layer", pa.int16(), "The writer's block (null for the embedding).", nullable=True),
        _c("write_norm_mean", pa.float32(), "Mean L2 norm of what the writer added (this state minus the one before).",
           nullable=True),
        _c("write_share", pa.float32(),
           "The writer's share of its block's mean squared write, attention against MLP (they sum to 1 "
           "per block; null for the embedding).", nullable=True),
        _c("write_dla_mean", pa.float32(),
           "Mean direct logit attribution of the writer to the true next token, in logits (the final "
           "state's norm scale frozen; the embedding's, every attention's and every MLP's sum to the final "
           "logit minus the final norm's and the unembedding's biases).", nullable=True),
    ),
    ("depth",),
    family="lens",
)

NEURON_EXPLANATIONS = Table(
    "neuron_explanations",
    "LLM explanations of neurons, written after the build by `python -m pipeline.explain` through an "
    "OpenAI-compatible endpoint the user configures, and cached here: the explainer model reads half "
    "of a neuron's top examples and writes one sentence; a simulator model then predicts, from that "
    "sentence alone, the activation (0-10) of every token of held-out examples (the other top "
    "examples and band samples), and the score is the correlation of its predictions with the real "
    "activations (simulate-and-score, Bills et al. 2023).",
    (
        _LAYER,
        _NEURON,
        _c("explainer", pa.string(), "The model that wrote the explanation (as the endpoint names it)."),
        _c("explanation", pa.string(), "The explanation, as the model wrote it (untrusted text: show it as data)."),
        _c("score", pa.float32(),
           "Correlation between simulated and real activations over the held-out tokens (1 = perfect; "
           "null when either is constant).", nullable=True),
        _c("simulator", pa.string(), "The model that simulated activations from the explanation."),
        _c("scored_tokens", pa.int32(), "How many held-out tokens the score covers."),
        _c("endpoint", pa.string(), "The endpoint's base URL."),
        _c("created_at", pa.string(), "When it was written (UTC, ISO 8601)."),
    ),
    ("layer", "neuron", "explainer"),
    family="explanations",
    built=False,
)

TABLES: tuple[Table, ...] = (DOCUMENTS, TOKENS, NEURONS, NEURON_EXAMPLES, ACTIVATIONS, HEADS, HEAD_EXAMPLES,
                             HEAD_COMPOSITION, NEURON_CIRCUITS, LOGIT_LENS, LENS_POSITIONS, LAYER_STATS,
                             TOKEN_NEIGHBOURS, NEURON_EXPLANATIONS)

# What fills each family of tables, for the notice a page shows when a store lacks one.
FAMILIES = {
    "corpus": "corpus tables",
    "neurons": "neuron statistics",
    "heads": "head statistics",
    "circuits": "neuron circuits",
    "explanations": "LLM explanations",
    "lens": "logit-lens statistics",
}

# Stores of layout 2 record no table versions: these are the versions they hold.
LAYOUT_2_TABLE_VERSIONS = {"documents": 1, "tokens": 1, "neurons": 1, "neuron_examples": 2, "activations": 1}
TABLES_BY_NAME: dict[str, Table] = {t.name: t for t in TABLES}


def table(name: str) -> Table:
    return TABLES_BY_NAME[name]


def is_identifier(name: str) -> bool:
    """A table name that can be spliced into SQL as it is (also for tables a statistic declares)."""
    return bool(re.fullmatch(r"[a-z][a-z0-9_]{0,62}", name))
