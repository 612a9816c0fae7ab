"""All-gather context parallelism: every worker gathers all K/V and attends its own queries.

The exact scheme serving engines use for prefill context parallelism (and the "llama3"
ring variant): simple and memory-hungry (each worker holds the whole K/V of a layer while it
attends). Zigzag split by default so the causal work is balanced.
"""

from dataclasses import dataclass

import torch

from longctx.costmodel import HostWork, KernelCall
from longctx.method import Method
from longctx.planner import Planner


def span_calls(spans):
    """The kernel calls of one host: per local span, (its query rows, keys before its end), the
    span's queries attending bottom-right causally over keys [0, span.stop) in global order."""
    calls, row = [], 0
    for span in spans:
        calls.append((slice(row, row + len(span)), span.stop))
        row += len(span)
    return calls


class AllGatherPlanner(Planner):
    """Zigzag by default, or contiguous blocks sized per `config.balance`."""

    layouts = ("zigzag", "contiguous")

    def host_work(self, plan, host):
        """`span_calls`; all other K/V gathered before attention (not overlapped)."""
        shape, rows = self.cost_model().shape, host.num_tokens
        calls = [KernelCall(local.stop - local.start, keys) for local, keys in span_calls(host.spans)]
        return HostWork.of_calls(calls, shape.heads, rows=rows, recv_bytes=(plan.doc_len - rows) * shape.kv_bytes,
                                 messages=plan.world - 1)


@dataclass
class AllGatherState:
    """Per request: the index sorting the gathered tokens (hosts in rank order) into global order."""

    order: torch.Tensor


class AllGatherAttention(Method):
    """Exact attention over all-gathered K/V with bottom-right causal masks per local span."""

    name = "allgather"
    Planner = AllGatherPlanner

    def new_state(self, plan, rank):
        """The global order of every host's tokens."""
        positions = [pos for host in plan.hosts for pos in host.positions()]
        return AllGatherState(torch.argsort(torch.tensor(positions)))

    def prefill_attention(self, ctx, layer, q, k, v, scale):
        """Gather [K; V] from every worker into global order, then attend each local span: (out, lse)."""
        ctx.cache.store(layer, k, v)
        hosts = ctx.plan.hosts
        parts = ctx.comm.all_gather(torch.stack([k, v]), sizes=[host.num_tokens for host in hosts], dim=3)
        full = torch.cat(parts, dim=3).index_select(3, ctx.state.order.to(q.device))
        output = torch.empty_like(q)
        lse = q.new_empty(q.shape[:3], dtype=torch.float32)
        for rows, keys in span_calls(hosts[ctx.rank].spans):
            output[:, :, rows], lse[:, :, rows] = ctx.kernels.attention(q[:, :, rows], full[0][:, :, :keys],
                                                                        full[1][:, :, :keys], causal=True, scale=scale)
        return output, lse
