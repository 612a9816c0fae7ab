"""Per-worker prefill and greedy decoding over a distributed KV cache.

The engine knows nothing about how processes started nor which model family it runs: it gets
a model, a `Comm` and a `RunConfig`, and for each request runs the method's plan (the driver's,
`Request.plan`), the prefill forward with the method's attention (the model family's adapter
builds the inputs, `longctx.models.family`), then the query pass and lock-step decoding
(every worker runs the same new tokens; attention merges the workers' partial results
exactly; rank 0 picks the token and broadcasts it). The two phases are separate steps
(`prefill`, `answer`): what a prefill leaves (`Prefilled`: the worker's KV cache of its
document shard) is what the query pass continues from.
"""

import time
from dataclasses import dataclass, field, replace
from enum import Enum

import torch

from longctx.cache import KVCache
from longctx.doc_cache import WorkerDocuments
from longctx.errors import LongCtxError
from longctx.features import Kernels, with_sinks
from longctx.models.family import family_for
from longctx.progress import layer_hooks
from longctx.registry import get_method
from longctx.results import EngineResult, RequestStats
from longctx.sampling import Sampler


class Phase(Enum):
    """Which forward a request is in: the document's prefill, or new tokens (query pass, decoding)."""

    PREFILL = "prefill"
    DECODE = "decode"


@dataclass
class WorkerContext:
    """What a method's attention sees on one worker during one request.

    `kernels` are the attention kernels bound to the run's backend and the model's logit
    soft-capping (`longctx.features.Kernels`): methods compute every piece of attention with
    them. `state` is the method's per-request state (`Method.new_state`: a small typed object,
    or None); `stats` its counters (`Method.Stats`); `inputs` the model family's per-request
    input state (a video's embeddings and M-RoPE positions; None for text). `needs_lse` is
    True while the current layer's attention has sinks: the method must return the log-sum-exp
    of its output.
    """

    method: object
    plan: object
    rank: int
    comm: object
    cache: KVCache
    kernels: Kernels
    total_len: int
    state: object = None
    phase: Phase = Phase.PREFILL
    stats: RequestStats = field(default_factory=RequestStats)
    inputs: object = None
    needs_lse: bool = False

    def attend(self, layer, q, k, v, call):
        """One layer's attention (`call`: its `longctx.features.AttentionCall`) by the method
        for the current phase; the model's attention sinks joined to the method's exact result."""
        call.check(self.total_len)
        if call.softcap != self.kernels.softcap:
            self.kernels = Kernels(self.kernels.backend, call.softcap).check()
        self.needs_lse = call.sinks is not None
        attend = self.method.prefill_attention if self.phase is Phase.PREFILL else self.method.decode_attention
        out, lse = attend(self, layer, q, k, v, call.scale)
        if call.sinks is None:
            return out
        if lse is None:
            raise RuntimeError(f"method {self.method.name!r} returned no log-sum-exp, which attention sinks need")
        return with_sinks(out, lse, call.sinks)


@dataclass
class Request:
    """One generation request: token ids of the document and the question (>= 1 token).

    `method` overrides the config's; `stop_ids` end generation; `media` is the model family's
    extra input (a video's frames, `ModelFamily.encode`), None for text; `media_shares` ([start,
    stop) of it per rank, `ModelFamily.split_media`, or None: every worker gets all of it) is set
    by the driver when each worker encodes only its share, and a launcher sends rank r
    `for_rank(r)`, which holds only that; `plan` the driver's plan (`longctx.request.Session`:
    the workers run it as it is), None to plan on the workers. `sampling` chooses the tokens
    (`longctx.sampling.Sampling`; None: greedy); `cache` is what the workers do with the
    document cache (`longctx.doc_cache.CacheStep`; None: nothing is cached).
    """

    doc_ids: list
    query_ids: list
    max_new_tokens: int = 32
    method: str = None
    return_hidden: bool = False
    stop_ids: tuple = ()
    media: object = None
    plan: object = None
    media_shares: tuple = None
    sampling: object = None
    cache: object = None

    def for_rank(self, rank):
        """This request as worker `rank` needs it: with `media_shares`, only its share of the
        media (`media.share(start, stop)`)."""
        if self.media is None or self.media_shares is None:
            return self
        return replace(self, media=self.media.share(*self.media_shares[rank]), media_shares=None)


@dataclass
class Prefilled:
    """A document prefilled on one worker: the context (its KV cache holds this worker's shard),
    the final hidden states of its prefill rows [1, S_local, d], the document's hidden states
    in global order (rank 0, `return_hidden`; else None) and the prefill seconds. `resumed` is
    how many of the request's tokens a cached context already held (0: a fresh prefill)."""

    ctx: WorkerContext
    hidden: torch.Tensor
    doc_hidden: torch.Tensor
    prefill_s: float
    resumed: int = 0


