"""Compressors: which local keys a host passes on (its compressed block), per KV head.

A compressor scores every local key of one layer, [B, Hkv, L] float32, higher = more worth
passing. `select` then max-pools the scores over neighbouring keys (so a kept key brings its
neighbourhood's evidence), drops the protected rows and keeps the top `sends` per KV head.
`select_by_question` is the query-aware selection on its own (public: Spava's blocks use it).

* `query` (default, training-free): mean over the question tokens in the anchor (or probe) of
  q·k, averaged over each KV head's GQA group (computed as one dot with the mean query). The
  question's queries are first moved by RoPE from their anchor positions to the positions the
  question really has, after the document (`apb.rotary.Rerotation`), so they meet the block's
  keys at the relative distances the model was trained on.
* `retaining-heads`: Locret-style learned heads on the pre-RoPE projections (`apb.heads`).
* `random`: uniform random scores, for ablations only.
"""

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from apb.heads import RetainingHeads, check_file
from apb.rotary import Rerotation, rotary_embedding
from apb.taps import ProjectionTaps
from longctx.errors import LongCtxError


@dataclass
class CompressorState:
    """What a compressor keeps during one request on one worker (`APBAttention.new_state`).

    `question_start` is the question's first true position (the document's length); the query
    compressor keeps its `Rerotation` of the question rows in `rerotation`, the
    retaining-heads compressor its projection taps and heads in `taps` / `heads`.
    """

    question_start: int = None
    rerotation: object = None
    taps: object = None
    heads: object = None


class HooklessCompressor:
    """Shared surface of compressors that score from post-RoPE q/k alone: no checks, no hooks."""

    def __init__(self, options):
        self.options = options

    @classmethod
    def check(cls, options, model_config):
        """Nothing to check."""

    def hooks(self, state, model, host):
        """No hooks needed (post-RoPE q/k suffice); returns None."""
        return None


class QueryCompressor(HooklessCompressor):
    """Score = mean over question queries (and the GQA group) of q·k, the queries at the
    question's true positions; needs the question in the lead rows."""

    name = "query"
    needs_question = True
    pool = 5

    def hooks(self, state, model, host):
        """Put the `Rerotation` of the question rows (lead positions head_len.. -> true positions
        question_start..) in `state`; no hooks, returns None."""
        rows = range(host.head_len, host.head_len + host.question_len)
        true = range(state.question_start, state.question_start + host.question_len)
        state.rerotation = Rerotation(rotary_embedding(model), rows, true)
        return None

    def scores(self, state, layer, host, q, k, v):
        """[B, Hkv, L] float32 scores of the local keys k[:, :, lead:] from the question rows of q.

        The question rows are moved to their true positions by `state.rerotation`; with no
        state (None: Spava, cost calibration) they are taken as they are, i.e. already there.
        """
        start = host.head_len
        question = q[:, :, start : start + host.question_len].float()
        if state is not None:
            question = state.rerotation(question)
        return query_scores(question, k[:, :, host.lead_len :])


class RetainingHeadsCompressor:
    """Score = trained per-layer MLP on concat(pre-RoPE q, k, v), one score per KV head.

    The heads are loaded once per worker (per file, its modification time and the device)
    and kept by this object, which the worker keeps for all its requests.
    """

    name = "retaining-heads"
    needs_question = False
    pool = 5

    def __init__(self, options):
        self.options = options
        self.path = options.retaining_heads
        self._loaded = (None, None)

    @classmethod
    def check(cls, options, model_config):
        """LongCtxError when the file is missing, unreadable or made for another model."""
        check_file(options.retaining_heads, model_config)

    def hooks(self, state, model, host):
        """Put the heads (on the model's device) and the ProjectionTaps the scores read in `state`;
        returns the taps (a context manager)."""
        state.heads = self._heads(model.config, next(model.parameters()).device)
        state.taps = ProjectionTaps(model)
        return state.taps

    def scores(self, state, layer, host, q, k, v):
        """[B, Hkv, L] float32 scores of the local rows from this layer's tapped projections."""
        pre_q, pre_k, pre_v = state.taps.pop(layer)
        rows = slice(host.lead_len, None)
        with torch.no_grad():
            scores = state.heads(layer, pre_q[:, rows], pre_k[:, rows], pre_v[:, rows])
        return scores.transpose(1, 2)

    def _heads(self, model_config, device):
        """RetainingHeads from the file on `device`, loaded again only when the file or device changes."""
        key = (os.path.abspath(self.path), os.path.getmtime(self.path), str(device))
        if self._loaded[0] != key:
            self._loaded = (key, RetainingHeads.load(self.path, model_config).to(device))
        return self._loaded[1]


class RandomCompressor(HooklessCompressor):
    """Uniform random scores, seeded by (layer, rank) so runs repeat (ablation only)."""

    name = "random"
    needs_question = False
    pool = 1

    def scores(self, state, layer, host, q, k, v):
        """[B, Hkv, L] float32 uniform scores."""
        generator = torch.Generator().manual_seed(1_000_003 * layer + host.rank)
        shape = (k.shape[0], k.shape[1], k.shape[2] - host.lead_len)
        return torch.rand(shape, generator=generator).to(k.device)


COMPRESSORS = {cls.name: cls for cls in (QueryCompressor, RetainingHeadsCompressor, RandomCompressor)}


def make_compressor(options):
    """The compressor named by `options.compressor` (APB's options); LongCtxError if unknown."""
    if options.compressor not in COMPRESSORS:
        raise LongCtxError(f"unknown compressor {options.compressor!r}; choose one of {', '.join(COMPRESSORS)}")
    return COMPRESSORS[options.compressor](options)


def query_scores(question, keys):
    """[B, Hkv, L] float32 scores of `keys` [B, Hkv, L, D]: the mean over the `question` queries
    [B, Hq, q, D] (at their true positions) and over each KV head's GQA group of q.k, as one dot
    with the mean query."""
    batch, _, _, head_dim = question.shape
    mean_query = question.float().reshape(batch, keys.shape[1], -1, head_dim).mean(dim=2)
    return torch.einsum("bhd,bhsd->bhs", mean_query, keys.float())


def select_by_question(question, keys, sends):
    """Indices [B, Hkv, sends] (ascending) of the `sends` keys per KV head of `keys` [B, Hkv, L, D]
    the question's queries `question` [B, Hq, q, D] score highest (`query_scores`, max-pooled over
    QueryCompressor.pool neighbours, `select`): APB's training-free query-aware selection."""
    return select(query_scores(question, keys), sends, pool=QueryCompressor.pool)


def select(scores, sends, protected=0, pool=1):
    """Indices [B, Hkv, sends] (ascending) of the keys to pass, from scores [B, Hkv, L].

    The first `protected` rows can never be chosen (nor lend their scores to their
    neighbours); the others are max-pooled over `pool` neighbours (stride 1, same length) and
    the top `sends` per KV head are kept.
    """
    if protected:
        scores = scores.clone()
        scores[..., :protected] = float("-inf")
    if pool > 1:
        scores = F.max_pool1d(scores, kernel_size=pool, stride=1, padding=pool // 2)
        scores[..., :protected] = float("-inf")
    return scores.topk(sends, dim=-1).indices.sort(dim=-1).values
