"""Spava: sequence-parallel approximate prefill with virtual blocks and a fused query pass.

Every host runs [anchor ; first virtual block ; second virtual block ; question] (`spava.layout`).
Per layer, host r:

1. selects the keys each of its two blocks passes (`spava.select`, scored by the question's
   queries) and starts one asynchronous all-gather per block slot (first blocks, then
   second blocks);
2. caches its anchor shard and both blocks, and attends the question over them (the owner
   of the question, host 0, also over the question causally; the others non-causally): a
   partial (out, lse) whose all-gather starts too;
3. runs the first block's call (`spava.layout.block_calls`) once the blocks it needs have
   arrived, then the second block's while nothing else is left to wait for: with `overlap`
   the second gather's transfer runs under the first call;
4. merges the question's partial results in rank order: the question's attention over the
   whole context is exact, in the same forward (no separate query pass, `query_rows`).

Decoding attends to every host's cache through the exact merge of `Method.decode_attention`.
Ablations: `--no-overlap` waits for each gather as soon as it starts; `--no-anchor-sharding`
caches the whole anchor on host 0; `--no-fused-query` still runs the question's exact
attention in prefill (the selection needs its queries) but caches nothing for it and leaves
the logits to a separate query pass; `--layout contiguous` pairs blocks 2r and 2r+1 instead
of the zigzag; `--no-frame-parallel` has every host encode the whole video instead of its share
of the frames (`Method.encoder_split`; the other methods encode frame-parallel).
"""

from dataclasses import dataclass

import torch

from apb import PassingStats
from longctx.comm import Ready
from longctx.costmodel import HostWork, KernelCall
from longctx.kernels import merge_many
from longctx.method import Method
from longctx.options import option
from longctx.planner import Planner
from spava.layout import block_calls, build_plan, cached_rows, resolve_sizes
from spava.select import pad_keys, selected_keys


@dataclass(frozen=True)
class SpavaOptions:
    """Options of spava: sizes (default l_a = n/64, l_p = n/128 on the tile) and the ablation switches."""

    anchor_len: int = option(None, "spava: anchor tokens every host runs (default n/64)", minimum=0)
    passing_len: int = option(None, "spava: keys per KV head each virtual block passes (default n/128)", minimum=0)
    overlap: bool = option(True, "spava: overlap the second passing all-gather with the first block's attention "
                                 "(--no-overlap waits for each at once)")
    anchor_sharding: bool = option(True, "spava: shard the anchor's cache over the hosts (--no-anchor-sharding "
                                         "caches it all on host 0)")
    fused_query: bool = option(True, "spava: fuse the question's exact attention into the prefill "
                                     "(--no-fused-query runs a separate query pass)")
    frame_parallel: bool = option(True, "spava: encode a video's frames split over the hosts "
                                        "(--no-frame-parallel encodes the whole video on every host)")


class SpavaPlanner(Planner):
    """Virtual blocks paired onto hosts (zigzag, or `--layout contiguous`), sized by the
    published rule; nothing to balance (the pairing is the balance)."""

    layouts = ("zigzag", "contiguous")

    def build(self, doc_len, query_len, world, sizes=None):
        """The validated plan (`spava.layout.build_plan`)."""
        options = self.options
        return build_plan(self.name, doc_len, query_len, world, resolve_sizes(options, doc_len, world),
                          zigzag=self.layout.name == "zigzag", anchor_sharding=options.anchor_sharding)

    def plan(self, doc_len, query_len, world):
        """The estimated plan; `details["balance"]` names the pairing."""
        plan = self.estimate(self.build(doc_len, query_len, world))
        plan.details = {"balance": f"{plan.layout} virtual-block pairing", **plan.details}
        return plan

    def host_work(self, plan, host):
        """Rows [anchor ; blocks ; question]; the calls of `block_calls` and the question's call
        over the cache; the keys scored; the two passing all-gathers (each padded to its
        slot's longest block) and the question's (out, lse) all-gather."""
        shape, world, query = self.cost_model().shape, plan.world, plan.query_len
        calls = [KernelCall(call.q_rows.stop - call.q_rows.start,
                            call.passing + sum(rows.stop - rows.start for rows in call.k_rows),
                            anchor_len=call.anchor_len, prefix_len=call.passing if call.anchor_len else 0)
                 for call in block_calls(host)]
        owner = host.rank == plan.append_rank
        calls.append(KernelCall(query, len(cached_rows(host)) + (query if owner else 0), causal=owner))
        scored = sum(len(span) for span, sends in zip(host.blocks, host.sends) if 0 < sends < len(span))
        slots = [max(other.sends[slot] for other in plan.hosts) for slot in (0, 1)]
        recv = (world - 1) * (sum(slots) * shape.kv_bytes + query * shape.heads * (shape.head_dim + 1) * 4)
        return HostWork.of_calls(calls, shape.heads, rows=host.local_len + query,
                                 scored_keys=scored * shape.kv_heads, recv_bytes=recv if world > 1 else 0,
                                 messages=3 * (world - 1), overlapped=self.options.overlap)


