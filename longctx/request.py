"""One request's way from text to the engine, the same for every entry point.

The Python API (`longctx.api`), the SPMD runner (`launch.spmd`, torchrun), eval, demo and
compare all go through these functions: encode the prompt once (`encode_prompt`), the ids
that end generation (`stop_ids`), and one validation of method, worker count and lengths
before any worker is involved (`validate_request`, `prepare_request`). Workers receive token
ids, never text. `GenerationResult` is what a request produced, as the user sees it.
"""

from dataclasses import asdict, dataclass, field

from longctx.engine import Request
from longctx.errors import LongCtxError
from longctx.models import check_model_dir, load_tokenizer
from longctx.registry import get_method


@dataclass
class GenerationResult:
    """What one request produced: the answer text and tokens, timings (seconds) and the plan."""

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
    stats: dict = field(default_factory=dict)

    @classmethod
    def from_raw(cls, raw, tokenizer, doc_len, query_len):
        """From the engine's result dict (`Engine.run`), decoding the tokens with `tokenizer`."""
        return cls(
            text=tokenizer.decode(raw["tokens"], skip_special_tokens=True),
            tokens=raw["tokens"],
            method=raw["method"],
            nproc=raw["nproc"],
            doc_tokens=doc_len,
            question_tokens=query_len,
            prefill_s=raw["prefill_s"],
            query_s=raw["query_s"],
            decode_s=raw["decode_s"],
            plan=raw["plan"],
            stats=raw["stats"],
        )

    def to_dict(self):
        """JSON-ready dict."""
        return asdict(self)


def encode_prompt(tokenizer, document, question):
    """Token ids (doc_ids, query_ids) for a document and a question.

    The document gets the tokenizer's special prefix (BOS); the question none. An empty
    question moves the document's last token into the query pass, which needs >= 1 token.
    """
    if not document or not document.strip():
        raise LongCtxError("the document is empty")
    doc_ids = tokenizer(document, add_special_tokens=True)["input_ids"]
    query_ids = tokenizer(question, add_special_tokens=False)["input_ids"] if question else []
    if not query_ids:
        doc_ids, query_ids = doc_ids[:-1], doc_ids[-1:]
    if not doc_ids:
        raise LongCtxError("the document is empty")
    return doc_ids, query_ids


def stop_ids(tokenizer, model_config):
    """Token ids that end generation (the model's EOS ids, else the tokenizer's)."""
    eos = getattr(model_config, "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return ()
    return tuple(eos) if isinstance(eos, (list, tuple)) else (eos,)


def validate_request(config, model_config, doc_len, query_len, method=None):
    """Check method, worker count and lengths before any worker is involved; returns the plan.

    `method` overrides `config.method`; the worker count is `config.nproc`. LongCtxError
    names the first problem (unknown method, heads not divisible, document too short, ...).
    """
    runner = get_method(method or config.method, config)
    runner.check(model_config, config.nproc)
    runner.use_model(model_config)
    return runner.plan(doc_len, query_len, config.nproc)


def prepare_request(config, model_config, doc_ids, query_ids, max_new_tokens=32, method=None,
                    return_hidden=False, stop=()):
    """A validated `Request` for token ids: the one validation a request gets on the driver.

    `stop` are the ids that end generation (`stop_ids`); `method` overrides `config.method`.
    """
    if max_new_tokens < 0:
        raise LongCtxError(f"max_new_tokens must be >= 0 (got {max_new_tokens})")
    validate_request(config, model_config, len(doc_ids), len(query_ids), method)
    return Request(list(doc_ids), list(query_ids), max_new_tokens, method, return_hidden, tuple(stop))


def check_request(config, document, question):
    """Validate a whole request (model, method, worker count vs document length) from text,
    before any worker starts; returns the (doc_ids, query_ids) it would run."""
    model_config = check_model_dir(config.model)
    doc_ids, query_ids = encode_prompt(load_tokenizer(config.model), document, question)
    validate_request(config, model_config, len(doc_ids), len(query_ids))
    return doc_ids, query_ids
