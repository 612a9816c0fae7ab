"""One request's way from what an entry asks to the engine: built and checked once.

Every entry -- the CLI (`longctx generate`), the Python API (`LongContextLM`), the torchrun
entry (`launch.spmd`), and a server the same way -- opens one `Session` per worker pool and
turns each question into a `Request` with `Session.prepare` (a `Prompt`: text or a video, and
a question) or `Session.prepare_ids` (token ids):

* once per session: the run's settings, this machine's devices and kernels when workers run
  here, the model directory, its family's adapter (`longctx.models.family`), the weights, the
  tokenizer, and the method against the model and the worker count;
* once per request, before any worker is involved: the prompt encoded by the family's adapter,
  the modality (a video for a video-language model, text otherwise), the length against the
  model's positions, the plan (the method's options and sizes), the memory of the workers on
  this machine, and the split of the family's extra inputs over the workers.

The Request carries the token ids and the plan: workers neither tokenise nor plan again; with
extra inputs split over the workers each receives only its share (`Request.for_rank`).
"""

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from longctx.costs import resolve_device_type
from longctx.engine import Request
from longctx.errors import LongCtxError
from longctx.memory import check_memory
from longctx.models import check_weights, load_tokenizer, model_family
from longctx.models.positions import position_limit
from longctx.registry import get_method, launcher_class


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


def prompt_from_args(args):
    """The Prompt of parsed `longctx.config.add_request_arguments` arguments (`generate`, the
    torchrun entry), after the checks of what was given: a document or a video, a question that
    is not blank, at least one new token, a readable UTF-8 document."""
    if (args.doc is None) == (args.video is None):
        raise LongCtxError("give a document (--doc FILE) or a video (--video FILE)")
    question = check_question(args.question)
    check_new_tokens(args.max_new_tokens)
    document = None if args.doc is None else read_document(args.doc)
    return Prompt(document, question, args.video, args.frames, args.fps, max_pixels=args.max_pixels,
                  max_frames=args.max_frames)


@dataclass(frozen=True)
class Prompt:
    """What an entry asks, before anything is encoded: a `document` (text) or a `video` (a file
    path, frames [T, H, W, 3] uint8, a list of frames, or media a family already processed),
    sampled to `num_frames` or `fps` frames per second (`video_fps`: the rate of frames given
    from Python), each frame at most `max_pixels` and at most `max_frames` of them (None: the
    model's processor settings), and a `question` ("": the document is continued)."""

    document: str = None
    question: str = ""
    video: object = None
    num_frames: int = None
    fps: float = None
    video_fps: float = None
    max_pixels: int = None
    max_frames: int = None


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
    kernel backend for workers started here: `--device cuda` on a machine without CUDA fails at
    once, not after the workers' start-up."""
    import torch

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


def check_lengths(limit, doc_len, query_len, max_new_tokens):
    """LongCtxError when document + question + `max_new_tokens` is more tokens than `limit`
    (`longctx.models.positions.position_limit`; None: no limit), or `max_new_tokens` is
    negative. The refusal says how to go further (--rope-scaling, --max-model-len)."""
    if max_new_tokens < 0:
        raise LongCtxError(f"max_new_tokens must be >= 0 (got {max_new_tokens})")
    total = doc_len + query_len + max_new_tokens
    if limit and total > limit:
        raise LongCtxError(f"document ({doc_len} tokens) + question ({query_len}) + max new tokens "
                           f"({max_new_tokens}) = {total} tokens, more than the model's {limit} positions; extend "
                           f"them with --rope-scaling (e.g. '{{\"rope_type\": \"yarn\", \"factor\": "
                           f"{_factor_for(total, limit)}}}') and --max-model-len {total}, or shorten the document")


