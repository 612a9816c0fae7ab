"""APB: query-aware approximate prefill with an anchor block and compressed passing blocks.

Host h holds block h of the document. Hosts > 0 put an anchor in front of their block (the
first document tokens, the question, more leading document tokens; positions 0..l_a-1).
Each layer, every host but the last scores its local keys, keeps the top l_p per KV head and
all-gathers them; host h then attends with keys [P_h ; anchor ; local] where P_h holds the
compressed blocks of hosts 0..h-1 (`apb.layout.attention_calls`). Anchor rows are dropped
after prefill; only the local block's K/V is cached, and the question and generated tokens
attend to every host's cache through the exact merge of `Method.decode_attention` (the last
host appends them).
"""

from contextlib import nullcontext
from dataclasses import dataclass

import torch

from apb.compress import COMPRESSORS, CompressorState, make_compressor, select_by_question
from apb.layout import APBLayout, attention_calls, lead_inputs, resolve_sizes
from apb.passing import PassingStats, all_gather_blocks, compressed_block
from longctx.costmodel import HostWork, KernelCall
from longctx.errors import LongCtxError
from longctx.method import Method
from longctx.options import option
from longctx.plan import balanced_block_sizes
from longctx.planner import Planner


@dataclass(frozen=True)
class APBOptions:
    """Options of apb and star: sizes in tokens or as fractions of the block l_b (`apb.layout`)."""

    anchor_len: int = option(None, "apb/star: anchor tokens (default: apb l_b/4, star the first block)", minimum=0)
    passing_len: int = option(None, "apb: passing tokens each host sends per KV head (default l_b/8)", minimum=0)
    anchor_ratio: float = option(None, "apb/star: anchor as a fraction of the block", minimum=0, maximum=1)
    passing_ratio: float = option(None, "apb: passing as a fraction of each host's block", minimum=0, maximum=1)
    anchor_head_tokens: int = option(16, "apb: leading document tokens placed before the question in the anchor",
                                     minimum=0)
    compressor: str = option("query", "apb: how passing blocks are chosen: query, retaining-heads or random")
    retaining_heads: str = option(None, "apb: safetensors file of retaining heads (python -m apb.train_heads)",
                                  metavar="FILE")

    def __post_init__(self):
        if self.compressor not in COMPRESSORS:
            raise LongCtxError(f"unknown compressor {self.compressor!r}; choose one of {', '.join(COMPRESSORS)}")


class APBPlanner(Planner):
    """Contiguous blocks with anchor / probe rows and passing sizes (`apb.layout.APBLayout`).

    Balance "auto" (APB's and Star's default) sizes the blocks so every host's estimated time is the same, kept
    only when its estimated critical path is not longer than the equal split's;
    `details["balance"]` says which plan was used and `details["equal_critical_ms"]` what the
    equal split would take.
    """

    star = False

    def __init__(self, name, config, options):
        super().__init__(name, config, options)
        self.compressor = None if self.star else COMPRESSORS[options.compressor]

    def check(self, model_config, world):
        """Contiguous layout only; the compressor's own checks (e.g. the retaining-heads file)."""
        super().check(model_config, world)
        if self.compressor is not None:
            self.compressor.check(self.options, model_config)

    def apb_layout(self, doc_len, query_len, world):
        """This run's `APBLayout` (sizes by the published rule or the options)."""
        if doc_len < 1:
            raise LongCtxError("the document is empty")
        sizes = resolve_sizes(self.options, doc_len, query_len, world, star=self.star)
        return APBLayout(sizes, doc_len, query_len, world, question=0 if self.star else query_len,
                         needs_question=self.compressor is not None and self.compressor.needs_question,
                         head_tokens=self.options.anchor_head_tokens)

    def build(self, doc_len, query_len, world, sizes=None):
        """The validated plan, equal blocks unless `sizes`."""
        return self.apb_layout(doc_len, query_len, world).plan(self.name, sizes)

    def balanced_sizes(self, doc_len, query_len, world):
        """Block sizes for equal estimated times, each block estimated on `APBLayout.trial_host`
        with an all-gather padded to l_p."""
        layout, model = self.apb_layout(doc_len, query_len, world), self.cost_model()

        def host_ms(rank, start, size):
            return model.host_ms(self.work(layout.trial_host(rank, start, size), world, layout.sizes.passing))

        return balanced_block_sizes(doc_len, world, host_ms, tile=model.coeffs.tile, speeds=model.speeds)

    def describe(self, plan, equal, balanced):
        """`equal_critical_ms` (when balanced), `balance` and the compressor, after the estimate."""
        if balanced is not None:
            plan.details["equal_critical_ms"] = equal.critical_ms
        plan.details["balance"] = ("equal" if balanced is None else "auto" if plan is balanced
                                   else "auto (equal split kept: not faster)")
        if self.compressor is not None:
            plan.details["compressor"] = self.compressor.name

    def host_work(self, plan, host):
        """`work`, the all-gather padded to the longest block sent."""
        return self.work(host, plan.world, max((other.sends for other in plan.hosts), default=0))

    def work(self, host, world, max_sends):
        """Lead and local rows; the kernel calls of `attention_calls`; keys scored; the passing
        all-gather, which pads every host's block to `max_sends` keys per KV head, so each host
        receives (world - 1) padded blocks when anything is passed."""
        shape, rows = self.cost_model().shape, host.num_tokens
        calls = [KernelCall(call.q_rows.stop - call.q_rows.start,
                            (host.passing_len if call.passing else 0) + call.k_rows.stop - call.k_rows.start,
                            anchor_len=call.anchor_len, prefix_len=host.passing_len if call.anchor_len else 0)
                 for call in attention_calls(host)]
        passing = max_sends > 0 and world > 1
        return HostWork.of_calls(calls, shape.heads, rows=host.lead_len + rows,
                                 scored_keys=rows * shape.kv_heads if host.selects else 0,
                                 recv_bytes=(world - 1) * max_sends * shape.kv_bytes if passing else 0,
                                 messages=world - 1 if passing else 0)


