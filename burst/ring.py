"""Ring attention and BurstAttention (forward): exact causal attention with K/V rotating in a ring.

Queries stay on their worker; every worker's K/V block visits every other worker once, the
next transfer posted before computing on the current block. `ring` uses the contiguous split
(the textbook ring: the last rank does the most work); `burst` balances the causal work with
the zigzag (default) or striped layout and can run BurstAttention's double ring
(`intra_size` ranks per inner ring).
"""

import torch

from burst.accumulator import Accumulator
from burst.blocks import block_items
from burst.schedules import double_ring, single_ring
from longctx.costmodel import ring_work
from longctx.errors import LongCtxError
from longctx.method import Method


class RingAttention(Method):
    """Plain K/V ring over a contiguous split."""

    name = "ring"
    default_layout = "contiguous"
    layouts = ("contiguous",)

    def check(self, model_config, world):
        """Only the layouts this class supports; double ring only for burst."""
        layout = self.config.layout or self.default_layout
        if layout not in self.layouts:
            raise LongCtxError(f"method {self.name!r} supports layouts {', '.join(self.layouts)} (got {layout!r})")
        if self.config.intra_size and self.name != "burst":
            raise LongCtxError("--intra-size (double ring) applies to method 'burst' only")

    def plan(self, doc_len, query_len, world):
        """Spans from the layout helpers (contiguous blocks sized per `config.balance`); each
        worker keeps the K/V of the tokens it holds."""
        return self.layout_plan(doc_len, query_len, world, self.config.layout or self.default_layout)

    def host_work(self, plan, host):
        """Causal pairs of the owned queries; every other host's K/V arrives once, overlapped with compute."""
        sources = [span for other in plan.hosts for span in other.spans]
        return ring_work(host.spans, plan.doc_len, plan.world, self.cost_model().shape, sources)

    def schedule(self, ctx, block, block_shape):
        """The order blocks arrive in: a single ring."""
        return single_ring(ctx.comm, block, block_shape)

    def prefill_attention(self, ctx, layer, q, k, v, scale):
        """Keep local K/V; rotate [K; V] around the ring and fold each block into the running
        softmax of the rows it concerns (LAO: no separate merge pass on the Triton path)."""
        ctx.cache.store(layer, k, v)
        hosts = ctx.plan.hosts
        my_spans = hosts[ctx.rank].spans
        block = torch.stack([k, v])

        def block_shape(rank):
            shape = list(block.shape)
            shape[3] = hosts[rank].num_tokens
            return tuple(shape)

        acc = Accumulator(q, v.shape[-1])
        for source, kv in self.schedule(ctx, block, block_shape):
            for item in _items(ctx, my_spans, hosts[source].spans, source):
                acc.attend(item.q_rows, q[:, :, item.q_rows], kv[0][:, :, item.k_rows], kv[1][:, :, item.k_rows],
                           causal=item.causal, scale=scale, backend=ctx.kernel_backend)
        return acc.result(q.dtype)


class BurstAttention(RingAttention):
    """BurstAttention forward: balanced layout, overlapped transfers, optional double ring."""

    name = "burst"
    default_layout = "zigzag"
    layouts = ("zigzag", "striped", "contiguous")

    def check(self, model_config, world):
        """Layout must be known; `intra_size`, when set, must divide the worker count."""
        super().check(model_config, world)
        if self.config.intra_size and world % self.config.intra_size:
            raise LongCtxError(f"--intra-size {self.config.intra_size} must divide --nproc {world}")

    def schedule(self, ctx, block, block_shape):
        """Double ring when `intra_size` is set (and smaller than the world), else a single ring."""
        inner = self.config.intra_size
        if inner and inner < ctx.comm.world:
            return double_ring(ctx.comm, block, block_shape, inner)
        return single_ring(ctx.comm, block, block_shape)


def _items(ctx, my_spans, source_spans, source):
    """Work items for (this rank, source), computed once per request."""
    memo = ctx.state.setdefault("ring_items", {})
    if source not in memo:
        memo[source] = block_items(my_spans, source_spans)
    return memo[source]
