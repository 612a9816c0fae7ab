"""All-gather context parallelism: every worker gathers all K/V and attends its own queries.

The exact scheme serving engines use for prefill context parallelism (and the "llama3"
ring variant): simple and memory-hungry (each worker holds the whole K/V of a layer while it
attends). Zigzag split by default so the causal work is balanced.
"""

import torch

from longctx.costmodel import allgather_work
from longctx.errors import LongCtxError
from longctx.kernels import attention
from longctx.method import Method


class AllGatherAttention(Method):
    """Exact attention over all-gathered K/V with bottom-right causal masks per local span."""

    name = "allgather"

    def check(self, model_config, world):
        """Contiguous or zigzag layouts only (each local span needs a prefix of the keys)."""
        if self.config.layout not in (None, "zigzag", "contiguous"):
            raise LongCtxError("allgather supports the zigzag and contiguous layouts")

    def plan(self, doc_len, query_len, world):
        """Zigzag by default; contiguous blocks are sized per `config.balance`."""
        return self.layout_plan(doc_len, query_len, world, self.config.layout or "zigzag")

    def host_work(self, plan, host):
        """Causal pairs of the owned queries; all other K/V gathered before attention."""
        return allgather_work(host.spans, plan.doc_len, plan.world, self.cost_model().shape)

    def prefill_attention(self, ctx, layer, q, k, v, scale):
        """Gather [K; V] from every worker into global order, then attend each local span."""
        ctx.cache.store(layer, k, v)
        hosts = ctx.plan.hosts
        parts = ctx.comm.all_gather(torch.stack([k, v]), sizes=[host.num_tokens for host in hosts], dim=3)
        full = torch.cat(parts, dim=3).index_select(3, _global_order(ctx).to(q.device))
        output = torch.empty_like(q)
        row = 0
        for span in hosts[ctx.rank].spans:
            rows = slice(row, row + len(span))
            output[:, :, rows], _ = attention(q[:, :, rows], full[0][:, :, : span.stop], full[1][:, :, : span.stop],
                                              causal=True, scale=scale, backend=ctx.kernel_backend)
            row += len(span)
        return output


def _global_order(ctx):
    """Index that sorts the concatenated gathered tokens into global position order."""
    if "allgather_order" not in ctx.state:
        positions = [pos for host in ctx.plan.hosts for pos in host.positions()]
        ctx.state["allgather_order"] = torch.argsort(torch.tensor(positions))
    return ctx.state["allgather_order"]
