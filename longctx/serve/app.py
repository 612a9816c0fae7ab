"""The OpenAI-compatible application: routes, request bodies, answers and server-sent events.

Routes: `GET /v1/models`, `POST /v1/chat/completions`, `POST /v1/completions` (the question as
`prompt`, the document in an extra `document` field, the way vLLM takes its own parameters),
`GET /health` (never behind the API key), `GET /metrics` (Prometheus text). Extra body fields of
longctx: `method` (a per-request method the workers allow), `document`, and `ignore_eos` (as vLLM's:
generate `max_tokens` tokens whatever the model's end token). Every error is one
OpenAI-style JSON object `{"error": {"message", "type", "code"}}`: 400 for a bad body (unknown
fields, wrong types, out-of-range values: one message naming the field), 401 for a missing or
wrong API key, 404 for an unknown model, 413 for a body over the size limit, 429 with
Retry-After when the queue is full, 500 with the workers' one-line error when they failed.
"""

import asyncio
import json
import queue
import time
import uuid
from dataclasses import replace
from typing import List, Literal, Optional, Union

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from longctx.chat import encode_chat
from longctx.errors import LongCtxError
from longctx.models.family import encode_prompt
from longctx.sampling import Sampling
from longctx.serve.pool import Job, QueueFull

POLL_S = 0.25  # how often a waiting handler checks that its client is still there


class Strict(BaseModel):
    """Bodies refuse unknown fields and values of the wrong type (no "5" for 5)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class TextPart(Strict):
    type: Literal["text"]
    text: str


class Message(Strict):
    role: Literal["system", "user", "assistant"]
    content: Union[str, List[TextPart]]
    name: Optional[str] = None


class StreamOptions(Strict):
    include_usage: bool = False


class Generation(Strict):
    """What both completion endpoints take besides the prompt."""

    model: str
    max_tokens: Optional[int] = Field(None, ge=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    temperature: Optional[float] = Field(None, ge=0, le=2)
    top_p: Optional[float] = Field(None, gt=0, le=1)
    seed: Optional[int] = None
    stop: Optional[Union[str, List[str]]] = None
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    n: int = Field(1, ge=1, le=1)
    user: Optional[str] = None
    method: Optional[str] = None
    ignore_eos: bool = False


class ChatBody(Generation):
    messages: List[Message] = Field(min_length=1)


class CompletionBody(Generation):
    prompt: str
    document: Optional[str] = None


class Settings(BaseModel):
    """The server's settings: the served model's `name`, the `api_key` (None: open),
    `max_body_bytes`, the default `max_tokens`, and the model's default `sampling` (its
    generation config: greedy unless it samples)."""

    name: str
    api_key: Optional[str] = None
    max_body_bytes: int = 64 * 1024 * 1024
    max_tokens: int = 64
    sampling: Sampling = Sampling()
    model_config = ConfigDict(arbitrary_types_allowed=True)


def error(status, message, kind="invalid_request_error", headers=None):
    """The JSON error response OpenAI's clients read."""
    return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status,
                        headers=headers)


