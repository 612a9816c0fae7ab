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

Ablations, each as the reference code defines it (thunlp/APB, experiments_spava/speed_test:
`modeling_qwen2_5_vl_apbvz_{no,no_na,no_nf,no_nf_nz,no_nf_nz_nv}.py` and the ring_flash_attn
files they call), and cumulative there in that order:

- `--no-overlap` (`no`): every all-gather (both passing slots and the question's partial
  results) is waited for as soon as it is posted;
- `--no-anchor-sharding` (`na`): host 0 caches the whole anchor (and attends the question
  over it), the others none of it;
- `--no-fused-query` (`nf`): the prefill runs the document alone: no question rows, no
  question partials; each block's passed keys are scored by the block's own last q rows
  (the reference scores with an uninitialised stand-in for the question: its ablation is for
  speed, so ours picks a defined query-free score of the same cost); the logits come from a
  separate exact query pass over the caches;
- `--layout contiguous` (`nz`): W virtual blocks, one per host, each passing 2 l_p keys
  (`spava.layout.build_plan`): one passing all-gather per layer instead of two;
- `--no-frame-parallel` (`nv`): every host encodes the whole video instead of its share of
  the frames (`Method.encoder_split`; the other methods encode frame-parallel).

Ours, not the reference's: `--query-pass` keeps the question in the prefill (its queries
still select) but caches nothing for it and takes the logits from a separate query pass; the
answers are spava's, the time is what the fused pass saves.
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
    """Options of spava: sizes (default l_a = n/64, l_p = n/128, rounded up to the size tile as
    the reference does) and the ablation switches (the module docstring)."""

    anchor_len: int = option(None, "spava: anchor tokens every host runs (default n/64 rounded up to a multiple "
                                   "of --size-tile)", minimum=0)
    passing_len: int = option(None, "spava: keys per KV head each virtual block passes (default n/128 rounded up "
                                    "to a multiple of --size-tile; twice that with --layout contiguous, whose "
                                    "blocks are twice as long)", minimum=0)
    size_tile: int = option(128, "spava: default anchor and passing sizes are rounded up to a multiple of this "
                                 "(the reference code's 128)", minimum=1)
    overlap: bool = option(True, "spava: post the passing and question all-gathers and compute while they travel; "
                                 "--no-overlap (the reference's 'no') waits for each as soon as it is posted")
    anchor_sharding: bool = option(True, "spava: shard the anchor's cache over the hosts; --no-anchor-sharding "
                                         "(the reference's 'na') keeps all of it on host 0")
    fused_query: bool = option(True, "spava: the question runs in the prefill, selects the passed keys and gets "
                                     "its exact attention in the same forward; --no-fused-query (the reference's "
                                     "'nf') prefills the document alone, selects without the question and runs a "
                                     "separate query pass")
    query_pass: bool = option(False, "spava, ours (no reference ablation): --query-pass keeps the question in the "
                                     "prefill for the selection but answers from a separate query pass (what "
                                     "the fused pass saves; same answers)")
    frame_parallel: bool = option(True, "spava: encode a video's frames split over the hosts; --no-frame-parallel "
                                        "(the reference's 'nv') encodes the whole video on every host")

    @property
    def question_in_prefill(self):
        """Whether the prefill runs the question's rows (not with --no-fused-query)."""
        return self.fused_query


class SpavaPlanner(Planner):
    """Virtual blocks on hosts (zigzag pairs of 2W, or W with `--layout contiguous`), sized by
    the reference's rule; nothing to balance (the pairing is the balance)."""

    layouts = ("zigzag", "contiguous")

    def build(self, doc_len, query_len, world, sizes=None):
        """The validated plan (`spava.layout.build_plan`)."""
        options, zigzag = self.options, self.layout.name == "zigzag"
        sizes = resolve_sizes(options, doc_len, world, blocks_per_host=2 if zigzag else 1)
        plan = build_plan(self.name, doc_len, query_len, world, sizes, zigzag=zigzag,
                          anchor_sharding=options.anchor_sharding)
        plan.details["question_in_prefill"] = options.question_in_prefill
        return plan

    def plan(self, doc_len, query_len, world):
        """The estimated plan; `details["balance"]` names the pairing."""
        plan = self.estimate(self.build(doc_len, query_len, world))
        pairing = "zigzag virtual-block pairing" if plan.layout == "zigzag" else "one virtual block per host"
        plan.details = {"balance": pairing, **plan.details}
        return plan

    def host_work(self, plan, host):
        """Rows [anchor ; blocks ; question (when in the prefill)]; the calls of `block_calls`
        and, with the question in the prefill, its call over the cache; the keys scored; one
        passing all-gather per block slot (padded to the slot's longest block) and, with the
        question in the prefill, the question's (out, lse) all-gather."""
        shape, world = self.cost_model().shape, plan.world
        query = plan.query_len if self.options.question_in_prefill else 0
        calls = [KernelCall(call.q_rows.stop - call.q_rows.start,
                            call.passing + sum(rows.stop - rows.start for rows in call.k_rows),
                            anchor_len=call.anchor_len, prefix_len=call.passing if call.anchor_len else 0)
                 for call in block_calls(host)]
        owner = host.rank == plan.append_rank
        if query:
            calls.append(KernelCall(query, len(cached_rows(host)) + (query if owner else 0), causal=owner))
        scored = sum(len(span) for span, sends in zip(host.blocks, host.sends) if 0 < sends < len(span))
        slots = [max(other.sends[slot] for other in plan.hosts) for slot in range(len(host.blocks))]
        recv = (world - 1) * (sum(slots) * shape.kv_bytes + query * shape.heads * (shape.head_dim + 1) * 4)
        messages = (world - 1) * (sum(1 for longest in slots if longest) + (1 if query else 0))
        return HostWork.of_calls(calls, shape.heads, rows=host.local_len + query,
                                 scored_keys=scored * shape.kv_heads, recv_bytes=recv if world > 1 else 0,
                                 messages=messages, overlapped=self.options.overlap)


