"""The surface every method implements, and the exact distributed query/decode attention they share."""

from abc import ABC, abstractmethod
from contextlib import nullcontext

import torch

from longctx.kernels import attention, merge_many


class Method(ABC):
    """Base class of a sequence-parallel prefill method.

    Subclasses set `name` and `exact`, and implement `plan` and `prefill_attention`. The engine
    calls, on every worker: `check(model_config, world)`, `plan(doc_len, query_len, world)`,
    `local_inputs(plan, rank, doc_ids, query_ids)`, then per layer `prefill_attention`
    during the prefill forward and `decode_attention` during the query pass and decoding.
    """

    name = "base"
    exact = True

    def __init__(self, config):
        self.config = config

    def check(self, model_config, world):
        """Raise LongCtxError if this method cannot run `model_config` on `world` workers."""

    @abstractmethod
    def plan(self, doc_len, query_len, world):
        """Return the `Plan` (pure, host side) for a document of `doc_len` tokens."""

    def local_inputs(self, plan, rank, doc_ids, query_ids):
        """(input_ids, position_ids) lists this worker feeds the model in prefill.

        Default: the owned document tokens in local order at their global positions.
        """
        positions = plan.hosts[rank].positions()
        return [doc_ids[pos] for pos in positions], positions

    def prefill_hooks(self, ctx, model):
        """Context manager the engine enters around the prefill forward (default: does nothing).

        A method that needs more than the post-RoPE q/k/v its attention receives (APB's
        retaining heads read the pre-RoPE projections) registers forward hooks on `model`
        here and removes them on exit.
        """
        return nullcontext()

    def owned_rows(self, plan, rank):
        """Slice of the prefill rows that are owned document tokens (APB drops anchor rows)."""
        return slice(0, plan.hosts[rank].num_tokens)

    @abstractmethod
    def prefill_attention(self, ctx, layer, q, k, v, scale):
        """Attention for one layer in prefill; must store the kept K/V in `ctx.cache`.

        q [B, Hq, S_local, D], k/v [B, Hkv, S_local, D] post-RoPE; returns out [B, Hq, S_local, D].
        """

    def decode_attention(self, ctx, layer, q, k, v, scale):
        """Exact attention of new tokens (query pass or decoding) over every worker's cache.

        Every worker runs the same new tokens. The worker `plan.append_rank` appends their K/V
        and attends causally (bottom-right) over its cache; the others hold only earlier
        tokens and attend non-causally. Partial (out, lse) are all-gathered and merged in rank
        order, so every worker gets the same result.
        """
        owner = ctx.rank == ctx.plan.append_rank
        if owner:
            ctx.cache.append(layer, k, v)
        cache_k, cache_v = ctx.cache.get(layer)
        if cache_k is None:
            cache_k, cache_v = k[:, :, :0], v[:, :, :0]
        out, lse = attention(q, cache_k, cache_v, causal=owner, scale=scale, backend=ctx.kernel_backend)
        if ctx.comm.world == 1:
            return out
        packed = torch.cat([out.float(), lse[..., None]], dim=-1)
        parts = [(part[..., :-1], part[..., -1]) for part in ctx.comm.all_gather(packed)]
        merged, _ = merge_many(parts)
        return merged.to(q.dtype)
