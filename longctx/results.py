"""What a request produced, typed: the engine's result on a worker, the answer as a user sees
it, and the per-request counters a method reports. Each has one JSON form (`to_dict`); the
figures derived from the timings (time to first token, tokens per second) are properties
computed here and nowhere else."""

from dataclasses import asdict, dataclass, field, fields


@dataclass
class RequestStats:
    """Per-request counters a method reports (`Method.Stats`, made fresh for every request and
    filled during it as `ctx.stats`). This base has none; a method declares a subclass with its
    own fields (APB's and Spava's `passing_bytes_per_layer`)."""

    def to_dict(self):
        """JSON-ready dict of the counters."""
        return asdict(self)


class Timed:
    """Figures derived from a request's timings (`prefill_s`, `query_s`, `decode_s`, seconds)."""

    @property
    def ttft_s(self):
        """Time to the first answer token's logits: prefill + query pass, the work Hugging
        Face's one forward over document + question does (every speed-up compares it)."""
        return self.prefill_s + self.query_s


@dataclass
class EngineResult(Timed):
    """One request's result on one worker (`Engine.run`; complete on rank 0).

    `tokens` are the generated ids, `plan` the plan's summary, `first_logits` the fp32 logits
    [vocab] of the first generated position, `stats` the method's counters; with
    `return_hidden`, `doc_hidden` / `query_hidden` are the final hidden states (fp32, global
    order; rank 0 only), else None.
    """

    method: str
    nproc: int
    plan: dict
    prefill_s: float
    query_s: float
    decode_s: float
    tokens: list
    first_logits: object
    stats: RequestStats = field(default_factory=RequestStats)
    doc_hidden: object = None
    query_hidden: object = None

    def to_dict(self):
        """JSON-ready dict: every field (tensors as lists; the hidden states only when kept)."""
        values = {}
        for item in fields(self):
            value = getattr(self, item.name)
            if item.name in ("doc_hidden", "query_hidden") and value is None:
                continue
            values[item.name] = (value.to_dict() if isinstance(value, RequestStats) else
                                 value.tolist() if hasattr(value, "tolist") else value)
        return values


@dataclass
class GenerationResult(Timed):
    """What one request produced, as the user sees it: the answer text and tokens, timings
    (seconds), the plan's summary, the method's counters and what the document cache did."""

    text: str
    tokens: list
    method: str
    nproc: int
    doc_tokens: int
    question_tokens: int
    prefill_s: float
    query_s: float
    decode_s: float
    plan: dict = field(default_factory=dict)
    stats: RequestStats = field(default_factory=RequestStats)
    cached_tokens: int = 0
    cache: str = None

    @classmethod
    def of(cls, result, text, doc_tokens, question_tokens, cached_tokens=0, cache=None):
        """From an EngineResult, the decoded `text`, the request's token counts and what the
        document cache did (`cached_tokens` reused; `cache`: "hit", a miss reason of
        `longctx.doc_cache.MISS_REASONS`, or None without a cache)."""
        return cls(text=text, tokens=result.tokens, method=result.method, nproc=result.nproc, doc_tokens=doc_tokens,
                   question_tokens=question_tokens, prefill_s=result.prefill_s, query_s=result.query_s,
                   decode_s=result.decode_s, plan=result.plan, stats=result.stats, cached_tokens=cached_tokens,
                   cache=cache)

    @property
    def prefill_tokens_per_s(self):
        """Document tokens per second of prefill."""
        return self.doc_tokens / max(self.prefill_s, 1e-9)

    def to_dict(self):
        """JSON-ready dict of every field."""
        return asdict(self)