class SpavaAttention(Method):
    """Spava (arXiv 2601.21444): anchor + 2W zigzag virtual blocks with query-aware passing and
    the question's exact attention fused into the prefill forward."""

    name = "spava"
    kv_depends_on_question = True  # the question's queries choose each block's passing keys
    Options = SpavaOptions
    Planner = SpavaPlanner
    Stats = PassingStats

    def local_inputs(self, plan, rank, doc_ids, query_ids):
        """Anchor (positions 0..a-1), the blocks at their positions, then (unless
        `--no-fused-query`) the question at n.. ."""
        host = plan.hosts[rank]
        blocks = [pos for span in host.blocks for pos in span.positions()]
        positions = list(range(host.anchor_len)) + blocks
        ids = [doc_ids[pos] for pos in positions]
        if not self.options.question_in_prefill:
            return ids, positions
        questions = list(range(plan.doc_len, plan.doc_len + len(query_ids)))
        return ids + list(query_ids), positions + questions

    def owned_rows(self, plan, rank):
        """Rows of the owned tokens in `host.positions()` order: the anchor shard, then both blocks."""
        return cached_rows(plan.hosts[rank])

    def encoder_split(self):
        """The `frame_parallel` ablation switch (on by default)."""
        return self.options.frame_parallel

    def query_rows(self, plan, rank):
        """Rows of the prefill holding the question's final states (the fused query pass), or
        None with `--no-fused-query` or `--query-pass` (the engine then runs a separate query pass)."""
        if not self.options.fused_query or self.options.query_pass:
            return None
        start = plan.hosts[rank].local_len
        return slice(start, start + plan.query_len)

    def prefill_attention(self, ctx, layer, q, k, v, scale):
        """One layer of Spava on host r: q [B, Hq, S, D], k/v [B, Hkv, S, D] with S = anchor +
        the blocks (+ the question, unless `--no-fused-query`); returns (out [B, Hq, S, D], lse)
        (see the module docstring)."""
        plan, host = ctx.plan, ctx.plan.hosts[ctx.rank]
        end = host.local_len
        with_question = self.options.question_in_prefill
        gathers = [self._start_gather(ctx, host, slot, self._scoring_queries(plan, host, slot, q), k, v)
                   for slot in range(len(host.blocks))]
        per_token = 2 * k.shape[0] * k.shape[1] * k.shape[3] * k.element_size()
        ctx.stats.passing_bytes_per_layer = per_token * sum(sum(other.sends) for other in plan.hosts)
        rows = torch.tensor(cached_rows(host), device=k.device)
        ctx.cache.store(layer, k.index_select(2, rows), v.index_select(2, rows))
        if with_question:
            question = self._question_partial(ctx, layer, q[:, :, end:], k[:, :, end:], v[:, :, end:], scale)
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
        if not with_question:
            return torch.cat(outs, dim=2), torch.cat(lses, dim=2)
        out, lse = self._question_merge(ctx, question)
        return torch.cat([*outs, out.to(q.dtype)], dim=2), torch.cat([*lses, lse], dim=2)

    def _scoring_queries(self, plan, host, slot, q):
        """The queries that score block `slot`'s keys: the question's rows (after the blocks),
        or with `--no-fused-query` the block's own last q rows (as many as the question has)."""
        if self.options.question_in_prefill:
            return q[:, :, host.local_len:]
        rows = host.block_rows(slot)
        return q[:, :, max(rows.start, rows.stop - plan.query_len):rows.stop]

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
        to the cache unless `--query-pass` leaves that to the query pass). Returns the posted
        all-gather of the packed (out, lse) (already waited on without `overlap`)."""
        owner = ctx.rank == ctx.plan.append_rank
        cache_k, cache_v = ctx.cache.get(layer)
        if owner and not self.options.query_pass:
            ctx.cache.append(layer, question_k, question_v)
            cache_k, cache_v = ctx.cache.get(layer)
        elif owner:
            cache_k, cache_v = torch.cat([cache_k, question_k], dim=2), torch.cat([cache_v, question_v], dim=2)
        out, lse = ctx.kernels.attention(question_q, cache_k, cache_v, causal=owner, scale=scale)
        pending = ctx.comm.all_gather_async(torch.cat([out.float(), lse[..., None]], dim=-1))
        return pending if self.options.overlap else Ready(pending.wait())

    @staticmethod
    def _question_merge(ctx, pending):
        """The question's exact attention, (out, lse) float32: every host's partial merged in rank order."""
        parts = [(part[..., :-1], part[..., -1]) for part in pending.wait()]
        return merge_many(parts)
