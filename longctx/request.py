"""One request's way from text to the engine, the same for every entry point.

The Python API (`longctx.api`), the SPMD runner (`launch.spmd`, torchrun), eval, demo and
compare all go through these functions: encode the prompt once (`encode_prompt`), the ids
that end generation (`stop_ids`), and one validation of the machine (`check_machine`), method,
worker count and lengths before any worker is involved (`validate_request`,
`prepare_request`). Workers receive token
ids, never text. `GenerationResult` is what a request produced, as the user sees it.
"""

import os
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


def check_machine(config):
    """LongCtxError unless this machine can run `config`'s device, process-group backend and
    kernel backend: called before any worker starts, so `--device cuda` on a machine without
    CUDA fails at once, not after the workers' start-up. Only local workers run on this machine:
    with another launcher (`config.launcher`, e.g. Ray) nothing is checked here."""
    import torch

    if getattr(config, "launcher", "local") != "local":
        return

    cuda = torch.cuda.is_available()
    if config.device == "cuda" and not cuda:
        build = "a CPU-only build of torch" if torch.version.cuda is None else "no visible GPU"
        raise LongCtxError(f"--device cuda: this machine has no CUDA device ({build}); use --device cpu")
    on_cuda = cuda and config.device != "cpu"
    if config.dist_backend == "nccl" and not (on_cuda and torch.distributed.is_nccl_available()):
        raise LongCtxError("--dist-backend nccl needs a CUDA device per worker, and the workers here run on the "
                           "CPU; use --dist-backend gloo (or auto)")
    if config.kernel_backend == "triton":
        try:
            import triton  # noqa: F401
        except ImportError:
            raise LongCtxError("--kernel-backend triton: the triton package is not installed "
                               "(pip install -e .[gpu])") from None
        if not on_cuda and os.environ.get("TRITON_INTERPRET") != "1":
            raise LongCtxError("--kernel-backend triton needs CUDA tensors, and the workers here run on the CPU "
                               "(set TRITON_INTERPRET=1 to run the kernel interpreted, slowly)")


def check_lengths(model_config, doc_len, query_len, max_new_tokens):
    """LongCtxError when document + question + `max_new_tokens` is more tokens than the
    model has positions (`max_position_embeddings`), or `max_new_tokens` is negative."""
    if max_new_tokens < 0:
        raise LongCtxError(f"max_new_tokens must be >= 0 (got {max_new_tokens})")
    limit = getattr(model_config, "max_position_embeddings", None)
    total = doc_len + query_len + max_new_tokens
    if limit and total > limit:
        raise LongCtxError(f"document ({doc_len} tokens) + question ({query_len}) + max new tokens "
                           f"({max_new_tokens}) = {total} tokens, more than the model's {limit} positions")


def worker_count(method, config, model_config):
    """Workers `method` runs on: `config.nproc` if it accepts them, 1 if it is a one-worker
    method (accepts one worker, refuses two: dense); otherwise the method's own error."""
    runner = get_method(method, config.replace(method=method))
    try:
        runner.check(model_config, config.nproc)
        return config.nproc
    except LongCtxError:
        if config.nproc > 1 and _accepts(runner, model_config, 1) and not _accepts(runner, model_config, 2):
            return 1
        raise


def _accepts(runner, model_config, world):
    try:
        runner.check(model_config, world)
    except LongCtxError:
        return False
    return True


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
    check_lengths(model_config, len(doc_ids), len(query_ids), max_new_tokens)
    validate_request(config, model_config, len(doc_ids), len(query_ids), method)
    return Request(list(doc_ids), list(query_ids), max_new_tokens, method, return_hidden, tuple(stop))


def check_request(config, document, question, max_new_tokens=0):
    """Validate a whole request (machine, model, method, worker count vs document length, total
    length vs the model's positions) from text, before any worker starts; returns the
    (doc_ids, query_ids) it would run."""
    check_machine(config)
    model_config = check_model_dir(config.model)
    doc_ids, query_ids = encode_prompt(load_tokenizer(config.model), document, question)
    check_lengths(model_config, len(doc_ids), len(query_ids), max_new_tokens)
    validate_request(config, model_config, len(doc_ids), len(query_ids))
    return doc_ids, query_ids