class SpavaAttention(Method):
    """Spava (arXiv 2601.21444): anchor + 2W zigzag virtual blocks with query-aware passing and
    the question's exact attention fused into the prefill forward."""

    name = "spava"
    kv_depends_on_question = True  # the question's queries choose each block's passing keys
    Options = SpavaOptions
    Planner = SpavaPlanner
    Stats = PassingStats

    def local_inputs(self, plan, rank, doc_ids, query_ids):
        """Anchor (positions 0..a-1), the two blocks at their positions, the question at n.. ."""
        host = plan.hosts[rank]
        blocks = [pos for span in host.blocks for pos in span.positions()]
        positions = list(range(host.anchor_len)) + blocks
        questions = list(range(plan.doc_len, plan.doc_len + len(query_ids)))
        return [doc_ids[pos] for pos in positions] + list(query_ids), positions + questions

    def owned_rows(self, plan, rank):
        """Rows of the owned tokens in `host.positions()` order: the anchor shard, then both blocks."""
        return cached_rows(plan.hosts[rank])

    def encoder_split(self):
        """The `frame_parallel` ablation switch (on by default)."""
        return self.options.frame_parallel

    def query_rows(self, plan, rank):
        """Rows of the prefill holding the question's final states (the fused query pass), or
        None when `fused_query` is off (the engine then runs a separate query pass)."""
        if not self.options.fused_query:
            return None
        start = plan.hosts[rank].local_len
        return slice(start, start + plan.query_len)

    def prefill_attention(self, ctx, layer, q, k, v, scale):
        """One layer of Spava on host r: q [B, Hq, S, D], k/v [B, Hkv, S, D] with S = anchor +
        both blocks + question; returns (out [B, Hq, S, D], lse) (see the module docstring)."""
        plan, host = ctx.plan, ctx.plan.hosts[ctx.rank]
        end = host.local_len
        question_q = q[:, :, end:]
        gathers = [self._start_gather(ctx, host, slot, question_q, k, v) for slot in (0, 1)]
        per_token = 2 * k.shape[0] * k.shape[1] * k.shape[3] * k.element_size()
        ctx.stats.passing_bytes_per_layer = per_token * sum(sum(other.sends) for other in plan.hosts)
        rows = torch.tensor(cached_rows(host), device=k.device)
        ctx.cache.store(layer, k.index_select(2, rows), v.index_select(2, rows))
        question = self._question_partial(ctx, layer, question_q, k[:, :, end:], v[:, :, end:], scale)
        received, outs, lses = {}, [], []
        for call in block_calls(host):
            virtual = host.virtual[call.block]
            for slot, pending in enumerate(gathers):
                if pending is not None and min(other.virtual[slot] for other in plan.hosts) < virtual:
                    received.update(self._arrived(plan, slot, pending.wait()))
                    gathers[slot] = None
            passing = [received[index] for index in range(virtual) if index in received]
            keys = [k[:, :, part] for part in call.k_rows]
            values = [v[:, :, part] for part in call.k_rows]
            keys = torch.cat([block[0] for block in passing] + keys, dim=2)
            values = torch.cat([block[1] for block in passing] + values, dim=2)
            out, lse = ctx.kernels.attention(q[:, :, call.q_rows], keys, values, causal=True,
                                             anchor_len=call.anchor_len,
                                             prefix_len=call.passing if call.anchor_len else 0, scale=scale)
            outs.append(out)
            lses.append(lse)
        for pending in gathers:
            if pending is not None:
                pending.wait()
        out, lse = self._question_merge(ctx, question)
        return torch.cat([*outs, out.to(q.dtype)], dim=2), torch.cat([*lses, lse], dim=2)

    def _start_gather(self, ctx, host, slot, question_q, k, v):
        """Select the keys block `slot` passes and start the all-gather of every host's block
        in that slot (padded to the slot's longest); returns the Pending (already waited on
        without `overlap`), or None when no host passes anything in the slot."""
        plan = ctx.plan
        longest = max(other.sends[slot] for other in plan.hosts)
        if longest == 0:
            return None
        rows = host.block_rows(slot)
        block = torch.stack(selected_keys(question_q, k[:, :, rows], v[:, :, rows], host.sends[slot]))
        pending = ctx.comm.all_gather_async(pad_keys(block, longest))
        return pending if self.options.overlap else Ready(pending.wait())

    @staticmethod
    def _arrived(plan, slot, parts):
        """{virtual block index: (keys, values)} from one slot's gathered, padded blocks."""
        return {other.virtual[slot]: (part[0][:, :, : other.sends[slot]], part[1][:, :, : other.sends[slot]])
                for other, part in zip(plan.hosts, parts)}

    def _question_partial(self, ctx, layer, question_q, question_k, question_v, scale):
        """The question's attention over this host's share of the context: its cache (anchor
        shard and blocks) and, on the question's owner, the question itself causally (appended
        to the cache when the query pass is fused). Returns the started all-gather of the
        packed (out, lse), or the packed tensor itself on one worker."""
        owner = ctx.rank == ctx.plan.append_rank
        cache_k, cache_v = ctx.cache.get(layer)
        if owner and self.options.fused_query:
            ctx.cache.append(layer, question_k, question_v)
            cache_k, cache_v = ctx.cache.get(layer)
        elif owner:
            cache_k, cache_v = torch.cat([cache_k, question_k], dim=2), torch.cat([cache_v, question_v], dim=2)
        out, lse = ctx.kernels.attention(question_q, cache_k, cache_v, causal=owner, scale=scale)
        return ctx.comm.all_gather_async(torch.cat([out.float(), lse[..., None]], dim=-1))

    @staticmethod
    def _question_merge(ctx, pending):
        """The question's exact attention, (out, lse) float32: every host's partial merged in rank order."""
        parts = [(part[..., :-1], part[..., -1]) for part in pending.wait()]
        return merge_many(parts)
