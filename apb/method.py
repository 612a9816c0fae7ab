"""APB: query-aware approximate prefill with an anchor block and compressed passing blocks.

Host h holds block h of the document. Hosts > 0 put an anchor in front of their block (the
first document tokens, the question, more leading document tokens; positions 0..l_a-1).
Each layer, every host but the last scores its local keys, keeps the top l_p per KV head and
all-gathers them; host h then attends with keys [P_h ; anchor ; local] where P_h holds the
compressed blocks of hosts 0..h-1. Anchor rows are dropped after prefill; only the local
block's K/V is cached, and the question and generated tokens attend to every host's cache
through the exact merge of `Method.decode_attention` (the last host appends them).
"""

from contextlib import nullcontext

import torch

from apb.compress import make_compressor
from apb.layout import build_plan, lead_inputs, resolve_sizes
from apb.passing import all_gather_blocks, compressed_block
from longctx.costmodel import apb_work
from longctx.errors import LongCtxError
from longctx.kernels import attention
from longctx.method import Method


class APBAttention(Method):
    """APB (Huang et al.): anchor with the question + compressed passing blocks; `star` subclasses it."""

    name = "apb"
    exact = False
    star = False

    def __init__(self, config):
        super().__init__(config)
        self.compressor = None if self.star else make_compressor(config)

    def check(self, model_config, world):
        """Contiguous layout only; the compressor's own checks (e.g. the retaining-heads file)."""
        if self.config.layout not in (None, "contiguous"):
            raise LongCtxError(f"method {self.name!r} uses the contiguous layout (got --layout {self.config.layout})")
        if self.compressor is not None:
            self.compressor.check(model_config)

    def plan(self, doc_len, query_len, world):
        """Contiguous blocks, anchor / probe rows and passing sizes (see `apb.layout`), estimated.

        `config.balance` "auto" sizes the blocks so every host's estimated time is the same
        (kept only when its estimated critical path is not longer than the equal split's;
        `details["balance"]` says which plan was used and `details["equal_critical_ms"]` what
        the equal split would take).
        """
        if doc_len < 1:
            raise LongCtxError("the document is empty")
        sizes = resolve_sizes(self.config, doc_len, query_len, world, star=self.star)
        rules = dict(
            question_in_anchor=not self.star,
            needs_question=self.compressor is not None and self.compressor.needs_question,
            head_tokens=self.config.anchor_head_tokens,
        )
        plan = self.estimate(build_plan(self.name, sizes, doc_len, query_len, world, **rules))
        balance = "equal"
        if getattr(self.config, "balance", "equal") == "auto" and world > 1:
            model = self.cost_model()
            balanced = self.estimate(build_plan(
                self.name, sizes, doc_len, query_len, world, **rules,
                host_ms=lambda host: model.host_ms(apb_work(host, world, sizes.passing, model.shape)),
                tile=model.coeffs.tile, speeds=model.speeds,
            ))
            equal_ms = plan.critical_ms
            if balanced.critical_ms <= equal_ms:
                plan, balance = balanced, "auto"
            else:
                balance = "auto (equal split kept: not faster)"
            plan.details["equal_critical_ms"] = equal_ms
        plan.details["balance"] = balance
        if self.compressor is not None:
            plan.details["compressor"] = self.compressor.name
        return plan

    def host_work(self, plan, host):
        """Lead and local rows, APB's pairs, keys scored, and the padded passing all-gather."""
        max_sends = max((other.sends for other in plan.hosts), default=0)
        return apb_work(host, plan.world, max_sends, self.cost_model().shape)

    def local_inputs(self, plan, rank, doc_ids, query_ids):
        """Lead rows (anchor or probe, positions 0..lead-1) then the owned block at its global positions."""
        host = plan.hosts[rank]
        ids, positions = lead_inputs(host, doc_ids, query_ids)
        owned = host.positions()
        return ids + [doc_ids[pos] for pos in owned], positions + owned

    def owned_rows(self, plan, rank):
        """The block's rows, after the lead rows."""
        host = plan.hosts[rank]
        return slice(host.lead_len, host.lead_len + host.num_tokens)

    def prefill_hooks(self, ctx, model):
        """The compressor's hooks (retaining heads tap q/k/v_proj) on hosts that score keys."""
        host = ctx.plan.hosts[ctx.rank]
        hooks = self.compressor.hooks(ctx, model) if host.selects else None
        return hooks or nullcontext()

    def prefill_attention(self, ctx, layer, q, k, v, scale):
        """One layer of APB prefill on host h; q [B, Hq, lead + n, D], k/v [B, Hkv, lead + n, D].

        What host h attends to:
          rows  [lead ; local]          lead = the anchor (hosts > 0), a question probe or nothing
          keys  [P_h ; lead ; local]    P_h = compressed blocks of hosts 0..h-1, this layer only
          lead rows see the lead only, causally;
          local rows see all of P_h, all of the anchor (never a probe) and the local block causally.
        """
        host = ctx.plan.hosts[ctx.rank]
        lead = host.lead_len
        ctx.cache.store(layer, k[:, :, lead:], v[:, :, lead:])
        passing_k, passing_v = k[:, :, :0], v[:, :, :0]
        ctx.stats["passing_bytes_per_layer"] = 0
        if any(other.sends for other in ctx.plan.hosts):
            sent = compressed_block(self.compressor, ctx, layer, host, q, k, v)
            blocks = all_gather_blocks(ctx, *sent)[: ctx.rank]
            if blocks:
                passing_k = torch.cat([block[0] for block in blocks], dim=2)
                passing_v = torch.cat([block[1] for block in blocks], dim=2)
        run = dict(scale=scale, backend=ctx.kernel_backend)
        if host.anchor_len:
            out, _ = attention(q, _after(passing_k, k), _after(passing_v, v), causal=True,
                               anchor_len=lead, prefix_len=passing_k.shape[2], **run)
            return out
        out, _ = attention(q[:, :, lead:], _after(passing_k, k[:, :, lead:]), _after(passing_v, v[:, :, lead:]),
                           causal=True, **run)
        if not lead:
            return out
        probe, _ = attention(q[:, :, :lead], k[:, :, :lead], v[:, :, :lead], causal=True, **run)
        return torch.cat([probe, out], dim=2)


def _after(passing, tensor):
    """[passing ; tensor] along the sequence dim (no copy when there is no passing block)."""
    return torch.cat([passing, tensor], dim=2) if passing.shape[2] else tensor
