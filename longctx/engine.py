"""Per-worker prefill and greedy decoding over a distributed KV cache.

The engine knows nothing about how processes started: it gets a model, a `Comm` and a
`RunConfig`, and for each request runs the method's plan, the prefill forward with the
method's attention, the query pass and lock-step decoding (every worker runs the same new
tokens; attention merges the workers' partial results exactly; rank 0 picks the token and
broadcasts it).
"""

import time
from dataclasses import dataclass, field, replace
from enum import Enum

import torch

from longctx.cache import KVCache
from longctx.errors import LongCtxError
from longctx.models.qwen_vl import VideoInputs
from longctx.registry import get_method


class Phase(Enum):
    """Which forward a request is in: the document's prefill, or new tokens (query pass, decoding)."""

    PREFILL = "prefill"
    DECODE = "decode"


@dataclass
class WorkerContext:
    """What a method's attention sees on one worker during one request.

    `state` is the method's per-request state (`Method.new_state`: a small typed object, or
    None); `stats` collects counters for reporting; `video` the request's `VideoInputs` (its
    M-RoPE positions) once the prefill has made them, None for text.
    """

    method: object
    plan: object
    rank: int
    comm: object
    cache: KVCache
    kernel_backend: str
    total_len: int
    state: object = None
    phase: Phase = Phase.PREFILL
    stats: dict = field(default_factory=dict)
    video: object = None

    def attend(self, layer, q, k, v, scale):
        """Dispatch one layer's attention to the method for the current phase."""
        if self.phase is Phase.PREFILL:
            return self.method.prefill_attention(self, layer, q, k, v, scale)
        return self.method.decode_attention(self, layer, q, k, v, scale)


@dataclass
class Request:
    """One generation request: token ids of the document and the question (>= 1 token).

    `video` (a `longctx.video.VideoPatches`, or None) is the video whose vision embeddings
    replace the document's `<|video_pad|>` tokens (`longctx.models.qwen_vl.video_prompt`).
    `video_shares` ([start, stop) temporal patches per rank, or None: every worker gets the
    whole video) is set by the driver when each worker encodes only its frames; a launcher
    sends rank r `for_rank(r)`, which holds only those.
    """

    doc_ids: list
    query_ids: list
    max_new_tokens: int = 32
    method: str = None
    return_hidden: bool = False
    stop_ids: tuple = ()
    video: object = None
    video_shares: tuple = None

    def for_rank(self, rank):
        """This request as worker `rank` needs it: with `video_shares`, only its frames."""
        if self.video is None or self.video_shares is None:
            return self
        return replace(self, video=self.video.share(*self.video_shares[rank]), video_shares=None)


