"""One request's way from text to the engine, the same for every entry point.

The Python API (`longctx.api`), the SPMD runner (`launch.spmd`, torchrun), eval, demo and
compare all go through these functions: encode the prompt once (`encode_prompt`), the ids
that end generation (`stop_ids`), and one validation of the machine (`check_machine`), method,
worker count and lengths before any worker is involved (`validate_request`,
`prepare_request`). Workers receive token
ids, never text. `GenerationResult` is what a request produced, as the user sees it.
"""

import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from longctx.engine import Request
from longctx.costs import resolve_device_type
from longctx.errors import LongCtxError
from longctx.memory import check_memory
from longctx.models import check_model_dir, load_tokenizer
from longctx.models.qwen_vl import VIDEO_FAMILIES, frame_shares, is_video_model, video_prompt
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


def read_document(path):
    """The text of the document file `path` ('-': standard input), for the CLI and the torchrun
    entry. LongCtxError (one line) when it cannot be read, holds NUL bytes (a binary file), or
    is not UTF-8 text."""
    name = "on standard input" if path == "-" else repr(path)
    try:
        data = sys.stdin.buffer.read() if path == "-" else Path(path).read_bytes()
    except OSError as exc:
        raise LongCtxError(f"cannot read document {path!r}: {exc.strerror}") from None
    if b"\0" in data:
        raise LongCtxError(f"the document {name} contains NUL bytes: it looks like a binary file, not text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LongCtxError(f"the document {name} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset "
                           f"{exc.start}); convert it first, e.g. iconv -f latin1 -t utf-8") from None


def check_question(question):
    """LongCtxError when a question was given but is empty or only whitespace (None: no question,
    the document is continued); returns the question text ("" for None)."""
    if question is not None and not question.strip():
        raise LongCtxError("the question is empty; give one, or omit --question to continue the document")
    return question or ""


def check_new_tokens(max_new_tokens):
    """LongCtxError unless a command asks for at least one new token."""
    if max_new_tokens < 1:
        raise LongCtxError(f"--max-new-tokens must be at least 1 (got {max_new_tokens})")
    return max_new_tokens


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


def check_modality(model_config, has_video):
    """LongCtxError when a video is given to a text-only model, or a video-language model gets
    no video (its prompt is a video and a question)."""
    video_model = is_video_model(model_config)
    if has_video and not video_model:
        raise LongCtxError(f"a video needs a video-language model ({', '.join(VIDEO_FAMILIES)}); this is a "
                           f"text-only {model_config.model_type!r} model")
    if video_model and not has_video:
        raise LongCtxError("this is a video-language model (Qwen2.5-VL): give a video (--video FILE, or "
                           "video= in Python) and a question")


def encode_request(tokenizer, model_dir, model_config, document=None, question="", video=None, num_frames=None,
                   fps=None, video_fps=None):
    """(doc_ids, query_ids, VideoPatches or None) of a text or video request.

    Text: `encode_prompt(document, question)`. Video (`video`: a file path, frames [T, H, W, 3],
    a list of frames, or `longctx.video.VideoPatches` already loaded): sampled by `num_frames`
    or `fps` (`video_fps`: the rate of frames given from Python), processed under
    `model_dir`'s preprocessor settings, prompt by `video_prompt`. LongCtxError (one line) for
    both or neither of document and video, a video with a text-only model and the reverse, and
    bad video input.
    """
    from longctx.video import load_video, processor_settings

    if video is None and (num_frames is not None or fps is not None):
        raise LongCtxError("frame sampling (--frames / --fps) needs a video (--video FILE)")
    if video is not None and document:
        raise LongCtxError("give a document or a video, not both")
    check_modality(model_config, video is not None)
    if video is None:
        return (*encode_prompt(tokenizer, document, question), None)
    patches = load_video(video, model_dir, num_frames, fps, video_fps)
    merge = processor_settings(model_dir)["merge_size"]
    return (*video_prompt(tokenizer, patches.grid, question, merge), patches)


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
    if config.kernel_backend == "flash-attn":
        from longctx.kernels.fused import op_named

        try:
            op_named("flash-attn")
        except RuntimeError as exc:
            raise LongCtxError(str(exc)) from None
        if not on_cuda:
            raise LongCtxError("--kernel-backend flash-attn needs CUDA tensors, and the workers here run on the CPU")


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
    return _planned(config, model_config, doc_len, query_len, method)[1]


def _planned(config, model_config, doc_len, query_len, method):
    """(planner, plan) of the request, after the method's checks."""
    planner = get_method(method or config.method, config).planner
    planner.check(model_config, config.nproc)
    planner.use_model(model_config)
    return planner, planner.plan(doc_len, query_len, config.nproc)


def prepare_request(config, model_config, doc_ids, query_ids, max_new_tokens=32, method=None,
                    return_hidden=False, stop=(), video=None):
    """A validated `Request` for token ids: the one validation a request gets on the driver.

    `stop` are the ids that end generation (`stop_ids`); `method` overrides `config.method`;
    `video` is the request's `VideoPatches` (`encode_request`), whose temporal patches must
    be at least the workers when the method encodes frames in parallel; each worker then
    receives only the frames it encodes (`Request.for_rank`). With local workers the
    estimated memory must fit this machine (`longctx.memory.check_memory`).
    """
    check_modality(model_config, video is not None)
    check_lengths(model_config, len(doc_ids), len(query_ids), max_new_tokens)
    planner, plan = _planned(config, model_config, len(doc_ids), len(query_ids), method)
    if config.launcher == "local":  # workers on this machine: their memory is this machine's
        check_memory(planner, plan, model_config.vocab_size, max_new_tokens, resolve_device_type(config.device))
    shares = None
    if video is not None and get_method(method or config.method, config).frame_parallel():
        shares = tuple(frame_shares(video.grid[0], config.nproc))  # each worker receives only its frames
    return Request(list(doc_ids), list(query_ids), max_new_tokens, method, return_hidden, tuple(stop), video,
                   shares)


def check_request(config, document, question, max_new_tokens=0, video=None, num_frames=None, fps=None):
    """Validate a whole request (machine, model, method, worker count vs document length or
    video frames, total length vs the model's positions) from text or a video
    (`encode_request`), before any worker starts; returns the (doc_ids, query_ids) it would
    run and the VideoPatches (None for text; pass them on to `generate` instead of the file)."""
    check_machine(config)
    model_config = check_model_dir(config.model)
    doc_ids, query_ids, patches = encode_request(load_tokenizer(config.model), config.model, model_config, document,
                                                 question, video, num_frames, fps)
    prepare_request(config, model_config, doc_ids, query_ids, max_new_tokens, video=patches)
    return doc_ids, query_ids, patches
