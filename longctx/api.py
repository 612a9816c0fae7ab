"""Driver-side Python API.

`LongContextLM` starts workers once (model loaded once per worker) and answers questions over
long documents with any registered method:

    with LongContextLM("path/to/model", method="burst", nproc=4) as lm:
        result = lm.generate(document, question, max_new_tokens=32)
        print(result.text, result.prefill_s, result.ttft_s)
        for piece in lm.stream(document, question):   # text as it is decoded
            print(piece, end="", flush=True)

    with LongContextLM("path/to/model", method="burst", nproc=4, cache_gib=2) as lm:
        lm.generate(document, question)             # prefill; every worker keeps its K/V shard
        again = lm.generate(document, other_question)   # only the query pass (again.cached_tokens)

    with LongContextLM("path/to/qwen2.5-vl", method="spava", nproc=4) as lm:   # video questions
        result = lm.generate(video="clip.mp4", question="What happens?", num_frames=64)

Every request takes the one request path (`longctx.request.Session`): the driver encodes the
prompt once, checks it once and sends the workers token ids and the plan. An entry that checks
a request before starting any worker (the CLI) prepares it with the session and hands both
over (`LongContextLM.from_session`, `generate_prepared`, `stream_prepared`).
`SPMDLongContextLM` (from `launch.spmd`) is the same surface for scripts already running under
torchrun: every rank constructs it and calls `generate` with the same arguments.
"""

import threading

from launch.replies import relay
from launch.spmd import SPMDLongContextLM
from dataclasses import replace

from longctx.config import RunConfig
from longctx.doc_cache import GIB, DocumentIndex
from longctx.errors import LongCtxError
from longctx.memory import kv_token_bytes
from longctx.registry import launcher_class
from longctx.request import Prompt, Session
from longctx.results import GenerationResult

__all__ = ["LongContextLM", "SPMDLongContextLM", "GenerationResult", "TokenStream", "Prompt", "Session"]


class TokenStream:
    """The answer's text as it is generated (`LongContextLM.stream`): iterating yields text
    pieces, each as soon as its tokens are decided (a piece waits while it would end inside a
    multi-byte character); `result` is the GenerationResult once the iteration has ended,
    `tokens` the ids received so far, `lookup` what the document cache did (a
    `longctx.doc_cache.Lookup`, None without a cache).
    Breaking off early (or `close`) cancels the request: the workers stop before the next token."""

    def __init__(self, events, tokenizer, request, lookup=None):
        self._events, self._tokenizer, self._request, self.lookup = events, tokenizer, request, lookup
        self.result, self.tokens = None, []

    def __iter__(self):
        tokens, shown = self.tokens, ""
        try:
            while True:
                try:
                    tokens.append(next(self._events))
                except StopIteration as stop:
                    raw = stop.value
                    break
                text = self._tokenizer.decode(tokens, skip_special_tokens=True)
                if text.startswith(shown) and not text.endswith("\ufffd") and len(text) > len(shown):
                    piece, shown = text[len(shown):], text
                    yield piece
        finally:
            self.close()
        self.result = _generation(raw, self._tokenizer, self._request, self.lookup)
        if self.result.text.startswith(shown) and len(self.result.text) > len(shown):
            yield self.result.text[len(shown):]


    def close(self):
        """Cancel the request if it is still running (the workers stop before the next token);
        `result` then holds what they had generated, when the launcher reports it."""
        self._events.close()

    def cancelled_with(self, raw):
        """Keep the EngineResult of the cancelled request as `result`."""
        self.result = _generation(raw, self._tokenizer, self._request, self.lookup)


def _generation(result, tokenizer, request, lookup=None):
    """The GenerationResult of an EngineResult for `request` (`lookup`: what the document cache
    did, a `longctx.doc_cache.Lookup`, or None without a cache)."""
    return GenerationResult.of(result, tokenizer.decode(result.tokens, skip_special_tokens=True),
                               len(request.doc_ids), len(request.query_ids),
                               lookup.cached_tokens if lookup else 0, lookup.reason if lookup else None)


