"""Ring attention and BurstAttention (forward): exact causal attention with K/V rotating in a ring.

Queries stay on their worker; every worker's K/V block visits every other worker once, the
next transfer posted before computing on the current block. `ring` uses the contiguous split
(the textbook ring: the last rank does the most work); `burst` balances the causal work with
the zigzag (default) or striped layout and can run BurstAttention's double ring
(`intra_size` ranks per inner ring).
"""

from dataclasses import dataclass

import torch

from burst.accumulator import Accumulator
from burst.blocks import block_items
from burst.schedules import double_ring, single_ring
from longctx.options import option
from longctx.costmodel import HostWork, KernelCall
from longctx.errors import LongCtxError
from longctx.method import Method
from longctx.planner import Planner


@dataclass(frozen=True)
class RingOptions:
    """Options of ring and burst."""

    intra_size: int = option(0, "burst: ranks per inner ring of the double ring (0 = single ring)", minimum=0)


class RingPlanner(Planner):
    """The textbook ring's plan: equal contiguous blocks (balanced only with `--balance auto`)."""

    layouts = ("contiguous",)
    default_balance = "equal"
    double_ring = False

    def check(self, model_config, world):
        """The layout; `intra_size`, when set, needs a double ring and must divide the worker count."""
        super().check(model_config, world)
        inner = self.options.intra_size
        if inner and not self.double_ring:
            raise LongCtxError("--intra-size (double ring) applies to method 'burst' only")
        if inner and world % inner:
            raise LongCtxError(f"--intra-size {inner} must divide --nproc {world}")

    def host_work(self, plan, host):
        """The kernel calls of the ring's work items (`block_items`, as the attention runs them)
        against every host's block; every other block arrives once, overlapped with compute."""
        shape, rows = self.cost_model().shape, host.num_tokens
        calls = [KernelCall(item.q_rows.stop - item.q_rows.start, item.k_rows.stop - item.k_rows.start, item.causal)
                 for other in plan.hosts for item in block_items(host.spans, other.spans)]
        return HostWork.of_calls(calls, shape.heads, rows=rows, recv_bytes=(plan.doc_len - rows) * shape.kv_bytes,
                                 messages=plan.world - 1, overlapped=True)


class BurstPlanner(RingPlanner):
    """BurstAttention's plan: zigzag (default), striped or contiguous (balanced unless
    `--balance equal`); the double ring allowed."""

    layouts = ("zigzag", "striped", "contiguous")
    default_balance = "auto"
    double_ring = True


@dataclass
class RingState:
    """Per request: this worker's work items against each rank's block (`block_items`)."""

    items: list


class RingAttention(Method):
    """Plain K/V ring over a contiguous split."""

    name = "ring"
    Options = RingOptions
    Planner = RingPlanner

    def new_state(self, plan, rank):
        """The work items of this rank's spans against every rank's, computed once per request."""
        mine = plan.hosts[rank].spans
        return RingState([block_items(mine, host.spans) for host in plan.hosts])

    def schedule(self, ctx, block, block_shape):
        """The order blocks arrive in: a single ring."""
        return single_ring(ctx.comm, block, block_shape)

    def prefill_attention(self, ctx, layer, q, k, v, scale):
        """Keep local K/V; rotate [K; V] around the ring and fold each block into the running
        softmax of the rows it concerns (LAO: no separate merge pass on the Triton path); returns
        (out, lse)."""
        ctx.cache.store(layer, k, v)
        hosts = ctx.plan.hosts
        block = torch.stack([k, v])

        def block_shape(rank):
            shape = list(block.shape)
            shape[3] = hosts[rank].num_tokens
            return tuple(shape)

        acc = Accumulator(q, v.shape[-1])
        for source, kv in self.schedule(ctx, block, block_shape):
            for item in ctx.state.items[source]:
                acc.attend(item.q_rows, q[:, :, item.q_rows], kv[0][:, :, item.k_rows], kv[1][:, :, item.k_rows],
                           causal=item.causal, scale=scale, kernels=ctx.kernels)
        return acc.result(q.dtype)


class BurstAttention(RingAttention):
    """BurstAttention forward: balanced layout, overlapped transfers, optional double ring."""

    name = "burst"
    Planner = BurstPlanner

    def schedule(self, ctx, block, block_shape):
        """Double ring when `intra_size` is set (and smaller than the world), else a single ring."""
        inner = self.options.intra_size
        if inner and inner < ctx.comm.world:
            return double_ring(ctx.comm, block, block_shape, inner)
        return single_ring(ctx.comm, block, block_shape)
