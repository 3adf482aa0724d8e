"""The statistics a build runs, listed explicitly (no import-time registration).

Each entry is a factory `StatContext -> Statistic` (see `contract.py`). The harvest builds one
of each, registers the union of their hook points and stops the forward pass after the last
one; the build writes whatever tables their `finalize` returns. Adding a statistic is a new
module plus an entry here: nothing in `harvest.py` or `build.py` names one.
"""

from __future__ import annotations

from pipeline.stats.heads import HeadPatterns
from pipeline.stats.histogram import Histogram
from pipeline.stats.lens import LogitLens
from pipeline.stats.moments import Moments
from pipeline.stats.token_neighbours import TokenNeighbours
from pipeline.stats.top import TopActivations

# Per MLP neuron, read at every layer's mlp.hook_post.
NEURON_STATISTICS = (
    Moments.create,
    TopActivations.create,
    Histogram.create,
)

# Per attention head, read at every layer's attn.hook_pattern.
HEAD_STATISTICS = (HeadPatterns.create,)

# The logit lens and the residual stream, at sampled positions: residual states, hook_z.
LENS_STATISTICS = (LogitLens.create,)

# The corpus's token set and each token's nearest tokens in the embedding (for token search).
CORPUS_STATISTICS = (TokenNeighbours.create,)

STATISTICS = (*NEURON_STATISTICS, *HEAD_STATISTICS, *LENS_STATISTICS, *CORPUS_STATISTICS)