class LongContextLM:
    """A pool of workers serving one model; use as a context manager or call `close()`.

    `model` is a local Hugging Face causal-LM directory or a Hub id (`revision=` picks a branch,
    tag or commit; `longctx.models.hub`); `rope_scaling=` / `max_model_len=` extend and bound its
    positions (`longctx.models.positions`); `method` the default method;
    `launcher` how workers come to exist (`longctx.registry.LAUNCHERS`: "local" processes,
    "ray" actors on a Ray cluster, or a plug-in); other keyword arguments are RunConfig fields
    (device, dtype, layout, timeout_s, ...) and the method's and launcher's own options
    (anchor_len, intra_size, ray_address, ...). The machine, model and method are checked
    before any worker starts. Leaving the `with` block by an exception (Ctrl-C included) kills
    the workers at once.

    `cache_gib` (per worker; None or 0: off) keeps every document's K/V on the workers after its
    request (`longctx.doc_cache`): a later request that starts with a cached document runs
    only the query pass over it, exactly; `documents` is the driver's index (None when off).
    """

    def __init__(self, model, method="burst", nproc=2, launcher="local", cache_gib=None, **options):
        self._start(Session(RunConfig(model=model, method=method, nproc=nproc, launcher=launcher, **options)),
                    cache_gib)

    @classmethod
    def from_session(cls, session, cache_gib=None):
        """A pool for an already opened `Session` (its checks are not repeated)."""
        lm = cls.__new__(cls)
        lm._start(session, cache_gib)
        return lm

    def _start(self, session, cache_gib=None):
        if cache_gib is not None and cache_gib < 0:
            raise LongCtxError(f"cache_gib must be >= 0 (got {cache_gib})")
        self.cache_gib = cache_gib
        self.session, self.config = session, session.config
        self.model_config, self.tokenizer, self.stop_ids = session.model_config, session.tokenizer, session.stop_ids
        self._busy = threading.Lock()
        self._launcher = None
        shape = session.method().planner.cost_model().shape  # the method checked before any worker starts
        self.documents = DocumentIndex(cache_gib * GIB, kv_token_bytes(shape)) if cache_gib else None
        self._launcher = launcher_class(self.config.launcher)(self.config)

    def prepare(self, document=None, question="", max_new_tokens=32, method=None, video=None, num_frames=None,
                fps=None, video_fps=None, return_hidden=False, max_pixels=None, max_frames=None):
        """The checked Request of a document (or a video: see `generate`) and a question;
        `generate_prepared` / `stream_prepared` send it without checking again."""
        prompt = Prompt(document, question, video, num_frames, fps, video_fps, max_pixels, max_frames)
        return self.session.prepare(prompt, max_new_tokens, method, return_hidden)

    def prepare_ids(self, doc_ids, query_ids, max_new_tokens=32, method=None, return_hidden=False):
        """The checked Request of token ids."""
        return self.session.prepare_ids(doc_ids, query_ids, max_new_tokens, method, return_hidden)

    def generate(self, document=None, question="", max_new_tokens=32, method=None, video=None, num_frames=None,
                 fps=None, video_fps=None, max_pixels=None, max_frames=None):
        """Answer `question` about `document`, or about `video` with a video-language model
        (Qwen2.5-VL): a file path (PyAV), frames [T, H, W, 3] uint8 or a list of frames
        (`video_fps` frames per second, default 2 as qwen-vl-utils assumes), sampled to
        `num_frames` or `fps` (at least 4 frames, at most `max_frames`), each frame resized to at
        most `max_pixels` (None: the model's processor settings). Returns a GenerationResult
        (greedy decoding); `doc_tokens` counts the video's tokens."""
        return self.generate_prepared(self.prepare(document, question, max_new_tokens, method, video, num_frames,
                                                   fps, video_fps, max_pixels=max_pixels, max_frames=max_frames))

    def stream(self, document=None, question="", max_new_tokens=32, method=None, video=None, num_frames=None,
               fps=None, video_fps=None, max_pixels=None, max_frames=None):
        """Like `generate`, but returns a TokenStream: iterate it for the answer's text as it is
        decoded; its `result` is the GenerationResult afterwards. The request is checked here,
        before anything is sent."""
        return self.stream_prepared(self.prepare(document, question, max_new_tokens, method, video, num_frames, fps,
                                                 video_fps, max_pixels=max_pixels, max_frames=max_frames))

    def generate_prepared(self, request):
        """The GenerationResult of a Request made by this pool's session."""
        result, lookup = self._run(request)
        return _generation(result, self.tokenizer, request, lookup)

    def stream_prepared(self, request, on_layer=None):
        """The TokenStream of a Request made by this pool's session. `on_layer(done, total)` is
        called after each prefill layer of rank 0 (the progress hook, `longctx.progress`; only
        launchers that forward it, the local one, call it)."""
        self._claim()
        if hasattr(self._launcher, "on_layer"):
            self._launcher.on_layer = on_layer
        try:
            sent, lookup = self._cached(request)
            events = self._finished(lookup, request, lambda: self._launcher.stream(sent))
        except BaseException:
            self._busy.release()
            raise
        stream = TokenStream(None, self.tokenizer, request, lookup)
        stream._events = self._release_after(events, lookup, request, stream.cancelled_with)
        return stream

    def _cached(self, request):
        """(the Request to send, the document cache's Lookup or None): with a cache, the request
        resumes the longest cached prefix (its plan is the entry's) and says what to keep."""
        if self.documents is None:
            return request, None
        method = self.session.method(request.method)
        scope = DocumentIndex.scope(self.config.model, method.name, method.options, self.config.nproc,
                                    self.config.layout, self.config.dtype)
        if request.media is not None:
            scope += (DocumentIndex.media_key(request.media),)
        lookup = self.documents.lookup(scope, request.doc_ids, request.query_ids, request.plan,
                                       method.kv_depends_on_question, cacheable=not request.return_hidden)
        plan = lookup.entry.plan if lookup.cached_tokens else request.plan
        return replace(request, cache=lookup.step, plan=plan), lookup

    def _finished(self, lookup, request, send):
        """`send()`'s value; the document cache learns that the workers failed if it raises."""
        try:
            return send()
        except BaseException:
            if lookup is not None:
                self.documents.finish(lookup, request.doc_ids, request.query_ids, ok=False)
            raise

    def _claim(self):
        """Take the pool for one request: one request at a time per pool, a second one (from
        another thread, or while a stream is not read to its end) is refused, never interleaved
        with the first's replies."""
        if self._launcher is None:
            raise LongCtxError("the workers have been shut down")
        if not self._busy.acquire(blocking=False):
            raise LongCtxError("this LongContextLM is serving another request (from another thread, or a "
                               "stream not read to its end); use one LongContextLM per thread")

    def _release_after(self, events, lookup=None, request=None, cancelled_with=None):
        """Pass `events` on; the pool is free again when they end (or the reader stops: the
        request is cancelled, and `cancelled_with` receives the EngineResult the launcher
        returns for it, when it returns one), and the document cache learns how they ended."""
        ok = False
        try:
            result = yield from relay(events, stopped=cancelled_with)
            ok = True
            return result
        except GeneratorExit:  # the reader stopped and the workers finished the cancelled request
            ok = True
            raise
        finally:
            if lookup is not None:
                self.documents.finish(lookup, request.doc_ids, request.query_ids, ok)
            self._busy.release()

    def run(self, request):
        """Send a Request made by this pool's session to the workers; returns the engine's
        EngineResult. Refused while the pool serves another request (`_claim`)."""
        return self._run(request)[0]

    def _run(self, request):
        """(EngineResult, the document cache's Lookup or None) of `request`, one at a time."""
        self._claim()
        try:
            sent, lookup = self._cached(request)
            result = self._finished(lookup, request, lambda: self._launcher.run(sent))
            if lookup is not None:
                self.documents.finish(lookup, request.doc_ids, request.query_ids, ok=True)
            return result, lookup
        finally:
            self._busy.release()

    def run_ids(self, doc_ids, query_ids, max_new_tokens=32, method=None, return_hidden=False):
        """Low-level: run token ids directly; returns the EngineResult."""
        return self.run(self.prepare_ids(doc_ids, query_ids, max_new_tokens, method, return_hidden))

    def close(self):
        """Stop the workers (each finishes what it is doing first)."""
        if self._launcher is not None:
            self._launcher.close()
            self._launcher = None

    def abort(self):
        """Kill the workers now; a request in flight is lost."""
        if self._launcher is not None:
            self._launcher.abort()
            self._launcher = None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc_value, traceback):
        if exc_type is None:
            self.close()
        else:
            self.abort()