class Engine:
    """Runs requests on one worker. Every worker of a job calls `run` with the same request."""

    def __init__(self, model, comm, config, device):
        self.model = model
        self.comm = comm
        self.config = config
        self.device = device
        self._methods = {}

    def method(self, name):
        """The method object `name` (one per name for the engine's life: it may keep loaded resources)."""
        if name not in self._methods:
            self._methods[name] = get_method(name, self.config)
        return self._methods[name]

    def run(self, request, on_token=None):
        """Prefill, query pass and greedy decoding; returns a result dict (complete on rank 0).

        Keys: tokens (generated ids), prefill_s, query_s, decode_s, plan (summary), method,
        nproc, first_logits (fp32 list of the first generated position's logits) and, when
        `return_hidden`, doc_hidden / query_hidden (fp32 tensors, global order, rank 0 only).
        `on_token(token_id)`, called on rank 0 only, receives each generated token as soon as
        it is decided (before the next decoding step): the streaming hook of the launchers.
        """
        if not request.doc_ids:
            raise LongCtxError("the document is empty")
        if not request.query_ids:
            raise LongCtxError("the question is empty")
        method = self.method(request.method or self.config.method)
        world = self.comm.world
        planner = method.planner
        model_config = self.model.config.get_text_config()  # a video model's language model
        planner.check(model_config, world)
        planner.use_model(model_config)
        plan = planner.plan(len(request.doc_ids), len(request.query_ids), world)
        # Every worker plans (so bad input fails everywhere alike), but rank 0's plan is the one
        # run: cost files may differ between machines and balanced plans must agree.
        plan = self.comm.broadcast_object(plan, src=0).validate()
        total_len = len(request.doc_ids) + len(request.query_ids) + request.max_new_tokens
        ctx = WorkerContext(method, plan, self.comm.rank, self.comm, KVCache(), self.config.kernel_backend,
                            total_len, method.new_state(plan, self.comm.rank))
        result = {"method": method.name, "nproc": world, "plan": plan.summary()}
        with torch.inference_mode():
            (hidden, doc_hidden), result["prefill_s"] = self._timed(lambda: self._prefill(ctx, request))
            ctx.phase = Phase.DECODE
            rows = method.query_rows(plan, self.comm.rank)
            if rows is None:
                query_out, result["query_s"] = self._timed(lambda: self._step(ctx, request.query_ids, len(request.doc_ids),
                                                                             request.return_hidden))
            else:  # the prefill forward already ran the question (a fused query pass)
                query_out, result["query_s"] = self._timed(lambda: self._project(hidden[0, rows], request.return_hidden))
            del hidden
            tokens, result["decode_s"] = self._timed(lambda: self._decode(ctx, request, query_out[0], on_token))
        result["tokens"] = tokens
        result["first_logits"] = query_out[0].float().cpu()
        result["stats"] = ctx.stats
        if request.return_hidden:
            result["doc_hidden"] = doc_hidden
            result["query_hidden"] = query_out[1].float().cpu()
        return result

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
        order on rank 0 when `return_hidden`, else None). A video request first encodes the
        video (`VideoInputs`: frame-parallel unless the method's `frame_parallel()` says no) and
        feeds embeddings: the method's `local_inputs` on global indices tell each row's token."""
        if request.video is None:
            input_ids, positions = ctx.method.local_inputs(ctx.plan, ctx.rank, request.doc_ids, request.query_ids)
            inputs = {"input_ids": torch.tensor([input_ids], device=self.device),
                      "position_ids": torch.tensor([positions], device=self.device)}
        else:
            ids = list(request.doc_ids) + list(request.query_ids)
            ctx.video = VideoInputs(self.model, ids, request.video, self.comm, ctx.method.frame_parallel())
            doc_len = len(request.doc_ids)
            sources, positions = ctx.method.local_inputs(ctx.plan, ctx.rank, list(range(doc_len)),
                                                         list(range(doc_len, len(ids))))
            inputs = {"inputs_embeds": ctx.video.embeds(self.model, sources),
                      "position_ids": ctx.video.position_ids(positions)}
        with ctx.method.prefill_hooks(ctx, self.model):
            hidden = self.model.base_model(**inputs, use_cache=False, longctx=ctx).last_hidden_state
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
        logits = self.model.get_output_embeddings()(hidden[-1:])
        return logits[0], hidden if want_hidden else None

    def _step(self, ctx, ids, first_position, want_hidden=False):
        """Run new tokens `ids` at positions first_position.. on every worker.

        Returns (last-position logits [vocab], final hidden states [n, d] or None).
        """
        positions = list(range(first_position, first_position + len(ids)))
        position_ids = (torch.tensor([positions], device=self.device) if ctx.video is None
                        else ctx.video.position_ids(positions))
        output = self.model(
            input_ids=torch.tensor([ids], device=self.device),
            position_ids=position_ids,
            use_cache=False,
            logits_to_keep=1,
            output_hidden_states=want_hidden,
            longctx=ctx,
        )
        hidden = output.hidden_states[-1][0] if want_hidden else None
        return output.logits[0, -1], hidden

    def _decode(self, ctx, request, logits, on_token=None):
        tokens = []
        position = len(request.doc_ids) + len(request.query_ids)
        while len(tokens) < request.max_new_tokens:
            token = self.comm.broadcast_object(int(torch.argmax(logits)), src=0)
            tokens.append(token)
            if on_token is not None and ctx.rank == 0:
                on_token(token)
            if token in request.stop_ids or len(tokens) == request.max_new_tokens:
                break
            logits, _ = self._step(ctx, [token], position)
            position += 1
        return tokens
