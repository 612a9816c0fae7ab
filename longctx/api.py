"""Driver-side Python API.

`LongContextLM` starts workers once (model loaded once per worker) and answers questions over
long documents with any registered method:

    with LongContextLM("path/to/model", method="burst", nproc=4) as lm:
        result = lm.generate(document, question, max_new_tokens=32)
        print(result.text, result.prefill_s)
        for piece in lm.stream(document, question):   # text as it is decoded
            print(piece, end="", flush=True)

    with LongContextLM("path/to/qwen2.5-vl", method="spava", nproc=4) as lm:   # video questions
        result = lm.generate(video="clip.mp4", question="What happens?", num_frames=64)

The driver encodes each prompt once, validates the request once (`longctx.request`) and sends
the workers token ids. `SPMDLongContextLM` (from `launch.spmd`) is the same surface for scripts
already running under torchrun: every rank constructs it and calls `generate` with the same
arguments. The request helpers are re-exported here for existing imports.
"""

import threading

from launch.local import LocalLauncher
from launch.ray import RayLauncher
from launch.spmd import SPMDLongContextLM
from longctx.config import RunConfig
from longctx.errors import LongCtxError
from longctx.models import check_model_dir, check_weights, load_tokenizer
from longctx.registry import get_method
from longctx.request import (GenerationResult, check_machine, check_request, encode_prompt, encode_request,
                             prepare_request, stop_ids, validate_request)

__all__ = ["LongContextLM", "SPMDLongContextLM", "GenerationResult", "TokenStream", "encode_prompt",
           "encode_request", "stop_ids", "validate_request", "prepare_request", "check_request"]

LAUNCHERS = {"local": LocalLauncher, "ray": RayLauncher}


class TokenStream:
    """The answer's text as it is generated (`LongContextLM.stream`): iterating yields text
    pieces, each as soon as its tokens are decided (a piece waits while it would end inside a
    multi-byte character); `result` is the GenerationResult once the iteration has ended.
    Breaking off early lets the request finish in the background of the next call."""

    def __init__(self, events, tokenizer, doc_len, query_len):
        self._events, self._tokenizer = events, tokenizer
        self._lengths = (doc_len, query_len)
        self.result = None

    def __iter__(self):
        tokens, shown = [], ""
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
            self._events.close()
        self.result = GenerationResult.from_raw(raw, self._tokenizer, *self._lengths)
        if self.result.text.startswith(shown) and len(self.result.text) > len(shown):
            yield self.result.text[len(shown):]


class LongContextLM:
    """A pool of workers serving one model; use as a context manager or call `close()`.

    `model` is a local Hugging Face causal-LM directory; `method` the default method; other
    keyword arguments are RunConfig fields (device, dtype, layout, intra_size, timeout_s, ...).
    `launcher="ray"` starts one worker actor per GPU (per CPU slot on CPU clusters) on the Ray
    cluster at `ray_address` (None: RAY_ADDRESS, the cluster running here, else a new one;
    "auto"; or HOST:PORT).
    The machine, model and method are checked before any worker starts. Leaving the `with`
    block by an exception (Ctrl-C included) kills the workers at once.

    A launcher (LAUNCHERS) has `run(request)` -> raw result, `stream(request)` (a generator of
    token ids as they are decided, returning the raw result), `abort()` and `close()`.
    """

    def __init__(self, model, method="burst", nproc=2, launcher="local", **options):
        if launcher not in LAUNCHERS:
            raise LongCtxError(f"unknown launcher {launcher!r}; choose one of {', '.join(LAUNCHERS)}")
        self.config = RunConfig(model=model, method=method, nproc=nproc, launcher=launcher, **options).validate()
        check_machine(self.config)  # local workers only: Ray's run on the cluster's nodes
        self.model_config = check_model_dir(model)
        check_weights(model)
        get_method(method, self.config).check(self.model_config, nproc)
        self.tokenizer = load_tokenizer(model)
        self.stop_ids = stop_ids(self.tokenizer, self.model_config)
        self._busy = threading.Lock()
        self._launcher = LAUNCHERS[launcher](self.config)

    def generate(self, document=None, question="", max_new_tokens=32, method=None, video=None, num_frames=None,
                 fps=None, video_fps=None):
        """Answer `question` about `document`, or about `video` with a video-language model
        (Qwen2.5-VL): a file path (PyAV), frames [T, H, W, 3] uint8 or a list of frames
        (`video_fps` frames per second, default 1), sampled to `num_frames` or `fps`.
        Returns a GenerationResult (greedy decoding); `doc_tokens` counts the video's tokens."""
        request = self._request(document, question, max_new_tokens, method, video, num_frames, fps, video_fps)
        raw = self.run(request)
        return GenerationResult.from_raw(raw, self.tokenizer, len(request.doc_ids), len(request.query_ids))

    def stream(self, document=None, question="", max_new_tokens=32, method=None, video=None, num_frames=None,
               fps=None, video_fps=None):
        """Like `generate`, but returns a TokenStream: iterate it for the answer's text as it is
        decoded; its `result` is the GenerationResult afterwards. The request is validated here,
        before anything is sent."""
        request = self._request(document, question, max_new_tokens, method, video, num_frames, fps, video_fps)
        self._claim()
        try:
            events = self._launcher.stream(request)
        except BaseException:
            self._busy.release()
            raise
        return TokenStream(self._release_after(events), self.tokenizer, len(request.doc_ids),
                           len(request.query_ids))

    def _claim(self):
        """Take the pool for one request: one request at a time per pool, a second one (from
        another thread, or while a stream is not read to its end) is refused, never interleaved
        with the first's replies."""
        if self._launcher is None:
            raise LongCtxError("the workers have been shut down")
        if not self._busy.acquire(blocking=False):
            raise LongCtxError("this LongContextLM is serving another request (from another thread, or a "
                               "stream not read to its end); use one LongContextLM per thread")

    def _release_after(self, events):
        """Pass `events` on; the pool is free again when they end (or the reader stops)."""
        try:
            return (yield from events)
        finally:
            self._busy.release()

    def _request(self, document, question, max_new_tokens, method, video, num_frames, fps, video_fps):
        doc_ids, query_ids, patches = encode_request(self.tokenizer, self.config.model, self.model_config, document,
                                                     question, video, num_frames, fps, video_fps)
        return self.prepare(doc_ids, query_ids, max_new_tokens, method, video=patches)

    def prepare(self, doc_ids, query_ids, max_new_tokens=32, method=None, return_hidden=False, video=None):
        """A validated Request for this pool (method, worker count and lengths checked here,
        once); `run` sends it without checking again. `video`: the VideoPatches whose
        embeddings replace `doc_ids`' video tokens (`longctx.request.encode_request`)."""
        return prepare_request(self.config, self.model_config, doc_ids, query_ids, max_new_tokens, method,
                               return_hidden, self.stop_ids, video)

    def run(self, request):
        """Send a Request made by `prepare` to the workers; returns the engine's raw result dict.
        Refused while the pool serves another request (`_claim`)."""
        self._claim()
        try:
            return self._launcher.run(request)
        finally:
            self._busy.release()

    def run_ids(self, doc_ids, query_ids, max_new_tokens=32, method=None, return_hidden=False):
        """Low-level: run token ids directly; returns the engine's raw result dict (see Engine.run)."""
        return self.run(self.prepare(doc_ids, query_ids, max_new_tokens, method, return_hidden))

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
