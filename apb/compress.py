"""Compressors: which local keys a host passes on (its compressed block), per KV head.

A compressor scores every local key of one layer, [B, Hkv, L] float32, higher = more worth
passing. `select` then max-pools the scores over neighbouring keys (so a kept key brings its
neighbourhood's evidence), drops the protected rows and keeps the top `sends` per KV head.

* `query` (default, training-free): mean over the question tokens in the anchor (or probe) of
  q·k, averaged over each KV head's GQA group (computed as one dot with the mean query).
* `retaining-heads`: Locret-style learned heads on the pre-RoPE projections (`apb.heads`).
* `random`: uniform random scores, for ablations only.
"""

import os

import torch
import torch.nn.functional as F

from apb.heads import RetainingHeads, check_file
from apb.taps import ProjectionTaps
from longctx.errors import LongCtxError


class HooklessCompressor:
    """Shared surface of compressors that score from post-RoPE q/k alone: no checks, no hooks."""

    def __init__(self, config):
        self.config = config

    def check(self, model_config):
        """Nothing to check."""

    def hooks(self, ctx, model):
        """No hooks needed (post-RoPE q/k suffice); returns None."""
        return None


class QueryCompressor(HooklessCompressor):
    """Score = mean over question queries (and the GQA group) of q·k; needs the question in the lead rows."""

    name = "query"
    needs_question = True
    pool = 5

    def scores(self, ctx, layer, host, q, k, v):
        """[B, Hkv, L] float32 scores of the local keys k[:, :, lead:] from the question rows of q."""
        start = host.head_len
        question = q[:, :, start : start + host.question_len].float()
        batch, q_heads, _, head_dim = question.shape
        kv_heads = k.shape[1]
        mean_query = question.reshape(batch, kv_heads, -1, head_dim).mean(dim=2)
        return torch.einsum("bhd,bhsd->bhs", mean_query, k[:, :, host.lead_len :].float())


class RetainingHeadsCompressor:
    """Score = trained per-layer MLP on concat(pre-RoPE q, k, v), one score per KV head."""

    name = "retaining-heads"
    needs_question = False
    pool = 5

    def __init__(self, config):
        self.config = config
        self.path = config.retaining_heads

    def check(self, model_config):
        """LongCtxError when the file is missing, unreadable or made for another model."""
        check_file(self.path, model_config)

    def hooks(self, ctx, model):
        """Load the heads onto the model's device and return the ProjectionTaps the scores read."""
        ctx.state["retaining_heads"] = _load_heads(self.path, model.config, next(model.parameters()).device)
        taps = ProjectionTaps(model)
        ctx.state["taps"] = taps
        return taps

    def scores(self, ctx, layer, host, q, k, v):
        """[B, Hkv, L] float32 scores of the local rows from this layer's tapped projections."""
        pre_q, pre_k, pre_v = ctx.state["taps"].pop(layer)
        rows = slice(host.lead_len, None)
        with torch.no_grad():
            scores = ctx.state["retaining_heads"](layer, pre_q[:, rows], pre_k[:, rows], pre_v[:, rows])
        return scores.transpose(1, 2)


class RandomCompressor(HooklessCompressor):
    """Uniform random scores, seeded by (layer, rank) so runs repeat (ablation only)."""

    name = "random"
    needs_question = False
    pool = 1

    def scores(self, ctx, layer, host, q, k, v):
        """[B, Hkv, L] float32 uniform scores."""
        generator = torch.Generator().manual_seed(1_000_003 * layer + host.rank)
        shape = (k.shape[0], k.shape[1], k.shape[2] - host.lead_len)
        return torch.rand(shape, generator=generator).to(k.device)


COMPRESSORS = {cls.name: cls for cls in (QueryCompressor, RetainingHeadsCompressor, RandomCompressor)}


def make_compressor(config):
    """The compressor named by `config.compressor`; LongCtxError if unknown."""
    if config.compressor not in COMPRESSORS:
        raise LongCtxError(f"unknown compressor {config.compressor!r}; choose one of {', '.join(COMPRESSORS)}")
    return COMPRESSORS[config.compressor](config)


def select(scores, host, pool):
    """Indices [B, Hkv, host.sends] (ascending) of the keys to pass, from scores [B, Hkv, L].

    The first `host.protected` rows can never be chosen (nor lend their scores to their
    neighbours); the others are max-pooled over `pool` neighbours (stride 1, same length) and
    the top `host.sends` per KV head are kept.
    """
    protected = slice(0, host.protected)
    if host.protected:
        scores = scores.clone()
        scores[..., protected] = float("-inf")
    if pool > 1:
        scores = F.max_pool1d(scores, kernel_size=pool, stride=1, padding=pool // 2)
        scores[..., protected] = float("-inf")
    return scores.topk(host.sends, dim=-1).indices.sort(dim=-1).values


_LOADED = {}


def _load_heads(path, model_config, device):
    """RetainingHeads from `path` on `device`; the last file loaded is kept (per process) until it changes."""
    key = (os.path.abspath(path), os.path.getmtime(path), str(device))
    if key not in _LOADED:
        _LOADED.clear()
        _LOADED[key] = RetainingHeads.load(path, model_config).to(device)
    return _LOADED[key]
