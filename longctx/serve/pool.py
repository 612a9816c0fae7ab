"""The server's worker pool: requests run one at a time on one `LongContextLM`, in one thread,
behind a bounded queue.

A handler submits a `Job` (a checked Request, its sampling and stop strings) and reads its
events: text pieces as they are decoded, then the end (`Outcome`) or a failure. A full queue
refuses the job at once (`QueueFull`, the handler answers 429). A job whose client went away
is cancelled (`Job.cancel`): a waiting one never runs, a running one stops before its next
token (the document cache stays consistent: the engine rolls back as usual). A worker that
dies fails its job with the one-line error and the pool is started again before the next job.
"""

import logging
import queue
import threading
import time
from dataclasses import dataclass, field, replace

from longctx.api import LongContextLM
from longctx.errors import LongCtxError

log = logging.getLogger("longctx.serve")


class QueueFull(Exception):
    """The queue holds `max_queue` jobs; `retry_after_s` estimates when one will have left."""

    def __init__(self, retry_after_s):
        super().__init__("the server is busy: too many requests are waiting; retry later")
        self.retry_after_s = retry_after_s


@dataclass
class Outcome:
    """How a job ended: the answer `text` (cut at a stop string), the tokens the workers decoded
    for it (a cancelled request's too), why it ended
    ("stop": the model's end token or a stop string; "length": `max_tokens`; "cancelled"),
    the prompt's token counts and what the document cache did, and the engine's timings
    (None when the request was cancelled before they were known)."""

    text: str
    completion_tokens: int
    finish_reason: str
    prompt_tokens: int
    cached_tokens: int
    cache: str
    prefill_s: float = None
    query_s: float = None
    decode_s: float = None


@dataclass
class Job:
    """One request for the pool: the checked `request` (`Session.prepare_ids`), its `sampling`
    and `stop` strings. `events` receives ("text", piece) items, then ("done", Outcome) or
    ("error", status, message)."""

    request: object
    sampling: object = None
    stop: tuple = ()
    arrived: float = field(default_factory=time.monotonic)
    checked: float = field(default_factory=time.monotonic)  # when the handler last saw its client there
    events: "queue.Queue" = field(default_factory=queue.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self):
        """Stop this job: it never runs if still waiting, else it stops before its next token."""
        self.cancelled.set()


class Pool:
    """The worker pool of one `Session` (its checks done once), with the document cache
    (`cache_gib` per worker), a queue of at most `max_queue` waiting jobs and `metrics`."""

    def __init__(self, session, cache_gib, max_queue, metrics):
        self.session, self.cache_gib, self.metrics = session, cache_gib, metrics
        self._jobs = queue.Queue(maxsize=max_queue)
        self._lm = None
        self._mean_s = 1.0
        self.state = "starting"
        self._lock = threading.Lock()  # requests are prepared in handler threads, one at a time
        self._thread = threading.Thread(target=self._loop, name="longctx-pool", daemon=True)

    def start(self):
        """Start the workers (blocks until they are ready), then the request thread."""
        self._lm = LongContextLM.from_session(self.session, self.cache_gib)
        self.state = "ready"
        self._thread.start()

    def prepare(self, doc_ids, query_ids, max_new_tokens, method):
        """The checked Request of token ids (LongCtxError names the first problem)."""
        with self._lock:
            return self.session.prepare_ids(doc_ids, query_ids, max_new_tokens, method)

    def submit(self, job):
        """Queue `job`; QueueFull when the queue is full."""
        try:
            self._jobs.put_nowait(job)
        except queue.Full:
            raise QueueFull(max(1, round(self._mean_s * (self._jobs.qsize() + 1)))) from None
        self.metrics.queue_depth = self._jobs.qsize()

    def close(self):
        """Cancel what waits, let the running job stop, stop the workers and the thread."""
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.cancel()
                job.events.put(("error", 503, "the server is shutting down"))
        self._jobs.put(None)
        self._thread.join(timeout=60) if self._thread.is_alive() else None
        lm, self._lm = self._lm, None
        if lm is not None:
            lm.close()
        self.state = "stopped"

    def _loop(self):
        while True:
            job = self._jobs.get()
            self.metrics.queue_depth = self._jobs.qsize()
            if job is None:
                return
            if job.cancelled.is_set():
                job.events.put(("error", 499, "cancelled before it ran"))
                continue
            started = time.monotonic()
            try:
                self._run(job)
            except Exception as exc:  # a worker failed: its one-line error, then a fresh pool
                log.error("request failed: %s", exc)
                job.events.put(("error", 400 if type(exc) is LongCtxError else 500, str(exc)))
                self._restart()
            self._mean_s = 0.8 * self._mean_s + 0.2 * (time.monotonic() - started)

    def _restart(self):
        """Start the workers again after a failure (they were all stopped)."""
        self.state = "restarting"
        if self._lm is not None:
            self._lm.abort()
        try:
            self._lm = LongContextLM.from_session(self.session, self.cache_gib)
            self.state = "ready"
            self.metrics.restarted()
        except Exception as exc:  # the next job tries again
            log.error("could not start the workers again: %s", exc)
            self._lm = None
            self.state = "failed"

    def _run(self, job):
        """Serve `job` on the pool, sending its events; raises when the workers failed."""
        if self._lm is None:
            self._restart()
            if self._lm is None:
                raise RuntimeError("the workers could not be started")
        lm, request = self._lm, replace(job.request, sampling=job.sampling)
        evictions = lm.documents.counters["evictions"] if lm.documents else 0
        waited = time.monotonic() - job.arrived
        stream = lm.stream_prepared(request)
        text, sent, first_s, reason = "", 0, None, None
        hold = max((len(stop) for stop in job.stop), default=1) - 1
        try:
            for piece in stream:
                if first_s is None:
                    first_s = time.monotonic() - job.arrived
                text += piece
                cut = min((text.find(stop) for stop in job.stop if stop in text), default=-1)
                if cut >= 0:
                    text, reason = text[:cut], "stop"
                    break
                if job.cancelled.is_set():
                    reason = "cancelled"
                    break
                if len(text) - hold > sent:  # never send what may be the start of a stop string
                    job.events.put(("text", text[sent:len(text) - hold]))
                    sent = len(text) - hold
        finally:
            stream.close()
        if sent < len(text) and reason != "cancelled":
            job.events.put(("text", text[sent:]))
        result = stream.result
        if reason is None:
            last = stream.tokens[-1:] if stream.tokens else []
            reason = "stop" if last and last[0] in request.stop_ids else "length"
        lookup = stream.lookup
        outcome = Outcome(text, len(result.tokens) if result else len(stream.tokens), reason, len(request.doc_ids) + len(request.query_ids),
                          lookup.cached_tokens if lookup else 0, lookup.reason if lookup else None,
                          *((result.prefill_s, result.query_s, result.decode_s) if result else ()))
        self.metrics.served(outcome, first_s, (lm.documents.counters["evictions"] - evictions) if lm.documents else 0)
        phases = ("prefill %.3f s, query %.3f s, decode %.3f s" % (result.prefill_s, result.query_s, result.decode_s)
                  if result else "stopped early")
        log.info("request: queued %.3f s, cache %s (%d of %d tokens reused), %s, first token %s, %d tokens, %s",
                 waited, outcome.cache, outcome.cached_tokens, outcome.prompt_tokens, phases,
                 "-" if first_s is None else f"{first_s:.3f} s", outcome.completion_tokens, reason)
        job.events.put(("done", outcome))
