"""Driver-side Python API.

`LongContextLM` starts workers once (model loaded once per worker) and answers questions over
long documents with any registered method:

    with LongContextLM("path/to/model", method="burst", nproc=4) as lm:
        result = lm.generate(document, question, max_new_tokens=32)
        print(result.text, result.prefill_s)

`SPMDLongContextLM` is the same surface for scripts already running under torchrun: every
rank constructs it and calls `generate` with the same arguments.
"""

import os
from dataclasses import asdict, dataclass, field

from longctx.config import RunConfig
from longctx.engine import Request
from longctx.errors import LongCtxError
from longctx.models import check_model_dir, load_tokenizer
from longctx.registry import get_method

LAUNCHERS = ("local",)


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
    """Check method, worker count and lengths on the driver, before any worker is involved."""
    runner = get_method(method or config.method, config)
    runner.check(model_config, config.nproc)
    runner.use_model(model_config)
    runner.plan(doc_len, query_len, config.nproc)


def check_request(config, document, question):
    """Validate a whole request (model, method, worker count vs document length) before any
    worker starts; returns the (doc_ids, query_ids) it would run."""
    model_config = check_model_dir(config.model)
    doc_ids, query_ids = encode_prompt(load_tokenizer(config.model), document, question)
    validate_request(config, model_config, len(doc_ids), len(query_ids))
    return doc_ids, query_ids


def _result(raw, tokenizer, doc_len, query_len):
    return GenerationResult(
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


class LongContextLM:
    """A pool of workers serving one model; use as a context manager or call `close()`.

    `model` is a local Hugging Face causal-LM directory; `method` the default method; other
    keyword arguments are RunConfig fields (device, dtype, layout, intra_size, timeout_s, ...).
    """

    def __init__(self, model, method="burst", nproc=2, launcher="local", **options):
        self.config = RunConfig(model=model, method=method, nproc=nproc, **options).validate()
        self.model_config = check_model_dir(model)
        get_method(method, self.config).check(self.model_config, nproc)
        self.tokenizer = load_tokenizer(model)
        self._launcher = _start_launcher(launcher, self.config)

    def generate(self, document, question, max_new_tokens=32, method=None):
        """Answer `question` about `document`; returns a GenerationResult (greedy decoding)."""
        doc_ids, query_ids = encode_prompt(self.tokenizer, document, question)
        raw = self.run_ids(doc_ids, query_ids, max_new_tokens=max_new_tokens, method=method)
        return _result(raw, self.tokenizer, len(doc_ids), len(query_ids))

    def run_ids(self, doc_ids, query_ids, max_new_tokens=32, method=None, return_hidden=False):
        """Low-level: run token ids directly; returns the engine's raw result dict (see Engine.run)."""
        if max_new_tokens < 0:
            raise LongCtxError(f"max_new_tokens must be >= 0 (got {max_new_tokens})")
        validate_request(self.config, self.model_config, len(doc_ids), len(query_ids), method)
        request = Request(list(doc_ids), list(query_ids), max_new_tokens, method, return_hidden,
                          stop_ids(self.tokenizer, self.model_config))
        return self._launcher.run(request)

    def close(self):
        """Stop the workers."""
        if self._launcher is not None:
            self._launcher.close()
            self._launcher = None

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()


def _start_launcher(name, config):
    if name == "local":
        from launch.local import LocalLauncher

        return LocalLauncher(config)
    raise LongCtxError(f"unknown launcher {name!r}; choose one of {', '.join(LAUNCHERS)}")


class SPMDLongContextLM:
    """The API for code already running on every rank (torchrun): no driver, no pipes.

    Every rank constructs it (joining the process group from the torchrun environment) and
    calls `generate` with the same arguments; every rank gets the same GenerationResult.
    """

    def __init__(self, model, method="burst", **options):
        from launch.worker import build_engine, init_worker

        rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
        self.config = RunConfig(model=model, method=method, nproc=world, **options).validate()
        self.model_config = check_model_dir(model)
        self.tokenizer = load_tokenizer(model)
        comm, device = init_worker(self.config, rank, world, local_rank=local_rank)
        self.rank = rank
        self.engine = build_engine(self.config, comm, device)

    def generate(self, document, question, max_new_tokens=32, method=None):
        """Same contract as LongContextLM.generate; call it on every rank."""
        doc_ids, query_ids = encode_prompt(self.tokenizer, document, question)
        validate_request(self.config, self.model_config, len(doc_ids), len(query_ids), method)
        raw = self.engine.run(Request(doc_ids, query_ids, max_new_tokens, method, False,
                                      stop_ids(self.tokenizer, self.model_config)))
        return _result(raw, self.tokenizer, len(doc_ids), len(query_ids))

    def close(self):
        """Leave the process group."""
        from launch.worker import shutdown_worker

        shutdown_worker()