def create_app(pool, metrics, settings, lifespan=None):
    """The FastAPI application over `pool` (a started or starting `longctx.serve.pool.Pool`)."""
    app = FastAPI(title="longctx", lifespan=lifespan)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request, exc):
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first.get("loc", ()) if part != "body") or "body"
        metrics.request(request.url.path, "invalid")
        return error(400, f"{where}: {first.get('msg', 'invalid')}")

    @app.exception_handler(HTTPException)
    async def http_error(request, exc):
        return error(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.middleware("http")
    async def guard(request, call_next):
        if settings.api_key and request.url.path != "/health":
            if request.headers.get("authorization") != f"Bearer {settings.api_key}":
                metrics.request(request.url.path, "unauthorized")
                return error(401, "missing or wrong API key (Authorization: Bearer KEY)", "authentication_error")
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > settings.max_body_bytes):
            metrics.request(request.url.path, "invalid")
            return error(413, f"the request body is larger than {settings.max_body_bytes} bytes")
        return await call_next(request)

    @app.get("/health")
    async def health():
        ready = pool.state == "ready"
        return JSONResponse({"status": pool.state}, status_code=200 if ready else 503)

    @app.get("/metrics")
    async def metrics_text():
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": settings.name, "object": "model", "created": 0,
                                            "owned_by": "longctx"}]}

    def encoded_chat(body):
        return encode_chat(pool.session.tokenizer, [message.model_dump() for message in body.messages])

    def encoded_completion(body):
        if body.document is None:
            return encode_prompt(pool.session.tokenizer, body.prompt, "")
        return encode_prompt(pool.session.tokenizer, body.document, body.prompt)

    @app.post("/v1/chat/completions")
    async def chat(body: ChatBody, request: Request):
        return await complete(request, body, encoded_chat, Chat)

    @app.post("/v1/completions")
    async def completions(body: CompletionBody, request: Request):
        return await complete(request, body, encoded_completion, Completion)

    async def complete(request, body, encode, shape):
        endpoint = request.url.path
        if body.model != settings.name:
            metrics.request(endpoint, "invalid")
            return error(404, f"model {body.model!r} is not served here; GET /v1/models lists {settings.name!r}",
                         "not_found_error")
        try:
            job = await asyncio.to_thread(make_job, body, encode)
        except LongCtxError as exc:
            metrics.request(endpoint, "invalid")
            return error(400, str(exc))
        try:
            pool.submit(job)
        except QueueFull as exc:
            metrics.request(endpoint, "rejected")
            return error(429, str(exc), "rate_limit_error", headers={"Retry-After": str(exc.retry_after_s)})
        first = await next_event(job, request)
        if first is None:
            metrics.request(endpoint, "cancelled")
            return error(499, "the client went away")
        if first[0] == "error":
            metrics.request(endpoint, "error" if first[1] >= 500 else "invalid")
            return error(first[1], first[2], "server_error" if first[1] >= 500 else "invalid_request_error")
        answer = shape(settings.name, body)
        if body.stream:
            return StreamingResponse(events(job, request, first, answer, endpoint), media_type="text/event-stream")
        text, event = "", first
        while event is not None and event[0] == "text":
            text += event[1]
            event = await next_event(job, request)
        if event is None:
            metrics.request(endpoint, "cancelled")
            return error(499, "the client went away")
        if event[0] == "error":
            metrics.request(endpoint, "error")
            return error(event[1], event[2], "server_error")
        metrics.request(endpoint, "ok")
        return answer.whole(text, event[1])

    def make_job(body, encode):
        doc_ids, query_ids = encode(body)
        max_tokens = body.max_completion_tokens or body.max_tokens or settings.max_tokens
        request = pool.prepare(doc_ids, query_ids, max_tokens, body.method)
        default = settings.sampling
        sampling = Sampling(default.temperature if body.temperature is None else body.temperature,
                            default.top_p if body.top_p is None else body.top_p, body.seed).check()
        stops = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
        if len(stops) > 4 or not all(stops):
            raise LongCtxError("stop: at most 4 non-empty strings")
        if body.ignore_eos:
            request = replace(request, stop_ids=())
        return Job(request, sampling, tuple(stops))

    async def next_event(job, request):
        """The job's next event, or None after cancelling it when the client went away (checked
        at least every POLL_S, also while events keep coming)."""
        while True:
            if time.monotonic() - job.checked >= POLL_S:
                job.checked = time.monotonic()
                if await request.is_disconnected():
                    job.cancel()
                    return None
            try:
                return await asyncio.to_thread(job.events.get, True, POLL_S)
            except queue.Empty:
                continue

    async def events(job, request, first, answer, endpoint):
        event, outcome = first, "cancelled"
        try:
            yield answer.sse(answer.chunk(role=True))
            while event is not None and event[0] == "text":
                yield answer.sse(answer.chunk(text=event[1]))
                event = await next_event(job, request)
            if event is None:
                return
            if event[0] == "error":
                outcome = "error"
                yield answer.sse({"error": {"message": event[2], "type": "server_error", "code": event[1]}})
            else:
                outcome = "ok"
                yield answer.sse(answer.chunk(finish=event[1].finish_reason))
                if answer.body.stream_options and answer.body.stream_options.include_usage:
                    yield answer.sse(answer.usage_chunk(event[1]))
            yield "data: [DONE]\n\n"
        finally:
            if outcome == "cancelled":
                job.cancel()
            metrics.request(endpoint, outcome)

    return app


def usage(outcome):
    """OpenAI's usage object, with the document cache's reuse and, on a miss, its reason."""
    return {"prompt_tokens": outcome.prompt_tokens, "completion_tokens": outcome.completion_tokens,
            "total_tokens": outcome.prompt_tokens + outcome.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": outcome.cached_tokens,
                                      "cache_miss_reason": None if outcome.cache in (None, "hit") else outcome.cache}}


class Answer:
    """One answer's OpenAI objects: `whole` (not streamed) and the streamed chunks."""

    prefix, kind = "", ""

    def __init__(self, model, body):
        self.model, self.body = model, body
        self.id, self.created = f"{self.prefix}-{uuid.uuid4().hex[:24]}", int(time.time())

    def envelope(self, kind, choices, **extra):
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model, "choices": choices,
                **extra}

    @staticmethod
    def sse(payload):
        """One server-sent event carrying `payload` as JSON."""
        return f"data: {json.dumps(payload)}\n\n"

    def usage_chunk(self, outcome):
        return self.envelope(self.chunk_kind, [], usage=usage(outcome))


class Chat(Answer):
    prefix, kind, chunk_kind = "chatcmpl", "chat.completion", "chat.completion.chunk"

    def whole(self, text, outcome):
        return self.envelope(self.kind, [{"index": 0, "message": {"role": "assistant", "content": text},
                                          "logprobs": None, "finish_reason": outcome.finish_reason}],
                             usage=usage(outcome))

    def chunk(self, text=None, role=False, finish=None):
        delta = {"role": "assistant", "content": ""} if role else {} if finish else {"content": text}
        return self.envelope(self.chunk_kind, [{"index": 0, "delta": delta, "logprobs": None,
                                                "finish_reason": finish}])


class Completion(Answer):
    prefix, kind, chunk_kind = "cmpl", "text_completion", "text_completion"

    def whole(self, text, outcome):
        return self.envelope(self.kind, [{"index": 0, "text": text, "logprobs": None,
                                          "finish_reason": outcome.finish_reason}], usage=usage(outcome))

    def chunk(self, text=None, role=False, finish=None):
        return self.envelope(self.chunk_kind, [{"index": 0, "text": text or "", "logprobs": None,
                                                "finish_reason": finish}])
