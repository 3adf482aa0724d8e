"""Every store table and column, declared once.

The Parquet writer, the DuckDB views, `mechscope verify`, the README's table reference and the
tests all derive from `TABLES`. Nothing here knows how the numbers are computed (that is
`pipeline/`) or how they are queried (that is `store/queries.py`).

Conventions: snake_case, integer keys named `layer`, `neuron`, `seq_id`, `pos`, `doc_id`,
`token_id`; units and kinds as suffixes (`_frac`, `_cos`); token text lives in `tokens`, with one
exception: `neuron_examples.context_tokens` repeats each example's window of tokens as text, so
that a neuron page never has to look its windows up in the (corpus-sized) `tokens` table.

Version history (`SCHEMA_VERSION`, written to every manifest; `store.manifest` refuses others):
1. the first store layout;
2. `neuron_examples.context_tokens`.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

SCHEMA_VERSION = 2


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
    ),
    ("layer", "neuron"),
)

NEURON_EXAMPLES = Table(
    "neuron_examples",
    "Evidence per neuron: its top-k activating positions over the whole corpus (kind='top', "
    "rank 0 is the strongest; ties broken by earlier position), and band samples (kind='band'): "
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
    ),
    ("layer", "neuron", "kind", "rank"),
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
)

TABLES: tuple[Table, ...] = (DOCUMENTS, TOKENS, NEURONS, NEURON_EXAMPLES, ACTIVATIONS)
TABLES_BY_NAME: dict[str, Table] = {t.name: t for t in TABLES}


def table(name: str) -> Table:
    return TABLES_BY_NAME[name]