class Engine:
    """Runs requests on one worker. Every worker of a job calls `run` with the same request."""

    def __init__(self, model, comm, config, device):
        self.model = model
        self.comm = comm
        self.config = config
        self.device = device
        self.family = family_for(model.config, config.family)
        self.documents = WorkerDocuments()
        self._methods = {}

    def method(self, name):
        """The method object `name` (one per name for the engine's life: it may keep loaded resources)."""
        if name not in self._methods:
            self._methods[name] = get_method(name, self.config)
        return self._methods[name]

    def run(self, request, on_token=None, on_layer=None):
        """Prefill (or resume a cached document, `request.cache`), query pass and decoding;
        returns an EngineResult (complete on rank 0).

        `on_token(token_id)`, called on rank 0 only, receives each generated token as soon as
        it is decided (before the next decoding step): the streaming hook of the launchers. When
        it returns True the request is cancelled: every worker stops before the next token.
        With a CacheStep the listed entries are evicted first, and afterwards the context is
        kept as the step says (the question's and answer's K/V rolled back); a request that
        fails drops its entry. `on_layer(done, total)` is called after each decoder layer of a
        prefill (`longctx.progress.layer_hooks`): the progress hook.
        """
        step = request.cache
        with torch.inference_mode():
            if step is None:
                return self.answer(self.prefill(request, on_layer), request, on_token)
            self.documents.evict(step.evict)
            prefilled = self.resume(request, step) if step.hit_len else self.prefill(request, on_layer)
            try:
                result = self.answer(prefilled, request, on_token)
            except BaseException:
                self.documents.evict((step.entry,))
                raise
            self.documents.keep(step.entry, prefilled.ctx, step.keep_len)
            return result

    def resume(self, request, step):
        """The Prefilled of a cached document: entry `step.entry` cut back to the request's
        first `step.hit_len` tokens (no forward runs)."""
        ctx = self.documents.resume(step.entry, step.hit_len)
        ctx.stats = ctx.method.Stats()
        ctx.total_len = len(request.doc_ids) + len(request.query_ids) + request.max_new_tokens
        return Prefilled(ctx, None, None, 0.0, resumed=step.hit_len)

    def context(self, request):
        """The WorkerContext of `request` on this worker: its method, plan and kernels."""
        if not request.doc_ids:
            raise LongCtxError("the document is empty")
        if not request.query_ids:
            raise LongCtxError("the question is empty")
        method = self.method(request.method or self.config.method)
        plan = request.plan if request.plan is not None else self._plan(method, request)
        if plan.world != self.comm.world or plan.doc_len != len(request.doc_ids):
            raise LongCtxError(f"the request's plan is for {plan.world} workers and {plan.doc_len} tokens, "
                               f"not {self.comm.world} and {len(request.doc_ids)}")
        total_len = len(request.doc_ids) + len(request.query_ids) + request.max_new_tokens
        return WorkerContext(method, plan.validate(), self.comm.rank, self.comm, KVCache(),
                             Kernels(self.config.kernel_backend), total_len, method.new_state(plan, self.comm.rank),
                             stats=method.Stats())

    def _plan(self, method, request):
        """Plan on every worker (bad input fails everywhere alike) and run rank 0's plan (cost
        files may differ between machines, and balanced plans must agree): for requests made
        without the driver's request path (tests, `longctx.simulate`)."""
        model_config = self.family.language_config(self.model.config)
        method.planner.check(model_config, self.comm.world)
        method.planner.use_model(model_config)
        plan = method.planner.plan(len(request.doc_ids), len(request.query_ids), self.comm.world)
        return self.comm.broadcast_object(plan, src=0)

    def prefill(self, request, on_layer=None):
        """The prefill forward of `request` on this worker; returns its Prefilled. `on_layer`:
        see `run`."""
        ctx = self.context(request)
        with torch.inference_mode(), layer_hooks(self.family.decoder(self.model), on_layer):
            (hidden, doc_hidden), seconds = self._timed(lambda: self._prefill(ctx, request))
        return Prefilled(ctx, hidden, doc_hidden, seconds)

    def answer(self, prefilled, request, on_token=None):
        """The query pass (or the rows of a fused one, `Method.query_rows`) and decoding after
        `prefilled`; returns the EngineResult. After a resumed cache entry the query pass runs
        every token of the request past the cached ones (the rest of the document, then the
        question)."""
        ctx, method, rank = prefilled.ctx, prefilled.ctx.method, self.comm.rank
        with torch.inference_mode():
            ctx.phase = Phase.DECODE
            rows = None if prefilled.resumed else method.query_rows(ctx.plan, rank)
            if rows is None:
                start = prefilled.resumed or len(request.doc_ids)
                new_ids = (list(request.doc_ids) + list(request.query_ids))[start:]
                query_out, query_s = self._timed(lambda: self._step(ctx, new_ids, start, request.return_hidden))
            else:  # the prefill forward already ran the question (a fused query pass)
                query_out, query_s = self._timed(lambda: self._project(prefilled.hidden[0, rows],
                                                                       request.return_hidden))
            prefilled.hidden = None
            tokens, decode_s = self._timed(lambda: self._decode(ctx, request, query_out[0], on_token))
        return EngineResult(method=method.name, nproc=self.comm.world, plan=ctx.plan.summary(),
                            prefill_s=prefilled.prefill_s, query_s=query_s, decode_s=decode_s, tokens=tokens,
                            first_logits=query_out[0].float().cpu(), stats=ctx.stats,
                            doc_hidden=prefilled.doc_hidden if request.return_hidden else None,
                            query_hidden=query_out[1].float().cpu() if request.return_hidden else None)

    def _timed(self, fn):
        self.comm.barrier()
        self._sync()
        start = time.perf_counter()
        value = fn()
        self._sync()
        self.comm.barrier()
        return value, time.perf_counter() - start

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _prefill(self, ctx, request):
        """The prefill forward: (final hidden states [1, S_local, d], the document's in global
        order on rank 0 when `return_hidden`, else None). The family's adapter makes this
        worker's inputs from the rows the method's `local_inputs` gives it."""
        inputs = self.family.prefill_inputs(self.model, ctx, request)
        with ctx.method.prefill_hooks(ctx, self.model):
            hidden = self.family.decoder(self.model)(**inputs, use_cache=False, longctx=ctx).last_hidden_state
        if not request.return_hidden:
            return hidden, None
        owned = hidden[0, ctx.method.owned_rows(ctx.plan, ctx.rank)].float()
        sizes = [host.num_tokens for host in ctx.plan.hosts]
        parts = self.comm.all_gather(owned, sizes=sizes, dim=0)
        if ctx.rank != 0:
            return hidden, None
        full = torch.empty(ctx.plan.doc_len, owned.shape[-1])
        for host, part in zip(ctx.plan.hosts, parts):
            full[torch.tensor(host.positions())] = part.cpu()
        return hidden, full

    def _project(self, hidden, want_hidden=False):
        """(last-position logits [vocab], `hidden` or None) from the question's final hidden
        states [n, d] of a fused prefill (a method's `query_rows(plan, rank)`: the rows of its
        prefill that ran the question exactly)."""
        return self.family.logits(self.model, hidden[-1:])[0], hidden if want_hidden else None

    def _step(self, ctx, ids, first_position, want_hidden=False):
        """Run new tokens `ids` at positions first_position.. on every worker.

        Returns (last-position logits [vocab], final hidden states [n, d] or None).
        """
        positions = list(range(first_position, first_position + len(ids)))
        output = self.model(**self.family.step_inputs(self.model, ctx, ids, positions), use_cache=False,
                            logits_to_keep=1, output_hidden_states=want_hidden, longctx=ctx)
        hidden = output.hidden_states[-1][0] if want_hidden else None
        return output.logits[0, -1], hidden

    def _decode(self, ctx, request, logits, on_token=None):
        """Decode up to `request.max_new_tokens` tokens from the query pass's `logits`: rank 0
        draws each token (`Sampler`) and broadcasts it with whether the request was cancelled,
        so every worker runs the same steps."""
        tokens, cancelled = [], False
        position = len(request.doc_ids) + len(request.query_ids)
        draw = Sampler(request.sampling) if ctx.rank == 0 else None
        while len(tokens) < request.max_new_tokens:
            # other ranks offer their own greedy pick: what a simulated host (which receives its own) decodes
            mine = (draw(logits), cancelled) if draw else (int(torch.argmax(logits)), False)
            token, cancelled = self.comm.broadcast_object(mine, src=0)
            if cancelled:
                break
            tokens.append(token)
            if on_token is not None and ctx.rank == 0:
                cancelled = bool(on_token(token))
            if token in request.stop_ids or len(tokens) == request.max_new_tokens:
                break
            logits, _ = self._step(ctx, [token], position)
            position += 1
        return tokens