def _factor_for(total, limit):
    """The smallest whole RoPE scaling factor that takes `limit` positions to `total`."""
    return float(-(-total // limit))


class Session:
    """The request path of one worker pool (see the module docstring).

    `config` is the RunConfig (validated here). `local_workers` is how many of the workers run
    on this machine, whose devices and memory are then checked here: default all of them when
    the launcher's workers run here (`Launcher.runs_here`), none otherwise; the torchrun entry
    gives its node's. With `adapt_workers` a one-worker method (dense: accepts one worker,
    refuses two) runs on one worker whatever `config.nproc` says, and `note` says so.
    Afterwards `config` is the run's (what a launcher starts from) and `worker_config` the one
    its workers run (`Launcher.worker_config`: the device "auto" resolved as they resolve it),
    which the plans are made for.
    """

    def __init__(self, config, *, local_workers=None, adapt_workers=False):
        config.validate()
        launcher = launcher_class(config.launcher)
        self.local_workers = (config.nproc if launcher.runs_here else 0) if local_workers is None else local_workers
        if self.local_workers:
            check_machine(config)
        config.resolve_model()  # a Hub id: its cached snapshot's directory from here on
        self.family, whole_config = model_family(config.model, config.family, config.rope_scaling)
        self.model_config = self.family.language_config(whole_config)
        self.position_limit = position_limit(self.model_config, config.rope_scaling, config.max_model_len)
        check_weights(config.model)
        self.tokenizer = load_tokenizer(config.model)
        self.stop_ids = stop_ids(self.tokenizer, self.model_config)
        self.config, self.note, self._methods = config, None, {}
        self.worker_config = launcher.worker_config(config)
        workers = self.workers_for(config.method) if adapt_workers else config.nproc
        if workers != config.nproc:
            self.note = f"{config.method} runs on {workers} worker, not {config.nproc}"
            self.config = config.replace(nproc=workers)
            self.worker_config = launcher.worker_config(self.config)
            self.local_workers = min(self.local_workers, workers)

    def workers_for(self, method):
        """Workers `method` runs on in this session: `config.nproc` if it accepts them, 1 if it
        is a one-worker method (accepts one worker, refuses two: dense); otherwise the method's
        own error."""
        planner = get_method(method, self.worker_config).planner
        nproc = self.config.nproc
        try:
            planner.check(self.model_config, nproc)
            return nproc
        except LongCtxError:
            if nproc > 1 and _accepts(planner, self.model_config, 1) and not _accepts(planner, self.model_config, 2):
                return 1
            raise

    def method(self, name=None):
        """The Method `name` (default: the config's), checked against the model and the worker
        count once, its planner set to the model's shape."""
        name = name or self.config.method
        if name not in self._methods:
            method = get_method(name, self.worker_config)
            method.planner.check(self.model_config, self.config.nproc)
            method.planner.use_model(self.model_config)
            self._methods[name] = method
        return self._methods[name]

    def prepare(self, prompt, max_new_tokens=32, method=None, return_hidden=False):
        """The checked Request of `prompt` (a Prompt), encoded by the model family's adapter;
        `method` overrides the config's. LongCtxError names the first problem."""
        sampling = (prompt.num_frames, prompt.fps, prompt.max_pixels, prompt.max_frames)
        if prompt.video is None and any(value is not None for value in sampling):
            raise LongCtxError("frame sampling (--frames / --fps / --max-pixels / --max-frames) needs a video "
                               "(--video FILE)")
        if prompt.video is not None and prompt.document:
            raise LongCtxError("give a document or a video, not both")
        self.family.check_modality(prompt.video is not None)
        doc_ids, query_ids, media = self.family.encode(self.tokenizer, self.config.model, prompt)
        return self.prepare_ids(doc_ids, query_ids, max_new_tokens, method, return_hidden, media)

    def prepare_ids(self, doc_ids, query_ids, max_new_tokens=32, method=None, return_hidden=False, media=None):
        """The checked Request of token ids (`media`: the family's extra input, from its
        `encode`); the one check a request gets. LongCtxError names the first problem."""
        self.family.check_modality(media is not None)
        check_lengths(self.position_limit, len(doc_ids), len(query_ids), max_new_tokens)
        runner = self.method(method)
        plan = runner.planner.plan(len(doc_ids), len(query_ids), self.config.nproc)
        if self.local_workers:
            check_memory(runner.planner, plan, self.model_config.vocab_size, max_new_tokens,
                         resolve_device_type(self.worker_config.device), local_workers=self.local_workers)
        shares = None if media is None else self.family.split_media(media, self.config.nproc, runner.encoder_split())
        return Request(list(doc_ids), list(query_ids), max_new_tokens, method, return_hidden, self.stop_ids, media,
                       plan, shares)


def _accepts(planner, model_config, world):
    try:
        planner.check(model_config, world)
    except LongCtxError:
        return False
    return True