class APBAttention(Method):
    """APB (Huang et al.): anchor with the question + compressed passing blocks; `star` subclasses it."""

    name = "apb"
    kv_depends_on_question = True
    Options = APBOptions
    Planner = APBPlanner
    Stats = PassingStats

    def __init__(self, config):
        super().__init__(config)
        self.compressor = None if self.planner.star else make_compressor(self.options)

    @classmethod
    def calibrate_costs(cls, bench):
        """`compress_ns_per_key`: the query compressor's scoring and top-k selection, per key and KV head."""
        from longctx.calibrate import fit_rate

        bench.say("compressor")
        shape, question = bench.shape, 32
        key_counts, key_s = [], []
        for n in bench.sizes:
            q = bench.rand(1, shape.heads, question, shape.head_dim)
            k = bench.rand(1, shape.kv_heads, n, shape.head_dim)
            key_counts.append(float(n * shape.kv_heads))
            key_s.append(bench.time(lambda: select_by_question(q, k, max(1, n // 8))))
        return {"compress_ns_per_key": round(1e9 / fit_rate(key_counts, key_s), 4)}

    def new_state(self, plan, rank):
        """What the compressor keeps during one request (`CompressorState`; the question's true
        start is the document's length)."""
        return CompressorState(question_start=plan.doc_len)

    def local_inputs(self, plan, rank, doc_ids, query_ids):
        """Lead rows (anchor or probe, positions 0..lead-1) then the owned block at its global positions."""
        host = plan.hosts[rank]
        ids, positions = lead_inputs(host, doc_ids, query_ids)
        owned = host.positions()
        return ids + [doc_ids[pos] for pos in owned], positions + owned

    def prefill_hooks(self, ctx, model):
        """The compressor's hooks on hosts that score keys (retaining heads tap q/k/v_proj; the
        query compressor keeps the model's rotary embedding)."""
        host = ctx.plan.hosts[ctx.rank]
        hooks = self.compressor.hooks(ctx.state, model, host) if host.selects else None
        return hooks or nullcontext()

    def prefill_attention(self, ctx, layer, q, k, v, scale):
        """One layer of APB prefill on host h; q [B, Hq, lead + n, D], k/v [B, Hkv, lead + n, D].

        Keeps the local rows' K/V, passes its compressed block, gathers P_h from hosts
        0..h-1 (this layer only) and runs `attention_calls(host)`; returns (out, lse).
        """
        host = ctx.plan.hosts[ctx.rank]
        lead = host.lead_len
        ctx.cache.store(layer, k[:, :, lead:], v[:, :, lead:])
        passing_k, passing_v = k[:, :, :0], v[:, :, :0]
        ctx.stats.passing_bytes_per_layer = 0
        if any(other.sends for other in ctx.plan.hosts):
            sent = compressed_block(self.compressor, ctx.state, layer, host, q, k, v)
            blocks = all_gather_blocks(ctx, *sent)[: ctx.rank]
            if blocks:
                passing_k = torch.cat([block[0] for block in blocks], dim=2)
                passing_v = torch.cat([block[1] for block in blocks], dim=2)
        outs, lses = [], []
        for call in attention_calls(host):
            keys, values = k[:, :, call.k_rows], v[:, :, call.k_rows]
            if call.passing:
                keys, values = _after(passing_k, keys), _after(passing_v, values)
            out, lse = ctx.kernels.attention(q[:, :, call.q_rows], keys, values, causal=True, anchor_len=call.anchor_len,
                                             prefix_len=passing_k.shape[2] if call.anchor_len else 0, scale=scale)
            outs.append(out)
            lses.append(lse)
        if len(outs) == 1:
            return outs[0], lses[0]
        return torch.cat(outs, dim=2), torch.cat(lses, dim=2)


def _after(passing, tensor):
    """[passing ; tensor] along the sequence dim (no copy when there is no passing block)."""
    return torch.cat([passing, tensor], dim=2) if passing.shape[2] else tensor
