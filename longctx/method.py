"""The runtime surface every method implements, and the exact distributed query/decode attention they share."""

from abc import ABC, abstractmethod
from contextlib import nullcontext

import torch

from longctx import planner
from longctx.kernels import merge_many
from longctx.results import RequestStats


class Method(ABC):
    """The runtime half of a sequence-parallel prefill method: what one worker feeds the model
    and how each layer attends.

    Subclasses set `name`, `Options` (a dataclass of their own options, fields made with
    `longctx.options.option`; None: none), `Planner` (their planning half, a
    `longctx.planner.Planner`) and `Stats` (their per-request counters, a
    `longctx.results.RequestStats` subclass), and implement `prefill_attention`. The driver
    plans with the planner (`check`, `use_model`, `plan`); the engine calls, on every worker,
    `new_state(plan, rank)` (the method's per-request state, `ctx.state`), `local_inputs`,
    `prefill_hooks`, per layer `prefill_attention` during the prefill forward and
    `decode_attention` during the query pass and decoding. A worker keeps one method object per
    name for all its requests.

    Both attention hooks return `(out, lse)`: out [B, Hq, S, D] in q's dtype and lse [B, Hq, S]
    float32, the log-sum-exp of each row's logits over every key it attended to (what the exact
    merges produce anyway); the engine joins the model's attention sinks to them. A method may
    return lse None while `ctx.needs_lse` is False, when computing it would cost more work.
    Every piece of attention goes through `ctx.kernels`, bound to the model's features.
    """

    name = "base"
    # True when a document's K/V depends on the question (the document cache then hits only on
    # the same document and question, `longctx.doc_cache`): APB's anchor, Spava's selection.
    kv_depends_on_question = False
    Options = None
    Planner = planner.Planner
    Stats = RequestStats

    def __init__(self, config):
        self.config = config
        self.planner = self.planner_for(config)
        self.options = self.planner.options

    @classmethod
    def planner_for(cls, config):
        """The method's planning half for `config`, with its options (no runtime object needed)."""
        return cls.Planner(cls.name, config, config.options_for(cls))

    # The planner's steps, for callers holding the method (benchmarks, tests); the request path uses the planner.
    def check(self, model_config, world):
        """`Planner.check`."""
        self.planner.check(model_config, world)

    def use_model(self, model_config):
        """`Planner.use_model`; returns self."""
        self.planner.use_model(model_config)
        return self

    def plan(self, doc_len, query_len, world):
        """`Planner.plan`."""
        return self.planner.plan(doc_len, query_len, world)

    @classmethod
    def calibrate_costs(cls, bench):
        """Cost coefficients this method's own work needs, measured with `bench`
        (`longctx.calibrate.Bench`): {coefficient name: value}. Default: none."""
        return {}

    def new_state(self, plan, rank):
        """This worker's per-request state (a small typed object, or None), made after planning."""
        return None

    def local_inputs(self, plan, rank, doc_ids, query_ids):
        """(input_ids, position_ids) lists this worker feeds the model in prefill.

        Default: the owned document tokens in local order at their global positions.
        """
        positions = plan.hosts[rank].positions()
        return [doc_ids[pos] for pos in positions], positions

    def query_rows(self, plan, rank):
        """Rows of this worker's prefill that ran the question exactly (a fused query pass: the
        engine projects their final states and skips the separate query pass), or None
        (default): the engine runs the query pass after prefill."""
        return None

    def encoder_split(self):
        """Whether the model family's input encoder (a vision tower) runs split over the workers:
        each encodes its share and the results are all-gathered, which equals one process's
        encoding. Default True; Spava's `--no-frame-parallel` ablation turns it off."""
        return True

    def prefill_hooks(self, ctx, model):
        """Context manager the engine enters around the prefill forward (default: does nothing).

        A method that needs more than the post-RoPE q/k/v its attention receives (APB's
        retaining heads read the pre-RoPE projections) registers forward hooks on `model`
        here and removes them on exit.
        """
        return nullcontext()

    def owned_rows(self, plan, rank):
        """Slice of the prefill rows that are owned document tokens (after the host's lead rows)."""
        host = plan.hosts[rank]
        return slice(host.lead_len, host.lead_len + host.num_tokens)

    @abstractmethod
    def prefill_attention(self, ctx, layer, q, k, v, scale):
        """Attention for one layer in prefill; must store the kept K/V in `ctx.cache`.

        q [B, Hq, S_local, D], k/v [B, Hkv, S_local, D] post-RoPE; returns (out [B, Hq, S_local, D],
        lse [B, Hq, S_local] float32), see the class docstring.
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
        out, lse = ctx.kernels.attention(q, cache_k, cache_v, causal=owner, scale=scale)
        if ctx.comm.world == 1:
            return out, lse
        packed = torch.cat([out.float(), lse[..., None]], dim=-1)
        parts = [(part[..., :-1], part[..., -1]) for part in ctx.comm.all_gather(packed)]
        merged, lse = merge_many(parts)
        return merged.to(q.dtype), lse
