"""The surface every method implements, and the exact distributed query/decode attention they share."""

from abc import ABC, abstractmethod
from contextlib import nullcontext

import torch

from longctx.costmodel import CostModel, ModelShape, dtype_bytes, local_work, resolve_device_type
from longctx.kernels import attention, merge_many
from longctx.plan import HostPlan, Plan, Span, balanced_block_sizes, simple_plan, split_sizes


class Method(ABC):
    """Base class of a sequence-parallel prefill method.

    Subclasses set `name` and `exact`, and implement `plan` and `prefill_attention`. The engine
    calls, on every worker: `check(model_config, world)`, `use_model(model_config)`,
    `plan(doc_len, query_len, world)`, `local_inputs(plan, rank, doc_ids, query_ids)`, then
    per layer `prefill_attention` during the prefill forward and `decode_attention` during
    the query pass and decoding.

    Planning: `host_work` says what one host computes and receives per layer (the cost
    model's input); `estimate` fills every host's `est_ms`; `block_sizes` sizes contiguous
    blocks per `config.balance` ("equal" or "auto": equal estimated times).
    """

    name = "base"
    exact = True

    def __init__(self, config):
        self.config = config
        self.shape = None
        self._cost_model = None

    def use_model(self, model_config):
        """Plan for this model's shape (layers, widths, heads; the run's dtype). Without it the
        cost model assumes `ModelShape()` (Llama-3.1-8B)."""
        device = resolve_device_type(self.config.device)
        self.shape = ModelShape.from_config(model_config, dtype_bytes(self.config.dtype, device))
        self._cost_model = None
        return self

    def cost_model(self):
        """The `CostModel` plans are estimated and balanced with (built once per method object)."""
        if self._cost_model is None:
            self._cost_model = CostModel.for_config(self.config, self.shape)
        return self._cost_model

    def host_work(self, plan, host):
        """`HostWork` of `host` in one layer. Default: causal attention over its own tokens, no communication."""
        return local_work(host.spans, self.cost_model().shape)

    def estimate(self, plan):
        """Fill every host's `est_ms` (and `plan.details["estimate"]`) from the cost model; returns the plan."""
        return self.cost_model().annotate(plan, [self.host_work(plan, host) for host in plan.hosts])

    def layout_plan(self, doc_len, query_len, world, layout):
        """The estimated plan of an exact method: `layout` from `longctx.plan`, contiguous blocks
        sized by `block_sizes`. `details["balance"]` says how tokens were balanced."""
        contiguous = layout == "contiguous" and doc_len >= world
        sizes = self.block_sizes(doc_len, query_len, world) if contiguous else None
        plan = simple_plan(self.name, doc_len, query_len, world, layout, sizes)
        if contiguous:
            plan.details["balance"] = "auto" if sizes != split_sizes(doc_len, world) else "equal"
        else:
            plan.details["balance"] = f"{layout} layout"
            if len(set(getattr(self.config, "host_speeds", None) or ())) > 1:
                plan.details["note"] = (f"host speeds size contiguous blocks only; the {layout} layout is not "
                                        f"resized for them (use --layout contiguous)")
        return self.estimate(plan)

    def block_sizes(self, doc_len, query_len, world):
        """Contiguous block sizes: as equal as possible (`balance` "equal"), or (`balance` "auto")
        sized so every host's estimated time is the same, with `config.host_speeds` and the
        kernel tile, unless that is not faster by the estimate than the equal split."""
        equal = split_sizes(doc_len, world)
        if getattr(self.config, "balance", "equal") == "equal" or world == 1 or doc_len < world:
            return equal
        model = self.cost_model()
        stub = Plan(self.name, doc_len, query_len, world, [])

        def work(rank, start, size):
            return self.host_work(stub, HostPlan(rank, (Span(start, start + size),)))

        def critical(sizes):
            start, slowest = 0, 0.0
            for rank, size in enumerate(sizes):
                slowest = max(slowest, model.host_ms(work(rank, start, size), rank))
                start += size
            return slowest

        balanced = balanced_block_sizes(doc_len, world, lambda rank, start, size: model.host_ms(work(rank, start, size)),
                                        tile=model.coeffs.tile, speeds=model.speeds)
        return balanced if critical(balanced) <= critical(equal) else equal

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
